"""Window geometry: centre tiles, context margins, alignment and coverage weights.

Pure geometry: no I/O, no torch. A scene of ``height x width`` pixels is covered by a regular grid of centre
tiles of size ``tile`` placed every ``stride`` pixels, starting at ``offset`` (zero or negative). Each window is
its centre tile grown by ``margin`` on every side. Window origins and sizes are multiples of ``align`` (the
model's output stride, 32 for SMP U-Nets) on one global grid, so every window sees the scene exactly as the
whole-scene model would. The last row and column of tiles may extend past the scene: those pixels are padding,
never scored, and every scene pixel is covered.

Coverage weights give each centre pixel a weight such that, for every scene pixel, the weights of all the
windows whose centre covers it sum to one (a partition of unity). They serve training (loss aggregation) and
inference (blending) alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from rs_pgd.errors import GridError

WEIGHT_KINDS = ("uniform", "position", "linear", "cosine", "nearest")
"""Coverage weight profiles. ``position`` is an alias of ``cosine`` (a smooth Hann-like profile)."""


@dataclass(frozen=True)
class GridWindow:
    """One window of a :class:`WindowGrid`.

    Attributes
    ----------
    index : int
        Position in row-major order.
    grid_row, grid_col : int
        Row and column of the tile in the grid.
    row_off, col_off : int
        Scene pixel of the centre tile's top-left corner (may be negative with a shifted grid).
    tile, margin : int
        Centre tile size and context margin, in pixels.
    """

    index: int
    grid_row: int
    grid_col: int
    row_off: int
    col_off: int
    tile: int
    margin: int

    @property
    def size(self) -> int:
        """Side of the whole window (centre plus margins), in pixels."""
        return self.tile + 2 * self.margin

    @property
    def window_row_off(self) -> int:
        """Scene row of the window's top edge (centre minus margin)."""
        return self.row_off - self.margin

    @property
    def window_col_off(self) -> int:
        """Scene column of the window's left edge (centre minus margin)."""
        return self.col_off - self.margin

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """Window extent in scene pixels as ``(row_start, col_start, row_stop, col_stop)``."""
        r, c = self.window_row_off, self.window_col_off
        return r, c, r + self.size, c + self.size

    @property
    def centre_slice(self) -> tuple[slice, slice]:
        """Slices that cut the centre tile out of a window array."""
        m = self.margin
        return slice(m, m + self.tile), slice(m, m + self.tile)


@dataclass(frozen=True)
class WindowGrid:
    """A regular grid of centre tiles with context margins over a scene.

    Parameters
    ----------
    height, width : int
        Scene size in pixels.
    tile : int
        Centre tile size; a multiple of ``align``.
    margin : int
        Context margin on each side; a multiple of ``align``, zero allowed.
    stride : int, optional
        Distance between tile origins, ``align <= stride <= tile``; defaults to ``tile``.
    align : int
        Output stride of the model; window origins and sizes are multiples of it.
    offset : (int, int)
        Origin of the first tile, ``(row, col)``, each in ``(-stride, 0]`` and a multiple of ``align``.
        Shifting it moves the whole grid; every pixel stays covered.
    """

    height: int
    width: int
    tile: int
    margin: int = 0
    stride: int | None = None
    align: int = 32
    offset: tuple[int, int] = (0, 0)

    def __post_init__(self):
        if self.stride is None:
            object.__setattr__(self, "stride", self.tile)
        validate_geometry(self.tile, self.margin, self.stride, self.align)
        if self.height < 1 or self.width < 1:
            raise GridError(f"scene size {self.height}x{self.width} is empty; give a raster with pixels")
        for o in self.offset:
            if o > 0 or o <= -self.stride or o % self.align:
                raise GridError(
                    f"grid offset {o} must be a multiple of {self.align} in (-stride, 0]; use 0 for the default grid"
                )

    # -- layout -------------------------------------------------------------------------------------------
    @property
    def row_offsets(self) -> np.ndarray:
        """Scene rows of the centre tiles' top edges."""
        return _axis_offsets(self.height, self.tile, self.stride, self.offset[0])

    @property
    def col_offsets(self) -> np.ndarray:
        """Scene columns of the centre tiles' left edges."""
        return _axis_offsets(self.width, self.tile, self.stride, self.offset[1])

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return len(self.row_offsets), len(self.col_offsets)

    @property
    def window_size(self) -> int:
        """Side of every window (centre plus margins)."""
        return self.tile + 2 * self.margin

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def __iter__(self) -> Iterator[GridWindow]:
        return self.windows()

    def windows(self) -> Iterator[GridWindow]:
        """Yield every window in row-major order."""
        cols = self.col_offsets
        index = 0
        for i, r in enumerate(self.row_offsets):
            for j, c in enumerate(cols):
                yield GridWindow(index, i, j, int(r), int(c), self.tile, self.margin)
                index += 1

    def window(self, index: int) -> GridWindow:
        """The window at a row-major ``index``."""
        n_rows, n_cols = self.shape
        if not 0 <= index < n_rows * n_cols:
            raise IndexError(f"window index {index} out of range for {n_rows * n_cols} windows")
        i, j = divmod(index, n_cols)
        return GridWindow(index, i, j, int(self.row_offsets[i]), int(self.col_offsets[j]), self.tile, self.margin)

    # -- weights ------------------------------------------------------------------------------------------
    def axis_weights(self, kind: str = "uniform") -> tuple[np.ndarray, np.ndarray]:
        """Per-axis centre weights, ``(rows: (n_rows, tile), cols: (n_cols, tile))``, float64.

        The weight of centre pixel ``(y, x)`` of window ``(i, j)`` is ``rows[i, y] * cols[j, x]``; it is zero
        where the centre lies outside the scene, and the weights of every scene pixel sum to one.
        """
        return (
            _axis_weights(self.height, self.tile, self.row_offsets, kind),
            _axis_weights(self.width, self.tile, self.col_offsets, kind),
        )

    def centre_weights(self, window: GridWindow, kind: str = "uniform") -> np.ndarray:
        """The ``(tile, tile)`` float64 weights of one window's centre (see :meth:`axis_weights`)."""
        wy, wx = self.axis_weights(kind)
        return np.outer(wy[window.grid_row], wx[window.grid_col])

    def weight_table(self, kind: str = "uniform") -> WeightTable:
        """Precomputed per-axis weights, for fast lookup window by window."""
        wy, wx = self.axis_weights(kind)
        return WeightTable(wy, wx)

    def coverage(self, kind: str = "uniform") -> np.ndarray:
        """The summed weights of every scene pixel, ``(height, width)``; all ones. For tests and small scenes."""
        total = np.zeros((self.height, self.width))
        table = self.weight_table(kind)
        for w in self.windows():
            r0, c0 = w.row_off, w.col_off
            rs, re = max(r0, 0), min(r0 + self.tile, self.height)
            cs, ce = max(c0, 0), min(c0 + self.tile, self.width)
            total[rs:re, cs:ce] += table.centre(w)[rs - r0 : re - r0, cs - c0 : ce - c0]
        return total


