"""PGD step: the sum of window gradients equals the whole-scene gradient when the conditions hold, and not otherwise.

Everything runs in float64 with the toy net of ``toynet.py`` (output stride 8, receptive-field radius 17) on a
96 x 128 scene. The reference is the gradient of the mean pixel cross-entropy of the whole reflect-padded scene.
"""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toynet import ToyNet

from rs_pgd.errors import TrainingError
from rs_pgd.grid import WindowGrid
from rs_pgd.models import apply_norm_policy, set_norm_mode
from rs_pgd.pgd import (
    PGDAccumulator,
    centre_loss_sum,
    group_normaliser,
    importance_weights,
    pgd_step,
    select_windows,
    window_probabilities,
)

H, W, BANDS, CLASSES, FACTOR = 96, 128, 3, 3, 8
PAD = 64  # reflect padding of the whole scene, a multiple of FACTOR, larger than any margin + shift used here


# -- fixtures and helpers -----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _float64_one_thread():
    """float64 by default; one thread (tiny tensors run ~10x faster than with threads on a busy 2-core machine)."""
    previous, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(previous)
    torch.set_num_threads(threads)


@pytest.fixture
def scene():
    """A smooth random image, random class labels and a block of unlabelled pixels (255)."""
    rng = np.random.default_rng(42)
    image = rng.normal(size=(BANDS, H, W))
    image = image + np.roll(image, 1, axis=1) + np.roll(image, 1, axis=2)
    labels = rng.integers(0, CLASSES, size=(H, W)).astype(np.int64)
    labels[10:30, 50:90] = 255  # nodata / unlabelled
    return image, labels


def padded(image, labels):
    """The whole scene reflect-padded by PAD on every side; labels padded with 255."""
    big = np.pad(image, ((0, 0), (PAD, PAD), (PAD, PAD)), mode="reflect")
    lab = np.pad(labels, PAD, mode="constant", constant_values=255)
    return big, lab


def frozen_toynet(depth=1):
    model = ToyNet(BANDS, CLASSES, depth=depth, factor=FACTOR).double()
    apply_norm_policy(model, "frozen")
    return model.train()


def flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()


def rel(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def whole_scene_gradient(model, image, labels):
    """Gradient of the mean CE over labelled scene pixels, the model run on the whole reflect-padded scene."""
    big, _ = padded(image, labels)
    model.zero_grad(set_to_none=True)
    logits = model(torch.from_numpy(big)[None])[:, :, PAD : PAD + H, PAD : PAD + W]
    loss = F.cross_entropy(logits, torch.from_numpy(labels)[None], ignore_index=255)
    loss.backward()
    return flat_grad(model), float(loss.detach())


def window_batches(grid, image, labels, kind="uniform", shift=0, batch_size=4):
    """Window batches as the dataset yields them, cut from the padded scene (``shift`` moves the window origin).

    A shifted window is FACTOR px larger so that its margins stay >= the receptive field on both sides.
    """
    big, lab = padded(image, labels)
    table = grid.weight_table(kind)
    items = []
    for w in grid:
        size = w.size + (FACTOR if shift else 0)
        r0, c0 = w.window_row_off - shift + PAD, w.window_col_off - shift + PAD
        window_image = big[:, r0 : r0 + size, c0 : c0 + size]
        target = np.full((size, size), 255, dtype=np.int64)
        weight = np.zeros((size, size))
        centre = slice(w.margin + shift, w.margin + shift + w.tile)
        cr, cc = w.row_off + PAD, w.col_off + PAD
        target[centre, centre] = lab[cr : cr + w.tile, cc : cc + w.tile]
        weight[centre, centre] = table.centre(w)
        items.append((w.index, window_image, target, weight))
    batches = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batches.append(
            {
                "index": torch.tensor([c[0] for c in chunk]),
                "image": torch.from_numpy(np.stack([c[1] for c in chunk])),
                "target": torch.from_numpy(np.stack([c[2] for c in chunk])),
                "weight": torch.from_numpy(np.stack([c[3] for c in chunk])),
            }
        )
    return batches


def accumulated_gradient(model, batches, normaliser, window_weights=None):
    """Sum of window gradients through PGDAccumulator (no optimizer step)."""
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    accumulator = PGDAccumulator(model, optimizer, normaliser)
    for batch in batches:
        multiplier = None
        if window_weights is not None:
            multiplier = torch.tensor([window_weights.get(int(i), 0.0) for i in batch["index"]])
        accumulator.add(batch, window_weight=multiplier)
    return flat_grad(model), accumulator.result


def normaliser_of(batches):
    return group_normaliser((b["target"], b["weight"]) for b in batches)


# -- exactness ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tile, stride, kind",
    [
        (32, 32, "uniform"),
        (32, 16, "uniform"),
        (32, 16, "position"),
        (32, 32, "position"),
        (48, 24, "linear"),
    ],
)
def test_window_gradients_sum_to_whole_scene_gradient(scene, tile, stride, kind):
    image, labels = scene
    model = frozen_toynet()
    reference, ref_loss = whole_scene_gradient(model, image, labels)
    grid = WindowGrid(H, W, tile=tile, margin=24, stride=stride, align=FACTOR)
    assert model.rf_radius <= grid.margin
    batches = window_batches(grid, image, labels, kind)
    normaliser = normaliser_of(batches)
    assert normaliser == pytest.approx(np.count_nonzero(labels != 255), rel=1e-12)
    gradient, result = accumulated_gradient(model, batches, normaliser)
    assert rel(gradient, reference) <= 1e-10
    assert result.loss == pytest.approx(ref_loss, rel=1e-10)
    assert result.windows == len(grid) and sorted(result.window_losses) == list(range(len(grid)))


