"""Tests of rs_pgd.labels: class tables, vector and raster labels read on the scene grid."""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import Resampling, calculate_default_transform, reproject
from shapely.geometry import LineString, Point, Polygon, box

from rs_pgd.classes import ClassTable, LabelWarning, default_colours
from rs_pgd.errors import LabelError
from rs_pgd.labels import open_labels
from rs_pgd.raster_labels import RasterLabels
from rs_pgd.vector_labels import VectorLabels

PARANA = "landsat8_parana/LC08_L1TP_224078_20200518_20200518_01_RT"


@dataclass(frozen=True)
class Scene:
    """Stand-in for SceneInfo: only the grid attributes open_labels needs."""

    width: int
    height: int
    crs: object
    transform: Affine


def scene_of(path) -> Scene:
    with rasterio.open(path) as src:
        return Scene(src.width, src.height, src.crs, src.transform)


def whole(source) -> np.ndarray:
    return source.read((0, 0, source.height, source.width))


def reference_rasterize(gdf, column, scene, fill=255) -> np.ndarray:
    """Whole-scene class values burned straight from the file, without rs_pgd."""
    gdf = gdf.to_crs(scene.crs) if gdf.crs is not None and scene.crs is not None else gdf
    return rasterize(
        zip(gdf.geometry, gdf[column].astype(int)),
        out_shape=(scene.height, scene.width),
        transform=scene.transform,
        fill=fill,
        dtype="uint8",
    )


def padded_crop(full: np.ndarray, bounds, fill=255) -> np.ndarray:
    """Crop of a whole-scene array for window bounds that may extend outside it."""
    r0, c0, r1, c1 = bounds
    out = np.full((r1 - r0, c1 - c0), fill, dtype=full.dtype)
    h, w = full.shape
    rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
    if rr1 > rr0 and cc1 > cc0:
        out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = full[rr0:rr1, cc0:cc1]
    return out


def write_gpkg(tmp_path, gdf, name="labels.gpkg", **kwargs):
    path = tmp_path / name
    gdf.to_file(path, **kwargs)
    return path


def small_scene(crs="EPSG:32618") -> Scene:
    """100 x 80 pixels of 10 m at (1000, 2000) top-left."""
    return Scene(
        width=100,
        height=80,
        crs=CRS.from_user_input(crs) if crs else None,
        transform=Affine(10, 0, 1000, 0, -10, 2000),
    )


def xy(transform, col, row):
    """Coordinates of a pixel position (col, row)."""
    return (
        transform.a * col + transform.b * row + transform.c,
        transform.d * col + transform.e * row + transform.f,
    )


