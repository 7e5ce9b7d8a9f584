"""``fit()``: train an SMP model on one or more scenes with Patch Gradient Descent.

Orchestration only: scene reading, labels, window geometry, the PGD step and checkpoints live in their own
modules. One optimizer step is taken per aggregation group: the whole scene (``step_every="scene"``), a number
of windows, or by default (``"auto"``) the largest groups that still give the run ``AUTO_MIN_STEPS`` steps. Within
a group the gradient of every window's centre loss is accumulated, normalised by the group's sum of pixel weights
(labelled pixels, times their class weights), so the step follows the gradient of the group's mean pixel loss.

The budget: ``epochs`` passes (the plan of the schedule: the learning rate rises linearly over the first
``warmup`` share of the planned steps, then follows a cosine to 0), fitted to ``max_minutes`` once the speed is
known; ``max_steps`` stops a run where it stands (a resume then goes on exactly); with validation the run stops
early after ``patience`` epochs without a better validation mIoU.

Files written next to ``output`` (``model.safetensors`` say):

- ``model.safetensors``: the best model (by validation mIoU, written when it improves; without validation the
  last one, written with each resume state), with its self-describing metadata. This is what ``predict`` takes.
- ``model.resume.pt``: weights, optimizer, scheduler, loss table and history, for ``--resume`` (loaded with
  ``torch.load(weights_only=True)``: no code runs); written at most every ``resume_every_minutes`` (at a step or
  epoch boundary) and when the run ends.
- ``model.curve.png``: the training curve. ``log_json`` (optional): one JSON line per optimizer step.

Resuming is exact: every epoch draws its window order, augmentation and hard-example sample from
``(seed, epoch)`` alone, so a run stopped at any moment and resumed from its last written resume state ends with
the same weights as an uninterrupted run (CPU, same seed).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rs_pgd import __version__, defaults
from rs_pgd.config import STEP_EVERY_AUTO, STEP_EVERY_SCENE, FitConfig
from rs_pgd.errors import GridError, LabelError, NonFiniteLossError, RsPgdError, TrainingError
from rs_pgd.grid import WindowGrid
from rs_pgd.output import sibling
from rs_pgd.runtime import (
    autocast_context,
    autocast_dtype,
    default_workers,
    resolve_device,
    resolve_precision,
)

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What :func:`fit` returns: the checkpoint path, per-epoch history and the best validation scores."""

    checkpoint: Path
    history: list
    best: dict | None
    steps: int
    stopped: str | None = None


def train(scenes: list, labels: list, output: Path, config: FitConfig, *, resume: bool = False,
          model=None) -> FitResult:
    """Run a training whose inputs :func:`rs_pgd.config.preflight_fit` has checked (see :func:`rs_pgd.api.fit`)."""
    from rs_pgd.raster import gdal_env

    with gdal_env():
        trainer = Trainer(scenes, labels, Path(output), config, model=model)
        return trainer.run(resume=resume)


