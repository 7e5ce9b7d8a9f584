"""Shared machinery of the STAC recipes: search, pick an item, read only the needed bytes, write one GeoTIFF.

The recipes (``sentinel2_l2a.py``, ``landsat_c2_l2.py``, ``worldcover_labels.py``) hold only what differs between
products (defaults, band tables, the preset rule, masks); everything else is here:

- :func:`open_catalog` / :func:`search_items` / :func:`least_cloudy`: pystac-client searches a STAC API (URLs
  signed with planetary-computer for the Planetary Computer), and the least cloudy item whose footprint covers the
  whole box wins.
- :func:`asset_href`: an asset by key, by an alias (``B04`` <-> ``red``) or by its ``eo:bands`` name.
- :func:`grid_for_bbox`: the output grid: the finest band's own pixel grid, in the item's (UTM) CRS, clipped to
  the box and snapped outward to whole pixels, so no band is shifted by a fraction of a pixel.
- :func:`write_raster`: every band read through a ``WarpedVRT`` onto that grid (20 m bands resampled to 10 m),
  a block of rows at a time from the COGs' ``/vsicurl/`` range reads, written as a tiled DEFLATE GeoTIFF with band
  descriptions, nodata, scale/offset and tags, through rs-pgd's atomic writer: an error or Ctrl-C leaves no file.

Errors are :class:`RecipeError` (or rs-pgd's own errors) and reach the user as one ``Error:`` line, exit status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"
PLANETARY_COMPUTER = "https://planetarycomputer.microsoft.com/api/stac/v1"
CHUNK_ROWS = 512
"""Rows read and written at a time: memory stays at bands x CHUNK_ROWS x width values, whatever the box."""


class RecipeError(Exception):
    """A recipe cannot go on; the message is one line saying what is wrong and what to do."""


# -- command line ---------------------------------------------------------------------------------------------
class OneLineParser(argparse.ArgumentParser):
    """argparse with rs-pgd's error style (one ``Error:`` line, exit status 2); ``--help`` shows the whole docstring."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        fail(f"{message} (see '{self.prog} --help')")


def fail(message) -> None:
    """Print ``Error: <message>`` on one line and exit with status 2."""
    print(f"Error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def bbox_arg(parser) -> None:
    parser.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"), required=True,
                        help="Area of interest in longitude/latitude (EPSG:4326).")


def search_args(parser, *, stac_url: str, collection: str, bands: str, max_cloud: float) -> None:
    """Options every imagery recipe shares."""
    bbox_arg(parser)
    parser.add_argument("--dates", required=True, metavar="START/END",
                        help="Acquisition dates, e.g. 2024-06-01/2024-08-31 (ISO 8601, either end may be '..').")
    parser.add_argument("--max-cloud", type=float, default=max_cloud, metavar="P",
                        help=f"Largest cloud cover in percent (default {max_cloud:g}).")
    parser.add_argument("--bands", default=bands, metavar="LIST",
                        help=f"Bands in output order, by band name or asset key (default {bands}).")
    parser.add_argument("--item", default=None, metavar="ID", help="Use this item instead of the least cloudy one.")
    parser.add_argument("--stac-url", default=stac_url, help=f"STAC API (default {stac_url}).")
    parser.add_argument("--collection", default=collection, help=f"Collection (default {collection}).")
    parser.add_argument("--sign", choices=("auto", "yes", "no"), default="auto",
                        help="Sign asset URLs with planetary-computer (auto: for the Planetary Computer API).")
    parser.add_argument("--resampling", choices=("nearest", "bilinear", "cubic", "average"), default="nearest",
                        help="How coarser bands reach the finest band's grid (default nearest: no invented values).")
    parser.add_argument("-o", "--output", required=True, help="GeoTIFF to write (replaced atomically).")


def run(build, parser, argv=None) -> None:
    """Parse ``argv``, call ``build(args)`` (which returns the written path) and report in one line."""
    args = parser.parse_args(argv)
    _quiet_gdal()
    from rs_pgd.errors import RsPgdError

    try:
        path = build(args)
    except (RecipeError, RsPgdError) as exc:
        fail(exc)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        fail(f"{exc}; check the paths and free space, then run again")
    print(f"wrote {path}")


def _quiet_gdal() -> None:
    """GDAL's own ``ERROR 1:`` lines would break the one-line rule; its errors still reach us as exceptions."""
    if not os.environ.get("RS_PGD_DEBUG"):
        os.environ.setdefault("CPL_LOG", os.devnull)
        logging.getLogger("rasterio").addHandler(logging.NullHandler())
        warnings.simplefilter("ignore")


