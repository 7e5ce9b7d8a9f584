"""What vector and raster label sources share: the scene grid they read on, CRS helpers, the ``read`` contract.

No torch here. A label source's ``read(bounds)`` gives a ``uint8`` array of class *indices* for any window of the
scene, :data:`rs_pgd.classes.IGNORE_INDEX` (255) where a pixel has no label (unlabelled, nodata, outside the
scene). Window bounds are ``(row_start, col_start, row_stop, col_stop)`` in scene pixels (as
:attr:`rs_pgd.grid.GridWindow.bounds`) and may extend outside the scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine

from rs_pgd.classes import IGNORE_INDEX, ClassTable
from rs_pgd.errors import LabelError

# ----------------------------------------------------------------------------------------------------------------
# Scene geometry helpers


@dataclass(frozen=True)
class SceneGrid:
    width: int
    height: int
    transform: Affine
    crs: Any  # rasterio CRS or None

    @classmethod
    def of(cls, scene) -> SceneGrid:
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
        x, y = apply_transform(self.transform, col_start, row_start)
        t = self.transform
        return Affine(t.a, t.b, x, t.d, t.e, y)

    def corners(self, row_start, col_start, row_stop, col_stop) -> np.ndarray:
        pts = [(col_start, row_start), (col_stop, row_start), (col_stop, row_stop), (col_start, row_stop)]
        return np.array([apply_transform(self.transform, col, row) for col, row in pts])

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
        return crs_name(self.crs)


def apply_transform(transform: Affine, col: float, row: float) -> tuple[float, float]:
    """Map a (col, row) pixel position to coordinates (written out: ``*`` on Affine is being deprecated)."""
    t = transform
    return (t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f)


def crs_name(crs) -> str:
    """``EPSG:NNNN``, else the CRS name, else the start of its WKT; ``no CRS`` for None."""
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


def fmt_bbox(bbox) -> str:
    """A bounding box for messages, one decimal."""
    return "(" + ", ".join(f"{v:.1f}" for v in bbox) + ")"


def bbox_overlap_fraction(scene_bbox, label_bbox) -> float:
    """Fraction of the scene box's area inside the label box."""
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


def same_crs(a, b) -> bool:
    """Whether two rasterio CRS (or None) are the same."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return a == b or a.to_wkt() == b.to_wkt()
    except Exception:  # pragma: no cover
        return False


def first_line(exc: BaseException) -> str:
    """First line of an exception's message (its type name when empty), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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

    def _init_grid(self, grid: SceneGrid):
        self.width, self.height, self.transform, self.crs = grid.width, grid.height, grid.transform, grid.crs

    @property
    def _grid(self) -> SceneGrid:
        return SceneGrid(self.width, self.height, self.transform, self.crs)

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


class ReindexedLabels:
    """A label source whose class indices are mapped to another class table (see
    :func:`rs_pgd.classes.unify_class_tables`): what several scenes with differently numbered classes train on."""

    def __init__(self, source, lut: np.ndarray, classes):
        self.source, self.lut, self.classes = source, lut, classes
        self.report = list(getattr(source, "report", []))

    def read(self, bounds):
        """The source's class indices of a window, in the unified table's numbering."""
        return self.lut[self.source.read(bounds)]