def pixel_box(scene, row0, col0, row1, col1):
    """Polygon covering scene pixels [row0:row1, col0:col1]."""
    x0, y0 = xy(scene.transform, col0, row0)
    x1, y1 = xy(scene.transform, col1, row1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def pixel_centre(scene, row, col):
    return Point(xy(scene.transform, col + 0.5, row + 0.5))


# ----------------------------------------------------------------------------------------------------------------
# ClassTable


def test_class_table_round_trip_and_lookups():
    table = ClassTable(values=(0, 3, 7), names=("water", "crop", "developed"))
    assert table.num_classes == 3
    assert table.index_of(7) == 2 and table.index_of("crop") == 1
    assert table.value_of(1) == 3 and table.name_of(2) == "developed"
    again = ClassTable.from_dict(table.to_dict())
    assert again == table
    assert table.colours[0] == (0, 112, 255)  # water is blue
    assert table.colours[1][0] > 200 and table.colours[1][1] > 150 and table.colours[1][2] < 50  # crop yellow
    assert table.colours[2][0] > 200 and table.colours[2][1] < 50  # developed red
    with pytest.raises(LabelError, match="no class"):
        table.index_of(5)
    with pytest.raises(LabelError):
        table.value_of(3)
    assert table.value_lut()[[0, 1, 2, 255]].tolist() == [0, 3, 7, 255]


@pytest.mark.parametrize(
    "values,names",
    [
        ((0, 255), ("a", "b")),
        ((1, 1), ("a", "b")),
        ((1, 2), ("a", "a")),
        ((2, 1), ("a", "b")),
        ((1,), ("a", "b")),
        ((), ()),
    ],
)
def test_class_table_rejects_bad_tables(values, names):
    with pytest.raises(LabelError):
        ClassTable(values=values, names=names)


def test_default_colours_distinct_and_deterministic():
    names = [f"crop type {i}" for i in range(3)] + [f"class {i}" for i in range(60)] + ["forest", "sea"]
    colours = default_colours(names)
    assert len(set(colours)) == len(names)
    assert colours == default_colours(names)
    assert colours[-2] == (38, 115, 0) and colours[-1] == (0, 112, 255)


# ----------------------------------------------------------------------------------------------------------------
# Vector labels on the demo scene


def test_demo_vector_agrees_with_label_raster(demo_scene, demo_labels, demo_label_raster):
    scene = scene_of(demo_scene)
    labels = open_labels(demo_labels, scene)
    assert isinstance(labels, VectorLabels)
    assert labels.classes.values == (0, 1) and labels.classes.names == ("water", "land")
    burned = labels.read_values((0, 0, scene.height, scene.width))
    with rasterio.open(demo_label_raster) as src:
        truth = src.read(1)
    labelled = truth != 255
    assert labelled.sum() > 300_000
    assert (burned[labelled] == truth[labelled]).mean() >= 0.98
    assert 0.9 < labels.overlap <= 1.0
    assert any("class_id" in line and "class_name" in line for line in labels.report)


def test_reprojected_labels_give_the_same_raster(tmp_path, demo_scene, demo_labels):
    scene = scene_of(demo_scene)
    direct = whole(open_labels(demo_labels, scene))
    path = write_gpkg(tmp_path, gpd.read_file(demo_labels).to_crs("EPSG:4326"), "wgs84.gpkg")
    labels = open_labels(path, scene)
    assert "reprojected labels from EPSG:4326 to EPSG:32618" in labels.report
    assert (whole(labels) == direct).mean() >= 0.99


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    row=st.integers(-300, 760),
    col=st.integers(-300, 830),
    height=st.integers(1, 300),
    width=st.integers(1, 300),
)
def test_vector_window_reads_equal_whole_scene_crop(demo_scene, demo_labels, row, col, height, width):
    scene = scene_of(demo_scene)
    labels = _demo_vector(demo_scene, demo_labels)
    reference = reference_rasterize(gpd.read_file(demo_labels), "class_id", scene)
    bounds = (row, col, row + height, col + width)
    np.testing.assert_array_equal(labels.read_values(bounds), padded_crop(reference, bounds))


_CACHE: dict = {}


def _demo_vector(demo_scene, demo_labels):
    key = ("vector", str(demo_labels))
    if key not in _CACHE:
        _CACHE[key] = open_labels(demo_labels, scene_of(demo_scene))
    return _CACHE[key]


def test_window_comparison_detects_a_one_pixel_shift(demo_scene, demo_labels):
    """The crop comparison above has teeth: a window read one pixel off does not match."""
    scene = scene_of(demo_scene)
    labels = _demo_vector(demo_scene, demo_labels)
    reference = reference_rasterize(gpd.read_file(demo_labels), "class_id", scene)
    bounds = (200, 200, 456, 456)
    shifted = (201, 200, 457, 456)
    assert (labels.read_values(shifted) != padded_crop(reference, bounds)).sum() > 50


def test_window_outside_scene_is_ignore(demo_scene, demo_labels):
    labels = _demo_vector(demo_scene, demo_labels)
    assert (labels.read((-50, -50, -10, -10)) == 255).all()
    assert labels.read((5, 5, 5, 9)).shape == (0, 4)
    with pytest.raises(LabelError):
        labels.read((10, 10, 5, 20))


def test_pixel_counts_stream_to_the_whole_scene_counts(demo_scene, demo_labels):
    labels = _demo_vector(demo_scene, demo_labels)
    full = whole(labels)
    expected = {v: int((full == i).sum()) for i, v in enumerate(labels.classes.values)}
    assert labels.pixel_counts(tile=200) == expected
    assert labels.require_labelled_pixels() == expected