def check_bbox(bbox) -> tuple[float, float, float, float]:
    """(W, S, E N) in degrees, west < east and south < north, inside -180..180 / -90..90."""
    w, s, e, n = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise RecipeError("--bbox needs four finite numbers: W S E N in degrees")
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise RecipeError(f"--bbox {w:g} {s:g} {e:g} {n:g} is not W S E N in degrees with W < E and S < N; "
                          "give longitude/latitude, e.g. --bbox 10.1 55.2 10.2 55.3")
    return w, s, e, n


def check_dates(text: str) -> str:
    """A STAC datetime interval ``START/END`` (or one date); each end ISO 8601 or ``..``."""
    parts = text.split("/")
    if len(parts) > 2 or not all(parts):
        raise RecipeError(f"--dates {text!r} is not START/END: give e.g. 2024-06-01/2024-08-31")
    for part in parts:
        if part == "..":
            continue
        try:
            dt.datetime.fromisoformat(part.replace("Z", "+00:00"))
        except ValueError:
            raise RecipeError(f"--dates: {part!r} is not an ISO 8601 date: give e.g. 2024-06-01/2024-08-31") from None
    return text


def split_list(text: str) -> list[str]:
    items = [item for item in text.replace(",", " ").split() if item]
    if not items:
        raise RecipeError("--bands is empty: give band names, e.g. --bands B02,B03,B04,B08")
    return items


# -- search ---------------------------------------------------------------------------------------------------
def open_catalog(url: str, sign: str = "auto"):
    """A pystac-client ``Client`` for ``url``; asset URLs signed with planetary-computer when asked or needed."""
    import pystac_client

    modifier = None
    if sign == "yes" or (sign == "auto" and "planetarycomputer" in url):
        import planetary_computer

        modifier = planetary_computer.sign_inplace
    try:
        return pystac_client.Client.open(url, modifier=modifier, timeout=30)
    except Exception as exc:  # noqa: BLE001 - requests, APIError, JSON errors: all mean "this URL did not answer"
        raise RecipeError(f"the STAC API at {url} does not answer ({_short(exc)}): check --stac-url and your "
                          "network connection") from None


def search_items(client, url: str, collection: str, *, bbox=None, dates=None, ids=None, query=None) -> list:
    """Items of ``collection`` matching the search, as pystac Items (network errors become RecipeError)."""
    try:
        search = client.search(collections=[collection], bbox=bbox, datetime=dates, ids=ids, query=query,
                               max_items=500)
        return list(search.items())
    except Exception as exc:  # noqa: BLE001
        raise RecipeError(f"searching {collection} at {url} failed ({_short(exc)}): check --stac-url, "
                          "--collection and your network connection") from None


def bbox_coverage(item, bbox) -> float:
    """Share of the box (in degrees) that the item's footprint covers, 0..1."""
    from shapely.geometry import box, shape

    area = box(*bbox)
    footprint = shape(item.geometry) if item.geometry else box(*item.bbox)
    return float(footprint.intersection(area).area / area.area)


@dataclass
class Choice:
    """The chosen item and why."""

    item: object
    cloud_cover: float | None
    candidates: int
    reason: str = ""
    extra: dict = field(default_factory=dict)


def least_cloudy(items, bbox, max_cloud: float, what: str, cloud_key: str = "eo:cloud_cover") -> Choice:
    """The least cloudy item (ties: the latest) whose footprint covers the whole box and is under ``max_cloud``.

    Raises
    ------
    RecipeError
        When no item covers the whole box under the cloud limit; the message says what was found.
    """
    if not items:
        raise RecipeError(f"no {what} item touches the box in these dates: check --bbox (W S E N, degrees) and "
                          "widen --dates")
    clear = [it for it in items if _cloud(it, cloud_key) <= max_cloud]
    covering = [it for it in clear if bbox_coverage(it, bbox) >= 1 - 1e-9]
    if not covering:
        best = max((bbox_coverage(it, bbox) for it in clear), default=0.0)
        if not clear:
            raise RecipeError(f"{len(items)} {what} item(s) touch the box but all are over {max_cloud:g} % cloud: "
                              "raise --max-cloud or widen --dates")
        raise RecipeError(f"no {what} item covers the whole box ({len(clear)} touch it, the best covers "
                          f"{100 * best:.0f} %): use a smaller --bbox inside one tile or other --dates")
    covering.sort(key=lambda it: (_cloud(it, cloud_key), -_timestamp(it)))
    chosen = covering[0]
    return Choice(chosen, _cloud(chosen, cloud_key), len(covering),
                  f"least cloudy of {len(covering)} item(s) covering the box")


