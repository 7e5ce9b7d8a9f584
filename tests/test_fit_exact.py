"""``rs_pgd.fit`` takes exactly the whole-scene gradient step when PGD's conditions hold, and not otherwise.

This goes through the code users run: ``rs_pgd.fit`` reads the scene and a label raster window by window, plans
the group, and steps through :func:`rs_pgd.pgd.pgd_step`. The reference is computed another way: the whole scene,
read with rasterio in one piece, normalised with the checkpoint's statistics, reflect-padded, run through a copy
of the same toy net (float64, frozen BatchNorm), and one SGD step on the mean pixel cross-entropy of the labelled
scene pixels. The toy net's receptive-field radius is 17 px; the exact case uses a 32 px margin.
"""

import copy
import json

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.transform import from_origin
from safetensors.torch import load_file
from toynet import ToyNet

from rs_pgd import fit

H, W, BANDS, CLASSES, FACTOR = 96, 128, 3, 3, 8
LR = 0.05


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def scene_and_labels(tmp_path):
    """A smooth random 3-band float32 scene and a label raster on its grid (values 1..3, 0 = nodata)."""
    rng = np.random.default_rng(7)
    image = rng.normal(size=(BANDS, H, W)) * 40 + 300
    image = (image + np.roll(image, 1, axis=1) + np.roll(image, 1, axis=2)).astype(np.float32)
    labels = rng.integers(1, CLASSES + 1, size=(H, W)).astype(np.uint8)
    labels[10:30, 50:90] = 0  # unlabelled
    profile = dict(driver="GTiff", width=W, height=H, crs="EPSG:32618", transform=from_origin(500000, 4000000, 30, 30))
    scene, label_path = tmp_path / "scene.tif", tmp_path / "labels.tif"
    with rasterio.open(scene, "w", count=BANDS, dtype="float32", **profile) as dst:
        dst.write(image)
    with rasterio.open(label_path, "w", count=1, dtype="uint8", nodata=0, **profile) as dst:
        dst.write(labels, 1)
    return scene, label_path


def one_fit_step(scene, labels, output, net, **changes):
    # one step per pass over the scene and no class weights: the defaults (auto) would group the 12 windows and
    # weight the classes; test_class_weighted_step_is_the_whole_scene_weighted_step covers the weights
    options = dict(tile=32, margin=32, epochs=1, max_steps=1, optimizer="sgd", lr=LR, weight_decay=0.0,
                   norm="frozen", precision="32", device="cpu", augment=False, val_fraction=0.0, workers=0,
                   batch_size=4, progress=False, seed=0, step_every="scene", class_weights="none")
    fit(scene, labels, output, model=net, **(options | changes))
    return load_file(output)


def whole_scene_sgd_step(net, scene, labels, stats: dict, margin: int, class_weights=None) -> dict:
    """One SGD step on the mean CE of the labelled pixels, the net run once on the whole reflect-padded scene
    (with ``class_weights``, the class-weighted mean: ``sum w_y CE / sum w_y``, torch's own weighted CE)."""
    with rasterio.open(scene) as src:
        image = src.read()
    with rasterio.open(labels) as src:
        values = src.read(1)
    mean = np.asarray(stats["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(stats["std"], dtype=np.float32)[:, None, None]
    normalised = (image.astype(np.float32) - mean) / std
    pad = max(margin, FACTOR)
    padded = np.pad(normalised, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    target = torch.from_numpy(values.astype(np.int64) - 1)
    labelled = torch.from_numpy(values > 0)
    net = copy.deepcopy(net).eval()  # frozen BatchNorm: running statistics
    net.zero_grad(set_to_none=True)
    logits = net(torch.from_numpy(padded[None]).double())[0, :, pad : pad + H, pad : pad + W]
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float64)
    loss = F.cross_entropy(logits[:, labelled].T, target[labelled], weight=weight)  # mean over labelled pixels
    loss.backward()
    with torch.no_grad():
        return {name: (p - LR * p.grad).detach() for name, p in net.named_parameters()}


def update_error(fitted: dict, reference: dict, initial: dict) -> float:
    """Relative L2 error of fit's weight update against the reference update, over all parameters."""
    got = torch.cat([(fitted[k] - initial[k]).reshape(-1) for k in reference])
    want = torch.cat([(reference[k] - initial[k]).reshape(-1) for k in reference])
    return float(torch.linalg.norm(got - want) / torch.linalg.norm(want))


def run_case(scene_and_labels, tmp_path, reference_weights=None, **changes):
    scene, labels = scene_and_labels
    tmp_path.mkdir(exist_ok=True)
    net = ToyNet(BANDS, CLASSES, depth=1, factor=FACTOR).double()
    initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
    reference_net = copy.deepcopy(net)
    fitted = one_fit_step(scene, labels, tmp_path / "m.safetensors", net, **changes)
    from rs_pgd.checkpoint import read_header

    meta = read_header(tmp_path / "m.safetensors")
    assert meta.classes["values"] == [1, 2, 3]
    assert all(fitted[k].dtype == torch.float64 for k in initial if initial[k].is_floating_point())
    reference = whole_scene_sgd_step(reference_net, scene, labels, meta.stats, changes.get("margin", 32),
                                     reference_weights)
    return update_error(fitted, reference, initial)


def test_one_fit_step_is_the_whole_scene_sgd_step(scene_and_labels, tmp_path):
    assert run_case(scene_and_labels, tmp_path) <= 1e-10


@pytest.mark.parametrize("broken", [{"norm": "batch"}, {"margin": 0}], ids=["batch-norm-statistics", "margin-0"])
def test_breaking_a_condition_breaks_the_equality(scene_and_labels, tmp_path, broken):
    """Train-mode BatchNorm (statistics per batch) or a margin below the 17 px receptive field: not exact."""
    assert run_case(scene_and_labels, tmp_path, **broken) > 1e-6


def test_class_weighted_step_is_the_whole_scene_weighted_step(scene_and_labels, tmp_path):
    """--class-weights (auto, and a file): per-pixel weights keep PGD exact when the group normaliser is the sum
    of pixel weights; against torch's weighted CE on the whole scene. Unweighted, the same step is far off."""
    scene, labels = scene_and_labels
    with rasterio.open(labels) as src:
        values = src.read(1)
    share = np.bincount(values[values > 0] - 1, minlength=CLASSES) / (values > 0).sum()
    auto = np.minimum(share ** -0.5 / (share * share ** -0.5).sum(), 10.0)  # the documented auto rule
    assert auto.max() / auto.min() > 1.001  # the classes are not balanced, so the weights matter
    assert run_case(scene_and_labels, tmp_path / "auto", auto, class_weights="auto") <= 1e-10
    given = [0.25, 1.0, 3.5]
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"1": given[0], "2": given[1], "3": given[2]}))
    assert run_case(scene_and_labels, tmp_path / "file", given, class_weights=str(path)) <= 1e-10
    # teeth: fit with the file's weights is far from the unweighted whole-scene step
    assert run_case(scene_and_labels, tmp_path / "unweighted", class_weights=str(path)) > 1e-3