@pytest.mark.parametrize("suffix,driver", [(".geojson", "GeoJSON"), (".fgb", "FlatGeobuf"), (".shp", None)])
def test_other_vector_formats(tmp_path, demo_scene, demo_labels, suffix, driver):
    gdf = gpd.read_file(demo_labels)
    path = tmp_path / f"labels{suffix}"
    gdf.to_file(path, **({"driver": driver} if driver else {}))
    labels = open_labels(path, scene_of(demo_scene))
    np.testing.assert_array_equal(whole(labels), whole(_demo_vector(demo_scene, demo_labels)))


# ----------------------------------------------------------------------------------------------------------------
# Vector problems


def test_missing_and_unreadable_files(tmp_path):
    scene = small_scene()
    with pytest.raises(LabelError, match="not found"):
        open_labels(tmp_path / "nope.gpkg", scene)
    bad = tmp_path / "bad.gpkg"
    bad.write_text("not a geopackage")
    with pytest.raises(LabelError, match="cannot read"):
        open_labels(bad, scene)


def test_empty_file_is_an_error(tmp_path):
    empty = gpd.GeoDataFrame({"class": np.array([], dtype=int)}, geometry=gpd.GeoSeries([], crs="EPSG:32618"))
    path = write_gpkg(tmp_path, empty)
    with pytest.raises(LabelError, match="no features"):
        open_labels(path, small_scene())


def test_labels_that_miss_the_scene_are_an_error(tmp_path, demo_scene, demo_labels):
    gdf = gpd.read_file(demo_labels)
    gdf["geometry"] = gdf.geometry.translate(xoff=2_000_000)
    path = write_gpkg(tmp_path, gdf)
    with pytest.raises(LabelError, match="do not overlap the scene: labels .* scene .* EPSG:32618"):
        open_labels(path, scene_of(demo_scene))


def test_labels_without_crs(tmp_path):
    scene = small_scene()
    gdf = gpd.GeoDataFrame({"class": [1]}, geometry=[pixel_box(scene, 10, 10, 20, 20)], crs=None)
    with warnings.catch_warnings():
        # pyogrio warns that the file has no CRS: that is the point here
        warnings.simplefilter("ignore", UserWarning)
        path = write_gpkg(tmp_path, gdf)
    with pytest.raises(LabelError, match="no CRS.*ogr2ogr -a_srs"):
        open_labels(path, scene)
    labels = open_labels(path, small_scene(crs=None))
    assert (labels.read((10, 10, 20, 20)) == 0).all() and labels.read((9, 9, 10, 10))[0, 0] == 255


def test_bowtie_is_repaired_with_a_warning(tmp_path):
    scene = small_scene()
    x0, y0 = xy(scene.transform, 10, 60)  # bottom-left of the bow tie
    x1, y1 = xy(scene.transform, 50, 20)
    bowtie = Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    assert not bowtie.is_valid
    gdf = gpd.GeoDataFrame(
        {"class": [1, 2]}, geometry=[bowtie, pixel_box(scene, 70, 80, 75, 90)], crs="EPSG:32618"
    )
    path = write_gpkg(tmp_path, gdf)
    with pytest.warns(LabelWarning, match="repaired 1 invalid"):
        labels = open_labels(path, scene)
    values = labels.read_values((0, 0, scene.height, scene.width))
    # both triangles are burned: left and right lobes, tips meeting in the middle
    assert values[40, 12] == 1 and values[40, 48] == 1 and values[22, 30] == 255 and values[58, 30] == 255
    # the repaired polygon burns the same pixels as its two triangles burned separately
    triangles = [
        Polygon([(x0, y0), ((x0 + x1) / 2, (y0 + y1) / 2), (x0, y1)]),
        Polygon([(x1, y1), ((x0 + x1) / 2, (y0 + y1) / 2), (x1, y0)]),
    ]
    expected = rasterize(
        [(t, 1) for t in triangles], out_shape=(80, 100), transform=scene.transform, fill=255
    )
    np.testing.assert_array_equal(values[:65], expected[:65])


def test_empty_and_null_geometries_are_dropped(tmp_path):
    scene = small_scene()
    gdf = gpd.GeoDataFrame(
        {"class": [1, 2, 3]}, geometry=[pixel_box(scene, 0, 0, 5, 5), Polygon(), None], crs="EPSG:32618"
    )
    path = write_gpkg(tmp_path, gdf)
    with pytest.warns(LabelWarning, match="dropped 2 features with an empty or missing geometry"):
        labels = open_labels(path, scene)
    assert labels.classes.values == (1,)


