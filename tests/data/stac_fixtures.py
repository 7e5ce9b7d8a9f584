"""Recorded STAC responses and tiny COGs for the data-recipe tests (never the network).

``python tests/data/stac_fixtures.py`` rewrites the JSON files in ``tests/data/stac/``: the landing page of a STAC
API and the items of three collections, laid out as Earth Search v1 (``sentinel-2-l2a``: asset keys ``blue``,
``red``, ``rededge1``, ...; ``s2:processing_baseline``) and the Planetary Computer (``landsat-c2-l2``: keys
``blue``, ``nir08``, ``qa_pixel``, platforms; ``esa-worldcover``: asset ``map``) lay them out, with every href
rewritten to ``{SERVER}/files/<name>.tif``, and each asset's ``raster:bands`` (nodata, scale, offset) as the two
APIs publish them. The tests serve them from a local HTTP server
(:mod:`stac_server`), which fills in ``{SERVER}``; :func:`write_cogs` writes the COGs those hrefs name, whose
pixel values say which item, band and pixel they come from, so a test can tell exactly what was read.

Geometry: a 1.2 km Sentinel-2 "tile" in UTM 32N (EPSG:32632) at 10 m (20 m bands at half the size), a 1.2 km
Landsat "scene" at 30 m in the same zone, and two WorldCover tiles in EPSG:4326 that split the area at a meridian.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from pyproj import Transformer
from rasterio.transform import from_origin

HERE = Path(__file__).resolve().parent
JSON_DIR = HERE / "stac"
UTM = "EPSG:32632"
X0, Y0 = 500_000.0, 6_100_000.0
S2_SIZE = 120  # 10 m pixels per side: 1.2 km
LS_SIZE = 40  # 30 m pixels per side
WC_RES = 1 / 12000  # WorldCover's pixel size in degrees

S2_BANDS = {"coastal": ("B01", 60), "blue": ("B02", 10), "green": ("B03", 10), "red": ("B04", 10),
            "rededge1": ("B05", 20), "nir": ("B08", 10), "swir16": ("B11", 20)}
S2_ITEMS = [  # id, cloud cover, processing baseline, footprint ("full" or "west half")
    ("S2B_32UNF_20240612_0_L2A", 31.5, "05.10", "full"),
    ("S2A_32UNF_20240704_0_L2A", 4.2, "05.10", "full"),
    ("S2B_32UNF_20240719_0_L2A", 0.3, "05.10", "west half"),
    ("S2A_32UNF_20210704_0_L2A", 2.0, "03.00", "full"),  # outside the test's dates: only reached with --item
]
LS_BANDS = {"coastal": "SR_B1", "blue": "SR_B2", "green": "SR_B3", "red": "SR_B4", "nir08": "SR_B5",
            "swir16": "SR_B6", "swir22": "SR_B7", "qa_pixel": "QA_PIXEL"}
LS_ITEMS = [("LC09_L2SP_196022_20230704_02_T1", 12.0, "landsat-9"),
            ("LE07_L2SP_196022_20230706_02_T1", 1.0, "landsat-7"),  # least cloudy, but not Landsat 8/9
            ("LC08_L2SP_196022_20230628_02_T1", 35.0, "landsat-8")]
WC_ITEMS = ["ESA_WorldCover_10m_2021_v200_W", "ESA_WorldCover_10m_2021_v200_E"]

_to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)


def lonlat(x, y):
    return _to_lonlat.transform(x, y)


def _ring(x0, y0, x1, y1, steps=8):
    """A densified lon/lat ring around a UTM rectangle."""
    xs = np.linspace(x0, x1, steps)
    ys = np.linspace(y0, y1, steps)
    pts = ([(x, y0) for x in xs] + [(x1, y) for y in ys[1:]] + [(x, y1) for x in xs[::-1][1:]]
           + [(x0, y) for y in ys[::-1][1:]])
    return [list(lonlat(x, y)) for x, y in pts]


def _feature(item_id, collection, ring, props, assets):
    lons = [p[0] for p in ring]
    lats = [p[1] for p in ring]
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": props, "assets": assets, "links": [],
    }


def _asset(name, eo_name=None, common=None, gsd=None, raster=None):
    asset = {"href": "{SERVER}/files/" + name + ".tif",
             "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"]}
    if eo_name:
        asset["eo:bands"] = [{"name": eo_name, **({"common_name": common} if common else {})}]
    if gsd:
        asset["gsd"] = gsd
    if raster:
        asset["raster:bands"] = [raster]
    return asset


def _s2_raster(res, baseline):
    """Earth Search v1's ``raster:bands`` of an L2A reflectance asset: the -0.1 offset from baseline 04.00 on."""
    return {"nodata": 0, "data_type": "uint16", "bits_per_sample": 15, "spatial_resolution": res, "scale": 0.0001,
            "offset": -0.1 if baseline >= "04.00" else 0.0}


