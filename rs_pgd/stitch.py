"""Seamless, streaming stitching of window outputs into scene row bands.

Numpy in, numpy out: no I/O, no torch. A model runs on every window of a :class:`~rs_pgd.grid.WindowGrid`
(centre tile plus context margin); :class:`RowStitcher` keeps only each window's centre, multiplies it by the
grid's coverage weights (a partition of unity over the scene), and accumulates it into a buffer that holds just
the scene rows still in flight: ``tile`` rows by the scene width by the channels, never the whole scene. As soon
as no later window can touch a band of rows, the band is normalised by its summed weights (TileMerger style) and
handed back, ready to be written.

Blend modes map onto the grid's weight kinds:

``none``
    Each scene pixel comes from the one window whose centre is nearest (weight kind ``nearest``); with
    ``stride == tile`` this is a plain centre crop. An identity model reproduces its input bit for bit.
``linear``, ``cosine``
    Overlapping centres (``stride < tile``) are blended with triangular or Hann-like weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from rs_pgd.errors import GridError, ModelError
from rs_pgd.grid import GridWindow, WindowGrid

BLEND_MODES = {"none": "nearest", "linear": "linear", "cosine": "cosine"}
"""Blend mode -> coverage weight kind of :meth:`WindowGrid.weight_table`."""


class RowBand(NamedTuple):
    """A finished band of scene rows: ``data[:, k, :]`` is scene row ``row_start + k``."""

    row_start: int
    data: np.ndarray

    @property
    def row_stop(self) -> int:
        """Scene row just past the band."""
        return self.row_start + self.data.shape[1]


def weight_kind(blend: str) -> str:
    """The grid weight kind of a blend mode; :class:`GridError` names the valid modes."""
    try:
        return BLEND_MODES[blend]
    except KeyError:
        raise GridError(f"unknown blend mode {blend!r}; choose one of {', '.join(BLEND_MODES)}") from None


class RowStitcher:
    """Accumulate weighted window outputs and hand back finished scene row bands.

    Windows must arrive in the grid's row-major order (``grid.windows()``); windows may be skipped (e.g. windows
    without valid pixels): their pixels then get ``fill`` unless another window covers them.

    Parameters
    ----------
    grid : WindowGrid
        The grid the windows come from.
    channels : int
        Number of output channels ``C`` of each window.
    blend : {"none", "linear", "cosine"}
        How overlapping centres are combined (see the module docstring).
    dtype : numpy dtype
        Accumulation and output dtype, float64 (exactness tests) or float32 (inference).
    fill : float
        Value of pixels that no added window covered (NaN marks them for the caller).

    Attributes
    ----------
    max_rows_in_flight : int
        Most scene rows the buffer ever holds: ``grid.tile``, below the window height.
    buffer_nbytes : int
        Bytes held by the accumulation buffers.
    rows_done : int
        Scene rows handed back so far.

    Examples
    --------
    >>> stitcher = RowStitcher(grid, channels=3, blend="cosine")
    >>> for window in grid.windows():
    ...     for band in stitcher.add(window, model(read(window.bounds))):
    ...         write(band.row_start, band.data)
    >>> for band in stitcher.flush():
    ...     write(band.row_start, band.data)
    """

    def __init__(
        self, grid: WindowGrid, channels: int, blend: str = "none", dtype=np.float64, fill: float = 0.0
    ):
        if channels < 1:
            raise ModelError(
                f"a stitcher needs at least one channel, got {channels}; check the model's classes"
            )
        self.grid = grid
        self.channels = int(channels)
        self.blend = blend
        self.dtype = np.dtype(dtype)
        self.fill = fill
        self._weights = grid.weight_table(weight_kind(blend))
        self._row_offsets = [int(r) for r in grid.row_offsets]
        self._n_cols = grid.shape[1]
        tile, width = grid.tile, grid.width
        self._acc = np.zeros((self.channels, tile, width), dtype=self.dtype)
        self._wsum = np.zeros((tile, width), dtype=self.dtype)
        self._grid_row = 0  # grid row whose centre rows the buffer holds
        self._last_index = -1
        self.max_rows_in_flight = tile
        self.rows_done = 0
        self._flushed = False

    # -- public ---------------------------------------------------------------------------------------------
    @property
    def buffer_nbytes(self) -> int:
        """Bytes held by the accumulation buffers."""
        return self._acc.nbytes + self._wsum.nbytes

    @property
    def buffer_start(self) -> int:
        """Scene row of the buffer's first row (negative with a shifted grid)."""
        return self._row_offsets[self._grid_row]

    def add(self, window: GridWindow, output: np.ndarray) -> list[RowBand]:
        """Add one window's output and return the row bands it finished (often none).

        Parameters
        ----------
        window : GridWindow
            A window of the grid, later in row-major order than every window added before.
        output : ndarray, shape (C, S, S)
            The model output for the whole window (centre plus margins), ``S = grid.window_size``.
        """
        self._check(window, output)
        bands = self._advance_to(window.grid_row)
        self._accumulate(window, output)
        if window.grid_col == self._n_cols - 1 and window.grid_row + 1 < len(self._row_offsets):
            bands += self._advance_to(window.grid_row + 1)
        return bands

    def flush(self) -> list[RowBand]:
        """Return every row not yet handed back; call once, after the last window."""
        if self._flushed:
            return []
        self._flushed = True
        start = self.buffer_start
        return self._emit(start, start + self.grid.tile)

    def finished(self, pairs) -> Iterator[RowBand]:
        """Stitch an iterable of ``(window, output)`` pairs, yielding bands as they finish, then the rest."""
        for window, output in pairs:
            yield from self.add(window, output)
        yield from self.flush()

    # -- internals ------------------------------------------------------------------------------------------
    def _check(self, window: GridWindow, output: np.ndarray) -> None:
        if self._flushed:
            raise GridError("the stitcher was already flushed; create a new RowStitcher for another pass")
        if window.index <= self._last_index:
            raise GridError(
                f"window {window.index} arrived after window {self._last_index}; feed windows in grid.windows() order"
            )
        self._last_index = window.index
        size = self.grid.window_size
        expected = (self.channels, size, size)
        if tuple(output.shape) != expected:
            raise ModelError(
                f"window output has shape {tuple(output.shape)}, expected {expected}; "
                "return (channels, window, window) for the whole window"
            )

    def _accumulate(self, window: GridWindow, output: np.ndarray) -> None:
        tile, height, width = self.grid.tile, self.grid.height, self.grid.width
        weights = self._weights.centre(window)
        centre = output[(slice(None), *window.centre_slice)]
        # clip the centre to the scene; buffer row = scene row - buffer_start
        r0, c0 = window.row_off, window.col_off
        rs, re = max(r0, 0), min(r0 + tile, height)
        cs, ce = max(c0, 0), min(c0 + tile, width)
        if rs >= re or cs >= ce:
            return
        w = weights[rs - r0 : re - r0, cs - c0 : ce - c0].astype(self.dtype, copy=False)
        part = centre[:, rs - r0 : re - r0, cs - c0 : ce - c0].astype(self.dtype, copy=False)
        contribution = np.where(w > 0, part * w, 0)  # a zero weight never lets NaN/inf through
        b0 = rs - self.buffer_start
        b1 = re - self.buffer_start
        self._acc[:, b0:b1, cs:ce] += contribution
        self._wsum[b0:b1, cs:ce] += w

    def _advance_to(self, grid_row: int) -> list[RowBand]:
        """Hand back the rows before ``grid_row``'s centre and shift the buffer down to it."""
        bands = []
        while self._grid_row < grid_row:
            start = self.buffer_start
            step = self._row_offsets[self._grid_row + 1] - start
            bands += self._emit(start, start + step)
            self._shift(step)
            self._grid_row += 1
        return bands

    def _shift(self, step: int) -> None:
        keep = self.grid.tile - step
        if keep > 0:
            self._acc[:, :keep] = self._acc[:, step:]
            self._wsum[:keep] = self._wsum[step:]
        self._acc[:, max(keep, 0) :] = 0
        self._wsum[max(keep, 0) :] = 0

    def _emit(self, start: int, stop: int) -> list[RowBand]:
        """Normalise buffer rows for scene rows ``[start, stop)`` clipped to the scene."""
        lo, hi = max(start, self.rows_done, 0), min(stop, self.grid.height)
        if lo >= hi:
            return []
        b0, b1 = lo - self.buffer_start, hi - self.buffer_start
        acc, wsum = self._acc[:, b0:b1], self._wsum[b0:b1]
        covered = wsum > 0
        data = np.full(acc.shape, self.fill, dtype=self.dtype)
        np.divide(acc, wsum, out=data, where=covered[None])
        self.rows_done = hi
        return [RowBand(lo, data)]


