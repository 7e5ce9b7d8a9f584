"""Training-budget and class-balance study: how fit's defaults score on a spatial hold-out of the real scenes.

Each run trains ``rs_pgd.fit`` on the training part of a scene (labels clipped to the left 70 %, as in
``accuracy_study.py``), with fit's own validation (spatial blocks of that part) for early stopping, then predicts
the whole scene and scores the right 30 % (test mIoU, per-class IoU). The RandomForest of ``accuracy_study.py``
gives the reference. Every run appends one JSON line to ``--out``, so a study can be stopped and extended.

Scenes: ``demo`` (Landsat 7, land/water), ``denmark`` (Sentinel-2 RGB, 4 crop groups), ``denmark7`` (the six
largest crops and "other": a many-class, imbalanced case), ``dfc`` (the 13-band DFC2020 validation patch, six
classes from 78 % to 0.04 % of the pixels).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/budget_study.py --scene denmark --seeds 0 \\
        --run scene '{"step_every": "scene", "class_weights": "none"}' --run auto '{}' --out study.jsonl
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from accuracy_study import (  # noqa: E402
    DATA,
    TEST_FRACTION,
    random_forest,
    reference_and_masks,
    scene_configs,
    score,
    split_labels,
)

BASE = dict(encoder="resnet18", tile=128, margin=32, workers=0, progress=False)


def denmark7(name) -> str:
    """The six largest Danish LPIS crops by area in this scene, and "other"."""
    top = {"Vårbyg": "spring barley", "Græs med kløver/lucerne": "grass-clover", "Silomajs": "silage maize",
           "Vinterbyg": "winter barley", "Majs til modenhed": "grain maize", "Vinterhvede": "winter wheat"}
    return top.get(name, "other")


def configs() -> dict:
    import geopandas as gpd

    out = scene_configs()
    out["denmark7"] = dict(out["denmark"])
    labels = out["denmark"]["labels"]
    if labels.exists():
        names = gpd.read_file(labels, ignore_geometry=True)["Afgroede"].dropna().unique()
        out["denmark7"]["mapping"] = {n: denmark7(n) for n in names}
    folder = DATA / "sentinel2_dfc2020_patches"
    out["dfc"] = dict(scene=folder / "ROIs0000_validation_s2_0_p0.tif",
                      labels=folder / "ROIs0000_validation_dfc_0_p0.tif", class_column=None, mapping=None,
                      split="raster")
    return out


def split_raster_labels(cfg: dict, work: Path):
    """Training labels for a label raster: a copy with the right 30 % (the test strip) set to nodata 0."""
    import rasterio
    from shapely.geometry import box

    with rasterio.open(cfg["labels"]) as src:
        values = src.read(1)
        profile = src.profile | {"nodata": 0}
        bounds = src.bounds
    split_col = round(values.shape[1] * (1 - TEST_FRACTION))
    values = values.copy()
    values[:, split_col:] = 0
    path = work / "train_labels.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    full = work / "full_labels.tif"
    with rasterio.open(cfg["labels"]) as src, rasterio.open(full, "w", **profile) as dst:
        dst.write(src.read(1), 1)
    cfg["labels"] = full  # nodata 0 on both, so both give the same class table
    x = bounds.left + split_col * (bounds.right - bounds.left) / values.shape[1]
    return path, [box(x, bounds.bottom, bounds.right, bounds.top)]


def prepare(key: str, work: Path) -> dict:
    cfg = dict(configs()[key])
    work.mkdir(parents=True, exist_ok=True)
    if cfg["mapping"] is not None:  # merge the classes in the file: fit refuses mapping keys the clipped part lacks
        import geopandas as gpd

        frame = gpd.read_file(cfg["labels"]).dropna(subset=[cfg["class_column"]])
        frame["group"] = frame[cfg["class_column"]].map(cfg["mapping"])
        cfg.update(labels=work / "merged.gpkg", class_column="group", mapping=None)
        frame[["group", "geometry"]].to_file(cfg["labels"], driver="GPKG")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cfg["split"] == "raster":
            train_labels, regions = split_raster_labels(cfg, work)
        else:
            train_labels, regions = split_labels(cfg, work)
        names, reference, train_index, pixels = reference_and_masks(cfg, train_labels, regions)
    return dict(cfg=cfg, train_labels=train_labels, names=names, reference=reference, train_index=train_index,
                pixels=pixels)


def run_fit(prep: dict, work: Path, name: str, seed: int, options: dict) -> dict:
    from rs_pgd import defaults

    options = dict(options)
    saved = {}
    for key in [k for k in options if k.startswith("_")]:  # "_AUTO_MIN_STEPS": 200 sets a rs_pgd.defaults constant
        saved[key[1:]] = getattr(defaults, key[1:])
        setattr(defaults, key[1:], options.pop(key))
    try:
        return _run_fit(prep, work, name, seed, options)
    finally:
        for key, value in saved.items():
            setattr(defaults, key, value)


def _run_fit(prep: dict, work: Path, name: str, seed: int, options: dict) -> dict:
    import rasterio

    from rs_pgd import fit
    from rs_pgd.checkpoint import read_header
    from rs_pgd.infer import predict

    cfg = prep["cfg"]
    model = work / f"{name}_{seed}.safetensors"
    log = work / f"{name}_{seed}.jsonl"
    for stale in (model, log, work / f"{name}_{seed}.resume.pt"):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(cfg["scene"], prep["train_labels"], model, seed=seed, class_column=cfg["class_column"],
                     mapping=cfg["mapping"], log_json=str(log), **(BASE | options))
        train_s = time.perf_counter() - started
        out = work / f"{name}_{seed}_pred.tif"
        predict(model, cfg["scene"], out, tile=128, margin=32, progress=False, workers=0, cog=False)
    meta = read_header(model)
    with rasterio.open(out) as ds:
        values = ds.read(1)
    lut = np.full(256, 255, dtype=np.uint8)
    for v, n in zip(meta.classes["values"], meta.class_names):
        lut[v] = prep["names"].index(n)
    steps = [json.loads(x) for x in log.read_text().splitlines()]
    return {**score(prep["reference"], lut[values], prep["names"]), "steps": result.steps,
            "passes": sum(s["windows"] for s in steps), "train_s": round(train_s, 1),
            "best_epoch": (result.best or {}).get("epoch"), "best_val_miou": (result.best or {}).get("val_miou"),
            "epochs_run": len(result.history),
            "val_curve": [h.get("val_miou") for h in result.history]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", required=True, choices=["demo", "denmark", "denmark7", "dfc", "parana"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--run", nargs=2, action="append", default=[], metavar=("NAME", "JSON"),
                        help="a run: its name and fit options as JSON (BASE options are added)")
    parser.add_argument("--forest", action="store_true", help="also score the RandomForest")
    parser.add_argument("--out", required=True, help="append one JSON line per run here")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    work = Path(args.dir or tempfile.mkdtemp(prefix="rs_pgd_budget_")) / args.scene
    prep = prepare(args.scene, work)
    for seed in args.seeds:
        rows = []
        if args.forest:
            predicted, info = random_forest(prep["pixels"], prep["train_index"], prep["reference"], seed)
            rows.append(("random_forest", {}, {**score(prep["reference"], predicted, prep["names"]), **info}))
        for name, options in args.run:
            options = json.loads(options)
            rows.append((name, options, run_fit(prep, work, name, seed, options)))
            _write(args, seed, *rows[-1])
            rows[-1] = None
        for row in rows:
            if row is not None:
                _write(args, seed, *row)
    return 0


def _commit() -> str:
    """The rs-pgd commit this study runs (``+`` when the work tree differs from it)."""
    import subprocess

    import rs_pgd

    root = Path(rs_pgd.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "rs_pgd"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


COMMIT = _commit()


def _write(args, seed, name, options, result) -> None:
    line = {"scene": args.scene, "run": name, "seed": seed, "options": options, **result,
            "load": round(os.getloadavg()[0], 1), "time": time.strftime("%Y-%m-%d %H:%M"), "commit": COMMIT}
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    iou = ", ".join(f"{k} {v:.2f}" for k, v in result["iou"].items() if v is not None)
    print(f"{args.scene} {name} seed {seed}: mIoU {result['miou']:.3f} ({iou}) steps {result.get('steps')} "
          f"{result.get('train_s', result.get('wall_s'))} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
