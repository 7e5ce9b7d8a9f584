"""Landsat 8/9 Collection 2 Level-2 surface reflectance for a box, from a STAC API, as one GeoTIFF for rs-pgd.

Usage:
    python data_recipes/landsat_c2_l2.py --bbox -105.30 40.00 -105.20 40.06 --dates 2023-06-01/2023-09-30 \
        --mask-clouds -o scene.tif

Searches the STAC API (default the Planetary Computer, collection ``landsat-c2-l2``; its asset URLs are signed
with planetary-computer) for Landsat 8 and 9 items, takes the least cloudy one that covers the whole box (or
``--item``), reads only the needed bytes of the chosen bands, and writes a tiled DEFLATE GeoTIFF in the item's UTM
CRS: uint16 DNs, nodata 0, band descriptions SR_B2, SR_B3, ..., the scale/offset of the ``landsat-c2-l2`` preset
(DN * 0.0000275 - 0.2) and the item id, date and cloud cover in its tags. With ``--mask-clouds`` the pixels that
``qa_pixel`` flags as cloud, dilated cloud, cirrus or cloud shadow become nodata.

Data: Landsat Level-2 Science Products courtesy of the U.S. Geological Survey (public domain).
"""

from __future__ import annotations

import numpy as np
import stac_recipe as sr

PRESET = "landsat-c2-l2"
# Collection 2 band names and the Planetary Computer's asset keys for them.
ASSET_KEYS = {"SR_B1": "coastal", "SR_B2": "blue", "SR_B3": "green", "SR_B4": "red", "SR_B5": "nir08",
              "SR_B6": "swir16", "SR_B7": "swir22"}
PLATFORMS = ("landsat-8", "landsat-9")
QA_CLOUD_BITS = {"dilated cloud": 1, "cirrus": 2, "cloud": 3, "cloud shadow": 4}
"""Bits of ``qa_pixel`` (Collection 2) that ``--mask-clouds`` turns into nodata."""


def parser():
    p = sr.OneLineParser(prog="landsat_c2_l2.py", description=__doc__)
    sr.search_args(p, stac_url=sr.PLANETARY_COMPUTER, collection="landsat-c2-l2",
                   bands="SR_B2,SR_B3,SR_B4,SR_B5,SR_B6,SR_B7", max_cloud=20)
    p.add_argument("--mask-clouds", action="store_true",
                   help="Set pixels flagged in qa_pixel as cloud, dilated cloud, cirrus or shadow to nodata.")
    return p


def canonical(name: str) -> str:
    """``red`` -> ``SR_B4``, ``b4``/``sr_b4`` -> ``SR_B4``; other names as given."""
    upper = name.upper()
    for band, key in ASSET_KEYS.items():
        if upper in (key.upper(), band, band[3:]):
            return band
    return name


def cloud_mask(qa: np.ndarray) -> np.ndarray:
    """True where ``qa_pixel`` flags cloud, dilated cloud, cirrus or cloud shadow."""
    bits = sum(1 << b for b in QA_CLOUD_BITS.values())
    return (qa.astype(np.uint32) & bits) != 0


def build(args) -> str:
    from rs_pgd.output import check_output_path
    from rs_pgd.presets import get_preset

    bbox = sr.check_bbox(args.bbox)
    dates = sr.check_dates(args.dates)
    names = [canonical(b) for b in sr.split_list(args.bands)]
    check_output_path(args.output)
    client = sr.open_catalog(args.stac_url, args.sign)
    choice = sr.choose_item(client, args, bbox, dates, keep=lambda it: it.properties.get("platform") in PLATFORMS,
                            what=f"{args.collection} (Landsat 8/9)")
    item = choice.item
    hrefs = [sr.asset_href(item, name, ASSET_KEYS)[1] for name in names]
    qa_href = sr.asset_href(item, "qa_pixel")[1] if args.mask_clouds else None
    p = get_preset(PRESET)
    bands, qa = [], None
    try:
        for name, href in zip(names, hrefs):
            bands.append(sr.Band(name, [sr.open_remote(href)], nodata=0))
        grid = sr.grid_for_bbox(sr.finest([b.datasets[0] for b in bands]), bbox)
        mask_rows = None
        if qa_href is not None:
            qa = sr.Band("qa_pixel", [sr.open_remote(qa_href)], nodata=None)
            mask_rows = lambda row, rows: cloud_mask(sr.warp_rows(qa, grid, row, rows, "nearest", 1, "uint16"))  # noqa: E731
        tags = {**sr.item_tags(item, args.collection, args.stac_url, choice), "RS_PGD_PRESET": PRESET,
                "CLOUDS_MASKED": "qa_pixel bits " + ", ".join(QA_CLOUD_BITS) if qa_href else None,
                "BBOX": " ".join(f"{v:g}" for v in bbox)}
        return sr.write_raster(args.output, bands, grid, dtype="uint16", nodata=0, tags=tags, scale=p.scale,
                               offset=p.offset, resampling=args.resampling, mask_rows=mask_rows)
    finally:
        sr.close_all(bands + ([qa] if qa else []))


if __name__ == "__main__":
    sr.run(build, parser())
