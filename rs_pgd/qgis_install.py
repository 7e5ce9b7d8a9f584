"""Install the QGIS Processing provider into a QGIS profile (``rs-pgd qgis install``), or remove it.

The plugin's files are shipped inside the package (``rs_pgd/qgis/``). Installing copies them into the profile's
``python/plugins/rs_pgd_processing`` folder, records the command that runs this environment's ``rs-pgd`` (the
plugin starts it in a subprocess: QGIS's own Python never imports torch or rasterio) and enables the plugin in the
profile's ``QGIS/QGIS3.ini``. Re-running updates the copy in place. Neither torch nor QGIS is imported here.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from rs_pgd import __version__
from rs_pgd.errors import OutputError

PLUGIN_NAME = "rs_pgd_processing"
"""Folder name of the plugin in a QGIS profile (not ``rs_pgd``, which would shadow this package there)."""

RUNNER_FILE = "rs_pgd_runner.json"
"""File inside the installed plugin that holds the command to run rs-pgd."""

PLUGIN_SOURCE = Path(__file__).resolve().parent / "qgis"
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", RUNNER_FILE)


@dataclass(frozen=True)
class InstallResult:
    """What :func:`install` or :func:`uninstall` did."""

    profile: Path
    plugin_dir: Path
    settings: Path
    command: list[str]
    changed: bool


def default_profile() -> Path:
    """The user's default QGIS 3 profile folder (``$QGIS_CUSTOM_CONFIG_PATH`` wins, as in QGIS itself)."""
    custom = os.environ.get("QGIS_CUSTOM_CONFIG_PATH")
    if custom:
        return Path(custom) / "profiles" / "default"
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "QGIS" / "QGIS3"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support" / "QGIS" / "QGIS3"
    else:
        data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        base = Path(data_home) / "QGIS" / "QGIS3"
    return base / "profiles" / "default"


def runner_command(argv0: str | None = None) -> list[str]:
    """The absolute command that runs this environment's rs-pgd: the ``rs-pgd`` script that is running, else
    ``python -m rs_pgd`` with this interpreter."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    name = Path(argv0).name.lower()
    if name in ("rs-pgd", "rs-pgd.exe", "rs-pgd-script.py") and Path(argv0).is_file():
        return [str(Path(argv0).resolve())]
    return [str(Path(sys.executable).absolute()), "-m", "rs_pgd"]


def install(profile=None, command: list[str] | None = None) -> InstallResult:
    """Copy the plugin into ``profile`` (default: :func:`default_profile`), record ``command``, enable it.

    Parameters
    ----------
    profile : path-like, optional
        A QGIS profile folder such as ``~/.local/share/QGIS/QGIS3/profiles/default``; created if missing.
    command : list of str, optional
        How the plugin starts rs-pgd (default: :func:`runner_command`).

    Returns
    -------
    InstallResult
    """
    profile = _profile_dir(profile)
    command = list(command or runner_command())
    plugins = profile / "python" / "plugins"
    target = plugins / PLUGIN_NAME
    try:
        plugins.mkdir(parents=True, exist_ok=True)
        staging = plugins / f".{PLUGIN_NAME}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(PLUGIN_SOURCE, staging, ignore=_SKIP)
        runner = {"command": command, "version": __version__, "python": sys.executable,
                  "environment": _recorded_environment()}
        (staging / RUNNER_FILE).write_text(json.dumps(runner, indent=2) + "\n", encoding="utf-8")
        old = plugins / f".{PLUGIN_NAME}.{os.getpid()}.old"
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
        settings = _set_enabled(profile, True)
    except OSError as exc:
        raise OutputError(f"cannot install the QGIS plugin into {profile}: {exc.strerror or exc}; "
                          "give a writable profile folder with --profile") from None
    return InstallResult(profile, target, settings, command, True)


def uninstall(profile=None) -> InstallResult:
    """Remove the plugin from ``profile`` and its entry from the profile's settings (nothing if absent)."""
    profile = _profile_dir(profile)
    target = profile / "python" / "plugins" / PLUGIN_NAME
    command: list[str] = []
    changed = target.exists()
    try:
        if changed:
            runner = target / RUNNER_FILE
            if runner.is_file():
                command = json.loads(runner.read_text(encoding="utf-8")).get("command", [])
            shutil.rmtree(target)
        settings = _settings_path(profile)
        if settings.is_file():
            _set_enabled(profile, None)
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot uninstall the QGIS plugin from {profile}: {exc}") from None
    return InstallResult(profile, target, _settings_path(profile), command, changed)


def _recorded_environment() -> dict:
    """Variables the plugin must set for rs-pgd to import this environment (QGIS's own are not passed on)."""
    path = os.environ.get("PYTHONPATH")
    if not path:
        return {}
    return {"PYTHONPATH": os.pathsep.join(str(Path(p).absolute()) for p in path.split(os.pathsep) if p)}


def _profile_dir(profile) -> Path:
    path = Path(profile).expanduser() if profile is not None else default_profile()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a QGIS profile folder; give a folder such as "
                          f"{default_profile()}")
    return path.absolute()


def _settings_path(profile: Path) -> Path:
    return profile / "QGIS" / "QGIS3.ini"


def _set_enabled(profile: Path, enabled: bool | None) -> Path:
    """Set (True/False) or remove (None) ``PLUGIN_NAME`` in the ``[PythonPlugins]`` section of QGIS3.ini.

    The file is edited line by line so that QGIS's other settings (QSettings INI syntax) stay byte for byte.
    """
    path = _settings_path(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = text.splitlines()
    entry = None if enabled is None else f"{PLUGIN_NAME}={'true' if enabled else 'false'}"
    start = next((i for i, line in enumerate(lines) if line.strip() == "[PythonPlugins]"), None)
    if start is None:
        if entry is None:
            return path
        if lines and lines[-1].strip():
            lines.append("")
        lines += ["[PythonPlugins]", entry]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("[")), len(lines))
        body = [line for line in lines[start + 1:end] if line.split("=", 1)[0].strip() != PLUGIN_NAME]
        if entry is not None:
            while body and not body[-1].strip():
                body.pop()
            body.append(entry)
            if end < len(lines):
                body.append("")
        lines = lines[:start + 1] + body + lines[end:]
    from rs_pgd.output import AtomicOutput

    with AtomicOutput(path, sidecars=()) as temp:
        temp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def installed_command(profile=None) -> list[str] | None:
    """The rs-pgd command recorded in ``profile``'s plugin, or None when the plugin is not installed there."""
    runner = _profile_dir(profile) / "python" / "plugins" / PLUGIN_NAME / RUNNER_FILE
    if not runner.is_file():
        return None
    return json.loads(runner.read_text(encoding="utf-8")).get("command")