class Trainer:
    """One training run: set-up, the epoch loop, validation and checkpoints (see :func:`fit`)."""

    def __init__(self, scenes, labels, output: Path, config: FitConfig, model=None):
        self.config = config
        self.output = output
        n_train = len(scenes)
        if config.val_scene is not None:
            scenes, labels = [*scenes, config.val_scene], [*labels, config.val_labels]
        from rs_pgd.distributed import init_distributed, local_device

        self.device = resolve_device(config.device)
        self.dist = init_distributed(self.device.type)
        self.device = local_device(self.device)
        if not self.dist.is_main:
            config.progress = False
        choice = resolve_precision(config.precision, self.device)
        self.precision = choice.precision
        self.precision_reason = choice.reason
        logger.info("precision %s (%s)", self.precision, choice.reason)
        self.sources, self.class_table, self.scene_meta = _open_sources(scenes, labels, config, n_train)
        self.train_items, self.val_items, _, class_pixels = _plan_windows(self.sources, config, n_train,
                                                                          self.class_table.names)
        self.class_pixels = class_pixels.sum(axis=0)  # every class's labelled training pixels
        self.class_weights = _class_weights(config, self.class_pixels, self.class_table.names)
        self.counts = class_pixels @ self.class_weights  # group normalisers: sums of pixel weights, float64
        self._drop_weightless_windows()
        self.grouping = _grouping(config, len(self.train_items))
        self.plan = _plan_steps(config, self._steps_per_epoch())
        logger.info("%s", self._describe_plan())
        torch.manual_seed(config.seed)  # the initial weights depend on the seed alone
        self.model, self.spec = _build(self.sources, self.class_table, config, self.device, model)
        self.input_dtype = next(self.model.parameters()).dtype
        self.optimizer = _optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_schedule(self.plan))
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "16-mixed" else None
        self.loss_table = np.full(len(self.train_items), np.nan)
        self.history: list[dict] = []
        self.best: dict | None = None
        self.start_epoch = 0
        self.steps = 0
        self.resume_at: dict | None = None  # set by a resume state written in the middle of an epoch
        self.saved_steps: int | None = None  # steps of the last resume state written (or resumed from)
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.checkpoint_written = False
        self.started = time.monotonic()
        self.last_save = self.started

    def _drop_weightless_windows(self) -> None:
        """Leave out training windows whose pixels all have class weight 0 (they would add nothing to a group)."""
        keep = self.counts > 0
        if keep.all():
            return
        if not keep.any():
            raise LabelError("--class-weights gives weight 0 to every class of the training pixels; give at least "
                             "one class that the labels hold a positive weight")
        self.train_items = [item for item, k in zip(self.train_items, keep) if k]
        self.counts = self.counts[keep]
        logger.info("%d training windows hold only classes of weight 0 and are left out", int((~keep).sum()))

    def _steps_per_epoch(self) -> int:
        kind, value = self.grouping
        if kind == STEP_EVERY_SCENE:
            return len({s for s, _ in self.train_items})
        if kind == "split":
            return value
        return math.ceil(len(self.train_items) / value)

    def _describe_plan(self) -> str:
        c = self.config
        kind, value = self.grouping
        n = len(self.train_items)
        if kind == STEP_EVERY_SCENE:
            grouping = "one optimizer step per pass over each scene"
        elif kind == "split":
            small, large = n // value, -(-n // value)
            size = f"{small}" if small == large else f"{small}-{large}"
            grouping = f"{value} optimizer steps per epoch, on groups of {size} window{'s' if large > 1 else ''}"
        else:
            grouping = f"one optimizer step every {value} window{'s' if value > 1 else ''}"
        if c.step_every == STEP_EVERY_AUTO:
            grouping += f" (--step-every auto: {n} training windows, at least {defaults.AUTO_MIN_STEPS} steps in "
            grouping += f"{c.epochs} epochs)"
        text = (f"plan: {grouping}; {self.plan['steps']} steps in {c.epochs} epochs (warm-up {self.plan['warmup']} "
                "steps, then cosine)")
        if c.max_steps:
            text += f", stopping after {c.max_steps} steps (--max-steps)"
        if c.max_minutes:
            text += f", fitted to {c.max_minutes:g} minutes once the speed is known (--max-minutes)"
        if self.val_items and c.patience:
            text += (f"; early stop after {c.patience} epochs without a better validation mIoU (counted from half of "
                     "the planned steps on)")
        return text

    # -- main loop ----------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> FitResult:
        if resume:
            self._load_resume_state()
        self.started = self.last_save = time.monotonic()  # --max-minutes and --resume-every-minutes count from here
        self.plan["first_step"] = self.steps
        self.plan.pop("timed", None)
        c = self.config
        log = open(c.log_json, "a", encoding="utf-8") if c.log_json and self.dist.is_main else None
        epoch = self.start_epoch
        stopped = None
        try:
            for epoch in range(self.start_epoch, c.epochs):
                stopped = self._stop_reason()
                if stopped:
                    break
                resume_at, self.resume_at = self.resume_at, None
                history, best = list(self.history), self.best
                train_loss, unfinished = self._train_epoch(epoch, log, resume_at)
                scores = self._validate() if self.val_items else None
                improved = self._record_epoch(epoch, train_loss, scores, partial=unfinished is not None)
                if improved and scores is not None:
                    self._save(checkpoint=True)  # the best model, as soon as it is better
                self._fix_time_plan(epoch_end=True)
                stopped = self._stop_reason()
                if unfinished is not None or stopped or epoch + 1 == c.epochs or self._save_due():
                    if unfinished is None:
                        state = self._resume_state(epoch + 1)
                    else:  # --max-steps or --max-minutes stopped mid-epoch: resume from this very step
                        state = self._resume_state(epoch, unfinished, history, best)
                    self._save(state, checkpoint=not self.val_items)
                if stopped:
                    break
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"training stopped during epoch {epoch + 1}; {self._resume_hint()}") from None
        finally:
            if log:
                log.close()
            self.dist.close()
        if stopped:
            self._log_stop(stopped)
        if not self.dist.is_main:
            return FitResult(self.output, self.history, self.best, self.steps, stopped)
        _plot_curve(self.history, sibling(self.output, ".curve.png"))
        return FitResult(self.output, self.history, self.best, self.steps, stopped)

    def _resume_hint(self) -> str:
        from rs_pgd.checkpoint import resume_path

        if self.saved_steps is None:
            return "no resume state was written yet, so --resume would start afresh"
        return (f"continue with the same command plus --resume (the state after step {self.saved_steps} is in "
                f"{resume_path(self.output)})")

    # -- the budget ---------------------------------------------------------------------------------------
    def _max_steps_reached(self) -> bool:
        return self.config.max_steps is not None and self.steps >= self.config.max_steps

    def _elapsed_minutes(self) -> float:
        return (time.monotonic() - self.started) / 60.0

    def _out_of_time(self) -> bool:
        """Whether --max-minutes has passed (rank 0's clock decides for every rank)."""
        if self.config.max_minutes is None:
            return False
        return self.dist.agree(self._elapsed_minutes() >= self.config.max_minutes, self.device)

    def _budget_spent(self) -> bool:
        """--max-steps or --max-minutes reached: stop before the next optimizer step."""
        return self._max_steps_reached() or self._out_of_time()

    def _stop_reason(self) -> str | None:
        """Why the run ends now (``max_steps``, ``max_minutes``, ``patience``), or None to go on."""
        if self._max_steps_reached():
            return "max_steps"
        if self._out_of_time():
            return "max_minutes"
        if self._patience_spent():
            return "patience"
        return None

    def _patience_spent(self) -> bool:
        """``--patience`` epochs without a better validation mIoU, counted from the best epoch or from the first
        epoch past half of the planned steps, whichever is later: while the learning rate is above half its peak
        (the first half of the cosine) a plateau is no reason to stop. In every full 40-epoch run measured on the
        shared scenes the best validation epoch came in the second half (docs/experiments.md)."""
        patience = self.config.patience
        if not (patience and self.val_items and self.history and self.best) or self.best.get("val_miou") is None:
            return False
        past_half = [h["epoch"] for h in self.history if h["steps"] >= self.plan["steps"] / 2]
        if not past_half:
            return False
        return self.history[-1]["epoch"] - max(self.best["epoch"], past_half[0]) >= patience

    def _log_stop(self, reason: str) -> None:
        c = self.config
        why = {"max_steps": f"--max-steps {c.max_steps} reached",
               "max_minutes": f"--max-minutes {c.max_minutes} reached",
               "patience": f"no better validation mIoU in {c.patience} epochs (--patience)"}[reason]
        best = self.best or {}
        if best.get("val_miou") is not None:
            why += f"; best validation mIoU {best['val_miou']:.4f} at epoch {best['epoch']}"
        logger.info("stopped after %d steps: %s", self.steps, why)

    def _save_due(self) -> bool:
        """Whether --resume-every-minutes has passed since the last resume state (rank 0 decides)."""
        due = time.monotonic() - self.last_save >= 60.0 * self.config.resume_every_minutes
        return self.dist.agree(due, self.device)

    def _fix_time_plan(self, epoch_end: bool) -> None:
        """Under --max-minutes, plan the schedule's length once from the measured speed: after the first epoch, or
        after a tenth of the budget when an epoch is longer than that. The cosine then ends near the deadline."""
        c = self.config
        if c.max_minutes is None or self.plan.get("timed") or self.steps <= self.plan["first_step"]:
            return
        elapsed = self._elapsed_minutes()
        if not epoch_end and elapsed < 0.1 * c.max_minutes:
            return
        taken = self.steps - self.plan["first_step"]
        fits = int(taken * c.max_minutes / max(elapsed, 1e-9))
        steps = self.dist.sum_array(np.array([fits if self.dist.is_main else 0]), self.device)[0]
        planned = max(self.steps + 1, min(self.plan["steps"], self.plan["first_step"] + int(steps)))
        self.plan.update(steps=planned, warmup=_warmup_steps(c, planned), timed=True)
        logger.info("--max-minutes %g: %.2f s per step so far, %d steps planned", c.max_minutes,
                    60.0 * elapsed / taken, planned)

    def _train_epoch(self, epoch: int, log, resume_at: dict | None = None) -> tuple[float, dict | None]:
        """Train one epoch (or its rest, after a mid-epoch resume); return its mean group loss and, when
        ``--max-steps`` or ``--max-minutes`` stopped it early, where it stopped (None when it finished).

        Between steps, a resume state is written when ``--resume-every-minutes`` has passed."""
        from rs_pgd.models import set_norm_mode

        c = self.config
        torch.manual_seed(_epoch_seed(c.seed, epoch))
        rng = np.random.default_rng(_epoch_seed(c.seed, epoch))
        start_table = resume_at["start_loss_table"] if resume_at else self.loss_table.copy()
        groups = self._plan_groups(rng, start_table)
        done = resume_at["groups_done"] if resume_at else 0
        losses = list(resume_at["losses"]) if resume_at else []
        self.model.train()
        set_norm_mode(self.model, c.norm)
        bar = _progress(sum(len(g["items"]) for g in groups), self._bar_label(epoch), c.progress)
        bar.update(sum(len(g["items"]) for g in groups[:done]))
        shares = [self.dist.share(g["items"]) for g in groups]
        batches = self._epoch_batches(shares, epoch, skip_groups=done)
        for number, (group, share) in enumerate(zip(groups, shares)):
            if number < done:
                continue
            if self._budget_spent():
                bar.close()
                return float(np.mean(losses)), {"groups_done": number, "losses": losses,
                                                 "start_loss_table": start_table}
            n_batches = math.ceil(len(share) / c.batch_size)
            loss = self._train_group(group, share, itertools.islice(batches, n_batches), bar)
            losses.append(loss)
            self.steps += 1
            self.last_lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()  # the schedule is per optimizer step
            if c.max_steps is not None:  # the bar counts this epoch's windows; its label, the steps
                bar.set_description(self._bar_label(epoch))
            if log:
                log.write(json.dumps({"epoch": epoch + 1, "step": self.steps, "loss": loss,
                                      "windows": len(group["items"]), "lr": self.last_lr,
                                      "time": round(time.time(), 3)}) + "\n")
                log.flush()
            self._fix_time_plan(epoch_end=False)
            if number + 1 < len(groups) and self._save_due():
                unfinished = {"groups_done": number + 1, "losses": list(losses), "start_loss_table": start_table}
                self._save(self._resume_state(epoch, unfinished), checkpoint=not self.val_items)
        bar.close()
        return (float(np.mean(losses)) if losses else float("nan")), None

    def _bar_label(self, epoch: int) -> str:
        c = self.config
        if c.max_steps is not None:
            return f"epoch {epoch + 1}, steps {self.steps}/{c.max_steps}"
        return f"epoch {epoch + 1}/{c.epochs}"

    def _epoch_batches(self, shares: list[list[int]], epoch: int, skip_groups: int = 0):
        """One loader for the whole epoch: workers start once and read ahead across optimizer steps, while no
        batch straddles two groups (batches are cut group by group). After a mid-epoch resume the first
        ``skip_groups`` groups are left out, and every window keeps its place (and so its augmentation)."""
        c = self.config
        flat = [i for share in shares for i in share]
        if not flat:
            return iter(())
        batches, start = [], 0
        for number, share in enumerate(shares):
            if number >= skip_groups:
                batches += [list(range(start + k, start + min(k + c.batch_size, len(share))))
                            for k in range(0, len(share), c.batch_size)]
            start += len(share)
        if not batches:
            return iter(())
        return iter(self._loader([self.train_items[i] for i in flat], augment=c.augment,
                                 seed=_epoch_seed(c.seed, epoch), batch_sampler=batches))

    def _plan_groups(self, rng, loss_table: np.ndarray) -> list[dict]:
        """This epoch's optimizer steps: shuffled windows, grouped by scene, by N windows, or cut into k equal groups.

        ``loss_table`` holds every window's latest loss at the start of the epoch (for loss weighting and
        hard-example mining)."""
        c = self.config
        order = rng.permutation(len(self.train_items))
        kind, size = self.grouping
        if kind == STEP_EVERY_SCENE:
            chunks = [[i for i in order if self.train_items[i][0] == s] for s in range(len(self.sources))]
            chunks = [ch for ch in chunks if ch]
        elif kind == "split":  # --step-every auto: the epoch cut into `size` groups of equal size (one window more or less)
            chunks = [list(chunk) for chunk in np.array_split(order, size)]
        else:
            chunks = [list(order[k : k + size]) for k in range(0, len(order), size)]
        groups = []
        for chunk in chunks:
            chunk = np.asarray(chunk)
            normaliser = float(self.counts[chunk].sum())
            multipliers = np.ones(len(chunk))
            if c.weighting == "loss":
                multipliers = _loss_multipliers(loss_table[chunk])
            if c.hard_mining:
                from rs_pgd.pgd import select_windows

                picked, importance = select_windows(loss_table[chunk], c.hard_mining, rng)
                if not c.hard_mining_unbiased:
                    importance = np.ones_like(importance)
                chunk, multipliers = chunk[picked], multipliers[picked] * importance
            groups.append({"items": list(chunk), "multipliers": multipliers, "normaliser": normaliser})
        return groups

    def _train_group(self, group: dict, mine: list[int], loader, bar) -> float:
        """One PGD step (:func:`rs_pgd.pgd.pgd_step`) over this rank's windows of one group.

        ``mine`` lists the loss-table index of every window the loader yields, in order. Across distributed ranks
        the gradients are summed once, before the optimizer step.
        """
        from rs_pgd.pgd import pgd_step

        before = self.loss_table[group["items"]].copy()
        weights = {int(i): float(m) for i, m in zip(group["items"], group["multipliers"])}

        def show(windows, result):
            bar.update(windows)
            bar.set_postfix(loss=f"{result.loss:.4f}")

        checked = []

        def reduce(model):  # every rank says whether its windows went well, then the one gradient all-reduce
            checked.append(True)
            self.dist.check(None, self.device)
            self.dist.sum_gradients(model)

        try:
            result = pgd_step(
                self.model, self.optimizer, self._indexed_batches(loader, mine), group["normaliser"],
                scaler=self.scaler, autocast_dtype=autocast_dtype(self.precision), device=self.device,
                window_weights=weights, reduce_gradients=reduce if self.dist.enabled else None,
                on_batch=show, class_weights=self._loss_class_weights(),
            )
        except NonFiniteLossError as exc:
            kept = (f"the last good checkpoint is kept at {self.output}" if self.checkpoint_written else
                    "no checkpoint was written yet")
            error = TrainingError(f"the loss became {exc.value} at step {self.steps + 1}; lower --lr or use "
                                  f"--precision 32 ({kept})")
            if not checked and self.dist.enabled:  # the other ranks wait for this rank's status
                self.dist.check(error, self.device)
            raise error from None
        except Exception as exc:
            if not checked and self.dist.enabled:
                self.dist.check(exc, self.device)
            raise
        self._update_loss_table(result)
        total = result.loss
        if self.dist.enabled:
            total = float(self.dist.sum_array(np.array([total]), self.device)[0])
            self._share_loss_table(group["items"], mine, before)
        self.dist.broadcast_buffers(self.model)
        return total

    def _loss_class_weights(self):
        """The class weights for :func:`rs_pgd.pgd.pgd_step`: None when every weight is 1 (the plain loss)."""
        if np.all(self.class_weights == 1.0):
            return None
        return torch.from_numpy(self.class_weights)

    def _indexed_batches(self, loader, mine: list[int]):
        """The loader's batches on the device, in the model's dtype and memory format, each with the loss-table
        ``index`` of its windows (the key of the step's window weights)."""
        position = 0
        for batch in loader:
            n = batch["image"].shape[0]
            batch["index"] = torch.as_tensor(mine[position : position + n])
            position += n
            batch["image"] = self._prepare_image(batch["image"])
            yield batch

    def _prepare_image(self, image):
        image = image.to(self.device, dtype=self.input_dtype, non_blocking=True)
        if self.config.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image

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

    def _update_loss_table(self, result) -> None:
        """Each trained window's latest mean pixel loss (for loss weighting and hard-example mining)."""
        for index, loss_sum in result.window_losses.items():
            pixels = max(result.window_pixels[index], np.float32(1e-12))
            self.loss_table[index] = np.float32(loss_sum) / pixels

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
        return self._prepare_image(batch["image"]), batch["target"].to(self.device), batch["weight"].to(self.device)

    # -- validation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _validate(self) -> dict:
        from rs_pgd.metrics import majority_baseline_miou, scores, update_confusion

        self.model.eval()
        k = self.class_table.num_classes
        confusion = np.zeros((k, k), dtype=np.int64)
        mine = self.dist.share(self.val_items)
        error = None
        try:
            for batch in self._loader(mine, augment=False, seed=0) if mine else []:
                image, target, _ = self._to_device(batch)
                with autocast_context(self.precision, self.device):
                    logits = self.model(image)
                predicted = logits.argmax(dim=1)
                update_confusion(confusion, target.cpu().numpy(), predicted.cpu().numpy())
        except Exception as exc:
            if not self.dist.enabled:
                raise
            error = exc
        self.dist.check(error, self.device)  # no rank left waiting in the sum below
        confusion = self.dist.sum_array(confusion, self.device)
        result = scores(confusion, self.class_table.names)
        result["majority_miou"] = round(majority_baseline_miou(confusion), 6)
        return result

    # -- bookkeeping --------------------------------------------------------------------------------------
    def _record_epoch(self, epoch: int, train_loss: float, scores: dict | None, partial: bool = False) -> bool:
        """Add the epoch to the history, log it (per-class IoU and F1 too) and return whether the model is the
        best so far (always true without validation)."""
        entry = {"epoch": epoch + 1, "steps": self.steps, "train_loss": train_loss, "lr": self.last_lr}
        if partial:
            entry["partial"] = True  # --max-steps or --max-minutes stopped the epoch early
        if scores is not None:
            entry.update({"val_miou": scores["miou"], "val_accuracy": scores["accuracy"],
                          "val_majority_miou": scores["majority_miou"],
                          "val_per_class": [{"name": p["name"], "iou": p["iou"], "f1": p["f1"]}
                                            for p in scores["per_class"]]})
        self.history.append(entry)
        improved = self.best is None or scores is None or (scores["miou"] or 0) > (self.best.get("val_miou") or 0)
        if improved:
            self.best = dict(entry)
        stop = " (stopped by the budget)" if partial else ""
        msg = f"epoch {epoch + 1}{stop}: step {self.steps}, train loss {train_loss:.4f}"
        if scores is not None:
            msg += f", val mIoU {_score(scores['miou'])}, accuracy {_score(scores['accuracy'])}"
            msg += "; per class IoU/F1: " + ", ".join(
                f"{p['name']} {_score(p['iou'], 2)}/{_score(p['f1'], 2)}" for p in scores["per_class"])
            if improved:
                msg += " (best)"
        logger.info(msg)
        return improved

    def metadata(self):
        """Everything inference needs, and the story of the run: the :class:`rs_pgd.checkpoint.CheckpointMeta`."""
        from rs_pgd.checkpoint import CheckpointMeta

        c = self.config
        first = self.sources[0]
        return CheckpointMeta(
            rs_pgd_version=__version__,
            model=dict(self.spec),
            bands=tuple(first.reader.bands),
            band_names=tuple(self.scene_meta["band_names"]),
            preset=self.scene_meta["preset"],
            scale=self.scene_meta["scale"],
            offset=self.scene_meta["offset"],
            stats=first.stats.to_dict(),
            classes=self.class_table.to_dict(),
            geometry={"tile": c.tile, "margin": c.margin, "stride": first.grid.stride, "align": first.grid.align},
            training_scenes=tuple(self.scene_meta["scenes"]),
            config=_jsonable(asdict(c)) | {"plan": self.plan_summary()},
            precision=self.precision,
            precision_reason=self.precision_reason,
            history=tuple(_jsonable(self.history)),
            best=_jsonable(self.best),
            steps=self.steps,
        )

    def plan_summary(self) -> dict:
        """What the options resolved to, stored in the checkpoint's ``config["plan"]``: the group size, the planned
        steps and warm-up, and each class's training pixels and loss weight."""
        names = list(self.class_table.names)
        return _jsonable({
            "grouping": list(self.grouping), "steps_per_epoch": self._steps_per_epoch(),
            "planned_steps": self.plan["steps"], "warmup_steps": self.plan["warmup"],
            "class_weights": dict(zip(names, np.round(self.class_weights, 6).tolist())),
            "class_pixels": dict(zip(names, np.round(self.class_pixels, 3).tolist())),
        })

    def _resume_state(self, epoch: int, unfinished: dict | None = None, history=None, best=None) -> dict:
        """Everything ``--resume`` needs to go on as if never stopped: at the start of ``epoch`` (0-based), or,
        with ``unfinished``, after its first ``groups_done`` groups (the epoch's plan is rebuilt from the seed and
        the loss table at the epoch's start). ``history``/``best`` default to the current ones."""
        state = _cpu_state(self.model)
        resume = {
            "epoch": epoch,
            "steps": self.steps,
            "model": state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "loss_table": torch.from_numpy(self.loss_table.copy()),
            "history_json": json.dumps(self.history if history is None else history),
            "best_json": json.dumps(self.best if history is None else best),
            "config_json": json.dumps(_jsonable(asdict(self.config)), sort_keys=True),
            "classes_json": json.dumps(self.class_table.to_dict()),
        }
        if unfinished is not None:
            resume["groups_done"] = int(unfinished["groups_done"])
            resume["epoch_losses"] = torch.tensor(unfinished["losses"], dtype=torch.float64)
            resume["start_loss_table"] = torch.from_numpy(np.asarray(unfinished["start_loss_table"]).copy())
        return resume

    def _save(self, resume: dict | None = None, checkpoint: bool = False) -> None:
        """Write the checkpoint (``checkpoint``: the current model, with its metadata) and/or the resume state.

        Rank 0 writes; every rank learns whether that worked (a failed write stops them all)."""
        error = None
        if self.dist.is_main:
            try:
                self._write_checkpoints(resume, checkpoint)
            except Exception as exc:
                if not self.dist.enabled:
                    raise
                error = exc
        self.dist.check(error, self.device)
        if resume is not None:
            self.saved_steps = self.steps
            self.last_save = time.monotonic()

    def _write_checkpoints(self, resume: dict | None, checkpoint: bool) -> None:
        from rs_pgd import checkpoint as files

        if checkpoint:
            weights = resume["model"] if resume is not None else _cpu_state(self.model)
            files.save(self.output, weights, self.metadata())
            self.checkpoint_written = True
        if resume is not None:
            files.save_resume(self.output, resume)

    def _load_resume_state(self) -> None:
        from rs_pgd.checkpoint import load_resume, resume_path

        path = resume_path(self.output)
        state = load_resume(self.output)
        if state is None:
            warnings.warn(f"no resume state at {path}; starting from scratch", stacklevel=2)
            return
        saved = json.loads(state["config_json"])
        now = _jsonable(asdict(self.config))
        changed = sorted(k for k in now if k not in RESUME_MAY_CHANGE and saved.get(k) != now[k])
        if changed:
            raise TrainingError(f"--resume with changed options {changed}; use the options of the first run")
        saved_classes = json.loads(state.get("classes_json", "null"))
        if saved_classes is not None and saved_classes["names"] != list(self.class_table.names):
            raise TrainingError(f"--resume with other classes: the run began with {saved_classes['names']}, the "
                                f"labels now give {list(self.class_table.names)}; use the first run's labels")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:
            raise TrainingError(f"the resume state {path} does not fit this model (other classes or bands); use the "
                                "first run's labels and options, or delete it to start afresh") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # the schedule of this run's budget, from where the first run stopped (the stored lr followed the old one)
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.loss_table = state["loss_table"].numpy().copy()
        self.history = json.loads(state["history_json"])
        self.best = json.loads(state["best_json"])
        self.start_epoch = int(state["epoch"])
        self.steps = self.saved_steps = int(state["steps"])
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        if "groups_done" in state:
            self.resume_at = {"groups_done": int(state["groups_done"]), "losses": state["epoch_losses"].tolist(),
                              "start_loss_table": state["start_loss_table"].numpy().copy()}
            logger.info("resuming in epoch %d after step %d", self.start_epoch + 1, self.steps)
        else:
            logger.info("resuming after epoch %d (%d step%s)", self.start_epoch, self.steps, "" if self.steps == 1 else "s")


