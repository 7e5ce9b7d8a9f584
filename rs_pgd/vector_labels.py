"""Vector labels (GeoPackage, GeoJSON, Shapefile, FlatGeobuf, GeoParquet, ...) rasterised window by window.

No torch here. Create with :func:`rs_pgd.labels.open_labels`. Features are reprojected to the scene's CRS,
repaired, given a class from the class column (optionally through a mapping) and burned in a fixed order:
polygons first, then lines, then points, each group in file order. Where features overlap, the one burned later
wins (the later polygon in the file; a point or line on top of a polygon). Unlabelled pixels are 255 (ignored),
not background, unless ``background`` names a class. The source is pickle-safe: it holds geometries, never an
open dataset, so it can be handed to data-loader worker processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely

from rs_pgd.classes import (
    IGNORE_INDEX,
    apply_mapping,
    normalise_key,
    preview,
    sorted_table,
    warn_label,
    with_background,
)
from rs_pgd.errors import LabelError
from rs_pgd.label_source import (
    LabelSource,
    SceneGrid,
    bbox_overlap_fraction,
    crs_name,
    first_line,
    fmt_bbox,
)

PARQUET_SUFFIXES = {".parquet", ".geoparquet"}

CLASS_COLUMN_CANDIDATES = (
    "class",
    "class_id",
    "classid",
    "label",
    "labels",
    "class_name",
    "classname",
    "name",
    "category",
    "type",
    "landcover",
    "lc",
    "value",
    "code",
)
"""Column names (case-insensitive) tried, in this order, when no class column is named."""

CLIP_VERTICES = 1000
"""Geometries with more vertices than this are clipped to each window before rasterising."""

class VectorLabels(LabelSource):
    """Vector features rasterised on demand, one window at a time.

    Holds the (reprojected, repaired) shapely geometries and one class index per geometry, in burn order. The
    spatial index is rebuilt lazily in each process. Create with :func:`open_labels`.
    """

    def __init__(
        self,
        path,
        grid: SceneGrid,
        geometries,
        indices,
        classes,
        *,
        all_touched,
        background_index,
        overlap,
        report,
    ):
        self.path = str(path)
        self._init_grid(grid)
        self.geometries = np.asarray(geometries, dtype=object)
        self.indices = np.asarray(indices, dtype=np.uint8)
        self.classes = classes
        self.all_touched = bool(all_touched)
        self.background_index = background_index
        self.overlap = overlap
        self.report = list(report)
        self._tree = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tree"] = None
        return state

    @property
    def tree(self):
        """shapely STRtree over the geometries (built on first use in each process)."""
        if self._tree is None:
            from shapely import STRtree

            self._tree = STRtree(self.geometries)
        return self._tree

    @staticmethod
    def _clipped(geometries: np.ndarray, bbox) -> np.ndarray:
        """Large geometries cut to the window's box grown by two pixels (same pixels burned, far less work)."""
        big = shapely.get_num_coordinates(geometries) > CLIP_VERTICES
        if big.any():
            geometries = geometries.copy()
            geometries[big] = shapely.clip_by_rect(geometries[big], *bbox)
        return geometries

    def _read_inside(self, r0, c0, r1, c1):
        from rasterio.features import rasterize
        from shapely.geometry import box

        grid = self._grid
        hits = np.sort(self.tree.query(box(*grid.bbox(r0, c0, r1, c1))))
        shape = (r1 - r0, c1 - c0)
        geometries = self._clipped(self.geometries[hits], grid.bbox(r0 - 2, c0 - 2, r1 + 2, c1 + 2))
        keep = ~shapely.is_empty(geometries)
        if not keep.any():
            return np.full(shape, IGNORE_INDEX, dtype=np.uint8)
        shapes = zip(geometries[keep], self.indices[hits][keep].tolist())
        return rasterize(
            shapes,
            out_shape=shape,
            transform=grid.window_transform(r0, c0),
            fill=IGNORE_INDEX,
            all_touched=self.all_touched,
            dtype="uint8",
        )


# --- vector ------------------------------------------------------------------------------------------------------


def parquet_read_error(path: Path, exc: Exception) -> LabelError:
    """The one-line error for a GeoParquet file that geopandas could not read.

    geopandas raises ImportError when pyarrow (its Parquet reader, an optional dependency) is missing: that is
    the environment's fault, not the file's, so the message says what to install.
    """
    if isinstance(exc, ImportError):
        return LabelError(f"reading GeoParquet labels ({Path(path).name}) needs pyarrow, which is not installed; "
                          "install it with pip install pyarrow")
    return LabelError(f"cannot read labels {path}: {first_line(exc)}; check it is a GeoParquet file")


