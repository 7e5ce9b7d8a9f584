"""Generators of the good and bad inputs used by the reliability tests (tests/test_cli_catalogue.py etc.).

Every function writes tiny files into a folder and returns their path(s); nothing here imports torch except the
checkpoint generators. Run ``python tests/data/bad_inputs.py DIR`` to write the whole catalogue into DIR for a
look with gdalinfo/ogrinfo.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

SIZE = 96
RES = 30.0
ORIGIN = (500_000.0, 4_000_000.0)
UTM = CRS.from_epsg(32618)
TRANSFORM = from_origin(*ORIGIN, RES, RES)


# -- scenes ----------------------------------------------------------------------------------------------------
def scene_pixels(count=3, size=SIZE, dtype="uint8", seed=0) -> np.ndarray:
    """Deterministic pixels: left half dark ("water"), right half bright ("land"), plus noise."""
    rng = np.random.default_rng(seed)
    base = np.where(np.arange(size)[None, :] < size // 2, 40.0, 180.0)
    data = np.stack([base + rng.normal(0, 10, (size, size)) + 5 * b for b in range(count)])
    if np.dtype(dtype).kind == "f":
        return data.astype(dtype)
    scale = {"uint8": 1, "uint16": 100, "int16": 50}.get(np.dtype(dtype).name, 1)
    info = np.iinfo(dtype)
    return np.clip(data * scale, info.min, info.max).astype(dtype)


def write_scene(path, data=None, *, count=3, size=SIZE, dtype="uint8", crs=UTM, transform=TRANSFORM,
                nodata=None, gcps=None) -> Path:
    """Write a GeoTIFF scene (tiled 32x32 so that truncation hits a real block)."""
    path = Path(path)
    if data is None:
        data = scene_pixels(count, size, dtype)
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "tiled": True, "blockxsize": 32, "blockysize": 32}
    if crs is not None:
        profile["crs"] = crs
    if transform is not None and gcps is None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if gcps is not None:
            dst.gcps = (gcps, crs)
    return path


def good_scene(folder) -> Path:
    return write_scene(Path(folder) / "scene.tif")


def scene_without_crs(folder) -> Path:
    return write_scene(Path(folder) / "nocrs.tif", crs=None)


def rotated_scene(folder) -> Path:
    transform = TRANSFORM * Affine.rotation(15)
    return write_scene(Path(folder) / "rotated.tif", transform=transform)


def sheared_scene(folder) -> Path:
    transform = TRANSFORM * Affine.shear(10, 0)
    return write_scene(Path(folder) / "sheared.tif", transform=transform)


def gcp_scene(folder) -> Path:
    x0, y0 = ORIGIN
    gcps = [GroundControlPoint(row=r, col=c, x=x0 + c * RES, y=y0 - r * RES)
            for r, c in ((0, 0), (0, SIZE), (SIZE, 0), (SIZE, SIZE))]
    return write_scene(Path(folder) / "gcps.tif", gcps=gcps, transform=None)


def geographic_scene(folder) -> Path:
    """The good scene's footprint in EPSG:4326 (about 0.0003 degree pixels near 36 N, 75 W)."""
    from rasterio.warp import transform_bounds

    west, south, east, north = transform_bounds(UTM, "EPSG:4326", *_bounds())
    transform = from_origin(west, north, (east - west) / SIZE, (north - south) / SIZE)
    return write_scene(Path(folder) / "geographic.tif", crs=CRS.from_epsg(4326), transform=transform)


def all_nodata_scene(folder) -> Path:
    data = np.zeros((3, SIZE, SIZE), dtype="uint8")
    return write_scene(Path(folder) / "allnodata.tif", data, nodata=0)


def small_scene(folder) -> Path:
    """40 x 40 pixels: smaller than one 64 px tile (needs reflect padding)."""
    x0, y0 = ORIGIN
    transform = from_origin(x0 + 28 * RES, y0 - 28 * RES, RES, RES)
    return write_scene(Path(folder) / "small.tif", scene_pixels(3, 40), transform=transform)


def band_scene(folder, count) -> Path:
    return write_scene(Path(folder) / f"bands{count}.tif", count=count)


