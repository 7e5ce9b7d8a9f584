"""rs_pgd.checkpoint: the one schema (with the 0.1 upgrade path), the one header reader, save/load, the one resume
format, and the one scene check that predict (and through it export users and QGIS) runs."""

import dataclasses
import json
import pickle
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rs_pgd import checkpoint
from rs_pgd.checkpoint import CheckpointMeta
from rs_pgd.errors import CheckpointError, TrainingError
from rs_pgd.models import ModelSpec, model_from_checkpoint
from tests.data import bad_inputs as bad

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = {"values": [1, 2, 3], "names": ["crop", "tree", "water"], "colours": [[1, 2, 3]] * 3, "ignore_index": 255}
STATS = {"mean": [0.1, 0.2, 0.3], "std": [0.05, 0.05, 0.05], "count": [10.0, 10.0, 10.0]}


def meta_for(spec: ModelSpec, **changes) -> CheckpointMeta:
    scene = {"path": "train.tif", "crs": "EPSG:32618", "res": [30.0, 30.0], "width": 100, "height": 100,
             "count": spec.in_channels, "dtype": "uint8"}  # fmt: skip
    base = CheckpointMeta(model=spec.to_dict(), classes=CLASSES, stats=STATS, bands=tuple(range(1, spec.in_channels + 1)),
                          band_names=tuple(f"B{i}" for i in range(1, spec.in_channels + 1)), training_scenes=(scene,),
                          config={"nodata": None}, history=({"epoch": 1, "note": "été"},))  # fmt: skip
    return base.replace(**changes)


def write_v1(path, spec: ModelSpec) -> dict:
    """A checkpoint laid out exactly as rs-pgd 0.1.0 wrote it (format/format_version inside, no count/dtype)."""
    model, _ = spec.build()
    meta = {"format": "rs-pgd-checkpoint", "format_version": 1, "rs_pgd_version": "0.1.0", "model": spec.to_dict(),
            "bands": [1, 2, 3], "band_names": ["band 1", "band 2", "band 3"], "preset": "generic", "scale": 1.0,
            "offset": 0.0, "stats": STATS, "classes": CLASSES,
            "geometry": {"tile": 128, "margin": 32, "stride": 128, "align": 32},
            "training_scenes": [{"path": "a.tif", "crs": "EPSG:32618", "res": [30.0, 30.0], "width": 10, "height": 10}],
            "config": {"nodata": 0.0}, "precision": "bf16", "history": [], "best": None, "steps": 4}  # fmt: skip
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "rs-pgd-checkpoint", "format_version": "1",
                                            "rs_pgd": json.dumps(meta)})  # fmt: skip
    return meta


