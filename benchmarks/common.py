"""Shared helpers of the benchmarks: large realistic scenes, peak memory of a subprocess, the machine.

- :func:`make_large_scene` writes a scene of any size by mirroring the embedded demo scene (real Landsat
  texture, coastlines and nodata) block by block into a tiled DEFLATE GeoTIFF; only one strip of blocks is ever
  in memory, so a 100-megapixel scene is written in bounded RAM.
- :func:`run_measured` runs a command in a subprocess and returns its own peak resident set size
  (``os.wait4`` rusage of that child alone, not of every child of the benchmark).
- :func:`machine` describes the machine and the library versions, for the header of docs/benchmarks.md.
- :func:`random_checkpoint` writes an untrained SMP checkpoint with the metadata :func:`rs_pgd.predict` expects.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_SCENE = REPO / "rs_pgd" / "data" / "RGB.byte.tif"
BLOCK = 512


def mirror_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Source indices of positions ``start..stop-1`` when an axis of ``length`` is mirrored end to end forever."""
    period = 2 * length  # symmetric tiling: a, reversed a, a, ... (no seam pixel is repeated oddly)
    folded = np.mod(np.arange(start, stop), period)
    return np.where(folded < length, folded, period - 1 - folded)


def make_large_scene(path, height: int, width: int, source=DEMO_SCENE, block: int = BLOCK) -> Path:
    """Write a ``height x width`` tiled GeoTIFF by mirroring ``source`` block by block; return its path.

    The result keeps the source's bands, dtype, nodata, CRS and pixel size (origin at the source's origin), so
    it looks like a large real scene: the same radiometry and land/water/nodata mix, repeated. Memory: the
    source plus one strip of ``block`` rows.
    """
    import rasterio
    from rasterio.windows import Window

    path = Path(path)
    with rasterio.open(source) as src:
        data = src.read()
        profile = src.profile
    count, src_h, src_w = data.shape
    profile.update(width=width, height=height, tiled=True, blockxsize=block, blockysize=block, compress="deflate",
                   predictor=2, interleave="pixel", BIGTIFF="IF_SAFER")  # fmt: skip
    cols = mirror_indices(0, width, src_w)
    from rs_pgd.output import AtomicOutput

    with AtomicOutput(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, height, block):
            rows = mirror_indices(row, min(row + block, height), src_h)
            strip = data[:, rows][:, :, cols]
            dst.write(strip, window=Window(0, row, width, len(rows)))
    return path


def cached_scene(folder, height: int, width: int) -> Path:
    """A generated scene of the given size in ``folder``, written once and reused."""
    path = Path(folder) / f"mirrored_{height}x{width}.tif"
    if not path.exists():
        started = time.perf_counter()
        make_large_scene(path, height, width)
        print(f"wrote {path} ({height * width / 1e6:.0f} MP) in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def run_measured(command: list[str], env: dict | None = None) -> dict:
    """Run ``command``; return its exit status, wall time, peak RSS (GiB, that child alone) and its stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "seconds": time.perf_counter() - started,
        "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30,  # ru_maxrss is KiB on Linux
        "user_s": usage.ru_utime,
        "stdout": out,
    }


def peak_rss_gib_self() -> float:
    """Peak resident set size of this process so far, in GiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def machine() -> dict:
    """Cores, memory, CPU model, GPU and library versions."""
    import rasterio
    import segmentation_models_pytorch as smp
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(_memory_gib(), 1),
        "cpu": _cpu_model(),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "smp": smp.__version__,
        "load_average": os.getloadavg(),
    }


def random_checkpoint(path, arch: str = "Unet", encoder: str = "resnet34", tile: int = 256, margin: int = 64,
                      scene=DEMO_SCENE, seed: int = 0) -> Path:  # fmt: skip
    """An untrained (random weights) land/water checkpoint for ``scene``'s bands, as :func:`rs_pgd.fit` writes it
    (the one schema, :class:`rs_pgd.checkpoint.CheckpointMeta`); band statistics are computed on ``scene``."""
    import torch

    from rs_pgd import __version__, checkpoint
    from rs_pgd.classes import ClassTable
    from rs_pgd.models import ModelSpec
    from rs_pgd.raster import SceneReader, compute_band_stats, scene_info

    reader = SceneReader(scene)
    info = scene_info(scene)
    spec = ModelSpec(arch=arch, encoder=encoder, in_channels=reader.count, classes=2, norm="frozen")
    torch.manual_seed(seed)
    model, _ = spec.build()
    classes = ClassTable(values=(0, 1), names=("water", "land"), colours=((0, 0, 255), (0, 160, 0)))
    meta = checkpoint.CheckpointMeta(
        rs_pgd_version=__version__, model=spec.to_dict(), bands=tuple(reader.bands),
        band_names=tuple(f"band {b}" for b in reader.bands), preset=reader.preset.name, scale=reader.preset.scale,
        offset=reader.preset.offset, stats=compute_band_stats(reader, tile=512, max_windows=16).to_dict(),
        classes=classes.to_dict(), geometry={"tile": tile, "margin": margin, "stride": tile, "align": 32},
        training_scenes=({"path": str(scene), "crs": info.crs_string, "res": list(info.res), "width": info.width,
                          "height": info.height, "count": info.count, "dtype": info.dtype},),
        precision="32", precision_reason="benchmark checkpoint (random weights)",
    )
    return checkpoint.save(path, model.state_dict(), meta)
