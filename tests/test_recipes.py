"""The data recipes against recorded STAC responses and tiny COGs on a local HTTP server (never the network).

Each recipe runs as its user runs it (``python data_recipes/NAME.py ...`` in a subprocess); the server in this
process answers the STAC search from ``tests/data/stac/*.json`` and serves the COGs with Range requests. The
expected pixels are computed from the generator's own arrays by integer indexing, not by GDAL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "data_recipes"
sys.path.insert(0, str(REPO / "tests" / "data"))
import stac_fixtures as fx  # noqa: E402
import stac_server  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
       "GDAL_HTTP_MAX_RETRY": "1", "GDAL_HTTP_RETRY_DELAY": "0.1", "NO_PROXY": "127.0.0.1,localhost"}
ENV.pop("RS_PGD_DEBUG", None)

# A box inside the Sentinel-2 tile that also covers its east half (so the west-half item cannot serve it).
BOX_UTM = (fx.X0 + 205, fx.Y0 - 995, fx.X0 + 995, fx.Y0 - 205)


def lonlat_box(x0, y0, x1, y1):
    lon0, lat0 = fx.lonlat(x0, y0)
    lon1, lat1 = fx.lonlat(x1, y1)
    lon2, lat2 = fx.lonlat(x0, y1)
    lon3, lat3 = fx.lonlat(x1, y0)
    return (max(lon0, lon2), max(lat0, lat3), min(lon1, lon3), min(lat1, lat2))  # inside the UTM box


BBOX = lonlat_box(*BOX_UTM)


def recipe(name, *args, cwd=None):
    return subprocess.run([sys.executable, str(RECIPES / name), *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def cogs(tmp_path_factory):
    return fx.write_cogs(tmp_path_factory.mktemp("cogs"))


@pytest.fixture(scope="module")
def server(cogs):
    with stac_server.StacServer(cogs) as srv:
        yield srv


def assert_refused(result, folder: Path, match: str):
    """Exit 2, one ``Error:`` line matching ``match``, no traceback, nothing written."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert match.lower() in lines[0].lower(), lines[0]
    assert list(folder.iterdir()) == [], list(folder.iterdir())


# -- Sentinel-2 -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s2_scene(server, tmp_path_factory):
    out = tmp_path_factory.mktemp("s2") / "scene.tif"
    result = recipe("sentinel2_l2a.py", "--bbox", *BBOX, "--dates", "2024-06-01/2024-08-31", "--max-cloud", 50,
                    "--bands", "B02,green,B4,B08,rededge1,B11", "--stac-url", server.url, "-o", out)
    assert result.returncode == 0, result.stderr
    return out


def test_sentinel2_least_cloudy_covering_item_wins(s2_scene):
    with rasterio.open(s2_scene) as ds:
        tags = ds.tags()
    # 0.3 % covers only the west half of the box, 31.5 % is the cloudiest: 4.2 % wins
    assert tags["STAC_ITEM_ID"] == "S2A_32UNF_20240704_0_L2A"
    assert float(tags["CLOUD_COVER"]) == 4.2
    assert tags["DATETIME"].startswith("2024-07-04")
    assert tags["STAC_COLLECTION"] == "sentinel-2-l2a"


def test_sentinel2_bands_order_crs_nodata_and_preset(s2_scene):
    from rs_pgd.presets import get_preset

    preset = get_preset("sentinel2-l2a")
    with rasterio.open(s2_scene) as ds:
        assert ds.descriptions == ("B02", "B03", "B04", "B08", "B05", "B11")
        assert ds.crs.to_epsg() == 32632
        assert ds.nodata == 0 and ds.dtypes[0] == "uint16"
        assert ds.res == (10.0, 10.0)
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
        assert ds.scales == (preset.scale,) * 6 and ds.offsets == (preset.offset,) * 6
        assert ds.tags()["RS_PGD_PRESET"] == "sentinel2-l2a"


def test_sentinel2_grid_is_the_10m_grid_snapped_around_the_box(s2_scene):
    with rasterio.open(s2_scene) as ds:
        t, bounds = ds.transform, ds.bounds
    assert (t.c - fx.X0) % 10 == 0 and (fx.Y0 - t.f) % 10 == 0  # on the source pixel grid
    to_utm = Transformer.from_crs("EPSG:4326", fx.UTM, always_xy=True)
    xs, ys = to_utm.transform([BBOX[0], BBOX[2], BBOX[0], BBOX[2]], [BBOX[1], BBOX[1], BBOX[3], BBOX[3]])
    assert bounds.left <= min(xs) < bounds.left + 10 and bounds.right - 10 < max(xs) <= bounds.right
    assert bounds.bottom <= min(ys) < bounds.bottom + 10 and bounds.top - 10 < max(ys) <= bounds.top


