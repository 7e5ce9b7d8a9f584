"""Class map -> polygons: vectorise a prediction raster window by window (no torch).

Each window of the class map is polygonised with :func:`rasterio.features.shapes` (4-connectivity, nodata
masked out) in *scene pixel coordinates*, so polygon vertices are exact integers. Polygons that touch an inner
window border may continue in the next window: they are collected per class, unioned with
:func:`shapely.union_all` and split again into single polygons; the others are kept as they are. The result is
the same set of polygons a single window covering the whole scene would give. Polygons are then moved to map
coordinates with the raster's transform, filtered by ``min_area``, optionally simplified as one coverage (shared borders move together), and written with
geopandas/pyogrio in the raster's CRS through :class:`rs_pgd.output.AtomicOutput`.

Memory holds one window of pixels plus the polygons (only those on window borders stay unmerged until the end).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from rs_pgd.classes import class_name, open_class_map, read_class_names
from rs_pgd.errors import GridError, OutputError
from rs_pgd.progress import track

DRIVERS = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
    ".shp": "ESRI Shapefile",
}
"""Output vector format by file extension."""

SHAPEFILE_PARTS = (".shx", ".dbf", ".prj", ".cpg")
"""Files that travel with a ``.shp``."""

_SHAPES_DTYPES = ("int16", "int32", "uint8", "uint16", "float32")


# ----------------------------------------------------------------------------------------------------------------
# Polygonising


def output_driver(path) -> str:
    """OGR driver for an output path, by extension; OutputError for an unknown extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in DRIVERS:
        raise OutputError(
            f"cannot tell the vector format of {path}; use one of the extensions {', '.join(sorted(DRIVERS))}"
        )
    return DRIVERS[suffix]


def _window_polygons(data, valid, row_start, col_start):
    """``(value, polygon)`` pairs of one window, in scene pixel coordinates (exact integer vertices)."""
    from affine import Affine
    from rasterio.features import shapes
    from shapely.geometry import shape

    if data.dtype.name not in _SHAPES_DTYPES:
        data = data.astype(np.int32)
    transform = Affine.translation(col_start, row_start)
    for geometry, value in shapes(data, mask=valid, connectivity=4, transform=transform):
        yield int(value), shape(geometry)


def _touches_inner_border(bounds, window, height, width) -> bool:
    """Whether polygon bounds (pixel coords) reach a window edge that is not a scene edge."""
    minx, miny, maxx, maxy = bounds
    row_start, col_start, row_stop, col_stop = window
    return (
        (minx <= col_start and col_start > 0)
        or (maxx >= col_stop and col_stop < width)
        or (miny <= row_start and row_start > 0)
        or (maxy >= row_stop and row_stop < height)
    )


def polygonise(dataset, tile: int = 2048) -> dict[int, list]:
    """Polygons of every class of band 1, merged across window borders, in scene pixel coordinates.

    Parameters
    ----------
    dataset : rasterio.io.DatasetReader
        Open class map; pixels masked by its nodata/mask are skipped.
    tile : int
        Window side in pixels.

    Returns
    -------
    dict
        ``{class value: [shapely Polygon, ...]}``.
    """
    from rasterio.windows import Window

    from rs_pgd.grid import WindowGrid

    height, width = dataset.height, dataset.width
    kept: dict[int, list] = defaultdict(list)
    on_border: dict[int, list] = defaultdict(list)
    for window in track(WindowGrid(height, width, int(tile), 0, align=1), "vectorize"):  # --progress json
        row_start, col_start, row_stop, col_stop = window.bounds
        row_stop, col_stop = min(row_stop, height), min(col_stop, width)
        read_window = Window(col_start, row_start, col_stop - col_start, row_stop - row_start)
        data = dataset.read(1, window=read_window)
        valid = dataset.read_masks(1, window=read_window) > 0
        if not valid.any():
            continue
        clipped = (row_start, col_start, row_stop, col_stop)
        for value, polygon in _window_polygons(data, valid, row_start, col_start):
            if _touches_inner_border(polygon.bounds, clipped, height, width):
                on_border[value].append(polygon)
            else:
                kept[value].append(polygon)
    for value, polygons in on_border.items():
        kept[value].extend(_merge(polygons))
    return dict(kept)


def _merge(polygons: list) -> list:
    """Union of same-class polygons, split into single polygons (edge-sharing ones join, corner-touching stay apart)."""
    import shapely

    merged = shapely.union_all(np.asarray(polygons, dtype=object))
    parts = shapely.get_parts(merged)
    return [p for p in parts if p.geom_type == "Polygon" and not p.is_empty]


# ----------------------------------------------------------------------------------------------------------------
# Public entry point


