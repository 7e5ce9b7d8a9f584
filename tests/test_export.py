"""ONNX export (rs_pgd.export, `rs-pgd export`) and the torch-free onnxruntime predict path.

What is checked, each against a reference computed another way:
1. The metadata Deepness reads (PUTvision/qgis-plugin-deepness ``ModelBase``): keys, JSON values, and the
   overlap percentage put through Deepness's own tile arithmetic.
2. The graph: one float32 NCHW input of fixed side with a dynamic batch, softmax probabilities out, opset <= 17.
3. onnxruntime equals torch on real windows of the demo scene, whatever the batch size.
4. Deepness's preprocessing ``(raw / 255 - mean) / std`` with the exported mean/std equals rs-pgd's reader and
   normalisation on real windows (uint8 demo scene; uint16 Sentinel-2 and Landsat scenes with scale/offset presets),
   and the naive statistics / 255 do not.
5. `rs-pgd predict model.onnx` with torch blocked agrees with `rs-pgd predict model.safetensors`.
6. Bad input: one line, exit 2, nothing written.

The model is a Unet-ResNet18 with its random initialisation (nothing is trained) on 64 px tiles with 32 px margins.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import DEMO_DIR

from rs_pgd.cli.main import cli

DEMO_SCENE = DEMO_DIR / "RGB.byte.tif"
TILE, MARGIN = 64, 32
WINDOW = TILE + 2 * MARGIN
CLASSES = {"values": [3, 7], "names": ["water", "land"], "colours": [[30, 90, 200], [40, 160, 60]],
           "ignore_index": 255}  # fmt: skip
DEEPNESS_KEYS = {"model_type", "class_names", "resolution", "tile_size", "tiles_size", "tiles_overlap", "seg_thresh",
                 "seg_small_segment", "standardization_mean", "standardization_std"}  # fmt: skip

onnx = pytest.importorskip("onnx", reason="the [onnx] extra is part of [test]: pip install -e .[test]")
ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is part of [test]: pip install -e .[test]")


def checkpoint_meta(scene, preset="generic", arch="Unet", encoder="resnet18"):
    """Checkpoint metadata as :meth:`rs_pgd.train.Trainer.metadata` writes it, with statistics of ``scene``."""
    from rs_pgd.raster import SceneReader, compute_band_stats, scene_info

    reader = SceneReader(scene, preset=preset)
    info = scene_info(scene)
    return {
        "format": "rs-pgd-checkpoint", "format_version": 1,
        "model": {"arch": arch, "encoder": encoder, "in_channels": reader.count, "classes": 2, "norm": "frozen"},
        "bands": list(reader.bands), "band_names": [f"band {b}" for b in reader.bands],
        "preset": reader.preset.name, "scale": reader.preset.scale, "offset": reader.preset.offset,
        "stats": compute_band_stats(reader, max_windows=8).to_dict(), "classes": CLASSES,
        "geometry": {"tile": TILE, "margin": MARGIN, "stride": TILE, "align": 32},
        "training_scenes": [{"path": str(scene), "crs": info.crs_string, "res": list(info.res),
                             "width": info.width, "height": info.height}],
    }  # fmt: skip


def write_checkpoint(path, meta):
    import torch

    from rs_pgd import checkpoint
    from rs_pgd.models import ModelSpec

    torch.manual_seed(0)
    net, _ = ModelSpec.from_dict(meta["model"]).build()
    checkpoint.save(path, net, checkpoint.CheckpointMeta.from_dict(meta))  # a 0.1-layout dict, upgraded
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    return write_checkpoint(folder / "model.safetensors", checkpoint_meta(DEMO_SCENE))


@pytest.fixture(scope="module")
def exported(checkpoint):
    import rs_pgd

    result = rs_pgd.export(checkpoint, checkpoint.with_name("model.onnx"), tile=TILE, margin=MARGIN)
    return result


def props(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def decoded(path) -> dict:
    return {key: json.loads(value) for key, value in props(path).items()}  # Deepness json.loads each value


def real_windows(bounds_list, meta):
    """rs-pgd's own network input for windows of the demo scene: SceneReader (reflect padding) + normalise."""
    from rs_pgd.raster import BandStats, SceneReader, normalise

    reader = SceneReader(DEMO_SCENE)
    stats = BandStats.from_dict(meta.stats)
    out = []
    for bounds in bounds_list:
        data = reader.read(bounds)
        out.append(normalise(data.image, data.valid, stats))
    return np.stack(out)


