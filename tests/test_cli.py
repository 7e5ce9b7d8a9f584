"""The command line: the group, the rio plugin, `info`, and that importing the CLI does not import torch."""

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner

from rs_pgd.cli.main import cli

COMMANDS = ["info", "fit", "predict", "suggest", "evaluate", "vectorize", "export", "demo", "qgis"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_the_group_is_registered_as_a_rio_plugin_and_a_console_script():
    plugins = {ep.name: ep.value for ep in entry_points(group="rasterio.rio_plugins")}
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert plugins["pgd"] == scripts["rs-pgd"] == "rs_pgd.cli.main:cli"
    rio = Path(sys.executable).with_name("rio")
    out = subprocess.run([str(rio), "pgd", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "info" in out.stdout and "fit" in out.stdout


def test_info_json_on_the_demo(demo_scene, demo_labels):
    result = CliRunner().invoke(cli, ["info", str(demo_scene), str(demo_labels), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["scene"]["crs"] == "EPSG:32618"
    assert report["scene"]["width"] == 791 and report["scene"]["height"] == 718
    assert 0.30 < report["nodata_fraction"] < 0.36  # about a third of the raster is outside the footprint
    names = [c["name"] for c in report["labels"]["classes"]]
    assert names == ["water", "land"]
    counts = {c["name"]: c["pixels"] for c in report["labels"]["classes"]}
    assert counts["water"] > counts["land"] > 0
    validate = report["suggested"]
    assert validate["tile"] % 32 == 0 and validate["margin"] % 32 == 0


def test_info_text_on_the_demo(demo_scene, demo_labels):
    result = CliRunner().invoke(cli, ["info", str(demo_scene), str(demo_labels)])
    assert result.exit_code == 0, result.output
    assert "EPSG:32618" in result.output and "water" in result.output and "suggested" in result.output


@pytest.mark.realdata
def test_info_works_on_every_shared_scene(shared_data):
    cases = [
        ("landsat7_bahamas/RGB.byte.tif", "landsat7_bahamas/RGB.byte_gshhg_landwater.gpkg", []),
        ("landsat8_parana/LC08_L1TP_224078_20200518_20200518_01_RT.TIF",
         "landsat8_parana/LC08_L1TP_224078_20200518_20200518_01_RT_polygons.gpkg", []),
        ("sentinel2_denmark_lpis/RGB_small.tif", "sentinel2_denmark_lpis/marker2016_small.shp",
         ["--class-column", "Afgroede"]),
        ("sentinel2_dfc2020_patches/ROIs0000_test_s2_0_p0.tif",
         "sentinel2_dfc2020_patches/ROIs0000_test_dfc_0_p0.tif", []),
    ]
    for scene, labels, extra in cases:
        result = CliRunner().invoke(cli, ["info", str(shared_data / scene), str(shared_data / labels), "--json", *extra])
        assert result.exit_code == 0, (scene, result.output)
        report = json.loads(result.output[result.output.index("{"):])
        assert report["labels"]["classes"], scene
        if "dfc2020" in scene:
            assert report["scene"]["count"] == 13
            assert not report["scene"]["georeferenced"]
            assert any("georeferenced" in n for n in report["notes"])
        else:
            assert report["scene"]["crs"].startswith("EPSG:326")


def test_a_bad_input_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "missing.tif")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:")
