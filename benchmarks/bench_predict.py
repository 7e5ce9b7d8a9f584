"""Inference benchmarks: predict() throughput against a bare model forward, and flat peak memory.

1. Throughput. In one process, on a generated scene (default 5000 x 5000 = 25 MP, the demo scene mirrored):
   ``rs_pgd.predict`` end to end (read, normalise, forward, stitch, write the COG) in MP/s of scene, divided by
   a bare SMP forward on preloaded tensors with the same window size, margin, batch, bf16 autocast and
   channels_last, in MP/s of centre pixels (windows x tile^2; the same windows predict runs). Target >= 0.90.
2. Memory. ``rs-pgd predict`` logic in a fresh subprocess per scene, on a ~10 MP and a ~100 MP generated scene;
   the peak resident set size of each child (``os.wait4``) should be about the same: memory does not grow with
   the scene. Target < 1.5 GiB at 100 MP.

The model is an untrained Unet-ResNet34 (random weights: speed and memory do not depend on the weights).
Results are printed as JSON lines and as a markdown table for docs/benchmarks.md.

Usage::

    python benchmarks/bench_predict.py                          # both parts, defaults
    python benchmarks/bench_predict.py --skip-memory --throughput-size 4000
    python benchmarks/bench_predict.py --skip-throughput --memory-sizes 3162 10000 --dir /big/disk
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cached_scene, machine, random_checkpoint, run_measured  # noqa: E402


def bare_forward_mps(checkpoint, scene, windows: int, batch: int, repeats: int = 8) -> dict:
    """MP/s of centre pixels of the bare model on preloaded, normalised window batches (bf16, channels_last)."""
    import numpy as np
    import torch

    from rs_pgd.grid import WindowGrid
    from rs_pgd.models import model_from_checkpoint
    from rs_pgd.raster import BandStats, SceneReader, normalise

    net, meta = model_from_checkpoint(checkpoint)
    net = net.to(memory_format=torch.channels_last).eval()
    geometry = meta["geometry"]
    reader = SceneReader(scene)
    grid = WindowGrid(reader.height, reader.width, geometry["tile"], geometry["margin"], align=32)
    stats = BandStats.from_dict(meta["stats"])
    step = max(1, len(grid) // (repeats * batch))
    picked = [grid.window(i) for i in range(0, len(grid), step)][: repeats * batch]
    images = []
    for w in picked:
        data = reader.read(w.bounds)
        images.append(normalise(data.image, data.valid, stats))
    batches = [torch.from_numpy(np.stack(images[i : i + batch])).contiguous(memory_format=torch.channels_last)
               for i in range(0, len(images), batch)]  # fmt: skip
    n_batches = -(-windows // batch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        net(batches[0])  # warm-up
        started = time.perf_counter()
        for i in range(n_batches):
            logits = net(batches[i % len(batches)])
            torch.softmax(logits.float(), dim=1)  # predict() takes the softmax too
        seconds = time.perf_counter() - started
    centre_mp = n_batches * batch * geometry["tile"] ** 2 / 1e6
    return {"windows": n_batches * batch, "seconds": seconds, "mp_per_s": centre_mp / seconds}


def predict_mps(checkpoint, scene, output, batch: int) -> dict:
    """MP/s of scene of rs_pgd.predict end to end (defaults: bf16 on CPU, channels_last, COG output)."""
    import rasterio

    from rs_pgd import predict

    with rasterio.open(scene) as src:
        mp = src.width * src.height / 1e6
    started = time.perf_counter()
    result = predict(checkpoint, scene, output, batch_size=batch, progress=False)
    seconds = time.perf_counter() - started
    return {"windows": result.windows, "windows_run": result.windows_run, "seconds": seconds,
            "scene_mp": mp, "mp_per_s": mp / seconds}  # fmt: skip


def throughput(folder: Path, checkpoint: Path, size: int, batch: int) -> dict:
    import torch

    from rs_pgd.checkpoint import read_header
    from rs_pgd.grid import WindowGrid

    scene = cached_scene(folder, size, size)
    g = read_header(checkpoint).geometry
    grid = WindowGrid(size, size, g["tile"], g["margin"], align=32)
    pred = predict_mps(checkpoint, scene, folder / "throughput_prediction.tif", batch)
    # predict's MP are scene pixels; the bare forward's are centre pixels of the same number of windows (the
    # last row/column of tiles reaches past the scene): compare per window, then express in scene MP/s
    bare = bare_forward_mps(checkpoint, scene, pred["windows_run"], batch)
    per_window_predict = pred["seconds"] / pred["windows_run"]
    per_window_bare = bare["seconds"] / bare["windows"]
    return {
        "part": "throughput", "scene": f"{size}x{size}", "windows": len(grid), "tile": g["tile"],
        "margin": g["margin"], "batch": batch, "threads": torch.get_num_threads(),
        "predict_s": round(pred["seconds"], 1), "predict_mp_per_s": round(pred["mp_per_s"], 3),
        "bare_s_same_windows": round(per_window_bare * pred["windows_run"], 1),
        "bare_centre_mp_per_s": round(bare["mp_per_s"], 3),
        "bare_scene_mp_per_s": round(pred["scene_mp"] / (per_window_bare * pred["windows_run"]), 3),
        "ratio": round(per_window_bare / per_window_predict, 3),
    }  # fmt: skip


CHILD = (
    "import sys, time, json; from rs_pgd import predict; t = time.perf_counter(); "
    "r = predict(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=int(sys.argv[4]), progress=False); "
    "print(json.dumps({'windows': r.windows, 'seconds': time.perf_counter() - t}))"
)


def memory(folder: Path, checkpoint: Path, sizes: list[int], batch: int) -> list[dict]:
    rows = []
    for size in sizes:
        scene = cached_scene(folder, size, size)
        out = folder / f"memory_prediction_{size}.tif"
        run = run_measured([sys.executable, "-c", CHILD, str(checkpoint), str(scene), str(out), str(batch)])
        if run["returncode"] != 0:
            raise SystemExit(f"predict on {scene} failed with exit code {run['returncode']}")
        child = json.loads(run["stdout"].strip().splitlines()[-1])
        mp = size * size / 1e6
        rows.append({"part": "memory", "scene": f"{size}x{size}", "scene_mp": round(mp, 1),
                     "windows": child["windows"], "predict_s": round(child["seconds"], 1),
                     "mp_per_s": round(mp / child["seconds"], 3), "peak_rss_gib": round(run["peak_rss_gib"], 3)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(info: dict, results: list[dict]) -> str:
    lines = [f"Machine: {info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB RAM, GPU {info['gpu']}; "
             f"torch {info['torch']}, rasterio {info['rasterio']} (GDAL {info['gdal']}), SMP {info['smp']}, "
             f"load average at start {tuple(round(x, 2) for x in info['load_average'])}.", ""]  # fmt: skip
    for r in results:
        lines.append("| " + " | ".join(f"{k}: {v}" for k, v in r.items()) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="folder for the generated scenes (default: a temporary folder)")
    parser.add_argument("--throughput-size", type=int, default=5000, help="side of the throughput scene (px)")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[3162, 10000],
                        help="sides of the memory scenes (px): 3162 ~ 10 MP, 10000 = 100 MP")  # fmt: skip
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--margin", type=int, default=64)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rs-pgd-bench-") as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        info = machine()
        print(json.dumps({"machine": info}), flush=True)
        checkpoint = random_checkpoint(folder / "unet_resnet34_random.safetensors", tile=args.tile,
                                       margin=args.margin)  # fmt: skip
        results = []
        if not args.skip_throughput:
            results.append(throughput(folder, checkpoint, args.throughput_size, args.batch))
            print(json.dumps(results[-1]), flush=True)
        if not args.skip_memory:
            results += memory(folder, checkpoint, args.memory_sizes, args.batch)
        print()
        print(markdown(info, results))


if __name__ == "__main__":
    main()
