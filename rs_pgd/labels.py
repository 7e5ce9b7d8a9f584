"""Labels: open vector or raster labels on the scene's pixel grid (no torch).

:func:`open_labels` looks at the file and hands it to :func:`rs_pgd.vector_labels.open_vector_labels`
(GeoPackage, GeoJSON, Shapefile, FlatGeobuf, GeoParquet, ...) or :func:`rs_pgd.raster_labels.open_raster_labels`
(a label raster). Either works out the classes (a :class:`rs_pgd.classes.ClassTable`) and returns a label source
(:class:`rs_pgd.label_source.LabelSource`) whose ``read(bounds)`` gives a ``uint8`` array of class *indices* for
any window of the scene, 255 (:data:`rs_pgd.classes.IGNORE_INDEX`) where a pixel has no label (unlabelled,
nodata, outside the scene). Sources are pickle-safe, so they can be handed to data-loader worker processes.
"""

from __future__ import annotations

from pathlib import Path

from rs_pgd.classes import check_mapping, read_mapping
from rs_pgd.errors import LabelError
from rs_pgd.label_source import SceneGrid
from rs_pgd.raster_labels import RasterLabels, open_raster_labels
from rs_pgd.vector_labels import PARQUET_SUFFIXES, VectorLabels, open_vector_labels

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc", ".asc", ".png"}
VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite", ".zip"}

def open_labels(
    path,
    scene,
    class_column: str | None = None,
    mapping: dict | None = None,
    layer: str | None = None,
    all_touched: bool = False,
    background: int | str | None = None,
    unknown_keys: str = "error",
) -> VectorLabels | RasterLabels:
    """Open vector or raster labels on a scene's pixel grid.

    Parameters
    ----------
    path : str or Path
        Vector file (GeoPackage, GeoJSON, Shapefile, FlatGeobuf, GeoParquet, ...) or label raster.
    scene : SceneInfo or any object with ``width``, ``height``, ``crs`` and ``transform``
        The grid to read labels on.
    class_column : str, optional
        Attribute holding the class (vector labels). Found automatically among
        :data:`CLASS_COLUMN_CANDIDATES` when not given; an integer id column plus a name column describing the
        same classes (``class_id`` + ``class_name``) gives values from the ids and names from the names.
    mapping : dict or path-like, optional
        Source value (int or str) -> target class (str name or int value), or a JSON file holding one
        (:func:`rs_pgd.classes.read_mapping`). Unmapped source values are dropped (with a warning); a target of
        ``None`` drops the value silently; a key that is no class of the labels is an error. String targets get
        values ``1..K`` in sorted order.
    layer : str, optional
        Layer of a multi-layer vector file.
    all_touched : bool
        Burn every pixel a polygon touches instead of those whose centre lies inside.
    background : int or str, optional
        Class (value or name) for scene pixels that have no label. A name or value that is not a class yet is
        added (a new name takes value 0, or the smallest unused value). Default: such pixels are 255, ignored.
    unknown_keys : {"error", "keep"}
        A mapping key that is no class of these labels is an error (a typo), or, with ``"keep"``, its target stays
        a class: for several label files that share one mapping (check the keys against all of them yourself).

    Returns
    -------
    VectorLabels or RasterLabels

    Raises
    ------
    LabelError
        Missing or unreadable file, no CRS, no overlap with the scene, no features, bad class column, class
        values outside 0..254, non-integer label raster.
    """
    path = Path(path)
    grid = SceneGrid.of(scene)
    if unknown_keys not in ("error", "keep"):
        raise LabelError(f"unknown_keys {unknown_keys!r} must be 'error' or 'keep'")
    if isinstance(mapping, (str, Path)):
        mapping = read_mapping(mapping)
    elif mapping is not None:
        check_mapping(mapping)
    if not path.exists():
        raise LabelError(f"labels not found: {path}; check the path")
    if _looks_like_raster(path):
        return open_raster_labels(path, grid, mapping=mapping, background=background, unknown_keys=unknown_keys)
    return open_vector_labels(path, grid, class_column, mapping, layer, all_touched, background, unknown_keys)


def _looks_like_raster(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return True
    if suffix in VECTOR_SUFFIXES or suffix in PARQUET_SUFFIXES or path.is_dir():
        return False
    try:
        import pyogrio

        pyogrio.read_info(path)
        return False
    except Exception:
        return True