def choose_item(client, args, bbox, dates, keep=None, what=None) -> Choice:
    """The item named by ``--item`` (it must cover the box), else the least cloudy covering one.

    ``keep`` filters the search results (e.g. Landsat 8/9 only); ``what`` names them in messages.
    """
    if args.item:
        item = item_by_id(client, args.stac_url, args.collection, args.item)
        if bbox_coverage(item, bbox) < 1 - 1e-9:
            raise RecipeError(f"item {item.id} does not cover the whole box: use a smaller --bbox or another item")
        return Choice(item, item.properties.get("eo:cloud_cover"), 1, "chosen with --item")
    items = search_items(client, args.stac_url, args.collection, bbox=bbox, dates=dates,
                         query={"eo:cloud_cover": {"lt": args.max_cloud}})
    if keep is not None:
        items = [it for it in items if keep(it)]
    return least_cloudy(items, bbox, args.max_cloud, what or args.collection)


def item_by_id(client, url: str, collection: str, item_id: str):
    items = search_items(client, url, collection, ids=[item_id])
    if not items:
        raise RecipeError(f"item {item_id!r} is not in {collection} at {url}: check --item and --collection")
    return items[0]


def _cloud(item, key: str) -> float:
    value = item.properties.get(key)
    return float(value) if value is not None else 0.0


def _timestamp(item) -> float:
    when = item.datetime or item.common_metadata.start_datetime
    return when.timestamp() if when else 0.0