def _ls_raster(key):
    """The Planetary Computer's ``raster:bands`` of a Landsat C2 L2 asset (surface reflectance or QA bits)."""
    if key == "qa_pixel":
        return {"unit": "bit index", "nodata": 1, "data_type": "uint16", "spatial_resolution": 30}
    return {"scale": 2.75e-05, "nodata": 0, "offset": -0.2, "data_type": "uint16", "spatial_resolution": 30}


def s2_items():
    feats = []
    for i, (item_id, cloud, baseline, footprint) in enumerate(S2_ITEMS):
        x1 = X0 + S2_SIZE * 10 / (2 if footprint == "west half" else 1)
        ring = _ring(X0, Y0 - S2_SIZE * 10, x1, Y0)
        date = f"{item_id[10:14]}-{item_id[14:16]}-{item_id[16:18]}T10:36:14.123000Z"
        props = {"datetime": date, "platform": "sentinel-2" + item_id[2].lower(), "eo:cloud_cover": cloud,
                 "proj:epsg": 32632, "s2:processing_baseline": baseline, "earthsearch:boa_offset_applied": False}
        assets = {key: _asset(f"s2_{i}_{key}", name, key, res, _s2_raster(res, baseline))
                  for key, (name, res) in S2_BANDS.items()}
        assets["scl"] = _asset(f"s2_{i}_blue", raster={"nodata": 0, "data_type": "uint8", "spatial_resolution": 20})
        assets["thumbnail"] = {"href": "{SERVER}/files/thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
        feats.append(_feature(item_id, "sentinel-2-l2a", ring, props, assets))
    return feats


def ls_items():
    feats = []
    for i, (item_id, cloud, platform) in enumerate(LS_ITEMS):
        ring = _ring(X0, Y0 - LS_SIZE * 30, X0 + LS_SIZE * 30, Y0)
        date = f"{item_id[17:21]}-{item_id[21:23]}-{item_id[23:25]}T10:20:00.000000Z"
        props = {"datetime": date, "platform": platform, "eo:cloud_cover": cloud, "proj:epsg": 32632,
                 "landsat:collection_number": "02", "landsat:correction": "L2SP"}
        assets = {key: _asset(f"ls_{i}_{key}", name, None if key == "qa_pixel" else key, 30, _ls_raster(key))
                  for key, name in LS_BANDS.items()}
        feats.append(_feature(item_id, "landsat-c2-l2", ring, props, assets))
    return feats


def wc_bounds():
    """The two WorldCover tiles' lon/lat bounds: the S2 tile's area (plus a margin), split at a meridian."""
    lon0, lat0 = lonlat(X0 - 300, Y0 - S2_SIZE * 10 - 300)
    lon1, lat1 = lonlat(X0 + S2_SIZE * 10 + 300, Y0 + 300)
    west = np.floor(min(lon0, lonlat(X0 - 300, Y0 + 300)[0]) / WC_RES) * WC_RES
    east = np.ceil(max(lon1, lonlat(X0 + S2_SIZE * 10 + 300, Y0 - S2_SIZE * 10 - 300)[0]) / WC_RES) * WC_RES
    south = np.floor(min(lat0, lonlat(X0 + S2_SIZE * 10 + 300, Y0 - S2_SIZE * 10 - 300)[1]) / WC_RES) * WC_RES
    north = np.ceil(max(lat1, lonlat(X0 - 300, Y0 + 300)[1]) / WC_RES) * WC_RES
    mid = round((west + east) / 2 / WC_RES) * WC_RES
    return [(west, south, mid, north), (mid, south, east, north)]


def wc_items():
    feats = []
    for i, (item_id, (w, s, e, n)) in enumerate(zip(WC_ITEMS, wc_bounds())):
        ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
        props = {"datetime": None, "start_datetime": "2021-01-01T00:00:00Z", "end_datetime": "2021-12-31T23:59:59Z",
                 "esa_worldcover:product_version": "2.0.0"}
        feats.append(_feature(item_id, "esa-worldcover", ring, props, {"map": _asset(f"wc_{i}_map")}))
    return feats


def landing():
    return {
        "type": "Catalog", "id": "recorded-stac-api", "stac_version": "1.0.0",
        "description": "Recorded STAC API responses for rs-pgd's recipe tests",
        "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
                       "https://api.stacspec.org/v1.0.0/item-search#query",
                       "https://api.stacspec.org/v1.0.0/collections"],
        "links": [{"rel": "self", "href": "{SERVER}/", "type": "application/json"},
                  {"rel": "root", "href": "{SERVER}/", "type": "application/json"},
                  {"rel": "search", "href": "{SERVER}/search", "type": "application/geo+json", "method": "POST"},
                  {"rel": "search", "href": "{SERVER}/search", "type": "application/geo+json", "method": "GET"}],
    }


