"""Progress reporting: a tqdm bar for people, or one JSON line per update for programs (QGIS, schedulers).

``rs-pgd --progress json ...`` (or ``RS_PGD_PROGRESS=json`` in the environment, which child processes inherit)
turns every progress bar into JSON lines on stderr, each a complete object on its own line::

    {"progress": {"desc": "predict", "n": 12, "total": 48, "fraction": 0.25}}

Lines are emitted at the first update, whenever the whole-percent value changes, and at the end, so a caller
never has to parse a terminal bar. This module does not import torch (nor tqdm until a bar is made).
"""

from __future__ import annotations

import json
import os
import sys

ENVIRONMENT_VARIABLE = "RS_PGD_PROGRESS"
MODES = ("bar", "json", "none")


def set_mode(mode: str) -> None:
    """Choose how progress is shown in this process and its children: ``"bar"`` (tqdm), ``"json"`` or ``"none"``."""
    if mode not in MODES:
        raise ValueError(f"unknown progress mode {mode!r}; use one of {', '.join(MODES)}")
    os.environ[ENVIRONMENT_VARIABLE] = mode


def json_mode() -> bool:
    """True when progress is reported as JSON lines."""
    return os.environ.get(ENVIRONMENT_VARIABLE, "bar").strip().lower() == "json"


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "win"):
    """A progress bar with tqdm's ``update``/``close`` interface: tqdm normally, JSON lines in JSON mode.

    Parameters
    ----------
    total : int
        Number of steps the bar counts to.
    desc : str
        What is being counted (``"predict"``, ``"epoch 2/40"``): the ``desc`` field of the JSON lines.
    enabled : bool
        False shows nothing (``--quiet``, non-main ranks).
    unit : str
        Unit name shown by tqdm.
    """
    if json_mode():
        return JsonProgress(total, desc, enabled)
    if os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower() == "none":
        enabled = False
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True)


def track(iterable, desc: str, total: int | None = None):
    """Yield from ``iterable``, reporting each item as a JSON progress line in JSON mode (silent otherwise)."""
    if not json_mode():
        yield from iterable
        return
    if total is None:
        total = len(iterable) if hasattr(iterable, "__len__") else 0
    bar = JsonProgress(total, desc)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()


class JsonProgress:
    """Writes ``{"progress": {...}}`` lines to stderr; a drop-in for the parts of tqdm that rs-pgd uses."""

    def __init__(self, total: int, desc: str, enabled: bool = True, stream=None):
        self.total = int(total or 0)
        self.desc = str(desc)
        self.n = 0
        self.enabled = enabled
        self.stream = stream
        self.postfix = {}
        self._last_percent = None
        self._closed = False
        self._emit()

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps; print a line when the whole percent changes."""
        self.n += int(n)
        self._emit()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        """Attach values (loss, speed) to the following lines, under ``postfix``."""
        self.postfix = {**(ordered_dict or {}), **values}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = str(desc or "")

    def refresh(self) -> None:
        self._emit(force=True)

    def write(self, message: str) -> None:
        """Print a message line (tqdm.write's role) on stderr."""
        if self.enabled:
            stream = self.stream or sys.stderr
            stream.write(str(message).rstrip("\n") + "\n")
            stream.flush()

    def close(self) -> None:
        """Print the final line (once)."""
        if not self._closed:
            self._closed = True
            self._emit(force=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _emit(self, force: bool = False) -> None:
        if not self.enabled:
            return
        fraction = min(1.0, self.n / self.total) if self.total > 0 else None
        percent = None if fraction is None else min(100, self.n * 100 // self.total)
        if not force and percent == self._last_percent and self.n > 0:
            return
        self._last_percent = percent
        record = {"desc": self.desc, "n": self.n, "total": self.total, "fraction": fraction}
        if self.postfix:
            record["postfix"] = {k: str(v) for k, v in self.postfix.items()}
        stream = self.stream or sys.stderr
        stream.write(json.dumps({"progress": record}) + "\n")
        stream.flush()
