"""rs_pgd.evaluate: window-by-window scores equal whole-array numpy scores; ignored pixels stay ignored."""

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from rs_pgd.errors import LabelError, OutputError, SceneError
from rs_pgd.evaluation import confusion_png, evaluate, format_table

CRS = "EPSG:32618"
TRANSFORM = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5000000.0)
VALUES = (1, 2, 5)


def write_class_map(path, array, nodata=255, tags=None):
    profile = dict(driver="GTiff", width=array.shape[1], height=array.shape[0], count=1, dtype=array.dtype.name,
                   crs=CRS, transform=TRANSFORM, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
        if tags:
            dst.update_tags(1, **tags)
    return path


def reference_scores(reference, predicted, values, ignore=255, nodata=255):
    """Whole-array float64 scores, computed directly from boolean masks (no confusion matrix)."""
    scored = (reference != ignore) & (predicted != nodata)
    ious = {}
    for v in values:
        ref_v, pred_v = (reference == v) & scored, (predicted == v) & scored
        union = np.logical_or(ref_v, pred_v).sum(dtype=np.float64)
        if union:
            ious[v] = np.logical_and(ref_v, pred_v).sum(dtype=np.float64) / union
    accuracy = ((reference == predicted) & scored).sum(dtype=np.float64) / scored.sum()
    unscored = int(((reference != ignore) & (predicted == nodata)).sum())
    return ious, float(np.mean(list(ious.values()))), float(accuracy), int(scored.sum()), unscored


@pytest.fixture
def flipped_scene(tmp_path):
    """A 97 x 131 reference with unlabelled pixels and a prediction with 15 % flipped pixels and some nodata."""
    rng = np.random.default_rng(42)
    shape = (97, 131)
    reference = np.asarray(VALUES, dtype=np.uint8)[rng.integers(0, 3, size=shape)]
    reference[rng.random(shape) < 0.1] = 255  # unlabelled
    reference[:20, :30] = 255
    predicted = reference.copy()
    predicted[reference == 255] = 1  # predictions where nothing is labelled must not count
    flip = rng.random(shape) < 0.15
    predicted[flip] = np.asarray(VALUES, dtype=np.uint8)[rng.integers(0, 3, size=int(flip.sum()))]
    predicted[rng.random(shape) < 0.05] = 255  # prediction nodata
    names = {"CLASS_NAMES": json.dumps({"1": "water", "2": "forest", "5": "urban"})}
    labels = write_class_map(tmp_path / "labels.tif", reference)
    prediction = write_class_map(tmp_path / "pred.tif", predicted, tags=names)
    return reference, predicted, labels, prediction


# ----------------------------------------------------------------------------------------------------------------
# Perfect predictions on the demo


def test_demo_label_raster_against_vector_labels(demo_label_raster, demo_labels):
    result = evaluate(demo_label_raster, demo_labels)
    assert result["miou"] >= 0.97
    assert result["accuracy"] >= 0.98
    assert [c["name"] for c in result["per_class"]] == ["water", "land"]
    assert [c["value"] for c in result["per_class"]] == [0, 1]


def test_raster_against_itself_is_exactly_one(demo_label_raster):
    result = evaluate(demo_label_raster, demo_label_raster, tile=200)
    assert result["miou"] == 1.0 and result["accuracy"] == 1.0
    with rasterio.open(demo_label_raster) as src:
        array = src.read(1)
    counts = [int((array == 0).sum()), int((array == 1).sum())]
    assert result["confusion"] == [[counts[0], 0], [0, counts[1]]]
    assert result["pixels"] == sum(counts) and result["unscored"] == 0
    assert all(c["iou"] == 1.0 and c["f1"] == 1.0 for c in result["per_class"])


# ----------------------------------------------------------------------------------------------------------------
# Flipped pixels against numpy


@pytest.mark.parametrize("tile", [16, 50, 4096])
def test_flipped_pixels_match_whole_array_numpy(flipped_scene, tile):
    reference, predicted, labels, prediction = flipped_scene
    ious, miou, accuracy, pixels, unscored = reference_scores(reference, predicted, VALUES)
    result = evaluate(prediction, labels, tile=tile)
    for item in result["per_class"]:
        assert item["iou"] == pytest.approx(ious[item["value"]], abs=1e-6)
    assert result["miou"] == pytest.approx(miou, abs=1e-6)
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert result["pixels"] == pixels
    assert result["unscored"] == unscored > 0
    assert 0.7 < result["miou"] < 0.95  # flips really lowered the score


def test_confusion_matches_numpy_counts(flipped_scene):
    reference, predicted, labels, prediction = flipped_scene
    result = evaluate(prediction, labels, tile=32)
    scored = (reference != 255) & (predicted != 255)
    expected = [[int(((reference == r) & (predicted == p) & scored).sum()) for p in VALUES] for r in VALUES]
    assert result["confusion"] == expected
    assert [c["support"] for c in result["per_class"]] == [sum(row) for row in expected]


def test_ignoring_unlabelled_and_nodata_matters_the_check_has_teeth(flipped_scene):
    """Counting unlabelled or nodata pixels would give other scores: the numpy comparison above can fail."""
    reference, predicted, labels, prediction = flipped_scene
    result = evaluate(prediction, labels, tile=64)
    _, miou_no_ignore, _, _, _ = reference_scores(reference, predicted, VALUES, ignore=-1)
    _, miou_no_nodata, _, _, _ = reference_scores(reference, predicted, VALUES, nodata=-1)
    assert abs(result["miou"] - miou_no_ignore) > 1e-3
    assert abs(result["miou"] - miou_no_nodata) > 1e-3


def test_unlabelled_pixels_do_not_count_whatever_is_predicted(tmp_path, flipped_scene):
    reference, predicted, labels, prediction = flipped_scene
    other = predicted.copy()
    other[reference == 255] = 5  # change predictions only where there is no label
    changed = write_class_map(tmp_path / "other.tif", other)
    assert evaluate(changed, labels)["confusion"] == evaluate(prediction, labels)["confusion"]


def test_names_come_from_the_prediction_when_labels_only_number_classes(flipped_scene):
    _, _, labels, prediction = flipped_scene
    result = evaluate(prediction, labels)
    assert [c["name"] for c in result["per_class"]] == ["water", "forest", "urban"]
    assert result["classes"]["values"] == list(VALUES)


def test_values_outside_the_class_table_count_as_wrong(tmp_path):
    reference = np.full((10, 10), 1, dtype=np.uint8)
    reference[:, 5:] = 2
    predicted = reference.copy()
    predicted[:2, :] = 9  # 20 pixels predicted with a value that is no class: 10 of class 1, 10 of class 2
    labels = write_class_map(tmp_path / "labels.tif", reference)
    prediction = write_class_map(tmp_path / "pred.tif", predicted)
    result = evaluate(prediction, labels)
    assert result["accuracy"] == pytest.approx(0.8)
    assert result["pixels"] == 100
    assert result["unmatched"] == [10, 10]
    assert result["unmatched_values"] == [9]
    assert result["confusion"] == [[40, 0], [0, 40]]
    assert [c["iou"] for c in result["per_class"]] == [pytest.approx(0.8), pytest.approx(0.8)]
    assert [c["recall"] for c in result["per_class"]] == [pytest.approx(0.8), pytest.approx(0.8)]
    assert [c["precision"] for c in result["per_class"]] == [1.0, 1.0]
    assert result["miou"] == pytest.approx(0.8)
    assert "unmatched" in format_table(result)


def _relabelled_demo(path, demo_label_raster, names: dict, values=None):
    """The demo label raster (0 water, 1 land) as a prediction whose values are renumbered and named."""
    with rasterio.open(demo_label_raster) as src:
        array, profile = src.read(1), src.profile
    if values:
        array = np.where(array == 255, 255, np.asarray([values[0], values[1]], dtype=np.uint8)[np.minimum(array, 1)])
    profile.update(driver="GTiff")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype(np.uint8), 1)
        dst.update_tags(1, CLASS_NAMES=json.dumps({str(k): v for k, v in names.items()}))
    return path