RESUME_MAY_CHANGE = ("epochs", "max_steps", "max_minutes", "warmup", "patience", "resume_every_minutes", "progress",
                     "workers", "threads", "log_json")
"""Options a ``--resume`` may change: the budget and its schedule (re-planned from where the run stands), stopping,
and what does not touch the numbers."""


def _cpu_state(model) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _score(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# -- the budget and the class weights ---------------------------------------------------------------------
def _grouping(c: FitConfig, windows: int) -> tuple:
    """How an epoch's ``windows`` training windows form optimizer steps: ``("scene", None)``, ``("windows", N)``
    for ``--step-every N``, or, for ``--step-every auto``, ``("split", k)``: each epoch cut into
    ``k = ceil(AUTO_MIN_STEPS / epochs)`` groups of equal size (at most one per window), so a run of ``--epochs``
    takes at least :data:`rs_pgd.defaults.AUTO_MIN_STEPS` steps with the largest groups that allow it; the whole
    scene when one step per pass is already enough.
    """
    if c.step_every == STEP_EVERY_SCENE:
        return (STEP_EVERY_SCENE, None)
    if c.step_every != STEP_EVERY_AUTO:
        return ("windows", int(c.step_every))
    groups = min(windows, -(-defaults.AUTO_MIN_STEPS // c.epochs))
    if groups <= 1:
        return (STEP_EVERY_SCENE, None)
    return ("split", groups)


def _plan_steps(c: FitConfig, steps_per_epoch: int) -> dict:
    """The schedule's plan: ``steps`` (epochs x steps per epoch) and ``warmup`` steps.

    ``--max-steps`` stops a run without changing its plan: a run stopped by it and resumed takes the very steps of
    an uninterrupted one. ``--max-minutes`` shortens the plan once the speed is known (:meth:`Trainer._fix_time_plan`).
    """
    steps = c.epochs * max(1, steps_per_epoch)
    return {"steps": steps, "warmup": _warmup_steps(c, steps), "first_step": 0}


def _warmup_steps(c: FitConfig, steps: int) -> int:
    return int(round(c.warmup * steps))


def _lr_schedule(plan: dict):
    """Learning-rate factor of each optimizer step (0-based): linear warm-up over ``plan["warmup"]`` steps, then a
    cosine from 1 to 0 at ``plan["steps"]``. In closed form of the step and read from ``plan`` at every call, so a
    run resumed with another budget follows the schedule of the new length from where it stands."""

    def factor(step: int) -> float:
        total, warmup = plan["steps"], plan["warmup"]
        if step < warmup:
            return (step + 1) / warmup
        if total <= warmup:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup)))

    return factor


