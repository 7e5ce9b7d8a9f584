"""Where and how the model runs: device, numeric precision, CPU threads, loader workers.

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

Threads ``auto`` (:func:`choose_threads`): ``OMP_NUM_THREADS`` when set; otherwise the physical cores this process
may run on (its CPU affinity, a cgroup CPU quota), divided among torchrun's local ranks, less the cores that other
processes keep busy (the 1-minute load average minus this process's own share, or the tasks runnable right now if
more). Torch's default, one thread per core whatever else runs, made a training step 5x slower than one thread on
a loaded 2-core machine (docs/benchmarks.md). Idle OpenMP threads sleep instead of spinning
(``OMP_WAIT_POLICY=PASSIVE``, ``KMP_BLOCKTIME=0``, set before torch starts its thread pool and only where the user
has not set them), so a process that starts competing later costs less.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import operator
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rs_pgd.errors import DeviceError, OptionError

logger = logging.getLogger(__name__)

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


# -- threads ------------------------------------------------------------------------------------------------
THREADS_AUTO = "auto"
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
"""Idle OpenMP threads sleep at once: the OpenMP standard's variable (GNU libgomp, which torch's Linux wheels use,
and LLVM/Intel OpenMP) and Intel OpenMP's own spin time. Read by the OpenMP runtime when torch loads it."""
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT")
"""Set by the user, any of these leaves the OpenMP wait policy to them."""


@dataclass(frozen=True)
class CpuLoad:
    """What ``--threads auto`` looks at: the cores this process may use and how busy other processes keep them.

    Attributes
    ----------
    cores : int
        Physical cores available to this process (affinity, hyperthread siblings counted once, cgroup quota).
    cores_reason : str
        How ``cores`` was found, for the log.
    load1 : float or None
        The 1-minute load average (None where the system has none).
    own : float
        This process's own share of ``load1`` (its CPU time so far, damped as the load average damps it).
    running : int or None
        Other tasks runnable right now (median of a few samples of ``/proc/loadavg``), None where unknown.
    """

    cores: int
    cores_reason: str
    load1: float | None = None
    own: float = 0.0
    running: int | None = None

    @property
    def busy(self) -> float:
        """Cores that other processes keep busy: the larger of the load average's and the instant's view."""
        averaged = max(0.0, self.load1 - self.own) if self.load1 is not None else 0.0
        return max(averaged, float(self.running or 0))


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count a run uses, why, and the OpenMP settings rs-pgd put in the environment."""

    threads: int
    reason: str
    environment: tuple = ()

    def to_dict(self) -> dict:
        return {"threads": self.threads, "reason": self.reason, "environment": dict(self.environment)}


def parse_threads(value) -> int | str:
    """``auto`` or a whole number of threads >= 1 (also as a string); anything else is an :class:`OptionError`."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == THREADS_AUTO:
            return THREADS_AUTO
        if not text.lstrip("+").isdigit():
            raise OptionError(f"--threads {value!r} must be a whole number of threads or auto")
        value = int(text)
    if isinstance(value, bool):
        raise OptionError(f"--threads {value!r} must be a whole number of threads or auto")
    try:
        number = operator.index(value)
    except TypeError:
        raise OptionError(f"--threads {value!r} must be a whole number of threads or auto") from None
    if number < 1:
        raise OptionError(f"--threads {number} must be at least 1 (or auto: the free physical cores)")
    return number