def test_named_classes_match_the_predictions_names_not_their_values(tmp_path, demo_labels, demo_label_raster):
    same = evaluate(_relabelled_demo(tmp_path / "a.tif", demo_label_raster, {0: "water", 1: "land"}), demo_labels)
    renumbered = evaluate(
        _relabelled_demo(tmp_path / "b.tif", demo_label_raster, {7: "water", 3: "land"}, values=(7, 3)), demo_labels
    )
    assert same["miou"] >= 0.97 and renumbered["miou"] == same["miou"]
    by_name = lambda r: {c["name"]: (c["iou"], c["support"]) for c in r["per_class"]}  # noqa: E731
    assert by_name(renumbered) == by_name(same) and renumbered["warnings"] == []
    assert {c["name"]: c["value"] for c in renumbered["per_class"]} == {"water": 7, "land": 3}
    # companion: the same pixels with the names swapped score (almost) nothing, so the names are what counts
    swapped = evaluate(_relabelled_demo(tmp_path / "c.tif", demo_label_raster, {0: "land", 1: "water"}), demo_labels)
    assert swapped["miou"] < 0.05


def _halves_labels(path, names, column="class"):
    """Two polygons (left and right half of a 10 x 20 pixel grid at TRANSFORM) with the given classes."""
    import geopandas as gpd
    from shapely.geometry import box

    x0, y0 = TRANSFORM.c, TRANSFORM.f
    halves = [box(x0, y0 - 100, x0 + 100, y0), box(x0 + 100, y0 - 100, x0 + 200, y0)]
    gpd.GeoDataFrame({column: list(names)}, geometry=halves, crs=CRS).to_file(path)
    return path