def _class_weights(c: FitConfig, pixels: np.ndarray, names) -> np.ndarray:
    """Per-class loss weights (float64, one per class of the table) for ``--class-weights``, logged.

    ``pixels`` holds every class's labelled training pixels (coverage-weighted). ``none``: all 1; ``auto``:
    :func:`rs_pgd.pgd.class_weights_from_counts`; a file: its weights, which must name every class, by name.
    """
    names = list(names)
    if c.class_weights == "none":
        weights = np.ones(len(names))
    elif c.class_weights == "auto":
        from rs_pgd.pgd import class_weights_from_counts

        weights = class_weights_from_counts(pixels, defaults.CLASS_WEIGHT_POWER, defaults.CLASS_WEIGHT_MAX)
    else:
        from rs_pgd.config import read_class_weights

        given = read_class_weights(c.class_weights)
        unknown = sorted(set(given) - set(names))
        missing = [n for n in names if n not in given]
        if unknown or missing:
            problem = (f"names {', '.join(map(repr, unknown))}, which the labels do not hold" if unknown else
                       f"gives no weight for {', '.join(map(repr, missing))}")
            raise LabelError(f"--class-weights {c.class_weights} {problem}; the classes are "
                             f"{', '.join(map(repr, names))}: give each one weight")
        weights = np.array([given[n] for n in names], dtype=np.float64)
    total = pixels.sum()
    shares = ", ".join(f"{n} {w:.3g} ({100 * p / total:.1f} %)" for n, w, p in zip(names, weights, pixels))
    logger.info("class weights (%s) and shares of the training pixels: %s", c.class_weights, shares)
    return weights


