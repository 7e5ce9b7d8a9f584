"""Training throughput of ``fit`` against a bare SMP training loop on tensors already in memory.

The ratio ``fit windows/s / bare windows/s`` says how well the data loader hides I/O, label rasterisation,
normalisation and augmentation behind the model: 1.0 means the loader costs nothing. Both sides use the same
model (Unet-ResNet34 by default, ``encoder_weights=None``), window size (tile + 2 * margin), batch size,
precision (bf16 autocast) and channels_last, the fit defaults, and both take one AdamW step per group of
windows (the whole scene: PGD).

The scene is generated: a ``--size`` x ``--size`` tiled GeoTIFF, ``--bands`` uint16 bands, made by mirroring the
real Landsat 8 Parana pixels (bands B2 B3 B4, repeated and spatially flipped to make 6 bands), written block by
block (never whole in RAM). Its label raster is also real-data derived: four brightness classes of the mirrored
pixels (quantiles of the B4 band of the source), 255 where the source is 0 (no data).

Set-up (band statistics, the window scan that counts labelled pixels, model build) is timed separately and is
not in the ratio. Then, in one process and interleaved (fit, bare, fit, bare, ...) so that a change of machine
load hits both alike, ``--steps`` timed steps of each follow one warm-up step of each. A fit step is
``Trainer._train_epoch`` (one group = one optimizer step over every window, a new DataLoader and its workers
included); a bare step is the same number of forward/backward passes and one optimizer step on random tensors.

Usage::

    python benchmarks/bench_fit_throughput.py                       # 2048 px, 6 bands, tile 256, margin 64
    python benchmarks/bench_fit_throughput.py --workers 0 --steps 2
    python benchmarks/bench_fit_throughput.py --labels vector        # polygons: rasterised per window
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

DATA = Path(os.environ.get("RS_PGD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PARANA = DATA / "landsat8_parana" / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
DEMO = Path(__file__).resolve().parents[1] / "rs_pgd" / "data" / "RGB.byte.tif"
DEMO_LABELS = DEMO.with_name("RGB.byte_gshhg_landwater.tif")
BLOCK = 512


# -- generated scenes (also used by bench_fit_memory.py) ------------------------------------------------------
def mirror_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices into a source axis of ``length`` pixels that tile it by mirroring: 0..L-1, L-1..0, 0..L-1, ..."""
    period = 2 * length
    k = np.arange(start, stop) % period
    return np.where(k < length, k, period - 1 - k)


def write_mirrored(source: np.ndarray, path: Path, size: int, profile: dict) -> None:
    """Write ``source`` (bands, H, W) mirrored to ``size`` x ``size``, one row of blocks at a time."""
    import rasterio

    bands, height, width = source.shape
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, size, BLOCK):
            rows = mirror_indices(row, min(row + BLOCK, size), height)
            strip = source[:, rows, :]
            cols = mirror_indices(0, size, width)
            ds.write(strip[:, :, cols], window=((row, row + len(rows)), (0, size)))


def scene_profile(size: int, count: int, dtype: str, crs, transform, nodata=None) -> dict:
    return dict(driver="GTiff", width=size, height=size, count=count, dtype=dtype, crs=crs, transform=transform,
                tiled=True, blockxsize=BLOCK, blockysize=BLOCK, nodata=nodata, BIGTIFF="IF_SAFER")