def write_json(folder=JSON_DIR) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in (("landing.json", landing()), ("sentinel-2-l2a.json", s2_items()),
                       ("landsat-c2-l2.json", ls_items()), ("esa-worldcover.json", wc_items())):
        path = folder / name
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        out.append(path)
    return out


# -- pixels ---------------------------------------------------------------------------------------------------
def s2_value(item: int, band: int, rows, cols):
    """Pixel values of S2 item ``item``, band number ``band`` (index in S2_BANDS): they name their source."""
    return (1000 + 2000 * item + 100 * band + (rows * 7 + cols * 3) % 97).astype(np.uint16)


def ls_value(item: int, band: int, rows, cols):
    return (7000 + 3000 * item + 300 * band + (rows * 5 + cols * 11) % 251).astype(np.uint16)


QA_CLEAR = 21824  # Collection 2 "clear, low confidence" value


def _write_cog(path, data, transform, crs, nodata):
    profile = {"driver": "COG", "width": data.shape[-1], "height": data.shape[-2], "count": 1,
               "dtype": data.dtype.name, "crs": crs, "transform": transform, "nodata": nodata,
               "blocksize": 64 if data.shape[-1] >= 128 else 32, "compress": "deflate", "overviews": "NONE"}
    tmp = Path(path).with_suffix(".mem.tif")
    with rasterio.open(tmp, "w", driver="GTiff", width=profile["width"], height=profile["height"], count=1,
                       dtype=profile["dtype"], crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data, 1)
    rasterio.shutil.copy(tmp, path, driver="COG", blocksize=profile["blocksize"], compress="DEFLATE",
                         overviews="NONE")
    tmp.unlink()
    return Path(path)


def s2_array(item: int, band: int, res: int) -> np.ndarray:
    n = S2_SIZE * 10 // res
    rows, cols = np.mgrid[0:n, 0:n]
    data = s2_value(item, band, rows, cols)
    data[: n // 12 + 1, : n // 12 + 1] = 0  # a nodata corner
    return data


def ls_array(item: int, band: int) -> np.ndarray:
    rows, cols = np.mgrid[0:LS_SIZE, 0:LS_SIZE]
    return ls_value(item, band, rows, cols)


def qa_array() -> np.ndarray:
    qa = np.full((LS_SIZE, LS_SIZE), QA_CLEAR, dtype=np.uint16)
    qa[10:20, 10:25] = QA_CLEAR | (1 << 3)  # cloud
    qa[25:30, 5:9] = QA_CLEAR | (1 << 4)  # cloud shadow
    return qa


def wc_array(tile: int) -> tuple[np.ndarray, object]:
    w, s, e, n = wc_bounds()[tile]
    width, height = int(round((e - w) / WC_RES)), int(round((n - s) / WC_RES))
    rows, cols = np.mgrid[0:height, 0:width]
    classes = np.array([10, 20, 30, 40, 50, 60, 80, 90, 95, 100], dtype=np.uint8)
    data = classes[((rows // 7) * 3 + (cols // 5) + 4 * tile) % len(classes)]
    data[:3, :] = 0  # a nodata strip along the north edge
    return data, from_origin(w, n, WC_RES, WC_RES)


def write_cogs(folder) -> Path:
    """Write every COG the recorded items name into ``folder``; return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(S2_ITEMS)):
        for b, (key, (_, res)) in enumerate(S2_BANDS.items()):
            _write_cog(folder / f"s2_{i}_{key}.tif", s2_array(i, b, res), from_origin(X0, Y0, res, res), UTM, 0)
    for i in range(len(LS_ITEMS)):
        for b, key in enumerate(LS_BANDS):
            data = qa_array() if key == "qa_pixel" else ls_array(i, b)
            _write_cog(folder / f"ls_{i}_{key}.tif", data, from_origin(X0, Y0, 30, 30), UTM,
                       None if key == "qa_pixel" else 0)
    for i in range(len(WC_ITEMS)):
        data, transform = wc_array(i)
        _write_cog(folder / f"wc_{i}_map.tif", data, transform, "EPSG:4326", 0)
    return folder


if __name__ == "__main__":
    for written in write_json(sys.argv[1] if len(sys.argv) > 1 else JSON_DIR):
        print(written)