# -- set-up helpers ---------------------------------------------------------------------------------------
def _open_sources(scenes, labels, c: FitConfig, n_train: int):
    """Readers, label sources and grids of every scene; one class table (by class name) and band statistics
    over the training scenes (the first ``n_train``).

    With a training area (``bbox``/``aoi``) each training scene's reader covers only the scene pixels of the area
    (:func:`rs_pgd.raster.window_for_bbox`, as predict does): its grid, labels and statistics are those of the
    area, while windows at the area's edges still see the real pixels around it as context.
    """
    from rs_pgd.classes import unify_class_tables
    from rs_pgd.dataset import SceneSource
    from rs_pgd.label_source import ReindexedLabels
    from rs_pgd.labels import open_labels
    from rs_pgd.raster import (
        SceneReader,
        area_of_interest,
        compute_band_stats,
        merge_band_stats,
        scene_info,
        window_for_bbox,
    )

    area = area_of_interest(c.bbox, c.bbox_crs, c.aoi)
    sources, tables, infos = [], [], []
    reader0 = None
    for index, (scene_path, label_path) in enumerate(zip(scenes, labels)):
        info = scene_info(scene_path)  # checked by preflight_fit (readable, north-up)
        if info.crs is not None and info.crs.is_geographic:
            warnings.warn(f"{Path(scene_path).name} is in a geographic CRS ({info.crs_string}): windows are square "
                          "in pixels, not in metres; fine for training, but reproject it (gdalwarp -t_srs) for "
                          "areas in m²", stacklevel=2)
        window = window_for_bbox(info, *area) if area is not None and index < n_train else None
        reader = SceneReader(scene_path, bands=c.bands, preset=c.preset, nodata=c.nodata, window=window)
        if reader0 is not None and reader.count != reader0.count:
            raise LabelError(f"{scene_path} has {reader.count} bands but {scenes[0]} has {reader0.count}; "
                             "give scenes with the same bands (see --bands)")
        reader0 = reader0 or reader
        # the labels are read on the reader's grid (the area's pixels, when there is one): same pixels as the image
        source_labels = open_labels(label_path, reader, class_column=c.class_column, mapping=c.mapping,
                                    layer=c.layer, all_touched=c.all_touched, background=c.background,
                                    unknown_keys="keep" if len(scenes) > 1 else "error")
        tables.append(source_labels.classes)
        for line in getattr(source_labels, "report", []):
            logger.info("labels: %s", line)
        infos.append(_scene_record(scene_path, info, reader))
        if window is not None:
            logger.info("training area of %s: %d x %d pixels from column %d, row %d", Path(scene_path).name,
                        reader.width, reader.height, reader.col_off, reader.row_off)
        grid = WindowGrid(reader.height, reader.width, c.tile, c.margin, c.stride, align=32)
        sources.append(SceneSource(reader, source_labels, grid, None))
    table, luts = unify_class_tables(tables, [str(p) for p in labels])
    for source, lut in zip(sources, luts):
        if lut is not None:
            source.labels = ReindexedLabels(source.labels, lut, table)
    stats = merge_band_stats([
        compute_band_stats(s.reader, tile=min(512, max(c.tile, 128)), max_windows=c.stats_windows, seed=c.seed)
        for s in sources[:n_train]
    ])
    for s in sources:
        s.stats = stats
    preset = reader0.preset
    meta = {"scenes": infos, "preset": preset.name, "scale": _jsonable(preset.scale),
            "offset": _jsonable(preset.offset), "band_names": _band_names(reader0)}
    return sources, table, meta


