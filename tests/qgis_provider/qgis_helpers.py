"""Helpers for tests/qgis_provider: find and run real QGIS (Debian's 3.22: ``qgis_process.bin`` and ``python3`` with
PyQGIS), headless, and the rs-pgd CLI of this checkout as the reference.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_DIR = HERE.parents[1] / "rs_pgd" / "data"
TINY_FIT = {"ENCODER": "resnet18", "TILE": 256, "MARGIN": 32, "EPOCHS": 1, "MAX_STEPS": 1, "STEP_EVERY": 2,
            "VAL_FRACTION": 0.0, "PRECISION": 1}
"""A fit that runs one optimizer step on two windows of the demo scene: seconds, and a loadable model."""


def find_qgis():
    """(qgis_process executable, python with PyQGIS) or a reason why QGIS is unusable."""
    process = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
    if process is None:
        return None, None, "qgis_process not found (apt-get install --no-install-recommends qgis qgis-providers python3-qgis)"
    for python in ("/usr/bin/python3", shutil.which("python3")):
        if python and Path(python).exists():
            env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
            probe = subprocess.run([python, "-c", "import qgis.core"], capture_output=True, env=env, timeout=120)
            if probe.returncode == 0:
                return process, python, None
    return None, None, "no python3 can import qgis.core (apt-get install python3-qgis)"


def qgis_environment(root: Path) -> dict:
    """Environment for headless QGIS with its own profile under ``root``."""
    runtime = root / "xdg-runtime"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(runtime, 0o700)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(runtime),
               QGIS_CUSTOM_CONFIG_PATH=str(root / "qgis-config"), HF_HUB_OFFLINE="1",
               NO_ALBUMENTATIONS_UPDATE="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    for name in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    return env


def qgis_process_run(qgis_tools, root, algorithm, **params):
    """``qgis_process --json run ALG -- KEY=VALUE ...``: (return code, parsed JSON or None, stderr)."""
    args = [qgis_tools[0], "--json", "run", algorithm, "--", *[f"{k}={v}" for k, v in params.items()]]
    done = subprocess.run(args, capture_output=True, text=True, env=qgis_environment(root), timeout=900)
    try:
        result = json.loads(done.stdout)
    except ValueError:
        result = None
    return done.returncode, result, done.stderr


def run_rs_pgd(*args, check=True):
    """The rs-pgd CLI of this checkout (the reference the QGIS algorithms are compared with)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    done = subprocess.run([sys.executable, "-m", "rs_pgd", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)
    if check:
        assert done.returncode == 0, done.stderr
    return done