def dtype_scene(folder, dtype) -> Path:
    data = scene_pixels(3, SIZE, dtype)
    nodata = None
    if dtype == "float32":
        data[:, :5, :5] = np.nan  # a corner of NaN: must be treated as nodata, never reach the loss
        nodata = float("nan")
    return write_scene(Path(folder) / f"{dtype}.tif", data, nodata=nodata)


def huge_values_scene(folder) -> Path:
    """float32 values near 2e38: the per-band statistics overflow and the loss becomes NaN or inf."""
    data = scene_pixels(3, SIZE, "float32") * np.float32(1e36)
    return write_scene(Path(folder) / "huge.tif", data)


def truncated_tiff(folder) -> Path:
    src = write_scene(Path(folder) / "full.tif")
    raw = src.read_bytes()
    path = Path(folder) / "truncated.tif"
    path.write_bytes(raw[: len(raw) // 2])
    src.unlink()
    return path


def not_a_raster(folder) -> Path:
    path = Path(folder) / "notes.tif"
    path.write_text("this is not a raster\n")
    return path


def _bounds():
    x0, y0 = ORIGIN
    return x0, y0 - SIZE * RES, x0 + SIZE * RES, y0


# -- labels ----------------------------------------------------------------------------------------------------
def _halves():
    from shapely.geometry import box

    west, south, east, north = _bounds()
    mid = (west + east) / 2
    return [box(west, south, mid, north), box(mid, south, east, north)]


def write_labels(path, geometries, columns: dict, crs="EPSG:32618", driver=None) -> Path:
    import geopandas as gpd

    path = Path(path)
    gdf = gpd.GeoDataFrame(columns, geometry=geometries, crs=crs)
    gdf.to_file(path, driver=driver or ("GPKG" if path.suffix == ".gpkg" else None))
    return path


def good_labels(folder, name="labels.gpkg") -> Path:
    return write_labels(Path(folder) / name, _halves(), {"class": ["water", "land"]})


def labels_with_names(folder, names, column="class") -> Path:
    """Two polygons whose classes are the given (possibly hostile) strings."""
    return write_labels(Path(folder) / "named.gpkg", _halves(), {column: list(names)})


def labels_without_crs(folder) -> Path:
    return write_labels(Path(folder) / "nocrs.gpkg", _halves(), {"class": ["water", "land"]}, crs=None)


def labels_in_other_crs(folder) -> Path:
    import geopandas as gpd

    gdf = gpd.read_file(good_labels(folder, "tmp_utm.gpkg")).to_crs("EPSG:3857")
    path = Path(folder) / "mercator.gpkg"
    gdf.to_file(path)
    (Path(folder) / "tmp_utm.gpkg").unlink()
    return path


def labels_elsewhere(folder) -> Path:
    from shapely.affinity import translate

    moved = [translate(g, 1_000_000, 0) for g in _halves()]
    return write_labels(Path(folder) / "elsewhere.gpkg", moved, {"class": ["water", "land"]})


def empty_labels(folder) -> Path:
    import geopandas as gpd

    path = Path(folder) / "empty.gpkg"
    gpd.GeoDataFrame({"class": []}, geometry=[], crs="EPSG:32618").to_file(path, driver="GPKG")
    return path


def invalid_geometry_labels(folder) -> Path:
    """A self-intersecting bow-tie over the whole scene plus a valid polygon."""
    from shapely.geometry import Polygon

    west, south, east, north = _bounds()
    bowtie = Polygon([(west, south), (east, north), (east, south), (west, north)])
    return write_labels(Path(folder) / "invalid.gpkg", [bowtie, _halves()[0]], {"class": ["land", "water"]})


def point_labels(folder) -> Path:
    from shapely.geometry import Point

    west, south, east, north = _bounds()
    points = [Point(west + 10 * RES + i * RES, north - (10 + j) * RES) for i in range(20) for j in range(3)]
    points += [Point(east - 10 * RES - i * RES, north - (10 + j) * RES) for i in range(20) for j in range(3)]
    return write_labels(Path(folder) / "points.gpkg", points, {"class": ["water"] * 60 + ["land"] * 60})


def line_labels(folder) -> Path:
    from shapely.geometry import LineString

    west, south, east, north = _bounds()
    lines = [LineString([(west + (5 + k) * RES + 15, north - 5), (west + (5 + k) * RES + 15, south + 5)])
             for k in range(0, 30, 3)]
    lines += [LineString([(east - (5 + k) * RES - 15, north - 5), (east - (5 + k) * RES - 15, south + 5)])
              for k in range(0, 30, 3)]
    return write_labels(Path(folder) / "lines.gpkg", lines, {"class": ["water"] * 10 + ["land"] * 10})


def labels_without_class_column(folder) -> Path:
    return write_labels(Path(folder) / "nocolumn.gpkg", _halves(), {"area": [1.5, 2.5]})


def labels_ambiguous_columns(folder) -> Path:
    return write_labels(Path(folder) / "ambiguous.gpkg", _halves(),
                        {"class": ["water", "land"], "label": ["a", "b"]})


def labels_all_null_class(folder) -> Path:
    return write_labels(Path(folder) / "nulls.gpkg", _halves(), {"class": [None, None]})


def labels_many_classes(folder, count=300) -> Path:
    """``count`` thin strips, each its own string class: more than 254 classes."""
    from shapely.geometry import box

    west, south, east, north = _bounds()
    width = (east - west) / count
    strips = [box(west + i * width, south, west + (i + 1) * width, north) for i in range(count)]
    return write_labels(Path(folder) / "many.gpkg", strips, {"class": [f"crop {i:03d}" for i in range(count)]})


def not_json(folder) -> Path:
    path = Path(folder) / "mapping.json"
    path.write_text("water: 1\nland: 2\n")
    return path


def label_raster(folder, *, crs=UTM, transform=TRANSFORM, size=SIZE, name="labels.tif") -> Path:
    values = np.where(np.arange(size)[None, :] < size // 2, 1, 2).astype("uint8")
    values = np.broadcast_to(values, (size, size))[None].copy()
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8", "nodata": 0,
               "transform": transform}
    if crs is not None:
        profile["crs"] = crs
    path = Path(folder) / name
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)
    return path


def label_raster_other_grid(folder) -> Path:
    """The same classes on a 15 m grid in EPSG:3857: must be warped onto the scene grid."""
    from rasterio.warp import calculate_default_transform, reproject

    src = label_raster(folder, name="tmp_labels.tif")
    with rasterio.open(src) as ds:
        transform, width, height = calculate_default_transform(ds.crs, "EPSG:3857", ds.width, ds.height,
                                                               *ds.bounds, resolution=20)
        out = np.zeros((1, height, width), dtype="uint8")
        reproject(ds.read(), out, src_transform=ds.transform, src_crs=ds.crs, dst_transform=transform,
                  dst_crs="EPSG:3857", src_nodata=0, dst_nodata=0)
    path = Path(folder) / "labels_3857.tif"
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8", nodata=0,
                       crs="EPSG:3857", transform=transform) as dst:
        dst.write(out)
    src.unlink()
    return path