def _model_prediction(path):
    """A 10 x 20 class map of a model with classes crop=1, tree=2, water=3: left half tree, right half water."""
    array = np.full((10, 20), 2, dtype=np.uint8)
    array[:, 10:] = 3
    return write_class_map(path, array, tags={"CLASS_NAMES": json.dumps(["crop", "tree", "water"]),
                                              "CLASS_VALUES": json.dumps([1, 2, 3])})


def test_string_classes_are_matched_by_the_predictions_names(tmp_path):
    """A test file with only 'tree' and 'water' once scored tree as value 1 (the model's 'crop')."""
    labels = _halves_labels(tmp_path / "test.gpkg", ["tree", "water"])
    result = evaluate(_model_prediction(tmp_path / "pred.tif"), labels)
    assert result["accuracy"] == 1.0 and result["miou"] == 1.0
    assert [(c["name"], c["value"], c["support"]) for c in result["per_class"]] == [("tree", 2, 100), ("water", 3, 100)]


def test_a_reference_class_the_model_does_not_know_is_wrong_and_warned(tmp_path):
    labels = _halves_labels(tmp_path / "test.gpkg", ["tree", "swamp"])
    result = evaluate(_model_prediction(tmp_path / "pred.tif"), labels)
    assert result["accuracy"] == pytest.approx(0.5)
    swamp = next(c for c in result["per_class"] if c["name"] == "swamp")
    assert swamp["recall"] == 0.0 and swamp["value"] not in (1, 2, 3)
    assert len(result["warnings"]) == 1 and "'swamp'" in result["warnings"][0]


