"""TTA study: does ``predict --tta`` (the D4 average of each window) make the map more accurate?

For each real scene with labels and each seed, the model of ``benchmarks/suggest_study.py`` (Unet-ResNet18 trained
briefly on the labels of the left 70 % of the scene; reused from ``--dir`` when it is there) predicts the scene
with and without ``--tta`` (default inference geometry, float32), and ``rs_pgd.evaluate`` scores both against the
labels of the held-out right 30 %. Results (test mIoU, accuracy, per-class IoU, predict seconds) go to a JSON file
and a Markdown table for ``docs/experiments.md``.

Usage::

    python benchmarks/tta_study.py --threads 1 --seeds 0 1 2 --dir /tmp/study --json tta.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_study import DATA, scene_configs, split_labels  # noqa: E402
from suggest_study import mapping_for, train_model  # noqa: E402


def test_labels(cfg: dict, work: Path) -> Path:
    """The labels clipped to the held-out region (the right 30 %, as in the accuracy study)."""
    import geopandas as gpd
    import rasterio

    path = work / "test_labels.gpkg"
    if path.exists():
        return path
    _, regions = split_labels(cfg, work)
    with rasterio.open(cfg["scene"]) as ds:
        crs = ds.crs
    gdf = gpd.read_file(cfg["labels"]).to_crs(crs)
    test = gdf.clip(regions[0]) if cfg["split"] == "scene" else gdf.clip(gpd.GeoSeries(regions, crs=crs).union_all())
    test = test[~test.geometry.is_empty & test.geometry.notna()]
    test.to_file(path, driver="GPKG")
    return path


def study_scene(key: str, cfg: dict, work: Path, seed: int) -> list[dict]:
    from rs_pgd import evaluate, predict

    model, _, _ = train_model(cfg, work, seed)
    labels = test_labels(cfg, work)
    rows = []
    for tta in (False, True):
        out = work / f"pred_seed{seed}_{'tta' if tta else 'plain'}.tif"
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predict(model, cfg["scene"], out, tta=tta, precision="32", progress=False, workers=0, cog=False)
            seconds = time.perf_counter() - started
            result = evaluate(out, labels, class_column=cfg["class_column"], mapping=mapping_for(cfg, labels))
        row = {"scene": key, "seed": seed, "tta": tta, "miou": result["miou"], "accuracy": result["accuracy"],
               "iou": {c["name"]: c["iou"] for c in result["per_class"]}, "pixels": result["pixels"],
               "predict_s": round(seconds, 1)}  # fmt: skip
        print(row, flush=True)
        rows.append(row)
    return rows


def markdown(rows: list) -> str:
    import numpy as np

    lines = ["| scene | seed | tta | test mIoU | test accuracy | per-class IoU | predict s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ious = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in r["iou"].items())
        lines.append(f"| {r['scene']} | {r['seed']} | {'yes' if r['tta'] else 'no'} | {r['miou']:.3f} | "
                     f"{r['accuracy']:.3f} | {ious} | {r['predict_s']} |")
    lines += ["", "| scene | seeds | mIoU without | mIoU with TTA | difference (mean ± sd over seeds) |", "|---|---|---|---|---|"]
    for scene in dict.fromkeys(r["scene"] for r in rows):
        plain = {r["seed"]: r["miou"] for r in rows if r["scene"] == scene and not r["tta"]}
        tta = {r["seed"]: r["miou"] for r in rows if r["scene"] == scene and r["tta"]}
        seeds = sorted(set(plain) & set(tta))
        diff = np.array([tta[s] - plain[s] for s in seeds])
        lines.append(f"| {scene} | {len(seeds)} | {np.mean([plain[s] for s in seeds]):.3f} | "
                     f"{np.mean([tta[s] for s in seeds]):.3f} | {diff.mean():+.3f} ± {diff.std():.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", nargs="+", default=["demo", "denmark"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--dir", default=None, help="work folder (models are reused from it)")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not DATA.exists():
        print(f"no shared data at {DATA}; set RS_PGD_SHARED_DATA", file=sys.stderr)
        return 2
    configs = scene_configs()
    work = Path(args.dir or tempfile.mkdtemp(prefix="rs_pgd_tta_"))
    rows = []
    for key in args.scenes:
        for seed in args.seeds:
            rows += study_scene(key, configs[key], work / key, seed)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    print(f"load average: {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
