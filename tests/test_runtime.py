"""``--precision auto``: bf16 only where the hardware runs it natively; the choice and its reason are recorded."""

import json
import re
import subprocess
import sys

import pytest

from rs_pgd.errors import DeviceError
from rs_pgd.runtime import CpuBf16, _from_flags, choose_precision, cpu_bf16_support

# /proc/cpuinfo flag sets (abridged) of real CPUs
AVX2_EPYC = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}  # e.g. AMD EPYC 7003 (Zen 3)
ZEN4_EPYC = AVX2_EPYC | {"avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
SAPPHIRE_RAPIDS = AVX2_EPYC | {"avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
SKYLAKE_X = AVX2_EPYC | {"avx512f", "avx512bw", "avx512dq"}  # AVX-512 without bf16: emulated
GRAVITON3 = {"fp", "asimd", "sve", "bf16", "i8mm"}


@pytest.mark.parametrize(
    ("flags", "native"),
    [(AVX2_EPYC, False), (SKYLAKE_X, False), (ZEN4_EPYC, True), (SAPPHIRE_RAPIDS, True), (GRAVITON3, True)],
    ids=["avx2-epyc", "skylake-avx512", "zen4", "sapphire-rapids", "graviton3"],
)
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    assert _from_flags(flags).native is native


def test_auto_picks_bf16_only_on_a_cpu_with_native_bf16():
    with_bf16 = choose_precision("auto", "cpu", cpu_bf16=_from_flags(ZEN4_EPYC))
    without = choose_precision("auto", "cpu", cpu_bf16=_from_flags(AVX2_EPYC))
    assert with_bf16.precision == "bf16" and "avx512_bf16" in with_bf16.reason
    assert without.precision == "32" and "no native bf16" in without.reason


def test_auto_on_gpus_picks_bf16_or_fp16():
    assert choose_precision("auto", "cuda", cuda_bf16=True).precision == "bf16"
    assert choose_precision("auto", "cuda", cuda_bf16=False).precision == "16-mixed"


def test_an_explicit_precision_is_kept_and_fp16_needs_cuda():
    slow = CpuBf16(False, "test")
    assert choose_precision("bf16", "cpu", cpu_bf16=slow).precision == "bf16"
    assert choose_precision("32", "cpu", cpu_bf16=CpuBf16(True, "test")).precision == "32"
    with pytest.raises(DeviceError, match="needs CUDA"):
        choose_precision("16-mixed", "cpu")
    with pytest.raises(DeviceError, match="unknown precision"):
        choose_precision("float8", "cpu")


def test_the_environment_overrides_the_detection(monkeypatch):
    monkeypatch.setenv("RS_PGD_CPU_BF16", "0")
    assert cpu_bf16_support() == CpuBf16(False, "RS_PGD_CPU_BF16=0")
    monkeypatch.setenv("RS_PGD_CPU_BF16", "1")
    assert choose_precision("auto", "cpu").precision == "bf16"


def test_a_onednn_isa_cap_below_bf16_counts_as_emulated(monkeypatch):
    monkeypatch.delenv("RS_PGD_CPU_BF16", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert cpu_bf16_support() == CpuBf16(False, "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN below its bf16 kernels")


@pytest.mark.parametrize(("override", "expected"), [("0", "32"), ("1", "bf16")])
def test_fit_logs_and_records_the_choice(tmp_path, demo_labels, override, expected):
    """Through the CLI: the training log says which precision auto chose and why; the checkpoint records it."""
    from conftest import write_demo_crop

    scene = write_demo_crop(tmp_path / "crop.tif", 128)
    out = tmp_path / "m.safetensors"
    env = {**__import__("os").environ, "RS_PGD_CPU_BF16": override}
    done = subprocess.run(
        [sys.executable, "-m", "rs_pgd.cli.main", "fit", str(scene), str(demo_labels), "-o", str(out),
         "--encoder", "resnet18", "--tile", "64", "--margin", "32", "--max-steps", "1", "--epochs", "1",
         "--val-fraction", "0", "--workers", "0"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert f"precision {expected} (auto: RS_PGD_CPU_BF16={override}" in done.stderr
    from rs_pgd.checkpoint import read_header

    meta = read_header(out)
    assert meta.precision == expected and f"RS_PGD_CPU_BF16={override}" in meta.precision_reason


def test_info_json_reports_the_precision_auto_would_use(monkeypatch, demo_scene):
    from click.testing import CliRunner

    from rs_pgd.cli.main import cli

    monkeypatch.setenv("RS_PGD_CPU_BF16", "0")
    done = CliRunner().invoke(cli, ["info", str(demo_scene), "--json"])
    assert done.exit_code == 0, done.output
    runtime = json.loads(done.output)["runtime"]
    assert runtime["cpu_precision"] == {"precision": "32", "reason": runtime["cpu_precision"]["reason"]}
    assert "RS_PGD_CPU_BF16=0" in runtime["cpu_precision"]["reason"]


@pytest.mark.parametrize(
    ("options", "message"),
    [({"batch_size": 0}, r"--batch-size 0 must be at least 1"),
     ({"workers": -1}, r"--workers -1 must be 0 \(read in the main process\) or a positive number"),
     ({"batch_size": 2.5}, r"--batch-size 2.5 must be a whole number")],
    ids=["batch-size-0", "workers-negative", "batch-size-fraction"],
)
def test_predict_refuses_bad_loader_options_before_importing_torch(tmp_path, options, message):
    """issue 14 #8: rs_pgd.predict (the API, not only click) refuses them before torch and before any file."""
    code = ("import sys, rs_pgd\n"
            "from rs_pgd.errors import OptionError\n"
            f"try: rs_pgd.predict('model.safetensors', 'scene.tif', 'out.tif', **{options!r})\n"
            "except OptionError as exc: print(exc)\n"
            "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    error, torch_imported = done.stdout.splitlines()
    assert re.fullmatch(message, error) and torch_imported == "False"
    assert list(tmp_path.iterdir()) == []
