"""The Patch Gradient Descent step: centre-masked loss, gradient accumulation over a group, one optimizer step.

A *group* is a set of windows (the whole scene by default). Each window's loss is the sum over its centre pixels
of ``weight * cross_entropy``, where ``weight`` is the grid's partition-of-unity coverage weight (zero outside the
centre, outside the scene and on unlabelled pixels). Dividing every window's sum by the same *group normaliser*
(the number of valid labelled scene pixels of the group) and accumulating the gradients gives exactly the
gradient of the mean pixel cross-entropy over the whole scene, provided the margin covers the receptive field,
windows are aligned on the model's output stride and no layer uses batch statistics (frozen BatchNorm).

Hard-example mining (:func:`select_windows`) trains on a sample of windows drawn with probability proportional
to their latest loss; each drawn window's loss is multiplied by its importance weight ``count / (K * p)`` so the
expected gradient is still the full-group gradient.

No files, no CLI here: the caller (``train.py``) supplies batches and the normaliser, and hooks for what
surrounds a step (summing gradients across distributed ranks, progress). :func:`pgd_step` is the one PGD step:
``rs_pgd.fit`` takes every optimizer step through it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from rs_pgd.classes import IGNORE_INDEX
from rs_pgd.errors import NonFiniteLossError, TrainingError


# -- loss ---------------------------------------------------------------------------------------------------
def pixel_losses(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                 class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted per-pixel cross-entropy, ``(B, H, W)``; zero where ``target == 255`` or ``weight == 0``.

    ``weight`` is the coverage weight of each pixel; ``class_weights`` (K,), when given, multiplies each pixel's
    term by the weight of its reference class (:func:`pixel_weights`). Low-precision logits (float16/bfloat16) are
    promoted to float32 before the softmax.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    target = target.long()
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    return ce * pixel_weights(target, weight, class_weights, ce.dtype, ce.device)


def pixel_weights(target: torch.Tensor, weight: torch.Tensor, class_weights=None, dtype=None, device=None):
    """Each pixel's weight in the loss: its coverage weight times the weight of its class (ignored pixels: 0).

    The per-pixel product keeps the loss a sum over pixels, so PGD's decomposition holds with class weights: the
    group normaliser is then the group's sum of these weights (:func:`group_normaliser` with the same
    ``class_weights``), and the step follows the gradient of the class-weighted mean cross-entropy
    (``F.cross_entropy(..., weight=class_weights)`` on the whole scene).
    """
    dtype = dtype or torch.float32
    weight = weight.to(device=device, dtype=dtype)
    if class_weights is None:
        return weight
    class_weights = torch.as_tensor(class_weights, dtype=dtype, device=weight.device)
    target = target.to(weight.device).long()
    labelled = target != IGNORE_INDEX
    per_class = class_weights[torch.where(labelled, target, torch.zeros_like(target))]
    return torch.where(labelled, weight * per_class, torch.zeros_like(weight))


def centre_loss_sum(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    window_weight: torch.Tensor | float | None = None,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over pixels of ``weight * cross_entropy(logits, target)`` (ignore index 255).

    Parameters
    ----------
    logits : (B, K, H, W) tensor
    target : (B, H, W) integer tensor of class indices, 255 = ignore.
    weight : (B, H, W) float tensor: coverage weights, zero outside the centre and on invalid pixels.
    window_weight : (B,) tensor or float, optional
        A per-window multiplier (window weighting, or importance weights from :func:`select_windows`).
    class_weights : (K,) tensor, optional
        Per-class loss weights (:func:`pixel_weights`).

    Returns
    -------
    A scalar tensor; divide it by :func:`group_normaliser` (with the same ``class_weights``) before ``backward``.
    """
    per_window = pixel_losses(logits, target, weight, class_weights).flatten(1).sum(1)
    if window_weight is not None:
        per_window = per_window * torch.as_tensor(
            window_weight, dtype=per_window.dtype, device=per_window.device
        )
    return per_window.sum()


def window_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, norm: float
) -> torch.Tensor:
    """``centre_loss_sum(logits, target, weight) / norm``: a window batch's share of the group loss."""
    return centre_loss_sum(logits, target, weight) / norm


