"""Distributed runs under torchrun (gloo, CPU): fit takes the same steps as one process, predict writes the
one-process bytes, a failure on one rank stops every rank, and --resume goes on exactly."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_demo_crop

OPTIONS = ["--encoder", "resnet18", "--tile", "64", "--margin", "32", "--epochs", "2", "--norm", "frozen",
           "--precision", "32", "--no-augment", "--workers", "0", "--val-fraction", "0", "--quiet", "--step-every", "7",
           "--optimizer", "sgd", "--lr", "0.005"]


@pytest.fixture
def crop(tmp_path):
    return write_demo_crop(tmp_path / "crop.tif", 192)


def _env(**extra):
    """A small environment for subprocesses that runs this checkout (its rs_pgd first on the path)."""
    return {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **extra}


def _fit(cmd_prefix, crop, labels, out, env_threads="1", extra=(), mkdir=True):
    if mkdir:
        out.parent.mkdir()
    cmd = [*cmd_prefix, "rs_pgd.cli.main", "fit", str(crop), str(labels), "-o", str(out), *OPTIONS, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=_env(OMP_NUM_THREADS=env_threads, HOME=str(out.parent)))
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(out.with_name("m.resume.pt"), weights_only=True)


def _update_gap(a, b, start):
    """Relative L2 distance of two runs' weight updates from the same initial weights."""
    keys = [k for k in a if a[k].is_floating_point() and "num_batches" not in k]
    da = torch.cat([(a[k].double() - start[k].double()).ravel() for k in keys])
    db = torch.cat([(b[k].double() - start[k].double()).ravel() for k in keys])
    return float((da - db).norm() / da.norm())


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path, crop, demo_labels):
    from rs_pgd.models import build_model

    single = _fit([sys.executable, "-m"], crop, demo_labels, tmp_path / "single" / "m.safetensors")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    ranks = _fit(torchrun, crop, demo_labels, tmp_path / "ddp" / "m.safetensors")
    assert single["steps"] == ranks["steps"] == 2 * 2  # 9 windows per epoch in groups of 7 -> 2 steps an epoch
    torch.manual_seed(0)
    start = build_model("Unet", "resnet18", 3, 2, norm="frozen")[0].state_dict()
    gap = _update_gap(single["model"], ranks["model"], start)
    # the same steps up to float summation order (measured 4e-5: Adam turns tiny gradients into +-lr)
    print(f"relative update gap, 2 ranks vs 1 process: {gap:.2e}")
    assert gap < 1e-3, gap
    assert torch.allclose(single["loss_table"], ranks["loss_table"], rtol=1e-3)
    # teeth: a run that differs only in its grouping (steps every 3 windows) is far away
    other = [*OPTIONS]
    other[other.index("--step-every") + 1] = "3"
    out = tmp_path / "other" / "m.safetensors"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "rs_pgd.cli.main", "fit", str(crop), str(demo_labels), "-o", str(out), *other]
    subprocess.run(cmd, check=True, capture_output=True, env=_env())
    different = torch.load(out.with_name("m.resume.pt"), weights_only=True)
    far = _update_gap(single["model"], different["model"], start)
    print(f"relative update gap, other grouping: {far:.2e}")
    assert far > 10 * gap


# -- torchrun predict ----------------------------------------------------------------------------------------------
def _checkpoint(path, demo_scene):
    """An untrained Unet-ResNet18 land/water checkpoint for the demo scene's bands (tile 128, margin 32)."""
    from rs_pgd import __version__, checkpoint
    from rs_pgd.classes import ClassTable
    from rs_pgd.models import ModelSpec
    from rs_pgd.raster import SceneReader, compute_band_stats

    reader = SceneReader(demo_scene)
    spec = ModelSpec(arch="Unet", encoder="resnet18", in_channels=3, classes=2, norm="frozen")
    torch.manual_seed(0)
    model, _ = spec.build()
    classes = ClassTable(values=(0, 1), names=("water", "land"), colours=((0, 0, 255), (0, 160, 0)))
    meta = checkpoint.CheckpointMeta(
        rs_pgd_version=__version__, model=spec.to_dict(), bands=(1, 2, 3), band_names=("r", "g", "b"),
        preset="generic", scale=None, offset=None, stats=compute_band_stats(reader, tile=256, max_windows=8).to_dict(),
        classes=classes.to_dict(), geometry={"tile": 128, "margin": 32, "stride": 128, "align": 32},
        training_scenes=(), precision="32", precision_reason="test checkpoint (random weights)",
    )
    return checkpoint.save(path, model.state_dict(), meta)


