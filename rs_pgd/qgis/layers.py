"""Layers as files for rs-pgd: a file-backed layer passes its path; others are written to temporary files."""

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsVectorLayer,
)

VECTOR_FORMATS = ["gpkg", "shp", "geojson", "fgb", "json"]


def file_of(layer):
    """The file behind ``layer`` when rs-pgd can read it directly, else None."""
    parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
    path = parts.get("path") or ""
    if layer.providerType() not in ("gdal", "ogr") or not os.path.isfile(path) or parts.get("vsiPrefix"):
        return None  # not a file, or a file inside an archive (/vsizip/...)
    if isinstance(layer, QgsRasterLayer) and (parts.get("layerName") or parts.get("bandNumber")):
        return None  # a subdataset or one band of a file: export what QGIS shows
    return path


def raster_as_file(layer, context, feedback):
    """Path of a GeoTIFF (or other GDAL file) holding ``layer``: its own file, or a temporary GeoTIFF copy."""
    path = file_of(layer)
    if path:
        return path
    provider = layer.dataProvider()
    if provider is None or provider.xSize() <= 0 or provider.ySize() <= 0:
        raise QgsProcessingException(f"layer '{layer.name()}' has no fixed pixel grid (a web or database layer "
                                     "without size); save it as a GeoTIFF first")
    target = QgsProcessingUtils.generateTempFilename(f"{_safe(layer.name())}.tif")
    feedback.pushInfo(f"writing layer '{layer.name()}' to {target}")
    writer = QgsRasterFileWriter(target)
    writer.setOutputFormat("GTiff")
    pipe = QgsRasterPipe()
    if not pipe.set(provider.clone()):
        raise QgsProcessingException(f"cannot read layer '{layer.name()}'")
    error = writer.writeRaster(pipe, provider.xSize(), provider.ySize(), provider.extent(), provider.crs(),
                               context.transformContext())
    if error != QgsRasterFileWriter.NoError:
        raise QgsProcessingException(f"cannot write layer '{layer.name()}' to {target} (error {int(error)})")
    return target


def labels_as_file(layer, selected_only, context, feedback):
    """rs-pgd arguments naming the labels: ``[path]`` or ``[path, "--layer", name]``.

    Vector layers with a selection to honour, a filter, or a source that is not an OGR file are written to a
    temporary GeoPackage by QGIS (only the selected features when ``selected_only``).
    """
    if isinstance(layer, QgsRasterLayer):
        return [raster_as_file(layer, context, feedback)]
    if not isinstance(layer, QgsVectorLayer):
        raise QgsProcessingException(f"layer '{layer.name()}' is neither a vector nor a raster layer")
    if selected_only and layer.selectedFeatureCount() == 0:
        raise QgsProcessingException(f"no feature of '{layer.name()}' is selected; select label features or "
                                     "untick 'Use only the selected label features'")
    path, name = QgsProcessingUtils.convertToCompatibleFormatAndLayerName(
        layer, bool(selected_only), "labels", VECTOR_FORMATS, "gpkg", context, feedback)
    if not path:
        raise QgsProcessingException(f"cannot write layer '{layer.name()}' to a file")
    path = path.split("|")[0]
    return [path, "--layer", name] if name else [path]


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "layer"
