"""Kill a child process at a chosen point of its run: the same point on any machine, with no sleep and no race.

Polling for a temporary file and killing when it shows up is a race: a fast machine may finish (and rename the
file onto its target) between the poll and the kill, and the test then skips or passes without testing anything.
The two tools here make the moment of the kill deterministic; neither changes anything in ``rs_pgd``.

* :func:`pause_after` gives Python source for the start of a ``python -c`` child: it wraps one function so that,
  once its ``calls``-th call has returned, the child writes ``PAUSED`` on stdout and blocks reading its stdin.
  :func:`paused` starts such a child and waits for that line (its timeout only catches a child that hangs or
  never gets there); inside its ``with`` block the test looks at the disk while the process stands still in the
  middle of its run, and leaving the block SIGKILLs it there.
* :func:`run_killed_at_size` runs the CLI under ``RLIMIT_FSIZE`` with SIGXFSZ at its default action (Python
  ignores SIGXFSZ at startup; the child restores the default before importing rs_pgd). The kernel then
  terminates the process, with no cleanup code run, as a write would grow a file past ``limit`` bytes: in the
  middle of writing an output, at a byte count the test chooses. Byte-code caching is off, so no ``.pyc`` write
  can trip the limit first.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

PAUSED = b"PAUSED\n"
CLI = "from rs_pgd.cli.main import cli; cli(prog_name='rs-pgd')"


def pause_after(module: str, function: str, calls: int = 1) -> str:
    """Source that makes ``module.function`` pause the process after its ``calls``-th call returns.

    Module-level lookups of the name (``function(...)`` inside ``module``) reach the wrapper; the real function
    still runs in full before the pause, so what it wrote is on disk when the test looks.
    """
    return _pausing(module, function, calls, before=False, when="True")


def pause_before(module: str, function: str, calls: int = 1, when: str = "True") -> str:
    """Source that makes ``module.function`` (a dotted name such as ``"AtomicOutput.commit"`` for a method) pause
    the process before its ``calls``-th call for which the expression ``when`` (over ``args``/``kwargs``) holds."""
    return _pausing(module, function, calls, before=True, when=when)


def _pausing(module: str, function: str, calls: int, before: bool, when: str) -> str:
    owner, _, name = function.rpartition(".")
    return (
        "import importlib, sys\n"
        f"_owner = importlib.import_module({module!r})\n"
        + (f"_owner = getattr(_owner, {owner!r})\n" if owner else "")
        + f"_real, _calls = getattr(_owner, {name!r}), [0]\n"
        "def _pause():\n"
        f"    sys.stdout.buffer.write({PAUSED!r}); sys.stdout.flush()\n"
        "    sys.stdin.read()  # blocks: the parent keeps stdin open and kills this process\n"
        "def _pausing(*args, **kwargs):\n"
        f"    counted = bool({when})\n"
        "    _calls[0] += counted\n"
        f"    if {before!r} and counted and _calls[0] == {int(calls)}:\n"
        "        _pause()\n"
        "    result = _real(*args, **kwargs)\n"
        f"    if not {before!r} and counted and _calls[0] == {int(calls)}:\n"
        "        _pause()\n"
        "    return result\n"
        f"setattr(_owner, {name!r}, _pausing)\n"
    )


@contextmanager
def paused(code: str, args, cwd, env, timeout: float = 300.0):
    """Run ``python -c code ARGS``, wait until it pauses, yield its Popen, then SIGKILL it on leaving the block.

    Inside the block the child stands still at its pause point; after it, ``proc.returncode`` is ``-SIGKILL``
    when the kill is what ended it. AssertionError if the child ends, or takes over ``timeout`` s, before pausing.
    """
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    try:
        _wait_paused(proc, stderr, timeout)
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)  # nothing happens if it already ended
        proc.wait(timeout=60)
        proc.stdin.close()
        proc.stdout.close()
        stderr.close()


def _wait_paused(proc: subprocess.Popen, stderr, timeout: float) -> None:
    deadline, seen = time.monotonic() + timeout, b""
    fd = proc.stdout.fileno()
    while PAUSED not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"the child did not reach its pause point in {timeout:.0f} s: {_tail(stderr)}")
        chunk = os.read(fd, 4096)
        if not chunk:  # end of file: the child ended without pausing
            raise AssertionError(f"the child ended (exit status {proc.wait()}) before its pause point: {_tail(stderr)}")
        seen += chunk


def _tail(handle, size: int = 2000) -> str:
    handle.seek(0)
    return handle.read().decode(errors="replace")[-size:]


def run_killed_at_size(args, cwd, env, limit: int, timeout: float = 180.0) -> subprocess.CompletedProcess:
    """Run ``rs-pgd ARGS`` so that the kernel kills it (SIGXFSZ) as a file it writes grows past ``limit`` bytes."""
    code = f"import signal; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); {CLI}"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file next to the output

    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                          env={**env, "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit_file_size)
