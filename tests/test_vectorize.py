"""rs_pgd.vectorize: window-by-window polygons equal whole-raster polygons and rasterise back exactly."""

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.features import rasterize

from rs_pgd import vectorization as vectorize_module
from rs_pgd.classes import read_class_names
from rs_pgd.errors import OutputError, SceneError
from rs_pgd.vectorization import vectorize

CRS = "EPSG:32618"
TRANSFORM = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0)


def write_class_map(path, array, nodata=255, tags=None, transform=TRANSFORM, crs=CRS):
    """A single-band class map GeoTIFF (uint8 unless the array says otherwise)."""
    profile = dict(driver="GTiff", width=array.shape[1], height=array.shape[0], count=1, dtype=array.dtype.name,
                   crs=crs, transform=transform, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
        if tags:
            dst.update_tags(1, **tags)
    return path


def random_blobs(shape, classes, seed, nodata_fraction=0.0):
    """Blocky random class map (2x2 blocks of noise give corner-touching and holed regions)."""
    rng = np.random.default_rng(seed)
    small = rng.choice(np.asarray(classes, dtype=np.uint8), size=(shape[0] // 2 + 1, shape[1] // 2 + 1))
    array = np.kron(small, np.ones((2, 2), dtype=np.uint8))[: shape[0], : shape[1]]
    noise = rng.random(shape) < 0.05
    array[noise] = rng.choice(np.asarray(classes, dtype=np.uint8), size=int(noise.sum()))
    if nodata_fraction:
        array[rng.random(shape) < nodata_fraction] = 255
    return array


def rasterise_back(frame, shape, transform):
    return rasterize(
        ((geom, int(value)) for geom, value in zip(frame.geometry, frame["class_id"])),
        out_shape=shape, transform=transform, fill=255, dtype="uint8",
    )


def per_class_union_area(frame):
    return {int(v): float(group.geometry.union_all().area) for v, group in frame.groupby("class_id")}


def read_raster(path):
    with rasterio.open(path) as src:
        return src.read(1), src.transform, src.crs


# ----------------------------------------------------------------------------------------------------------------
# Demo label raster (791 x 718)


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory):
    raster = Path(__file__).resolve().parents[1] / "rs_pgd" / "data" / "RGB.byte_gshhg_landwater.tif"
    folder = tmp_path_factory.mktemp("vectorize")
    small = vectorize(raster, folder / "tile64.gpkg", tile=64)
    whole = vectorize(raster, folder / "whole.gpkg", tile=1024)
    return raster, folder, small, whole


def test_small_tiles_give_the_same_polygons_as_one_window(demo_outputs):
    raster, folder, small, whole = demo_outputs
    a = gpd.read_file(folder / "tile64.gpkg")
    b = gpd.read_file(folder / "whole.gpkg")
    assert small["polygons"] == whole["polygons"] == len(a) == len(b)
    assert a.groupby("class_id").size().to_dict() == b.groupby("class_id").size().to_dict()
    area_a, area_b = per_class_union_area(a), per_class_union_area(b)
    assert area_a.keys() == area_b.keys() == {0, 1}
    for value in area_a:
        assert area_a[value] == pytest.approx(area_b[value], rel=1e-6)
    assert a.geometry.is_valid.all() and (a.geom_type == "Polygon").all()


def test_rasterising_the_polygons_reproduces_the_raster(demo_outputs):
    raster, folder, _, _ = demo_outputs
    array, transform, crs = read_raster(raster)
    frame = gpd.read_file(folder / "tile64.gpkg")
    assert np.array_equal(rasterise_back(frame, array.shape, transform), array)


def test_output_crs_is_the_rasters(demo_outputs):
    raster, folder, small, _ = demo_outputs
    _, _, crs = read_raster(raster)
    frame = gpd.read_file(folder / "tile64.gpkg")
    assert frame.crs == crs
    assert small["crs"] == "EPSG:32618"


def test_merging_is_needed_the_check_has_teeth(tmp_path, demo_label_raster, monkeypatch):
    """Without the border union, small tiles split polygons: count and rasterisation-free counts differ."""
    monkeypatch.setattr(vectorize_module, "_merge", lambda polygons: polygons)
    broken = vectorize(demo_label_raster, tmp_path / "broken.gpkg", tile=64)
    whole = vectorize(demo_label_raster, tmp_path / "whole.gpkg", tile=1024)
    assert broken["polygons"] > whole["polygons"]


# ----------------------------------------------------------------------------------------------------------------
# Synthetic class maps


@pytest.mark.parametrize("tile", [5, 16, 33])
def test_random_map_polygons_match_one_window_polygon_by_polygon(tmp_path, tile):
    array = random_blobs((61, 47), [0, 1, 3], seed=tile, nodata_fraction=0.03)
    raster = write_class_map(tmp_path / "pred.tif", array)
    vectorize(raster, tmp_path / "tiled.gpkg", tile=tile)
    vectorize(raster, tmp_path / "whole.gpkg", tile=4096)
    a = gpd.read_file(tmp_path / "tiled.gpkg")
    b = gpd.read_file(tmp_path / "whole.gpkg")
    assert len(a) == len(b)
    key = lambda f: sorted(zip(f["class_id"], f.geometry.area.round(3), f.geometry.representative_point().x))  # noqa: E731
    ordered_a = sorted(range(len(a)), key=lambda i: (a["class_id"][i], a.geometry[i].area, a.geometry[i].bounds))
    ordered_b = sorted(range(len(b)), key=lambda i: (b["class_id"][i], b.geometry[i].area, b.geometry[i].bounds))
    for i, j in zip(ordered_a, ordered_b):
        assert a["class_id"][i] == b["class_id"][j]
        assert a.geometry[i].equals(b.geometry[j])
    assert key(a) == key(b)
    assert np.array_equal(rasterise_back(a, array.shape, TRANSFORM), array)


def test_nodata_pixels_get_no_polygon(tmp_path):
    array = np.zeros((20, 30), dtype=np.uint8)
    array[:, 15:] = 2
    array[5:10, 5:25] = 255
    raster = write_class_map(tmp_path / "pred.tif", array)
    summary = vectorize(raster, tmp_path / "out.gpkg", tile=8)
    frame = gpd.read_file(tmp_path / "out.gpkg")
    assert set(frame["class_id"]) == {0, 2}
    assert 255 not in set(frame["class_id"])
    assert frame.geometry.area.sum() == pytest.approx((600 - 100) * 900.0)
    assert np.array_equal(rasterise_back(frame, array.shape, TRANSFORM), array)
    assert summary["polygons"] == len(frame)


def test_min_area_drops_small_polygons(tmp_path, demo_label_raster):
    full = vectorize(demo_label_raster, tmp_path / "all.gpkg", tile=256)
    min_area = 10 * 300.0 * 300.0  # ten pixels
    summary = vectorize(demo_label_raster, tmp_path / "big.gpkg", tile=256, min_area=min_area)
    everything = gpd.read_file(tmp_path / "all.gpkg")
    big = gpd.read_file(tmp_path / "big.gpkg")
    expected = int((everything.geometry.area >= min_area).sum())
    assert 0 < expected < len(everything)
    assert len(big) == expected == summary["polygons"]
    assert summary["dropped"] == full["polygons"] - expected
    assert (big.geometry.area >= min_area).all()


def _neighbours(geometries):
    """Index pairs of polygons that share a border of positive length."""
    import shapely

    tree = shapely.STRtree(geometries)
    pairs = set()
    for i, j in zip(*tree.query(geometries, predicate="intersects")):
        if i < j and shapely.length(shapely.intersection(geometries[i], geometries[j])) > 0:
            pairs.add((int(i), int(j)))
    return pairs


def _gaps_and_overlaps(geometries, reference):
    """Area inside the reference coverage's union covered by no polygon, and area covered twice."""
    import shapely

    union = shapely.union_all(geometries)
    holes = shapely.area(shapely.difference(shapely.union_all(reference), union))
    overlap = float(shapely.area(geometries).sum() - shapely.area(union))
    return float(holes), overlap


def test_simplify_keeps_neighbours_sharing_their_borders(tmp_path):
    """Coverage simplification: shared borders move together, so no gap or overlap opens between neighbours."""
    import shapely

    rows, cols = np.mgrid[:48, :48]
    array = np.where(rows + 0.6 * cols < 30, 1, 3).astype(np.uint8)  # staircase borders simplification can cut
    array[(rows - 30) ** 2 + (cols - 28) ** 2 < 120] = 2
    array[(rows - 12) ** 2 + (cols - 36) ** 2 < 30] = 1
    raster = write_class_map(tmp_path / "pred.tif", array)
    vectorize(raster, tmp_path / "raw.gpkg", tile=16)
    vectorize(raster, tmp_path / "simple.gpkg", tile=16, simplify=45.0)
    raw = gpd.read_file(tmp_path / "raw.gpkg")
    simple = gpd.read_file(tmp_path / "simple.gpkg")
    assert list(simple["class_id"]) == list(raw["class_id"])  # one simplified polygon per polygon, same order
    raw_geoms, simple_geoms = np.asarray(raw.geometry.values), np.asarray(simple.geometry.values)
    assert shapely.get_num_coordinates(simple_geoms).sum() < 0.8 * shapely.get_num_coordinates(raw_geoms).sum()
    assert shapely.is_valid(simple_geoms).all() and shapely.coverage_is_valid(simple_geoms)
    assert _neighbours(simple_geoms) >= _neighbours(raw_geoms)
    gaps, overlaps = _gaps_and_overlaps(simple_geoms, simple_geoms)
    assert overlaps == pytest.approx(0, abs=1e-3)
    interior = shapely.buffer(shapely.union_all(raw_geoms), -60.0)  # two pixels in from the outer boundary
    assert shapely.area(shapely.difference(interior, shapely.union_all(simple_geoms))) == pytest.approx(0, abs=1e-3)
    # companion: simplifying polygon by polygon (the 0.1.0 way) opens gaps and overlaps between neighbours
    each = shapely.simplify(raw_geoms, 45.0, preserve_topology=True)
    assert shapely.area(shapely.difference(interior, shapely.union_all(each))) > 100.0
    assert _gaps_and_overlaps(each, each)[1] > 100.0


def test_simplify_reduces_vertices_and_stays_valid(tmp_path, demo_label_raster):
    vectorize(demo_label_raster, tmp_path / "raw.gpkg", tile=256)
    vectorize(demo_label_raster, tmp_path / "simple.gpkg", tile=256, simplify=300.0)
    raw = gpd.read_file(tmp_path / "raw.gpkg")
    simple = gpd.read_file(tmp_path / "simple.gpkg")
    vertices = lambda f: int(f.geometry.count_coordinates().sum())  # noqa: E731
    assert len(simple) == len(raw)
    assert vertices(simple) < 0.8 * vertices(raw)
    assert simple.geometry.is_valid.all()
    assert simple.geometry.area.sum() == pytest.approx(raw.geometry.area.sum(), rel=0.05)


@pytest.mark.parametrize(
    "tags",
    [
        {"CLASS_NAMES": json.dumps({"1": "water", "4": "forest"})},
        {"CLASS_NAMES": json.dumps(["water", "forest"]), "CLASS_VALUES": json.dumps([1, 4])},
    ],
)
def test_class_names_are_carried(tmp_path, tags):
    array = np.ones((16, 16), dtype=np.uint8)
    array[:, 8:] = 4
    array[0, 0] = 7  # not named
    raster = write_class_map(tmp_path / "pred.tif", array, tags=tags)
    with rasterio.open(raster) as src:
        assert read_class_names(src) == {1: "water", 4: "forest"}
    summary = vectorize(raster, tmp_path / "out.gpkg")
    frame = gpd.read_file(tmp_path / "out.gpkg")
    names = dict(zip(frame["class_id"], frame["class_name"]))
    assert names == {1: "water", 4: "forest", 7: "class 7"}
    assert [c["name"] for c in summary["classes"]] == ["water", "forest", "class 7"]


def test_names_from_the_class_writer_of_rs_pgd_output(tmp_path):
    from rs_pgd.classes import ClassTable
    from rs_pgd.output import StreamingClassWriter

    array = np.zeros((32, 32), dtype=np.uint8)
    array[10:20, 10:20] = 3
    profile = dict(width=32, height=32, crs=CRS, transform=TRANSFORM)
    classes = ClassTable(values=(0, 3), names=("bare", "crop"))
    with StreamingClassWriter(tmp_path / "pred.tif", profile, classes, cog=False, blocksize=16) as writer:
        writer.write(0, array)
    vectorize(tmp_path / "pred.tif", tmp_path / "out.gpkg")
    frame = gpd.read_file(tmp_path / "out.gpkg")
    assert dict(zip(frame["class_id"], frame["class_name"])) == {0: "bare", 3: "crop"}


@pytest.mark.parametrize("suffix", [".geojson", ".fgb", ".shp"])
def test_other_formats_by_extension(tmp_path, suffix):
    array = random_blobs((24, 24), [1, 2], seed=3)
    raster = write_class_map(tmp_path / "pred.tif", array)
    summary = vectorize(raster, tmp_path / f"out{suffix}", tile=7)
    frame = gpd.read_file(tmp_path / f"out{suffix}")
    assert len(frame) == summary["polygons"]
    if suffix == ".geojson":  # RFC 7946: WGS84 longitude/latitude
        assert frame.crs.to_epsg() == 4326 and summary["crs"] == "EPSG:4326"
        assert frame.total_bounds[0] == pytest.approx(-75, abs=1) and frame.total_bounds[1] == pytest.approx(36, abs=1)
        frame = frame.to_crs(CRS)
    assert frame.crs.to_epsg() == 32618
    assert np.array_equal(rasterise_back(frame, array.shape, TRANSFORM), array)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_probability_raster_is_refused_in_one_line(tmp_path):
    from rs_pgd.cli.main import cli

    data = np.zeros((2, 8, 8), dtype=np.uint8)
    with rasterio.open(tmp_path / "proba.tif", "w", driver="GTiff", width=8, height=8, count=2, dtype="uint8",
                       crs=CRS, transform=TRANSFORM) as dst:
        dst.write(data)
    result = CliRunner().invoke(cli, ["vectorize", str(tmp_path / "proba.tif"), "-o", str(tmp_path / "p.gpkg")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "2 bands" in result.output and "probability" in result.output
    assert not (tmp_path / "p.gpkg").exists()


def test_unknown_extension_and_float_raster_are_refused(tmp_path):
    raster = write_class_map(tmp_path / "pred.tif", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(OutputError, match="extensions"):
        vectorize(raster, tmp_path / "out.xyz")
    floats = write_class_map(tmp_path / "float.tif", np.zeros((8, 8), dtype=np.float32), nodata=None)
    with pytest.raises(SceneError, match="float32"):
        vectorize(floats, tmp_path / "out.gpkg")


def test_failed_write_leaves_the_existing_output_untouched(tmp_path, monkeypatch):
    raster = write_class_map(tmp_path / "pred.tif", np.zeros((8, 8), dtype=np.uint8))
    target = tmp_path / "out.gpkg"
    target.write_bytes(b"previous")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(vectorize_module, "_write", explode)
    with pytest.raises(OSError):
        vectorize(raster, target)
    assert target.read_bytes() == b"previous"
    assert {p.name for p in tmp_path.iterdir()} == {"pred.tif", "out.gpkg"}  # no temporary file left


def test_all_nodata_raster_writes_an_empty_layer(tmp_path):
    raster = write_class_map(tmp_path / "pred.tif", np.full((8, 8), 255, dtype=np.uint8))
    summary = vectorize(raster, tmp_path / "out.gpkg")
    assert summary["polygons"] == 0
    assert len(gpd.read_file(tmp_path / "out.gpkg")) == 0


# ----------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_vectorize(tmp_path, demo_label_raster):
    from rs_pgd.cli.main import cli

    out = tmp_path / "out.gpkg"
    result = CliRunner().invoke(cli, ["vectorize", str(demo_label_raster), "-o", str(out), "--tile", "128",
                                      "--min-area", "90000", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["polygons"] == len(gpd.read_file(out)) > 0
    assert {"output", "driver", "crs", "polygons", "dropped", "classes", "tile"} <= summary.keys()


def test_cli_vectorize_missing_file_is_one_line_exit_2(tmp_path):
    from rs_pgd.cli.main import cli

    result = CliRunner().invoke(cli, ["vectorize", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o.gpkg")])
    assert result.exit_code == 2
    assert result.output.startswith("Error:") and result.output.count("\n") == 1
    assert "nope.tif" in result.output
