"""rs-pgd's Processing algorithms through ``qgis_process`` (QGIS 3.22's command line), on the shipped demo scene.

The provider is installed with ``rs-pgd qgis install --profile`` into a temporary profile; ``qgis_process`` loads
it like any enabled plugin. Outputs are compared with the rs-pgd CLI on the same inputs.
"""

import json
import subprocess

import pytest

from qgis_provider.qgis_helpers import TINY_FIT, qgis_environment, qgis_process_run, run_rs_pgd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory, demo_files):
    """A tiny model trained by the CLI (one optimizer step on two windows)."""
    path = tmp_path_factory.mktemp("qgis_process_model") / "model.safetensors"
    run_rs_pgd("fit", demo_files["scene"], demo_files["labels"], "-o", path, "--encoder", TINY_FIT["ENCODER"],
               "--tile", TINY_FIT["TILE"], "--margin", TINY_FIT["MARGIN"], "--epochs", 1, "--max-steps", 1,
               "--step-every", TINY_FIT["STEP_EVERY"], "--val-fraction", 0, "--precision", "32", "--quiet")
    return path


@pytest.fixture(scope="module")
def class_map(qgis_tools, qgis_root, model, demo_files, tmp_path_factory):
    """rs_pgd:predict run by qgis_process, and the CLI's prediction with the same model as the reference."""
    folder = tmp_path_factory.mktemp("qgis_process_predict")
    code, result, stderr = qgis_process_run(qgis_tools, qgis_root, "rs_pgd:predict", MODEL=model,
                                            INPUT=demo_files["scene"], PRECISION=1, OUTPUT=folder / "qgis.tif")
    assert code == 0, stderr
    reference = folder / "cli.tif"
    run_rs_pgd("predict", model, demo_files["scene"], "-o", reference, "--precision", "32", "--quiet")
    return {"result": result, "reference": reference, "folder": folder}


def test_qgis_process_lists_the_four_algorithms(qgis_tools, qgis_root):
    done = subprocess.run([qgis_tools[0], "list"], capture_output=True, text=True, env=qgis_environment(qgis_root),
                          timeout=300)
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.strip().startswith("rs_pgd:")}
    assert listed == {"rs_pgd:predict", "rs_pgd:fit", "rs_pgd:vectorize", "rs_pgd:evaluate"}


def test_predict_equals_the_cli_byte_for_byte(class_map):
    produced = class_map["folder"] / "qgis.tif"
    assert class_map["result"]["results"]["OUTPUT"] == str(produced)
    assert produced.read_bytes() == class_map["reference"].read_bytes()
    assert (class_map["folder"] / "qgis.qml").is_file()  # the paletted style QGIS loads with the layer
    assert not [p for p in class_map["folder"].iterdir() if p.name.startswith(".")]  # no staging left


def test_vectorize_returns_the_cli_polygons(qgis_tools, qgis_root, class_map, tmp_path):
    code, result, stderr = qgis_process_run(qgis_tools, qgis_root, "rs_pgd:vectorize",
                                            INPUT=class_map["reference"], OUTPUT=tmp_path / "polygons.gpkg")
    assert code == 0, stderr
    expected = json.loads(run_rs_pgd("vectorize", class_map["reference"], "-o", tmp_path / "cli.gpkg",
                                     "--json").stdout)
    assert result["results"]["POLYGONS"] == expected["polygons"] > 0
    assert (tmp_path / "polygons.qml").is_file()
    import pyogrio

    assert len(pyogrio.read_dataframe(tmp_path / "polygons.gpkg")) == expected["polygons"]


def test_evaluate_returns_miou_and_accuracy(qgis_tools, qgis_root, class_map, demo_files, tmp_path):
    code, result, stderr = qgis_process_run(qgis_tools, qgis_root, "rs_pgd:evaluate", INPUT=class_map["reference"],
                                            LABELS=demo_files["label_raster"], OUTPUT=tmp_path / "report.json")
    assert code == 0, stderr
    expected = json.loads(run_rs_pgd("evaluate", class_map["reference"], demo_files["label_raster"],
                                     "--json").stdout)
    assert (result["results"]["MIOU"], result["results"]["ACCURACY"]) == (expected["miou"], expected["accuracy"])
    assert json.loads((tmp_path / "report.json").read_text())["per_class"] == expected["per_class"]


def test_a_bad_input_fails_with_the_cli_one_line_error(qgis_tools, qgis_root, demo_files, tmp_path):
    bad_model = tmp_path / "notes.safetensors"
    bad_model.write_text("not a checkpoint\n")
    code, _, stderr = qgis_process_run(qgis_tools, qgis_root, "rs_pgd:predict", MODEL=bad_model,
                                       INPUT=demo_files["scene"], OUTPUT=tmp_path / "out" / "classes.tif")
    cli = run_rs_pgd("predict", bad_model, demo_files["scene"], "-o", tmp_path / "cli.tif", check=False)
    assert cli.returncode == 2
    message = cli.stderr.strip().splitlines()[-1][len("Error: "):]
    assert code != 0
    assert message in stderr.splitlines()  # rs-pgd's own line, as it is
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
