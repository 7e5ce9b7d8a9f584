"""``fit()``: train an SMP model on one or more scenes with Patch Gradient Descent.

Orchestration only: scene reading, labels, window geometry, the PGD step and checkpoints live in their own
modules. One optimizer step is taken per aggregation group: the whole scene by default (``step_every="scene"``)
or a number of windows. Within a group the gradient of every window's centre loss is accumulated, normalised
by the group's count of valid labelled pixels, so the step follows the gradient of the group's mean pixel loss.

Files written next to ``output`` (``model.safetensors`` say):

- ``model.safetensors``: the best model so far (by validation mIoU; the last one without validation), with its
  self-describing metadata. This is what ``predict`` takes.
- ``model.resume.pt``: weights, optimizer, scheduler, loss table and history after the last finished epoch, for
  ``--resume`` (loaded with ``torch.load(weights_only=True)``: no code runs).
- ``model.curve.png``: the training curve. ``log_json`` (optional): one JSON line per optimizer step.

Resuming is exact: every epoch draws its window order, augmentation and hard-example sample from
``(seed, epoch)`` alone, so a run stopped at any moment and resumed from the last finished epoch ends with the
same weights as an uninterrupted run (CPU, same seed).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rs_pgd import __version__
from rs_pgd.config import STEP_EVERY_SCENE, FitConfig, make_config, sibling
from rs_pgd.errors import DeviceError, GridError, LabelError, RsPgdError, TrainingError
from rs_pgd.grid import WindowGrid


@dataclass
class FitResult:
    """What :func:`fit` returns: the checkpoint path, per-epoch history and the best validation scores."""

    checkpoint: Path
    history: list
    best: dict | None
    steps: int


def fit(scenes, labels, output="model.safetensors", *, resume=False, **options) -> FitResult:
    """Train a segmentation model on ``scenes`` with ``labels`` and write a checkpoint to ``output``.

    Parameters
    ----------
    scenes : str or path or list of them
        Scene rasters (any GDAL raster).
    labels : str or path or list of them
        One label file (vector or raster) per scene.
    output : str or path
        Checkpoint to write (safetensors); its siblings hold the resume state and the training curve.
    resume : bool
        Continue from ``<output stem>.resume.pt`` if it exists.
    **options
        Any field of :class:`FitConfig`.

    Returns
    -------
    FitResult
    """
    from rs_pgd.raster import limit_gdal_cache

    limit_gdal_cache()
    config = make_config(options)
    scenes = [scenes] if isinstance(scenes, (str, os.PathLike)) else list(scenes)
    labels = [labels] if isinstance(labels, (str, os.PathLike)) else list(labels)
    if len(scenes) != len(labels):
        raise LabelError(f"{len(scenes)} scenes but {len(labels)} label files; give one label file per scene")
    trainer = Trainer(scenes, labels, Path(output), config)
    return trainer.run(resume=resume)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is a :class:`DeviceError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but CUDA is not available here; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 (2x faster on CPU, native on recent GPUs); ``16-mixed`` needs CUDA."""
    if precision == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return "16-mixed"
        return "bf16"
    if precision == "16-mixed" and device.type != "cuda":
        raise DeviceError("--precision 16-mixed needs CUDA; use bf16 or 32 on the CPU")
    return precision