def group_normaliser(pairs: Iterable[tuple], ignore_index: int = IGNORE_INDEX, class_weights=None) -> float:
    """The group's count of valid labelled centre pixels: the sum of coverage weights where ``target != 255``.

    Parameters
    ----------
    pairs : iterable of ``(target, weight)``
        Per window (or per batch), numpy arrays or tensors of the same shape.
    class_weights : (K,) array, optional
        Per-class loss weights: the normaliser is then the sum of each labelled pixel's coverage weight times
        its class weight (:func:`pixel_weights`).

    With partition-of-unity weights this equals the number of valid labelled scene pixels covered by the group's
    windows (the whole scene when the group is every window). Computed in float64.
    """
    total = 0.0
    lookup = None if class_weights is None else np.asarray(class_weights, dtype=np.float64)
    for target, weight in pairs:
        target = _as_numpy(target)
        weight = _as_numpy(weight).astype(np.float64, copy=False)
        labelled = target != ignore_index
        if lookup is None:
            total += float(weight[labelled].sum())
        else:
            total += float((weight[labelled] * lookup[target[labelled].astype(np.int64)]).sum())
    return total


def class_weights_from_counts(pixels: np.ndarray, power: float, max_weight: float) -> np.ndarray:
    """``--class-weights auto``: per-class loss weights from the training pixels of each class.

    ``w_k = s * f_k ** -power`` where ``f_k`` is class k's share of the labelled training pixels and ``s`` makes the
    pixel-weighted mean weight 1 (``sum_k f_k w_k = 1``, so the loss keeps its scale and the learning rate its
    meaning); then no weight exceeds ``max_weight``. ``power`` 1 is inverse frequency, 0.5 its square root (a
    rare class gains less), 0 no weighting. Classes without a training pixel get weight 1 (they never enter the
    loss).

    Parameters
    ----------
    pixels : (K,) array
        Labelled training pixels of each class (coverage-weighted, so overlapping windows count a pixel once).
    power, max_weight : float

    Returns
    -------
    (K,) float64 array.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    weights = np.ones(pixels.size)
    present = pixels > 0
    if not present.any():
        return weights
    share = pixels[present] / pixels[present].sum()
    raw = share ** -float(power)
    weights[present] = np.minimum(raw / float((share * raw).sum()), float(max_weight))
    return weights


def _as_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


# -- hard-example mining ------------------------------------------------------------------------------------
def window_probabilities(losses: np.ndarray, floor: float = 0.1) -> np.ndarray:
    """Sampling probabilities proportional to window losses, mixed with a uniform floor.

    ``p = (1 - floor) * l / sum(l) + floor / n``. Unseen windows (NaN loss) count as the largest seen loss, so they
    are visited soon; with every loss zero (or unseen) the distribution is uniform. Every window keeps at least
    ``floor / n`` probability, which bounds the importance weights by ``n / (K * floor)``.
    """
    losses = np.asarray(losses, dtype=np.float64)
    n = losses.size
    if n == 0:
        raise ValueError("no windows to sample from")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor {floor} must be in (0, 1]")
    seen = np.isfinite(losses)
    fill = float(losses[seen].max()) if seen.any() else 1.0
    scores = np.clip(np.where(seen, losses, fill), 0.0, None)
    total = scores.sum()
    if total <= 0:
        return np.full(n, 1.0 / n)
    return (1.0 - floor) * scores / total + floor / n


def importance_weights(draws: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct windows among ``draws`` (K draws with replacement) and their weights ``count / (K * p)``.

    ``sum_i weight_i * g_i`` over the returned windows is an unbiased estimate of ``sum over all windows g_i``.
    """
    draws = np.asarray(draws, dtype=np.int64)
    k = draws.size
    indices, counts = np.unique(draws, return_counts=True)
    return indices, counts / (k * probabilities[indices])


