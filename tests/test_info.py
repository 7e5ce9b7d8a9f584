"""``rs-pgd info`` / ``describe``: fill pixels without a nodata tag, alpha bands, ``--nodata`` (issue 14 #9, #12)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rs_pgd.info import describe, format_report

_spec = importlib.util.spec_from_file_location("bad_inputs", Path(__file__).parent / "data" / "bad_inputs.py")
bad = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad)

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
ENV.pop("RS_PGD_DEBUG", None)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "rs_pgd.cli.main", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=120)


def test_info_points_out_untagged_fill_zeros(tmp_path):
    scene = bad.fill_zeros_scene(tmp_path)
    with rasterio.open(scene) as ds:
        data = ds.read()
        assert ds.nodata is None
    share = float(np.all(data == 0, axis=0).mean())  # reference: numpy on the whole array
    report = describe(scene)
    assert report["nodata_fraction"] == 0
    zero = [c for c in report["fill_candidates"] if c["value"] == 0]
    assert zero and zero[0]["fraction"] == pytest.approx(share, abs=1e-6)
    assert any("--nodata 0" in note for note in report["notes"])
    assert "fill?" in format_report(report)


@pytest.mark.parametrize("case", ["interior", "one band", "single-band scene", "few saturated"])
def test_plausible_data_is_not_called_fill(tmp_path, case):
    """Companions: zeros that do not reach the edge, zeros in one band, zeros of a one-band scene, and a few
    saturated pixels are data, not fill."""
    data = np.maximum(bad.scene_pixels(3, bad.SIZE, "uint8"), 1)
    if case == "interior":
        data[:, 30:60, 30:60] = 0  # a dark lake
    elif case == "one band":
        data[0, :, :40] = 0
    elif case == "single-band scene":
        data = data[:1]
        data[0, :, :40] = 0
    else:
        data[:, :12, :12] = 255  # 1.6 % saturated, at the corner
    report = describe(bad.write_scene(tmp_path / "s.tif", data))
    assert not any("--nodata" in note for note in report["notes"]), report["notes"]


def test_saturated_fill_along_the_edge_is_pointed_out(tmp_path):
    data = np.minimum(bad.scene_pixels(3, bad.SIZE, "uint8"), 254)
    data[:, :, -20:] = 255  # 21 % on the right edge: a tool's "white" fill
    report = describe(bad.write_scene(tmp_path / "s.tif", data))
    assert any("--nodata 255" in note for note in report["notes"])


def test_info_with_nodata_counts_the_fill_as_nodata(tmp_path):
    scene = bad.fill_zeros_scene(tmp_path)
    report = describe(scene, nodata=0)
    assert report["nodata_fraction"] == pytest.approx(bad.FILL_COLUMNS / bad.SIZE, abs=1e-6)
    assert not any("--nodata" in note for note in report["notes"])


def test_info_cli_nodata_option_and_note(tmp_path):
    scene = bad.fill_zeros_scene(tmp_path)
    plain = cli("info", scene)
    assert plain.returncode == 0, plain.stderr
    assert "--nodata 0" in plain.stdout
    tagged = cli("info", scene, "--nodata", "0", "--json")
    assert tagged.returncode == 0, tagged.stderr
    assert json.loads(tagged.stdout)["nodata_fraction"] == pytest.approx(bad.FILL_COLUMNS / bad.SIZE, abs=1e-6)
    refused = cli("info", scene, "--nodata", "-5")  # cannot occur in uint16
    assert refused.returncode == 2 and refused.stderr.startswith("Error: nodata -5") and refused.stderr.count("\n") == 1


def test_info_rgba_alpha_is_a_mask_not_a_band(tmp_path):
    scene = bad.rgba_scene(tmp_path)
    report = describe(scene)
    assert report["bands"] == [1, 2, 3]
    assert report["scene"]["alpha_bands"] == [4]
    assert report["nodata_fraction"] == pytest.approx(0.25)
    assert any("band 4 is an alpha band" in note for note in report["notes"])


def test_info_internal_mask_counts_as_nodata(tmp_path):
    scene = bad.masked_scene(tmp_path)
    report = describe(scene)
    assert report["bands"] == [1, 2, 3]
    assert report["nodata_fraction"] == pytest.approx(20 / bad.SIZE, abs=1e-6)


def test_fit_and_predict_take_nodata():
    from click.testing import CliRunner

    from rs_pgd.cli.main import cli as rs_pgd_cli

    for command in ("fit", "predict", "info"):
        result = CliRunner().invoke(rs_pgd_cli, [command, "--help"])
        assert result.exit_code == 0 and "--nodata VALUE" in result.output, command
