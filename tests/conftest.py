"""Shared fixtures: paths to the embedded demo scene and to the real scenes in ../shared/data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "rs_pgd" / "data"


def _shared_data() -> Path:
    """The real scenes: $RS_PGD_SHARED_DATA, else ../shared/data next to the checkout, else /work/shared/data."""
    if os.environ.get("RS_PGD_SHARED_DATA"):
        return Path(os.environ["RS_PGD_SHARED_DATA"])
    for candidate in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "data"


SHARED_DATA = _shared_data()


@pytest.fixture
def demo_scene():
    return DEMO_DIR / "RGB.byte.tif"


@pytest.fixture
def demo_labels():
    return DEMO_DIR / "RGB.byte_gshhg_landwater.gpkg"


@pytest.fixture
def demo_label_raster():
    return DEMO_DIR / "RGB.byte_gshhg_landwater.tif"


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real scenes not found at {SHARED_DATA} (set RS_PGD_SHARED_DATA to the shared/data folder)")
    return SHARED_DATA