def test_points_and_lines_burn_the_pixels_they_touch(tmp_path):
    scene = small_scene()
    line = LineString([pixel_centre(scene, 50, 10), pixel_centre(scene, 50, 40)])
    gdf = gpd.GeoDataFrame(
        {"class": [1, 2, 3, 3]},
        geometry=[
            pixel_box(scene, 0, 0, 30, 30),
            pixel_centre(scene, 5, 5),
            line,
            pixel_centre(scene, 70, 90),
        ],
        crs="EPSG:32618",
    )
    labels = open_labels(write_gpkg(tmp_path, gdf), scene)
    assert any("2 point and 1 line features" in line for line in labels.report)
    values = labels.read_values((0, 0, 80, 100))
    assert values[5, 5] == 2  # a point on top of the polygon wins
    assert (values[:30, :30] == 1).sum() == 30 * 30 - 1
    assert (values[50, 10:41] == 3).all() and values[49, 20] == 255 and values[51, 20] == 255
    assert values[70, 90] == 3
    assert labels.pixel_counts() == {1: 899, 2: 1, 3: 32}


def test_later_polygon_wins_where_polygons_overlap(tmp_path):
    scene = small_scene()
    gdf = gpd.GeoDataFrame(
        {"class": [1, 2]},
        geometry=[pixel_box(scene, 0, 0, 20, 20), pixel_box(scene, 10, 10, 30, 30)],
        crs="EPSG:32618",
    )
    values = open_labels(write_gpkg(tmp_path, gdf), scene).read_values((0, 0, 80, 100))
    assert values[15, 15] == 2 and values[5, 5] == 1


# ----------------------------------------------------------------------------------------------------------------
# Class columns


def _two_polygons(scene, **columns):
    return gpd.GeoDataFrame(
        columns, geometry=[pixel_box(scene, 0, 0, 10, 10), pixel_box(scene, 20, 20, 30, 30)], crs="EPSG:32618"
    )


def test_ambiguous_class_columns(tmp_path):
    scene = small_scene()
    path = write_gpkg(tmp_path, _two_polygons(scene, label=["a", "b"], Type=["x", "x"]))
    with pytest.raises(
        LabelError, match=r"several possible class columns \['label', 'Type'\].*--class-column"
    ):
        open_labels(path, scene)
    labels = open_labels(path, scene, class_column="type")  # case-insensitive
    assert labels.classes.names == ("x",)


def test_id_and_name_columns_that_disagree_are_ambiguous(tmp_path):
    scene = small_scene()
    path = write_gpkg(tmp_path, _two_polygons(scene, class_id=[1, 1], class_name=["a", "b"]))
    with pytest.raises(LabelError, match="several possible class columns"):
        open_labels(path, scene)


def test_missing_class_column_lists_columns(tmp_path):
    scene = small_scene()
    path = write_gpkg(tmp_path, _two_polygons(scene, crop=["a", "b"], area=[1.0, 2.0]))
    with pytest.raises(LabelError, match=r"no class column.*\['crop', 'area'\].*--class-column"):
        open_labels(path, scene)
    with pytest.raises(LabelError, match=r"no column 'kind'.*\['crop', 'area'\]"):
        open_labels(path, scene, class_column="kind")


def test_null_class_values_are_dropped_with_a_warning(tmp_path):
    scene = small_scene()
    path = write_gpkg(tmp_path, _two_polygons(scene, class_name=["a", None]))
    with pytest.warns(LabelWarning, match="dropped 1 features with no value"):
        labels = open_labels(path, scene)
    values = labels.read_values((0, 0, 80, 100))
    assert (values[:10, :10] == 1).all() and (values[20:30, 20:30] == 255).all()


def test_integer_classes_keep_their_values_and_must_fit(tmp_path):
    scene = small_scene()
    path = write_gpkg(tmp_path, _two_polygons(scene, lc=[7.0, 42.0]))  # integral floats count as integers
    labels = open_labels(path, scene)
    assert labels.classes.values == (7, 42)
    assert labels.read((0, 0, 1, 1))[0, 0] == 0 and labels.read((20, 20, 21, 21))[0, 0] == 1
    path = write_gpkg(tmp_path, _two_polygons(scene, code=[7, 300]), "big.gpkg")
    with pytest.raises(LabelError, match="outside 0..254.*mapping"):
        open_labels(path, scene)
    labels = open_labels(path, scene, mapping={7: 1, 300: 2})
    assert labels.classes.values == (1, 2)