# -- checkpoints -----------------------------------------------------------------------------------------------
def text_checkpoint(folder) -> Path:
    path = Path(folder) / "notes.safetensors"
    path.write_text("not a checkpoint\n")
    return path


def torch_pickle_checkpoint(folder) -> Path:
    import torch

    path = Path(folder) / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)
    return path


def foreign_safetensors(folder) -> Path:
    """A valid safetensors file without rs-pgd metadata (e.g. someone else's weights)."""
    import torch
    from safetensors.torch import save_file

    path = Path(folder) / "foreign.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2)}, str(path))
    return path


class _Payload:
    """Pickles to a call of ``os.system`` that creates ``marker``: loading it must never run it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def pickle_payload(path, marker) -> Path:
    """A torch pickle whose unpickling would create ``marker`` (saved with torch.save, so it looks genuine)."""
    import torch

    path = Path(path)
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    return path


def raw_pickle_payload(path, marker) -> Path:
    """A plain pickle (protocol 2) with the same payload, named like whatever the test needs."""
    import pickle

    path = Path(path)
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    return path


def write_all(folder) -> list[Path]:
    """Write every generated input into ``folder`` (for inspection)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    makers = [good_scene, scene_without_crs, rotated_scene, sheared_scene, gcp_scene, geographic_scene,
              all_nodata_scene, small_scene, truncated_tiff, not_a_raster, huge_values_scene, good_labels,
              labels_without_crs, labels_in_other_crs, labels_elsewhere, empty_labels, invalid_geometry_labels,
              point_labels, line_labels, labels_without_class_column, labels_ambiguous_columns,
              labels_all_null_class, labels_many_classes, not_json, label_raster, label_raster_other_grid]
    paths = [make(folder) for make in makers]
    paths += [band_scene(folder, n) for n in (1, 13)]
    paths += [dtype_scene(folder, d) for d in ("uint16", "int16", "float32")]
    paths += write_label_findings(folder)
    paths += write_fit_findings(folder)
    (folder / "README.json").write_text(json.dumps([p.name for p in paths], indent=1))
    return paths


