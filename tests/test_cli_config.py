"""``--config FILE.yaml`` and ``--print-config`` for fit and predict: the file fills in, the command line wins."""

import yaml
from click.testing import CliRunner

from rs_pgd.cli.main import cli


def _print_config(*args):
    result = CliRunner().invoke(cli, [*map(str, args), "--print-config"])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def test_the_file_fills_in_and_the_command_line_wins(tmp_path, demo_scene, demo_labels):
    config = tmp_path / "run.yaml"
    config.write_text(f"scene: {demo_scene}\nlabels: {demo_labels}\nencoder: resnet18\nmax-steps: 3\ntile: 128\n")
    resolved = _print_config("fit", "--config", config, "--tile", "64")
    assert resolved["encoder"] == "resnet18" and resolved["max_steps"] == 3  # from the file
    assert resolved["tile"] == 64  # the command line wins
    assert resolved["scene"] == str(demo_scene) and resolved["margin"] == 64  # arguments too; defaults stay
    # companion: without the file, the defaults come back
    assert _print_config("fit", demo_scene, demo_labels)["encoder"] == "resnet34"


def test_a_printed_config_runs_again_unchanged(tmp_path, demo_scene):
    first = _print_config("predict", "m.safetensors", demo_scene, "-o", "x.tif", "--blend", "cosine", "--stride", "96")
    saved = tmp_path / "predict.yaml"
    saved.write_text(yaml.safe_dump(first))
    assert _print_config("predict", "--config", saved) == first


def test_an_unknown_setting_is_a_one_line_error(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("epochz: 3\n")
    result = CliRunner().invoke(cli, ["fit", "a.tif", "b.gpkg", "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown setting(s) epochz" in result.output and "epochs" in result.output
