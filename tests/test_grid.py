"""Window grid geometry: coverage, partition of unity, alignment, edge windows (property tests)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rs_pgd.errors import GridError
from rs_pgd.grid import WEIGHT_KINDS, WindowGrid, suggest_geometry, validate_geometry

ALIGN = 32


@st.composite
def grids(draw):
    tile = ALIGN * draw(st.integers(1, 6))
    stride = ALIGN * draw(st.integers(1, tile // ALIGN))
    margin = ALIGN * draw(st.integers(0, 3))
    height = draw(st.integers(1, 700))
    width = draw(st.integers(1, 700))
    offset = tuple(-ALIGN * draw(st.integers(0, stride // ALIGN - 1)) for _ in range(2))
    return WindowGrid(height, width, tile, margin, stride, ALIGN, offset)


@settings(max_examples=60, deadline=None)
@given(grids(), st.sampled_from(WEIGHT_KINDS))
def test_weights_are_a_partition_of_unity(grid, kind):
    coverage = grid.coverage(kind)
    assert coverage.shape == (grid.height, grid.width)
    np.testing.assert_allclose(coverage, 1.0, rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(grids())
def test_every_pixel_is_covered_including_the_remainder(grid):
    covered = np.zeros((grid.height, grid.width), dtype=int)
    for w in grid:
        r0, c0 = max(w.row_off, 0), max(w.col_off, 0)
        covered[r0 : w.row_off + w.tile, c0 : w.col_off + w.tile] += 1
    assert covered.min() >= 1
    # no tile lies wholly outside the scene
    for w in grid:
        assert w.row_off < grid.height and w.col_off < grid.width
        assert w.row_off + w.tile > 0 and w.col_off + w.tile > 0


@settings(max_examples=60, deadline=None)
@given(grids())
def test_window_origins_and_sizes_are_aligned(grid):
    for w in grid:
        assert w.window_row_off % ALIGN == 0 and w.window_col_off % ALIGN == 0
        assert w.size % ALIGN == 0
        r0, c0, r1, c1 = w.bounds
        assert (r1 - r0, c1 - c0) == (w.size, w.size)


@settings(max_examples=40, deadline=None)
@given(grids(), st.sampled_from(WEIGHT_KINDS))
def test_weights_vanish_outside_the_scene(grid, kind):
    table = grid.weight_table(kind)
    for w in grid:
        weights = table.centre(w)
        rows = w.row_off + np.arange(w.tile)
        cols = w.col_off + np.arange(w.tile)
        outside = ~(((rows >= 0) & (rows < grid.height))[:, None] & ((cols >= 0) & (cols < grid.width))[None, :])
        assert np.all(weights[outside] == 0)
        assert np.all(weights >= 0)


def test_remainder_column_is_not_dropped():
    grid = WindowGrid(100, 130, tile=64, margin=32)
    assert grid.shape == (2, 3)  # 130 = 64 + 64 + 2: the last 2 columns get a tile of their own
    assert list(grid.col_offsets) == [0, 64, 128]


def test_stride_smaller_than_tile_overlaps_and_nearest_is_a_crop():
    grid = WindowGrid(256, 256, tile=128, margin=0, stride=64)
    assert grid.shape == (3, 3)
    near = grid.weight_table("nearest")
    values = np.unique(np.concatenate([near.centre(w).ravel() for w in grid]))
    assert set(values) <= {0.0, 1.0}


def test_position_weights_are_smooth_and_peak_in_the_centre():
    grid = WindowGrid(512, 512, tile=128, stride=64)
    w = grid.centre_weights(grid.window(4), "position")
    assert w[64, 64] > w[5, 5]
    assert np.abs(np.diff(w, axis=0)).max() < 0.1


def test_shifted_grid_still_covers_everything():
    grid = WindowGrid(200, 200, tile=64, margin=32, offset=(-32, -32))
    assert grid.row_offsets[0] == -32
    np.testing.assert_allclose(grid.coverage("uniform"), 1.0)


def test_window_lookup_matches_iteration():
    grid = WindowGrid(300, 500, tile=96, margin=32)
    assert [grid.window(i) for i in range(len(grid))] == list(grid)
    with pytest.raises(IndexError):
        grid.window(len(grid))


@pytest.mark.parametrize(
    "tile, margin, stride, match",
    [
        (100, 32, None, "multiple of 32"),
        (128, -32, None, "negative"),
        (128, 40, None, "margin 40"),
        (128, 32, 256, "larger than tile"),
        (0, 0, None, "multiple of 32"),
    ],
)
def test_invalid_geometry_is_a_clear_error(tile, margin, stride, match):
    with pytest.raises(GridError, match=match):
        validate_geometry(tile, margin, stride)
    with pytest.raises(ValueError):  # GridError is also a ValueError
        WindowGrid(500, 500, tile, margin, stride)


def test_unknown_weighting_lists_the_valid_ones():
    with pytest.raises(GridError, match="uniform"):
        WindowGrid(64, 64, 32).weight_table("gaussian")


def test_suggested_geometry_is_valid_for_small_and_large_scenes():
    for h, w in [(64, 64), (256, 256), (718, 791), (10000, 10000)]:
        s = suggest_geometry(h, w)
        validate_geometry(s["tile"], s["margin"], s["stride"])
