"""The plugin's subprocess runner (standard library only), with fake commands and a fake feedback."""

import os
import sys
import time

import pytest

from rs_pgd.qgis.runner import Cancelled, RunnerError, Staging, epoch_percent, run_rs_pgd


class Feedback:
    """The parts of QgsProcessingFeedback the runner uses."""

    def __init__(self, cancel_after=None):
        self.progress, self.info, self.console, self.warnings = [], [], [], []
        self.cancel_at = None if cancel_after is None else time.monotonic() + cancel_after

    def isCanceled(self):  # noqa: N802
        return self.cancel_at is not None and time.monotonic() >= self.cancel_at

    def setProgress(self, value):  # noqa: N802
        self.progress.append(value)

    def pushInfo(self, text):  # noqa: N802
        self.info.append(text)

    def pushConsoleInfo(self, text):  # noqa: N802
        self.console.append(text)

    def pushWarning(self, text):  # noqa: N802
        self.warnings.append(text)


def _fake(monkeypatch, code):
    monkeypatch.setenv("RS_PGD_COMMAND", f"{sys.executable} -c \"{code}\"")


def test_progress_lines_become_percentages_and_errors_one_line(monkeypatch):
    _fake(monkeypatch, "import sys, json; "
          "[print(json.dumps({'progress': {'desc': 'predict', 'n': i, 'total': 4, 'fraction': i / 4}}), "
          "file=sys.stderr) for i in range(5)]; print('wrote x'); print('Warning: odd', file=sys.stderr)")
    feedback = Feedback()
    assert run_rs_pgd(["predict"], feedback) == "wrote x\n"
    assert feedback.progress == [0, 25, 50, 75, 100]
    assert feedback.info == ["wrote x"] and feedback.warnings == ["odd"]
    _fake(monkeypatch, "import sys; print('Error: the scene is missing; give a path', file=sys.stderr); sys.exit(2)")
    with pytest.raises(RunnerError, match=r"^the scene is missing; give a path$"):
        run_rs_pgd(["predict"], Feedback())


def test_the_recorded_rs_pgd_gets_progress_json(monkeypatch):
    monkeypatch.setenv("RS_PGD_COMMAND", f"{sys.executable} -m rs_pgd")
    feedback = Feedback()
    with pytest.raises(RunnerError, match="not an rs-pgd checkpoint|does not exist|not found"):
        run_rs_pgd(["predict", os.devnull, os.devnull, "-o", "/nonexistent/x.tif"], feedback)


def test_cancel_stops_the_whole_process_group(monkeypatch, tmp_path):
    pid_file = tmp_path / "child.pid"
    # a parent that ignores SIGINT, with a child (like a DataLoader worker): both must end
    _fake(monkeypatch, "import signal, subprocess, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
          f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
          f"open(r'{pid_file}', 'w').write(str(p.pid)); print('{{}}', file=sys.stderr, flush=True); time.sleep(600)")
    with pytest.raises(Cancelled):
        run_rs_pgd(["fit"], Feedback(cancel_after=1.5))
    child = int(pid_file.read_text())
    for _ in range(50):  # the killed child may linger a moment as a zombie of init
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as handle:
            state = next(line for line in handle if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state.split()[1]


def test_epoch_percent_spans_all_epochs():
    percent = epoch_percent(4)
    assert percent({"desc": "epoch 1/40", "fraction": 0.5}) == 12.5
    assert percent({"desc": "epoch 4/40", "fraction": 1.0}) == 100
    assert percent({"desc": "predict", "fraction": 0.5}) is None


def test_staging_moves_outputs_only_on_commit(tmp_path):
    target = tmp_path / "out" / "classes.tif"
    staging = Staging()
    staged = staging.path_for(str(target))
    open(staged, "w").write("data")
    open(staged + ".aux.xml", "w").write("meta")
    staging.discard()
    assert list((tmp_path / "out").iterdir()) == []
    staging = Staging()
    staged = staging.path_for(str(target))
    open(staged, "w").write("data")
    (tmp_path / "out" / "classes.qml").write_text("old style")
    staging.commit(stale=[str(tmp_path / "out" / "classes.qml")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["classes.tif"]
