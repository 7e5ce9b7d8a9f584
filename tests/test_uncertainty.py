"""``predict --uncertainty``: the per-pixel uncertainty COG, checked against the probabilities of the same run."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from conftest import write_demo_crop
from helpers_models import random_checkpoint

from rs_pgd.errors import OptionError, OutputError
from rs_pgd.uncertainty import DESCRIPTIONS, KINDS, decode, encode, uncertainty


# -- the measures ------------------------------------------------------------------------------------------------
def test_measures_on_known_probabilities():
    p = np.array([[1.0, 0.5, 0.4, 1 / 3], [0.0, 0.5, 0.35, 1 / 3], [0.0, 0.0, 0.25, 1 / 3]], dtype=np.float32)
    np.testing.assert_allclose(uncertainty(p, "least-confidence"), [0.0, 0.5, 0.6, 2 / 3], atol=1e-6)
    np.testing.assert_allclose(uncertainty(p, "margin"), [0.0, 1.0, 0.95, 1.0], atol=1e-6)
    h = -(0.4 * np.log(0.4) + 0.35 * np.log(0.35) + 0.25 * np.log(0.25)) / np.log(3)
    np.testing.assert_allclose(uncertainty(p, "entropy"), [0.0, np.log(2) / np.log(3), h, 1.0], atol=1e-6)


def test_nan_stays_nan_and_is_stored_as_nodata():
    p = np.array([[0.9, np.nan], [0.1, np.nan]], dtype=np.float32)
    for kind in KINDS:
        u = uncertainty(p, kind)
        assert np.isfinite(u[0]) and np.isnan(u[1])
        assert list(encode(u)) == [round(float(u[0]) * 254), 255]
    assert np.isnan(decode(np.array([255], dtype=np.uint8))[0]) and decode(np.array([254], dtype=np.uint8))[0] == 1


def test_unknown_kind_is_refused():
    with pytest.raises(OptionError, match="--uncertainty-kind 'gini' .*least-confidence, margin, entropy"):
        uncertainty(np.ones((2, 1)), "gini")


# -- through predict ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_and_scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uncertainty")
    model = random_checkpoint(folder / "m3.safetensors", classes=3)
    scene = write_demo_crop(folder / "crop.tif", 192, row_off=0, col_off=0)  # the corner: nodata beside data
    return model, scene


COMMON = dict(tile=64, margin=32, probability_dtype="float32", precision="32", workers=0, progress=False)


@pytest.fixture(scope="module")
def runs(model_and_scene, tmp_path_factory):
    """One predict per measure, each with float32 probabilities: ``{kind: (result, folder)}``."""
    from rs_pgd import predict

    model, scene = model_and_scene
    out = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind)
        result = predict(model, scene, folder / "classes.tif", probabilities=folder / "p.tif",
                         uncertainty=folder / "u.tif", uncertainty_kind=kind, **COMMON)  # fmt: skip
        out[kind] = result
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_uncertainty_equals_the_measure_of_the_float32_probabilities(runs, kind):
    result = runs[kind]
    assert result.uncertainty is not None and result.uncertainty.is_file()
    with rasterio.open(result.probabilities) as ds:
        probs = ds.read()
    with rasterio.open(result.output) as ds:
        classes = ds.read(1)
        grid = (ds.crs, ds.transform, ds.width, ds.height)
    with rasterio.open(result.uncertainty) as ds:
        stored = ds.read(1)
        assert (ds.crs, ds.transform, ds.width, ds.height) == grid
        assert ds.count == 1 and ds.dtypes[0] == "uint8" and ds.nodata == 255
        assert ds.descriptions[0] == DESCRIPTIONS[kind]  # names the measure
        assert ds.scales[0] == pytest.approx(1 / 254)
        assert ds.tags(1)["UNCERTAINTY"] == kind
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    nodata = classes == 255
    assert 0.05 < nodata.mean() < 0.95  # the crop holds nodata and data
    assert np.array_equal(stored == 255, nodata)  # nodata exactly where the class map is nodata
    expected = np.rint(np.clip(uncertainty(probs, kind), 0, 1) * 254)
    assert np.array_equal(stored[~nodata], expected[~nodata].astype(np.uint8))  # exact, after the uint8 rounding
    assert len(np.unique(stored[~nodata])) > 20  # a real spread of values, not a constant


def test_least_confidence_is_one_minus_the_max_probability(runs):
    result = runs["least-confidence"]
    with rasterio.open(result.probabilities) as ds:
        probs = ds.read()
    with rasterio.open(result.uncertainty) as ds:
        u = ds.read(1, masked=True)
    valid = ~u.mask
    np.testing.assert_allclose(u.data[valid] / 254, (1 - probs.max(axis=0))[valid], atol=0.5 / 254 + 1e-6)


def test_the_measures_differ(runs):
    arrays = {}
    for kind, result in runs.items():
        with rasterio.open(result.uncertainty) as ds:
            arrays[kind] = ds.read(1).astype(int)
    valid = arrays["entropy"] != 255
    assert (arrays["least-confidence"] != arrays["entropy"])[valid].mean() > 0.5
    assert (arrays["least-confidence"] != arrays["margin"])[valid].mean() > 0.5


@pytest.mark.parametrize("case,error,match", [
    ("png", OutputError, r"--uncertainty u.png ends in .png.*GeoTIFF.*u.tif"),
    ("scene", OutputError, r"--uncertainty: output .*crop.tif is also an input"),
    ("output", OutputError, r"--uncertainty .*same file as output"),
    ("probabilities", OutputError, r"same file as --probabilities"),
    ("missing-dir", OutputError, r"--uncertainty: directory .*nowhere does not exist"),
    ("kind", OptionError, r"--uncertainty-kind 'gini'"),
])  # fmt: skip
def test_bad_uncertainty_options_are_refused_before_any_output(model_and_scene, tmp_path, case, error, match):
    from rs_pgd import predict

    model, scene = model_and_scene
    out = tmp_path / "out"
    out.mkdir()
    path = {"png": out / "u.png", "scene": scene, "output": out / "classes.tif", "probabilities": out / "p.tif",
            "missing-dir": out / "nowhere" / "u.tif", "kind": out / "u.tif"}[case]  # fmt: skip
    kind = "gini" if case == "kind" else "least-confidence"
    with pytest.raises(error, match=match):
        predict(model, scene, out / "classes.tif", probabilities=out / "p.tif", uncertainty=path,
                uncertainty_kind=kind, **COMMON)  # fmt: skip
    assert list(out.iterdir()) == []
