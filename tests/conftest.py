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


def write_demo_crop(path, size: int, row_off: int = 128, col_off: int = 128):
    """Write a ``size x size`` crop of the demo scene (land, water and a little nodata) to ``path``."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(DEMO_DIR / "RGB.byte.tif") as src:
        window = Window(col_off, row_off, size, size)
        profile = src.profile | {"width": size, "height": size, "transform": src.window_transform(window)}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return path


@pytest.fixture
def one_torch_thread():
    """Run a torch test on one thread (small tensors are several times faster so on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