def select_windows(
    losses: np.ndarray, fraction: float, rng: np.random.Generator, floor: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Draw windows for hard-example mining, with importance weights that keep the gradient unbiased.

    Parameters
    ----------
    losses : (n,) array
        The most recent loss of every window of the group (NaN for never seen).
    fraction : float
        Share of the group to train on, in (0, 1]; ``K = ceil(fraction * n)`` draws with replacement.
    rng : numpy.random.Generator
    floor : float
        Uniform share of the sampling distribution (see :func:`window_probabilities`).

    Returns
    -------
    indices : (m,) int array, sorted, ``m <= K`` distinct windows.
    weights : (m,) float array: multiply each window's loss by it (``window_weight`` of :func:`centre_loss_sum`).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"hard-mining fraction {fraction} must be in (0, 1]")
    probabilities = window_probabilities(losses, floor)
    k = max(1, math.ceil(fraction * probabilities.size))
    draws = rng.choice(probabilities.size, size=k, replace=True, p=probabilities)
    return importance_weights(draws, probabilities)


# -- accumulation and step ----------------------------------------------------------------------------------
@dataclass
class StepResult:
    """What one PGD step did.

    Attributes
    ----------
    loss : float
        The group loss: sum over windows of ``window_weight * loss_sum / normaliser`` (the mean pixel CE when
        every window of the group took part with weight 1).
    window_losses : dict
        Window index -> raw loss sum (weighted CE sum, before any window weight), for hard-example mining.
    window_pixels : dict
        Window index -> the window's scored pixels (its sum of coverage weights), as float32.
    windows : int
        Windows accumulated.
    stepped : bool
        False when the GradScaler skipped the step (inf/NaN gradients) or no window was accumulated.
    grad_norm : float or None
        Total gradient norm before clipping (when clipping was asked).
    """

    loss: float = 0.0
    window_losses: dict = field(default_factory=dict)
    window_pixels: dict = field(default_factory=dict)
    windows: int = 0
    stepped: bool = False
    grad_norm: float | None = None


class PGDAccumulator:
    """Accumulates window gradients over a group, then makes one optimizer step.

    Parameters
    ----------
    model : torch.nn.Module
        In training mode, with the norm policy applied (``set_norm_mode``) by the caller.
    optimizer : torch.optim.Optimizer
    normaliser : float
        The group normaliser (:func:`group_normaliser`); every window loss is divided by it.
    scaler : torch.amp.GradScaler, optional
        For float16 autocast on CUDA: one scale for the whole accumulated step.
    autocast_dtype : torch.dtype, optional
        ``torch.bfloat16`` or ``torch.float16`` to run the forward pass under autocast; None for full precision.
    device : torch.device or str, optional
        Where batches go; defaults to the model's parameters' device.
    max_grad_norm : float, optional
        Clip the accumulated gradient to this total norm before stepping.
    class_weights : (K,) tensor or array, optional
        Per-class loss weights (:func:`pixel_weights`); ``normaliser`` must then be the class-weighted one.
    """

    def __init__(
        self, model, optimizer, normaliser, scaler=None, autocast_dtype=None, device=None, max_grad_norm=None,
        class_weights=None,
    ):
        if not normaliser or not math.isfinite(normaliser) or normaliser <= 0:
            raise TrainingError(
                f"group normaliser {normaliser} is not positive: the group has no labelled pixel; check labels and nodata"
            )
        self.model = model
        self.optimizer = optimizer
        self.normaliser = float(normaliser)
        self.scaler = scaler
        self.autocast_dtype = autocast_dtype
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.max_grad_norm = max_grad_norm
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float64)
        self.result = StepResult()

    def add(self, batch: dict, window_weight=None, sync: bool = True) -> torch.Tensor:
        """Forward and backward one batch of windows; gradients add up in ``.grad``.

        ``batch`` holds ``image`` (B,C,H,W), ``target`` (B,H,W), ``weight`` (B,H,W) and optionally ``index`` (B,)
        and ``window_weight`` (B,). ``window_weight`` given here overrides the batch's. ``sync=False`` skips the
        DistributedDataParallel all-reduce (``no_sync``) for all but the group's last batch.
        Returns the raw per-window loss sums (B,), detached.
        """
        image = batch["image"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        weight = batch["weight"].to(self.device, non_blocking=True)
        if window_weight is None:
            window_weight = batch.get("window_weight")
        no_sync = getattr(self.model, "no_sync", None)
        context = no_sync() if (not sync and no_sync is not None) else contextlib.nullcontext()
        with context:
            with self._autocast():
                logits = self.model(image)
            per_window = pixel_losses(logits, target, weight, self.class_weights).flatten(1).sum(1)
            weighted = per_window
            if window_weight is not None:
                weighted = per_window * torch.as_tensor(
                    window_weight, dtype=per_window.dtype, device=per_window.device
                )
            loss = weighted.sum() / self.normaliser
            if self.scaler is None and not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(float(loss.detach()))
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        raw = per_window.detach()
        if self.class_weights is not None:  # the loss table's pixel counts: the same weights as the loss
            weight = pixel_weights(target, weight, self.class_weights, torch.float32)
        self._record(batch.get("index"), raw, weight, float(loss.detach()))
        return raw

    def step(self) -> StepResult:
        """Apply the accumulated gradient (one optimizer step), zero the gradients and return the step's result.

        The step is taken when any parameter holds a gradient: after accumulating at least one batch, or after a
        distributed all-reduce gave this rank its peers' gradients although it had no window of its own.
        """
        result = self.result
        if any(p.grad is not None for group in self.optimizer.param_groups for p in group["params"]):
            if self.scaler is not None:
                if self.max_grad_norm is not None:
                    self.scaler.unscale_(self.optimizer)
                    result.grad_norm = self._clip()
                scale_before = self.scaler.get_scale()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                result.stepped = self.scaler.get_scale() >= scale_before
            else:
                if self.max_grad_norm is not None:
                    result.grad_norm = self._clip()
                self.optimizer.step()
                result.stepped = True
        self.optimizer.zero_grad(set_to_none=True)
        self.result = StepResult()
        return result

    def _clip(self) -> float:
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        return float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _record(self, index, raw: torch.Tensor, weight: torch.Tensor, loss: float) -> None:
        result = self.result
        result.loss += loss
        if index is not None:
            pixels = weight.float().sum(dim=(1, 2)).cpu().numpy()
            raw_values = raw.float().cpu().numpy()
            for i, value, count in zip(_as_numpy(index).reshape(-1).tolist(), raw_values, pixels):
                result.window_losses[int(i)] = float(value)
                result.window_pixels[int(i)] = np.float32(count)
        result.windows += int(raw.numel())


def pgd_step(
    model,
    optimizer,
    batches: Iterable[dict],
    normaliser: float,
    scaler=None,
    autocast_dtype=None,
    device=None,
    max_grad_norm=None,
    window_weights: dict | None = None,
    reduce_gradients=None,
    on_batch=None,
    class_weights=None,
) -> StepResult:
    """One PGD step: accumulate the gradients of every batch of the group, then one optimizer step.

    Parameters
    ----------
    batches : iterable of dict
        The group's window batches (see :meth:`PGDAccumulator.add`).
    normaliser : float
        :func:`group_normaliser` of the group.
    window_weights : dict, optional
        Window index -> loss multiplier (e.g. importance weights from :func:`select_windows`); batches then need
        an ``index`` entry. Windows absent from it get weight 1.
    scaler, autocast_dtype, device, max_grad_norm
        See :class:`PGDAccumulator`.
    reduce_gradients : callable, optional
        ``reduce_gradients(model)`` runs once after the group's gradients are accumulated and before the
        optimizer step: distributed training sums the ranks' gradients there (one all-reduce per step).
    on_batch : callable, optional
        ``on_batch(windows, result)`` after every batch, with the batch's window count and the step so far.
    class_weights : (K,) tensor or array, optional
        Per-class loss weights (:func:`pixel_weights`); ``normaliser`` is then the group's sum of pixel weights
        (:func:`group_normaliser` with the same ``class_weights``).
    """
    accumulator = PGDAccumulator(model, optimizer, normaliser, scaler, autocast_dtype, device, max_grad_norm,
                                 class_weights)
    optimizer.zero_grad(set_to_none=True)
    for batch, is_last in _with_last(batches):
        multiplier = None
        if window_weights is not None:
            if "index" not in batch:
                raise TrainingError(
                    "window weights need batches with an 'index' entry; use the rs-pgd WindowDataset"
                )
            multiplier = torch.tensor(
                [float(window_weights.get(int(i), 1.0)) for i in _as_numpy(batch["index"]).reshape(-1)]
            )
        accumulator.add(batch, window_weight=multiplier, sync=is_last)
        if on_batch is not None:
            on_batch(int(batch["image"].shape[0]), accumulator.result)
    if reduce_gradients is not None:
        reduce_gradients(model)
    return accumulator.step()


def _with_last(items: Iterable) -> Iterator[tuple]:
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True


def _model_device(model) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")