def _short(exc) -> str:
    from rs_pgd.raster import gdal_message

    text = " ".join(gdal_message(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# -- assets ---------------------------------------------------------------------------------------------------
def asset_href(item, name: str, aliases: dict[str, str] | None = None) -> tuple[str, str]:
    """``(asset key, href)`` of the asset for band ``name``: by key, by alias, or by ``eo:bands`` name."""
    wanted = {name.lower()}
    aliases = {k.lower(): v.lower() for k, v in (aliases or {}).items()}
    if name.lower() in aliases:
        wanted.add(aliases[name.lower()])
    wanted |= {k for k, v in aliases.items() if v == name.lower()}
    for key, asset in item.assets.items():
        if key.lower() in wanted:
            return key, asset.href
    for key, asset in item.assets.items():
        names = {str(b.get(f, "")).lower() for b in asset.extra_fields.get("eo:bands", []) for f in ("name",)}
        if names & wanted:
            return key, asset.href
    keys = ", ".join(sorted(k for k, a in item.assets.items() if "image" in (a.media_type or "image")))
    raise RecipeError(f"item {item.id} has no asset for band {name!r}: choose among {keys}")


# -- grid -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """The output pixel grid."""

    crs: object
    transform: object
    width: int
    height: int


def open_remote(href: str):
    """Open an asset (URL or path) with rasterio under rs-pgd's remote GDAL settings; one-line errors."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from rs_pgd.raster import gdal_path, remote_env

    try:
        with remote_env(href):
            return rasterio.open(gdal_path(href))
    except RasterioIOError as exc:
        raise RecipeError(f"cannot read {href} ({_short(exc)}): check your network connection and run again") from None


def grid_for_bbox(reference, bbox) -> Grid:
    """The pixels of ``reference`` (an open dataset) that cover the lon/lat box, snapped outward, clipped to it."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    x0, y0, x1, y1 = transform_bounds("EPSG:4326", reference.crs, *bbox, densify_pts=21)
    t = reference.transform
    cols = sorted(((x0 - t.c) / t.a, (x1 - t.c) / t.a))
    rows = sorted(((y0 - t.f) / t.e, (y1 - t.f) / t.e))
    col0, col1 = max(math.floor(cols[0] + 1e-6), 0), min(math.ceil(cols[1] - 1e-6), reference.width)
    row0, row1 = max(math.floor(rows[0] + 1e-6), 0), min(math.ceil(rows[1] - 1e-6), reference.height)
    if col1 <= col0 or row1 <= row0:
        raise RecipeError("the box lies outside the chosen item's rasters: check --bbox (W S E N, degrees)")
    window = Window(col0, row0, col1 - col0, row1 - row0)
    return Grid(reference.crs, window_transform(window, t), int(window.width), int(window.height))


def finest(datasets):
    """The dataset with the smallest pixels (the grid every band is brought onto)."""
    return min(datasets, key=lambda ds: abs(ds.transform.a * ds.transform.e))


# -- reading and writing --------------------------------------------------------------------------------------
@dataclass
class Band:
    """One output band: its sources (mosaicked in order), description and source nodata."""

    description: str
    datasets: list
    nodata: float | None = 0


def warp_rows(band: Band, grid: Grid, row: int, rows: int, resampling: str, out_nodata, dtype) -> np.ndarray:
    """Rows ``row..row+rows`` of ``band`` on ``grid``; the first source with data wins at each pixel.

    The warp transforms every pixel exactly (``tolerance=1e-9`` pixel; rasterio 1.4 fails on 0 with a target grid; GDAL's default approximates to 1/8 pixel, which moved
    ~0.1 % of class boundaries by one pixel in the WorldCover test).
    """
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    from rs_pgd.raster import remote_env

    out = np.full((rows, grid.width), out_nodata, dtype=dtype)
    missing = np.ones(out.shape, dtype=bool)
    for ds in band.datasets:
        src_nodata = ds.nodata if ds.nodata is not None else band.nodata
        with remote_env(ds.name), WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width,
                                            height=grid.height, resampling=Resampling[resampling],
                                            src_nodata=src_nodata, nodata=out_nodata, tolerance=1e-9) as vrt:
            data = vrt.read(1, window=Window(0, row, grid.width, rows))
            has = vrt.read_masks(1, window=Window(0, row, grid.width, rows)) > 0
        take = missing & has
        out[take] = data[take]
        missing &= ~take
        if not missing.any():
            break
    return out


def write_raster(output, bands: list[Band], grid: Grid, *, dtype: str, nodata, tags: dict,
                 scale: float = 1.0, offset: float = 0.0, resampling: str = "nearest", mask_rows=None,
                 colormap=None, category_names=None, predictor: int = 2) -> str:
    """Write ``bands`` on ``grid`` to ``output``: tiled DEFLATE GeoTIFF, written atomically, rows in chunks.

    Parameters
    ----------
    mask_rows : callable, optional
        ``mask_rows(row, rows) -> bool array``: pixels to set to nodata (e.g. clouds from a QA band).
    colormap, category_names : optional
        A colour table and GDAL category names for band 1 (class rasters).
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    from rs_pgd.output import AtomicOutput, write_category_names

    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": len(bands), "dtype": dtype,
               "crs": grid.crs, "transform": grid.transform, "nodata": nodata, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate", "predictor": predictor, "BIGTIFF": "IF_SAFER"}
    try:
        with AtomicOutput(output) as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                for i, band in enumerate(bands, start=1):
                    dst.set_band_description(i, band.description)
                dst.scales = [scale] * len(bands)
                dst.offsets = [offset] * len(bands)
                dst.update_tags(**{k: str(v) for k, v in tags.items() if v is not None})
                if colormap:
                    dst.write_colormap(1, colormap)
                for row in range(0, grid.height, CHUNK_ROWS):
                    rows = min(CHUNK_ROWS, grid.height - row)
                    masked = mask_rows(row, rows) if mask_rows is not None else None
                    for i, band in enumerate(bands, start=1):
                        data = warp_rows(band, grid, row, rows, resampling, nodata, dtype)
                        if masked is not None:
                            data[masked] = nodata
                        dst.write(data, i, window=Window(0, row, grid.width, rows))
            if category_names:
                write_category_names(tmp, category_names, "class")
    except RasterioIOError as exc:
        raise RecipeError(f"reading the imagery failed ({_short(exc)}): check your network connection and run "
                          f"again; {output} was not written") from None
    return str(output)


def item_tags(item, collection: str, url: str, choice: Choice | None = None) -> dict:
    """Tags that record where the pixels came from."""
    p = item.properties
    tags = {
        "STAC_ITEM_ID": item.id,
        "STAC_COLLECTION": collection,
        "STAC_API": url,
        "DATETIME": p.get("datetime") or p.get("start_datetime"),
        "CLOUD_COVER": p.get("eo:cloud_cover"),
        "PLATFORM": p.get("platform"),
    }
    if choice is not None:
        tags["CHOSEN_BECAUSE"] = choice.reason
    return tags


def close_all(bands) -> None:
    for band in bands:
        for ds in band.datasets:
            ds.close()