# -- 1. metadata ---------------------------------------------------------------------------------------------------
def test_metadata_has_every_deepness_key_json_encoded(exported, checkpoint):
    from rs_pgd.checkpoint import read_header

    meta = decoded(exported.output)
    assert DEEPNESS_KEYS | {"rs_pgd"} <= set(meta)
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {"0": "water", "1": "land"}  # output-channel order
    assert meta["tile_size"] == meta["tiles_size"] == WINDOW
    assert meta["tiles_overlap"] == 50  # 2 x 32 of 128 px
    assert meta["seg_thresh"] == 0 and meta["seg_small_segment"] == 0
    with rasterio.open(DEMO_SCENE) as src:
        assert src.crs.linear_units == "metre"
        assert meta["resolution"] == pytest.approx(src.res[0] * 100, rel=1e-9)  # cm/px
    assert len(meta["standardization_mean"]) == len(meta["standardization_std"]) == 3
    stored = meta["rs_pgd"]
    header = read_header(checkpoint)
    assert {k: v for k, v in stored.items() if k != "export"} == header.to_dict()
    assert stored["export"] == {"tile": TILE, "margin": MARGIN, "stride": None, "window": WINDOW, "input": "input",
                                "output": "output", "probabilities": "softmax"}  # fmt: skip
    assert all(isinstance(v, str) for v in props(exported.output).values())


