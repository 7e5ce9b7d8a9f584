"""Fixtures for tests/qgis_provider: real QGIS (Debian's 3.22), headless, with rs-pgd's provider in a temporary profile.

Without QGIS the tests skip with the reason, except under ``CI=true``, where a missing QGIS fails the run.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qgis_provider.qgis_helpers import DEMO_DIR, find_qgis, qgis_environment

_QGIS = None


def _qgis():
    global _QGIS
    if _QGIS is None:
        _QGIS = find_qgis()
    return _QGIS


@pytest.fixture(scope="session")
def qgis_tools():
    """(qgis_process, pyqgis_python); skips (fails under CI=true) when QGIS is missing."""
    process, python, reason = _qgis()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and QGIS is unusable: {reason}")
        pytest.skip(reason)
    return process, python


@pytest.fixture(scope="session")
def qgis_root(tmp_path_factory, qgis_tools):
    """A temporary QGIS configuration folder with rs-pgd's provider installed by the CLI."""
    root = tmp_path_factory.mktemp("qgis")
    env = qgis_environment(root)
    profile = Path(env["QGIS_CUSTOM_CONFIG_PATH"]) / "profiles" / "default"
    done = subprocess.run([sys.executable, "-m", "rs_pgd", "qgis", "install", "--profile", str(profile)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture(scope="session")
def demo_files():
    return {"scene": DEMO_DIR / "RGB.byte.tif", "labels": DEMO_DIR / "RGB.byte_gshhg_landwater.gpkg",
            "label_raster": DEMO_DIR / "RGB.byte_gshhg_landwater.tif"}
