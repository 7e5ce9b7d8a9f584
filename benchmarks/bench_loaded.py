"""fit on a loaded CPU: windows/s without and with one competing CPU-bound process, ``--threads auto`` against
torch's default, side by side in one run.

Each measurement is a fresh child process (the OpenMP wait policy is read when torch starts, so thread settings
cannot change inside one process). A child builds rs-pgd's ``Trainer`` on a mirrored demo scene, trains one
warm-up epoch and then times ``--timed-epochs`` epochs (windows per second of training, set-up excluded).

Configurations (``--configs``):

- ``auto``: what ``rs-pgd fit`` does by default (``rs_pgd.runtime.torch_threads("auto")`` before torch starts:
  the free physical cores, idle threads sleeping).
- ``torch``: torch's own default (one thread per core, OpenMP's default spin-wait), as before ``--threads``.
- ``1`` / ``2`` ...: ``--threads N`` (idle threads sleeping).
- ``2-spin``: two threads with OpenMP's default wait policy (isolates the wait policy from the thread count).

Conditions: ``idle`` (no competitor started by this benchmark; other users of the machine are not controlled,
the load average is recorded) and ``loaded`` (a ``while True: pass`` Python process started ``--lead`` seconds
before the child and stopped after it). Rounds interleave every configuration and condition, so a change of the
machine's background load hits all alike; the summary takes the median over rounds.

    python benchmarks/bench_loaded.py                    # auto vs torch, 2 rounds
    python benchmarks/bench_loaded.py --configs auto,torch,1,2,2-spin --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WAIT_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


def child(args) -> dict:
    """One measurement in this process: thread set-up exactly as ``fit`` does it, then timed epochs."""
    from rs_pgd.runtime import configure_threads

    config = args.config
    choice = None
    if config == "auto" or config.isdigit():
        choice = configure_threads(config if config == "auto" else int(config))
    elif config.endswith("-spin"):
        import torch

        torch.set_num_threads(int(config.split("-")[0]))
    import torch

    sys.path.insert(0, str(HERE))
    from bench_fit_throughput import make_demo_scene

    from rs_pgd.config import make_config
    from rs_pgd.train import Trainer

    scene, labels = make_demo_scene(Path(args.dir), args.size)
    c = make_config(dict(encoder=args.encoder, tile=args.tile, margin=args.margin, batch_size=args.batch,
                         epochs=1000, val_fraction=0.0, workers=0, progress=False, seed=0, norm="frozen",
                         precision=args.precision, step_every=args.step_every, augment=False))
    trainer = Trainer([scene], [labels], Path(tempfile.mkdtemp(prefix="rs_pgd_loaded_")) / "m.safetensors", c)
    windows = len(trainer.train_items)
    trainer._train_epoch(0, None)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    for epoch in range(args.timed_epochs):
        trainer._train_epoch(epoch + 1, None)
    seconds = time.perf_counter() - started
    return {"config": config, "threads": torch.get_num_threads(), "reason": choice.reason if choice else "torch",
            "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "windows": windows * args.timed_epochs,
            "seconds": round(seconds, 2), "windows_per_s": round(windows * args.timed_epochs / seconds, 4),
            "load_average_before": round(load_before, 2), "precision": trainer.precision}


def run_child(args, config: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--config", config, "--dir", args.dir,
               "--size", str(args.size), "--tile", str(args.tile), "--margin", str(args.margin), "--batch",
               str(args.batch), "--encoder", args.encoder, "--timed-epochs", str(args.timed_epochs), "--precision",
               args.precision, "--step-every", str(args.step_every)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"child {config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_flags() -> list[str]:
    from rs_pgd.runtime import cpu_flags as read

    flags = read() or set()
    return sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("bf16", "sse4_2"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="auto,torch", help="comma-separated: auto, torch, N, N-spin")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lead", type=float, default=5.0, help="seconds the competitor runs before a child")
    parser.add_argument("--size", type=int, default=768, help="side of the mirrored demo scene")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--margin", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--step-every", default="8")
    parser.add_argument("--timed-epochs", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where the generated scene goes (reused when present)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dir = args.dir or tempfile.mkdtemp(prefix="rs_pgd_bench_loaded_")
    if args.child:
        print(json.dumps(child(args)))
        return 0
    configs = args.configs.split(",")
    runs = []
    for round_number in range(args.rounds):
        for condition in ("idle", "loaded"):
            for config in configs if round_number % 2 == 0 else configs[::-1]:
                competitor = None
                if condition == "loaded":
                    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    time.sleep(args.lead)
                try:
                    result = run_child(args, config)
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
                result.update(condition=condition, round=round_number + 1)
                runs.append(result)
                print(f"round {round_number + 1} {condition:6s} {config:7s}: {result['windows_per_s']:.3f} windows/s "
                      f"({result['threads']} thread(s), wait {result['wait_policy']}, load "
                      f"{result['load_average_before']})", flush=True)
    summary = {}
    for config in configs:
        rate = {cond: statistics.median(r["windows_per_s"] for r in runs if r["config"] == config
                                        and r["condition"] == cond) for cond in ("idle", "loaded")}
        summary[config] = {"idle_windows_per_s": round(rate["idle"], 4), "loaded_windows_per_s": round(rate["loaded"], 4),
                           "kept": round(rate["loaded"] / rate["idle"], 3)}
    if "auto" in summary and "torch" in summary:
        summary["auto_over_torch"] = {cond: round(summary["auto"][f"{cond}_windows_per_s"]
                                                  / summary["torch"][f"{cond}_windows_per_s"], 3)
                                      for cond in ("idle", "loaded")}
    report = {"cpu_flags": cpu_flags(), "cores": os.cpu_count(), "summary": summary, "runs": runs,
              "settings": {k: v for k, v in vars(args).items() if k not in ("child", "config", "json")}}
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
