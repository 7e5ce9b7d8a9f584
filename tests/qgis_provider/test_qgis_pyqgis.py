"""rs-pgd's Processing algorithms in real QGIS through PyQGIS ``processing.run``, on the shipped demo scene.

One QGIS session (QGIS's own python3, in a subprocess) runs every case once: fit -> predict -> vectorize ->
evaluate, layers that are not files, selected features, cancel, a bad input. Each test compares what QGIS
produced with the rs-pgd CLI run on the same inputs.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from qgis_provider.qgis_helpers import HERE, TINY_FIT, qgis_environment, run_rs_pgd

pytestmark = pytest.mark.slow

SELECTED = 60
"""How many label polygons the selection tests select (the first ones by feature id)."""


@pytest.fixture(scope="module")
def session(qgis_tools, qgis_root, demo_files, tmp_path_factory):
    work = tmp_path_factory.mktemp("pyqgis")
    bad_model = work / "not_a_model.safetensors"
    bad_model.write_text("this is not a checkpoint\n")
    fids = _first_fids(demo_files["labels"], SELECTED)
    spec = {"plugins": str(qgis_root / "qgis-config" / "profiles" / "default" / "python" / "plugins"),
            "scene": str(demo_files["scene"]), "labels": str(demo_files["labels"]), "work": str(work / "out"),
            "bad_model": str(bad_model), "selected_fids": fids}
    (work / "out").mkdir()
    spec["crop_folder"] = str(_crop_folder(demo_files["scene"], work / "rasters"))
    spec["examples"] = str(HERE.parents[1] / "examples" / "qgis")
    (work / "spec.json").write_text(json.dumps(spec))
    env = qgis_environment(qgis_root) | {"RS_PGD_TINY_FIT": json.dumps(TINY_FIT)}
    done = subprocess.run([qgis_tools[1], str(HERE / "pyqgis_session.py"), str(work / "spec.json"),
                           str(work / "results.json")], capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    results["spec"] = spec
    results["work"] = work
    return results


def _crop_folder(scene, folder, size=256):
    """A folder with a 256 px crop of the demo scene (one window to predict) and a file that is not a raster."""
    import rasterio
    from rasterio.windows import Window

    folder.mkdir()
    (folder / "notes.txt").write_text("not a raster\n")
    with rasterio.open(scene) as src:
        window = Window(256, 256, size, size)
        profile = src.profile | {"width": size, "height": size, "transform": src.window_transform(window)}
        with rasterio.open(folder / "crop.tif", "w", **profile) as dst:
            dst.write(src.read(window=window))
    return folder


def _first_fids(labels, n):
    import pyogrio

    frame = pyogrio.read_dataframe(labels, fid_as_index=True, read_geometry=False)
    return [int(f) for f in sorted(frame.index)[:n]]


def _case(session, name):
    case = session.get(name)
    assert case is not None, f"case {name} did not run (an earlier case failed)"
    assert "exception" not in case, case.get("exception")
    return case


def test_the_provider_lists_the_four_algorithms(session):
    assert session["algorithms"] == ["rs_pgd:evaluate", "rs_pgd:fit", "rs_pgd:predict", "rs_pgd:vectorize"]


def test_fit_writes_a_model_and_reports_progress(session):
    fit = _case(session, "fit")
    model = Path(fit["results"]["OUTPUT"])
    assert model.name == "model.safetensors" and model.stat().st_size > 0
    assert fit["files"] == ["model.curve.png", "model.resume.pt", "model.safetensors"]  # nothing staged is left
    assert fit["progress"] and max(fit["progress"]) == 100


def test_predict_equals_the_cli_byte_for_byte(session, demo_files, tmp_path):
    predict = _case(session, "predict")
    model = session["fit"]["results"]["OUTPUT"]
    reference = tmp_path / "cli.tif"
    run_rs_pgd("predict", model, demo_files["scene"], "-o", reference, "--probabilities", tmp_path / "cli_p.tif",
               "--precision", "32", "--quiet")
    produced = Path(predict["results"]["OUTPUT"])
    assert produced.read_bytes() == reference.read_bytes()
    assert Path(predict["results"]["PROBABILITIES"]).read_bytes() == (tmp_path / "cli_p.tif").read_bytes()
    assert predict["files"] == ["classes.qml", "classes.tif", "classes.tif.aux.xml", "probabilities.tif"]


def test_the_class_map_loads_paletted_with_class_names(session, demo_files):
    predict = _case(session, "predict")
    assert predict["renderer"] == "paletted"
    import rasterio

    with rasterio.open(predict["results"]["OUTPUT"]) as dataset:
        names = json.loads(dataset.tags(1)["CLASS_NAMES"])
        values = json.loads(dataset.tags(1)["CLASS_VALUES"])
        colours = dataset.colormap(1)
    expected = [[v, n, "#{:02x}{:02x}{:02x}".format(*colours[v][:3])] for v, n in zip(values, names)]
    assert predict["classes"] == expected
    assert all(not name.isdigit() for name in names)  # real class names, not just the values


def test_vectorize_returns_styled_polygons_like_the_cli(session, tmp_path):
    vectorize = _case(session, "vectorize")
    class_map = session["predict"]["results"]["OUTPUT"]
    reference = json.loads(run_rs_pgd("vectorize", class_map, "-o", tmp_path / "cli.gpkg", "--json").stdout)
    assert vectorize["results"]["POLYGONS"] == reference["polygons"] == vectorize["features"] > 0
    assert {"class_id", "class_name"} <= set(vectorize["fields"])
    assert vectorize["renderer"] == "categorizedSymbol"
    assert {label for _, label in vectorize["categories"]} >= {c["name"] for c in reference["classes"]}
    assert vectorize["files"] == ["polygons.gpkg", "polygons.qml"]


def test_a_raster_that_is_not_a_file_is_written_to_a_temporary_geotiff(session):
    zipped = _case(session, "vectorize_vsizip")
    assert zipped["valid"]
    assert zipped["results"]["POLYGONS"] == session["vectorize"]["results"]["POLYGONS"]


def _cli_scores(class_map, labels, *extra):
    report = json.loads(run_rs_pgd("evaluate", class_map, labels, "--json", *extra).stdout)
    return report["miou"], report["accuracy"]


def test_evaluate_returns_miou_and_accuracy_like_the_cli(session, demo_files):
    evaluate = _case(session, "evaluate")
    class_map = session["predict"]["results"]["OUTPUT"]
    miou, accuracy = _cli_scores(class_map, demo_files["labels"])
    assert (evaluate["results"]["MIOU"], evaluate["results"]["ACCURACY"]) == (miou, accuracy)
    assert evaluate["report"]["miou"] == miou and "per_class" in evaluate["report"]


def test_selected_features_only_scores_only_the_selection(session, demo_files, tmp_path):
    selected = _case(session, "evaluate_selected")
    assert selected["selected"] == SELECTED
    import pyogrio

    frame = pyogrio.read_dataframe(demo_files["labels"], fid_as_index=True)
    subset = tmp_path / "selected.gpkg"
    pyogrio.write_dataframe(frame.loc[session["spec"]["selected_fids"]], subset)
    class_map = session["predict"]["results"]["OUTPUT"]
    expected = _cli_scores(class_map, subset)
    for how in ("definition", "flag"):
        assert (selected[how]["MIOU"], selected[how]["ACCURACY"]) == expected, how
    # companion: without the selection the scores are those of every polygon, and they differ
    everything = _cli_scores(class_map, demo_files["labels"])
    assert (selected["all"]["MIOU"], selected["all"]["ACCURACY"]) == everything != expected


def test_a_memory_layer_is_written_to_a_temporary_geopackage(session, demo_files):
    memory = _case(session, "evaluate_memory")
    assert memory["provider"] == "memory"
    class_map = session["predict"]["results"]["OUTPUT"]
    expected = _cli_scores(class_map, demo_files["labels"], "--class-column", "class_id")
    assert (memory["results"]["MIOU"], memory["results"]["ACCURACY"]) == expected


def test_the_example_processing_script_predicts_and_vectorises_a_folder(session):
    script = _case(session, "example_script")
    assert script["results"]["RASTERS"] == 1  # notes.txt is not a raster
    assert script["files"] == ["crop_classes.qml", "crop_classes.tif", "crop_classes.tif.aux.xml",
                               "crop_polygons.gpkg", "crop_polygons.qml"]
    assert script["features"] > 0


def test_the_example_model_chains_predict_vectorize_evaluate(session, tmp_path):
    model = _case(session, "example_model")
    assert model["children"] == ["evaluate", "predict", "vectorize"]
    assert {"classes.tif", "polygons.gpkg", "report.json"} <= set(model["files"])
    out = Path(session["spec"]["work"]) / "example_model"
    expected = json.loads(run_rs_pgd("evaluate", out / "classes.tif", session["spec"]["labels"], "--json").stdout)
    assert model["report"]["miou"] == expected["miou"] and model["report"]["accuracy"] == expected["accuracy"]


def test_cancel_stops_rs_pgd_and_leaves_nothing(session):
    cancel = _case(session, "cancel_fit")
    assert cancel["running_before"], "rs-pgd was not running when the test cancelled"
    assert "cancelled" in (cancel["error"] or "")
    assert cancel["alive_after"] == []
    assert cancel["files"] == []  # neither the model nor the hidden staging folder
    print(f"rs-pgd stopped {cancel['stop_seconds']:.2f} s after cancel")


def test_a_bad_input_shows_the_one_line_error_of_the_cli(session, demo_files):
    bad = _case(session, "bad_model")
    cli = run_rs_pgd("predict", session["spec"]["bad_model"], demo_files["scene"], "-o",
                     Path(session["spec"]["work"]) / "cli_bad.tif", check=False)
    assert cli.returncode == 2 and cli.stderr.startswith("Error: ")
    message = cli.stderr.strip().splitlines()[-1][len("Error: "):]
    assert bad["error"] == message
    assert "\n" not in bad["error"] and "Traceback" not in bad["error"]
    assert bad["files"] == []
    assert not os.path.exists(Path(session["spec"]["work"]) / "cli_bad.tif")
