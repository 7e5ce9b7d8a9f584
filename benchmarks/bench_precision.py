"""float32 against bf16 autocast on this CPU: the measurement behind ``--precision auto``.

One process, interleaved: Unet-<encoder> training steps (forward + backward, channels_last) and inference
forwards on random windows, in float32 and in bf16 autocast, after one warm-up of each. Prints the seconds per
step, the bf16/fp32 ratio and what ``--precision auto`` picks here (and why).

    python benchmarks/bench_precision.py --encoder resnet18 --size 192 --batch 2 --threads 1
"""

from __future__ import annotations

import argparse
import time

from common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=192, help="window side in pixels (multiple of 32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--bands", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import segmentation_models_pytorch as smp
    import torch

    from rs_pgd.runtime import autocast_context, choose_precision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = smp.Unet(args.encoder, encoder_weights=None, in_channels=args.bands, classes=4)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, args.bands, args.size, args.size).contiguous(memory_format=torch.channels_last)
    cpu = torch.device("cpu")

    def train_step(precision: str) -> float:
        started = time.perf_counter()
        model.train()
        with autocast_context(precision, cpu):
            out = model(x)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    @torch.no_grad()
    def forward(precision: str) -> float:
        started = time.perf_counter()
        model.eval()
        with autocast_context(precision, cpu):
            model(x)
        return time.perf_counter() - started

    from rs_pgd.runtime import cpu_flags

    print(machine())
    flags = sorted((cpu_flags() or set()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16"})
    print(f"CPU flags: {' '.join(flags) or 'unknown'}")
    choice = choose_precision("auto", "cpu")
    print(f"--precision auto picks {choice.precision}: {choice.reason}")
    for name, step in (("train step", train_step), ("inference", forward)):
        step("32"), step("bf16")  # warm-up
        times = {"32": [], "bf16": []}
        for _ in range(args.repeats):
            for precision in ("32", "bf16"):
                times[precision].append(step(precision))
        fp32, bf16 = min(times["32"]), min(times["bf16"])
        print(f"{name}: Unet-{args.encoder}, {args.batch} x {args.size} px, {args.threads} thread(s): "
              f"fp32 {fp32:.3f} s, bf16 {bf16:.3f} s, bf16/fp32 {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