def test_multi_layer_files_need_a_layer(tmp_path):
    scene = small_scene()
    path = tmp_path / "two.gpkg"
    _two_polygons(scene, name=["a", "b"]).to_file(path, layer="first")
    _two_polygons(scene, name=["c", "d"]).to_file(path, layer="second", mode="a")
    with pytest.raises(LabelError, match=r"several layers \['first', 'second'\].*--layer"):
        open_labels(path, scene)
    assert open_labels(path, scene, layer="second").classes.names == ("c", "d")
    with pytest.raises(LabelError, match="no layer 'third'"):
        open_labels(path, scene, layer="third")


# ----------------------------------------------------------------------------------------------------------------
# String classes, mappings and background on real data


def _grain(name: str) -> str | None:
    lowered = name.lower()
    if "græs" in lowered or "rajgræs" in lowered:
        return "grass"
    if any(k in lowered for k in ("byg", "hvede", "rug", "havre", "triticale")):
        return "cereal"
    if "majs" in lowered:
        return "maize"
    return None


def test_denmark_crop_names_merged_by_a_mapping(shared_data):
    folder = shared_data / "sentinel2_denmark_lpis"
    scene = scene_of(folder / "RGB_small.tif")
    with pytest.raises(LabelError, match="no class column.*Afgroede"):
        open_labels(folder / "marker2016_small.shp", scene)
    gdf = gpd.read_file(folder / "marker2016_small.shp")
    gdf = gdf[gdf["Afgroede"].notna()]  # one parcel has no crop name: open_labels drops it with a warning
    crops = sorted(set(gdf["Afgroede"]))
    mapping = {c: _grain(c) for c in crops if _grain(c) is not None}
    with pytest.warns(LabelWarning) as caught:
        labels = open_labels(folder / "marker2016_small.shp", scene, class_column="Afgroede", mapping=mapping)
    messages = [str(w.message) for w in caught]
    assert any("dropped 1 features with no value in class column 'Afgroede'" in m for m in messages)
    assert any("12 class values not in the mapping" in m and "'Fodersukkerroer'" in m for m in messages)
    assert labels.classes.names == ("cereal", "grass", "maize")
    assert labels.classes.values == (1, 2, 3)
    values = labels.read_values((0, 0, scene.height, scene.width))
    gdf["group"] = gdf["Afgroede"].map(lambda c: {"cereal": 1, "grass": 2, "maize": 3}.get(_grain(c), 255))
    reference = reference_rasterize(gdf[gdf["group"] != 255], "group", scene)
    assert (values == reference).mean() >= 0.999
    counts = labels.pixel_counts()
    assert all(counts[v] > 1000 for v in (1, 2, 3))
    assert 0.2 < (values == 255).mean() < 0.6  # unmapped crops and unparcelled land stay unlabelled


def test_denmark_string_classes_get_sorted_ids(shared_data):
    folder = shared_data / "sentinel2_denmark_lpis"
    with pytest.warns(LabelWarning, match="dropped 1 features with no value"):
        labels = open_labels(
            folder / "marker2016_small.shp", scene_of(folder / "RGB_small.tif"), class_column="Afgroede"
        )
    assert labels.classes.num_classes == 36
    assert list(labels.classes.names) == sorted(labels.classes.names)
    assert labels.classes.values == tuple(range(1, 37))


def test_parana_sparse_polygons_and_background(shared_data):
    scene = scene_of(shared_data / f"{PARANA}.TIF")
    labels = open_labels(shared_data / f"{PARANA}_polygons.gpkg", scene)
    assert labels.classes.names == ("crop", "developed", "tree", "water")
    assert labels.classes.values == (1, 2, 3, 4)
    counts = labels.pixel_counts()
    assert all(c > 0 for c in counts.values())
    assert sum(counts.values()) < 0.1 * scene.width * scene.height  # sparse: the rest is 255, not background
    with_bg = open_labels(shared_data / f"{PARANA}_polygons.gpkg", scene, background="background")
    assert with_bg.classes.names == ("background", "crop", "developed", "tree", "water")
    assert with_bg.classes.values == (0, 1, 2, 3, 4)
    bg_counts = with_bg.pixel_counts()
    assert sum(bg_counts.values()) == scene.width * scene.height
    assert {v: bg_counts[v] for v in (1, 2, 3, 4)} == counts
    assert (with_bg.read((-10, -10, 10, 10))[:10] == 255).all()  # outside the scene stays ignored


