"""Run the recorded ``rs-pgd`` command in a subprocess, relay its progress, stop it on cancel.

Standard library only (no QGIS import), so it can be tested outside QGIS. ``feedback`` is anything with
QgsProcessingFeedback's ``isCanceled``, ``setProgress``, ``pushInfo``, ``pushConsoleInfo`` and ``pushWarning``.
"""

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import threading
import uuid

RUNNER_FILE = "rs_pgd_runner.json"
COMMAND_VARIABLE = "RS_PGD_COMMAND"
STOP_GRACE_SECONDS = 1.0

# Variables QGIS sets for its own GDAL/PROJ/Python; rs-pgd's environment brings its own, so they are not passed on.
_QGIS_ONLY_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "GDAL_DATA", "GDAL_DRIVER_PATH", "PROJ_LIB", "PROJ_DATA",
                        "GDAL_SKIP", "QGIS_PREFIX_PATH")


class RunnerError(Exception):
    """rs-pgd failed: the message is its one-line error."""


class Cancelled(Exception):
    """The user cancelled; the subprocess has been stopped."""


def runner_settings(folder=None) -> dict:
    """The settings ``rs-pgd qgis install`` recorded (command, pythonpath), or {} when there are none."""
    path = os.path.join(folder or os.path.dirname(os.path.abspath(__file__)), RUNNER_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def rs_pgd_command() -> list:
    """How to start rs-pgd: ``$RS_PGD_COMMAND``, else the recorded command, else ``rs-pgd`` on PATH."""
    if os.environ.get(COMMAND_VARIABLE):
        return shlex.split(os.environ[COMMAND_VARIABLE], posix=os.name != "nt")
    command = runner_settings().get("command")
    if command:
        return list(command)
    found = shutil.which("rs-pgd")
    if found:
        return [found]
    raise RunnerError("rs-pgd was not found; run 'rs-pgd qgis install' from the Python environment that has "
                      "rs-pgd, then restart QGIS")


def describe_command() -> str:
    try:
        return " ".join(rs_pgd_command())
    except RunnerError:
        return "rs-pgd, not found: run 'rs-pgd qgis install'"


def child_environment() -> dict:
    """QGIS's environment without the variables that point at QGIS's own GDAL, PROJ and Python."""
    env = {k: v for k, v in os.environ.items() if k not in _QGIS_ONLY_VARIABLES}
    recorded = runner_settings().get("environment") or {}
    env.update({str(k): str(v) for k, v in recorded.items()})
    env["RS_PGD_PROGRESS"] = "json"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_rs_pgd(args, feedback, progress=None, echo_stdout=True) -> str:
    """Run ``rs-pgd --progress json ARGS``; return its standard output.

    Parameters
    ----------
    args : list of str
        Command-line arguments after ``rs-pgd``.
    feedback : QgsProcessingFeedback-like
        Receives progress (0-100), messages and warnings; polled for cancellation every 0.1 s.
    progress : callable, optional
        Maps a JSON progress record (``desc``, ``n``, ``total``, ``fraction``) to a percentage, or None to skip.
    echo_stdout : bool
        Show standard output lines in the log.

    Raises
    ------
    Cancelled
        When ``feedback.isCanceled()`` became true; the process group was interrupted, then killed after
        ``STOP_GRACE_SECONDS``.
    RunnerError
        When rs-pgd exits with an error: the message is its one-line ``Error: ...`` text.
    """
    command = [*rs_pgd_command(), "--progress", "json", *[str(a) for a in args]]
    if hasattr(feedback, "pushCommandInfo"):
        feedback.pushCommandInfo(" ".join(shlex.quote(c) for c in command))
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=child_environment(), **_new_group())
    except OSError as exc:
        raise RunnerError(f"cannot start rs-pgd ({command[0]}: {exc.strerror or exc}); run 'rs-pgd qgis install' "
                          "again from the environment that has rs-pgd") from None
    lines = queue.Queue()
    readers = [threading.Thread(target=_read_lines, args=(stream, name, lines), daemon=True)
               for stream, name in ((process.stdout, "out"), (process.stderr, "err"))]
    for reader in readers:
        reader.start()
    out, errors, last_err = [], [], []
    open_streams = 2
    while open_streams:
        if feedback.isCanceled():
            stop(process)
            raise Cancelled()
        try:
            name, line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
        elif name == "out":
            out.append(line)
            if echo_stdout and line.strip():
                feedback.pushInfo(line.rstrip())
        else:
            _stderr_line(line.rstrip(), feedback, progress, errors, last_err)
    code = process.wait()
    if feedback.isCanceled():
        raise Cancelled()
    if code != 0:
        message = errors[-1] if errors else (last_err[-1] if last_err else f"rs-pgd exited with status {code}")
        raise RunnerError(message)
    return "".join(out)


