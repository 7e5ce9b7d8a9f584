"""Streaming stitching: exact reconstruction, whole-image equality with enough margin, bounded memory."""

import numpy as np
import pytest

from rs_pgd.errors import GridError, ModelError
from rs_pgd.grid import WindowGrid
from rs_pgd.stitch import RowStitcher, pad_for_grid, stitch_array

BLENDS = ["none", "linear", "cosine"]
SIZES = [(64, 64), (100, 77), (37, 150), (20, 13), (1, 40)]  # multiples, non-multiples, smaller than one tile


def identity(window):
    return window


def box3(image):
    """3x3 mean filter of a (C, H, W) array, edge-padded: the window sees nothing beyond its own pixels."""
    p = np.pad(image, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = image.shape[1:]
    return sum(p[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0


def scene(h, w, c=3, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).normal(size=(c, h, w)).astype(dtype)


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("stride", [32, 16])
@pytest.mark.parametrize("size", SIZES)
def test_identity_reproduces_input(blend, stride, size):
    grid = WindowGrid(*size, tile=32, margin=16, stride=stride, align=16)
    image = scene(*size)
    out = stitch_array(grid, identity, image, blend=blend)
    if blend == "none":
        assert np.array_equal(out, image)
    else:
        assert np.max(np.abs(out - image)) <= 1e-12


@pytest.mark.parametrize("stride", [32, 16])
def test_identity_float32_blend_none_is_bitwise(stride):
    grid = WindowGrid(90, 71, tile=32, margin=16, stride=stride, align=16)
    image = scene(90, 71, dtype=np.float32)
    out = stitch_array(grid, identity, image, blend="none", dtype=np.float32)
    assert out.dtype == np.float32
    assert np.array_equal(out.view(np.uint32), image.view(np.uint32))


@pytest.mark.parametrize("offset", [(0, 0), (-16, 0), (-16, -16)])
def test_shifted_grid_reproduces_input(offset):
    grid = WindowGrid(70, 90, tile=64, margin=16, stride=32, align=16, offset=offset)
    image = scene(70, 90)
    assert np.max(np.abs(stitch_array(grid, identity, image, blend="cosine") - image)) <= 1e-12


def whole_image_box3(grid, image):
    """Reference: the filter on the whole reflect-padded scene, cropped back to the scene."""
    padded, top, left = pad_for_grid(grid, image)
    return box3(padded)[:, top : top + grid.height, left : left + grid.width]


@pytest.mark.parametrize("blend,stride", [("none", 16), ("none", 8), ("linear", 8), ("cosine", 8)])
def test_box_filter_with_margin_equals_whole_image(blend, stride):
    grid = WindowGrid(61, 45, tile=16, margin=4, stride=stride, align=4)
    image = scene(61, 45, c=2)
    reference = whole_image_box3(grid, image)
    out = stitch_array(grid, box3, image, blend=blend)
    assert np.max(np.abs(out - reference)) <= 1e-10


def test_box_filter_without_margin_shows_seams():
    """Teeth: with margin 0 the windows' edge padding differs from the scene, and the seams show."""
    grid = WindowGrid(61, 45, tile=16, margin=0, align=4)
    image = scene(61, 45, c=2)
    reference = whole_image_box3(grid, image)
    diff = np.abs(stitch_array(grid, box3, image) - reference)
    assert diff.max() > 1e-3
    assert diff[:, 15:17, 2:14].max() > 1e-3  # rows on both sides of the first tile seam
    assert diff[:, 2:14, 2:14].max() == 0  # inside the first tile the windows agree with the whole image


def test_memory_bound_on_tall_scene():
    h, w, c = 4096, 300, 2
    grid = WindowGrid(h, w, tile=64, margin=32, stride=32, align=32)
    image = scene(h, w, c=c, dtype=np.float32)
    stitcher = RowStitcher(grid, c, blend="cosine", dtype=np.float32)
    padded, top, left = pad_for_grid(grid, image)
    out = np.empty_like(image)
    seen_rows = []
    for window in grid.windows():
        r0, c0, r1, c1 = window.bounds
        for band in stitcher.add(window, padded[:, r0 + top : r1 + top, c0 + left : c1 + left]):
            seen_rows.append((band.row_start, band.row_stop))
            out[:, band.row_start : band.row_stop] = band.data
    for band in stitcher.flush():
        seen_rows.append((band.row_start, band.row_stop))
        out[:, band.row_start : band.row_stop] = band.data
    assert stitcher.max_rows_in_flight <= grid.window_size
    assert stitcher.buffer_nbytes <= grid.window_size * w * (c + 1) * 4
    assert stitcher.buffer_nbytes < image.nbytes / 30
    # bands are contiguous, in order, cover every row exactly once, and arrive while streaming
    assert seen_rows[0][0] == 0 and seen_rows[-1][1] == h
    assert all(a[1] == b[0] for a, b in zip(seen_rows, seen_rows[1:]))
    assert len(seen_rows) == grid.shape[0]
    assert np.max(np.abs(out - image)) <= 1e-6


def test_bands_are_emitted_as_soon_as_rows_finish():
    grid = WindowGrid(100, 64, tile=32, margin=0, stride=32, align=32)  # 4 rows of 2 windows
    stitcher = RowStitcher(grid, 1)
    emitted = []
    for window in grid.windows():
        bands = stitcher.add(window, np.ones((1, 32, 32)))
        emitted.append([(b.row_start, b.row_stop) for b in bands])
    assert emitted == [[], [(0, 32)], [], [(32, 64)], [], [(64, 96)], [], []]
    assert [(b.row_start, b.row_stop) for b in stitcher.flush()] == [(96, 100)]
    assert stitcher.flush() == []


def test_skipped_windows_get_fill():
    grid = WindowGrid(64, 64, tile=32, margin=0, align=32)
    stitcher = RowStitcher(grid, 1, fill=np.nan)
    bands = []
    for window in grid.windows():
        if window.index != 1:  # skip the top-right window
            bands += stitcher.add(window, np.full((1, 32, 32), 7.0))
    bands += stitcher.flush()
    out = np.concatenate([b.data for b in bands], axis=1)[0]
    assert np.isnan(out[:32, 32:]).all()
    assert (out[:32, :32] == 7).all() and (out[32:] == 7).all()


def test_zero_weight_does_not_leak_nan():
    """Blend none with overlap: a neighbour's NaN in a pixel it does not own must not reach the output."""
    grid = WindowGrid(32, 64, tile=32, margin=0, stride=16, align=16)
    stitcher = RowStitcher(grid, 1, blend="none")
    bands = []
    for window in grid.windows():
        out = np.full((1, 32, 32), float(window.index))
        out[:, :, :8] = (
            np.nan if window.grid_col > 0 else out[:, :, :8]
        )  # left quarter is owned by the neighbour
        bands += stitcher.add(window, out)
    bands += stitcher.flush()
    assert np.isfinite(np.concatenate([b.data for b in bands], axis=1)).all()


def test_errors():
    grid = WindowGrid(64, 64, tile=32, margin=0, align=32)
    windows = list(grid.windows())
    stitcher = RowStitcher(grid, 2)
    with pytest.raises(ModelError, match="expected"):
        stitcher.add(windows[0], np.zeros((3, 32, 32)))
    stitcher = RowStitcher(grid, 2)
    stitcher.add(windows[1], np.zeros((2, 32, 32)))
    with pytest.raises(GridError, match="order"):
        stitcher.add(windows[0], np.zeros((2, 32, 32)))
    with pytest.raises(GridError, match="blend"):
        RowStitcher(grid, 2, blend="gaussian")
