"""Suggest study: do the regions ``rs-pgd suggest`` picks hold more of the model's errors than random regions?

For each real scene with labels (``../shared/data``): a small Unet-ResNet18 is trained briefly (``fit``, tile 128,
margin 32, one optimizer step per pass over the scene, ``steps`` steps) on the labels of the left 70 % of the scene
(the spatial split of ``benchmarks/accuracy_study.py``); ``predict --uncertainty`` maps the whole scene; the
model's *errors* are the valid labelled pixels (all labels of the scene) where the class map differs from them.
Then ``top`` regions of ``size`` px are picked two ways, from the same candidates (the suggest lattice: squares of
``size`` on a lattice of ``size / 2``, at least half of their pixels with data, none overlapping):

- ``suggest``: greedily by mean uncertainty (:func:`rs_pgd.suggest`'s ranking);
- ``random``: greedily by random scores, ``draws`` times (random non-overlapping regions of the same size).

Two settings: ``scene`` (every candidate of the scene, what ``rs-pgd suggest MODEL SCENE`` does) and ``held-out``
(only candidates inside the right 30 %, which has no training labels: where would a user label next?). For each:
the share of all the setting's errors inside the picked regions (suggested vs the random draws: mean, standard
deviation, 95th percentile, and p = the share of draws at least as high as the suggestion) and the error rate of the
labelled pixels in the regions. Two diagnostics say why: the pixel AUROC of the uncertainty as a detector of the
errors (0.5 = chance) and the Spearman correlation, over the candidates with at least a quarter of their pixels
labelled, between a region's mean uncertainty and its error rate. Each measure is compared: ``least-confidence``
(suggest's default), ``margin``, ``entropy`` and ``least-confidence`` with ``--tta`` (whose class map, and so
whose errors, differ). ``rs_pgd.suggest`` itself is run once per scene and must return the same regions as the
``scene`` setting of the default measure.

Usage::

    python benchmarks/suggest_study.py --threads 1 --json suggest.json          # demo and denmark
    python benchmarks/suggest_study.py --scenes denmark --top 5 --size 64
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
from accuracy_study import DATA, scene_configs, split_labels  # noqa: E402

SETTINGS = {"demo": dict(top=10, size=64), "denmark": dict(top=8, size=32), "parana": dict(top=10, size=128)}


def train_model(cfg: dict, work: Path, seed: int) -> tuple[Path, Path, int]:
    """Train (or reuse) the study's model on the left 70 % of the scene; return it, the training labels and the
    first test column (the split, on a pixel edge)."""
    import rasterio

    from rs_pgd import fit

    work.mkdir(parents=True, exist_ok=True)
    train_labels, test_regions = split_labels(cfg, work)
    with rasterio.open(cfg["scene"]) as ds:
        split_col = int(round((test_regions[0].bounds[0] - ds.bounds.left) / ds.res[0]))
    model = work / f"model_seed{seed}.safetensors"
    if not model.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit(cfg["scene"], train_labels, model, encoder="resnet18", tile=128, margin=32, epochs=cfg["steps"],
                step_every="scene", val_fraction=0.0, progress=False, workers=0, seed=seed,
                class_column=cfg["class_column"], mapping=mapping_for(cfg, train_labels))  # fmt: skip
    return model, train_labels, split_col


def mapping_for(cfg: dict, labels: Path):
    """The scene's mapping cut to the classes ``labels`` holds (a key that is no class of a file is an error)."""
    import geopandas as gpd

    if cfg["mapping"] is None:
        return None
    present = set(gpd.read_file(labels, ignore_geometry=True)[cfg["class_column"]].dropna())
    return {k: v for k, v in cfg["mapping"].items() if k in present}