def _scene_record(scene_path, info, reader) -> dict:
    """What the checkpoint says about one training scene: path, CRS, pixel size, band count and data type (for
    predict's scene check) and the size trained on; with a
    training area also its ``window`` (file pixels) and ``bounds`` (W, S, E, N in the scene's CRS)."""
    record = {"path": str(scene_path), "crs": info.crs_string, "res": list(info.res),
              "width": reader.width, "height": reader.height, "count": info.count, "dtype": info.dtype}
    if reader.window is not None:
        from rasterio.transform import array_bounds

        west, south, east, north = array_bounds(reader.height, reader.width, reader.transform)
        record["window"] = {"col_off": reader.col_off, "row_off": reader.row_off, "width": reader.width,
                            "height": reader.height}
        record["bounds"] = [float(west), float(south), float(east), float(north)]
        record["scene_width"], record["scene_height"] = info.width, info.height
    return record


def _band_names(reader) -> list[str]:
    """Each selected band's name: the scene's band description (how --bands picks it first), else the preset's
    name for that band, else ``band N``."""
    names = reader.preset.band_names
    descriptions = getattr(reader, "descriptions", ())
    out = []
    for b in reader.bands:
        if b - 1 < len(descriptions) and descriptions[b - 1]:
            out.append(descriptions[b - 1])
        else:
            out.append(names[b - 1] if names and b - 1 < len(names) else f"band {b}")
    return out


