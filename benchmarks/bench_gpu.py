"""GPU check: fit and predict throughput in bf16 and fp16, the share of time the GPU waits for data, and the
training MFU of Unet-ResNet34 at 512 px windows. Prints one JSON summary. Run it through
``benchmarks/gpu_check.sh`` on a CUDA machine; ``--device cpu --dry-run`` runs every part for 2 tiny steps on the
CPU (how the tests check this script where there is no GPU).

What is measured, per precision (``bf16``, and ``16-mixed``: float16 autocast with the GradScaler):

- ``fit``: rs-pgd's own ``Trainer`` (DataLoader, reading, label rasterisation, the PGD step) on a generated scene
  (the demo Landsat scene mirrored to ``--scene-size``, 3 bands, raster labels), after a warm-up: windows/s.
  GPU busy time = the sum, on the GPU's own clock (CUDA events), of each batch's forward/backward and of each
  optimizer step; ``gpu_wait_share`` = 1 - busy / span (reading, host-to-device copies, Python between batches).
  ``mfu`` = training FLOPs per window x windows/s / the GPU's peak dense FLOP/s for that dtype.
- ``bare``: the same model, optimizer, batch and precision on random tensors already on the GPU: the model's own
  windows/s and MFU, the ceiling for ``fit``.
- ``predict``: ``rs_pgd.predict`` of the same scene (random checkpoint, the same window), class map COG: MP/s and
  windows/s, and the GPU wait share of its forward passes.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one forward+backward of one window (matrix
products and convolutions, 2 FLOPs per multiply-add). Peak FLOP/s come from a table of datasheet dense tensor
numbers by GPU name (``--peak-tflops`` overrides; unknown GPUs get no MFU).

    bash benchmarks/gpu_check.sh                                   # on a CUDA machine, a few minutes
    python benchmarks/bench_gpu.py --device cpu --dry-run          # the script's own test, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

PEAK_TFLOPS = (  # datasheet dense tensor-core TFLOP/s: (name fragment, bf16, fp16); the first match wins
    ("H200", 989.0, 989.0),
    ("H100 NVL", 835.0, 835.0),
    ("H100 PCIe", 756.0, 756.0),
    ("H100", 989.0, 989.0),
    ("GH200", 989.0, 989.0),
    ("A100", 312.0, 312.0),
    ("A10G", 70.0, 70.0),
    ("A10", 125.0, 125.0),
    ("L40S", 362.0, 362.0),
    ("L40", 181.0, 181.0),
    ("L4", 121.0, 121.0),
    ("RTX 4090", 165.0, 165.0),
    ("RTX 3090", 71.0, 71.0),
    ("V100", None, 125.0),
    ("T4", None, 65.0),
)
TARGETS = {"fit_gpu_busy_share": 0.90, "fit_mfu_bf16": 0.40}


def peak_flops(gpu_name: str, precision: str, override_tflops: float | None = None) -> float | None:
    """Peak dense FLOP/s of ``gpu_name`` for a precision (``bf16`` or ``16-mixed``), or None where unknown."""
    if override_tflops:
        return override_tflops * 1e12
    for fragment, bf16, fp16 in PEAK_TFLOPS:
        if fragment.lower() in gpu_name.lower():
            value = bf16 if precision == "bf16" else fp16 if precision == "16-mixed" else None
            return value * 1e12 if value else None
    return None


class Timeline:
    """Busy intervals of the device on its own clock: CUDA events on a GPU, ``perf_counter`` on the CPU."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.intervals: list[tuple] = []
        self._open = None

    def mark(self):
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._open = self.mark()

    def stop(self) -> None:
        if self._open is not None:
            self.intervals.append((self._open, self.mark()))
            self._open = None

    def reset(self) -> None:
        self.intervals, self._open = [], None

    def busy_share(self) -> float | None:
        """Busy time / span from the first start to the last stop (None without intervals)."""
        if not self.intervals:
            return None
        if self.cuda:
            self.torch.cuda.synchronize()
            busy = sum(start.elapsed_time(stop) for start, stop in self.intervals)
            span = self.intervals[0][0].elapsed_time(self.intervals[-1][1])
        else:
            busy = sum(stop - start for start, stop in self.intervals)
            span = self.intervals[-1][1] - self.intervals[0][0]
        return min(1.0, busy / span) if span > 0 else None


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_flops(model, channels: int, window: int, device) -> tuple[int, int]:
    """FLOPs of one window's forward, and of its forward + backward (FlopCounterMode, float32 shapes)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, channels, window, window, device=device)
    model.train()
    with FlopCounterMode(display=False) as forward_only:
        with torch.no_grad():
            model(x)
    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return int(forward_only.get_total_flops()), int(counter.get_total_flops())


# -- fit ------------------------------------------------------------------------------------------------------
def make_trainer(scene, labels, out: Path, args, precision: str):
    from rs_pgd.config import make_config
    from rs_pgd.train import Trainer

    config = make_config(dict(encoder=args.encoder, tile=args.tile, margin=args.margin, batch_size=args.batch,
                              epochs=100_000, val_fraction=0.0, workers=args.workers, progress=False, seed=0,
                              precision=precision, device=args.device, step_every=args.batch * args.step_batches,
                              augment=True))
    return Trainer([scene], [labels], out / f"fit-{precision}.safetensors", config)


def instrument(trainer, timeline: Timeline):
    """Record each batch's forward/backward (``PGDAccumulator.add``) and each optimizer step on the device's clock
    (benchmark only); return a function that undoes it."""
    from rs_pgd.pgd import PGDAccumulator

    add = PGDAccumulator.add

    def timed_add(self, *args, **kwargs):
        timeline.start()
        try:
            return add(self, *args, **kwargs)
        finally:
            timeline.stop()

    PGDAccumulator.add = timed_add
    hooks = [trainer.optimizer.register_step_pre_hook(lambda *a, **k: timeline.start()),
             trainer.optimizer.register_step_post_hook(lambda *a, **k: timeline.stop())]

    def undo():
        PGDAccumulator.add = add
        for hook in hooks:
            hook.remove()

    return undo


def run_steps(trainer, steps: int) -> tuple[int, float]:
    """Train ``steps`` more optimizer steps (over as many epochs as needed); return windows and seconds."""
    target = trainer.steps + steps
    trainer.config.max_steps = target
    windows_before = _windows_seen(trainer)
    synchronize(trainer.device)
    started = time.perf_counter()
    epoch = getattr(trainer, "_bench_epoch", 0)
    while trainer.steps < target:
        trainer._train_epoch(epoch, None)
        epoch += 1
    synchronize(trainer.device)
    trainer._bench_epoch = epoch
    return _windows_seen(trainer) - windows_before, time.perf_counter() - started


def _windows_seen(trainer) -> int:
    return int(getattr(trainer, "_bench_windows", 0))


def count_windows(trainer) -> None:
    """Count every window the PGD step trains on (wraps the loss-table update, once per step)."""
    update = trainer._update_loss_table

    def counted(result):
        trainer._bench_windows = _windows_seen(trainer) + result.windows
        update(result)

    trainer._update_loss_table = counted


def measure_fit(scene, labels, out, args, precision, flops_train, peak) -> dict:
    trainer = make_trainer(scene, labels, out, args, precision)
    timeline = Timeline(trainer.device)
    undo = instrument(trainer, timeline)
    count_windows(trainer)
    try:
        warm_windows, warm_s = run_steps(trainer, 1 if args.dry_run else args.warmup_steps)
        steps = args.steps
        if not steps:  # as many steps as fit in the time budget, by the warm-up's speed
            per_step = warm_s / max(1, args.warmup_steps)
            steps = max(2, int(args.seconds / max(per_step, 1e-3)))
        timeline.reset()
        windows, seconds = run_steps(trainer, steps)
        busy = timeline.busy_share()
    finally:
        undo()
    rate = windows / seconds
    result = {"precision": trainer.precision, "steps": steps, "windows": windows, "seconds": round(seconds, 3),
              "windows_per_s": round(rate, 3), "gpu_busy_share": _round(busy),
              "gpu_wait_share": _round(None if busy is None else 1.0 - busy),
              "mfu": _round(flops_train * rate / peak if peak else None),
              "workers": trainer._loader(trainer.train_items[:1], False, 0).num_workers,
              "windows_per_step": args.batch * args.step_batches, "scaler": trainer.scaler is not None}
    if trainer.scaler is not None:
        result["scaler_scale"] = float(trainer.scaler.get_scale())
    return result


# -- bare loop ------------------------------------------------------------------------------------------------
def measure_bare(args, device, precision, classes, flops_train, peak) -> dict:
    import torch

    from rs_pgd.models import build_model
    from rs_pgd.pgd import pixel_losses
    from rs_pgd.runtime import autocast_context

    torch.manual_seed(0)
    model, _ = build_model("Unet", args.encoder, 3, classes, norm="batch")
    model = model.to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if precision == "16-mixed" else None
    window = args.tile + 2 * args.margin
    image = torch.randn(args.batch, 3, window, window, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, classes, (args.batch, window, window), device=device)
    weight = torch.ones(args.batch, window, window, device=device)

    def step():
        for _ in range(args.step_batches):
            with autocast_context(precision, device):
                logits = model(image)
            loss = pixel_losses(logits, target, weight).mean()
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(1 if args.dry_run else 3):
        step()
    synchronize(device)
    steps = 2 if args.dry_run else max(3, args.bare_steps)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - started
    rate = steps * args.step_batches * args.batch / seconds
    return {"windows_per_s": round(rate, 3), "mfu": _round(flops_train * rate / peak if peak else None),
            "seconds": round(seconds, 3)}


# -- predict ----------------------------------------------------------------------------------------------------
def measure_predict(scene, checkpoint, out, args, precision) -> dict:
    import rasterio

    import rs_pgd
    from rs_pgd import infer

    timeline = Timeline(_device(args.device))
    make_forward = infer._torch_forward

    def timed_forward(net, device, prec):  # benchmark only: the forward passes on the device's clock
        forward = make_forward(net, device, prec)

        def wrapped(images):
            timeline.start()
            try:
                return forward(images)  # ends with a copy to the host: the interval holds the whole pass
            finally:
                timeline.stop()

        return wrapped

    infer._torch_forward = timed_forward
    try:
        result = rs_pgd.predict(checkpoint, scene, out / f"predict-{precision}.tif", tile=args.tile,
                                margin=args.margin, batch_size=args.predict_batch, device=args.device,
                                precision=precision, workers=args.workers, progress=False)
    finally:
        infer._torch_forward = make_forward
    with rasterio.open(scene) as src:
        megapixels = src.width * src.height / 1e6
    busy = timeline.busy_share()
    return {"seconds": round(result.seconds, 3), "mp_per_s": round(megapixels / result.seconds, 3),
            "windows": result.windows, "windows_per_s": round(result.windows / result.seconds, 3),
            "gpu_busy_share": _round(busy), "gpu_wait_share": _round(None if busy is None else 1.0 - busy)}


# -- main -------------------------------------------------------------------------------------------------------
def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def _device(name: str):
    import torch

    return torch.device(name)


def machine(device) -> dict:
    import platform

    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), bf16=bool(torch.cuda.is_bf16_supported()))
    return info


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="2 tiny steps of every part (tests this script)")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--tile", type=int, default=384)
    parser.add_argument("--margin", type=int, default=64, help="window = tile + 2 x margin (512 px by default)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--predict-batch", type=int, default=16)
    parser.add_argument("--step-batches", type=int, default=2, help="batches per optimizer step (PGD group)")
    parser.add_argument("--scene-size", type=int, default=8192)
    parser.add_argument("--precisions", default=None,
                        help="default: bf16,16-mixed on CUDA; 32 (and bf16 where native) on the CPU")
    parser.add_argument("--threads", default="auto", help="CPU threads, as rs-pgd's --threads (default auto)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: fit's)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time budget of each timed fit run")
    parser.add_argument("--steps", type=int, default=None, help="timed fit steps (default: by --seconds)")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--bare-steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, if not in the table")
    parser.add_argument("--dir", default=None, help="work folder (generated scene, outputs); default: a temp dir")
    parser.add_argument("--json", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.encoder, args.tile, args.margin, args.batch, args.predict_batch = "resnet18", 64, 0, 2, 2
        args.step_batches, args.scene_size, args.steps, args.warmup_steps = 1, 256, 2, 1
        args.workers = 0 if args.workers is None else args.workers
    if args.precisions is None:
        args.precisions = "bf16,16-mixed" if args.device == "cuda" else _cpu_precisions()
    return args


def _cpu_precisions() -> str:
    """float32, plus bf16 where this CPU runs it natively (emulated bf16 is ~20x slower)."""
    from rs_pgd.runtime import cpu_bf16_support

    return "32,bf16" if cpu_bf16_support(measure=False).native else "32"


def main(argv=None) -> int:
    args = parse(argv)
    from rs_pgd.runtime import configure_threads

    configure_threads(args.threads)  # as fit and predict do, before torch starts its thread pool
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench_gpu: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
              "run it on a machine with an NVIDIA GPU, or test the script with --device cpu --dry-run",
              file=sys.stderr)
        return 2
    from bench_fit_throughput import make_demo_scene
    from common import random_checkpoint

    from rs_pgd.models import build_model

    started = time.perf_counter()
    device = _device(args.device)
    work = Path(args.dir or tempfile.mkdtemp(prefix="rs_pgd_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    scene, labels = make_demo_scene(work, args.scene_size)
    window = args.tile + 2 * args.margin
    model, _ = build_model("Unet", args.encoder, 3, 2, norm="batch")
    flops_forward, flops_train = training_flops(model.to(device), 3, window, device)
    del model
    checkpoint = random_checkpoint(work / "random.safetensors", encoder=args.encoder, tile=args.tile,
                                   margin=args.margin, scene=scene)
    info = machine(device)
    summary = {"ok": True, "dry_run": args.dry_run, "device": args.device, "machine": info,
               "model": f"Unet-{args.encoder}", "window": window, "batch": args.batch,
               "scene": f"{args.scene_size}x{args.scene_size} mirrored demo, 3-band uint8, raster labels",
               "flops_forward_per_window": flops_forward, "flops_train_per_window": flops_train,
               "fit": {}, "bare": {}, "predict": {}, "skipped": {}}
    for precision in args.precisions.split(","):
        if args.device == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
            summary["skipped"][precision] = "this GPU has no bf16"
            continue
        peak = peak_flops(info.get("gpu", ""), precision, args.peak_tflops) if args.device == "cuda" else (
            args.peak_tflops * 1e12 if args.peak_tflops else None)
        summary["fit"][precision] = measure_fit(scene, labels, work, args, precision, flops_train, peak)
        summary["bare"][precision] = measure_bare(args, device, precision, 2, flops_train, peak)
        summary["predict"][precision] = measure_predict(scene, checkpoint, work, args, precision)
        summary["fit"][precision]["peak_tflops"] = None if peak is None else peak / 1e12
        print(f"{precision}: fit {summary['fit'][precision]['windows_per_s']} win/s, bare "
              f"{summary['bare'][precision]['windows_per_s']} win/s, predict {summary['predict'][precision]['mp_per_s']}"
              " MP/s", file=sys.stderr, flush=True)
    bf16 = summary["fit"].get("bf16", {})
    summary["targets"] = {
        "fit_gpu_busy_share": {"target": TARGETS["fit_gpu_busy_share"],
                               "measured": {p: r["gpu_busy_share"] for p, r in summary["fit"].items()}},
        "fit_mfu_bf16": {"target": TARGETS["fit_mfu_bf16"], "measured": bf16.get("mfu")},
    }
    summary["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(summary)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
