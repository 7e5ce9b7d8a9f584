"""Sentinel-2 L2A surface reflectance for a box, from a STAC API, as one GeoTIFF ready for rs-pgd.

Usage:
    python data_recipes/sentinel2_l2a.py --bbox 10.10 55.20 10.20 55.27 --dates 2024-06-01/2024-08-31 -o scene.tif

Searches the STAC API (default Earth Search v1, collection ``sentinel-2-l2a``) for items touching the box in the
dates, keeps those under ``--max-cloud`` whose footprint covers the whole box, and takes the least cloudy (or the
one named by ``--item``). Only the bytes of the chosen bands' COGs that cover the box are read (HTTP range
requests); 20 m and 60 m bands are resampled onto the 10 m grid of the item's UTM zone. The output is a tiled
DEFLATE GeoTIFF: uint16 digital numbers, nodata 0, band descriptions (B02, B03, ...), the scale/offset of the rs-pgd
preset that fits the item's processing baseline, and the item id, date and cloud cover in its tags.

Then: ``rs-pgd info scene.tif --preset sentinel2-l2a`` (the preset named in the tag RS_PGD_PRESET).

Data: Copernicus Sentinel data, processed by ESA; free and open (Copernicus licence). Earth Search is run by
Element 84 on the AWS Open Data registry.
"""

from __future__ import annotations

import datetime as dt

import stac_recipe as sr

# Sentinel-2 band names and the asset keys Earth Search v1 uses for them (the Planetary Computer uses B02, ...).
ASSET_KEYS = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
              "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22"}
BASELINE_04 = dt.datetime(2022, 1, 25, tzinfo=dt.UTC)


def parser():
    p = sr.OneLineParser(prog="sentinel2_l2a.py", description=__doc__)
    sr.search_args(p, stac_url=sr.EARTH_SEARCH, collection="sentinel-2-l2a", bands="B02,B03,B04,B08",
                   max_cloud=20)
    p.add_argument("--preset", default=None,
                   help="rs-pgd preset to record (default: from the item's processing baseline).")
    return p


def preset_for(item) -> tuple[str, str]:
    """The rs-pgd preset that turns this item's DNs into reflectance, and why.

    From processing baseline 04.00 (25 January 2022) L2A DNs carry a +1000 offset (``sentinel2-l2a``:
    (DN - 1000) / 10000); earlier ones do not (``sentinel2-l2a-pre04``: DN / 10000). Earth Search marks items
    whose offset it already removed with ``earthsearch:boa_offset_applied`` (read as DN / 10000).
    """
    p = item.properties
    if p.get("earthsearch:boa_offset_applied") is True:
        return "sentinel2-l2a-pre04", "earthsearch:boa_offset_applied is true"
    baseline = p.get("s2:processing_baseline")
    if baseline is not None:
        try:
            newer = float(baseline) >= 4.0
        except ValueError:
            newer = None
        if newer is not None:
            return ("sentinel2-l2a" if newer else "sentinel2-l2a-pre04"), f"processing baseline {baseline}"
    when = item.datetime or item.common_metadata.start_datetime
    newer = when is not None and when >= BASELINE_04
    return ("sentinel2-l2a" if newer else "sentinel2-l2a-pre04"), "acquisition date (no processing baseline given)"


def canonical(name: str) -> str:
    """``red`` -> ``B04``, ``b4`` -> ``B04``; other names as given."""
    upper = name.upper()
    for band, key in ASSET_KEYS.items():
        if upper == key.upper() or upper == band or (upper[:1] == "B" and upper[1:].lstrip("0") == band[1:].lstrip("0")):
            return band
    return name


def build(args) -> str:
    from rs_pgd.output import check_output_path
    from rs_pgd.presets import get_preset

    bbox = sr.check_bbox(args.bbox)
    dates = sr.check_dates(args.dates)
    names = [canonical(b) for b in sr.split_list(args.bands)]
    if args.preset is not None:
        get_preset(args.preset)
    check_output_path(args.output)
    client = sr.open_catalog(args.stac_url, args.sign)
    choice = sr.choose_item(client, args, bbox, dates)
    item = choice.item
    hrefs = [sr.asset_href(item, name, ASSET_KEYS)[1] for name in names]  # unknown band: error before any read
    preset, why = (args.preset, "given with --preset") if args.preset else preset_for(item)
    p = get_preset(preset)
    bands = []
    try:
        for name, href in zip(names, hrefs):
            bands.append(sr.Band(name, [sr.open_remote(href)], nodata=0))
        grid = sr.grid_for_bbox(sr.finest([b.datasets[0] for b in bands]), bbox)
        tags = {**sr.item_tags(item, args.collection, args.stac_url, choice), "RS_PGD_PRESET": preset,
                "PRESET_BECAUSE": why, "PROCESSING_BASELINE": item.properties.get("s2:processing_baseline"),
                "BBOX": " ".join(f"{v:g}" for v in bbox)}
        return sr.write_raster(args.output, bands, grid, dtype="uint16", nodata=0, tags=tags, scale=p.scale,
                               offset=p.offset, resampling=args.resampling)
    finally:
        sr.close_all(bands)


if __name__ == "__main__":
    sr.run(build, parser())