@pytest.mark.slow
def test_torchrun_predict_writes_the_one_process_bytes(tmp_path, demo_scene):
    """Two CPU ranks share the window rows (7 rows: 4 and 3); rank 0 alone writes; the COGs equal one process's."""
    model = _checkpoint(tmp_path / "m.safetensors", demo_scene)
    options = ["--tile", "128", "--margin", "32", "--batch-size", "3", "--workers", "0", "--precision", "32"]
    outputs = {}
    for name, prefix in (("one", [sys.executable, "-m"]),
                         ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                  "2", "-m"])):
        folder = tmp_path / name
        folder.mkdir()
        cmd = [*prefix, "rs_pgd", "--progress", "none", "predict", str(model), str(demo_scene), "-o",
               str(folder / "map.tif"), "--probabilities", str(folder / "p.tif"), *options]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(HOME=str(folder)),
                              cwd=folder)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("wrote ") == 1, done.stdout  # one rank says it wrote
        outputs[name] = folder
    for name in ("map.tif", "p.tif"):
        assert (outputs["one"] / name).read_bytes() == (outputs["two"] / name).read_bytes(), name
    assert sorted(p.name for p in outputs["two"].iterdir()) == sorted(p.name for p in outputs["one"].iterdir())
    # teeth: the map is not trivially equal to anything (random weights give both classes)
    import rasterio

    with rasterio.open(outputs["two"] / "map.tif") as src:
        values = set(np.unique(src.read(1)).tolist())
    assert {0, 1} <= values, values


# -- failures on one rank, resume ------------------------------------------------------------------------------
FAULTS = """
import os
import rs_pgd.dataset as dataset
import rs_pgd.pgd as pgd

fault = os.environ["RS_PGD_TEST_FAULT"]
calls = [0]
if os.environ["RANK"] == "1" and fault == "nan":  # rank 1's second batch: a NaN loss
    original = pgd.pixel_losses

    def poisoned(*args, **kwargs):
        calls[0] += 1
        losses = original(*args, **kwargs)
        return losses * float("nan") if calls[0] >= 2 else losses

    pgd.pixel_losses = poisoned
elif os.environ["RANK"] == "1":  # rank 1's fifth window read: an I/O error
    read = dataset.WindowDataset.__getitem__

    def failing(self, position):
        calls[0] += 1
        if calls[0] >= 5:
            raise OSError("injected read failure")
        return read(self, position)

    dataset.WindowDataset.__getitem__ = failing
from rs_pgd.cli.main import cli

cli(prog_name="rs-pgd")
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "rank1_line"), [
    ("nan", "Error: the loss became nan at step 2; lower --lr"),
    ("exception", "Error: injected read failure"),
])
def test_a_failure_on_one_rank_stops_every_rank_with_its_error(tmp_path, crop, demo_labels, fault, rank1_line):
    """Rank 1 alone meets a NaN loss (or an I/O error) in the middle of training: both ranks exit 2 with one line,
    rank 0 quoting rank 1's error; none is left waiting in an all-reduce (the launch has a deadline)."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RS_PGD_TEST_FAULT=fault, HOME=str(tmp_path))
        cmd = [sys.executable, "-c", FAULTS, "fit", str(crop), str(demo_labels), "-o", str(tmp_path / "m.safetensors"),
               *OPTIONS]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    results = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            results.append((proc.returncode, [line for line in err.splitlines() if line.strip()]))
    finally:
        for proc in procs:
            proc.kill()
    (rc0, lines0), (rc1, lines1) = results
    assert rc1 == 2 and len(lines1) == 1 and lines1[0].startswith(rank1_line), lines1
    quoted = rank1_line.removeprefix("Error: ")
    assert rc0 == 2 and len(lines0) == 1 and lines0[0].startswith(f"Error: rank 1 stopped: {quoted}"), lines0


@pytest.mark.slow
def test_resume_under_torchrun_goes_on_exactly(tmp_path, crop, demo_labels):
    """Two ranks stopped by --max-steps in the middle of epoch 2, then resumed, end with the weights of an
    uninterrupted two-rank run."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    whole = _fit(torchrun, crop, demo_labels, tmp_path / "whole" / "m.safetensors")
    out = tmp_path / "resumed" / "m.safetensors"
    stopped = _fit(torchrun, crop, demo_labels, out, extra=["--max-steps", "3"])
    assert stopped["steps"] == 3
    resumed = _fit(torchrun, crop, demo_labels, out, extra=["--resume"], mkdir=False)
    assert resumed["steps"] == whole["steps"] == 4
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    # teeth: the stopped run's weights are not the final ones
    assert not all(torch.equal(v, stopped["model"][k]) for k, v in whole["model"].items())