def reference_names(cfg: dict, classes_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Whole-scene labels and prediction as class *names* indices of one list: ``(reference, predicted)``, with -1
    where a pixel has no label / no prediction."""
    import rasterio

    from rs_pgd.classes import read_class_names
    from rs_pgd.labels import open_labels
    from rs_pgd.raster import scene_info

    info = scene_info(cfg["scene"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = open_labels(cfg["labels"], info, class_column=cfg["class_column"], mapping=cfg["mapping"])
    names = list(labels.classes.names)
    ref_index = labels.read((0, 0, info.height, info.width)).astype(np.int64)
    reference = np.where(ref_index == 255, -1, ref_index)
    with rasterio.open(classes_path) as ds:
        values = ds.read(1)
        predicted_names = read_class_names(ds)
    lut = np.full(256, -1, dtype=np.int64)
    for value, name in predicted_names.items():
        lut[value] = names.index(name) if name in names else len(names)  # a class the labels lack: always wrong
    return reference, lut[values]


def error_share(errors: np.ndarray, labelled: np.ndarray, regions, size: int, cell: int) -> tuple[float, float]:
    """Share of ``errors`` (bool scene array, restricted to the setting) inside the regions, and the error rate of
    the labelled pixels in them."""
    inside = np.zeros(errors.shape, bool)
    for i, j in regions:
        inside[i * cell : i * cell + size, j * cell : j * cell + size] = True
    total = errors.sum()
    rate = errors[inside].sum() / max(labelled[inside].sum(), 1)
    return float(errors[inside].sum() / total) if total else float("nan"), float(rate)


VARIANTS = {"least-confidence": {}, "margin": {"uncertainty_kind": "margin"},
            "entropy": {"uncertainty_kind": "entropy"}, "least-confidence+tta": {"tta": True}}
"""The uncertainty measures compared (``predict`` options); the first is suggest's default."""


def auroc(errors: np.ndarray, u: np.ndarray) -> float:
    """Area under the ROC curve of the uncertainty as a detector of the errors (0.5: no better than chance)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(errors, u)) if 0 < errors.sum() < errors.size else float("nan")


def study_scene(key: str, cfg: dict, work: Path, seed: int, top: int, size: int, draws: int) -> dict:
    import geopandas as gpd
    import rasterio
    from scipy.stats import spearmanr

    from rs_pgd import predict, suggest
    from rs_pgd.suggestion import cell_stats, region_scores, select_regions

    started = time.perf_counter()
    model, train_labels, split_col = train_model(cfg, work, seed)
    train_s = time.perf_counter() - started
    cell = size // 2
    row = {"scene": key, "seed": seed, "top": top, "size": size, "draws": draws, "train_s": round(train_s, 1),
           "split_col": split_col, "variants": {}}
    for variant, options in VARIANTS.items():
        classes_path = work / f"classes_seed{seed}_{variant}.tif"
        unc_path = work / f"uncertainty_seed{seed}_{variant}.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predict(model, cfg["scene"], classes_path, uncertainty=unc_path, progress=False, workers=0, cog=False,
                    **options)  # fmt: skip
        reference, predicted = reference_names(cfg, classes_path)
        with rasterio.open(unc_path) as ds:
            u = ds.read(1)
        labelled = (reference >= 0) & (predicted >= 0)
        errors = labelled & (reference != predicted)
        stats, _, _ = cell_stats(unc_path, classes_path, cell)
        scores, candidate = region_scores(stats, size)
        out = {"accuracy": float(1 - errors.sum() / labelled.sum()), "labelled_pixels": int(labelled.sum()),
               "errors": int(errors.sum()), "settings": {}}  # fmt: skip
        for setting in ("scene", "held-out"):
            rng = np.random.default_rng(1000 + seed)  # the same random regions for every variant
            allowed = candidate.copy()
            in_setting = np.ones(errors.shape, bool)
            area = stats.height * stats.width
            if setting == "held-out":
                allowed &= (np.arange(allowed.shape[1]) * cell >= split_col)[None, :]
                in_setting[:, :split_col] = False
                area = stats.height * (stats.width - split_col)
            setting_errors, setting_labelled = errors & in_setting, labelled & in_setting
            picked = select_regions(scores, allowed, top)
            share, rate = error_share(setting_errors, setting_labelled, picked, size, cell)
            random_shares, random_rates = np.array([
                error_share(setting_errors, setting_labelled, select_regions(rng.random(allowed.shape), allowed, top),
                            size, cell) for _ in range(draws)]).T  # fmt: skip
            region_u, region_rate = [], []  # every candidate's mean uncertainty and error rate, for their correlation
            for i, j in zip(*np.nonzero(allowed)):
                window = (slice(i * cell, i * cell + size), slice(j * cell, j * cell + size))
                n = setting_labelled[window].sum()
                if n >= 0.25 * size * size:
                    region_u.append(scores[i, j])
                    region_rate.append(setting_errors[window].sum() / n)
            out["settings"][setting] = {
                "candidates": int(allowed.sum()), "regions": len(picked), "errors": int(setting_errors.sum()),
                "area_share": float(len(picked) * size * size / area),
                "suggest_error_share": share, "random_error_share_mean": float(random_shares.mean()),
                "random_error_share_sd": float(random_shares.std()),
                "random_error_share_p95": float(np.percentile(random_shares, 95)),
                "p_random_at_least_suggest": float((random_shares >= share).mean()),
                "suggest_error_rate": rate, "random_error_rate_mean": float(random_rates.mean()),
                "setting_error_rate": float(setting_errors.sum() / max(setting_labelled.sum(), 1)),
                "suggest_mean_uncertainty": float(np.mean([scores[p] for p in picked])),
                "pixel_auroc": auroc(setting_errors[setting_labelled], u[setting_labelled]),
                "region_spearman": float(spearmanr(region_u, region_rate).statistic) if len(region_u) > 2 else None,
                "regions_correlated": len(region_u),
            }  # fmt: skip
            print(key, seed, variant, setting, out["settings"][setting], flush=True)
        row["variants"][variant] = out
        if variant == "least-confidence":  # the library's own run gives the same regions
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = suggest(model, cfg["scene"], work / f"to_label_seed{seed}.gpkg", top=top, size=size,
                                 progress=False, workers=0, labels=train_labels, class_column=cfg["class_column"],
                                 mapping=mapping_for(cfg, train_labels), labelled_weight=0.0)  # fmt: skip
            frame = gpd.read_file(result.output)
            expected = [(i * cell, j * cell) for i, j in select_regions(scores, candidate, top)]
            row["suggest_matches"] = list(zip(frame["row_off"], frame["col_off"])) == expected
    row["wall_s"] = round(time.perf_counter() - started, 1)
    return row


def markdown(rows: list) -> str:
    lines = ["| scene | seed | setting | regions (px) | area share | errors | suggest: error share | random: mean ± sd "
             "(p95) | p | error rate: suggest / random / all | pixel AUROC | region Spearman |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, s in r["variants"]["least-confidence"]["settings"].items():
            lines.append(
                f"| {r['scene']} | {r['seed']} | {name} | {s['regions']} x {r['size']}² | {s['area_share']:.1%} | "
                f"{s['errors']} | **{s['suggest_error_share']:.1%}** | {s['random_error_share_mean']:.1%} ± "
                f"{s['random_error_share_sd']:.1%} ({s['random_error_share_p95']:.1%}) | "
                f"{s['p_random_at_least_suggest']:.3f} | {s['suggest_error_rate']:.3f} / {s['random_error_rate_mean']:.3f}"
                f" / {s['setting_error_rate']:.3f} | {s['pixel_auroc']:.3f} | {_num(s['region_spearman'])} |")  # fmt: skip
    lines += ["", "| scene | seed | measure | setting | suggest error share | random mean | p | pixel AUROC | "
              "region Spearman | accuracy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for variant, v in r["variants"].items():
            for name, s in v["settings"].items():
                lines.append(f"| {r['scene']} | {r['seed']} | {variant} | {name} | {s['suggest_error_share']:.1%} | "
                             f"{s['random_error_share_mean']:.1%} | {s['p_random_at_least_suggest']:.3f} | "
                             f"{s['pixel_auroc']:.3f} | {_num(s['region_spearman'])} | {v['accuracy']:.3f} |")
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", nargs="+", default=["demo", "denmark"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--top", type=int, default=None, help="regions (default per scene)")
    parser.add_argument("--size", type=int, default=None, help="region side in px (default per scene)")
    parser.add_argument("--draws", type=int, default=2000)
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
    work = Path(args.dir or tempfile.mkdtemp(prefix="rs_pgd_suggest_"))
    rows = []
    for key in args.scenes:
        setting = SETTINGS.get(key, dict(top=10, size=64))
        for seed in args.seeds:
            rows.append(study_scene(key, configs[key], work / key, seed, args.top or setting["top"],
                                    args.size or setting["size"], args.draws))  # fmt: skip
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    print(f"load average: {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
