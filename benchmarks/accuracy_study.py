"""Accuracy study: PGD with margins vs plain crops without margins vs a per-pixel RandomForest, spatial hold-out.

For each real scene in ``../shared/data`` the labels are split in space: the test part is the right 30 % of the
scene (``split="scene"``) or, for sparse labels, the right 30 % of each label polygon's bounding box
(``split="polygon"``); the training labels are the vector labels clipped to the rest. Three methods train on the
training part and are scored on the test pixels (valid image pixels only):

(a) ``pgd``: ``fit`` with the default-like geometry (tile 128, margin 32, one optimizer step per pass over the
    scene), ``steps`` scene-level steps (``epochs = steps``, cosine schedule over them).
(b) ``no_margin``: ``fit`` with windows of the same size (192 px) and no margin: tile 192, margin 0, stride 64
    (crops on a 64-px lattice, D4 augmentation: plain overlapping crops), the loss on the whole crop, one optimizer
    step per batch of 4 (``step_every=4``). Its epochs are chosen so that it makes the same number of window
    forward/backward passes as (a) (``max_steps`` cuts the last epoch short).
(c) ``random_forest``: scikit-learn ``RandomForestClassifier(n_estimators=100)`` on the raw band values of at most
    20 000 labelled training pixels (sampled with the seed).

Both networks are Unet-ResNet18 (``encoder_weights=None``, BatchNorm in batch mode, bf16, AdamW lr 1e-3, seed 0),
and both are scored after ``predict`` with the same inference geometry (tile 128, margin 32), so the comparison
isolates training. Results (test mIoU, accuracy, per-class IoU, wall time, passes) go to a JSON file and are
printed as a Markdown table for ``docs/experiments.md``.

Usage::

    python benchmarks/accuracy_study.py                      # demo, parana, denmark
    python benchmarks/accuracy_study.py --scenes demo --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

DATA = Path(os.environ.get("RS_PGD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TEST_FRACTION = 0.3
WINDOW = 192
BATCH = 4


def crop_group(name: str) -> str:
    """Merge the Danish LPIS crop names (``Afgroede``) into four groups: cereal, grass, maize, other."""
    lower = name.lower()
    if "majs" in lower:
        return "maize"
    if any(k in lower for k in ("græs", "kløver", "brak")):
        return "grass"
    if any(k in lower for k in ("byg", "hvede", "rug", "havre", "triticale", "korn", "vårsåede")):
        return "cereal"
    return "other"


def scene_configs() -> dict:
    import geopandas as gpd

    denmark_labels = DATA / "sentinel2_denmark_lpis" / "marker2016_small.shp"
    configs = {
        "demo": dict(scene=DATA / "landsat7_bahamas" / "RGB.byte.tif",
                     labels=DATA / "landsat7_bahamas" / "RGB.byte_gshhg_landwater.gpkg",
                     class_column="class_name", mapping=None, split="scene", steps=20),
        "parana": dict(scene=DATA / "landsat8_parana" / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF",
                       labels=DATA / "landsat8_parana" / "LC08_L1TP_224078_20200518_20200518_01_RT_polygons.gpkg",
                       class_column="name", mapping=None, split="polygon", steps=40),
        "denmark": dict(scene=DATA / "sentinel2_denmark_lpis" / "RGB_small.tif", labels=denmark_labels,
                        class_column="Afgroede", mapping=None, split="scene", steps=30),
    }
    if denmark_labels.exists():
        names = gpd.read_file(denmark_labels, ignore_geometry=True)["Afgroede"].dropna().unique()
        configs["denmark"]["mapping"] = {n: crop_group(n) for n in names}
    return configs


# -- the spatial split -------------------------------------------------------------------------------------------
def split_labels(cfg: dict, work: Path):
    """Write the training labels (clipped vector file) and return them with the test-region geometries."""
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    gdf = gpd.read_file(cfg["labels"])
    with rasterio.open(cfg["scene"]) as ds:
        bounds, res, crs = ds.bounds, ds.res, ds.crs
    gdf = gdf.to_crs(crs)
    if cfg["split"] == "scene":
        cols = round((bounds.right - bounds.left) / res[0])
        split_x = bounds.left + round(cols * (1 - TEST_FRACTION)) * res[0]  # on a pixel edge
        test_regions = [box(split_x, bounds.bottom, bounds.right, bounds.top)]
        train = gdf.clip(box(bounds.left, bounds.bottom, split_x, bounds.top))
    else:
        test_regions, geometries = [], []
        for geom in gdf.geometry:
            minx, miny, maxx, maxy = geom.bounds
            region = box(minx + (1 - TEST_FRACTION) * (maxx - minx), miny, maxx, maxy)
            test_regions.append(region)
            geometries.append(geom.difference(region))
        train = gdf.set_geometry(geometries, crs=crs)
    train = train[~train.geometry.is_empty & train.geometry.notna()]
    path = work / "train_labels.gpkg"
    train.to_file(path, driver="GPKG")
    return path, test_regions


def reference_and_masks(cfg: dict, train_labels: Path, test_regions):
    """Full-scene class indices of the test pixels and of the training pixels (255 elsewhere), valid pixels only."""
    import rasterio
    from rasterio.features import rasterize

    from rs_pgd.labels import open_labels
    from rs_pgd.raster import scene_info

    info = scene_info(cfg["scene"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = open_labels(cfg["labels"], info, class_column=cfg["class_column"], mapping=cfg["mapping"])
        train = open_labels(train_labels, info, class_column=cfg["class_column"], mapping=cfg["mapping"])
    h, w = info.height, info.width
    with rasterio.open(cfg["scene"]) as ds:
        valid = ds.dataset_mask() > 0
        pixels = ds.read()
        transform = ds.transform
    in_test = rasterize([(g, 1) for g in test_regions], out_shape=(h, w), transform=transform, fill=0,
                        dtype="uint8").astype(bool)
    names = list(full.classes.names)
    reference = full.read((0, 0, h, w)).copy()
    reference[~(in_test & valid)] = 255
    train_index = to_full_index(train.read((0, 0, h, w)), list(train.classes.names), names)
    train_index[~valid | in_test] = 255
    return names, reference, train_index, pixels


def to_full_index(indices: np.ndarray, names: list, full_names: list) -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    for i, n in enumerate(names):
        lut[i] = full_names.index(n)
    return lut[indices]


def score(reference: np.ndarray, predicted: np.ndarray, names: list) -> dict:
    from rs_pgd.metrics import scores, update_confusion

    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    update_confusion(confusion, reference, predicted)
    s = scores(confusion, names)
    return {"miou": s["miou"], "accuracy": s["accuracy"], "test_pixels": s["pixels"],
            "iou": {p["name"]: p["iou"] for p in s["per_class"]}}


# -- the three methods -------------------------------------------------------------------------------------------
def count_windows(cfg, train_labels, work, **geometry) -> int:
    from rs_pgd.config import make_config as _make_config
    from rs_pgd.train import Trainer

    config = _make_config(dict(encoder="resnet18", val_fraction=0.0, progress=False, workers=0,
                               class_column=cfg["class_column"], mapping=cfg["mapping"], **geometry))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer([cfg["scene"]], [train_labels], work / "count.safetensors", config)
    return len(trainer.train_items)


def train_and_predict(cfg, train_labels, work: Path, name: str, names: list, seed: int, **options) -> tuple:
    import rasterio

    from rs_pgd import fit
    from rs_pgd.checkpoint import read_header
    from rs_pgd.infer import predict

    model = work / f"{name}.safetensors"
    log = work / f"{name}.jsonl"
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(cfg["scene"], train_labels, model, encoder="resnet18", val_fraction=0.0, progress=False,
                     workers=0, seed=seed, class_column=cfg["class_column"], mapping=cfg["mapping"],
                     log_json=str(log), **options)
        train_s = time.perf_counter() - started
        out = work / f"{name}_pred.tif"
        predict(model, cfg["scene"], out, tile=128, margin=32, progress=False, workers=0, cog=False)
    wall = time.perf_counter() - started
    passes = sum(json.loads(x)["windows"] for x in log.read_text().splitlines())
    meta = read_header(model)
    with rasterio.open(out) as ds:
        values = ds.read(1)
    lut = np.full(256, 255, dtype=np.uint8)
    for v, n in zip(meta.classes["values"], meta.class_names):
        lut[v] = names.index(n)
    return lut[values], {"steps": result.steps, "passes": passes, "train_s": round(train_s, 1),
                         "wall_s": round(wall, 1)}


def random_forest(pixels, train_index, reference, seed: int, max_samples: int = 20000) -> tuple:
    from sklearn.ensemble import RandomForestClassifier

    started = time.perf_counter()
    features = pixels.reshape(pixels.shape[0], -1).T.astype(np.float32)
    labelled = np.flatnonzero(train_index.ravel() != 255)
    rng = np.random.default_rng(seed)
    sample = rng.choice(labelled, size=min(max_samples, len(labelled)), replace=False)
    forest = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    forest.fit(features[sample], train_index.ravel()[sample])
    predicted = np.full(reference.size, 255, dtype=np.uint8)
    test = np.flatnonzero(reference.ravel() != 255)
    predicted[test] = forest.predict(features[test])
    return predicted.reshape(reference.shape), {"train_pixels": int(len(sample)),
                                                "wall_s": round(time.perf_counter() - started, 1)}


def study_scene(key: str, cfg: dict, work: Path, seed: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_labels, test_regions = split_labels(cfg, work)
    names, reference, train_index, pixels = reference_and_masks(cfg, train_labels, test_regions)
    row = {"scene": key, "classes": names, "split": cfg["split"], "seed": seed,
           "train_pixels": int((train_index != 255).sum()), "test_pixels": int((reference != 255).sum())}
    steps = cfg["steps"]
    windows_a = count_windows(cfg, train_labels, work, tile=128, margin=32)
    predicted, info = train_and_predict(cfg, train_labels, work, "pgd", names, seed, tile=128, margin=32,
                                        epochs=steps, step_every="scene")
    row["pgd"] = {**score(reference, predicted, names), **info, "windows_per_step": windows_a}
    print(key, "pgd", row["pgd"], flush=True)
    passes = row["pgd"]["passes"]
    windows_b = count_windows(cfg, train_labels, work, tile=WINDOW, margin=0, stride=64)
    predicted, info = train_and_predict(cfg, train_labels, work, "no_margin", names, seed, tile=WINDOW, margin=0,
                                        stride=64, step_every=BATCH, batch_size=BATCH,
                                        epochs=max(1, math.ceil(passes / windows_b)),
                                        max_steps=math.ceil(passes / BATCH))
    row["no_margin"] = {**score(reference, predicted, names), **info, "windows_per_epoch": windows_b}
    print(key, "no_margin", row["no_margin"], flush=True)
    predicted, info = random_forest(pixels, train_index, reference, seed)
    row["random_forest"] = {**score(reference, predicted, names), **info}
    print(key, "random_forest", row["random_forest"], flush=True)
    row["wall_s"] = round(time.perf_counter() - started, 1)
    return row


def markdown(rows: list) -> str:
    lines = ["| scene | method | test mIoU | test accuracy | per-class IoU | passes | steps | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for method in ("pgd", "no_margin", "random_forest"):
            m = r[method]
            ious = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in m["iou"].items())
            lines.append(f"| {r['scene']} | {method} | {m['miou']:.3f} | {m['accuracy']:.3f} | {ious} | "
                         f"{m.get('passes', '-')} | {m.get('steps', '-')} | {m['wall_s']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", nargs="+", default=["demo", "parana", "denmark"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not DATA.exists():
        print(f"no shared data at {DATA}; set RS_PGD_SHARED_DATA", file=sys.stderr)
        return 2
    configs = scene_configs()
    work = Path(args.dir or tempfile.mkdtemp(prefix="rs_pgd_study_"))
    rows = []
    for key in args.scenes:
        rows.append(study_scene(key, configs[key], work / key, args.seed))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    print(f"load average: {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
