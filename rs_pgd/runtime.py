"""Where and how the model runs: device, numeric precision, loader workers.

Used by training and inference alike. Importing this module does not import torch; the functions that need it
import it inside.

Precision ``auto`` picks bfloat16 autocast only where it is fast:

- CUDA: bf16 where the GPU supports it (Ampere and newer), else float16 autocast with a gradient scaler.
- CPU: bf16 only with native bf16 instructions (x86 ``avx512_bf16`` or ``amx_bf16``, Arm ``bf16``). Without them
  PyTorch emulates bf16: Unet-ResNet18, two 192 px windows, forward and backward on one thread took 32.5 s in
  bf16 against 1.4 s in float32 on an AVX2-only AMD EPYC (docs/benchmarks.md), while native bf16 is about 2x
  faster than float32. Where the CPU's features cannot be read (neither Linux nor macOS), a micro-benchmark of a
  few hundred milliseconds decides once and its answer is cached per machine and torch version.

``RS_PGD_CPU_BF16=1`` or ``0`` overrides the CPU detection (for a CPU this module misjudges). oneDNN's
``ONEDNN_MAX_CPU_ISA`` set below ``AVX512_CORE_BF16`` counts as no native bf16.
"""

from __future__ import annotations

import json
import operator
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rs_pgd.errors import DeviceError, OptionError

PRECISIONS = ("auto", "32", "bf16", "16-mixed")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 CPU flags (``/proc/cpuinfo``) with which bf16 matrix products run natively."""
ARM_BF16_FEATURE = "bf16"
OVERRIDE_VARIABLE = "RS_PGD_CPU_BF16"
ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "ALL", "DEFAULT")
"""Values of oneDNN's ``ONEDNN_MAX_CPU_ISA`` that keep its native bf16 kernels; lower ones make bf16 emulated."""


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU runs bf16 natively, and how that was found out."""

    native: bool
    reason: str


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why: ``precision`` is one of ``32``, ``bf16``, ``16-mixed``."""

    precision: str
    reason: str

    def to_dict(self) -> dict:
        return {"precision": self.precision, "reason": self.reason}