# -- issue 14: label rasters, mapping files, evaluate and vectorize inputs --------------------------------------
def float_label_raster(folder, fractional=False) -> Path:
    """The label raster as float32, NaN where unlabelled (GRASS/QGIS/R style); optionally with fractions."""
    values = np.where(np.arange(SIZE)[None, :] < SIZE // 2, 1.0, 2.0).astype("float32")
    values = np.broadcast_to(values, (SIZE, SIZE)).copy()
    values[:4] = np.nan
    if fractional:
        values[10, 10:13] = [0.5, 1.25, 2.5]
    path = Path(folder) / ("labels_fraction.tif" if fractional else "labels_float.tif")
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="float32", crs=UTM,
                       transform=TRANSFORM) as dst:
        dst.write(values, 1)
    return path


MAPPING_FILES = {
    "mapping_empty.json": "{}",
    "mapping_boolean.json": '{"water": true, "land": "land"}',
    "mapping_fraction.json": '{"water": 1.5, "land": 2}',
    "mapping_syntax.json": '{\n  "water": "water",\n  "land" "land"\n}\n',
    "mapping_unknown_key.json": '{"watr": "water", "land": "land"}',
}


def mapping_files(folder) -> list[Path]:
    """Mapping files with the mistakes of finding 10, and a good one saved with a UTF-8 byte-order mark."""
    paths = []
    for name, text in MAPPING_FILES.items():
        paths.append(Path(folder) / name)
        paths[-1].write_text(text, encoding="utf-8")
    paths.append(Path(folder) / "mapping_bom.json")
    paths[-1].write_bytes(b"\xef\xbb\xbf" + json.dumps({"water": "water", "land": "land"}).encode("utf-8"))
    return paths


def named_class_map(folder) -> Path:
    """A class map as predict writes it for a model with classes crop=1, tree=2, water=3: left tree, right water."""
    values = np.where(np.arange(SIZE)[None, :] < SIZE // 2, 2, 3).astype("uint8")
    path = Path(folder) / "classes_named.tif"
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint8", nodata=255,
                       crs=UTM, transform=TRANSFORM) as dst:
        dst.write(np.broadcast_to(values, (SIZE, SIZE)), 1)
        dst.update_tags(1, CLASS_NAMES=json.dumps(["crop", "tree", "water"]), CLASS_VALUES=json.dumps([1, 2, 3]))
    return path


def tree_water_labels(folder) -> Path:
    """Test labels holding only two of the model's classes, 'tree' and 'water' (finding 3)."""
    return write_labels(Path(folder) / "tree_water.gpkg", _halves(), {"class": ["tree", "water"]})


def probability_raster(folder) -> Path:
    """What predict --probabilities writes: one scaled uint8 band per class."""
    path = Path(folder) / "probabilities.tif"
    data = np.full((2, SIZE, SIZE), 127, dtype="uint8")
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=2, dtype="uint8", nodata=255,
                       crs=UTM, transform=TRANSFORM) as dst:
        dst.write(data)
        dst.scales = [1 / 254] * 2
        dst.update_tags(CLASS_NAMES=json.dumps(["water", "land"]))
    return path