@pytest.mark.parametrize("margin", [8, 16])
def test_margin_smaller_than_receptive_field_breaks_exactness(scene, margin):
    image, labels = scene
    model = frozen_toynet()
    reference, _ = whole_scene_gradient(model, image, labels)
    grid = WindowGrid(H, W, tile=32, margin=margin, align=FACTOR)
    assert margin < model.rf_radius
    batches = window_batches(grid, image, labels)
    gradient, _ = accumulated_gradient(model, batches, normaliser_of(batches))
    assert rel(gradient, reference) > 1e-6


def test_misaligned_window_origin_breaks_exactness(scene):
    image, labels = scene
    model = frozen_toynet()
    reference, _ = whole_scene_gradient(model, image, labels)
    grid = WindowGrid(H, W, tile=32, margin=24, align=FACTOR)
    # a shift by the output stride is harmless ...
    aligned = window_batches(grid, image, labels, shift=FACTOR)
    gradient, _ = accumulated_gradient(model, aligned, normaliser_of(aligned))
    assert rel(gradient, reference) <= 1e-10
    shifted = window_batches(grid, image, labels, shift=4)  # ... a shift by half of it is not
    gradient, _ = accumulated_gradient(model, shifted, normaliser_of(shifted))
    assert rel(gradient, reference) > 1e-3


def test_train_mode_batchnorm_breaks_exactness(scene):
    image, labels = scene
    grid = WindowGrid(H, W, tile=32, margin=24, align=FACTOR)
    batches = window_batches(grid, image, labels)
    model = ToyNet(BANDS, CLASSES, factor=FACTOR).double().train()  # plain BatchNorm, batch statistics
    reference, _ = whole_scene_gradient(model, image, labels)
    gradient, _ = accumulated_gradient(model, batches, normaliser_of(batches))
    assert rel(gradient, reference) > 1e-3
    set_norm_mode(model, "frozen")  # the same model with eval-mode BN after train(): exact again
    reference, _ = whole_scene_gradient(model, image, labels)
    gradient, _ = accumulated_gradient(model, batches, normaliser_of(batches))
    assert rel(gradient, reference) <= 1e-10


# -- what does and does not count ---------------------------------------------------------------------------
def test_labels_in_margins_do_not_change_the_gradient(scene):
    image, labels = scene
    model = frozen_toynet()
    grid = WindowGrid(H, W, tile=32, margin=24, align=FACTOR)
    batches = window_batches(grid, image, labels)
    normaliser = normaliser_of(batches)
    base, _ = accumulated_gradient(model, batches, normaliser)
    rng = np.random.default_rng(1)
    for batch in batches:
        in_margin = batch["weight"] == 0
        in_margin[:, 24:56, 24:56] = False
        random_labels = torch.from_numpy(rng.integers(0, CLASSES, size=batch["target"].shape))
        batch["target"] = torch.where(in_margin, random_labels, batch["target"])
    changed, _ = accumulated_gradient(model, batches, normaliser)
    assert torch.equal(changed, base)
    # a centre label does count
    batches[0]["target"][0, 30, 30] = (batches[0]["target"][0, 30, 30] + 1) % CLASSES
    assert not torch.equal(accumulated_gradient(model, batches, normaliser)[0], base)