def test_sentinel2_pixels_come_from_the_chosen_item_and_bands(s2_scene):
    item = 1
    with rasterio.open(s2_scene) as ds:
        data = ds.read()
        row0, col0 = int(round((fx.Y0 - ds.transform.f) / 10)), int(round((ds.transform.c - fx.X0) / 10))
    h, w = data.shape[1:]
    keys = list(fx.S2_BANDS)
    for out_band, key in enumerate(["blue", "green", "red", "nir", "rededge1", "swir16"]):
        res = fx.S2_BANDS[key][1]
        source = fx.s2_array(item, keys.index(key), res)
        rows = (row0 + np.arange(h)) * 10 // res
        cols = (col0 + np.arange(w)) * 10 // res
        expected = source[rows[:, None], cols[None, :]]  # nearest: each 10 m pixel lies inside one 20 m pixel
        np.testing.assert_array_equal(data[out_band], expected, err_msg=key)


def test_sentinel2_nodata_corner_stays_nodata(server, tmp_path):
    # a box over the tile's north-west corner, where the sources hold 0 (nodata)
    out = tmp_path / "corner.tif"
    box = lonlat_box(fx.X0 + 15, fx.Y0 - 300, fx.X0 + 300, fx.Y0 - 15)
    result = recipe("sentinel2_l2a.py", "--bbox", *box, "--dates", "2024-06-01/2024-08-31", "--max-cloud", 50,
                    "--stac-url", server.url, "-o", out)
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as ds:
        data = ds.read()
        masks = ds.read_masks(1)
        assert ds.descriptions == ("B02", "B03", "B04", "B08")  # the default bands
    zero = np.all(data == 0, axis=0)
    assert zero.any() and (~zero).any()
    np.testing.assert_array_equal(masks == 0, zero)


def test_sentinel2_item_option_and_old_baseline_preset(server, tmp_path):
    out = tmp_path / "old.tif"
    result = recipe("sentinel2_l2a.py", "--bbox", *BBOX, "--dates", "2024-06-01/2024-08-31", "--item",
                    "S2A_32UNF_20210704_0_L2A", "--bands", "B04", "--stac-url", server.url, "-o", out)
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as ds:
        assert ds.tags()["STAC_ITEM_ID"] == "S2A_32UNF_20210704_0_L2A"
        assert ds.tags()["RS_PGD_PRESET"] == "sentinel2-l2a-pre04"
        assert ds.offsets == (0.0,) and ds.scales == (1e-4,)


def test_scene_from_recipe_reads_with_its_band_names(s2_scene):
    from rs_pgd.raster import SceneReader

    reader = SceneReader(s2_scene, bands="B04,B08", preset="sentinel2-l2a")
    assert reader.bands == (3, 4)  # by the file's band descriptions, not the preset's full band order


# -- Landsat --------------------------------------------------------------------------------------------------
def test_landsat_least_cloudy_landsat89_item_with_clouds_masked(server, tmp_path):
    out = tmp_path / "ls.tif"
    box = lonlat_box(fx.X0 + 100, fx.Y0 - 1100, fx.X0 + 1100, fx.Y0 - 100)
    result = recipe("landsat_c2_l2.py", "--bbox", *box, "--dates", "2023-06-01/2023-07-31", "--mask-clouds",
                    "--stac-url", server.url, "-o", out)
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as ds:
        tags, data = ds.tags(), ds.read()
        assert ds.descriptions == ("SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7")
        assert ds.scales[0] == 0.0000275 and ds.offsets[0] == -0.2 and ds.nodata == 0
        row0, col0 = int(round((fx.Y0 - ds.transform.f) / 30)), int(round((ds.transform.c - fx.X0) / 30))
    # LE07 (1 %) is not Landsat 8/9 and LC08 (35 %) is over the default 20 %: LC09 wins
    assert tags["STAC_ITEM_ID"] == "LC09_L2SP_196022_20230704_02_T1"
    h, w = data.shape[1:]
    qa = fx.qa_array()[row0:row0 + h, col0:col0 + w]
    cloudy = (qa & ((1 << 1) | (1 << 2) | (1 << 3) | (1 << 4))) != 0
    assert cloudy.any() and (~cloudy).any()
    for out_band, key in enumerate(["blue", "green", "red", "nir08", "swir16", "swir22"]):
        source = fx.ls_array(0, list(fx.LS_BANDS).index(key))[row0:row0 + h, col0:col0 + w]
        np.testing.assert_array_equal(data[out_band], np.where(cloudy, 0, source), err_msg=key)