def geoparquet_labels(folder) -> Path:
    """The good labels as GeoParquet; without pyarrow only the file's magic bytes can be written."""
    import geopandas as gpd

    path = Path(folder) / "labels.parquet"
    try:
        gpd.GeoDataFrame({"class": ["water", "land"]}, geometry=_halves(), crs="EPSG:32618").to_parquet(path)
    except ImportError:
        path.write_bytes(b"PAR1")
    return path


def write_label_findings(folder) -> list[Path]:
    """Every input of the issue-14 label, mapping, evaluate and vectorize cases."""
    folder = Path(folder)
    return [float_label_raster(folder), float_label_raster(folder, fractional=True), *mapping_files(folder),
            named_class_map(folder), tree_water_labels(folder), probability_raster(folder),
            geoparquet_labels(folder)]


# -- issue 14: training findings -----------------------------------------------------------------------------------
def one_class_labels(folder) -> Path:
    """Only the polygons of the thing of interest: one class, no background."""
    return write_labels(Path(folder) / "one_class.gpkg", _halves()[:1], {"class": ["building"]})


def write_fit_findings(folder) -> list[Path]:
    """Every input of the issue-14 training cases, and the issue-13 class-weight files."""
    return [one_class_labels(Path(folder)), *class_weight_files(folder)]


CLASS_WEIGHT_FILES = {
    "weights_syntax.json": '{\n  "water": 1,\n  "land" 2\n}\n',
    "weights_list.json": "[1, 2]",
    "weights_negative.json": '{"water": 1, "land": -2}',
    "weights_text.json": '{"water": 1, "land": "heavy"}',
    "weights_zero.json": '{"water": 0, "land": 0}',
    "weights_unknown.json": '{"water": 1, "sea": 2}',
    "weights_good.json": '{"water": 1, "land": 2.5}',
}


def class_weight_files(folder) -> list[Path]:
    """``--class-weights`` files (issue 13): the mistakes one makes by hand, and a good one for the labels."""
    paths = []
    for name, text in CLASS_WEIGHT_FILES.items():
        paths.append(Path(folder) / name)
        paths[-1].write_text(text, encoding="utf-8")
    return paths


if __name__ == "__main__":
    for p in write_all(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs"):
        print(p)


# -- issue 14 #9 and #12: fill pixels without a nodata tag; alpha bands and internal masks (recipes helper) -----
FILL_COLUMNS = 30
"""Columns on the left of :func:`fill_zeros_scene` that hold 0 in every band (31 % of its pixels)."""


def fill_zeros_scene(folder, dtype="uint16") -> Path:
    """A scene whose left columns are 0 in every band (the image footprint's outside) with no nodata tag."""
    data = scene_pixels(3, SIZE, dtype)
    data = np.maximum(data, 1).astype(dtype)  # no accidental zeros in the image itself
    data[:, :, :FILL_COLUMNS] = 0
    return write_scene(Path(folder) / "fill_zeros.tif", data)


def rgba_scene(folder) -> Path:
    """An RGBA uint8 scene (alpha band, colour interpretation alpha) transparent in its top-left quarter."""
    from rasterio.enums import ColorInterp

    data = np.concatenate([scene_pixels(3, SIZE, "uint8"), np.full((1, SIZE, SIZE), 255, dtype=np.uint8)])
    data[3, : SIZE // 2, : SIZE // 2] = 0
    path = write_scene(Path(folder) / "rgba.tif", data)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return path


def masked_scene(folder) -> Path:
    """A 3-band scene with an internal GDAL mask band (no nodata tag) that masks its bottom rows."""
    path = Path(folder) / "masked.tif"
    data = scene_pixels(3, SIZE, "uint8")
    profile = {"driver": "GTiff", "width": SIZE, "height": SIZE, "count": 3, "dtype": "uint8", "crs": UTM,
               "transform": TRANSFORM, "tiled": True, "blockxsize": 32, "blockysize": 32}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        mask = np.full((SIZE, SIZE), 255, dtype=np.uint8)
        mask[-20:] = 0
        ds.write_mask(mask)
    return path