def _read_vector(path: Path, layer: str | None):
    import geopandas as gpd

    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            return gpd.read_parquet(path), None
        except Exception as exc:
            raise parquet_read_error(path, exc) from exc
    import pyogrio

    try:
        layers = [str(name) for name, geom_type in pyogrio.list_layers(path) if geom_type is not None]
    except Exception as exc:
        raise LabelError(f"cannot read labels {path}: {first_line(exc)}; check it is a vector file") from exc
    if layer is None:
        if len(layers) > 1:
            raise LabelError(f"labels {path} have several layers {layers}; choose one with --layer")
        layer = layers[0] if layers else None
    elif layer not in layers:
        raise LabelError(f"labels {path} have no layer {layer!r}; the layers are {layers}")
    try:
        return gpd.read_file(path, layer=layer), layer
    except Exception as exc:
        raise LabelError(f"cannot read labels {path}: {first_line(exc)}; check the file") from exc


def open_vector_labels(path, grid, class_column, mapping, layer, all_touched, background, unknown_keys="error"):

    gdf, layer = _read_vector(path, layer)
    where = f"{path}" + (f" (layer {layer!r})" if layer else "")
    report: list[str] = [f"read {len(gdf)} features from {where}"]
    if len(gdf) == 0:
        raise LabelError(f"labels {where} have no features; add features or choose another layer")

    gdf = _to_scene_crs(gdf, grid, where, report)

    geoms = gdf.geometry.values
    missing = shapely.is_missing(np.asarray(geoms)) | shapely.is_empty(np.asarray(geoms))
    if missing.any():
        warn_label(report, f"dropped {int(missing.sum())} features with an empty or missing geometry")
        gdf = gdf[~missing]
    if len(gdf) == 0:
        raise LabelError(f"labels {where} have no feature with a geometry; check the file")

    gdf = _repair_geometries(gdf, report)

    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    value_col, name_col = _choose_class_columns(gdf, columns, class_column, where)
    report.append(f"class column {value_col!r}" + (f" (names from {name_col!r})" if name_col else ""))

    nulls = gdf[value_col].isna().to_numpy()
    if nulls.any():
        warn_label(report, f"dropped {int(nulls.sum())} features with no value in class column {value_col!r}")
        gdf = gdf[~nulls]
    if len(gdf) == 0:
        raise LabelError(
            f"no feature of {where} has a value in class column {value_col!r}; choose another column"
        )

    target_values, table = _classes_for_features(gdf, value_col, name_col, mapping, report, where, unknown_keys)
    keep = target_values >= 0
    gdf, target_values = gdf[keep], target_values[keep]
    if len(gdf) == 0:
        raise LabelError(
            f"the mapping drops every feature of {where}; check its keys against column {value_col!r}"
        )

    table, background_index = with_background(table, background, report)
    lut = {v: i for i, v in enumerate(table.values)}
    indices = np.array([lut[int(v)] for v in target_values], dtype=np.uint8)

    geometries, indices = _burn_order(np.asarray(gdf.geometry.values), indices, report)

    footprint = grid.footprint()
    label_bbox = tuple(shapely.total_bounds(geometries))
    if (
        not shapely.intersects(footprint, shapely.box(*label_bbox))
        or not shapely.intersects(footprint, geometries).any()
    ):
        raise LabelError(
            f"labels {where} do not overlap the scene: labels {fmt_bbox(label_bbox)}, scene "
            f"{fmt_bbox(grid.bbox())} in {grid.crs_name}; check both files cover the same area"
        )
    overlap = bbox_overlap_fraction(grid.bbox(), label_bbox)
    report.append(f"labels' extent covers {overlap:.1%} of the scene")
    return VectorLabels(
        path,
        grid,
        geometries,
        indices,
        table,
        all_touched=all_touched,
        background_index=background_index,
        overlap=overlap,
        report=report,
    )


def _to_scene_crs(gdf, grid: SceneGrid, where: str, report: list[str]):
    from pyproj import CRS

    if gdf.crs is None:
        if grid.crs is not None:
            raise LabelError(
                f"labels {where} have no CRS but the scene is in {grid.crs_name}; set it, e.g. with "
                f"ogr2ogr -a_srs {grid.crs_name} out.gpkg in.gpkg"
            )
        report.append("neither labels nor scene have a CRS: labels taken to be in the scene's coordinates")
        return gdf
    if grid.crs is None:
        report.append(
            f"scene has no CRS: labels ({crs_name(gdf.crs)}) taken to be in the scene's coordinates"
        )
        return gdf
    target = CRS.from_user_input(grid.crs.to_wkt())
    if CRS.from_user_input(gdf.crs).equals(target, ignore_axis_order=True):
        return gdf
    try:
        out = gdf.to_crs(target)
    except Exception as exc:
        raise LabelError(f"cannot reproject labels {where} to {grid.crs_name}: {first_line(exc)}") from exc
    report.append(f"reprojected labels from {crs_name(gdf.crs)} to {grid.crs_name}")
    return out