def _plan_windows(sources, c: FitConfig, n_train: int, class_names=()):
    """Count the scored pixels of every window, drop windows with none, split spatial blocks for validation.

    Returns the training and validation items, each training window's scored pixels and its scored pixels per
    class (coverage-weighted, float64: the class weights' counts and the group normalisers).

    Sources from ``n_train`` on are validation scenes: all their windows validate, and no block of the training
    scenes is held out. The split is logged: windows, share of labelled pixels, classes missing on either side.
    """
    from rs_pgd.dataset import window_sample

    items, counts, class_pixels = [], [], []
    k = max(len(class_names), 1)
    for s_index, source in enumerate(sources):
        table = source.grid.weight_table("uniform")
        for window in source.grid:
            data = window_sample(source, window, "uniform", table)
            count = float(data["weight"].sum())
            if count > 0:
                items.append((s_index, window.index))
                counts.append(count)
                scored = data["weight"] > 0
                target, weight = data["target"][scored], data["weight"][scored].astype(np.float64)
                keep = target < k
                class_pixels.append(np.bincount(target[keep], weights=weight[keep], minlength=k)[:k])
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
    class_pixels = np.asarray(class_pixels, dtype=np.float64).reshape(len(items), k)
    _log_split(val_mask, counts, class_pixels > 0, class_names)
    train = [it for it, v in zip(items, val_mask) if not v]
    val = [it for it, v in zip(items, val_mask) if v]
    return train, val, counts[~val_mask], class_pixels[~val_mask]