# -- schema and upgrade -----------------------------------------------------------------------------------------
def test_round_trip_through_save_load_and_the_torch_free_header(tmp_path):
    spec = ModelSpec("Unet", "resnet18", 5, 3, "frozen")
    model, _ = spec.build()
    meta = meta_for(spec)
    path = checkpoint.save(tmp_path / "model.safetensors", model, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary file left behind
    state, loaded = checkpoint.load(path)
    assert loaded == meta == checkpoint.read_header(path)
    assert loaded.schema_version == checkpoint.SCHEMA_VERSION and loaded.history[0]["note"] == "été"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    rebuilt, meta2 = model_from_checkpoint(path)
    assert meta2 == meta and not rebuilt.training
    x = torch.randn(1, 5, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.steps = 3


def test_a_0_1_checkpoint_is_upgraded_on_reading(tmp_path):
    spec = ModelSpec("Unet", "resnet18", 3, 3, "frozen")
    old = write_v1(tmp_path / "old.safetensors", spec)
    meta = checkpoint.read_header(tmp_path / "old.safetensors")
    assert meta.schema_version == 2 and meta.precision == "bf16" and "0.1" in meta.precision_reason
    assert meta.training_scenes[0]["count"] is None and meta.training_scenes[0]["path"] == "a.tif"
    assert meta.geometry == old["geometry"] and meta.class_names == ["crop", "tree", "water"]
    assert meta.training_nodata() == 0.0
    net, loaded = model_from_checkpoint(tmp_path / "old.safetensors")
    assert loaded == meta and isinstance(net, nn.Module)
    # without a recorded band count a 3-band model takes any scene with bands 1..3, as 0.1 did
    info = SimpleNamespace(path="s.tif", count=4, band_descriptions=(None,) * 4, alpha_bands=())
    assert checkpoint.scene_bands(meta, info, "old.safetensors") == [1, 2, 3]


def test_a_newer_schema_is_refused_with_what_to_do():
    data = meta_for(ModelSpec(in_channels=3)).to_dict() | {"schema_version": 99}
    with pytest.raises(CheckpointError, match="newer rs-pgd.*upgrade rs-pgd"):
        CheckpointMeta.from_dict(data)
    with pytest.raises(CheckpointError, match="no stats"):
        CheckpointMeta.from_dict({"model": {}, "classes": {}})


def test_other_files_are_refused_and_nothing_is_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="no rs-pgd metadata"):
        checkpoint.read_header(plain)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    pickled = bad.raw_pickle_payload(tmp_path / "model.safetensors", str(marker))
    for candidate in (text, pickled, bad.pickle_payload(tmp_path / "m.pth", str(marker))):
        with pytest.raises(CheckpointError, match="not an rs-pgd checkpoint"):
            checkpoint.load(candidate)
        with pytest.raises(CheckpointError, match="not an rs-pgd checkpoint"):
            model_from_checkpoint(candidate)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.read_header(tmp_path / "missing.safetensors")
    assert not marker.exists()
    with open(pickled, "rb") as handle:  # the payload is live: unpickling it would have written the marker
        pickle.load(handle)
    assert marker.exists()


def test_a_truncated_checkpoint_says_so(tmp_path):
    spec = ModelSpec("Unet", "resnet18", 3, 3, "frozen")
    good = checkpoint.save(tmp_path / "good.safetensors", spec.build()[0], meta_for(spec))
    data = good.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    for keep in (len(data) - 100, 8 + length // 2):  # data cut short; header cut short
        cut = tmp_path / f"cut{keep}.safetensors"
        cut.write_bytes(data[:keep])
        with pytest.raises(CheckpointError, match=rf"is truncated \({keep:,} of .* bytes\); copy or download it again"):
            checkpoint.read_header(cut)
    with pytest.raises(CheckpointError, match="CheckpointMeta"):
        checkpoint.save(tmp_path / "bad.safetensors", {"w": torch.ones(1)}, {"model": {}})


# -- resume state -------------------------------------------------------------------------------------------------
def test_resume_state_round_trip_and_refusals(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    output = tmp_path / "model.safetensors"
    assert checkpoint.resume_path(output) == tmp_path / "model.resume.pt"
    assert checkpoint.load_resume(output) is None
    state = {"optimizer": optimizer.state_dict(), "epoch": 3, "rng": torch.get_rng_state()}
    checkpoint.save_resume(output, state)
    loaded = checkpoint.load_resume(output)
    assert loaded["epoch"] == 3 and torch.equal(loaded["rng"], state["rng"])
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(CheckpointError, match="only tensors and plain containers"):
        checkpoint.save_resume(output, {"optimizer": optimizer})
    assert checkpoint.load_resume(output)["epoch"] == 3  # the refused write left the old state intact
    marker = tmp_path / "pwned"
    bad.pickle_payload(checkpoint.resume_path(output), str(marker))
    with pytest.raises(TrainingError, match="cannot read the resume state"):
        checkpoint.load_resume(output)
    assert not marker.exists()


# -- the scene check ------------------------------------------------------------------------------------------------
def scene(count=3, dtype="uint8", crs="EPSG:32618", res=(30.0, 30.0), descriptions=None):
    from rasterio.crs import CRS

    return SimpleNamespace(path="new.tif", count=count, dtype=dtype, crs_string=crs, crs=CRS.from_user_input(crs),
                           res=res, band_descriptions=descriptions or (None,) * count, alpha_bands=())


def test_scene_bands_refuses_another_band_count_unless_bands_are_chosen():
    meta = meta_for(ModelSpec(in_channels=3), band_names=("red", "green", "blue"))
    assert checkpoint.scene_bands(meta, scene(3), "m.safetensors") == [1, 2, 3]
    with pytest.raises(CheckpointError, match=r"has 6 bands .* 3-band scenes \(bands 1 \(red\), 2 \(green\), "
                                              r"3 \(blue\)\); say which bands to use with --bands"):
        checkpoint.scene_bands(meta, scene(6), "m.safetensors")
    assert checkpoint.scene_bands(meta, scene(6), "m.safetensors", bands=[4, 3, 2]) == [4, 3, 2]
    named = scene(6, descriptions=("a", "b", "c", "nir", "red", "green"))
    assert checkpoint.scene_bands(meta, named, "m.safetensors", bands=["red", "green", "nir"]) == [5, 6, 4]
    with pytest.raises(CheckpointError, match="--bands gives 2 band"):
        checkpoint.scene_bands(meta, scene(6), "m.safetensors", bands=[1, 2])
    with pytest.raises(CheckpointError, match="has 2 band"):
        checkpoint.scene_bands(meta, scene(2), "m.safetensors")


def test_scene_warnings_name_dtype_units_and_pixel_size():
    meta = meta_for(ModelSpec(in_channels=3))
    assert checkpoint.scene_warnings(meta, scene()) == []
    assert checkpoint.scene_warnings(meta, scene(crs="EPSG:32619", res=(25.0, 25.0))) == []  # another UTM zone
    (dtype,) = checkpoint.scene_warnings(meta, scene(dtype="float32"))
    assert "float32" in dtype and "uint8" in dtype
    (units,) = checkpoint.scene_warnings(meta, scene(crs="EPSG:4326", res=(0.0003, 0.0003)))
    assert "EPSG:4326" in units
    (size,) = checkpoint.scene_warnings(meta, scene(res=(10.0, 10.0)))
    assert "gdalwarp -tr" in size and "0.33x" in size


def test_value_warnings_catch_another_scaling():
    from rs_pgd.raster import BandStats

    meta = meta_for(ModelSpec(in_channels=3))
    same = BandStats(np.array([0.11, 0.19, 0.3]), np.array([0.05, 0.06, 0.04]), np.ones(3))
    assert checkpoint.value_warnings(meta, same, "s.tif") == []
    dn = BandStats(np.array([1100.0, 1900.0, 3000.0]), np.array([500.0, 600.0, 400.0]), np.ones(3))
    (line,) = checkpoint.value_warnings(meta, dn, "s.tif")
    assert "band 1" in line and "3 band(s) differ" in line and "--preset" in line


def test_info_model_runs_the_same_scene_check_without_torch(tmp_path):
    """``rs-pgd info SCENE --model M`` says what predict would do: the bands it reads, or why it refuses."""
    import subprocess
    import sys

    spec = ModelSpec("Unet", "resnet18", 3, 3, "frozen")
    model = checkpoint.save(tmp_path / "m.safetensors", spec.build()[0], meta_for(spec))
    three, thirteen = bad.good_scene(tmp_path), bad.band_scene(tmp_path, 13)
    code = ("import json, sys\nfrom rs_pgd.info import describe\n"
            f"r = [describe(s, model={str(model)!r})['model'] for s in ({str(three)!r}, {str(thirteen)!r})]\n"
            "print(json.dumps(r + ['torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    fits, refused, torch_loaded = json.loads(out.stdout)
    assert fits["fits"] and fits["bands"] == [1, 2, 3] and fits["warnings"] == []
    assert not refused["fits"] and "--bands" in refused["reason"]
    assert torch_loaded is False
