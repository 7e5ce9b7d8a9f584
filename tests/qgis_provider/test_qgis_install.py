"""``rs-pgd qgis install|uninstall`` on a temporary profile (no QGIS needed)."""

import json
import subprocess
import sys

from rs_pgd.qgis_install import PLUGIN_NAME, RUNNER_FILE, install, runner_command, uninstall

OTHER_SETTINGS = "[General]\nsomething=@ByteArray(\\x1)\n\n[PythonPlugins]\nother_plugin=true\n\n[qgis]\nkey\\sub=1\n"


def _rs_pgd(*args):
    return subprocess.run([sys.executable, "-m", "rs_pgd", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_install_copies_the_plugin_records_the_command_and_enables_it(tmp_path):
    profile = tmp_path / "profiles" / "default"
    (profile / "QGIS").mkdir(parents=True)
    (profile / "QGIS" / "QGIS3.ini").write_text(OTHER_SETTINGS)
    done = _rs_pgd("qgis", "install", "--profile", profile)
    assert done.returncode == 0, done.stderr
    plugin = profile / "python" / "plugins" / PLUGIN_NAME
    assert {"__init__.py", "metadata.txt", "algorithms.py", "provider.py", RUNNER_FILE} <= {p.name for p in plugin.iterdir()}
    assert "hasProcessingProvider=yes" in (plugin / "metadata.txt").read_text()
    runner = json.loads((plugin / RUNNER_FILE).read_text())
    assert runner["command"] == [sys.executable, "-m", "rs_pgd"]  # the interpreter that ran the command
    settings = (profile / "QGIS" / "QGIS3.ini").read_text()
    assert f"{PLUGIN_NAME}=true" in settings.split("[PythonPlugins]")[1].split("[qgis]")[0]
    # every other setting is kept as it was
    assert settings.replace(f"{PLUGIN_NAME}=true\n", "") == OTHER_SETTINGS


def test_reinstall_updates_in_place_and_uninstall_undoes_everything(tmp_path):
    profile = tmp_path / "p"
    install(profile, command=["/opt/env/bin/rs-pgd"])
    plugin = profile / "python" / "plugins" / PLUGIN_NAME
    (plugin / "algorithms.py").write_text("broken")
    (plugin / "stale.py").write_text("old file")
    result = install(profile, command=["/opt/other/bin/rs-pgd"])
    assert "class PredictAlgorithm" in (plugin / "algorithms.py").read_text()
    assert not (plugin / "stale.py").exists()
    assert json.loads((plugin / RUNNER_FILE).read_text())["command"] == ["/opt/other/bin/rs-pgd"]
    settings = result.settings.read_text()
    assert settings.count(f"{PLUGIN_NAME}=true") == 1
    assert not [p for p in plugin.parent.iterdir() if p.name.startswith(".")]  # no staging copies left
    assert uninstall(profile).changed
    assert not plugin.exists()
    assert PLUGIN_NAME not in result.settings.read_text()
    assert not uninstall(profile).changed  # a second uninstall has nothing to do


def test_a_file_as_profile_is_a_one_line_error(tmp_path):
    not_a_folder = tmp_path / "profile.txt"
    not_a_folder.write_text("x")
    done = _rs_pgd("qgis", "install", "--profile", not_a_folder)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: ") and len(done.stderr.strip().splitlines()) == 1


def test_the_console_script_records_its_own_path(tmp_path):
    script = tmp_path / "bin" / "rs-pgd"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    assert runner_command(str(script)) == [str(script.resolve())]
    assert runner_command(str(tmp_path / "elsewhere.py")) == [sys.executable, "-m", "rs_pgd"]


def test_python_dash_m_and_version():
    done = _rs_pgd("--version")
    assert done.returncode == 0 and done.stdout.startswith("rs-pgd, version ")