def test_parana_points(shared_data):
    scene = scene_of(shared_data / f"{PARANA}.TIF")
    labels = open_labels(shared_data / f"{PARANA}_points.gpkg", scene)
    assert sum(labels.pixel_counts().values()) == 6


def test_background_existing_class_and_new_value(tmp_path):
    scene = small_scene()
    path = write_gpkg(tmp_path, _two_polygons(scene, class_id=[1, 2]))
    labels = open_labels(path, scene, background=1)
    values = labels.read_values((0, 0, 80, 100))
    assert (values[20:30, 20:30] == 2).all() and (values[50:, :] == 1).all()
    labels = open_labels(path, scene, background=0)
    assert labels.classes.values == (0, 1, 2) and labels.classes.names == ("background", "1", "2")
    assert labels.read((50, 50, 51, 51))[0, 0] == 0


def test_no_labelled_pixel_is_reported(tmp_path):
    scene = small_scene()
    x, y = xy(scene.transform, 10.1, 10.1)
    tiny = box(x, y - 1, x + 1, y)  # inside the scene, too small to cover a pixel centre
    labels = open_labels(
        write_gpkg(tmp_path, gpd.GeoDataFrame({"class": [1]}, geometry=[tiny], crs="EPSG:32618")), scene
    )
    with pytest.raises(LabelError, match="no labelled pixel"):
        labels.require_labelled_pixels()
    touched = open_labels(tmp_path / "labels.gpkg", scene, all_touched=True)
    assert touched.require_labelled_pixels() == {1: 1}


# ----------------------------------------------------------------------------------------------------------------
# Raster labels


def test_demo_label_raster_same_grid(demo_scene, demo_label_raster):
    scene = scene_of(demo_scene)
    labels = open_labels(demo_label_raster, scene)
    assert isinstance(labels, RasterLabels) and not labels.warp
    with rasterio.open(demo_label_raster) as src:
        truth = src.read(1)
    np.testing.assert_array_equal(labels.read_values((0, 0, scene.height, scene.width)), truth)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    row=st.integers(-300, 760),
    col=st.integers(-300, 830),
    height=st.integers(1, 300),
    width=st.integers(1, 300),
)
def test_raster_window_reads_equal_whole_crop(demo_scene, demo_label_raster, row, col, height, width):
    key = ("raster", str(demo_label_raster))
    if key not in _CACHE:
        with rasterio.open(demo_label_raster) as src:
            _CACHE[key] = (open_labels(demo_label_raster, scene_of(demo_scene)), src.read(1))
    labels, truth = _CACHE[key]
    bounds = (row, col, row + height, col + width)
    np.testing.assert_array_equal(labels.read_values(bounds), padded_crop(truth, bounds))


def _write_like(path, src, data, **changes):
    profile = src.profile.copy()
    profile.update(
        driver="GTiff", count=1, height=data.shape[0], width=data.shape[1], dtype=data.dtype, **changes
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def test_label_raster_on_another_crs_is_warped(tmp_path, demo_scene, demo_label_raster):
    scene = scene_of(demo_scene)
    with rasterio.open(demo_label_raster) as src:
        truth = src.read(1)
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds
        )
        warped = np.full((height, width), 255, dtype=np.uint8)
        reproject(
            truth,
            warped,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs="EPSG:4326",
            resampling=Resampling.nearest,
            src_nodata=255,
            dst_nodata=255,
        )
        path = _write_like(tmp_path / "wgs84.tif", src, warped, crs="EPSG:4326", transform=transform)
    labels = open_labels(path, scene)
    assert labels.warp and any("warped" in line for line in labels.report)
    values = labels.read_values((0, 0, scene.height, scene.width))
    both = (values != 255) & (truth != 255)
    assert both.sum() > 0.95 * (truth != 255).sum()
    assert (values[both] == truth[both]).mean() >= 0.97
    window = labels.read_values((100, 120, 356, 376))
    np.testing.assert_array_equal(window, values[100:356, 120:376])
    restored = pickle.loads(pickle.dumps(labels))
    np.testing.assert_array_equal(restored.read_values((100, 120, 356, 376)), window)