@dataclass(frozen=True)
class WeightTable:
    """Per-axis coverage weights of a grid; ``centre(window)`` gives one window's ``(tile, tile)`` weights."""

    rows: np.ndarray
    cols: np.ndarray

    def centre(self, window: GridWindow) -> np.ndarray:
        """The float64 ``(tile, tile)`` centre weights of ``window``."""
        return np.outer(self.rows[window.grid_row], self.cols[window.grid_col])


def validate_geometry(tile: int, margin: int, stride: int | None = None, align: int = 32) -> None:
    """Raise :class:`GridError` with a one-line fix unless tile, margin and stride form a valid grid."""
    stride = tile if stride is None else stride
    if align < 1:
        raise GridError(f"alignment {align} must be a positive number of pixels")
    if tile < align or tile % align:
        raise GridError(f"tile {tile} must be a positive multiple of {align} (the model's output stride); try {_round_up(max(tile, 1), align)}")
    if margin < 0:
        raise GridError(f"margin {margin} is negative; give 0 or a positive multiple of {align}")
    if margin % align:
        raise GridError(f"margin {margin} must be a multiple of {align} (the model's output stride); try {_round_up(margin, align)}")
    if stride < 1 or stride % align:
        raise GridError(f"stride {stride} must be a positive multiple of {align}")
    if stride > tile:
        raise GridError(f"stride {stride} is larger than tile {tile}: pixels between tiles would be missed; use a stride <= tile")


def suggest_geometry(height: int, width: int, align: int = 32) -> dict:
    """A tile/margin/stride suggestion for a scene: 512 px centres (smaller for small scenes), 64 px margins."""
    side = min(height, width)
    tile = 512
    while tile > 64 and tile > side:
        tile //= 2
    tile = max(_round_up(tile, align), align)
    margin = 64 if tile >= 256 else 32
    margin = _round_up(margin, align)
    return {"tile": tile, "margin": margin, "stride": tile, "window": tile + 2 * margin}


# -- helpers ----------------------------------------------------------------------------------------------
def _round_up(value: int, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _axis_offsets(length: int, tile: int, stride: int, origin: int) -> np.ndarray:
    count = max(1, math.ceil((length - origin - tile) / stride) + 1)
    return origin + stride * np.arange(count, dtype=np.int64)


def _profile(tile: int, kind: str) -> np.ndarray:
    t = (np.arange(tile) + 0.5) / tile
    if kind == "uniform":
        return np.ones(tile)
    if kind == "linear":
        return 1.0 - np.abs(2.0 * t - 1.0)
    if kind in ("cosine", "position"):
        return np.sin(np.pi * t) ** 2
    raise GridError(f"unknown weighting {kind!r}; choose one of {', '.join(WEIGHT_KINDS)}")


def _axis_weights(length: int, tile: int, offsets: np.ndarray, kind: str) -> np.ndarray:
    n = len(offsets)
    positions = offsets[:, None] + np.arange(tile)[None, :]  # scene coordinate of each centre pixel
    inside = (positions >= 0) & (positions < length)
    if kind == "nearest":
        centres = offsets + (tile - 1) / 2.0
        weights = np.zeros((n, tile))
        coords = np.arange(length)
        owner = np.argmin(np.abs(coords[None, :] - centres[:, None]) + np.where(
            (coords[None, :] >= offsets[:, None]) & (coords[None, :] < offsets[:, None] + tile), 0.0, np.inf
        ), axis=0)
        for i in range(n):
            mine = positions[i][inside[i]]
            weights[i, inside[i]] = (owner[mine] == i).astype(float)
        return weights
    raw = np.where(inside, _profile(tile, kind)[None, :], 0.0)
    total = np.zeros(length)
    np.add.at(total, positions[inside], raw[inside])
    weights = np.zeros((n, tile))
    weights[inside] = raw[inside] / total[positions[inside]]
    return weights
