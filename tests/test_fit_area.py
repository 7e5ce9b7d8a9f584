"""``fit --bbox/--aoi``: training on part of a scene, and a STAC item's ``raster:bands`` as the preset.

The strong tests go through ``rs_pgd.fit`` with the toy net of ``tests/toynet.py`` (float64, frozen BatchNorm,
SGD, one step, seed fixed):

- a fit on a box equals a fit on the same pixels cut out to their own file, weights and first-step loss alike.
  A box's windows see the scene's real pixels around it as context (as ``predict --bbox`` does) where a file of
  its own is reflect-padded, so the scene here holds, around the area, the area's own mirror image: the two
  contexts are then the same pixels, and everything else (the grid, the labels following the window, the band
  statistics, the validation blocks, the checkpoint's stats) has to match for the weights to match;
- on an ordinary scene, the step of a fit on a box is the SGD step of the whole-scene computation restricted to the
  box's labelled pixels: the context really is the scene around the box (and so differs from the cut-out's).
"""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.transform import from_origin
from safetensors.torch import load_file
from toynet import ToyNet

from rs_pgd import fit
from rs_pgd.checkpoint import read_header
from rs_pgd.errors import SceneError

sys.path.insert(0, str(Path(__file__).parent / "data"))

H, W, BANDS, CLASSES, FACTOR = 224, 232, 3, 3, 8
TILE, MARGIN = 32, 32
REACH = TILE + MARGIN  # the farthest a window of an area's grid reaches past the area
ROW0, COL0, AREA_H, AREA_W = 72, 64, 72, 88  # the area, in scene pixels (multiples of the toy net's 8)
RES, X0, Y0 = 10.0, 600_000.0, 5_000_000.0
CRS = "EPSG:32633"
LR = 0.05
# one step per pass over the area and no class weights (the defaults, auto, would group the windows and weight the
# classes), so one step is the whole-area SGD step these tests compare with
OPTIONS = dict(tile=TILE, margin=MARGIN, epochs=1, max_steps=1, optimizer="sgd", lr=LR, weight_decay=0.0,
               norm="frozen", precision="32", device="cpu", augment=False, val_fraction=0.0, workers=0,
               batch_size=4, progress=False, seed=0, step_every="scene", class_weights="none")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write(path, data, transform, nodata=None):
    profile = dict(driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=data.shape[0],
                   dtype=data.dtype.name, crs=CRS, transform=transform, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def smooth_image(rng, shape):
    image = rng.normal(size=shape) * 40 + 300
    return (image + np.roll(image, 1, axis=-2) + np.roll(image, 1, axis=-1)).astype(np.float32)


def make_scene(folder, mirrored: bool):
    """A scene and a label raster (1..3, 0 = unlabelled, labelled everywhere, also around the area) plus the
    area cut out to files of its own. ``mirrored``: around the area the scene holds the area reflect-padded."""
    rng = np.random.default_rng(3)
    image = smooth_image(rng, (BANDS, H, W)) * 1.5 - 100  # other statistics than the area's
    area = smooth_image(rng, (BANDS, AREA_H, AREA_W))
    if mirrored:
        padded = np.pad(area, ((0, 0), (REACH, REACH), (REACH, REACH)), mode="reflect")
        image[:, ROW0 - REACH : ROW0 + AREA_H + REACH, COL0 - REACH : COL0 + AREA_W + REACH] = padded
    else:
        image[:, ROW0 : ROW0 + AREA_H, COL0 : COL0 + AREA_W] = area
    labels = rng.integers(1, CLASSES + 1, size=(1, H, W)).astype(np.uint8)
    labels[0, ROW0 + 10 : ROW0 + 30, COL0 + 40 : COL0 + 70] = 0  # an unlabelled patch inside the area
    transform = from_origin(X0, Y0, RES, RES)
    area_transform = from_origin(X0 + COL0 * RES, Y0 - ROW0 * RES, RES, RES)
    inside = (slice(None), slice(ROW0, ROW0 + AREA_H), slice(COL0, COL0 + AREA_W))
    return {
        "scene": write(folder / "scene.tif", image, transform),
        "labels": write(folder / "labels.tif", labels, transform, nodata=0),
        "crop": write(folder / "crop.tif", image[inside], area_transform),
        "crop_labels": write(folder / "crop_labels.tif", labels[inside], area_transform, nodata=0),
    }


def area_bbox():
    """A box inside the area's outer pixels: snapped outward it is exactly the area."""
    west, north = X0 + COL0 * RES + 0.3 * RES, Y0 - ROW0 * RES - 0.2 * RES
    east, south = X0 + (COL0 + AREA_W) * RES - 0.4 * RES, Y0 - (ROW0 + AREA_H) * RES + 0.1 * RES
    return [west, south, east, north]


def one_step(scene, labels, output, net, **changes):
    log = output.with_suffix(".jsonl")
    fit(scene, labels, output, model=net, log_json=log, **(OPTIONS | changes))
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    return load_file(output), read_header(output), steps


def toy_net():
    return ToyNet(BANDS, CLASSES, depth=1, factor=FACTOR).double()


# -- the strong test: a box equals its cut-out -------------------------------------------------------------------
@pytest.mark.parametrize("changes", [{}, {"val_fraction": 0.25, "augment": True, "max_steps": 2,
                                          "step_every": 3}], ids=["one-scene-step", "validation-augment-2-steps"])
def test_fit_on_a_box_equals_fit_on_the_box_cut_out_to_its_own_file(tmp_path, changes):
    files = make_scene(tmp_path, mirrored=True)
    net = toy_net()
    boxed, boxed_meta, boxed_steps = one_step(files["scene"], files["labels"], tmp_path / "box.safetensors",
                                              copy.deepcopy(net), bbox=area_bbox(), bbox_crs=CRS, **changes)
    cut, cut_meta, cut_steps = one_step(files["crop"], files["crop_labels"], tmp_path / "cut.safetensors",
                                        copy.deepcopy(net), **changes)
    assert boxed_steps == [dict(s, time=b["time"]) for s, b in zip(cut_steps, boxed_steps)]  # loss, windows, lr
    assert boxed_meta.stats == cut_meta.stats
    assert boxed_meta.history == cut_meta.history  # incl. the validation scores of the held-out blocks
    assert set(boxed) == set(cut)
    for name in cut:
        assert torch.equal(boxed[name], cut[name]), name
    initial = net.state_dict()
    assert any(not torch.equal(cut[k], initial[k]) for k in cut)  # the step did something
    record = boxed_meta.training_scenes[0]
    assert (record["width"], record["height"]) == (AREA_W, AREA_H)
    assert record["window"] == {"col_off": COL0, "row_off": ROW0, "width": AREA_W, "height": AREA_H}
    assert record["bounds"] == [X0 + COL0 * RES, Y0 - (ROW0 + AREA_H) * RES, X0 + (COL0 + AREA_W) * RES,
                                Y0 - ROW0 * RES]
    assert (record["scene_width"], record["scene_height"]) == (W, H)
    assert boxed_meta.config["bbox"] == area_bbox() and boxed_meta.config["bbox_crs"] == CRS
    assert "window" not in cut_meta.training_scenes[0]


# -- the context of a box is the scene around it -------------------------------------------------------------------
def whole_scene_step_on_the_area(net, files, stats):
    """One SGD step on the mean CE of the area's labelled pixels, the net run once on the whole scene."""
    with rasterio.open(files["scene"]) as src:
        image = src.read()
    with rasterio.open(files["labels"]) as src:
        values = src.read(1)
    mean = np.asarray(stats["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(stats["std"], dtype=np.float32)[:, None, None]
    padded = np.pad((image.astype(np.float32) - mean) / std, ((0, 0), (MARGIN, MARGIN), (MARGIN, MARGIN)),
                    mode="reflect")
    in_area = np.zeros((H, W), dtype=bool)
    in_area[ROW0 : ROW0 + AREA_H, COL0 : COL0 + AREA_W] = True
    labelled = torch.from_numpy((values > 0) & in_area)
    target = torch.from_numpy(values.astype(np.int64) - 1)
    net = copy.deepcopy(net).eval()
    net.zero_grad(set_to_none=True)
    logits = net(torch.from_numpy(padded[None]).double())[0, :, MARGIN : MARGIN + H, MARGIN : MARGIN + W]
    F.cross_entropy(logits[:, labelled].T, target[labelled]).backward()
    with torch.no_grad():
        return {name: (p - LR * p.grad).detach() for name, p in net.named_parameters()}


def update_error(fitted, reference, initial):
    got = torch.cat([(fitted[k] - initial[k]).reshape(-1) for k in reference])
    want = torch.cat([(reference[k] - initial[k]).reshape(-1) for k in reference])
    return float(torch.linalg.norm(got - want) / torch.linalg.norm(want))


def test_a_box_is_trained_with_the_real_scene_around_it_as_context(tmp_path):
    files = make_scene(tmp_path, mirrored=False)
    net = toy_net()
    initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
    boxed, meta, _ = one_step(files["scene"], files["labels"], tmp_path / "box.safetensors", copy.deepcopy(net),
                              bbox=area_bbox(), bbox_crs=CRS)
    reference = whole_scene_step_on_the_area(net, files, meta.stats)
    assert update_error(boxed, reference, initial) <= 1e-10
    cut, _, _ = one_step(files["crop"], files["crop_labels"], tmp_path / "cut.safetensors", copy.deepcopy(net))
    assert update_error(cut, reference, initial) > 1e-6  # reflect-padded at the cut's edges: other context


# -- windows, the AOI file, errors ---------------------------------------------------------------------------------
def test_only_the_windows_of_the_box_are_trained_and_an_aoi_is_its_bounding_box(tmp_path):
    import geopandas as gpd
    from shapely.geometry import Polygon

    files = make_scene(tmp_path, mirrored=False)
    whole_steps = one_step(files["scene"], files["labels"], tmp_path / "whole.safetensors", toy_net())[2]
    assert whole_steps[0]["windows"] == (H // TILE) * -(-W // TILE)  # 7 x 8: every window has labels
    boxed, _, steps = one_step(files["scene"], files["labels"], tmp_path / "box.safetensors", toy_net(),
                               bbox=area_bbox(), bbox_crs=CRS)
    assert steps[0]["windows"] == -(-AREA_H // TILE) * -(-AREA_W // TILE)  # 3 x 3
    w, s, e, n = area_bbox()
    triangle = Polygon([(w, s), (e, s), ((w + e) / 2, n), (w, s)])  # its bounding box is the box
    gpd.GeoDataFrame({"name": ["area"]}, geometry=[triangle], crs=CRS).to_file(tmp_path / "aoi.gpkg")
    from_aoi, meta, aoi_steps = one_step(files["scene"], files["labels"], tmp_path / "aoi.safetensors", toy_net(),
                                         aoi=tmp_path / "aoi.gpkg")
    assert [s["loss"] for s in aoi_steps] == [s["loss"] for s in steps]
    assert all(torch.equal(from_aoi[k], boxed[k]) for k in boxed)
    assert meta.training_scenes[0]["window"]["width"] == AREA_W


def test_a_box_in_lon_lat_is_snapped_outward_to_the_scene_pixels(tmp_path):
    from rasterio.warp import transform_bounds

    files = make_scene(tmp_path, mirrored=False)
    lonlat = transform_bounds(CRS, "EPSG:4326", *area_bbox())
    _, meta, _ = one_step(files["scene"], files["labels"], tmp_path / "ll.safetensors", toy_net(), bbox=lonlat)
    window = meta.training_scenes[0]["window"]
    # the lon/lat box's corners, back in UTM, reach a little beyond the area: it can only grow, by a pixel or two
    assert COL0 - 2 <= window["col_off"] <= COL0 and ROW0 - 2 <= window["row_off"] <= ROW0
    assert window["col_off"] + window["width"] >= COL0 + AREA_W and window["row_off"] + window["height"] >= ROW0 + AREA_H


def test_area_errors_come_before_torch(tmp_path):
    """preflight_fit refuses a bad area in one line without importing torch."""
    import subprocess

    files = make_scene(tmp_path, mirrored=False)
    (tmp_path / "empty.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    code = f"""
import sys
from rs_pgd.config import preflight_fit
from rs_pgd.errors import SceneError
cases = [dict(bbox=[0, 0, 1, 1]), dict(bbox=[1, 0, 0, 1]), dict(bbox=[0, 0, 1, 1], bbox_crs="EPSG:99999"),
         dict(aoi={str(tmp_path / 'empty.geojson')!r}), dict(aoi={str(tmp_path / 'none.gpkg')!r}),
         dict(bbox=[0, 0, 1, 1], aoi={str(tmp_path / 'empty.geojson')!r})]
for options in cases:
    try:
        preflight_fit([{str(files['scene'])!r}], [{str(files['labels'])!r}], {str(tmp_path / 'm.safetensors')!r},
                      options)
    except SceneError as exc:
        print(str(exc).splitlines()[0])
    else:
        print("accepted", options)
assert "torch" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6 and not any(line.startswith("accepted") for line in lines), lines
    assert "does not overlap scene.tif" in lines[0] and "EPSG:4326" in lines[0]
    assert "needs W < E and S < N" in lines[1]
    assert "--bbox-crs 'EPSG:99999' is not a CRS" in lines[2]
    assert "has no geometry" in lines[3]
    assert "cannot read the area of interest" in lines[4]
    assert "not both" in lines[5]


def test_the_area_applies_to_the_training_scenes_not_to_a_validation_scene(tmp_path):
    files = make_scene(tmp_path, mirrored=False)
    _, meta, _ = one_step(files["scene"], files["labels"], tmp_path / "m.safetensors", toy_net(),
                          bbox=area_bbox(), bbox_crs=CRS, val_scene=files["crop"], val_labels=files["crop_labels"])
    assert meta.training_scenes[0]["width"] == AREA_W
    # a box that does not overlap the validation scene is no error either
    far = [X0 + 1 * RES, Y0 - (H - 1) * RES, X0 + 20 * RES, Y0 - (H - 20) * RES]  # the lower left corner
    one_step(files["scene"], files["labels"], tmp_path / "far.safetensors", toy_net(), bbox=far, bbox_crs=CRS,
             val_scene=files["crop"], val_labels=files["crop_labels"])
    with pytest.raises(SceneError, match="does not overlap crop.tif"):
        fit([files["scene"], files["crop"]], [files["labels"], files["crop_labels"]], tmp_path / "x.safetensors",
            model=toy_net(), bbox=far, bbox_crs=CRS, **OPTIONS)


# -- a STAC item as the scene: the preset from its raster:bands ----------------------------------------------------
@pytest.fixture
def served_item(tmp_path, monkeypatch):
    """A recorded Earth Search Sentinel-2 L2A item (raster:bands scale 0.0001, offset -0.1) saved as item.json, its
    COGs on a local HTTP server, and a label raster on the item's 10 m grid."""
    import stac_fixtures as fx
    import stac_server

    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "1")
    files = fx.write_cogs(tmp_path / "files")
    labels = np.where(np.arange(fx.S2_SIZE)[None, :] < 60, 1, 2).repeat(fx.S2_SIZE, 0)[None].astype(np.uint8)
    label_path = tmp_path / "labels.tif"
    with rasterio.open(label_path, "w", driver="GTiff", width=fx.S2_SIZE, height=fx.S2_SIZE, count=1, dtype="uint8",
                       crs=fx.UTM, transform=from_origin(fx.X0, fx.Y0, 10, 10), nodata=0) as dst:
        dst.write(labels)
    with stac_server.StacServer(files) as server:
        item = next(it for it in server.recorded("sentinel-2-l2a.json") if it["id"] == fx.S2_ITEMS[1][0])
        (files / "item.json").write_text(json.dumps(item))
        yield files / "item.json", label_path, fx


def test_fit_on_a_stac_item_takes_the_preset_from_its_raster_bands(served_item, tmp_path):
    from rs_pgd.config import preflight_predict
    from rs_pgd.errors import CheckpointError
    from rs_pgd.raster import SceneReader

    item, labels, fx = served_item
    box = [fx.X0 + 300, fx.Y0 - 1000, fx.X0 + 1000, fx.Y0 - 300]  # pixels 30..100 of the 120 px item
    _, meta, _ = one_step(item, labels, tmp_path / "m.safetensors", ToyNet(4, 2, depth=1, factor=FACTOR).double(),
                          bands=["red", "green", "blue", "nir"], bbox=box, bbox_crs=fx.UTM)
    assert (meta.preset, meta.scale, meta.offset) == ("from-scene", 0.0001, -0.1)
    assert meta.band_names == ("red", "green", "blue", "nir")
    assert meta.training_scenes[0]["window"] == {"col_off": 30, "row_off": 30, "width": 70, "height": 70}
    rows, cols = np.mgrid[30:100, 30:100]
    red = fx.s2_value(1, list(fx.S2_BANDS).index("red"), rows, cols) * 1e-4 - 0.1  # reflectance, not DN
    assert meta.stats["mean"][0] == pytest.approx(red.mean(), rel=1e-6)
    # predict reads the scene the same way: the stored name re-derives the item's numbers
    reader = SceneReader(item, bands=list(meta.bands), preset=meta.preset)
    assert (reader.preset.scale, reader.preset.offset) == (0.0001, -0.1)
    # a copy of the item's stored values without scale/offset is refused by predict's preflight, in one line
    assert preflight_predict(tmp_path / "m.safetensors", item, tmp_path / "out.tif").meta.preset == "from-scene"
    ds = SceneReader(item, preset="generic").dataset  # the item's bands as stored (the VRT of its assets)
    with rasterio.open(tmp_path / "dn.tif", "w", driver="GTiff", width=ds.width, height=ds.height, count=ds.count,
                       dtype="uint16", crs=ds.crs, transform=ds.transform, nodata=0) as dst:
        dst.write(ds.read())
    with pytest.raises(CheckpointError, match="scaled by the scene's own scale/offset .* dn.tif has none"):
        preflight_predict(tmp_path / "m.safetensors", tmp_path / "dn.tif", tmp_path / "out.tif")