# -- device -------------------------------------------------------------------------------------------------
def resolve_device(name: str):
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is a :class:`DeviceError`."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but CUDA is not available here; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def default_workers(device=None) -> int:
    """DataLoader worker processes: on CUDA one per spare core (at most 4); on a CPU, none up to 2 cores.

    On the CPU the model's intra-op threads already use every core, and a loader process competing with them cost
    more than the reading it hides: on 2 cores fit ran at 0.70-0.75 of a bare training loop with one worker and
    0.90 with none (docs/benchmarks.md). Larger CPUs get one worker per 8 cores (at most 4).
    """
    cores = os.cpu_count() or 1
    if device is not None and device.type == "cuda":
        return max(0, min(4, cores - 1))
    return 0 if cores <= 2 else min(4, max(1, cores // 8))


def check_loader_options(batch_size: int | None = None, workers: int | None = None) -> None:
    """Raise :class:`OptionError` for a batch size below 1 or a negative worker count (None means the default).

    Torch-free, so :func:`rs_pgd.predict` refuses them before importing torch (a DataLoader would raise a
    ValueError deep inside, after the model was loaded).
    """
    for name, value, low, rule in (("batch-size", batch_size, 1, "must be at least 1"),
                                   ("workers", workers, 0, "must be 0 (read in the main process) or a positive number")):
        if value is None:
            continue
        try:
            number = operator.index(value)
        except TypeError:
            raise OptionError(f"--{name} {value!r} must be a whole number") from None
        if number < low:
            raise OptionError(f"--{name} {number} {rule}")


# -- precision ----------------------------------------------------------------------------------------------
def choose_precision(requested: str, device_type: str, cpu_bf16: CpuBf16 | None = None,
                     cuda_bf16: bool | None = None) -> PrecisionChoice:
    """The precision to run with, and why.

    Parameters
    ----------
    requested : str
        ``auto``, ``32``, ``bf16`` or ``16-mixed``.
    device_type : str
        ``cpu`` or ``cuda``.
    cpu_bf16 : CpuBf16, optional
        The CPU's bf16 capability; detected (:func:`cpu_bf16_support`) when needed and not given.
    cuda_bf16 : bool, optional
        Whether the GPU supports bf16; asked of torch when needed and not given.

    Returns
    -------
    PrecisionChoice
    """
    if requested not in PRECISIONS:
        raise DeviceError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "16-mixed" and device_type != "cuda":
        raise DeviceError("--precision 16-mixed needs CUDA; use bf16 or 32 on the CPU")
    if requested != "auto":
        return PrecisionChoice(requested, f"--precision {requested} was asked for")
    if device_type == "cuda":
        if cuda_bf16 is None:
            import torch

            cuda_bf16 = bool(torch.cuda.is_bf16_supported())
        if cuda_bf16:
            return PrecisionChoice("bf16", "auto: this GPU supports bf16")
        return PrecisionChoice("16-mixed", "auto: this GPU lacks bf16, float16 autocast with a gradient scaler")
    cpu_bf16 = cpu_bf16 if cpu_bf16 is not None else cpu_bf16_support()
    if cpu_bf16.native:
        return PrecisionChoice("bf16", f"auto: {cpu_bf16.reason}")
    return PrecisionChoice("32", f"auto: {cpu_bf16.reason}; bf16 would be emulated (~20x slower), so float32")


def resolve_precision(requested: str, device) -> PrecisionChoice:
    """:func:`choose_precision` for a torch device."""
    return choose_precision(requested, device.type)


def cpu_bf16_support(measure: bool = True) -> CpuBf16:
    """Whether this CPU has native bf16 (see the module docstring for the rules and the override).

    With ``measure=False`` a CPU whose features cannot be read is reported as not native, without running the
    micro-benchmark (and without importing torch).
    """
    override = os.environ.get(OVERRIDE_VARIABLE, "").strip()
    if override in ("0", "1"):
        return CpuBf16(override == "1", f"{OVERRIDE_VARIABLE}={override}")
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa and isa not in ONEDNN_BF16_ISAS:
        return CpuBf16(False, f"ONEDNN_MAX_CPU_ISA={isa} keeps oneDNN below its bf16 kernels")
    flags = cpu_flags()
    if flags is not None:
        return _from_flags(flags)
    if not measure:
        return CpuBf16(False, "the CPU's features cannot be read here; the first run measures bf16 against float32")
    return _benchmarked_bf16()


def runtime_report() -> dict:
    """What ``--precision auto`` will use on this machine, and why, without importing torch (for ``info``)."""
    from rs_pgd.config import cuda_visible

    report = {"cpu_precision": choose_precision("auto", "cpu", cpu_bf16=cpu_bf16_support(measure=False)).to_dict()}
    if cuda_visible():
        report["gpu_precision"] = "bf16 on GPUs that support it (Ampere and newer), else 16-mixed"
    return report


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (lower case), or None where they cannot be read without running code."""
    if sys.platform.startswith("linux"):
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                return set(value.lower().split())
        return None
    if sys.platform == "darwin":
        return _darwin_flags()
    return None


def _darwin_flags() -> set[str] | None:
    import subprocess

    try:
        answer = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if answer.returncode != 0:
        return set() if platform.machine() == "x86_64" else None
    return {ARM_BF16_FEATURE} if answer.stdout.strip() == "1" else set()


def _from_flags(flags: set[str]) -> CpuBf16:
    native = sorted(f for f in (*CPU_BF16_FLAGS, ARM_BF16_FEATURE) if f in flags)
    if native:
        return CpuBf16(True, f"the CPU has native bf16 ({', '.join(native)})")
    return CpuBf16(False, "the CPU has no native bf16 (no avx512_bf16, amx_bf16 or Arm bf16)")


def _benchmarked_bf16() -> CpuBf16:
    """Time one small convolution forward+backward in float32 and in bf16, once per machine and torch version."""
    import torch

    cache = _cache_dir() / "cpu-bf16.json"
    key = f"{platform.machine()}|{platform.processor()}|{torch.__version__}"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return CpuBf16(bool(cached["native"]), f"micro-benchmark (cached): bf16/fp32 time {cached['ratio']:.2f}")
    except (OSError, ValueError, KeyError):
        pass
    ratio = _bf16_time_ratio()
    native = ratio < 1.0
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "native": native, "ratio": ratio}))
    except OSError:
        pass
    return CpuBf16(native, f"micro-benchmark: bf16/fp32 time {ratio:.2f}")


def _bf16_time_ratio() -> float:
    import torch

    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(1, 32, 96, 96)

    def timed(dtype) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                conv(x).float().sum().backward()
            best = min(best, time.perf_counter() - started)
        return best

    timed(None)
    return timed(torch.bfloat16) / max(timed(None), 1e-9)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rs-pgd"


def autocast_dtype(precision: str):
    """The autocast dtype of a resolved precision: ``torch.bfloat16``, ``torch.float16`` or None (float32)."""
    import torch

    return {"bf16": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def autocast_context(precision: str, device):
    """The autocast context for a resolved precision (disabled for ``32``)."""
    import torch

    dtype = autocast_dtype(precision)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)
