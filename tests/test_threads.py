"""``--threads N|auto``: the decision from faked loads and core counts, and a real CLI run reaching torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rs_pgd.errors import OptionError
from rs_pgd.runtime import (
    WAIT_POLICY,
    CpuLoad,
    _cgroup_cpu_quota,
    _physical_cores,
    choose_threads,
    parse_threads,
)

REPO = Path(__file__).resolve().parents[1]
TWO = "2 physical cores"


def load(cores=2, load1=0.0, own=0.0, running=0):
    return CpuLoad(cores, f"{cores} physical cores", load1, own, running)


@pytest.mark.parametrize(
    ("machine", "threads"),
    [
        (load(2, load1=0.3, own=0.2, running=0), 2),  # idle: every core
        (load(2, load1=1.1, own=0.1, running=1), 1),  # one busy-loop neighbour for minutes
        (load(2, load1=0.25, own=0.05, running=1), 1),  # a neighbour that just started: the load average lags
        (load(2, load1=1.2, own=0.1, running=0), 1),  # a neighbour that is between bursts right now
        (load(2, load1=0.6, own=0.5, running=0), 2),  # the load is this process's own (its imports)
        (load(2, load1=9.0, own=0.1, running=10), 1),  # a crowded machine: still one thread, never zero
        (load(16, load1=4.3, own=0.3, running=3), 12),
        (load(1, load1=3.0, running=3), 1),
    ],
    ids=["idle", "one-neighbour", "new-neighbour", "bursty-neighbour", "own-load", "crowded", "16-cores",
         "one-core"],
)
def test_auto_takes_the_cores_other_processes_leave(machine, threads):
    choice = choose_threads("auto", machine, env={})
    assert choice.threads == threads, choice.reason
    assert choice.reason.startswith("auto: ")


def test_the_reason_names_what_was_seen():
    choice = choose_threads("auto", load(2, load1=1.1, own=0.1, running=1), env={})
    assert "2 physical cores" in choice.reason and "1-min load 1.1" in choice.reason
    assert "1.0 busy with other work" in choice.reason


def test_omp_num_threads_and_torchrun_ranks():
    idle16 = load(16, load1=0.1)
    assert choose_threads("auto", idle16, env={"OMP_NUM_THREADS": "3"}).threads == 3
    assert "OMP_NUM_THREADS=3" in choose_threads("auto", idle16, env={"OMP_NUM_THREADS": "3"}).reason
    assert choose_threads("auto", idle16, env={"LOCAL_WORLD_SIZE": "4"}).threads == 4
    assert choose_threads("auto", load(2), env={"LOCAL_WORLD_SIZE": "4"}).threads == 1
    # an explicit number wins over both
    assert choose_threads(5, idle16, env={"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "4"}).threads == 5


def test_idle_threads_sleep_unless_the_user_chose_a_wait_policy():
    assert dict(choose_threads(2, load(), env={}).environment) == WAIT_POLICY
    for name in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT"):
        assert choose_threads(2, load(), env={name: "x"}).environment == ()


@pytest.mark.parametrize("value", [0, -1, "0", "x", "1.5", 1.5, True, None, "", "two"])
def test_bad_thread_counts_are_refused(value):
    with pytest.raises(OptionError, match="--threads"):
        parse_threads(value)


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), ("AUTO ", "auto"), ("3", 3), (1, 1)])
def test_thread_counts_are_parsed(value, parsed):
    assert parse_threads(value) == parsed


def test_hyperthread_siblings_count_once(tmp_path):
    for cpu, core in enumerate([0, 0, 1, 1, 2, 2]):
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "core_id").write_text(f"{core}\n")
        (topology / "physical_package_id").write_text("0\n")
    assert _physical_cores([0, 1, 2, 3, 4, 5], str(tmp_path)) == 3
    assert _physical_cores([0, 2], str(tmp_path)) == 2
    assert _physical_cores([0, 1, 7], str(tmp_path)) == 3  # topology unknown for cpu7: the logical count


def test_a_cgroup_quota_caps_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_quota(str(tmp_path)) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(str(tmp_path)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(str(v1)) == 3


# -- real runs -------------------------------------------------------------------------------------------------
def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME",
                                                            "GOMP_SPINCOUNT", "RS_PGD_DEBUG")}
    return {**env, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", **extra}


def test_the_wait_policy_is_set_before_torch_starts():
    code = ("import os, sys\nfrom rs_pgd.runtime import configure_threads\nchoice = configure_threads(2)\n"
            "import torch\nprint(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads(), choice.threads)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert out.stdout.split() == ["PASSIVE", "2", "2"], out.stdout + out.stderr
    # torch imported first: too late for the OpenMP runtime, so rs-pgd leaves the environment alone and says so
    code = "import torch, os\nfrom rs_pgd.runtime import configure_threads\nc = configure_threads(2)\nprint(c.reason)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert "torch was imported before" in out.stdout, out.stdout


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    from conftest import write_demo_crop

    return write_demo_crop(tmp_path_factory.mktemp("threads") / "crop.tif", 128)


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "rs_pgd", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=_env(), timeout=300)


@pytest.mark.parametrize("command", ["fit", "predict"])
def test_threads_zero_is_a_one_line_error(command, crop, demo_labels, tmp_path):
    args = ([command, crop, demo_labels, "-o", tmp_path / "m.safetensors"] if command == "fit"
            else [command, tmp_path / "missing.safetensors", crop, "-o", tmp_path / "out.tif"])
    done = _cli([*args, "--threads", "0"], tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: --threads 0 must be at least 1"), lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_threads_reach_torch_in_real_cli_runs(crop, demo_labels, tmp_path):
    """``--threads 1`` for fit and ``--threads 3`` for predict (on any core count, not torch's default of one per
    core on this machine): the logged count is read back from ``torch.get_num_threads()``."""
    model = tmp_path / "m.safetensors"
    fit = _cli(["--progress", "none", "fit", crop, demo_labels, "-o", model, "--encoder", "resnet18", "--tile", "64", "--margin", "32",
                "--epochs", "1", "--max-steps", "1", "--workers", "0", "--val-fraction", "0", "--precision", "32",
                "--threads", "1"], tmp_path)
    assert fit.returncode == 0, fit.stderr
    assert "threads 1 (--threads 1 was asked for; idle threads sleep (OMP_WAIT_POLICY=PASSIVE" in fit.stderr
    predict = _cli(["--progress", "none", "predict", model, crop, "-o", tmp_path / "out.tif", "--workers", "0",
                    "--threads", "3"], tmp_path)
    assert predict.returncode == 0, predict.stderr
    assert "threads 3 (--threads 3 was asked for" in predict.stderr, predict.stderr