def test_unlabelled_pixels_contribute_nothing(scene):
    image, labels = scene
    model = frozen_toynet()
    grid = WindowGrid(H, W, tile=32, margin=24, align=FACTOR)
    batches = window_batches(grid, image, labels)
    normaliser = normaliser_of(batches)
    base, _ = accumulated_gradient(model, batches, normaliser)
    for batch in batches:  # give the unlabelled pixels a class but zero weight: same loss, same gradient
        unlabelled = batch["target"] == 255
        batch["weight"] = torch.where(unlabelled, torch.zeros_like(batch["weight"]), batch["weight"])
        batch["target"] = torch.where(unlabelled, torch.ones_like(batch["target"]), batch["target"])
    assert normaliser_of(batches) == pytest.approx(normaliser, rel=1e-12)
    assert rel(accumulated_gradient(model, batches, normaliser)[0], base) <= 1e-12
    assert group_normaliser([(np.array([255, 0, 255]), np.ones(3))]) == 1.0


def test_centre_loss_sum_ignores_255_and_applies_window_weight():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, 0] = 255
    weight = torch.rand(2, 4, 4)
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert ce[0, 0, 0] == 0
    assert float(centre_loss_sum(logits, target, weight)) == pytest.approx(
        float((ce * weight).sum()), rel=1e-12
    )
    weighted = centre_loss_sum(logits, target, weight, window_weight=torch.tensor([2.0, 0.5]))
    expected = 2.0 * (ce[0] * weight[0]).sum() + 0.5 * (ce[1] * weight[1]).sum()
    assert float(weighted) == pytest.approx(float(expected), rel=1e-12)


def test_window_weighting_scales_each_window_gradient(scene):
    image, labels = scene
    model = frozen_toynet()
    grid = WindowGrid(64, 64, tile=32, margin=24, align=FACTOR)
    batches = window_batches(grid, image[:, :64, :64], labels[:64, :64], batch_size=1)
    normaliser = normaliser_of(batches)
    singles = [accumulated_gradient(model, [b], normaliser)[0] for b in batches]
    factors = {0: 0.5, 1: 2.0, 2: 0.0, 3: 3.0}
    weighted, _ = accumulated_gradient(model, batches, normaliser, window_weights=factors)
    expected = sum(factors[i] * g for i, g in enumerate(singles))
    assert rel(weighted, expected) <= 1e-12


# -- hard-example mining ------------------------------------------------------------------------------------
def test_hard_mining_with_importance_weights_is_unbiased_by_exact_enumeration(scene):
    """E[sum of selected window gradients * importance weights] over every possible draw == full gradient."""
    image, labels = scene
    model = frozen_toynet()
    grid = WindowGrid(64, 64, tile=32, margin=24, align=FACTOR)
    batches = window_batches(grid, image[:, :64, :64], labels[:64, :64], batch_size=1)
    normaliser = normaliser_of(batches)
    full, _ = accumulated_gradient(model, batches, normaliser)
    losses = np.array([5.0, 1.0, 0.0, np.nan])  # uneven, with a zero-loss and a never-seen window
    p = window_probabilities(losses, floor=0.1)
    assert p.sum() == pytest.approx(1.0) and p.min() >= 0.1 / 4 - 1e-15
    k = 2
    expectation = torch.zeros_like(full)
    naive = torch.zeros_like(full)
    for draws in itertools.product(range(4), repeat=k):
        probability = math.prod(p[d] for d in draws)
        indices, weights = importance_weights(np.array(draws), p)
        chosen = [batches[i] for i in indices]
        estimate, _ = accumulated_gradient(
            model, chosen, normaliser, dict(zip(indices.tolist(), weights.tolist()))
        )
        expectation += probability * estimate
        counts = dict(zip(*np.unique(draws, return_counts=True)))
        naive_weights = {int(i): c * 4 / k for i, c in counts.items()}  # rescaled, but no 1/p correction
        naive += probability * accumulated_gradient(model, chosen, normaliser, naive_weights)[0]
    assert rel(expectation, full) <= 1e-10
    assert rel(naive, full) > 1e-2


def test_select_windows_draws_in_proportion_to_loss():
    losses = np.array([8.0, 4.0, 0.0, 2.0, np.nan, 1.0, 1.0, 0.0])
    p = window_probabilities(losses, floor=0.2)
    assert p[4] == pytest.approx(p[0])  # never seen counts as the largest loss
    assert p[2] == pytest.approx(0.2 / 8)  # zero loss keeps the floor
    rng = np.random.default_rng(0)
    hits = np.zeros(8)
    total_weight = 0.0
    for _ in range(2000):
        indices, weights = select_windows(losses, 0.25, rng, floor=0.2)
        assert np.all(np.diff(indices) > 0) and np.all(weights > 0)
        hits[indices] += 1
        total_weight += weights.sum()
    assert hits[0] > hits[3] > hits[2] > 0
    # sum of importance weights estimates the window count without bias
    assert total_weight / 2000 == pytest.approx(8.0, rel=0.05)
    assert np.allclose(window_probabilities(np.zeros(5)), 0.2)
    with pytest.raises(ValueError, match="fraction"):
        select_windows(losses, 0.0, rng)