# -- WorldCover -----------------------------------------------------------------------------------------------
def test_worldcover_lands_on_the_scene_grid_pixel_for_pixel(server, s2_scene, tmp_path):
    out = tmp_path / "labels.tif"
    result = recipe("worldcover_labels.py", "--like", s2_scene, "--stac-url", server.url, "-o", out)
    assert result.returncode == 0, result.stderr
    with rasterio.open(s2_scene) as scene, rasterio.open(out) as labels:
        assert (labels.crs, labels.transform, labels.shape) == (scene.crs, scene.transform, scene.shape)
        got = labels.read(1)
        cmap = labels.colormap(1)
        assert labels.nodata == 0
        assert json.loads(labels.tags()["CLASS_VALUES"])[:3] == [10, 20, 30]
        rows, cols = np.mgrid[0:scene.height, 0:scene.width]
        xs, ys = rasterio.transform.xy(scene.transform, rows.ravel(), cols.ravel())
    # reference: the WorldCover pixel under each scene pixel's centre, found by integer indexing
    lon, lat = Transformer.from_crs(fx.UTM, "EPSG:4326", always_xy=True).transform(xs, ys)
    lon, lat = np.asarray(lon), np.asarray(lat)
    expected = np.zeros(lon.shape, dtype=np.uint8)
    for tile in range(2):
        data, t = fx.wc_array(tile)
        c = np.floor((lon - t.c) / t.a).astype(int)
        r = np.floor((lat - t.f) / t.e).astype(int)
        inside = (c >= 0) & (c < data.shape[1]) & (r >= 0) & (r < data.shape[0]) & (expected == 0)
        expected[inside] = data[r[inside], c[inside]]
    expected = expected.reshape(got.shape)
    assert len(np.unique(expected)) > 5  # both tiles and many classes reach the scene
    np.testing.assert_array_equal(got, expected)
    assert cmap[10][:3] == (0, 100, 0) and cmap[80][:3] == (0, 100, 200)
    from rs_pgd.output import read_category_names

    names = read_category_names(out)
    assert names[10] == "tree cover" and names[80] == "permanent water bodies"


# -- bad input ------------------------------------------------------------------------------------------------
def test_help_of_every_recipe():
    for name in ("sentinel2_l2a.py", "landsat_c2_l2.py", "worldcover_labels.py"):
        result = recipe(name, "--help")
        assert result.returncode == 0 and "--output" in result.stdout, name


def test_bbox_no_item_covers(server, tmp_path):
    far = (20.0, 60.0, 20.01, 60.01)
    assert_refused(recipe("sentinel2_l2a.py", "--bbox", *far, "--dates", "2024-06-01/2024-08-31",
                          "--stac-url", server.url, "-o", tmp_path / "s.tif"), tmp_path, "no sentinel-2-l2a item")
    # a box half off the tile: items touch it, none covers it
    half = lonlat_box(fx.X0 + 900, fx.Y0 - 600, fx.X0 + 1500, fx.Y0 - 100)
    assert_refused(recipe("sentinel2_l2a.py", "--bbox", *half, "--dates", "2024-06-01/2024-08-31", "--max-cloud", 50,
                          "--stac-url", server.url, "-o", tmp_path / "s.tif"), tmp_path, "covers the whole box")


def test_stac_url_not_answering(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert_refused(recipe("sentinel2_l2a.py", "--bbox", *BBOX, "--dates", "2024-06-01/2024-08-31",
                          "--stac-url", f"http://127.0.0.1:{port}", "-o", tmp_path / "s.tif"), tmp_path,
                   "does not answer")


def test_unknown_asset_key(server, tmp_path):
    assert_refused(recipe("sentinel2_l2a.py", "--bbox", *BBOX, "--dates", "2024-06-01/2024-08-31", "--max-cloud", 50,
                          "--bands", "B02,B99", "--stac-url", server.url, "-o", tmp_path / "s.tif"), tmp_path,
                   "no asset for band 'B99'")


def test_bad_arguments_are_one_line(tmp_path):
    assert_refused(recipe("sentinel2_l2a.py", "--bbox", 10, 55, 9, 56, "--dates", "2024-06-01/2024-08-31",
                          "--stac-url", "http://127.0.0.1:9", "-o", tmp_path / "s.tif"), tmp_path, "W < E")
    assert_refused(recipe("sentinel2_l2a.py", "--bbox", 9, 55, 10, 56, "--dates", "June",
                          "--stac-url", "http://127.0.0.1:9", "-o", tmp_path / "s.tif"), tmp_path, "--dates")
    assert_refused(recipe("landsat_c2_l2.py", "--dates", "2024-06-01/2024-08-31", "-o", tmp_path / "s.tif"),
                   tmp_path, "--bbox")


def test_server_dropping_mid_read_leaves_nothing(tmp_path):
    from rasterio.transform import from_origin

    files = fx.write_cogs(tmp_path / "cogs")
    noise = np.random.default_rng(0).integers(1, 10000, (1024, 1024), dtype=np.uint16)
    fx._write_cog(files / "s2_1_nir.tif", noise, from_origin(fx.X0, fx.Y0, 10, 10), fx.UTM, 0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with stac_server.StacServer(files) as srv:
        srv.drop.add("s2_1_nir.tif")
        result = recipe("sentinel2_l2a.py", "--bbox", *BBOX, "--dates", "2024-06-01/2024-08-31", "--max-cloud", 50,
                        "--stac-url", srv.url, "-o", out_dir / "s.tif")
    assert_refused(result, out_dir, "network connection")
