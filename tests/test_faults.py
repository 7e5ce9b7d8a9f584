"""Fault injection through the CLI: SIGKILL/SIGINT at chosen moments, a NaN loss, a full disk.

Determinism: CPU, ``--workers 0``, OMP_NUM_THREADS=1 and ``--val-fraction 0`` (the checkpoint is then the last
epoch), so a killed-and-resumed run must end with the very same bits as an uninterrupted one.

Kills that must land inside a short window happen at fixed points (``killpoints``), never after a poll that a fast
machine can lose: fit is held still with epoch 2's checkpoint written but not renamed, predict after its first
row band, and both are then SIGKILLed; vectorize is killed by the kernel (SIGXFSZ) as its GeoPackage passes a set
size. None of these tests skips.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import killpoints
import pytest
from test_cli_catalogue import ENV, bad, run_cli

DEMO = Path(__file__).resolve().parents[1] / "rs_pgd" / "data" / "RGB.byte.tif"
# --resume-every-minutes 0: a resume state after every step (the default writes one every 5 minutes and at the
# end, which a run this short never reaches), so a kill lands between states written in the middle of epochs
FIT = ["--encoder", "resnet18", "--tile", "64", "--margin", "32", "--epochs", "3", "--batch-size", "4",
       "--workers", "0", "--val-fraction", "0", "--seed", "7", "--resume-every-minutes", "0"]


def start(args, cwd) -> tuple[subprocess.Popen, Path, Path]:
    out, err = Path(cwd) / "stdout.txt", Path(cwd) / "stderr.txt"
    proc = subprocess.Popen([sys.executable, "-m", "rs_pgd.cli.main", *map(str, args)], cwd=cwd, env=ENV,
                            stdout=open(out, "w"), stderr=open(err, "w"))
    return proc, out, err


def wait_for(proc, condition, timeout=90.0) -> bool:
    """Poll ``condition()`` every 2 ms; True when it held before the process ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("condition not reached in time")


def tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    return bad.good_scene(folder), bad.good_labels(folder)


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory):
    """An uninterrupted 3-epoch run: its checkpoint (the last epoch) is the bit-exact target."""
    folder = tmp_path_factory.mktemp("reference")
    done = run_cli(["fit", *scene, "-o", folder / "m.safetensors", "--quiet", *FIT], folder)
    assert done.returncode == 0, done.stderr
    return folder / "m.safetensors"


def _contains(path, text):
    return lambda: path.exists() and text in path.read_text(errors="replace")


MOMENTS = {
    "first-epoch": lambda d, out, err: _contains(err, "epoch 1/3"),
    "checkpoint-write": None,  # a pause, not a poll: CHECKPOINT_WRITE
    "late": lambda d, out, err: _contains(err, "epoch 2:"),  # the log line after epoch 2
}
# epoch 2's checkpoint complete in its hidden temporary file, not yet renamed onto m.safetensors (epoch 1's): the
# child pauses there, on any machine, just before the one atomic writer commits the second checkpoint.
CHECKPOINT_WRITE = killpoints.pause_before("rs_pgd.output", "AtomicOutput.commit", calls=2,
                                           when="args[0].path.name == 'm.safetensors'") + killpoints.CLI


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_fit_then_resume_is_bit_identical(moment, scene, reference, tmp_path):
    args = ["fit", *scene, "-o", tmp_path / "m.safetensors", *FIT]
    if MOMENTS[moment] is None:
        with killpoints.paused(CHECKPOINT_WRITE, args, tmp_path, ENV) as proc:
            temps = list(tmp_path.glob(".m.safetensors.*.tmp*"))
            assert temps and all(t.stat().st_size > 0 for t in temps), sorted(p.name for p in tmp_path.iterdir())
            assert tensors(tmp_path / "m.safetensors")  # epoch 1's checkpoint, intact beside epoch 2's temp
        assert proc.returncode == -signal.SIGKILL
    else:
        proc, out, err = start(args, tmp_path)
        reached = wait_for(proc, MOMENTS[moment](tmp_path, out, err))
        proc.kill()
        proc.wait()
        assert reached, f"the run ended before the {moment} moment: {err.read_text()[-500:]}"
    for leftover in tmp_path.glob(".m.*"):
        leftover.unlink()  # a killed process cannot clean up its temp files; they never sit at the target
    done = run_cli(["fit", *scene, "-o", tmp_path / "m.safetensors", "--quiet", "--resume", *FIT], tmp_path)
    assert done.returncode == 0, done.stderr
    got, want = tensors(tmp_path / "m.safetensors"), tensors(reference)
    assert got.keys() == want.keys()
    different = [k for k in want if not (got[k] == want[k]).all()]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"