# -- the optimizer step -------------------------------------------------------------------------------------
def test_pgd_step_applies_one_step_of_the_whole_scene_gradient(scene):
    image, labels = scene
    model = frozen_toynet()
    reference, ref_loss = whole_scene_gradient(model, image, labels)
    before = [p.detach().clone() for p in model.parameters()]
    grid = WindowGrid(H, W, tile=32, margin=24, stride=16, align=FACTOR)
    batches = window_batches(grid, image, labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = pgd_step(model, optimizer, batches, normaliser_of(batches))
    assert result.stepped and result.loss == pytest.approx(ref_loss, rel=1e-10)
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    expected = torch.cat([b.reshape(-1) for b in before]) - 0.1 * reference
    assert rel(after, expected) <= 1e-12
    assert all(p.grad is None for p in model.parameters())


def test_pgd_step_with_importance_weights_and_clipping(scene):
    image, labels = scene
    model = frozen_toynet()
    grid = WindowGrid(H, W, tile=32, margin=24, align=FACTOR)
    batches = window_batches(grid, image, labels)
    normaliser = normaliser_of(batches)
    weights = {i: 0.0 for i in range(len(grid))} | {0: 2.0, 5: 0.5}
    expected, _ = accumulated_gradient(model, batches, normaliser, weights)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    chosen = [b for b in batches if (b["index"] == 0).any() or (b["index"] == 5).any()]
    result = pgd_step(model, optimizer, chosen, normaliser, window_weights=weights, max_grad_norm=1e-3)
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert result.grad_norm == pytest.approx(float(torch.linalg.norm(expected)), rel=1e-10)
    step = before - after
    assert float(torch.linalg.norm(step)) == pytest.approx(1e-3, rel=1e-4)  # clipped to max_grad_norm
    assert float(torch.nn.functional.cosine_similarity(step, expected, dim=0)) == pytest.approx(1.0, abs=1e-9)


def test_grad_scaler_gives_the_same_step(scene):
    """A GradScaler multiplies by a power of two and divides it back: the step is the same."""
    image, labels = scene
    grid = WindowGrid(64, 64, tile=32, margin=24, align=FACTOR)
    steps = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        model = ToyNet(BANDS, CLASSES, factor=FACTOR).float()
        apply_norm_policy(model, "frozen")
        model.train()
        batches = window_batches(grid, image[:, :64, :64].astype(np.float32), labels[:64, :64])
        for b in batches:
            b["image"], b["weight"] = b["image"].float(), b["weight"].float()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        result = pgd_step(model, optimizer, batches, normaliser_of(batches), scaler=scaler)
        assert result.stepped
        steps.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.allclose(steps[0], steps[1], rtol=1e-6, atol=1e-7)


def test_bf16_autocast_runs_and_stays_close(scene):
    image, labels = scene
    grid = WindowGrid(64, 64, tile=32, margin=24, align=FACTOR)
    losses = []
    for dtype in (None, torch.bfloat16):
        model = ToyNet(BANDS, CLASSES, factor=FACTOR).float()
        apply_norm_policy(model, "frozen")
        batches = window_batches(grid, image[:, :64, :64], labels[:64, :64])
        for b in batches:
            b["image"], b["weight"] = b["image"].float(), b["weight"].float()
        result = pgd_step(
            model.train(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            batches,
            normaliser_of(batches),
            autocast_dtype=dtype,
        )
        losses.append(result.loss)
    assert math.isfinite(losses[1]) and losses[1] == pytest.approx(losses[0], rel=0.05)


def test_empty_group_and_nan_loss_raise_training_error(scene):
    model = frozen_toynet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingError, match="no labelled pixel"):
        pgd_step(model, optimizer, [], 0.0)
    image, labels = scene
    grid = WindowGrid(64, 64, tile=32, margin=24, align=FACTOR)
    batches = window_batches(grid, image[:, :64, :64], labels[:64, :64])
    batches[0]["image"][0, 0, 40, 40] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingError, match="loss became nan"):
        pgd_step(model, optimizer, batches, normaliser_of(batches))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