def test_label_raster_at_another_resolution_is_warped(tmp_path, demo_scene, demo_label_raster):
    scene = scene_of(demo_scene)
    with rasterio.open(demo_label_raster) as src:
        truth = src.read(1)
        fine = np.repeat(np.repeat(truth, 2, axis=0), 2, axis=1)  # 150 m pixels: exact upsampling
        t = src.transform
        path = _write_like(
            tmp_path / "fine.tif", src, fine, transform=Affine(t.a / 2, 0, t.c, 0, t.e / 2, t.f)
        )
    labels = open_labels(path, scene)
    assert labels.warp
    np.testing.assert_array_equal(labels.read_values((0, 0, scene.height, scene.width)), truth)


def test_label_raster_on_an_aligned_subgrid_reads_with_an_offset(tmp_path, demo_scene, demo_label_raster):
    scene = scene_of(demo_scene)
    with rasterio.open(demo_label_raster) as src:
        truth = src.read(1)
        crop = truth[100:400, 200:500]
        t = src.transform
        path = _write_like(
            tmp_path / "crop.tif",
            src,
            crop,
            transform=Affine(t.a, 0, xy(t, 200, 100)[0], 0, t.e, xy(t, 200, 100)[1]),
        )
    labels = open_labels(path, scene)
    assert not labels.warp and labels.offset == (-100, -200)
    expected = np.full_like(truth, 255)
    expected[100:400, 200:500] = crop
    np.testing.assert_array_equal(labels.read_values((0, 0, scene.height, scene.width)), expected)
    assert 0.1 < labels.overlap < 0.2


def test_label_raster_checks(tmp_path, demo_scene, demo_label_raster):
    scene = scene_of(demo_scene)
    with rasterio.open(demo_label_raster) as src:
        truth = src.read(1)
        big = truth.astype("int32")
        big[big == 1] = 1000
        large = _write_like(tmp_path / "large.tif", src, big, nodata=255)
        t = src.transform
        far = _write_like(
            tmp_path / "far.tif", src, truth, transform=Affine(t.a, 0, t.c + 5000 * t.a, 0, t.e, t.f)
        )
    with pytest.raises(LabelError, match="1000.*outside 0..254.*mapping"):
        open_labels(large, scene)
    mapped = open_labels(large, scene, mapping={0: "water", 1000: "land"})
    assert mapped.classes.names == ("land", "water")
    assert mapped.pixel_counts() == {1: int((truth == 1).sum()), 2: int((truth == 0).sum())}
    with pytest.raises(LabelError, match="do not overlap the scene"):
        open_labels(far, scene)


@pytest.mark.parametrize("unlabelled", ["nodata 255", "NaN, no nodata tag", "nodata -9999", "NaN nodata"])
def test_float_label_rasters_with_whole_values_read_like_integer_ones(tmp_path, demo_scene, demo_label_raster,
                                                                      unlabelled):
    """GRASS, QGIS, R and numpy pipelines write float32 class maps; NaN and nodata are unlabelled."""
    scene = scene_of(demo_scene)
    with rasterio.open(demo_label_raster) as src:
        truth = src.read(1)  # 0 water, 1 land, 255 nodata
        floats = truth.astype("float64")
        fill, nodata = {"nodata 255": (255, 255), "NaN, no nodata tag": (np.nan, None),
                        "nodata -9999": (-9999, -9999), "NaN nodata": (np.nan, np.nan)}[unlabelled]
        floats[truth == 255] = fill
        path = _write_like(tmp_path / "float.tif", src, floats.astype("float32"), nodata=nodata)
    reference = open_labels(demo_label_raster, scene)
    labels = open_labels(path, scene)
    assert labels.classes.values == reference.classes.values == (0, 1)
    full = (0, 0, scene.height, scene.width)
    np.testing.assert_array_equal(labels.read_values(full), reference.read_values(full))
    assert labels.pixel_counts() == {0: int((truth == 0).sum()), 1: int((truth == 1).sum())}