def test_cli_mapping_merges_reference_classes_onto_the_predictions_names(tmp_path):
    from rs_pgd.cli.main import cli

    labels = _halves_labels(tmp_path / "test.gpkg", ["Skov", "Soe"], column="Afgroede")
    mapping = tmp_path / "groups.json"
    mapping.write_bytes(b"\xef\xbb\xbf" + json.dumps({"Skov": "tree", "Soe": "water"}).encode())  # with a BOM
    prediction = _model_prediction(tmp_path / "pred.tif")
    args = ["evaluate", str(prediction), str(labels), "--class-column", "Afgroede", "--json"]
    result = CliRunner().invoke(cli, [*args, "--mapping", str(mapping)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == 1.0
    unmapped = CliRunner().invoke(cli, args)  # Skov, Soe: named classes the model does not know
    assert json.loads(unmapped.output)["accuracy"] == 0.0


def _probabilities(path, count=2, dtype="uint8", scale=1 / 254):
    data = np.zeros((count, 10, 20), dtype=dtype)
    profile = dict(driver="GTiff", width=20, height=10, count=count, dtype=dtype, crs=CRS, transform=TRANSFORM)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if scale is not None:
            dst.scales = [scale] * count
        dst.update_tags(CLASS_NAMES=json.dumps(["tree", "water"][:count]))
    return path


@pytest.mark.parametrize("kind", ["two-bands", "scaled-one-band", "float-one-band"])
def test_probability_rasters_are_refused_as_class_maps(tmp_path, kind):
    path = {
        "two-bands": lambda: _probabilities(tmp_path / "p.tif"),
        "scaled-one-band": lambda: _probabilities(tmp_path / "p.tif", count=1),
        "float-one-band": lambda: _probabilities(tmp_path / "p.tif", count=1, dtype="float32", scale=None),
    }[kind]()
    labels = _halves_labels(tmp_path / "test.gpkg", ["tree", "water"])
    with pytest.raises(SceneError, match="not .*class values.*rs-pgd predict -o"):
        evaluate(path, labels)


def test_tile_zero_is_refused(tmp_path, flipped_scene):
    from rs_pgd.cli.main import cli
    from rs_pgd.errors import GridError

    _, _, labels, prediction = flipped_scene
    with pytest.raises(GridError, match="at least 1"):
        evaluate(prediction, labels, tile=0)
    result = CliRunner().invoke(cli, ["evaluate", str(prediction), str(labels), "--tile", "0"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--tile" in result.output


def test_float_prediction_and_missing_labels_raise(tmp_path, flipped_scene):
    _, _, labels, _ = flipped_scene
    floats = write_class_map(tmp_path / "float.tif", np.zeros((8, 8), dtype=np.float32), nodata=None)
    with pytest.raises(SceneError, match="class values"):
        evaluate(floats, labels)
    with pytest.raises(LabelError, match="not found"):
        evaluate(labels, tmp_path / "missing.gpkg")


# ----------------------------------------------------------------------------------------------------------------
# Reports


def test_format_table_and_confusion_png(tmp_path, flipped_scene):
    _, _, labels, prediction = flipped_scene
    result = evaluate(prediction, labels)
    table = format_table(result)
    assert "mIoU" in table and "forest" in table and f"{result['miou']:.4f}" in table
    png = tmp_path / "confusion.png"
    confusion_png(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[0] > 100
    with pytest.raises(OutputError, match=".png"):
        confusion_png(result, tmp_path / "confusion.jpg")


# ----------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_json_keys(tmp_path, demo_label_raster, demo_labels):
    from rs_pgd.cli.main import cli

    png = tmp_path / "c.png"
    result = CliRunner().invoke(
        cli, ["evaluate", str(demo_label_raster), str(demo_labels), "--json", "--confusion-png", str(png)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"miou", "accuracy", "per_class", "confusion", "classes", "pixels", "unscored"} <= data.keys()
    assert {"value", "name", "iou", "f1", "precision", "recall", "support"} <= data["per_class"][0].keys()
    assert png.exists()


def test_cli_table(demo_label_raster, demo_labels):
    from rs_pgd.cli.main import cli

    result = CliRunner().invoke(cli, ["evaluate", str(demo_label_raster), str(demo_labels)])
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and "water" in result.output


@pytest.mark.parametrize("which", ["prediction", "labels"])
def test_cli_missing_file_is_one_line_exit_2(tmp_path, demo_label_raster, demo_labels, which):
    from rs_pgd.cli.main import cli

    args = [str(tmp_path / "nope.tif"), str(demo_labels)] if which == "prediction" else [
        str(demo_label_raster), str(tmp_path / "nope.gpkg")]
    result = CliRunner().invoke(cli, ["evaluate", *args])
    assert result.exit_code == 2
    assert result.output.startswith("Error:") and result.output.count("\n") == 1
    assert "nope" in result.output