def pad_for_grid(grid: WindowGrid, image: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Reflect-pad a ``(C, H, W)`` scene array so that every window of ``grid`` can be cut from it.

    Returns the padded array and the padded array's row and column of scene pixel ``(0, 0)``.
    """
    rows, cols = grid.row_offsets, grid.col_offsets
    m, t = grid.margin, grid.tile
    top = max(0, m - int(rows[0]))
    bottom = max(0, int(rows[-1]) + t + m - grid.height)
    left = max(0, m - int(cols[0]))
    right = max(0, int(cols[-1]) + t + m - grid.width)
    padded = np.pad(image, ((0, 0), (top, bottom), (left, right)), mode="reflect")
    return padded, top, left


def cut_window(padded: np.ndarray, origin: tuple[int, int], window: GridWindow) -> np.ndarray:
    """Cut a whole window out of an array made by :func:`pad_for_grid`."""
    r0, c0, r1, c1 = window.bounds
    top, left = origin
    return padded[:, r0 + top : r1 + top, c0 + left : c1 + left]


def stitch_array(
    grid: WindowGrid,
    fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    blend: str = "none",
    dtype=np.float64,
    channels: int | None = None,
) -> np.ndarray:
    """Run ``fn`` on every window of a reflect-padded in-memory scene and stitch a full ``(C, H, W)`` array.

    For tests and small data; real scenes go through :class:`RowStitcher` band by band.

    Parameters
    ----------
    grid : WindowGrid
        Window geometry; its height and width must match ``image``.
    fn : callable
        Maps a ``(C_in, S, S)`` window to a ``(C, S, S)`` output.
    image : ndarray, shape (C_in, H, W) or (H, W)
    blend : {"none", "linear", "cosine"}
    channels : int, optional
        Output channels; defaults to the input's.
    """
    if image.ndim == 2:
        image = image[None]
    if image.shape[1:] != (grid.height, grid.width):
        raise GridError(
            f"image is {image.shape[1]}x{image.shape[2]} but the grid is {grid.height}x{grid.width}; build the grid from the image size"
        )
    padded, top, left = pad_for_grid(grid, image)
    stitcher = RowStitcher(grid, channels or image.shape[0], blend=blend, dtype=dtype)
    out = np.empty((stitcher.channels, grid.height, grid.width), dtype=stitcher.dtype)
    pairs = ((w, fn(cut_window(padded, (top, left), w))) for w in grid.windows())
    for band in stitcher.finished(pairs):
        out[:, band.row_start : band.row_stop] = band.data
    return out
