"""Peak memory of ``rs-pgd fit`` must not grow with the scene: a 1k² and a 16k² scene, same options.

Both scenes are the real demo Landsat 7 scene (3 bands, uint8, nodata 0) mirrored to ``size`` x ``size`` and its
land/water label raster mirrored alongside, written block by block (the 16k² scene is 768 MB of pixels, never
whole in RAM). Each run is ``rs-pgd fit --max-steps K`` in its own subprocess with the same options
(``--encoder resnet18 --tile 256 --margin 64 --step-every 8 --max-steps 2 --val-fraction 0`` by default).

Two memory numbers per run:

- ``maxrss_mb``: ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` read by a fresh wrapper process after the fit child is reaped. On Linux this is
  the peak RSS of the *largest single process* among the reaped descendants (fit itself or one DataLoader
  worker), not their sum. With ``--workers 0`` it is exactly fit's own peak.
- ``tree_pss_peak_mb``: the peak, sampled every 0.2 s, of the summed PSS (``/proc/<pid>/smaps_rollup``) of the fit
  process and all its descendants: workers included, pages shared after ``fork`` counted once.

The script also reports how long set-up took: the time until the first ``--log-json`` line minus the duration of
the second step (set-up = imports, band statistics, label opening, the scan that reads every window once to count
its labelled pixels, model build).

Usage::

    python benchmarks/bench_fit_memory.py                       # 1024 and 16384, workers 0 and default
    python benchmarks/bench_fit_memory.py --sizes 1024 4096 --workers 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit_throughput import make_demo_scene  # noqa: E402  (our own helper, same folder)

FIT_OPTIONS = ["--encoder", "resnet18", "--tile", "256", "--margin", "64", "--step-every", "8", "--max-steps", "2",
               "--val-fraction", "0", "--quiet"]


WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
           "print('maxrss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_fit(scene: Path, labels: Path, out_dir: Path, workers: int | None) -> dict:
    """One ``rs-pgd fit`` in a subprocess: its peak memory and timings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "log.jsonl"
    if log.exists():
        log.unlink()
    command = [sys.executable, "-m", "rs_pgd.cli.main", "fit", str(scene), str(labels),
               "-o", str(out_dir / "model.safetensors"), "--log-json", str(log), *FIT_OPTIONS]
    if workers is not None:
        command += ["--workers", str(workers)]
    started = time.time()
    # a fresh wrapper per run, so that its RUSAGE_CHILDREN holds this fit's tree alone
    child = subprocess.Popen([sys.executable, "-c", WRAPPER, *command], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    peak = 0
    while child.poll() is None:
        peak = max(peak, sum(pss_kb(p) for p in descendants(child.pid) if p != child.pid))
        time.sleep(0.2)
    output = child.stdout.read()
    wall = time.time() - started
    if child.returncode:
        raise RuntimeError(f"fit failed ({child.returncode}):\n{output[-3000:]}")
    maxrss = int(output.strip().splitlines()[-1].split()[-1])
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    step_s = [round(b["time"] - a["time"], 2) for a, b in zip(lines, lines[1:])]
    first = lines[0]["time"] - started
    return {"maxrss_mb": round(maxrss / 1024, 1),
            "tree_pss_peak_mb": round(peak / 1024, 1), "wall_s": round(wall, 1),
            "first_step_done_s": round(first, 1), "later_step_s": step_s,
            "setup_s_estimate": round(first - (step_s[0] if step_s else 0), 1),
            "windows_per_step": [x["windows"] for x in lines]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 16384])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, -1],
                        help="worker counts to run (-1: fit's default)")
    parser.add_argument("--dir", default=None, help="where the generated scenes go (reused when present)")
    args = parser.parse_args(argv)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="rs_pgd_bench_mem_"))
    directory.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes:
        started = time.time()
        scene, labels = make_demo_scene(directory, size)
        print(f"scene {size}: {scene.stat().st_size / 1e6:.0f} MB, generated/reused in {time.time() - started:.0f} s",
              flush=True)
    for workers in args.workers:
        for size in args.sizes:
            scene, labels = make_demo_scene(directory, size)
            w = None if workers < 0 else workers
            result = run_fit(scene, labels, directory / f"run_{size}_w{workers}", w)
            result.update(size=size, workers="default" if w is None else w,
                          load_average=[round(x, 2) for x in os.getloadavg()])
            print(json.dumps(result), flush=True)
            results.append(result)
    by = {(r["size"], r["workers"]): r for r in results}
    for workers in {r["workers"] for r in results}:
        small, big = by.get((min(args.sizes), workers)), by.get((max(args.sizes), workers))
        if small and big and small is not big:
            print(f"workers {workers}: tree PSS ratio {big['tree_pss_peak_mb'] / small['tree_pss_peak_mb']:.3f}, "
                  f"maxrss {big['maxrss_mb']} MB vs {small['maxrss_mb']} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
