"""Peak memory of SceneReader window reads: it must not grow with the scene.

Writes a large tiled GeoTIFF (default 6 bands uint16 16384 x 16384, about 3.2 GB of pixels before compression)
block by block, never whole in RAM, plus a small scene of the same layout. Then, in a fresh process per scene,
reads N random windows (576 px, reaching past the edges too) with :class:`rs_pgd.raster.SceneReader` and prints
the peak resident set size (``resource.getrusage``) after opening and after the reads. The two peaks should be
about equal: memory is bounded by the window size and GDAL's block cache, not by the scene.

Usage::

    python benchmarks/bench_read_memory.py --size 8192 --windows 200
    python benchmarks/bench_read_memory.py --size 16384 --dir /big/disk --keep
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK = 512


def write_scene(path: Path, size: int, bands: int, seed: int = 0) -> None:
    """Write a size x size tiled DEFLATE GeoTIFF one strip of tiles at a time (bounded memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(300000, 6000000, 10, 10), tiled=True, blockxsize=BLOCK,
                   blockysize=BLOCK, compress="deflate", predictor=2, nodata=0, BIGTIFF="IF_SAFER")  # fmt: skip
    rng = np.random.default_rng(seed)
    chunk_cols = min(size, 8 * BLOCK)
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, size, BLOCK):
            rows = min(BLOCK, size - row)
            for col in range(0, size, chunk_cols):
                cols = min(chunk_cols, size - col)
                y = np.arange(row, row + rows, dtype=np.float32)[:, None]
                x = np.arange(col, col + cols, dtype=np.float32)[None, :]
                base = 2000 + 1000 * np.sin(x / 700.0) * np.cos(y / 900.0)
                block = np.stack([base + 300 * b for b in range(bands)])
                block += rng.integers(0, 64, size=block.shape)
                ds.write(block.astype(np.uint16), window=Window(col, row, cols, rows))


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(path: str, windows: int, window: int, seed: int) -> dict:
    """Read random windows of one scene in this (fresh) process and report memory and speed."""
    from rs_pgd.raster import SceneReader

    reader = SceneReader(path)
    reader.read((0, 0, 32, 32))
    opened_peak = peak_rss_mib()
    rng = np.random.default_rng(seed)
    margin = window // 4
    start = time.perf_counter()
    checksum = 0.0
    peaks = []
    for index in range(windows):
        row = int(rng.integers(-margin, reader.height - window + margin + 1))
        col = int(rng.integers(-margin, reader.width - window + margin + 1))
        data = reader.read((row, col, row + window, col + window))
        checksum += float(data.image[0, 0, 0])
        if (index + 1) % max(1, windows // 4) == 0:
            peaks.append(round(peak_rss_mib(), 1))
    seconds = time.perf_counter() - start
    return {
        "scene": path,
        "scene_pixels": f"{reader.count} x {reader.height} x {reader.width}",
        "scene_mib_uncompressed": reader.count * reader.height * reader.width * 2 / 2**20,
        "file_mib": os.path.getsize(path) / 2**20,
        "windows": windows,
        "windows_per_s": windows / seconds,
        "peak_rss_after_open_mib": opened_peak,
        "peak_rss_after_reads_mib": peak_rss_mib(),
        "peak_rss_by_quarter_mib": peaks,
        "rss_now_mib": current_rss_mib(),
    }


def run_child(*args: str, cachemax: int | None = None) -> dict:
    env = dict(os.environ)
    if cachemax is not None:
        env["GDAL_CACHEMAX"] = str(cachemax)  # MiB
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="side of the large scene in pixels")
    parser.add_argument("--small", type=int, default=1024, help="side of the small comparison scene")
    parser.add_argument("--bands", type=int, default=6)
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--window", type=int, default=576)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where to write the scenes (default: a temporary folder)")
    parser.add_argument(
        "--cachemax",
        type=int,
        action="append",
        default=None,
        help="GDAL_CACHEMAX in MiB for the reads (repeatable; default: GDAL's default, 5%% of RAM)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated scenes")
    parser.add_argument("--_generate", nargs=2, metavar=("PATH", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--_measure", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._generate:
        write_scene(Path(args._generate[0]), int(args._generate[1]), args.bands, args.seed)
        return
    if args._measure:
        print(json.dumps(measure(args._measure, args.windows, args.window, args.seed)))
        return

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="rs_pgd_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    small = workdir / f"scene_{args.small}.tif"
    large = workdir / f"scene_{args.size}.tif"
    common = ["--bands", str(args.bands), "--windows", str(args.windows), "--window", str(args.window),
              "--seed", str(args.seed)]  # fmt: skip
    try:
        for path, size in ((small, args.small), (large, args.size)):
            if not path.exists():
                start = time.perf_counter()
                subprocess.run(
                    [sys.executable, __file__, "--_generate", str(path), str(size), *common], check=True
                )
                print(
                    f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s"
                )
        for cachemax in args.cachemax or [None]:
            default = os.environ.get("GDAL_CACHEMAX", "GDAL default, 5% of RAM")
            print(f"GDAL_CACHEMAX = {default if cachemax is None else f'{cachemax} MiB'}")
            results = [
                run_child("--_measure", str(path), *common, cachemax=cachemax) for path in (small, large)
            ]
            for result in results:
                print(
                    f"  {result['scene_pixels']:>18} ({result['scene_mib_uncompressed']:6.0f} MiB of pixels, file "
                    f"{result['file_mib']:5.0f} MiB): {result['windows']} windows of {args.window} px at "
                    f"{result['windows_per_s']:5.1f}/s; peak RSS after open {result['peak_rss_after_open_mib']:5.1f} "
                    f"MiB, after each quarter of the reads {result['peak_rss_by_quarter_mib']} MiB"
                )
            growth = results[1]["peak_rss_after_reads_mib"] - results[0]["peak_rss_after_reads_mib"]
            print(f"  peak RSS difference large - small: {growth:+.1f} MiB")
    finally:
        if not args.keep and not args.dir:
            for path in (small, large):
                path.unlink(missing_ok=True)
            workdir.rmdir()


if __name__ == "__main__":
    main()