def _repair_geometries(gdf, report: list[str]):

    geoms = np.asarray(gdf.geometry.values)
    invalid = ~shapely.is_valid(geoms)
    if not invalid.any():
        return gdf
    repaired = geoms.copy()
    polygonal = np.isin(shapely.get_type_id(geoms), (3, 6))  # Polygon, MultiPolygon
    fix_poly = invalid & polygonal
    if fix_poly.any():
        repaired[fix_poly] = shapely.make_valid(geoms[fix_poly], method="structure", keep_collapsed=False)
    fix_other = invalid & ~polygonal
    if fix_other.any():
        repaired[fix_other] = shapely.make_valid(geoms[fix_other])
    warn_label(report, f"repaired {int(invalid.sum())} invalid geometries with shapely.make_valid")
    gdf = gdf.set_geometry(repaired, crs=gdf.crs)
    empty = shapely.is_empty(repaired)
    if empty.any():
        warn_label(report, f"dropped {int(empty.sum())} geometries that were empty after repair")
        gdf = gdf[~empty]
    return gdf


def _is_integer_column(series) -> bool:
    import pandas as pd

    values = series.dropna()
    if pd.api.types.is_bool_dtype(series):
        return False
    if pd.api.types.is_integer_dtype(series):
        return True
    if pd.api.types.is_float_dtype(series):
        return bool(len(values)) and bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
    return False


def _is_companion(gdf, id_col: str, name_col: str) -> bool:
    """True when an integer id column and a string name column describe the same partition (a bijection)."""
    pairs = gdf[[id_col, name_col]].dropna()
    if len(pairs) == 0 or _is_integer_column(gdf[name_col]):
        return False
    return bool(
        (pairs.groupby(id_col)[name_col].nunique() == 1).all()
        and (pairs.groupby(name_col)[id_col].nunique() == 1).all()
    )


def _choose_class_columns(gdf, columns: list[str], class_column: str | None, where: str):
    """(value column, name column or None)."""
    candidates = [c for name in CLASS_COLUMN_CANDIDATES for c in columns if c.lower() == name]
    if class_column is not None:
        if class_column in columns:
            chosen = class_column
        else:
            folded = [c for c in columns if c.lower() == str(class_column).lower()]
            if len(folded) != 1:
                raise LabelError(f"labels {where} have no column {class_column!r}; the columns are {columns}")
            chosen = folded[0]
        name_col = None
        if _is_integer_column(gdf[chosen]):
            names = [c for c in candidates if c != chosen and _is_companion(gdf, chosen, c)]
            name_col = names[0] if len(names) == 1 else None
        return chosen, name_col
    if not candidates:
        raise LabelError(
            f"labels {where} have no class column (looked for {', '.join(CLASS_COLUMN_CANDIDATES)}); the columns "
            f"are {columns}; name one with --class-column"
        )
    if len(candidates) == 1:
        return candidates[0], None
    if len(candidates) == 2:
        ints = [c for c in candidates if _is_integer_column(gdf[c])]
        if len(ints) == 1:
            id_col = ints[0]
            name_col = next(c for c in candidates if c != id_col)
            if _is_companion(gdf, id_col, name_col):
                return id_col, name_col
    raise LabelError(
        f"labels {where} have several possible class columns {candidates}; choose one with --class-column"
    )


def _classes_for_features(gdf, value_col: str, name_col: str | None, mapping, report, where: str, unknown_keys: str):
    """Per-feature class value (-1 = dropped) and the class table."""
    series = gdf[value_col]
    integer = _is_integer_column(series)
    keys = [normalise_key(v, integer) for v in series.tolist()]
    if mapping:
        key_to_value, table_pairs = apply_mapping(
            keys, integer, mapping, report, where=f"column {value_col!r} of {where}", unknown_keys=unknown_keys
        )
        values = np.array([-1 if key_to_value[k] is None else key_to_value[k] for k in keys], dtype=np.int64)
        return values, sorted_table(table_pairs)
    if integer:
        values = np.array(keys, dtype=np.int64)
        unique = sorted(set(keys))
        bad = [v for v in unique if not 0 <= v <= 254]
        if bad:
            raise LabelError(
                f"class values {preview(bad)} in column {value_col!r} are outside 0..254; map them to ids "
                "0..254 or names with a mapping"
            )
        names = {v: str(v) for v in unique}
        if name_col is not None:
            for v, n in zip(series.tolist(), gdf[name_col].tolist()):
                if n is not None and n == n:
                    names[int(v)] = str(n)
        return values, sorted_table(names)
    unique_names = sorted(set(keys))
    if len(unique_names) > 254:
        raise LabelError(
            f"column {value_col!r} has {len(unique_names)} distinct classes, more than 254; merge them with a mapping"
        )
    value_of = {name: i + 1 for i, name in enumerate(unique_names)}
    values = np.array([value_of[k] for k in keys], dtype=np.int64)
    return values, sorted_table({v: n for n, v in value_of.items()})


def _burn_order(geometries: np.ndarray, indices: np.ndarray, report: list[str]):
    """Polygons first, then lines, then points, each in file order (later ones win where they overlap)."""

    dims = shapely.get_dimensions(geometries)
    n_points, n_lines = int((dims == 0).sum()), int((dims == 1).sum())
    if n_points or n_lines:
        report.append(
            f"{n_points} point and {n_lines} line features are burned into the pixels they touch, on top of polygons"
        )
    order = np.argsort(-dims, kind="stable")
    return geometries[order], indices[order]