def make_parana_scene(directory: Path, size: int, bands: int = 6) -> tuple[Path, Path]:
    """A ``size``-pixel uint16 scene of mirrored Parana pixels and a 4-class brightness label raster."""
    import rasterio

    scene, labels = directory / f"parana_{size}_{bands}b.tif", directory / f"parana_{size}_labels.tif"
    if scene.exists() and labels.exists():
        return scene, labels
    with rasterio.open(PARANA) as src:
        pixels = src.read()  # 3 x 1860 x 2041 uint16, 23 MB: the small source, never the big output
        crs, transform = src.crs, src.transform
    stack = [pixels[i % 3] if (i // 3) % 2 == 0 else pixels[i % 3, ::-1, ::-1] for i in range(bands)]
    source = np.stack(stack)
    write_mirrored(source, scene, size, scene_profile(size, bands, "uint16", crs, transform, nodata=0))
    red = pixels[2]
    edges = np.quantile(red[red > 0], [0.25, 0.5, 0.75])
    classes = np.digitize(red, edges).astype(np.uint8)
    classes[red == 0] = 255
    write_mirrored(classes[None], labels, size, scene_profile(size, 1, "uint8", crs, transform, nodata=255))
    return scene, labels


def make_demo_scene(directory: Path, size: int) -> tuple[Path, Path]:
    """A ``size``-pixel 3-band uint8 scene of the mirrored demo Landsat 7 scene and its land/water label raster."""
    import rasterio

    scene, labels = directory / f"demo_{size}.tif", directory / f"demo_{size}_labels.tif"
    if scene.exists() and labels.exists():
        return scene, labels
    with rasterio.open(DEMO) as src:
        pixels, crs, transform = src.read(), src.crs, src.transform
    with rasterio.open(DEMO_LABELS) as src:
        classes = src.read()
    write_mirrored(pixels, scene, size, scene_profile(size, 3, "uint8", crs, transform, nodata=0))
    write_mirrored(classes, labels, size, scene_profile(size, 1, "uint8", crs, transform, nodata=255))
    return scene, labels


def polygonise(label_raster: Path, out: Path) -> Path:
    """Vector labels (GeoPackage, ``class_id``) from a label raster, for the rasterise-per-window path."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes
    from shapely.geometry import shape

    with rasterio.open(label_raster) as src:
        data, transform, crs = src.read(1), src.transform, src.crs
    records = [(shape(g), int(v)) for g, v in shapes(data, mask=data != 255, transform=transform)]
    gdf = gpd.GeoDataFrame({"class_id": [v for _, v in records]}, geometry=[g for g, _ in records], crs=crs)
    gdf.to_file(out, driver="GPKG")
    return out


# -- the two loops ---------------------------------------------------------------------------------------------
def make_trainer(scene, labels, out_dir: Path, args):
    from rs_pgd.config import make_config as _make_config
    from rs_pgd.train import Trainer

    config = _make_config(dict(encoder=args.encoder, tile=args.tile, margin=args.margin, batch_size=args.batch,
                               epochs=1000, val_fraction=0.0, workers=args.workers, progress=False, seed=0,
                               class_column="class_id" if str(labels).endswith(".gpkg") else None))
    started = time.perf_counter()
    trainer = Trainer([scene], [labels], out_dir / "model.safetensors", config)
    return trainer, time.perf_counter() - started


def time_plan(trainer) -> float:
    """The window scan alone (every window read once to count labelled pixels), as fit does it at set-up."""
    from rs_pgd.train import _plan_windows

    started = time.perf_counter()
    _plan_windows(trainer.sources, trainer.config, len(trainer.sources))
    return time.perf_counter() - started


class BareLoop:
    """The same model, optimizer, precision and window count as the trainer, on tensors already in memory."""

    def __init__(self, trainer, windows: int):
        import torch

        from rs_pgd.models import build_model

        c = trainer.config
        torch.manual_seed(0)
        spec = trainer.spec
        model, _ = build_model(c.arch, c.encoder, spec["in_channels"], spec["classes"], encoder_weights=None,
                               norm=c.norm)
        self.model = model.to(memory_format=torch.channels_last).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        size = c.tile + 2 * c.margin
        self.batches = []
        for start in range(0, windows, c.batch_size):
            n = min(c.batch_size, windows - start)
            image = torch.randn(n, spec["in_channels"], size, size).contiguous(memory_format=torch.channels_last)
            target = torch.randint(0, spec["classes"], (n, size, size))
            weight = torch.ones(n, size, size)
            self.batches.append((image, target, weight))
        self.normaliser = float(windows * size * size)

    def step(self) -> None:
        import torch

        from rs_pgd.pgd import pixel_losses

        for image, target, weight in self.batches:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = self.model(image)
            loss = pixel_losses(logits, target, weight).sum() / self.normaliser
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def run(args) -> dict:
    import torch

    out_dir = Path(args.dir or tempfile.mkdtemp(prefix="rs_pgd_bench_fit_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    scene, labels = make_parana_scene(out_dir, args.size, args.bands)
    if args.labels == "vector":
        labels = out_dir / f"parana_{args.size}_labels.gpkg"
        if not labels.exists():
            polygonise(out_dir / f"parana_{args.size}_labels.tif", labels)
    generate_s = time.perf_counter() - started

    trainer, setup_s = make_trainer(scene, labels, out_dir, args)
    plan_s = time_plan(trainer)
    windows = len(trainer.train_items)
    bare = BareLoop(trainer, windows)
    workers = trainer._loader(trainer.train_items[:1], False, 0).num_workers if args.workers is None else args.workers
    # warm-up: one step each (first DataLoader, first autograd graph, allocator)
    trainer._train_epoch(0, None)
    bare.step()
    fit_times, bare_times = [], []
    for k in range(args.steps):
        t0 = time.perf_counter()
        trainer._train_epoch(k + 1, None)
        t1 = time.perf_counter()
        bare.step()
        t2 = time.perf_counter()
        fit_times.append(t1 - t0)
        bare_times.append(t2 - t1)
        print(f"step {k + 1}: fit {windows / (t1 - t0):.3f} win/s, bare {windows / (t2 - t1):.3f} win/s",
              flush=True)
    fit_rate = windows * len(fit_times) / sum(fit_times)
    bare_rate = windows * len(bare_times) / sum(bare_times)
    return {
        "scene": f"{args.size}x{args.size} {args.bands}-band uint16 (mirrored Parana), {args.labels} labels",
        "model": f"Unet-{args.encoder}", "window": args.tile + 2 * args.margin, "tile": args.tile,
        "margin": args.margin, "batch": args.batch, "precision": trainer.precision, "channels_last": True,
        "workers": workers, "torch_threads": torch.get_num_threads(), "windows_per_step": windows,
        "steps_timed": args.steps, "generate_s": round(generate_s, 1), "setup_s": round(setup_s, 2),
        "window_scan_s": round(plan_s, 2),
        "fit_step_s": [round(t, 2) for t in fit_times], "bare_step_s": [round(t, 2) for t in bare_times],
        "fit_windows_per_s": round(fit_rate, 3), "bare_windows_per_s": round(bare_rate, 3),
        "ratio": round(fit_rate / bare_rate, 3), "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--bands", type=int, default=6)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--margin", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: fit's default)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps of each loop after one warm-up step")
    parser.add_argument("--labels", choices=["raster", "vector"], default="raster")
    parser.add_argument("--dir", default=None, help="where the generated scene goes (reused when present)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both loops (default: torch's, one per core)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}", flush=True)
    result = run(args)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