def _log_split(val_mask, counts, presence, class_names) -> None:
    """Log the training/validation split and warn about classes that one side lacks."""
    if not val_mask.any():
        logger.info("training on %d windows, no validation", int((~val_mask).sum()))
        return
    share = counts[val_mask].sum() / counts.sum()
    logger.info("validation: %d windows (%.1f %% of the labelled pixels), training: %d windows",
                int(val_mask.sum()), 100 * share, int((~val_mask).sum()))
    if not class_names:
        return
    in_train = presence[~val_mask].any(axis=0)
    in_val = presence[val_mask].any(axis=0)
    missing_train = [n for n, t in zip(class_names, in_train) if not t]
    missing_val = [n for n, v in zip(class_names, in_val) if not v]
    if missing_train:
        warnings.warn(f"classes {missing_train} have no labelled pixel in the training windows: the model cannot "
                      "learn them; add labels or lower --val-fraction", stacklevel=3)
    if missing_val:
        logger.info("classes %s are not in the validation windows; their IoU is not measured", missing_val)


VAL_OVERSHOOT = 1.25
"""The held-out share may exceed the asked ``--val-fraction`` by at most this factor (whole blocks are held out)."""


def _spatial_blocks(items, counts, sources, fraction, seed):
    """Hold out about ``fraction`` of the labelled pixels as spatial blocks.

    Whole 2x2-tile blocks first, in random order, skipping any block that would take the held-out share past
    ``VAL_OVERSHOOT`` times the asked one; then single windows to top up. At least one window always trains.
    """
    val = np.zeros(len(items), dtype=bool)
    if fraction <= 0 or len(items) < 2:
        return val
    rng = np.random.default_rng(seed)
    target = fraction * counts.sum()
    held = 0.0
    for side in (2, 1):
        blocks = {}
        for k, (s, w) in enumerate(items):
            if not val[k]:
                window = sources[s].grid.window(w)
                blocks.setdefault((s, window.grid_row // side, window.grid_col // side), []).append(k)
        keys = sorted(blocks)
        for key in (keys[i] for i in rng.permutation(len(keys))):
            if held >= target:
                return val
            members = blocks[key]
            share = counts[members].sum()
            if held + share > VAL_OVERSHOOT * target or val.sum() + len(members) >= len(items):
                continue
            val[members] = True
            held += share
    if not val.any():  # every window is larger than the asked share: hold out the smallest one
        val[int(np.argmin(counts))] = True
    return val


def _build(sources, class_table, c: FitConfig, device, custom=None):
    """The model to train (an SMP model, or the caller's own module) and the spec stored in the checkpoint."""
    in_channels = sources[0].reader.count
    if custom is not None:
        model, output_stride = custom, int(getattr(custom, "output_stride", 32))
        spec = {"arch": "custom", "module": f"{type(custom).__module__}.{type(custom).__qualname__}",
                "in_channels": in_channels, "classes": class_table.num_classes, "norm": c.norm}
    else:
        from rs_pgd.models import build_model

        model, output_stride = build_model(c.arch, c.encoder, in_channels, class_table.num_classes,
                                           encoder_weights=c.encoder_weights, norm=c.norm)
        spec = {"arch": c.arch, "encoder": c.encoder, "in_channels": in_channels,
                "classes": class_table.num_classes, "norm": c.norm}
    for source in sources:
        if source.grid.align % output_stride:
            raise GridError(f"the {c.encoder} encoder has output stride {output_stride}; give --tile and --margin "
                            f"that are multiples of {output_stride}")
    if c.grad_checkpointing:
        from rs_pgd.models import enable_grad_checkpointing

        enable_grad_checkpointing(model)
    model = model.to(device)
    if c.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, spec


def _optimizer(model, c: FitConfig):
    """AdamW (the default) or SGD with momentum, on every parameter, with the configured lr and weight decay."""
    if c.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)


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
    from rs_pgd.progress import progress_bar  # a tqdm bar, or JSON lines with --progress json

    return progress_bar(total, desc, enabled)


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
    from rs_pgd.output import AtomicOutput

    try:
        with AtomicOutput(path, sidecars=()) as temp:
            fig.savefig(temp, format="png")
    except OSError as exc:
        warnings.warn(f"could not write the training curve {path}: {exc}", stacklevel=2)
    finally:
        plt.close(fig)


__all__ = ["train", "FitConfig", "FitResult", "RsPgdError"]