def deepness_kept_context(window: int, percent: int) -> int:
    """Context Deepness keeps around each tile's result: its own arithmetic, copied from
    ``ProcessingOverlap.get_overlap_px``, ``MapProcessingParameters.processing_stride_px`` and
    ``TileParams.get_slice_on_full_image_for_copying`` (PUTvision/qgis-plugin-deepness, src/deepness)."""
    overlap_px = int(window * percent / 100 * 2) // 2
    stride = window - overlap_px
    return max((window - stride) // 2, 0)


@pytest.mark.parametrize("window,margin", [(128, 32), (384, 64), (768, 128), (640, 64), (224, 96), (512, 0)])
def test_overlap_percent_keeps_the_margin_in_deepness_and_is_the_smallest(window, margin):
    from rs_pgd.onnx_export import overlap_percent

    percent = overlap_percent(window, margin)
    assert isinstance(percent, int)
    assert deepness_kept_context(window, percent) >= margin
    if margin:
        assert deepness_kept_context(window, percent - 1) < margin  # one percent less loses context


# -- 2. graph ------------------------------------------------------------------------------------------------------
def test_graph_has_one_fixed_size_input_with_dynamic_batch_and_opset_17(exported):
    model = onnx.load(str(exported.output))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 17
    assert model.ir_version <= 9  # onnxruntime 1.17 (Deepness) reads IR <= 9
    (inp,), (out,) = model.graph.input, model.graph.output

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert isinstance(dims(inp)[0], str) and dims(inp)[1:] == [3, WINDOW, WINDOW]
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.name == "output" and isinstance(dims(out)[0], str) and dims(out)[1:] == [2, WINDOW, WINDOW]
    assert dims(out)[0] == dims(inp)[0]  # one batch axis


# -- 3. onnxruntime equals torch -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_onnxruntime_equals_torch_on_real_windows_at_any_batch_size(exported, checkpoint):
    import torch

    from rs_pgd.models import model_from_checkpoint

    net, meta = model_from_checkpoint(checkpoint)
    # an inner window, one over the nodata corner and one past the top-left edge (reflect padding)
    x = real_windows([(288, 288, 288 + WINDOW, 288 + WINDOW), (0, 600, WINDOW, 600 + WINDOW), (-32, -32, 96, 96)], meta)
    session = ort.InferenceSession(str(exported.output), providers=["CPUExecutionProvider"])
    batched = session.run(None, {"input": x})[0]
    single = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    assert batched.shape == (3, 2, WINDOW, WINDOW) and batched.dtype == np.float32
    assert np.allclose(batched.sum(axis=1), 1.0, atol=1e-5)  # softmax probabilities
    assert np.max(np.abs(batched - want)) <= 1e-4
    assert np.max(np.abs(single - batched)) <= 1e-5
    assert 1 - np.mean(batched.argmax(1) == want.argmax(1)) < 1e-3
    assert 0 <= exported.max_abs_diff <= 1e-4  # the export's own check
    # companion: another checkpoint's weights are far from these outputs
    other, _ = model_from_checkpoint(checkpoint)
    torch.manual_seed(1)
    for p in other.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    with torch.no_grad():
        assert np.max(np.abs(torch.softmax(other(torch.from_numpy(x)), dim=1).numpy() - batched)) > 1e-2


# -- 4. normalisation through Deepness's preprocessing -------------------------------------------------------------
def deepness_input(raw_chw: np.ndarray, mean, std) -> np.ndarray:
    """Deepness's preprocessing of raw band values (``preprocessing_utils``: ``np.float32(x * 1./255.)`` then
    ``(x - mean) / std`` with float32 mean/std), NCHW."""
    x = np.float32(np.moveaxis(raw_chw, 0, -1)[None] * 1.0 / 255.0)
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return np.transpose(x, (0, 3, 1, 2))[0]


def rs_pgd_input(scene, meta, bounds):
    """rs-pgd's network input and validity for a window inside the scene, and the raw values there."""
    from rs_pgd.raster import BandStats, SceneReader, normalise

    reader = SceneReader(scene, bands=meta["bands"], preset=meta["preset"])
    data = reader.read(bounds)
    raw = reader.dataset.read(meta["bands"], window=rasterio.windows.Window(bounds[1], bounds[0],
                                                                            bounds[3] - bounds[1],
                                                                            bounds[2] - bounds[0]))  # fmt: skip
    return normalise(data.image, data.valid, BandStats.from_dict(meta["stats"])), data.valid, raw


def test_deepness_preprocessing_of_the_exported_file_equals_rs_pgd_on_the_uint8_demo(exported):
    meta = decoded(exported.output)
    want, valid, raw = rs_pgd_input(DEMO_SCENE, meta["rs_pgd"], (200, 100, 200 + WINDOW, 100 + WINDOW))
    assert raw.dtype == np.uint8 and valid.mean() > 0.5
    got = deepness_input(raw, meta["standardization_mean"], meta["standardization_std"])
    assert np.max(np.abs(got[:, valid] - want[:, valid])) <= 1e-5
    # companion: Deepness's defaults (mean 0, std 1) would feed the network something else
    assert np.max(np.abs(deepness_input(raw, [0.0] * 3, [1.0] * 3)[:, valid] - want[:, valid])) > 0.5


UINT16_SCENES = [("sentinel2_denmark_lpis/RGB_small.tif", "sentinel2-l1c"),
                 ("landsat8_parana/LC08_L1TP_224078_20200518_20200518_01_RT.TIF", "landsat-c2-l2")]  # fmt: skip


@pytest.mark.realdata
@pytest.mark.parametrize("name,preset", UINT16_SCENES)
def test_deepness_preprocessing_equals_rs_pgd_on_uint16_scenes_with_a_preset(shared_data, name, preset):
    from rs_pgd.checkpoint import CheckpointMeta
    from rs_pgd.onnx_export import deepness_metadata

    scene = shared_data / name
    meta = checkpoint_meta(scene, preset=preset)
    assert meta["scale"] != 1 and meta["offset"] != 0
    values = {k: json.loads(v) for k, v in deepness_metadata(CheckpointMeta.from_dict(meta), TILE, MARGIN).items()}
    want, valid, raw = rs_pgd_input(scene, meta, (100, 100, 100 + WINDOW, 100 + WINDOW))
    assert raw.dtype == np.uint16 and valid.mean() > 0.9
    got = deepness_input(raw, values["standardization_mean"], values["standardization_std"])
    error = np.max(np.abs(got[:, valid] - want[:, valid]))
    assert error <= 1e-4, error
    # companion: ignoring the preset (statistics / 255, as for a plain 8-bit scene) is far off
    naive = deepness_input(raw, np.array(meta["stats"]["mean"]) / 255, np.array(meta["stats"]["std"]) / 255)
    assert np.max(np.abs(naive[:, valid] - want[:, valid])) > 10


@pytest.fixture
def deepness_src():
    """The ``src`` folder of a PUTvision/qgis-plugin-deepness checkout ($DEEPNESS_SRC): its model classes need only
    numpy and onnxruntime, not QGIS."""
    folder = os.environ.get("DEEPNESS_SRC")
    if not folder or not (Path(folder) / "deepness" / "processing" / "models" / "segmentor.py").is_file():
        pytest.skip("set DEEPNESS_SRC to the src folder of a qgis-plugin-deepness checkout to run Deepness's own code")
    sys.path.insert(0, folder)
    yield Path(folder)
    sys.path.remove(folder)
    for name in [m for m in sys.modules if m == "deepness" or m.startswith("deepness.")]:
        del sys.modules[name]


@pytest.mark.slow
def test_deepness_own_model_code_reads_the_file_and_matches_rs_pgd(exported, deepness_src):
    """Deepness's ``Segmentor`` (its metadata readers and its preprocessing) on the exported file and a raw uint8
    tile gives the probabilities rs-pgd's reader + normalise + onnxruntime give."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime's note that Deepness asks for CUDA on a CPU-only build
        from deepness.processing.models.segmentor import Segmentor

        model = Segmentor(str(exported.output))
    assert model.get_metadata_model_type() == "Segmentor"
    assert model.get_outputs_channel_names() == [["water", "land"]]
    assert model.get_metadata_tile_size() == WINDOW and model.get_metadata_tiles_overlap() == 50
    assert model.get_metadata_segmentation_threshold() == 0.0
    assert model.get_metadata_segmentation_small_segment() == 0
    with rasterio.open(DEMO_SCENE) as src:
        assert model.get_metadata_resolution() == pytest.approx(src.res[0] * 100)
    assert model.get_model_batch_size() is None  # dynamic: Deepness leaves the batch size editable
    assert model.get_number_of_output_channels() == [2] and model.outputs_are_sigmoid == [False]

    bounds = (400, 320, 400 + WINDOW, 320 + WINDOW)  # wholly inside the footprint: no nodata, no padding
    meta = decoded(exported.output)["rs_pgd"]
    want_input, valid, raw = rs_pgd_input(DEMO_SCENE, meta, bounds)
    assert valid.all()
    got = model.process(np.moveaxis(raw, 0, -1)[None])[0]  # Deepness feeds NHWC raw values
    session = ort.InferenceSession(str(exported.output), providers=["CPUExecutionProvider"])
    want = session.run(None, {"input": want_input[None]})[0]
    assert got.shape == want.shape == (1, 2, WINDOW, WINDOW)
    assert np.max(np.abs(got - want)) <= 1e-4


def test_resolution_is_in_cm_for_metres_feet_and_degrees():
    from types import SimpleNamespace

    from rs_pgd.onnx_export import DEGREE_METRES, resolution_cm

    def meta(crs, res):
        return SimpleNamespace(training_scenes=[{"crs": crs, "res": [res, res]}])

    assert resolution_cm(meta("EPSG:32618", 10.0)) == pytest.approx(1000.0)
    assert resolution_cm(meta("EPSG:2263", 10.0)) == pytest.approx(10 * 0.3048006096 * 100, rel=1e-6)  # US feet
    assert resolution_cm(meta("EPSG:4326", 0.0001)) == pytest.approx(0.0001 * DEGREE_METRES * 100)
    assert resolution_cm(SimpleNamespace(training_scenes=[{"crs": None, "res": [1, 1]}])) is None


# -- 5. predict with the ONNX file, torch blocked --------------------------------------------------------------------
BLOCK_TORCH = ("import sys; sys.modules['torch'] = None; "  # any `import torch` now raises ImportError
               "from rs_pgd.cli.main import cli; cli(prog_name='rs-pgd')")  # fmt: skip


@pytest.mark.slow
def test_onnx_predict_without_torch_agrees_with_torch_predict(exported, checkpoint, tmp_path, one_torch_thread):
    import rs_pgd

    args = ["predict", str(exported.output), str(DEMO_SCENE), "-o", str(tmp_path / "onnx.tif"), "--probabilities",
            str(tmp_path / "onnx_p.tif"), "--probability-dtype", "float32", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as torch below: faster on a busy 2-core machine
    run = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    check = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "fit", "--help"], capture_output=True, text=True)
    assert check.returncode == 0  # the harness itself lets torch-free commands run

    result = rs_pgd.predict(checkpoint, DEMO_SCENE, tmp_path / "torch.tif", probabilities=tmp_path / "torch_p.tif",
                            probability_dtype="float32", tile=TILE, margin=MARGIN, precision="32", workers=0,
                            progress=False)  # fmt: skip
    assert (result.tile, result.margin) == (TILE, MARGIN)
    with rasterio.open(tmp_path / "onnx.tif") as a, rasterio.open(tmp_path / "torch.tif") as b:
        classes_onnx, classes_torch = a.read(1), b.read(1)
        assert a.profile["transform"] == b.profile["transform"] and a.crs == b.crs
        assert a.colormap(1) == b.colormap(1)
    with rasterio.open(tmp_path / "onnx_p.tif") as a, rasterio.open(tmp_path / "torch_p.tif") as b:
        probs_onnx, probs_torch = a.read(), b.read()
    valid = classes_torch != 255
    assert np.array_equal(classes_onnx == 255, ~valid) and valid.mean() > 0.5
    assert set(np.unique(classes_torch[valid])) == {3, 7}  # both classes occur: the comparison means something
    agreement = np.mean(classes_onnx[valid] == classes_torch[valid])
    assert agreement >= 0.999, agreement
    assert np.max(np.abs(probs_onnx[:, valid] - probs_torch[:, valid])) <= 1e-4


@pytest.mark.slow
def test_onnx_predict_geometry_must_fit_the_exported_window(exported, tmp_path):
    def run(*options):
        return CliRunner().invoke(cli, ["predict", str(exported.output), str(DEMO_SCENE), "-o",
                                        str(tmp_path / "o.tif"), "--quiet", *options])  # fmt: skip

    one_line_error(run("--tile", "64", "--margin", "64"), "takes 128 px windows", "tile + 2 x margin must be 128")
    one_line_error(run("--tile", "96"), "margin 16", "multiple of 32")  # 128 = 96 + 2 x 16: off the 32 px grid
    assert not (tmp_path / "o.tif").exists()
    result = run("--tile", "128")  # a tile alone sets the margin: 128 = 128 + 2 x 0
    assert result.exit_code == 0, result.output
    assert "(42 windows" in result.output  # 791 x 718 px in 128 px tiles: 7 x 6


# -- 6. bad input --------------------------------------------------------------------------------------------------
def one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]


def test_export_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(cli, ["export", str(DEMO_SCENE), "-o", str(out)])
    one_line_error(result, "not an rs-pgd checkpoint")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_refuses_a_tile_off_the_32_px_grid(checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    one_line_error(CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(out), "--tile", "100"]),
                   "tile 100", "multiple of 32")  # fmt: skip
    one_line_error(CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(tmp_path / "m.pt")]), ".onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_of_an_untraceable_model_fails_in_one_line_and_keeps_the_old_file(tmp_path):
    # PSPNet pools its 1/8 feature map to 1, 2, 3 and 6 cells; the exporter needs those to divide it: 128 px -> 16 no
    ckpt = write_checkpoint(tmp_path / "psp.safetensors", checkpoint_meta(DEMO_SCENE, arch="PSPNet"))
    out = tmp_path / "psp.onnx"
    out.write_bytes(b"an older export")
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "--tile", "128", "--margin", "32"])
    assert result.exit_code == 0, result.output  # 192 px: 192 / 8 = 24 divides by 6, fine
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "--tile", "64", "--margin", "32"])
    one_line_error(result, "PSPNet-resnet18", "cannot be exported to ONNX at a 128 px window", "adaptive_avg_pool2d")
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[2].dim_value == 192  # the older file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["psp.onnx", "psp.safetensors"]  # no temporary left


def test_missing_extra_says_how_to_install_it(checkpoint, exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if `pip install rs-pgd[onnx]` had not been run
    out = tmp_path / "m.onnx"
    one_line_error(CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(out)]), "pip install rs-pgd[onnx]")
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = CliRunner().invoke(cli, ["predict", str(exported.output), str(DEMO_SCENE), "-o", str(tmp_path / "o.tif")])
    one_line_error(result, "onnxruntime", "pip install rs-pgd[onnx]")
    assert list(tmp_path.iterdir()) == []


def test_predict_refuses_an_onnx_file_without_rs_pgd_metadata(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "foreign",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 128, 128])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf at all")
    for name, words in (("foreign.onnx", ["without rs-pgd metadata"]), ("broken.onnx", ["not an ONNX model"])):
        result = CliRunner().invoke(cli, ["predict", str(tmp_path / name), str(DEMO_SCENE), "-o",
                                          str(tmp_path / "o.tif")])  # fmt: skip
        one_line_error(result, *words)
    assert not (tmp_path / "o.tif").exists()


def test_export_help_and_api_do_not_import_torch_at_import():
    code = "import sys, rs_pgd, rs_pgd.onnx_backend, rs_pgd.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert CliRunner().invoke(cli, ["export", "--help"]).exit_code == 0


def test_standardization_of_a_from_scene_checkpoint_with_a_scale_per_band():
    """A ``from-scene`` checkpoint may hold one scale/offset per band: Deepness's line still equals rs-pgd's."""
    from types import SimpleNamespace

    from rs_pgd.onnx_export import standardization

    meta = SimpleNamespace(scale=[1e-4, 1.0], offset=[-0.1, 0.0], stats={"mean": [0.05, 3.0], "std": [0.02, 1.0]})
    mean, std = standardization(meta)
    raw = np.array([1700.0, 7.0])
    rs_pgd_value = (raw * np.array(meta.scale) + meta.offset - np.array(meta.stats["mean"])) / meta.stats["std"]
    np.testing.assert_allclose((raw / 255 - np.array(mean)) / np.array(std), rs_pgd_value, rtol=1e-9)