def stop(process) -> None:
    """Interrupt the process group (rs-pgd removes its temporary files), then kill it if it is still running."""
    if process.poll() is not None:
        return
    _signal_group(process, interrupt=True)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        _signal_group(process, interrupt=False)
        process.wait()


def _new_group() -> dict:
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _signal_group(process, interrupt: bool) -> None:
    try:
        if os.name == "nt":
            if interrupt:
                process.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                process.kill()
        else:
            os.killpg(process.pid, signal.SIGINT if interrupt else signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _read_lines(stream, name, lines) -> None:
    for raw in iter(stream.readline, b""):
        lines.put((name, raw.decode("utf-8", errors="replace")))
    stream.close()
    lines.put((name, None))


def _stderr_line(line, feedback, progress, errors, last_err) -> None:
    if line.startswith("{"):
        try:
            record = json.loads(line).get("progress")
        except (ValueError, AttributeError):
            record = None
        if isinstance(record, dict):
            percent = progress(record) if progress else _default_percent(record)
            if percent is not None:
                feedback.setProgress(max(0.0, min(100.0, percent)))
            return
    if not line.strip():
        return
    last_err.append(line)
    if line.startswith("Error: "):
        errors.append(line[len("Error: "):])
    elif line.startswith("Warning: "):
        feedback.pushWarning(line[len("Warning: "):])
    else:
        feedback.pushConsoleInfo(line)


def _default_percent(record):
    fraction = record.get("fraction")
    return None if fraction is None else 100.0 * fraction


def epoch_percent(epochs: int):
    """A progress mapper for ``rs-pgd fit``: bars named ``epoch i/N`` become one 0-100 % over ``epochs``."""

    def percent(record):
        desc, fraction = str(record.get("desc", "")), record.get("fraction")
        if not desc.startswith("epoch ") or fraction is None:
            return None
        try:
            current = int(desc.split()[1].split("/")[0])
        except (IndexError, ValueError):
            return None
        return 100.0 * min(1.0, (current - 1 + fraction) / max(1, epochs))

    return percent


class Staging:
    """Hidden folders beside the destinations: rs-pgd writes there; files move into place only on success.

    A cancelled or failed run removes the folders, so a destination never holds a partial output.
    """

    def __init__(self):
        self.folders = {}

    def path_for(self, destination: str) -> str:
        folder = os.path.dirname(os.path.abspath(destination))
        if folder not in self.folders:
            os.makedirs(folder, exist_ok=True)
            staging = os.path.join(folder, f".rs_pgd-{uuid.uuid4().hex[:12]}.partial")
            os.mkdir(staging)
            self.folders[folder] = staging
        return os.path.join(self.folders[folder], os.path.basename(destination))

    def commit(self, stale=()) -> None:
        """Move every staged file into its destination folder; remove ``stale`` files that were not rewritten."""
        for folder, staging in self.folders.items():
            names = set(os.listdir(staging))
            for path in stale:
                if os.path.dirname(os.path.abspath(path)) == folder and os.path.basename(path) not in names \
                        and os.path.isfile(path):
                    os.remove(path)
            for name in sorted(names):
                os.replace(os.path.join(staging, name), os.path.join(folder, name))
        self.discard()

    def discard(self) -> None:
        for staging in self.folders.values():
            shutil.rmtree(staging, ignore_errors=True)
        self.folders = {}