def vectorize(prediction, output, *, min_area: float = 0.0, simplify: float = 0.0, tile: int = 2048,
              layer: str | None = None) -> dict:
    """Write the polygons of a class map to a vector file.

    Parameters
    ----------
    prediction : path-like
        Single-band integer class map (e.g. written by ``rs-pgd predict``); its nodata pixels are skipped.
    output : path-like
        Vector file to write; the format follows the extension (``.gpkg``, ``.geojson``, ``.fgb``, ``.shp``).
        Polygons are in the class map's CRS, except GeoJSON, which RFC 7946 puts in WGS84 (EPSG:4326).
        Written to a temporary file next to it and renamed when complete.
    min_area : float
        Drop polygons smaller than this, in map units squared (e.g. m²).
    simplify : float
        Tolerance in map units of a coverage simplification (:func:`shapely.coverage_simplify`, Visvalingam-Whyatt:
        roughly the square root of the largest triangle area removed); neighbours keep sharing their borders, so
        no gap or overlap opens between them. 0 keeps pixel edges.
    tile : int
        Window side in pixels (bounds memory; the result does not depend on it).
    layer : str, optional
        Layer name (GeoPackage); defaults to the output file's stem.

    The layer has one single-part polygon per connected region (4-connectivity) with columns ``class_id``
    (the pixel value), ``class_name`` (from the raster's ``CLASS_NAMES`` tag, else ``"class <value>"``) and
    ``area`` (in the class map's map units squared, after simplification); ``class_id``/``class_name`` let :func:`rs_pgd.labels.open_labels`
    read the file back as labels.

    Returns
    -------
    dict
        Summary: ``output``, ``driver``, ``crs``, ``polygons``, ``dropped`` (by ``min_area``), ``classes`` (list of
        ``{value, name, polygons, area}``), ``tile``.
    """
    from rs_pgd.output import AtomicOutput, check_output_path

    if min_area < 0 or simplify < 0:
        raise OutputError(f"min_area {min_area} and simplify {simplify} must be zero or positive")
    if int(tile) < 1:
        raise GridError(f"tile {tile} must be at least 1 pixel; it only bounds memory, e.g. --tile 2048")
    driver = output_driver(output)
    check_output_path(output, inputs=[prediction])
    with open_class_map(prediction) as dataset:
        names = read_class_names(dataset)
        crs, transform = dataset.crs, dataset.transform
        by_class = polygonise(dataset, tile=tile)
    frame, dropped = _to_frame(by_class, names, transform, crs, min_area, simplify)
    if driver == "GeoJSON" and crs is not None:
        frame = frame.to_crs("EPSG:4326")  # RFC 7946: GeoJSON coordinates are WGS84 longitude, latitude
    target = Path(output)
    parts = SHAPEFILE_PARTS if driver == "ESRI Shapefile" else ()
    with AtomicOutput(target, inputs=[prediction], sidecars=parts, replace_suffix=True) as temp:
        _write(frame, temp, driver, layer or target.stem)
    return _summary(frame, target, driver, frame.crs, dropped, tile)


def _to_frame(by_class, names, transform, crs, min_area, simplify):
    """GeoDataFrame (class_id, class_name, area, geometry) in map coordinates, and the number dropped by area."""
    import geopandas as gpd
    import shapely

    values, geometries = [], []
    for value in sorted(by_class):
        values.extend([value] * len(by_class[value]))
        geometries.extend(by_class[value])
    geometries = np.asarray(geometries, dtype=object)
    if simplify > 0 and len(geometries):
        # a vertex at every pixel corner: neighbours then share identical vertices along their common edges (a
        # valid coverage), which coverage simplification needs to move shared edges together
        geometries = shapely.segmentize(geometries, 1.0)
    geometries = _to_map_coordinates(geometries, transform)
    values = np.asarray(values, dtype=np.int64)
    areas = shapely.area(geometries) if len(geometries) else np.zeros(0)
    keep = areas >= min_area if min_area > 0 else np.ones(len(geometries), dtype=bool)
    dropped = int((~keep).sum())
    geometries, values, areas = geometries[keep], values[keep], areas[keep]
    if simplify > 0 and len(geometries):
        geometries = shapely.coverage_simplify(geometries, simplify)
        areas = shapely.area(geometries)
    frame = gpd.GeoDataFrame(
        {
            "class_id": values.astype(np.int32),
            "class_name": [class_name(names, v) for v in values],
            "area": areas.astype(np.float64),
        },
        geometry=gpd.GeoSeries(list(geometries), crs=crs),
        crs=crs,
    )
    return frame, dropped


def _to_map_coordinates(geometries: np.ndarray, transform) -> np.ndarray:
    """Move pixel-coordinate geometries (x = column, y = row) to map coordinates with an affine transform."""
    import shapely

    if not len(geometries):
        return geometries
    a, b, c, d, e, f = tuple(transform)[:6]
    matrix = np.array([[a, b], [d, e]], dtype=np.float64)
    origin = np.array([c, f], dtype=np.float64)
    return shapely.transform(geometries, lambda xy: xy @ matrix.T + origin)


def _write(frame, temp: Path, driver: str, layer: str) -> None:
    """Write ``frame`` to ``temp`` (a shapefile's companion files land beside it, moved by the atomic writer)."""
    kwargs = {"driver": driver, "engine": "pyogrio"}
    if driver == "GPKG":
        kwargs["layer"] = layer
    if len(frame) == 0:
        kwargs["geometry_type"] = "Polygon"
    if driver == "GeoJSON" and frame.crs is not None:
        kwargs["RFC7946"] = "YES"  # right-hand winding, no "crs" member
    frame.to_file(temp, **kwargs)


def _summary(frame, target, driver, crs, dropped, tile) -> dict:
    from rs_pgd.raster import crs_to_string

    classes = []
    for value in sorted(set(int(v) for v in frame["class_id"])):
        rows = frame[frame["class_id"] == value]
        classes.append(
            {"value": value, "name": str(rows["class_name"].iloc[0]), "polygons": int(len(rows)),
             "area": float(rows["area"].sum())}
        )
    return {
        "output": str(target),
        "driver": driver,
        "crs": crs_to_string(crs),
        "polygons": int(len(frame)),
        "dropped": dropped,
        "classes": classes,
        "tile": int(tile),
    }


def format_summary(summary: dict) -> str:
    """Short terminal report of :func:`vectorize`."""
    lines = [f"Wrote {summary['polygons']} polygons to {summary['output']} ({summary['driver']}, {summary['crs']})"]
    if summary["dropped"]:
        lines.append(f"  dropped {summary['dropped']} polygons smaller than --min-area")
    for item in summary["classes"]:
        lines.append(f"  {item['value']:>3}  {item['name']:<20} {item['polygons']:>8} polygons  area {item['area']:.6g}")
    return "\n".join(lines)
