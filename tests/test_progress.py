"""rs_pgd.progress: a tqdm bar normally, JSON lines with --progress json."""

import io
import json
import subprocess
import sys

from rs_pgd.progress import JsonProgress, progress_bar, track


def test_json_lines_count_up_to_the_total():
    stream = io.StringIO()
    bar = JsonProgress(200, "predict", stream=stream)
    for _ in range(200):
        bar.update(1)
    bar.set_postfix(loss="0.5")
    bar.close()
    records = [json.loads(line)["progress"] for line in stream.getvalue().splitlines()]
    assert records[0] == {"desc": "predict", "n": 0, "total": 200, "fraction": 0.0}
    assert [r["n"] for r in records[:-1]] == list(range(0, 201, 2))  # one line per whole percent
    assert records[-1]["fraction"] == 1.0 and records[-1]["postfix"] == {"loss": "0.5"}


def test_disabled_json_progress_is_silent():
    stream = io.StringIO()
    bar = JsonProgress(3, "x", enabled=False, stream=stream)
    bar.update(3)
    bar.close()
    assert stream.getvalue() == ""


def test_the_mode_follows_the_environment(monkeypatch):
    monkeypatch.delenv("RS_PGD_PROGRESS", raising=False)
    from tqdm.auto import tqdm

    assert isinstance(progress_bar(3, "x", enabled=False), tqdm)
    assert list(track([1, 2], "x")) == [1, 2]
    assert not progress_bar(3, "x", enabled=True).disable
    monkeypatch.setenv("RS_PGD_PROGRESS", "none")  # rs-pgd -q / --progress none
    assert progress_bar(3, "x", enabled=True).disable
    monkeypatch.setenv("RS_PGD_PROGRESS", "json")
    assert isinstance(progress_bar(3, "x"), JsonProgress)


def test_the_cli_option_emits_json_progress_from_evaluate(demo_label_raster):
    done = subprocess.run([sys.executable, "-m", "rs_pgd", "--progress", "json", "evaluate", str(demo_label_raster),
                           str(demo_label_raster), "--json", "--tile", "256"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line)["progress"] for line in done.stderr.splitlines() if line.startswith("{")]
    assert records and records[-1]["desc"] == "evaluate" and records[-1]["fraction"] == 1.0
    assert json.loads(done.stdout)["accuracy"] == 1.0  # labels scored against themselves


def test_quiet_and_verbose_root_options(tmp_path):
    missing = tmp_path / "missing.safetensors"
    args = ["predict", str(missing), str(tmp_path / "scene.tif"), "-o", str(tmp_path / "out.tif")]
    quiet = subprocess.run([sys.executable, "-m", "rs_pgd", "-q", *args], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 2 and quiet.stderr.startswith("Error: ")  # one line, as always
    debug = subprocess.run([sys.executable, "-m", "rs_pgd", "-vv", *args], capture_output=True, text=True,
                           timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr  # -vv shows where the error came from
