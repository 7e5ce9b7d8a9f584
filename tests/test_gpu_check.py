"""benchmarks/gpu_check.sh and bench_gpu.py: the CPU dry run of every part, the no-CUDA exit, the peak table."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_gpu.py"
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RS_PGD_DEBUG")}
    return {**env, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def _bench_module():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize(("name", "precision", "tflops"), [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
    ("NVIDIA H100 PCIe", "16-mixed", 756.0),
    ("NVIDIA H200", "bf16", 989.0),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
    ("NVIDIA L4", "bf16", 121.0),
    ("NVIDIA L40S", "bf16", 362.0),
    ("Tesla V100-SXM2-16GB", "16-mixed", 125.0),
    ("Tesla V100-SXM2-16GB", "bf16", None),
    ("Some Future GPU", "bf16", None),
])
def test_peak_flops_by_gpu_name(name, precision, tflops):
    peak = _bench_module().peak_flops(name, precision)
    assert peak == (None if tflops is None else tflops * 1e12)


def test_a_peak_given_wins():
    assert _bench_module().peak_flops("Some Future GPU", "bf16", override_tflops=2.5) == 2.5e12


def test_without_cuda_the_check_stops_with_one_clear_line():
    if _cuda():
        pytest.skip("this machine has CUDA")
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**_env(), "PYTHON": sys.executable})
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU"]
    direct = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=120, env=_env())
    assert direct.returncode == 2 and "no CUDA device here" in direct.stderr and direct.stdout == ""


@pytest.mark.slow
def test_the_cpu_dry_run_measures_every_part(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--dry-run", "--dir", str(tmp_path),
                           "--peak-tflops", "1"], capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # one JSON summary
    summary = json.loads(lines[0])
    assert summary["ok"] and summary["dry_run"] and summary["device"] == "cpu"
    # backward is counted too: a training step costs about three forward passes
    ratio = summary["flops_train_per_window"] / summary["flops_forward_per_window"]
    assert 2.5 < ratio < 3.5, ratio
    fit, bare, predict = summary["fit"]["32"], summary["bare"]["32"], summary["predict"]["32"]
    assert fit["steps"] == 2 and fit["windows"] == 4 and fit["windows_per_s"] > 0
    assert 0 <= fit["gpu_wait_share"] <= 1 and fit["gpu_busy_share"] + fit["gpu_wait_share"] == pytest.approx(1)
    assert fit["mfu"] == pytest.approx(summary["flops_train_per_window"] * fit["windows_per_s"] / 1e12, rel=1e-2)
    assert bare["windows_per_s"] > 0 and bare["mfu"] > 0
    assert predict["windows"] == 16 and predict["mp_per_s"] > 0 and 0 <= predict["gpu_wait_share"] <= 1
    assert summary["targets"]["fit_gpu_busy_share"]["target"] == 0.9
    assert (tmp_path / "predict-32.tif").exists()
