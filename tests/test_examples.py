"""The examples and data recipes run."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_api_example_runs_end_to_end(tmp_path):
    example = _load(REPO / "examples" / "fit_predict.py")
    scores = example.main(tmp_path, quick=True)
    assert 0 <= scores["miou"] <= 1
    for name in ("model.safetensors", "prediction.tif", "probabilities.tif", "preview.png", "prediction.gpkg"):
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.realdata
def test_the_denmark_mapping_recipe_merges_crops_and_trains_the_label_reader(tmp_path, shared_data):
    parcels = shared_data / "sentinel2_denmark_lpis" / "marker2016_small.shp"
    out = tmp_path / "groups.json"
    subprocess.run([sys.executable, str(REPO / "data_recipes" / "denmark_crop_groups.py"), str(parcels), str(out)],
                   check=True, capture_output=True)
    mapping = json.loads(out.read_text(encoding="utf-8"))
    assert len(mapping) >= 30 and set(mapping.values()) <= {"cereal", "grass", "maize", "other"}
    assert {"cereal", "grass"} <= set(mapping.values())

    from rs_pgd.labels import open_labels
    from rs_pgd.raster import scene_info

    labels = open_labels(parcels, scene_info(shared_data / "sentinel2_denmark_lpis" / "RGB_small.tif"),
                         class_column="Afgroede", mapping=mapping)
    assert sorted(labels.classes.names) == sorted(set(mapping.values()))


@pytest.mark.slow
def test_the_demo_command_fits_predicts_and_evaluates(tmp_path):
    from click.testing import CliRunner

    from rs_pgd.cli.main import cli

    result = CliRunner().invoke(cli, ["demo", "-d", str(tmp_path / "demo"), "--epochs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output
    for name in ("model.safetensors", "prediction.tif", "preview.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0, name