def test_float_label_raster_with_fractions_is_refused_naming_them(tmp_path, demo_scene, demo_label_raster):
    scene = scene_of(demo_scene)
    with rasterio.open(demo_label_raster) as src:
        floats = src.read(1).astype("float32")
        floats[10, 10:13] = [0.25, 1.5, 2.75]  # e.g. a probability or a resampled class map
        path = _write_like(tmp_path / "float.tif", src, floats)
    with pytest.raises(LabelError, match=r"not whole numbers \(0.25, 1.5, 2.75, \.\.\.\).*integers") as error:
        open_labels(path, scene)
    assert "\n" not in str(error.value)


def test_dfc_patch_without_georeferencing_is_the_same_grid(shared_data):
    folder = shared_data / "sentinel2_dfc2020_patches"
    scene = scene_of(folder / "ROIs0000_test_s2_0_p0.tif")
    labels = open_labels(folder / "ROIs0000_test_dfc_0_p0.tif", scene)
    assert labels.classes.values == (9, 10)
    assert any("identity transform" in line for line in labels.report)
    assert labels.pixel_counts() == {9: 36, 10: 65500}


# ----------------------------------------------------------------------------------------------------------------
# Pickling


def test_sources_pickle_after_use(demo_scene, demo_labels, demo_label_raster):
    scene = scene_of(demo_scene)
    for source in (open_labels(demo_labels, scene), open_labels(demo_label_raster, scene)):
        before = source.read((-20, 300, 280, 600))  # opens datasets / builds the index
        restored = pickle.loads(pickle.dumps(source))
        np.testing.assert_array_equal(restored.read((-20, 300, 280, 600)), before)
        assert restored.classes == source.classes and restored.report == source.report


def test_no_warnings_on_clean_demo(demo_scene, demo_labels):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelWarning)
        open_labels(demo_labels, scene_of(demo_scene))


def test_warped_label_raster_without_nodata_leaves_outside_pixels_unlabelled(
    tmp_path, demo_scene, demo_label_raster
):
    scene = scene_of(demo_scene)
    with rasterio.open(demo_label_raster) as src:
        truth = src.read(1)
        t = src.transform
        part = np.repeat(np.repeat(truth[100:300, 100:300], 2, axis=0), 2, axis=1)
        x0, y0 = xy(t, 100, 100)
        path = _write_like(
            tmp_path / "part.tif", src, part, nodata=None, transform=Affine(t.a / 2, 0, x0, 0, t.e / 2, y0)
        )
    labels = open_labels(path, scene)
    assert labels.warp
    expected = np.full_like(truth, 255)
    expected[100:300, 100:300] = truth[100:300, 100:300]
    np.testing.assert_array_equal(labels.read_values((0, 0, scene.height, scene.width)), expected)


def test_a_missing_pyarrow_is_blamed_not_the_file():
    """issue 14 #13: geopandas raises ImportError when pyarrow is missing; the message says to install it."""
    from pathlib import Path

    from rs_pgd.vector_labels import parquet_read_error

    missing = ImportError("Missing optional dependency 'pyarrow.parquet'. pyarrow is required for Parquet support.")
    message = str(parquet_read_error(Path("data/labels.parquet"), missing))
    assert message == ("reading GeoParquet labels (labels.parquet) needs pyarrow, which is not installed; "
                       "install it with pip install pyarrow")
    broken = str(parquet_read_error(Path("data/labels.parquet"), ValueError("Parquet magic bytes not found\nmore")))
    assert broken == ("cannot read labels data/labels.parquet: Parquet magic bytes not found; "
                      "check it is a GeoParquet file")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed here")
def test_geoparquet_without_pyarrow_says_to_install_it(tmp_path):
    """The real reader, in an environment without pyarrow (no module is hidden or patched)."""
    path = tmp_path / "labels.parquet"
    path.write_bytes(b"PAR1")  # without pyarrow no real file can be written; the reader never gets to it
    scene = Scene(width=10, height=10, crs=CRS.from_epsg(32618), transform=Affine(1, 0, 0, 0, -1, 10))
    with pytest.raises(LabelError, match=r"needs pyarrow.*pip install pyarrow$"):
        open_labels(path, scene)
