"""``rs-pgd suggest``: the regions where labels would help most.

1. Synthetic rasters (no model): the per-cell sums read window by window give, for every candidate region, the
   mean uncertainty a brute-force pass over the whole array gives (scene sizes that are no multiple of the cell,
   windows narrower than the scene); the top region is the most uncertain one; the picks never overlap; the
   labelled share lowers the score.
2. A random-weight Unet through ``rs_pgd.suggest`` on a crop of the demo scene: ranked, non-overlapping square
   polygons in the scene's CRS (GPKG) or WGS84 (GeoJSON), the top one holding the highest mean uncertainty of all
   candidates, class shares summing to one; bad input refused before anything is written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

import rs_pgd.suggestion as suggest_module
from rs_pgd.errors import LabelError, OptionError, OutputError
from rs_pgd.suggestion import cell_stats, region_scores, select_regions

pytestmark = pytest.mark.filterwarnings("ignore:.*the map is likely wrong")

H, W, SIZE = 150, 217, 40  # not multiples of the cell (20)
PROFILE = dict(driver="GTiff", crs=CRS.from_epsg(32633), transform=Affine(10.0, 0, 5e5, 0, -10.0, 4e6), count=1,
               height=H, width=W, dtype="uint8", nodata=255, tiled=True, blockxsize=32, blockysize=32)  # fmt: skip


def synthetic(tmp_path, labelled_box=None):
    """An uncertainty raster with a hot square and nodata strip, its class map, optionally a label raster."""
    rng = np.random.default_rng(0)
    u = rng.integers(0, 60, size=(H, W)).astype(np.uint8)
    u[95:140, 150:200] = 240  # the most uncertain place
    u[10:50, 20:60] = 200  # the second
    u[:, :8] = 255  # nodata
    classes = np.where(np.arange(W)[None] < 110, 1, 2).repeat(H, 0).astype(np.uint8)
    classes[u == 255] = 255
    with rasterio.open(tmp_path / "u.tif", "w", **PROFILE) as dst:
        dst.write(u, 1)
    with rasterio.open(tmp_path / "c.tif", "w", **PROFILE) as dst:
        dst.write(classes, 1)
        dst.update_tags(1, CLASS_NAMES=json.dumps(["water", "land"]), CLASS_VALUES=json.dumps([1, 2]))
    labels = None
    if labelled_box is not None:
        lab = np.full((H, W), 255, np.uint8)
        r0, r1, c0, c1 = labelled_box
        lab[r0:r1, c0:c1] = 1
        with rasterio.open(tmp_path / "labels.tif", "w", **PROFILE) as dst:
            dst.write(lab, 1)
        labels = tmp_path / "labels.tif"
    return u, tmp_path / "u.tif", tmp_path / "c.tif", labels


def brute_force_means(u: np.ndarray, cell: int, size: int) -> np.ndarray:
    rows, cols = -(-H // cell), -(-W // cell)
    out = np.full((max(rows - 1, 1), max(cols - 1, 1)), np.nan)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            block = u[i * cell : i * cell + size, j * cell : j * cell + size]
            valid = block != 255
            out[i, j] = block[valid].mean() / 254 if valid.any() else np.nan
    return out


@pytest.mark.parametrize("read_columns", [4096, 60], ids=["one-window-wide", "narrow-windows"])
def test_cell_sums_give_every_region_its_brute_force_mean(tmp_path, monkeypatch, read_columns):
    monkeypatch.setattr(suggest_module, "READ_COLUMNS", read_columns)
    u, u_path, c_path, _ = synthetic(tmp_path)
    stats, names, georef = cell_stats(u_path, c_path, SIZE // 2)
    assert names == {1: "water", 2: "land"} and georef["crs"] == PROFILE["crs"]
    assert stats.valid.sum() == (u != 255).sum() and stats.classes.sum() == (u != 255).sum()
    scores, candidate = region_scores(stats, SIZE, min_valid=1e-9)
    expected = brute_force_means(u, SIZE // 2, SIZE)
    assert np.array_equal(candidate, np.isfinite(expected))
    np.testing.assert_allclose(scores[candidate], expected[candidate], rtol=1e-12)


def test_top_region_is_the_most_uncertain_and_picks_do_not_overlap(tmp_path):
    u, u_path, c_path, _ = synthetic(tmp_path)
    stats, _, _ = cell_stats(u_path, c_path, SIZE // 2)
    scores, candidate = region_scores(stats, SIZE)
    picked = select_regions(scores, candidate, top=6)
    assert len(picked) == 6
    assert scores[picked[0]] == np.nanmax(scores)
    i, j = picked[0]
    assert 95 <= i * 20 and i * 20 + SIZE <= 140 and 150 <= j * 20 and j * 20 + SIZE <= 200  # inside the hot square
    picked_scores = [scores[p] for p in picked]
    assert picked_scores == sorted(picked_scores, reverse=True)
    for a in range(len(picked)):
        for b in range(a):
            (ia, ja), (ib, jb) = picked[a], picked[b]
            assert abs(ia - ib) >= 2 or abs(ja - jb) >= 2  # 2 x 2-cell squares: no shared pixel
    # greedy, not just sorted: the best regions overlap each other, so the second pick is not the second score
    assert sorted(scores[candidate], reverse=True)[1] > scores[picked[1]]


def test_no_candidates_means_no_pick():
    assert select_regions(np.full((2, 2), np.nan), np.zeros((2, 2), bool), 3) == []


def test_labelled_regions_score_lower(tmp_path):
    u, u_path, c_path, labels = synthetic(tmp_path, labelled_box=(80, 150, 140, 217))  # labels on the hot square
    from rs_pgd.labels import open_labels
    from rs_pgd.raster import scene_info

    source = open_labels(labels, scene_info(u_path))
    stats, _, _ = cell_stats(u_path, c_path, SIZE // 2, source)
    full, candidate = region_scores(stats, SIZE, labelled_weight=1.0)
    none, _ = region_scores(stats, SIZE, labelled_weight=0.0)
    first_unweighted = select_regions(none, candidate, 1)[0]
    first = select_regions(full, candidate, 1)[0]
    assert first != first_unweighted
    assert first in {(0, 1), (1, 1)}  # rows 0-40 or 20-60, columns 20-60: on the second hot square, unlabelled
    assert full[first_unweighted] == 0.0  # fully labelled: worth nothing more


# -- 2. through rs_pgd.suggest ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_and_scene(tmp_path_factory):
    from conftest import write_demo_crop
    from helpers_models import random_checkpoint

    folder = tmp_path_factory.mktemp("suggest")
    model = random_checkpoint(folder / "m.safetensors", classes=3)
    scene = write_demo_crop(folder / "crop.tif", 256, row_off=0, col_off=200)
    return model, scene


FAST = dict(precision="32", workers=0, progress=False)


@pytest.fixture(scope="module")
def suggested(model_and_scene, tmp_path_factory):
    from rs_pgd import suggest

    model, scene = model_and_scene
    folder = tmp_path_factory.mktemp("suggested")
    result = suggest(model, scene, folder / "to_label.gpkg", top=5, size=64, uncertainty=folder / "u.tif", **FAST)
    return result, folder


def test_suggest_writes_ranked_non_overlapping_squares(suggested, model_and_scene):
    import geopandas as gpd
    import shapely

    result, folder = suggested
    _, scene = model_and_scene
    frame = gpd.read_file(result.output)
    with rasterio.open(scene) as ds:
        assert frame.crs == ds.crs
        bounds, (xres, yres) = ds.bounds, ds.res
    assert list(frame["rank"]) == [1, 2, 3, 4, 5] and len(result.regions) == 5
    assert list(frame["score"]) == sorted(frame["score"], reverse=True)
    assert np.allclose(frame.geometry.area, 64 * xres * 64 * yres)  # 64 x 64 px
    for a in range(len(frame)):
        for b in range(a):
            assert shapely.area(shapely.intersection(frame.geometry[a], frame.geometry[b])) == 0
    minx, miny, maxx, maxy = frame.total_bounds
    assert minx >= bounds.left and maxx <= bounds.right and miny >= bounds.bottom and maxy <= bounds.top
    shares = frame[[c for c in frame.columns if c.startswith("share_")]]
    assert list(shares.columns) == ["share_water", "share_land", "share_cloud"]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-9)
    assert "labelled_share" not in frame.columns


def test_top_region_has_the_highest_mean_uncertainty_of_all_candidates(suggested):
    result, _ = suggested
    with rasterio.open(result.uncertainty) as ds:
        u = ds.read(1)
    cell, size = 32, 64
    best, means = None, []
    for i in range(0, u.shape[0] - cell, cell):
        for j in range(0, u.shape[1] - cell, cell):
            block = u[i : i + size, j : j + size]
            valid = block != 255
            if valid.sum() >= 0.5 * size * size:
                means.append(block[valid].mean() / 254)
                if best is None or means[-1] > best[0]:
                    best = (means[-1], i, j)
    top = result.regions[0]
    assert top["mean_uncertainty"] == pytest.approx(max(means), rel=1e-9)
    assert (top["row_off"], top["col_off"]) == best[1:]
    assert result.candidates == len(means)
    assert [r["mean_uncertainty"] for r in result.regions] == sorted([r["mean_uncertainty"] for r in result.regions],
                                                                     reverse=True)  # fmt: skip


def test_suggest_geojson_is_wgs84_and_labels_add_their_share(model_and_scene, tmp_path):
    import geopandas as gpd

    from rs_pgd import suggest

    model, scene = model_and_scene
    with rasterio.open(scene) as ds:
        profile = {**ds.profile, "count": 1, "nodata": 255}
    lab = np.full((256, 256), 255, np.uint8)
    lab[:, :128] = 1  # the left half labelled
    with rasterio.open(tmp_path / "labels.tif", "w", **profile) as dst:
        dst.write(lab, 1)
    result = suggest(model, scene, tmp_path / "s.geojson", top=3, size=64, labels=tmp_path / "labels.tif", **FAST)
    frame = gpd.read_file(result.output)
    assert frame.crs.to_epsg() == 4326 and -80 < frame.total_bounds[0] < -75
    assert "labelled_share" in frame.columns
    for row in result.regions:
        labelled_cols = max(0, min(128, row["col_off"] + row["width"]) - row["col_off"]) / row["width"]
        assert row["score"] <= row["mean_uncertainty"] * (1 - 0.99 * labelled_cols) + 1e-9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "s.geojson"]  # the temporary files went


@pytest.mark.parametrize("name,kwargs,error,match", [
    ("out.shp", {}, OutputError, r"-o out.shp ends in .shp, but rs-pgd suggest writes a GeoPackage or GeoJSON"),
    ("out.gpkg", {"top": 0}, OptionError, r"--top 0 must be a whole number of at least 1"),
    ("out.gpkg", {"size": 63}, OptionError, r"--size 63 must be an even number"),
    ("out.gpkg", {"labelled_weight": 2.0}, OptionError, r"--labelled-weight 2.0 must lie in \[0, 1\]"),
    ("out.gpkg", {"labels": "missing.gpkg"}, LabelError, r"not found"),
    ("out.gpkg", {"uncertainty": "u.png"}, OutputError, r"--uncertainty u.png ends in .png"),
    ("out.gpkg", {"uncertainty": "out.gpkg"}, OutputError, r"--uncertainty .*same file as output"),
    ("out.gpkg", {"uncertainty_kind": "gini"}, OptionError, r"--uncertainty-kind 'gini'"),
])  # fmt: skip
def test_bad_suggest_input_is_refused_before_any_output(model_and_scene, tmp_path, name, kwargs, error, match):
    from rs_pgd import suggest

    model, scene = model_and_scene
    kwargs = {k: tmp_path / v if k in ("labels", "uncertainty") else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match):
        suggest(model, scene, tmp_path / name, **{**FAST, **kwargs})
    assert list(tmp_path.iterdir()) == []