def autocast_context(precision: str, device: torch.device):
    """The autocast context for a resolved precision (a no-op for 32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)


def default_workers(device: torch.device | None = None) -> int:
    """DataLoader worker processes: on CUDA one per spare core (at most 4); on a CPU, none up to 2 cores.

    On the CPU the model's intra-op threads already use every core, and a loader process competing with them cost
    more than the reading it hides: on 2 cores fit ran at 0.70-0.75 of a bare training loop with one worker and
    0.90 with none (docs/benchmarks.md). Larger CPUs get one worker per 8 cores (at most 4).
    """
    cores = os.cpu_count() or 1
    if device is not None and device.type == "cuda":
        return max(0, min(4, cores - 1))
    return 0 if cores <= 2 else min(4, max(1, cores // 8))


class Trainer:
    """One training run: set-up, the epoch loop, validation and checkpoints (see :func:`fit`)."""

    def __init__(self, scenes, labels, output: Path, config: FitConfig):
        from rs_pgd.output import check_output_path

        self.config = config
        self.output = output
        check_output_path(output, inputs=[*scenes, *labels])
        if (config.val_scene is None) != (config.val_labels is None):
            raise LabelError("give both a validation scene and its labels (--val SCENE LABELS), or neither")
        n_train = len(scenes)
        if config.val_scene is not None:
            scenes, labels = [*scenes, config.val_scene], [*labels, config.val_labels]
        from rs_pgd.distributed import init_distributed, local_device

        self.device = resolve_device(config.device)
        self.dist = init_distributed(self.device.type)
        self.device = local_device(self.device)
        if not self.dist.is_main:
            config.progress = False
        self.precision = resolve_precision(config.precision, self.device)
        self.sources, self.class_table, self.scene_meta = _open_sources(scenes, labels, config)
        self.train_items, self.val_items, self.counts = _plan_windows(self.sources, config, n_train)
        torch.manual_seed(config.seed)  # the initial weights depend on the seed alone
        self.model, self.spec = _build(self.sources, self.class_table, config, self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "16-mixed" else None
        self.loss_table = np.full(len(self.train_items), np.nan)
        self.history: list[dict] = []
        self.best: dict | None = None
        self.start_epoch = 0
        self.steps = 0

    # -- main loop ----------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> FitResult:
        if resume:
            self._load_resume_state()
        log = open(self.config.log_json, "a", encoding="utf-8") if self.config.log_json and self.dist.is_main else None
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, self.config.epochs):
                if self._max_steps_reached():
                    break
                train_loss = self._train_epoch(epoch, log)
                scores = self._validate() if self.val_items else None
                self._record_epoch(epoch, train_loss, scores)
                self.scheduler.step()
                self._save(epoch)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"training stopped during epoch {epoch + 1}; continue with the same command plus --resume "
                f"(state after epoch {epoch} is in {sibling(self.output, '.resume.pt')})"
            ) from None
        finally:
            if log:
                log.close()
            self.dist.close()
        if not self.dist.is_main:
            return FitResult(self.output, self.history, self.best, self.steps)
        _plot_curve(self.history, sibling(self.output, ".curve.png"))
        return FitResult(self.output, self.history, self.best, self.steps)

    def _max_steps_reached(self) -> bool:
        return self.config.max_steps is not None and self.steps >= self.config.max_steps

    def _train_epoch(self, epoch: int, log) -> float:
        from rs_pgd.models import set_norm_mode

        c = self.config
        torch.manual_seed(_epoch_seed(c.seed, epoch))
        rng = np.random.default_rng(_epoch_seed(c.seed, epoch))
        groups = self._plan_groups(rng)
        self.model.train()
        set_norm_mode(self.model, c.norm)
        losses = []
        bar = _progress(sum(len(g["items"]) for g in groups), f"epoch {epoch + 1}/{c.epochs}", c.progress)
        shares = [self.dist.share(g["items"]) for g in groups]
        batches = self._epoch_batches(shares, epoch)
        for group, share in zip(groups, shares):
            if self._max_steps_reached():
                break
            n_batches = math.ceil(len(share) / c.batch_size)
            loss = self._train_group(group, share, itertools.islice(batches, n_batches), bar)
            losses.append(loss)
            self.steps += 1
            if log:
                log.write(json.dumps({"epoch": epoch + 1, "step": self.steps, "loss": loss,
                                      "windows": len(group["items"]), "lr": self.optimizer.param_groups[0]["lr"],
                                      "time": round(time.time(), 3)}) + "\n")
                log.flush()
        bar.close()
        return float(np.mean(losses)) if losses else float("nan")

    def _epoch_batches(self, shares: list[list[int]], epoch: int):
        """One loader for the whole epoch: workers start once and read ahead across optimizer steps, while no
        batch straddles two groups (batches are cut group by group)."""
        c = self.config
        flat = [i for share in shares for i in share]
        if not flat:
            return iter(())
        batches, start = [], 0
        for share in shares:
            batches += [list(range(start + k, start + min(k + c.batch_size, len(share))))
                        for k in range(0, len(share), c.batch_size)]
            start += len(share)
        return iter(self._loader([self.train_items[i] for i in flat], augment=c.augment,
                                 seed=_epoch_seed(c.seed, epoch), batch_sampler=batches))

    def _plan_groups(self, rng) -> list[dict]:
        """This epoch's optimizer steps: shuffled windows, grouped by scene or by ``step_every`` windows."""
        c = self.config
        order = rng.permutation(len(self.train_items))
        if c.step_every == STEP_EVERY_SCENE:
            chunks = [[i for i in order if self.train_items[i][0] == s] for s in range(len(self.sources))]
            chunks = [ch for ch in chunks if ch]
        else:
            chunks = [list(order[k : k + c.step_every]) for k in range(0, len(order), c.step_every)]
        groups = []
        for chunk in chunks:
            chunk = np.asarray(chunk)
            normaliser = float(self.counts[chunk].sum())
            multipliers = np.ones(len(chunk))
            if c.weighting == "loss":
                multipliers = _loss_multipliers(self.loss_table[chunk])
            if c.hard_mining:
                from rs_pgd.pgd import select_windows

                picked, importance = select_windows(self.loss_table[chunk], c.hard_mining, rng)
                if not c.hard_mining_unbiased:
                    importance = np.ones_like(importance)
                chunk, multipliers = chunk[picked], multipliers[picked] * importance
            groups.append({"items": list(chunk), "multipliers": multipliers, "normaliser": normaliser})
        return groups

    def _train_group(self, group: dict, mine: list[int], loader, bar) -> float:
        """Accumulate the gradients of this rank's windows of one group, then take one optimizer step."""
        from rs_pgd.pgd import pixel_losses

        mult = dict(zip(group["items"], group["multipliers"]))
        before = self.loss_table[group["items"]].copy()
        total = 0.0
        position = 0
        started = time.perf_counter()
        for batch in loader:
            n = batch["image"].shape[0]
            table_index = np.asarray(mine[position : position + n])
            position += n
            image, target, weight = self._to_device(batch)
            with autocast_context(self.precision, self.device):
                logits = self.model(image)
            per_window = pixel_losses(logits, target, weight).flatten(1).sum(1)
            m = torch.as_tensor([mult[i] for i in table_index], dtype=per_window.dtype, device=per_window.device)
            loss = (per_window * m).sum() / group["normaliser"]
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at step {self.steps + 1}; lower --lr or use --precision 32 "
                    f"(the last good checkpoint is kept at {self.output})"
                )
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += float(loss.detach())
            self._update_loss_table(table_index, per_window.detach(), weight)
            bar.update(n)
            bar.set_postfix(loss=f"{total:.4f}", win_s=f"{position / (time.perf_counter() - started):.2f}")
        if self.dist.enabled:
            self.dist.sum_gradients(self.model)
            total = float(self.dist.sum_array(np.array([total]), self.device)[0])
            self._share_loss_table(group["items"], mine, before)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.dist.broadcast_buffers(self.model)
        return total

    def _share_loss_table(self, group_items, mine, before):
        """After a distributed group, every rank learns the recent losses of every window of the group."""
        index = {item: k for k, item in enumerate(group_items)}
        values = np.zeros(len(group_items))
        seen = np.zeros(len(group_items))
        for item in mine:
            if np.isfinite(self.loss_table[item]):
                values[index[item]] = self.loss_table[item]
                seen[index[item]] = 1.0
        values = self.dist.sum_array(values, self.device)
        seen = self.dist.sum_array(seen, self.device)
        self.loss_table[group_items] = np.where(seen > 0, values / np.maximum(seen, 1), before)

    def _update_loss_table(self, table_index, per_window_sum, weight):
        weights = weight.sum(dim=(1, 2)).clamp_min(1e-12).cpu().numpy()
        self.loss_table[table_index] = per_window_sum.float().cpu().numpy() / weights

    def _loader(self, items, augment: bool, seed: int, batch_sampler=None):
        from rs_pgd.dataset import WindowDataset

        c = self.config
        kind = "position" if c.weighting == "position" else "uniform"
        dataset = WindowDataset(self.sources, items, weight_kind=kind, augment=augment, seed=seed)
        workers = default_workers(self.device) if c.workers is None else c.workers
        workers = min(workers, len(items))
        batching = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": c.batch_size}
        return torch.utils.data.DataLoader(
            dataset, shuffle=False, num_workers=workers, prefetch_factor=4 if workers else None,
            persistent_workers=False, pin_memory=self.device.type == "cuda", **batching,
        )

    def _to_device(self, batch):
        image = batch["image"].to(self.device, non_blocking=True)
        if self.config.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, batch["target"].to(self.device), batch["weight"].to(self.device)

    # -- validation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _validate(self) -> dict:
        from rs_pgd.metrics import majority_baseline_miou, scores, update_confusion

        self.model.eval()
        k = self.class_table.num_classes
        confusion = np.zeros((k, k), dtype=np.int64)
        mine = self.dist.share(self.val_items)
        for batch in self._loader(mine, augment=False, seed=0) if mine else []:
            image, target, _ = self._to_device(batch)
            with autocast_context(self.precision, self.device):
                logits = self.model(image)
            predicted = logits.argmax(dim=1)
            update_confusion(confusion, target.cpu().numpy(), predicted.cpu().numpy())
        confusion = self.dist.sum_array(confusion, self.device)
        result = scores(confusion, self.class_table.names)
        result["majority_miou"] = round(majority_baseline_miou(confusion), 6)
        return result

    # -- bookkeeping --------------------------------------------------------------------------------------
    def _record_epoch(self, epoch: int, train_loss: float, scores: dict | None) -> None:
        entry = {"epoch": epoch + 1, "steps": self.steps, "train_loss": train_loss,
                 "lr": self.optimizer.param_groups[0]["lr"]}
        if scores is not None:
            entry.update({"val_miou": scores["miou"], "val_accuracy": scores["accuracy"],
                          "val_majority_miou": scores["majority_miou"],
                          "val_per_class": [{"name": p["name"], "iou": p["iou"], "f1": p["f1"]}
                                            for p in scores["per_class"]]})
        self.history.append(entry)
        improved = self.best is None or scores is None or (scores["miou"] or 0) > (self.best.get("val_miou") or 0)
        if improved:
            self.best = dict(entry)
            self._best_pending = True
        else:
            self._best_pending = False
        if self.config.progress:
            msg = f"epoch {epoch + 1}: train loss {train_loss:.4f}"
            if scores is not None:
                msg += f", val mIoU {scores['miou']:.4f}, accuracy {scores['accuracy']:.4f}"
            print(msg, flush=True)

    def metadata(self) -> dict:
        """Everything inference needs, and the story of the run, as JSON-ready data."""
        c = self.config
        first = self.sources[0]
        return {
            "format": "rs-pgd-checkpoint",
            "format_version": 1,
            "rs_pgd_version": __version__,
            "model": self.spec,
            "bands": list(first.reader.bands),
            "band_names": self.scene_meta["band_names"],
            "preset": self.scene_meta["preset"],
            "scale": self.scene_meta["scale"],
            "offset": self.scene_meta["offset"],
            "stats": first.stats.to_dict(),
            "classes": self.class_table.to_dict(),
            "geometry": {"tile": c.tile, "margin": c.margin, "stride": first.grid.stride, "align": first.grid.align},
            "training_scenes": self.scene_meta["scenes"],
            "config": _jsonable(asdict(c)),
            "precision": self.precision,
            "history": self.history,
            "best": self.best,
            "steps": self.steps,
        }

    def _save(self, epoch: int) -> None:
        if not self.dist.is_main:
            self.dist.barrier()
            return
        try:
            self._write_checkpoints(epoch)
        finally:
            self.dist.barrier()

    def _write_checkpoints(self, epoch: int) -> None:
        from rs_pgd.models import save_checkpoint

        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        meta = self.metadata()
        if self._best_pending:
            save_checkpoint(self.output, state, meta)
        resume = {
            "epoch": epoch + 1,
            "steps": self.steps,
            "model": state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "loss_table": torch.from_numpy(self.loss_table.copy()),
            "history_json": json.dumps(self.history),
            "best_json": json.dumps(self.best),
            "config_json": json.dumps(_jsonable(asdict(self.config)), sort_keys=True),
        }
        path = sibling(self.output, ".resume.pt")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(resume, tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def _load_resume_state(self) -> None:
        path = sibling(self.output, ".resume.pt")
        if not path.exists():
            warnings.warn(f"no resume state at {path}; starting from scratch", stacklevel=2)
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise TrainingError(f"cannot read the resume state {path} ({type(exc).__name__}); delete it to start afresh") from None
        saved = json.loads(state["config_json"])
        now = _jsonable(asdict(self.config))
        changed = sorted(k for k in now if k not in ("epochs", "max_steps", "progress", "workers", "log_json")
                         and saved.get(k) != now[k])
        if changed:
            raise TrainingError(f"--resume with changed options {changed}; use the options of the first run")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.loss_table = state["loss_table"].numpy().copy()
        self.history = json.loads(state["history_json"])
        self.best = json.loads(state["best_json"])
        self.start_epoch = int(state["epoch"])
        self.steps = int(state["steps"])
        if self.config.progress:
            print(f"resuming after epoch {self.start_epoch} ({self.steps} steps)", flush=True)


# -- set-up helpers ---------------------------------------------------------------------------------------
def _open_sources(scenes, labels, c: FitConfig):
    from rs_pgd.dataset import SceneSource
    from rs_pgd.labels import _looks_like_raster, open_labels
    from rs_pgd.raster import SceneReader, compute_band_stats, require_north_up, scene_info

    sources, table, infos = [], None, []
    reader0 = None
    for scene_path, label_path in zip(scenes, labels):
        info = scene_info(scene_path)
        require_north_up(info, vector_labels=not _looks_like_raster(Path(label_path)))
        if info.crs is not None and info.crs.is_geographic:
            warnings.warn(f"{Path(scene_path).name} is in a geographic CRS ({info.crs_string}): windows are square "
                          "in pixels, not in metres; fine for training, but reproject it (gdalwarp -t_srs) for "
                          "areas in m²", stacklevel=2)
        reader = SceneReader(scene_path, bands=c.bands, preset=c.preset or "generic", nodata=c.nodata)
        if reader0 is not None and reader.count != reader0.count:
            raise LabelError(f"{scene_path} has {reader.count} bands but {scenes[0]} has {reader0.count}; "
                             "give scenes with the same bands (see --bands)")
        reader0 = reader0 or reader
        source_labels = open_labels(label_path, info, class_column=c.class_column, mapping=c.mapping,
                                    layer=c.layer, all_touched=c.all_touched, background=c.background)
        if table is None:
            table = source_labels.classes
        elif source_labels.classes.values != table.values:
            raise LabelError(f"the classes of {label_path} differ from those of {labels[0]}; "
                             "give a --mapping so that every scene uses the same classes")
        for line in getattr(source_labels, "report", []):
            if c.progress:
                print(f"labels: {line}", flush=True)
        infos.append({"path": str(scene_path), "crs": info.crs_string, "res": list(info.res),
                      "width": info.width, "height": info.height})
        grid = WindowGrid(info.height, info.width, c.tile, c.margin, c.stride, align=32)
        sources.append(SceneSource(reader, source_labels, grid, None))
    stats = compute_band_stats(reader0, tile=min(512, max(c.tile, 128)), max_windows=c.stats_windows, seed=c.seed)
    for s in sources:
        s.stats = stats
    preset = reader0.preset
    meta = {"scenes": infos, "preset": preset.name, "scale": preset.scale, "offset": preset.offset,
            "band_names": _band_names(reader0)}
    return sources, table, meta


def _band_names(reader) -> list[str]:
    names = reader.preset.band_names
    out = []
    for b in reader.bands:
        out.append(names[b - 1] if names and b - 1 < len(names) else f"band {b}")
    return out


def _plan_windows(sources, c: FitConfig, n_train: int):
    """Count the scored pixels of every window, drop windows with none, split spatial blocks for validation.

    Sources from ``n_train`` on are validation scenes: all their windows validate, and no block of the training
    scenes is held out.
    """
    from rs_pgd.dataset import window_sample

    items, counts = [], []
    for s_index, source in enumerate(sources):
        table = source.grid.weight_table("uniform")
        for window in source.grid:
            data = window_sample(source, window, "uniform", table)
            count = float(data["weight"].sum())
            if count > 0:
                items.append((s_index, window.index))
                counts.append(count)
    if not items:
        raise LabelError("no window has a labelled, valid pixel: the labels do not cover valid scene pixels; "
                         "check the label file and the class column")
    counts = np.asarray(counts)
    held_scene = np.array([s >= n_train for s, _ in items], dtype=bool)
    if held_scene.any():
        val_mask = held_scene
    elif len(sources) > n_train:
        raise LabelError("the validation scene has no labelled, valid pixel; check its labels")
    else:
        val_mask = _spatial_blocks(items, counts, sources, c.val_fraction, c.seed)
    if val_mask.all():
        raise LabelError("no training window has a labelled, valid pixel; check the label file and the class column")
    train = [it for it, v in zip(items, val_mask) if not v]
    val = [it for it, v in zip(items, val_mask) if v]
    return train, val, counts[~val_mask]


def _spatial_blocks(items, counts, sources, fraction, seed):
    """Mark whole 2x2-tile blocks as validation until ``fraction`` of the labelled pixels is held out."""
    val = np.zeros(len(items), dtype=bool)
    if fraction <= 0 or len(items) < 2:
        return val
    blocks = {}
    for k, (s, w) in enumerate(items):
        window = sources[s].grid.window(w)
        blocks.setdefault((s, window.grid_row // 2, window.grid_col // 2), []).append(k)
    keys = sorted(blocks)
    rng = np.random.default_rng(seed)
    target = fraction * counts.sum()
    held = 0.0
    for key in (keys[i] for i in rng.permutation(len(keys))):
        if held >= target:
            break
        members = blocks[key]
        if val.sum() + len(members) >= len(items):
            continue
        val[members] = True
        held += counts[members].sum()
    if not val.any():
        # blocks are too coarse for this scene: hold out single windows instead
        for k in rng.permutation(len(items)):
            if held >= target or val.sum() + 1 >= len(items):
                break
            val[k] = True
            held += counts[k]
    return val


def _build(sources, class_table, c: FitConfig, device):
    from rs_pgd.models import build_model, enable_grad_checkpointing

    in_channels = sources[0].reader.count
    model, output_stride = build_model(c.arch, c.encoder, in_channels, class_table.num_classes,
                                       encoder_weights=c.encoder_weights, norm=c.norm)
    for source in sources:
        if source.grid.align % output_stride:
            raise GridError(f"the {c.encoder} encoder has output stride {output_stride}; give --tile and --margin "
                            f"that are multiples of {output_stride}")
    if c.grad_checkpointing:
        enable_grad_checkpointing(model)
    model = model.to(device)
    if c.channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = {"arch": c.arch, "encoder": c.encoder, "in_channels": in_channels,
            "classes": class_table.num_classes, "norm": c.norm}
    return model, spec


def _loss_multipliers(recent: np.ndarray) -> np.ndarray:
    """Loss weighting: windows weighted by their most recent loss, mean 1 (unseen windows get the mean)."""
    seen = np.isfinite(recent)
    if not seen.any():
        return np.ones(len(recent))
    filled = np.where(seen, recent, np.nanmean(recent))
    mean = filled.mean()
    return filled / mean if mean > 0 else np.ones(len(recent))


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(seed) * 100_003 + int(epoch)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="win", disable=not enabled, leave=False, dynamic_ncols=True)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _plot_curve(history: list, path: Path) -> None:
    """Write the training curve (train loss, validation mIoU) as a PNG; skipped quietly without history."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(epochs, [h["train_loss"] for h in history], color="tab:red", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if any("val_miou" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot(epochs, [h.get("val_miou") or math.nan for h in history], color="tab:blue", label="val mIoU")
        ax2.set_ylabel("val mIoU")
        ax2.set_ylim(0, 1)
    ax.set_title("rs-pgd training")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write the training curve {path}: {exc}", stacklevel=2)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


__all__ = ["fit", "FitConfig", "FitResult", "RsPgdError"]
