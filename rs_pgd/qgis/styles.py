"""``.qml`` styles beside outputs: the class map as a paletted layer with class names, polygons by class.

``qgis_process`` never runs layer post-processors, but QGIS loads ``<name>.qml`` beside ``<name>.tif`` (or
``.gpkg``) as the layer's default style, in the GUI, in scripts and after ``qgis_process``.
"""

import json
import os

from osgeo import gdal
from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsPalettedRasterRenderer,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsSymbol,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor


def sidecars(path):
    """Files that describe ``path`` and must not outlive it: its style and GDAL's sidecars."""
    stem = os.path.splitext(path)[0]
    return [stem + ".qml", path + ".aux.xml", path + ".ovr", path + ".msk"]


def class_table(raster_path):
    """``[(value, QColor, name), ...]`` from a class map's colour table, CLASS_VALUES/CLASS_NAMES and categories."""
    dataset = gdal.Open(raster_path)
    if dataset is None:
        return []
    band = dataset.GetRasterBand(1)
    colours = band.GetColorTable()
    categories = band.GetCategoryNames() or []
    try:
        values = json.loads(band.GetMetadataItem("CLASS_VALUES") or "null")
        names = json.loads(band.GetMetadataItem("CLASS_NAMES") or "null")
    except ValueError:
        values = names = None
    if not values:
        values = [v for v, name in enumerate(categories) if name]
        names = [categories[v] for v in values]
    table = []
    for value, name in zip(values, names or [str(v) for v in values]):
        value = int(value)
        if colours is not None and value < colours.GetCount():
            r, g, b, a = colours.GetColorEntry(value)
            colour = QColor(r, g, b, a)
        else:
            colour = QColor.fromHsv((value * 67) % 360, 180, 220)
        table.append((value, colour, str(name)))
    return table


def write_class_map_style(raster_path, feedback=None):
    """Write ``<stem>.qml``: a paletted renderer with one entry per class (colour and name)."""
    table = class_table(raster_path)
    if not table:
        return None
    layer = QgsRasterLayer(raster_path, "classes", "gdal")
    classes = [QgsPalettedRasterRenderer.Class(value, colour, name) for value, colour, name in table]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes))
    return _save(layer, raster_path, feedback)


def write_polygon_style(vector_path, class_map_path, feedback=None):
    """Write ``<stem>.qml``: polygons categorised by ``class_id``, coloured and named as in the class map."""
    layer = QgsVectorLayer(vector_path, "polygons", "ogr")
    if not layer.isValid():
        return None
    table = {value: (colour, name) for value, colour, name in class_table(class_map_path)}
    index = layer.fields().indexOf("class_id")
    present = sorted(int(v) for v in layer.uniqueValues(index)) if index >= 0 else []
    categories = []
    for value in sorted(set(present) | set(table)):
        colour, name = table.get(value, (QColor.fromHsv((value * 67) % 360, 180, 220), str(value)))
        symbol = QgsSymbol.defaultSymbol(layer.geometryType())
        symbol.setColor(colour)
        categories.append(QgsRendererCategory(value, symbol, name))
    layer.setRenderer(QgsCategorizedSymbolRenderer("class_id", categories))
    return _save(layer, vector_path, feedback)


def _save(layer, path, feedback):
    qml = os.path.splitext(path)[0] + ".qml"
    message, ok = layer.saveNamedStyle(qml)
    if not ok and feedback is not None:
        feedback.pushWarning(f"could not write the style {qml}: {message}")
    return qml if ok else None