def choose_threads(requested, load: CpuLoad | None = None, env: Mapping | None = None) -> ThreadChoice:
    """The intra-op thread count to run with, and why (see the module docstring for the ``auto`` rules).

    Parameters
    ----------
    requested : int or str
        A number of threads, or ``auto``.
    load : CpuLoad, optional
        The cores and their load; measured (:func:`cpu_load`) when ``auto`` needs it and it is not given.
    env : mapping, optional
        The environment (default ``os.environ``): ``OMP_NUM_THREADS``, torchrun's ``LOCAL_WORLD_SIZE`` and the
        OpenMP wait variables.

    Returns
    -------
    ThreadChoice
        ``environment`` holds the wait-policy variables to set (none where the user set any of them).
    """
    env = os.environ if env is None else env
    requested = parse_threads(requested)
    wait = () if any(name in env for name in WAIT_VARIABLES) else tuple(WAIT_POLICY.items())
    if requested != THREADS_AUTO:
        return ThreadChoice(requested, f"--threads {requested} was asked for", wait)
    omp = str(env.get("OMP_NUM_THREADS", "")).strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), f"auto: OMP_NUM_THREADS={int(omp)} is set", wait)
    load = load if load is not None else cpu_load()
    local = str(env.get("LOCAL_WORLD_SIZE", "1")).strip()
    ranks = int(local) if local.isdigit() and int(local) > 0 else 1
    busy = load.busy
    taken = min(load.cores - 1, int(busy + 0.5)) if load.cores > 1 else 0  # at least one core is ours
    threads = max(1, (load.cores - taken) // ranks)
    parts = [load.cores_reason]
    if load.load1 is not None:
        seen = f"1-min load {load.load1:.1f}, {load.own:.1f} of it this process"
        if load.running is not None:
            seen += f", {load.running} other task{'s' if load.running != 1 else ''} runnable now"
        parts.append(f"{busy:.1f} busy with other work ({seen})")
    if ranks > 1:
        parts.append(f"shared by {ranks} torchrun ranks")
    return ThreadChoice(threads, "auto: " + "; ".join(parts), wait)


def cpu_load() -> CpuLoad:
    """This machine's cores available to this process and how busy other processes keep them, now."""
    cores, reason = available_cores()
    load1 = None
    with contextlib.suppress(OSError, AttributeError):
        load1 = float(os.getloadavg()[0])
    return CpuLoad(cores, reason, load1, _own_load() if load1 is not None else 0.0, _runnable_others())


def available_cores() -> tuple[int, str]:
    """Physical cores this process may run on, and how that was found (affinity, topology, cgroup quota)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        where = "in this process's CPU affinity"
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
        where = "on this machine"
    physical = _physical_cores(cpus)
    count, reason = (physical, f"{physical} physical core{'s' if physical != 1 else ''} {where}")
    if physical < len(cpus):
        reason += f" ({len(cpus)} logical)"
    quota = _cgroup_cpu_quota()
    if quota is not None and quota < count:
        count, reason = quota, f"{reason}, {quota} by the cgroup's CPU quota"
    return max(1, count), reason


def _physical_cores(cpus: list[int], root: str = "/sys/devices/system/cpu") -> int:
    """Distinct (package, core) pairs among ``cpus`` (Linux sysfs); the logical count where topology is unknown."""
    cores = set()
    for cpu in cpus:
        base = Path(root) / f"cpu{cpu}" / "topology"
        try:
            cores.add((base.joinpath("physical_package_id").read_text().strip(),
                       base.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def _cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> int | None:
    """Whole CPUs allowed by a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), rounded up; None if none."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path(root, "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    with contextlib.suppress(OSError, ValueError):
        quota = int(Path(root, "cpu", "cpu.cfs_quota_us").read_text())
        period = int(Path(root, "cpu", "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else max(1, math.ceil(quota / period))
    return None


def _own_load() -> float:
    """This process's share of the 1-minute load average: its mean CPU use since it started, damped as the
    kernel damps the average (a process that started t seconds ago has raised it by at most 1 - exp(-t/60))."""
    times = os.times()
    used = times.user + times.system
    elapsed = _process_age()
    if elapsed is None or elapsed <= 0:
        return 0.0
    return (used / elapsed) * (1.0 - math.exp(-elapsed / 60.0))


def _process_age() -> float | None:
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _runnable_others(samples: int = 5, interval: float = 0.01) -> int | None:
    """Tasks runnable now besides this one: median of ``/proc/loadavg``'s running count over a few samples."""
    counts = []
    for k in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(0, running - 1))  # the reading task is runnable itself
        if k + 1 < samples:
            time.sleep(interval)
    return int(statistics.median(counts))


def configure_threads(requested, load: CpuLoad | None = None, log: bool = True) -> ThreadChoice:
    """Apply :func:`choose_threads`: the wait policy into the environment (only before torch is imported, when
    the OpenMP runtime still reads it), then ``torch.set_num_threads``; log the choice and why (with ``log``, else
    leave that to :func:`log_threads`). The returned count is read back from ``torch.get_num_threads()``."""
    choice = choose_threads(requested, load)
    applied = ()
    if choice.environment and "torch" not in sys.modules:
        for name, value in choice.environment:
            os.environ.setdefault(name, value)
        applied = choice.environment
    import torch

    torch.set_num_threads(choice.threads)
    reason = choice.reason
    if applied:
        reason += "; idle threads sleep (" + ", ".join(f"{k}={v}" for k, v in applied) + ")"
    elif choice.environment:
        reason += "; torch was imported before rs-pgd could set OMP_WAIT_POLICY=PASSIVE (set it yourself)"
    choice = ThreadChoice(torch.get_num_threads(), reason, applied)
    if log:
        log_threads(choice)
    return choice


def log_threads(choice: ThreadChoice) -> None:
    """Log ``threads N (why)``: at INFO on torchrun's rank 0 (or without torchrun), at DEBUG on the other ranks."""
    emit = logger.info if os.environ.get("RANK", "0") == "0" else logger.debug
    emit("threads %d (%s)", choice.threads, choice.reason)


@contextlib.contextmanager
def torch_threads(requested, log: bool = True):
    """:func:`configure_threads` for the length of a ``with`` block; torch's thread count is restored after."""
    before = None
    if "torch" in sys.modules:
        before = sys.modules["torch"].get_num_threads()
    choice = configure_threads(requested, log=log)
    try:
        yield choice
    finally:
        if before is not None:
            sys.modules["torch"].set_num_threads(before)


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
