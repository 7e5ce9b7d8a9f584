"""onnxruntime vs torch on the CPU: ``rs_pgd.predict`` with an exported ``.onnx`` file against the checkpoint.

In one process, on a generated scene (default 1536 x 1536, the demo scene mirrored), with the same geometry
(predict's default for a 256/64 checkpoint: tile 512 + 2 x margin 128 = 768 px windows), batch 1, COG output, the
same number of threads for both runtimes (``--threads``; torch.set_num_threads and onnxruntime's
intra_op_num_threads through OMP_NUM_THREADS). Rounds are interleaved (torch fp32, torch bf16, onnxruntime fp32)
after one warm-up of each, so that a change in the machine's load hits all three alike. Reports seconds per
run, MP/s of scene, the ratios, and the argmax agreement of the onnxruntime map with the torch fp32 map.

The model is an untrained Unet-ResNet34 (random weights: speed does not depend on the weights).

Usage::

    python benchmarks/bench_onnx.py                        # 1536 x 1536, 2 rounds, 1 thread
    python benchmarks/bench_onnx.py --size 3072 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cached_scene, machine, random_checkpoint  # noqa: E402


def timed_predict(model, scene, output, **options) -> float:
    from rs_pgd import predict

    started = time.perf_counter()
    predict(model, scene, output, progress=False, batch_size=1, workers=0, **options)
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1536, help="scene side in pixels")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", default=None, help="folder for the scene and outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch and onnxruntime start their pools

    import numpy as np
    import rasterio
    import torch

    from rs_pgd import export

    torch.set_num_threads(args.threads)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench_onnx_"))
    scene = cached_scene(folder, args.size, args.size)
    checkpoint = random_checkpoint(folder / "model.safetensors", encoder="resnet34", tile=256, margin=64)
    exported = export(checkpoint, folder / "model.onnx")
    print(f"exported {exported.window} px windows (tile {exported.tile} + 2 x {exported.margin}), "
          f"max |onnx - torch| {exported.max_abs_diff:.2g}", flush=True)
    runs = {
        "torch fp32": (checkpoint, {"precision": "32"}),
        "torch bf16": (checkpoint, {"precision": "bf16"}),
        "onnxruntime fp32": (folder / "model.onnx", {}),
    }
    times = {name: [] for name in runs}
    for round_index in range(args.rounds + 1):  # round 0 is the warm-up
        for name, (model, options) in runs.items():
            seconds = timed_predict(model, scene, folder / f"{name.replace(' ', '_')}.tif", **options)
            if round_index:
                times[name].append(seconds)
            print(json.dumps({"round": round_index, "run": name, "seconds": round(seconds, 2),
                              "load": os.getloadavg()[0]}), flush=True)  # fmt: skip
    with rasterio.open(folder / "torch_fp32.tif") as a, rasterio.open(folder / "onnxruntime_fp32.tif") as b:
        ta, tb = a.read(1), b.read(1)
    valid = ta != 255
    agreement = float(np.mean(ta[valid] == tb[valid]))
    mp = args.size * args.size / 1e6
    best = {name: min(values) for name, values in times.items()}
    print(json.dumps({"machine": machine(), "threads": args.threads, "scene_mp": mp, "best_seconds": best,
                      "argmax_agreement_onnx_vs_torch_fp32": agreement}))  # fmt: skip
    print(f"\n| runtime | best of {args.rounds} s | MP/s | vs torch fp32 |")
    print("|---|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.1f} | {mp / seconds:.3f} | {best['torch fp32'] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
