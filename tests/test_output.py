"""GeoTIFF/COG writers and the atomic output path."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS

from rs_pgd.errors import OutputError
from rs_pgd.grid import WindowGrid
from rs_pgd.output import (
    AtomicOutput,
    StreamingClassWriter,
    StreamingProbabilityWriter,
    category_names,
    read_category_names,
)
from rs_pgd.stitch import RowStitcher, cut_window, pad_for_grid

H, W = 600, 520
CLASSES = SimpleNamespace(
    values=[0, 1, 3],
    names=["water", "land", "cloud & shadow"],
    colours=[(0, 0, 255), "#00ff00", (200, 200, 200, 255)],
)


@pytest.fixture
def profile():
    return {
        "width": W,
        "height": H,
        "crs": CRS.from_epsg(32633),
        "transform": Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4_000_000.0),
    }


def class_map(seed=0):
    rng = np.random.default_rng(seed)
    data = rng.choice(np.array(CLASSES.values, dtype=np.uint8), size=(H, W))
    data[:5] = 255  # nodata rows
    return data


def write_in_bands(writer, data, band_rows=96):
    for r in range(0, data.shape[-2], band_rows):
        writer.write(r, data[..., r : r + band_rows, :])


def hidden_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_class_writer_cog(tmp_path, profile):
    data = class_map()
    path = tmp_path / "pred.tif"
    with StreamingClassWriter(path, profile, CLASSES, blocksize=256) as writer:
        write_in_bands(writer, data)
    assert hidden_files(tmp_path) == []  # temporary and streaming files are gone
    with rasterio.open(path) as ds:
        assert (ds.width, ds.height, ds.count) == (W, H, 1)
        assert ds.crs == profile["crs"] and ds.transform == profile["transform"]
        assert ds.nodata == 255 and ds.dtypes[0] == "uint8"
        assert np.array_equal(ds.read(1), data)
        cmap = ds.colormap(1)
        assert cmap[0] == (0, 0, 255, 255) and cmap[1] == (0, 255, 0, 255) and cmap[3] == (200, 200, 200, 255)
        assert cmap[255][3] == 0
        assert ds.descriptions == ("class",)
        assert json.loads(ds.tags(1)["CLASS_NAMES"]) == CLASSES.names
        # a valid COG: tiled, DEFLATE, overviews, GDAL's COG layout
        assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
        assert ds.overviews(1) == [2, 4]
        structure = ds.tags(ns="IMAGE_STRUCTURE")
        assert structure.get("LAYOUT") == "COG" and structure["COMPRESSION"] == "DEFLATE"
    assert read_category_names(path) == ["water", "land", "", "cloud & shadow"]


def test_category_names_are_read_by_gdal(tmp_path, profile):
    """GDAL itself parses the sidecar: a GDAL copy of the output carries the names into its own sidecar."""
    path = tmp_path / "pred.tif"
    with StreamingClassWriter(path, profile, CLASSES, cog=False) as writer:
        write_in_bands(writer, class_map())
    copy = tmp_path / "copy.tif"
    rasterio.shutil.copy(path, copy, driver="GTiff")
    assert read_category_names(copy) == category_names(CLASSES)
    with rasterio.open(path) as ds:
        assert ds.overviews(1) == []  # plain tiled GeoTIFF
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"


def test_class_writer_from_stitcher(tmp_path, profile):
    """Stitcher bands go straight to the writer; argmax of stitched identity scores gives the class map back."""
    labels = class_map(seed=1)
    scores = np.stack([(labels == v) for v in CLASSES.values]).astype(np.float32)
    grid = WindowGrid(H, W, tile=128, margin=32, stride=64)
    padded, top, left = pad_for_grid(grid, scores)
    stitcher = RowStitcher(grid, len(CLASSES.values), blend="cosine", dtype=np.float32)
    lut = np.array(CLASSES.values, dtype=np.uint8)
    path = tmp_path / "pred.tif"
    with StreamingClassWriter(path, profile, CLASSES) as writer:
        pairs = ((w, cut_window(padded, (top, left), w)) for w in grid.windows())
        for band in stitcher.finished(pairs):
            values = lut[band.data.argmax(0)]
            values[band.data.max(0) == 0] = 255
            writer.write(band.row_start, values)
    with rasterio.open(path) as ds:
        assert np.array_equal(ds.read(1), labels)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_probability_writer(tmp_path, profile, dtype):
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(3), size=(H, W)).transpose(2, 0, 1)
    p[:, :3, :7] = np.nan
    path = tmp_path / "proba.tif"
    with StreamingProbabilityWriter(path, profile, CLASSES, dtype=dtype, blocksize=256) as writer:
        write_in_bands(writer, p)
    with rasterio.open(path) as ds:
        assert ds.count == 3 and ds.dtypes == (dtype,) * 3
        assert ds.descriptions == tuple(CLASSES.names)
        assert ds.crs == profile["crs"] and ds.transform == profile["transform"]
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and ds.overviews(1)
        stored = ds.read()
        if dtype == "uint8":
            assert ds.nodata == 255 and (stored[:, :3, :7] == 255).all()
            decoded = stored * np.array(ds.scales)[:, None, None]
            valid = stored != 255
            assert np.abs(decoded[valid] - p[valid]).max() <= 0.5 / 254 + 1e-9
            assert stored[valid].max() <= 254
        else:
            assert np.isnan(ds.nodata) and np.isnan(stored[:, :3, :7]).all()
            assert np.allclose(stored[:, 3:], p[:, 3:].astype(np.float32), rtol=0, atol=0)


def test_incomplete_output_is_refused_and_target_kept(tmp_path, profile):
    path = tmp_path / "pred.tif"
    path.write_bytes(b"old result")
    writer = StreamingClassWriter(path, profile, CLASSES)
    writer.write(0, class_map()[:100])
    with pytest.raises(OutputError, match="never written"):
        writer.close()
    assert path.read_bytes() == b"old result"
    assert hidden_files(tmp_path) == []


def test_writer_exception_keeps_existing_target(tmp_path, profile):
    path = tmp_path / "pred.tif"
    path.write_bytes(b"old result")
    with pytest.raises(RuntimeError):
        with StreamingClassWriter(path, profile, CLASSES) as writer:
            writer.write(0, class_map()[:100])
            raise RuntimeError("model crashed")
    assert path.read_bytes() == b"old result"
    assert hidden_files(tmp_path) == []


def test_bad_band_shape(tmp_path, profile):
    with StreamingClassWriter(tmp_path / "p.tif", profile, CLASSES) as writer:
        with pytest.raises(OutputError, match="does not fit"):
            writer.write(H - 10, np.zeros((20, W), np.uint8))
        write_in_bands(writer, class_map())


# -- AtomicOutput -------------------------------------------------------------------------------------------
def test_atomic_success_replaces_target_and_sidecars(tmp_path):
    path = tmp_path / "out.tif"
    path.write_text("old")
    (tmp_path / "out.tif.aux.xml").write_text("stale")
    with AtomicOutput(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tif.") and tmp.name.endswith(".tmp.tif")
        assert str(os.getpid()) in tmp.name
        tmp.write_text("new")
        assert path.read_text() == "old"  # nothing at the target until success
    assert path.read_text() == "new"
    assert not (tmp_path / "out.tif.aux.xml").exists()
    assert hidden_files(tmp_path) == []


def test_atomic_exception_leaves_no_file(tmp_path):
    path = tmp_path / "out.tif"
    with pytest.raises(ValueError):
        with AtomicOutput(path) as tmp:
            tmp.write_text("partial")
            raise ValueError("boom")
    assert not path.exists() and hidden_files(tmp_path) == []


def test_atomic_exception_keeps_existing_target(tmp_path):
    path = tmp_path / "out.tif"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with AtomicOutput(path) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert path.read_text() == "old" and hidden_files(tmp_path) == []


def test_atomic_validation_errors(tmp_path):
    with pytest.raises(OutputError, match="does not exist; create it"):
        AtomicOutput(tmp_path / "missing" / "out.tif")
    scene = tmp_path / "scene.tif"
    scene.write_text("input")
    with pytest.raises(OutputError, match="also an input"):
        AtomicOutput(tmp_path / "." / "scene.tif", inputs=[scene])
    with pytest.raises(OutputError, match="directory"):
        AtomicOutput(tmp_path)
    with pytest.raises(OutputError, match="already exists"):
        AtomicOutput(scene, overwrite=False)
    assert isinstance(OutputError("x"), OSError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_atomic_unwritable_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            AtomicOutput(ro / "out.tif")
    finally:
        ro.chmod(0o700)


def test_writer_validates_target_before_work(tmp_path, profile):
    with pytest.raises(OutputError, match="does not exist"):
        StreamingClassWriter(tmp_path / "nope" / "p.tif", profile, CLASSES)
    with pytest.raises(OutputError, match="renumber"):
        StreamingClassWriter(tmp_path / "p.tif", profile, SimpleNamespace(values=[0, 255], names=["a", "b"]))


def test_georeference_copied_from_input_dataset(tmp_path, demo_scene):
    with rasterio.open(demo_scene) as src:
        path = tmp_path / "demo_pred.tif"
        with StreamingClassWriter(path, src, CLASSES, inputs=[demo_scene]) as writer:
            for r in range(0, src.height, 512):
                writer.write(r, np.zeros((min(512, src.height - r), src.width), np.uint8))
        with rasterio.open(path) as out:
            assert out.crs == src.crs and out.transform == src.transform
            assert (out.width, out.height) == (src.width, src.height)
            assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


@pytest.mark.parametrize("name", ["pred.tif", "pred.TIF", "pred.tiff", "a.b.Tiff"])
def test_geotiff_names_are_accepted(name):
    from pathlib import Path

    from rs_pgd.output import GEOTIFF_SUFFIXES, check_format_suffix

    assert check_format_suffix(name, GEOTIFF_SUFFIXES, "a GeoTIFF") == Path(name)


@pytest.mark.parametrize(("name", "hint"), [("pred.png", "pred.tif"), ("pred", "pred.tif"), ("pred.jpg", "pred.tif")])
def test_other_names_are_refused_with_the_geotiff_name(name, hint):
    """issue 14 #13: -o pred.png wrote a GeoTIFF named .png."""
    from rs_pgd.output import GEOTIFF_SUFFIXES, check_format_suffix

    with pytest.raises(OutputError, match=rf"-o {name} .*writes a GeoTIFF there; name it {hint}$"):
        check_format_suffix(name, GEOTIFF_SUFFIXES, "a GeoTIFF")
