"""Labels: vector or raster labels turned into per-window arrays of class indices on the scene's pixel grid.

No torch here. :func:`open_labels` opens a vector file (GeoPackage, GeoJSON, Shapefile, FlatGeobuf, GeoParquet)
or a label raster, works out the classes (a :class:`ClassTable`) and returns a label source whose
``read(bounds)`` gives a ``uint8`` array of class *indices* for any window of the scene, ``255`` where a pixel
has no label (unlabelled, nodata, outside the scene). Sources are pickle-safe: they hold geometries and paths,
never an open dataset, so they can be handed to data-loader worker processes.

Conventions
-----------
- Class *values* are what the user's data says (integer ids ``0..254``; string classes get ``1..K`` in sorted
  order). Class *indices* ``0..K-1`` are what the model predicts; index ``i`` is ``classes.values[i]`` and the
  values are kept in ascending order.
- Window bounds are ``(row_start, col_start, row_stop, col_stop)`` in scene pixels (as
  :attr:`rs_pgd.grid.GridWindow.bounds`) and may extend outside the scene: those pixels are ``255``.
- Vector features are burned in a fixed order: polygons first, then lines, then points, each group in file
  order. Where features overlap, the one burned later wins (the later polygon in the file; a point or line on
  top of a polygon).
- Unlabelled pixels are ``255`` (ignored), not background, unless ``background`` names a class.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine

from rs_pgd.errors import LabelError

IGNORE_INDEX = 255
"""Index written where a pixel has no label; the loss ignores it."""

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

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc", ".asc", ".png"}
VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite", ".zip"}
PARQUET_SUFFIXES = {".parquet", ".geoparquet"}

_NAMED_COLOURS = (
    (("water", "sea", "ocean", "lake", "river"), (0, 112, 255)),
    (("wetland", "marsh", "mangrove"), (0, 168, 132)),
    (("forest", "tree", "wood"), (38, 115, 0)),
    (("grass", "pasture", "meadow"), (163, 255, 115)),
    (("shrub", "bush"), (152, 230, 0)),
    (("land",), (76, 168, 0)),
    (("crop", "agri", "farm", "field"), (255, 211, 0)),
    (("developed", "urban", "built", "building", "settlement", "road"), (230, 0, 0)),
    (("bare", "sand", "soil", "rock"), (205, 170, 102)),
    (("snow", "ice", "glacier"), (232, 246, 255)),
    (("cloud",), (200, 200, 200)),
    (("background", "other", "unknown", "nodata"), (0, 0, 0)),
)

_PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)


class LabelWarning(UserWarning):
    """Something in the labels was repaired or dropped; the message says what and how many."""


# ----------------------------------------------------------------------------------------------------------------
# Class table


def _named_colour(name: str) -> tuple[int, int, int] | None:
    lowered = name.lower()
    for keywords, colour in _NAMED_COLOURS:
        if any(keyword in lowered for keyword in keywords):
            return colour
    return None


def _generated_colour(position: int) -> tuple[int, int, int]:
    """A deterministic colour beyond the fixed palette: golden-ratio hue steps."""
    import colorsys

    hue = (position * 0.618033988749895) % 1.0
    lightness = 0.45 + 0.15 * ((position // 7) % 2)
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.65)
    return (round(r * 255), round(g * 255), round(b * 255))


def default_colours(names: tuple[str, ...] | list[str]) -> tuple[tuple[int, int, int], ...]:
    """Distinct, deterministic display colours for class names.

    Common land-cover names get their usual colour (water blue, tree/forest/land green, crop yellow,
    developed/urban red, ...); the first class to claim a named colour gets it, the others take the next
    unused colour of a fixed 20-colour palette, then generated colours.
    """
    colours: list[tuple[int, int, int] | None] = [None] * len(names)
    used: set[tuple[int, int, int]] = set()
    for i, name in enumerate(names):
        colour = _named_colour(str(name))
        if colour is not None and colour not in used:
            colours[i] = colour
            used.add(colour)
    pool = iter(_PALETTE)
    generated = 0
    for i, colour in enumerate(colours):
        if colour is not None:
            continue
        candidate = next(pool, None)
        while candidate is not None and candidate in used:
            candidate = next(pool, None)
        while candidate is None or candidate in used:
            candidate = _generated_colour(generated)
            generated += 1
        colours[i] = candidate
        used.add(candidate)
    return tuple(colours)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClassTable:
    """The classes of a label source.

    Parameters
    ----------
    values : tuple of int
        Output class values, ascending, each in ``0..254``. Index ``i`` (what the model predicts) is class
        ``values[i]``.
    names : tuple of str
        One name per class.
    colours : tuple of (r, g, b), optional
        One display colour per class; :func:`default_colours` when empty.
    ignore_index : int
        Index that marks pixels without a label (255).
    """

    values: tuple[int, ...]
    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        values = tuple(int(v) for v in self.values)
        names = tuple(str(n) for n in self.names)
        if len(values) != len(names):
            raise LabelError(
                f"class table has {len(values)} values but {len(names)} names; give one name per value"
            )
        if not values:
            raise LabelError("class table is empty; the labels need at least one class")
        if len(values) > 255:
            raise LabelError(f"{len(values)} classes is more than 255; merge classes with a mapping")
        if len(set(values)) != len(values):
            raise LabelError(f"class values {list(values)} repeat; give each class its own value")
        if len(set(names)) != len(names):
            raise LabelError(f"class names {list(names)} repeat; give each class its own name")
        bad = [v for v in values if not 0 <= v <= 254]
        if bad:
            raise LabelError(f"class values {bad} are outside 0..254; map them to smaller ids with a mapping")
        if list(values) != sorted(values):
            raise LabelError(f"class values {list(values)} are not ascending; list classes by value")
        colours = tuple(tuple(int(c) for c in colour) for colour in self.colours) or default_colours(names)
        if len(colours) != len(values) or any(
            len(c) != 3 or not all(0 <= x <= 255 for x in c) for c in colours
        ):
            raise LabelError("class colours must be one (r, g, b) triple of 0..255 per class")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "colours", colours)
        object.__setattr__(self, "ignore_index", int(self.ignore_index))

    @property
    def num_classes(self) -> int:
        """Number of classes (model output channels)."""
        return len(self.values)

    def index_of(self, value: int | str) -> int:
        """Index of a class given its value or its name; LabelError when there is no such class."""
        if isinstance(value, str):
            if value in self.names:
                return self.names.index(value)
            raise LabelError(f"no class named {value!r}; the classes are {list(self.names)}")
        if int(value) in self.values:
            return self.values.index(int(value))
        raise LabelError(f"no class with value {value!r}; the class values are {list(self.values)}")

    def value_of(self, index: int) -> int:
        """Class value of a model index."""
        if not 0 <= int(index) < self.num_classes:
            raise LabelError(f"class index {index} is outside 0..{self.num_classes - 1}")
        return self.values[int(index)]

    def name_of(self, index: int) -> str:
        """Class name of a model index."""
        return self.names[self.values.index(self.value_of(index))]

    def value_lut(self) -> np.ndarray:
        """``uint8`` lookup of 256 entries: class index -> class value (ignore -> ignore)."""
        lut = np.full(256, self.ignore_index, dtype=np.uint8)
        lut[: self.num_classes] = np.asarray(self.values, dtype=np.uint8)
        return lut

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "values": list(self.values),
            "names": list(self.names),
            "colours": [list(c) for c in self.colours],
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassTable:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                values=tuple(data["values"]),
                names=tuple(data["names"]),
                colours=tuple(tuple(c) for c in data.get("colours", ())),
                ignore_index=data.get("ignore_index", IGNORE_INDEX),
            )
        except (KeyError, TypeError) as exc:
            raise LabelError(
                f"class table description is incomplete ({exc}); it needs 'values' and 'names'"
            ) from exc


def _sorted_table(
    pairs: dict[int, str], colours: dict[int, tuple[int, int, int]] | None = None
) -> ClassTable:
    values = tuple(sorted(pairs))
    names = tuple(pairs[v] for v in values)
    colour_list = ()
    if colours and all(v in colours for v in values):
        colour_list = tuple(colours[v] for v in values)
    return ClassTable(values=values, names=names, colours=colour_list)


# ----------------------------------------------------------------------------------------------------------------
# Scene geometry helpers


@dataclass(frozen=True)
class _SceneGrid:
    width: int
    height: int
    transform: Affine
    crs: Any  # rasterio CRS or None

    @classmethod
    def of(cls, scene) -> _SceneGrid:
        try:
            width, height, transform = int(scene.width), int(scene.height), scene.transform
        except AttributeError as exc:
            raise LabelError(
                f"scene object lacks {exc.name!r}; pass a SceneInfo (width, height, crs, transform)"
            ) from None
        crs = getattr(scene, "crs", None)
        if crs is not None and not hasattr(crs, "to_wkt"):
            from rasterio.crs import CRS

            crs = CRS.from_user_input(crs)
        if crs is not None and not crs.to_wkt():
            crs = None
        return cls(width=width, height=height, transform=Affine(*tuple(transform)[:6]), crs=crs)

    def window_transform(self, row_start: int, col_start: int) -> Affine:
        x, y = _apply(self.transform, col_start, row_start)
        t = self.transform
        return Affine(t.a, t.b, x, t.d, t.e, y)

    def corners(self, row_start, col_start, row_stop, col_stop) -> np.ndarray:
        pts = [(col_start, row_start), (col_stop, row_start), (col_stop, row_stop), (col_start, row_stop)]
        return np.array([_apply(self.transform, col, row) for col, row in pts])

    def bbox(
        self, row_start=0, col_start=0, row_stop=None, col_stop=None
    ) -> tuple[float, float, float, float]:
        row_stop = self.height if row_stop is None else row_stop
        col_stop = self.width if col_stop is None else col_stop
        c = self.corners(row_start, col_start, row_stop, col_stop)
        return (c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max())

    def footprint(self):
        from shapely.geometry import Polygon

        return Polygon(self.corners(0, 0, self.height, self.width))

    @property
    def crs_name(self) -> str:
        return _crs_name(self.crs)


def _apply(transform: Affine, col: float, row: float) -> tuple[float, float]:
    """Map a (col, row) pixel position to coordinates (written out: ``*`` on Affine is being deprecated)."""
    t = transform
    return (t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f)


def _crs_name(crs) -> str:
    if crs is None:
        return "no CRS"
    try:
        epsg = crs.to_epsg()
    except Exception:  # pragma: no cover - pyproj/rasterio oddities
        epsg = None
    if epsg:
        return f"EPSG:{epsg}"
    name = getattr(crs, "name", None)
    return str(name) if name else crs.to_wkt()[:60]


def _fmt_bbox(bbox) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in bbox) + ")"


def _bbox_overlap_fraction(scene_bbox, label_bbox) -> float:
    x0, y0 = max(scene_bbox[0], label_bbox[0]), max(scene_bbox[1], label_bbox[1])
    x1, y1 = min(scene_bbox[2], label_bbox[2]), min(scene_bbox[3], label_bbox[3])
    area = (scene_bbox[2] - scene_bbox[0]) * (scene_bbox[3] - scene_bbox[1])
    if x1 <= x0 or y1 <= y0 or area <= 0:
        return 0.0
    return float(min(1.0, (x1 - x0) * (y1 - y0) / area))


def _check_bounds(bounds) -> tuple[int, int, int, int]:
    try:
        row_start, col_start, row_stop, col_stop = (int(b) for b in bounds)
    except (TypeError, ValueError) as exc:
        raise LabelError(
            f"window bounds {bounds!r} are not (row_start, col_start, row_stop, col_stop)"
        ) from exc
    if row_stop < row_start or col_stop < col_start:
        raise LabelError(
            f"window bounds {bounds!r} end before they start; give (row_start, col_start, row_stop, col_stop)"
        )
    return row_start, col_start, row_stop, col_stop


def _clip(bounds, height, width):
    """Part of the window inside the scene, as (rows slice in window, cols slice in window, scene row/col range)."""
    row_start, col_start, row_stop, col_stop = bounds
    r0, c0 = max(row_start, 0), max(col_start, 0)
    r1, c1 = min(row_stop, height), min(col_stop, width)
    if r1 <= r0 or c1 <= c0:
        return None
    return (r0, c0, r1, c1)


# ----------------------------------------------------------------------------------------------------------------
# Label sources


class LabelSource:
    """Common part of :class:`VectorLabels` and :class:`RasterLabels`.

    Attributes
    ----------
    path : str
        The label file.
    classes : ClassTable
        The classes; ``read`` returns indices into it.
    width, height, transform, crs
        The scene grid the labels are read on.
    overlap : float
        Fraction of the scene's area inside the labels' extent (bounding boxes).
    report : list of str
        What was done to the labels (reprojection, repairs, dropped features, ...), for logs.
    background_index : int or None
        Index burned into scene pixels that have no label, when ``background`` was given.
    """

    path: str
    classes: ClassTable
    overlap: float
    report: list[str]
    background_index: int | None

    def _init_grid(self, grid: _SceneGrid):
        self.width, self.height, self.transform, self.crs = grid.width, grid.height, grid.transform, grid.crs

    @property
    def _grid(self) -> _SceneGrid:
        return _SceneGrid(self.width, self.height, self.transform, self.crs)

    def read(self, bounds) -> np.ndarray:
        """Class indices of a window.

        Parameters
        ----------
        bounds : (row_start, col_start, row_stop, col_stop)
            Window in scene pixels; may extend outside the scene.

        Returns
        -------
        numpy.ndarray
            ``uint8`` array of shape ``(row_stop - row_start, col_stop - col_start)``: class indices, 255 where a
            pixel has no label or lies outside the scene.
        """
        bounds = _check_bounds(bounds)
        row_start, col_start, row_stop, col_stop = bounds
        out = np.full((row_stop - row_start, col_stop - col_start), IGNORE_INDEX, dtype=np.uint8)
        inner = _clip(bounds, self.height, self.width)
        if inner is None:
            return out
        r0, c0, r1, c1 = inner
        block = self._read_inside(r0, c0, r1, c1)
        if self.background_index is not None:
            block[block == IGNORE_INDEX] = self.background_index
        out[r0 - row_start : r1 - row_start, c0 - col_start : c1 - col_start] = block
        return out

    def _read_inside(self, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_values(self, bounds) -> np.ndarray:
        """Like :meth:`read` but class *values* instead of indices (255 stays 255)."""
        return self.classes.value_lut()[self.read(bounds)]

    def pixel_counts(self, tile: int = 1024) -> dict[int, int]:
        """Labelled pixels of each class over the whole scene, streaming ``tile x tile`` windows.

        Returns
        -------
        dict
            ``{class value: pixel count}`` for every class (zero counts included).
        """
        tile = max(1, int(tile))
        totals = np.zeros(256, dtype=np.int64)
        for row in range(0, self.height, tile):
            for col in range(0, self.width, tile):
                block = self.read((row, col, min(row + tile, self.height), min(col + tile, self.width)))
                totals += np.bincount(block.ravel(), minlength=256)
        return {value: int(totals[i]) for i, value in enumerate(self.classes.values)}

    def require_labelled_pixels(self, tile: int = 1024) -> dict[int, int]:
        """:meth:`pixel_counts`, raising LabelError when no scene pixel has a label."""
        counts = self.pixel_counts(tile=tile)
        if sum(counts.values()) == 0:
            raise LabelError(
                f"labels {self.path} give no labelled pixel inside the scene; check that they cover the scene "
                "and that features are not all dropped"
            )
        return counts

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path!r}, classes={list(self.classes.names)}, "
            f"scene={self.width}x{self.height}, overlap={self.overlap:.3f})"
        )


class VectorLabels(LabelSource):
    """Vector features rasterised on demand, one window at a time.

    Holds the (reprojected, repaired) shapely geometries and one class index per geometry, in burn order. The
    spatial index is rebuilt lazily in each process. Create with :func:`open_labels`.
    """

    def __init__(
        self,
        path,
        grid: _SceneGrid,
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


class RasterLabels(LabelSource):
    """A label raster read on the scene grid, one window at a time.

    Same or pixel-aligned grid: plain windowed reads. Other grid or CRS: a ``WarpedVRT`` to the scene grid with
    nearest-neighbour resampling. Label nodata, masked pixels and values that are no class become 255. The
    dataset is opened lazily in each process, so the object pickles. Create with :func:`open_labels`.
    """

    def __init__(
        self,
        path,
        grid: _SceneGrid,
        classes,
        *,
        band,
        source_values,
        source_indices,
        offset,
        warp,
        background_index,
        overlap,
        report,
    ):
        self.path = str(path)
        self._init_grid(grid)
        self.classes = classes
        self.band = int(band)
        self.source_values = np.asarray(source_values, dtype=np.int64)  # sorted
        self.source_indices = np.asarray(source_indices, dtype=np.uint8)
        self.offset = offset  # (row, col) of the scene's origin in label pixels, when aligned
        self.warp = bool(warp)
        self.background_index = background_index
        self.overlap = overlap
        self.report = list(report)
        self._handles = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = None
        return state

    def _datasets(self):
        import rasterio

        if self._handles is None or self._handles[0] != os.getpid():
            src = rasterio.open(self.path)
            view = src
            if self.warp:
                view = _warped_view(src, self._grid)
            self._handles = (os.getpid(), src, view)
        return self._handles[1], self._handles[2]

    def close(self):
        """Close the datasets opened in this process (they reopen on the next read)."""
        if self._handles is not None:
            _, src, view = self._handles
            if view is not src:
                view.close()
            src.close()
            self._handles = None

    def _to_indices(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = np.full(data.shape, IGNORE_INDEX, dtype=np.uint8)
        if self.source_values.size == 0:
            return out
        flat = data.astype(np.int64, copy=False)
        pos = np.clip(np.searchsorted(self.source_values, flat), 0, self.source_values.size - 1)
        known = valid & (self.source_values[pos] == flat)
        out[known] = self.source_indices[pos[known]]
        return out

    def _read_inside(self, r0, c0, r1, c1):
        from rasterio.windows import Window

        src, view = self._datasets()
        out = np.full((r1 - r0, c1 - c0), IGNORE_INDEX, dtype=np.uint8)
        if self.warp:
            window = Window(c0, r0, c1 - c0, r1 - r0)
            data = view.read(self.band, window=window)
            valid = view.read_masks(self.band, window=window) > 0
            return self._to_indices(data, valid)
        off_row, off_col = self.offset
        # window in label pixels, clipped to the label raster
        lr0, lc0 = max(r0 + off_row, 0), max(c0 + off_col, 0)
        lr1, lc1 = min(r1 + off_row, src.height), min(c1 + off_col, src.width)
        if lr1 <= lr0 or lc1 <= lc0:
            return out
        window = Window(lc0, lr0, lc1 - lc0, lr1 - lr0)
        data = src.read(self.band, window=window)
        valid = src.read_masks(self.band, window=window) > 0
        out[lr0 - off_row - r0 : lr1 - off_row - r0, lc0 - off_col - c0 : lc1 - off_col - c0] = (
            self._to_indices(data, valid)
        )
        return out


def _warped_view(src, grid: _SceneGrid):
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    # Without a nodata value, an alpha band is the only way the VRT can tell "outside the label raster" (or
    # masked) pixels from class values; with one, those pixels take the nodata value.
    return WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=Resampling.nearest,
        add_alpha=src.nodata is None,
        tolerance=1e-9,  # (near) exact transformer: a window reads the same pixels as the whole scene
    )


# ----------------------------------------------------------------------------------------------------------------
# Opening


def open_labels(
    path,
    scene,
    class_column: str | None = None,
    mapping: dict | None = None,
    layer: str | None = None,
    all_touched: bool = False,
    background: int | str | None = None,
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
    mapping : dict, optional
        Source value (int or str) -> target class (str name or int value). Unmapped source values are dropped
        (with a warning); a target of ``None`` drops the value silently. String targets get values ``1..K`` in
        sorted order.
    layer : str, optional
        Layer of a multi-layer vector file.
    all_touched : bool
        Burn every pixel a polygon touches instead of those whose centre lies inside.
    background : int or str, optional
        Class (value or name) for scene pixels that have no label. A name or value that is not a class yet is
        added (a new name takes value 0, or the smallest unused value). Default: such pixels are 255, ignored.

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
    grid = _SceneGrid.of(scene)
    if not path.exists():
        raise LabelError(f"labels not found: {path}; check the path")
    if _looks_like_raster(path):
        return _open_raster_labels(path, grid, mapping=mapping, background=background)
    return _open_vector_labels(path, grid, class_column, mapping, layer, all_touched, background)


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


# --- vector ------------------------------------------------------------------------------------------------------


def _read_vector(path: Path, layer: str | None):
    import geopandas as gpd

    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            return gpd.read_parquet(path), None
        except Exception as exc:
            raise LabelError(
                f"cannot read labels {path}: {_first_line(exc)}; check it is a GeoParquet file"
            ) from exc
    import pyogrio

    try:
        layers = [str(name) for name, geom_type in pyogrio.list_layers(path) if geom_type is not None]
    except Exception as exc:
        raise LabelError(f"cannot read labels {path}: {_first_line(exc)}; check it is a vector file") from exc
    if layer is None:
        if len(layers) > 1:
            raise LabelError(f"labels {path} have several layers {layers}; choose one with --layer")
        layer = layers[0] if layers else None
    elif layer not in layers:
        raise LabelError(f"labels {path} have no layer {layer!r}; the layers are {layers}")
    try:
        return gpd.read_file(path, layer=layer), layer
    except Exception as exc:
        raise LabelError(f"cannot read labels {path}: {_first_line(exc)}; check the file") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _warn(report: list[str], message: str):
    report.append(message)
    warnings.warn(message, LabelWarning, stacklevel=4)


def _open_vector_labels(path, grid, class_column, mapping, layer, all_touched, background):

    gdf, layer = _read_vector(path, layer)
    where = f"{path}" + (f" (layer {layer!r})" if layer else "")
    report: list[str] = [f"read {len(gdf)} features from {where}"]
    if len(gdf) == 0:
        raise LabelError(f"labels {where} have no features; add features or choose another layer")

    gdf = _to_scene_crs(gdf, grid, where, report)

    geoms = gdf.geometry.values
    missing = shapely.is_missing(np.asarray(geoms)) | shapely.is_empty(np.asarray(geoms))
    if missing.any():
        _warn(report, f"dropped {int(missing.sum())} features with an empty or missing geometry")
        gdf = gdf[~missing]
    if len(gdf) == 0:
        raise LabelError(f"labels {where} have no feature with a geometry; check the file")

    gdf = _repair_geometries(gdf, report)

    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    value_col, name_col = _choose_class_columns(gdf, columns, class_column, where)
    report.append(f"class column {value_col!r}" + (f" (names from {name_col!r})" if name_col else ""))

    nulls = gdf[value_col].isna().to_numpy()
    if nulls.any():
        _warn(report, f"dropped {int(nulls.sum())} features with no value in class column {value_col!r}")
        gdf = gdf[~nulls]
    if len(gdf) == 0:
        raise LabelError(
            f"no feature of {where} has a value in class column {value_col!r}; choose another column"
        )

    target_values, table = _classes_for_features(gdf, value_col, name_col, mapping, report)
    keep = target_values >= 0
    gdf, target_values = gdf[keep], target_values[keep]
    if len(gdf) == 0:
        raise LabelError(
            f"the mapping drops every feature of {where}; check its keys against column {value_col!r}"
        )

    table, background_index = _with_background(table, background, report)
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
            f"labels {where} do not overlap the scene: labels {_fmt_bbox(label_bbox)}, scene "
            f"{_fmt_bbox(grid.bbox())} in {grid.crs_name}; check both files cover the same area"
        )
    overlap = _bbox_overlap_fraction(grid.bbox(), label_bbox)
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


def _to_scene_crs(gdf, grid: _SceneGrid, where: str, report: list[str]):
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
            f"scene has no CRS: labels ({_crs_name(gdf.crs)}) taken to be in the scene's coordinates"
        )
        return gdf
    target = CRS.from_user_input(grid.crs.to_wkt())
    if CRS.from_user_input(gdf.crs).equals(target, ignore_axis_order=True):
        return gdf
    try:
        out = gdf.to_crs(target)
    except Exception as exc:
        raise LabelError(f"cannot reproject labels {where} to {grid.crs_name}: {_first_line(exc)}") from exc
    report.append(f"reprojected labels from {_crs_name(gdf.crs)} to {grid.crs_name}")
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
    _warn(report, f"repaired {int(invalid.sum())} invalid geometries with shapely.make_valid")
    gdf = gdf.set_geometry(repaired, crs=gdf.crs)
    empty = shapely.is_empty(repaired)
    if empty.any():
        _warn(report, f"dropped {int(empty.sum())} geometries that were empty after repair")
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


def _normalise_key(value, integer: bool):
    if integer:
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            return str(value)
        return int(as_float) if as_float == int(as_float) else str(value)
    return str(value)


def _preview(items, limit=10) -> str:
    items = list(items)
    text = ", ".join(repr(i) for i in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _apply_mapping(source_keys: list, integer: bool, mapping: dict, report: list[str]):
    """Map source keys to targets. Returns ({source key: target value or None}, {target value: name})."""
    norm = {_normalise_key(k, integer): t for k, t in mapping.items()}
    targets = {t for t in norm.values() if t is not None}
    if not targets:
        raise LabelError("the mapping maps every value to None; map at least one value to a class")
    if all(isinstance(t, str) for t in targets):
        names = sorted(targets)
        value_of_target = {name: i + 1 for i, name in enumerate(names)}
        if len(names) > 254:
            raise LabelError(f"the mapping has {len(names)} target classes, more than 254; merge some")
        table = {v: n for n, v in value_of_target.items()}
    elif all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in targets):
        value_of_target = {int(t): int(t) for t in targets}
        bad = sorted(t for t in value_of_target if not 0 <= t <= 254)
        if bad:
            raise LabelError(f"mapping targets {bad} are outside 0..254; use class ids 0..254 or class names")
        table = {v: str(v) for v in value_of_target.values()}
    else:
        raise LabelError(
            "mapping targets mix names and numbers; map every value to a class name, or every one to an id"
        )
    unmapped = sorted({k for k in source_keys if k not in norm}, key=str)
    if unmapped:
        _warn(
            report,
            f"dropped the features of {len(unmapped)} class values not in the mapping: {_preview(unmapped)}",
        )
    key_to_value = {
        k: (value_of_target[norm[k]] if norm.get(k) is not None else None) for k in set(source_keys)
    }
    return key_to_value, table


def _classes_for_features(gdf, value_col: str, name_col: str | None, mapping, report):
    """Per-feature class value (-1 = dropped) and the class table."""
    series = gdf[value_col]
    integer = _is_integer_column(series)
    keys = [_normalise_key(v, integer) for v in series.tolist()]
    if mapping:
        key_to_value, table_pairs = _apply_mapping(keys, integer, mapping, report)
        values = np.array([-1 if key_to_value[k] is None else key_to_value[k] for k in keys], dtype=np.int64)
        return values, _sorted_table(table_pairs)
    if integer:
        values = np.array(keys, dtype=np.int64)
        unique = sorted(set(keys))
        bad = [v for v in unique if not 0 <= v <= 254]
        if bad:
            raise LabelError(
                f"class values {_preview(bad)} in column {value_col!r} are outside 0..254; map them to ids "
                "0..254 or names with a mapping"
            )
        names = {v: str(v) for v in unique}
        if name_col is not None:
            for v, n in zip(series.tolist(), gdf[name_col].tolist()):
                if n is not None and n == n:
                    names[int(v)] = str(n)
        return values, _sorted_table(names)
    unique_names = sorted(set(keys))
    if len(unique_names) > 254:
        raise LabelError(
            f"column {value_col!r} has {len(unique_names)} distinct classes, more than 254; merge them with a mapping"
        )
    value_of = {name: i + 1 for i, name in enumerate(unique_names)}
    values = np.array([value_of[k] for k in keys], dtype=np.int64)
    return values, _sorted_table({v: n for n, v in value_of.items()})


def _with_background(table: ClassTable, background, report: list[str]):
    """Class table with the background class added if needed, and the background index (or None)."""
    if background is None:
        return table, None
    if isinstance(background, str) and background in table.names:
        index = table.names.index(background)
    elif not isinstance(background, str) and int(background) in table.values:
        index = table.values.index(int(background))
    else:
        pairs = dict(zip(table.values, table.names))
        if isinstance(background, str):
            value = next(v for v in range(255) if v not in pairs)
            pairs[value] = background
        else:
            value = int(background)
            if not 0 <= value <= 254:
                raise LabelError(f"background value {value} is outside 0..254; choose a class id in 0..254")
            pairs[value] = "background"
        table = _sorted_table(pairs)
        index = table.values.index(value)
        report.append(f"added background class {table.names[index]!r} with value {table.values[index]}")
    report.append(
        f"scene pixels with no label are class {table.names[index]!r} (value {table.values[index]})"
    )
    return table, index


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


# --- raster ------------------------------------------------------------------------------------------------------


def _transforms_close(a: Affine, b: Affine) -> bool:
    scale = max(abs(a.a), abs(a.e), abs(a.b), abs(a.d), 1e-12)
    return all(abs(x - y) <= 1e-6 * scale for x, y in zip(tuple(a)[:6], tuple(b)[:6]))


def _aligned_offset(src, grid: _SceneGrid):
    """(row, col) of the scene origin in label pixels when both share a pixel grid, else None."""
    a, b = src.transform, grid.transform
    scale = max(abs(a.a), abs(a.e), 1e-12)
    if any(abs(x - y) > 1e-6 * scale for x, y in ((a.a, b.a), (a.b, b.b), (a.d, b.d), (a.e, b.e))):
        return None
    col, row = _apply(~a, b.c, b.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return int(round(row)), int(round(col))


def _same_crs(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return a == b or a.to_wkt() == b.to_wkt()
    except Exception:  # pragma: no cover
        return False


def _scan_values(src, band: int) -> np.ndarray:
    """Distinct valid values of a label raster, streaming row strips (never the whole raster at once)."""
    from rasterio.windows import Window

    block_rows = src.block_shapes[band - 1][0] if src.block_shapes else 1
    rows = max(block_rows, (4_000_000 // max(src.width, 1)) // max(block_rows, 1) * max(block_rows, 1), 1)
    found: set[int] = set()
    for row in range(0, src.height, rows):
        window = Window(0, row, src.width, min(rows, src.height - row))
        data = src.read(band, window=window)
        valid = src.read_masks(band, window=window) > 0
        found.update(np.unique(data[valid]).tolist())
    return np.array(sorted(found), dtype=np.int64)


def _raster_colours(src, band: int, values) -> dict[int, tuple[int, int, int]] | None:
    try:
        cmap = src.colormap(band)
    except Exception:
        return None
    return {int(v): tuple(int(c) for c in cmap[int(v)][:3]) for v in values if int(v) in cmap}


def _open_raster_labels(path: Path, grid: _SceneGrid, mapping, background):
    import rasterio
    from rasterio.warp import transform_bounds

    try:
        src = rasterio.open(path)
    except Exception as exc:
        raise LabelError(
            f"cannot read labels {path}: {_first_line(exc)}; check it is a raster or vector file"
        ) from exc
    with src:
        band = 1
        report = [f"label raster {path}: {src.width}x{src.height}, {src.dtypes[0]}, {_crs_name(src.crs)}"]
        if src.count > 1:
            report.append(f"label raster has {src.count} bands; using band 1")
        if not np.issubdtype(np.dtype(src.dtypes[band - 1]), np.integer):
            raise LabelError(
                f"label raster {path} is {src.dtypes[band - 1]}, not integer; write class ids as an integer raster"
            )
        offset, warp = _raster_placement(src, grid, path, report)

        source_values = _scan_values(src, band)
        if source_values.size == 0:
            raise LabelError(f"label raster {path} has no valid pixel; check its nodata value")
        report.append(f"label values found: {_preview(source_values.tolist(), 20)}")
        mapped_keys = {_normalise_key(k, True) for k in (mapping or {})}
        if IGNORE_INDEX in source_values and IGNORE_INDEX not in mapped_keys:
            report.append(f"label value {IGNORE_INDEX} is read as 'no label' (ignored)")
            source_values = source_values[source_values != IGNORE_INDEX]
            if source_values.size == 0:
                raise LabelError(
                    f"label raster {path} holds only the ignore value {IGNORE_INDEX}; check the file"
                )
        if mapping:
            key_to_value, pairs = _apply_mapping([int(v) for v in source_values], True, mapping, report)
            table = _sorted_table(pairs)
            src_vals = [v for v in source_values.tolist() if key_to_value[int(v)] is not None]
            targets = [key_to_value[int(v)] for v in src_vals]
        else:
            bad = [int(v) for v in source_values if not 0 <= v <= 254]
            if bad:
                raise LabelError(
                    f"label raster {path} has values {_preview(bad)} outside 0..254; set them as nodata or map "
                    "them to ids 0..254 with a mapping"
                )
            values = [int(v) for v in source_values]
            table = _sorted_table({v: str(v) for v in values}, _raster_colours(src, band, values))
            src_vals, targets = values, values

        table, background_index = _with_background(table, background, report)
        index_of = {v: i for i, v in enumerate(table.values)}
        source_indices = [index_of[t] for t in targets]

        if warp:
            label_bbox = transform_bounds(src.crs, grid.crs, *src.bounds)
        elif offset is not None:
            label_bbox = _SceneGrid(src.width, src.height, src.transform, src.crs).bbox()
        overlap = _bbox_overlap_fraction(grid.bbox(), label_bbox)
        if overlap <= 0:
            raise LabelError(
                f"labels {path} do not overlap the scene: labels {_fmt_bbox(label_bbox)}, scene "
                f"{_fmt_bbox(grid.bbox())} in {grid.crs_name}; check both files cover the same area"
            )
        report.append(f"labels' extent covers {overlap:.1%} of the scene")
    return RasterLabels(
        path,
        grid,
        table,
        band=band,
        source_values=src_vals,
        source_indices=source_indices,
        offset=offset,
        warp=warp,
        background_index=background_index,
        overlap=overlap,
        report=report,
    )


def _raster_placement(src, grid: _SceneGrid, path, report: list[str]):
    """(offset, warp): an aligned grid is read with a pixel offset, anything else through a WarpedVRT."""
    same_size = (src.width, src.height) == (grid.width, grid.height)
    if (
        same_size
        and _transforms_close(src.transform, grid.transform)
        and (_same_crs(src.crs, grid.crs) or src.crs is None or grid.crs is None)
    ):
        if not _same_crs(src.crs, grid.crs):
            report.append(
                "label raster and scene differ in CRS presence but share size and transform: same grid"
            )
        if src.transform.is_identity:
            report.append(
                "identity transform (not georeferenced): labels taken to be on the scene's pixel grid"
            )
        return (0, 0), False
    if src.crs is None or grid.crs is None:
        raise LabelError(
            f"label raster {path} ({_crs_name(src.crs)}) and scene ({grid.crs_name}) are on different grids and "
            "one has no CRS; georeference both, or give labels on the scene's exact grid"
        )
    if _same_crs(src.crs, grid.crs):
        offset = _aligned_offset(src, grid)
        if offset is not None:
            if offset != (0, 0) or not same_size:
                report.append(f"label raster is on the scene's pixel grid, offset {offset} pixels (row, col)")
            return offset, False
    report.append(
        f"label raster warped to the scene grid ({_crs_name(src.crs)} -> {grid.crs_name}, nearest neighbour)"
    )
    return None, True


__all__ = [
    "CLASS_COLUMN_CANDIDATES",
    "IGNORE_INDEX",
    "ClassTable",
    "LabelSource",
    "LabelWarning",
    "RasterLabels",
    "VectorLabels",
    "default_colours",
    "open_labels",
]