@pytest.mark.slow
def test_sigint_fit_exits_130_and_says_resume(scene, tmp_path):
    proc, out, err = start(["fit", *scene, "-o", tmp_path / "m.safetensors", *FIT], tmp_path)
    assert wait_for(proc, _contains(err, "epoch 1/3"))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    text = err.read_text()
    assert "--resume" in text and "Traceback" not in text


@pytest.mark.slow
def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(scene, tmp_path):
    done = run_cli(["fit", *scene, "-o", tmp_path / "m.safetensors", "--quiet", *FIT, "--lr", "1e30"], tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: the loss became"), lines
    assert "lower --lr" in lines[0]
    kept = tensors(tmp_path / "m.safetensors")  # the epoch-1 checkpoint, still loadable and finite
    assert all(bool(t.float().isfinite().all()) for t in kept.values())


def _hidden_temp(folder):
    return lambda: any(p.name.startswith(".out.") for p in folder.iterdir())


# the child runs the CLI and stops for good once predict has written its first row band to the (hidden) output
PAUSED_PREDICT = killpoints.pause_after("rs_pgd.infer", "_write_band") + killpoints.CLI


@pytest.mark.slow
@pytest.mark.parametrize("previous", [False, True], ids=["no-previous", "previous-kept"])
def test_sigkill_predict_leaves_nothing_or_the_old_file(previous, reference, tmp_path):
    target = tmp_path / "out.tif"
    if previous:
        target.write_bytes(b"previous result")
    args = ["predict", reference, DEMO, "-o", target, "--quiet", "--workers", "0", "--no-cog"]
    with killpoints.paused(PAUSED_PREDICT, args, tmp_path, ENV) as proc:  # mid-run, however fast the machine
        assert _hidden_temp(tmp_path)(), sorted(p.name for p in tmp_path.iterdir())
    assert proc.returncode == -signal.SIGKILL
    if previous:
        assert target.read_bytes() == b"previous result"
    else:
        assert not target.exists()
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr
    import rasterio

    with rasterio.open(target) as ds:
        assert ds.read(1).shape == (718, 791)


# vectorize writes its GeoPackage in one GDAL call: the kernel kills it (SIGXFSZ) as that file passes KILL_AT bytes
KILL_AT = 256 * 1024  # past the empty GeoPackage tables (96 KiB), well before the end of the polygons (532 KiB)


@pytest.fixture(scope="module")
def class_map(tmp_path_factory):
    """A two-class map of random 8 x 8 px blocks: 1 333 polygons, a GeoPackage of 532 KiB."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    blocks = (np.random.default_rng(0).random((90, 99)) < 0.5).astype(np.uint8)
    classes = np.kron(blocks, np.ones((8, 8), np.uint8))[:718, :791]
    path = tmp_path_factory.mktemp("class_map") / "classes.tif"
    with rasterio.open(path, "w", driver="GTiff", width=791, height=718, count=1, dtype="uint8", nodata=255,
                       crs="EPSG:32618", transform=from_origin(500000, 4000000, 10, 10)) as dst:
        dst.write(classes, 1)
    return path


@pytest.mark.parametrize("previous", [False, True], ids=["no-previous", "previous-kept"])
def test_vectorize_killed_mid_write_leaves_nothing_or_the_old_file(previous, class_map, tmp_path):
    target = tmp_path / "out.gpkg"
    if previous:
        target.write_bytes(b"previous result")
    args = ["vectorize", class_map, "-o", target, "--tile", "64"]
    killed = killpoints.run_killed_at_size(args, tmp_path, ENV, KILL_AT)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr[-1000:]
    temps = {p.name: p.stat().st_size for p in tmp_path.iterdir() if p.name.startswith(".out.gpkg.")}
    assert max(temps.values(), default=0) == KILL_AT, temps  # it died writing its hidden temporary file
    if previous:
        assert target.read_bytes() == b"previous result"
    else:
        assert not target.exists()
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert target.stat().st_size > 2 * KILL_AT  # so the kill came in the middle of the polygons
    import pyogrio

    assert f"Wrote {pyogrio.read_info(target)['features']} polygons" in done.stdout  # a complete, readable file


def _small_file_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))


def _predict_into(reference, target, cwd, preexec_fn=None):
    return subprocess.run([sys.executable, "-m", "rs_pgd.cli.main", "predict", str(reference), str(DEMO), "-o",
                           str(target), "--quiet", "--workers", "0"], env=ENV, cwd=cwd, capture_output=True,
                          text=True, preexec_fn=preexec_fn, timeout=180)


def _one_error_line(done, *fragments):
    """Exit 2 and exactly one stderr line, ours: libtiff's own '_tiffWriteProc: ...' lines must not come first.

    The model was trained on the generated 30 m scene and predicts the 300 m demo scene, so predict's scene check
    rightly warns about the pixel size first; that one expected ``Warning:`` line is set aside."""
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()
             and not (line.startswith("Warning: ") and "pixels but the model was trained on 30 pixels" in line)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


@pytest.mark.slow
def test_disk_full_while_writing_prediction(reference, tmp_path):
    target = tmp_path / "out.tif"
    done = _predict_into(reference, target, tmp_path, preexec_fn=_small_file_limit)  # EFBIG, like ENOSPC
    _one_error_line(done, "could not write", "free disk space")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def full_filesystem(tmp_path):
    """An 8 KiB tmpfs: a real ENOSPC (needs mount rights, e.g. root in a container; skipped otherwise)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.slow
def test_full_filesystem_while_writing_prediction(reference, full_filesystem, tmp_path):
    done = _predict_into(reference, full_filesystem / "out.tif", tmp_path)
    _one_error_line(done, "No space left on device", "free space")
    assert list(full_filesystem.iterdir()) == []


def test_libtiff_lines_go_to_the_debug_log(capfd):
    """libtiff's global handler (which GDAL's write hooks use) prints to fd 2; while a command runs, it logs."""
    import logging

    from rs_pgd.cli.errors import loaded_libtiffs, route_libtiff_messages

    libraries = loaded_libtiffs()
    assert libraries, "rasterio's GDAL links a libtiff"
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("rs_pgd.libtiff")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.DEBUG
    propagate, logger.propagate = logger.propagate, False  # an earlier in-process CLI run may print rs_pgd logs
    restore = route_libtiff_messages()
    try:
        libraries[0].TIFFError(b"_tiffWriteProc", b"%s (%d)", b"No space left on device", 28)
        libraries[0].TIFFWarning(b"TIFFReadDirectory", b"%s", b"unknown tag")
    finally:
        restore()
        logger.removeHandler(handler)
        logger.level = level
        logger.propagate = propagate
    assert capfd.readouterr().err == ""
    assert [r.getMessage() for r in records] == ["libtiff error: _tiffWriteProc: No space left on device (28)",
                                                 "libtiff warning: TIFFReadDirectory: unknown tag"]
    libraries[0].TIFFError(b"_tiffWriteProc", b"%s", b"restored")  # teeth: the default handler prints it again
    assert capfd.readouterr().err == "_tiffWriteProc: restored.\n"
