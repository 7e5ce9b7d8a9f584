"""Test-time augmentation (``predict --tta``): the D4 average of each window, stitched as before.

1. :func:`rs_pgd.tta.d4_forward` leaves a D4-equivariant forward unchanged (softmax of the input, a per-pixel
   1x1 convolution) and changes one that is not (the toy net), where it equals the explicit mean of the eight
   transformed runs.
2. Through the real streaming path (SceneReader windows, RowStitcher), the D4-averaged toy net equals the D4 average
   of the whole-image run to 1e-10: TTA keeps predict seamless, because each window is only averaged over its own
   transforms.
3. ``rs_pgd.predict(tta=True)`` with a real (random-weight) Unet: a different output from ``tta=False``, the same
   grid, every pixel written.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from torch import nn
from toynet import ToyNet

from rs_pgd.grid import WindowGrid
from rs_pgd.raster import SceneReader
from rs_pgd.stitch import RowStitcher
from rs_pgd.tta import TRANSFORMS, apply, d4_forward, invert


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


def softmax_forward(images: np.ndarray) -> np.ndarray:
    e = np.exp(images - images.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def torch_forward(net):
    @torch.no_grad()
    def forward(images):
        x = torch.from_numpy(np.ascontiguousarray(images)).to(next(net.parameters()).dtype)
        return torch.softmax(net(x), dim=1).numpy()

    return forward


def test_the_eight_transforms_are_d4_and_invert_exactly():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    images = [apply(x, flip, turns) for flip, turns in TRANSFORMS]
    assert len({im.tobytes() for im in images}) == 8  # eight different elements
    for (flip, turns), im in zip(TRANSFORMS, images):
        assert np.array_equal(invert(im, flip, turns), x)


@pytest.mark.parametrize("name", ["softmax", "pixelwise-conv"])
def test_d4_average_of_an_equivariant_forward_is_unchanged(name):
    images = np.random.default_rng(0).normal(size=(3, 4, 64, 64)).astype(np.float32)
    if name == "softmax":
        forward = softmax_forward
    else:
        torch.manual_seed(0)
        forward = torch_forward(nn.Conv2d(4, 5, kernel_size=1).eval())
    plain, averaged = forward(images), d4_forward(forward)(images)
    assert averaged.shape == plain.shape and averaged.dtype == np.float32
    assert np.max(np.abs(averaged - plain)) <= 2e-6
    assert np.array_equal(averaged.argmax(1), plain.argmax(1))


def test_d4_average_of_the_toy_net_is_the_mean_of_its_eight_runs():
    """Teeth: the toy net is not D4-equivariant (3x3 and 8x8 kernels), so TTA changes its output."""
    net = ToyNet(in_ch=3, classes=4, depth=1, width=6, factor=8).eval()
    forward = torch_forward(net)
    images = np.random.default_rng(1).normal(size=(2, 3, 48, 48)).astype(np.float32)
    averaged = d4_forward(forward)(images)
    explicit = np.mean([invert(forward(np.ascontiguousarray(apply(images, f, t))), f, t) for f, t in TRANSFORMS],
                       axis=0)  # fmt: skip
    assert np.max(np.abs(averaged - explicit)) <= 1e-6
    assert np.max(np.abs(averaged - forward(images))) > 1e-3
    np.testing.assert_allclose(averaged.sum(axis=1), 1.0, atol=1e-5)  # still probabilities


def test_d4_forward_refuses_non_square_windows():
    with pytest.raises(ValueError, match="square"):
        d4_forward(softmax_forward)(np.zeros((1, 3, 32, 64), dtype=np.float32))


# -- 2. tiled TTA == whole-image TTA ------------------------------------------------------------------------------
H, W = 100, 77


@pytest.fixture
def toy_scene(tmp_path):
    data = np.random.default_rng(1).normal(size=(3, H, W)).astype(np.float32)
    profile = dict(driver="GTiff", crs=CRS.from_epsg(32633), transform=Affine(10.0, 0, 5e5, 0, -10.0, 4e6),
                   count=3, height=H, width=W, dtype="float32")  # fmt: skip
    with rasterio.open(tmp_path / "toy.tif", "w", **profile) as dst:
        dst.write(data)
    return tmp_path / "toy.tif"


@pytest.fixture(scope="module")
def toy_net():
    net = ToyNet(in_ch=3, classes=4, depth=1, width=6, factor=8).double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def logits_forward(net):
    @torch.no_grad()
    def forward(images):
        return net(torch.from_numpy(np.ascontiguousarray(images))).numpy()

    return forward


@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_tiled_tta_equals_whole_image_tta(toy_scene, toy_net, tta):
    stride = toy_net.output_stride
    margin = 3 * stride  # 24 >= the receptive-field radius 17
    grid = WindowGrid(H, W, tile=32, margin=margin, align=stride)
    forward = logits_forward(toy_net)
    window_fn = d4_forward(forward) if tta else forward
    reader = SceneReader(toy_scene)
    stitcher = RowStitcher(grid, 4, blend="none", dtype=np.float64)
    tiled = np.full((4, H, W), np.nan)
    pairs = ((w, window_fn(reader.read(w.bounds).image.astype(np.float64)[None])[0]) for w in grid.windows())
    for band in stitcher.finished(pairs):
        tiled[:, band.row_start : band.row_stop] = band.data

    with rasterio.open(toy_scene) as src:
        image = src.read().astype(np.float64)
    pad = 4 * stride
    bottom, right = pad + (-(H + 2 * pad)) % stride, pad + (-(W + 2 * pad)) % stride
    padded = np.pad(image, ((0, 0), (pad, bottom), (pad, right)), mode="reflect")[None]
    if tta:  # the whole padded scene transformed (not square: rot90 swaps its sides), run, mapped back, averaged
        whole = np.mean([invert(forward(np.ascontiguousarray(apply(padded, f, t))), f, t) for f, t in TRANSFORMS],
                        axis=0)[0]  # fmt: skip
    else:
        whole = forward(padded)[0]
    reference = whole[:, pad : pad + H, pad : pad + W]
    assert np.max(np.abs(tiled - reference)) <= 1e-10
    if tta:
        assert np.max(np.abs(reference - forward(padded)[0][:, pad : pad + H, pad : pad + W])) > 1e-3


# -- 3. predict(tta=True) ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    from helpers_models import random_checkpoint

    folder = tmp_path_factory.mktemp("tta_model")
    return random_checkpoint(folder / "random.safetensors", classes=3), folder


def test_predict_with_tta_differs_and_covers_the_same_grid(random_model, tmp_path):
    from conftest import write_demo_crop

    from rs_pgd import predict

    model, _ = random_model
    scene = write_demo_crop(tmp_path / "crop.tif", 192)
    common = dict(tile=64, margin=32, probability_dtype="float32", precision="32", workers=0, progress=False)
    plain = predict(model, scene, tmp_path / "plain.tif", probabilities=tmp_path / "plain_p.tif", **common)
    tta = predict(model, scene, tmp_path / "tta.tif", probabilities=tmp_path / "tta_p.tif", tta=True, **common)
    assert tta.windows == plain.windows and tta.windows_run == plain.windows_run
    with rasterio.open(plain.probabilities) as a, rasterio.open(tta.probabilities) as b:
        p, q = a.read(), b.read()
        assert a.transform == b.transform and a.crs == b.crs
    with rasterio.open(plain.output) as a, rasterio.open(tta.output) as b:
        assert np.array_equal(a.read(1) == 255, b.read(1) == 255)  # the same nodata
    valid = np.isfinite(p[0])
    assert np.array_equal(valid, np.isfinite(q[0])) and valid.mean() > 0.5
    assert np.abs(p - q)[:, valid].max() > 1e-3
    np.testing.assert_allclose(q[:, valid].sum(axis=0), 1.0, atol=1e-5)


def test_tta_and_uncertainty_run_the_same_through_onnxruntime(random_model, tmp_path):
    """The D4 average wraps the backend's numpy forward, so an exported ONNX model gives the torch result."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from conftest import write_demo_crop

    import rs_pgd

    model, folder = random_model
    onnx_path = folder / "random.onnx"
    if not onnx_path.exists():
        rs_pgd.export(model, onnx_path, tile=64, margin=32)  # the window the torch run below uses
    scene = write_demo_crop(tmp_path / "crop.tif", 128)
    common = dict(probability_dtype="float32", workers=0, progress=False, tta=True, precision="32")
    a = rs_pgd.predict(model, scene, tmp_path / "t.tif", probabilities=tmp_path / "tp.tif", uncertainty=tmp_path / "tu.tif",
                       tile=64, margin=32, **common)  # fmt: skip
    b = rs_pgd.predict(onnx_path, scene, tmp_path / "o.tif", probabilities=tmp_path / "op.tif",
                       uncertainty=tmp_path / "ou.tif", **common)  # fmt: skip
    assert (a.tile, a.margin) == (b.tile, b.margin) == (64, 32)
    with rasterio.open(a.probabilities) as x, rasterio.open(b.probabilities) as y:
        assert np.nanmax(np.abs(x.read() - y.read())) <= 1e-5
    with rasterio.open(a.uncertainty) as x, rasterio.open(b.uncertainty) as y:
        assert np.abs(x.read(1).astype(int) - y.read(1).astype(int)).max() <= 1  # uint8 rounding of ~1e-6
