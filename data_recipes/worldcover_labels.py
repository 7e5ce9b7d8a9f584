"""ESA WorldCover land cover (10 m, 11 classes) on a scene's exact pixel grid, as labels for ``rs-pgd fit``.

Usage:
    python data_recipes/worldcover_labels.py --like scene.tif -o labels.tif
    rs-pgd fit scene.tif labels.tif --preset sentinel2-l2a

Searches the STAC API (default the Planetary Computer, collection ``esa-worldcover``, asset ``map``) for the
WorldCover tiles of ``--year`` that touch the scene's footprint, and warps them (nearest neighbour: class values
are never blended) onto the scene's CRS, transform and size, reading only the bytes that cover it. Tiles are
mosaicked in the order the API returns them; pixels no tile covers are nodata (0). The output is a tiled DEFLATE
uint8 GeoTIFF with the official class values (10 tree cover ... 100 moss and lichen), their names (GDAL category
names and a CLASS_NAMES tag) and their official colours.

Data: ESA WorldCover project 2020/2021, (c) ESA, contains modified Copernicus Sentinel data; licence CC BY 4.0.
Cite: Zanaga, D. et al. (2022) ESA WorldCover 10 m 2021 v200, doi:10.5281/zenodo.7254221.
"""

from __future__ import annotations

import json

import stac_recipe as sr

CLASSES = {
    10: ("tree cover", "#006400"),
    20: ("shrubland", "#ffbb22"),
    30: ("grassland", "#ffff4c"),
    40: ("cropland", "#f096ff"),
    50: ("built-up", "#fa0000"),
    60: ("bare / sparse vegetation", "#b4b4b4"),
    70: ("snow and ice", "#f0f0f0"),
    80: ("permanent water bodies", "#0064c8"),
    90: ("herbaceous wetland", "#0096a0"),
    95: ("mangroves", "#00cf75"),
    100: ("moss and lichen", "#fae6a0"),
}
"""Official WorldCover class values, names and colours (product user manual)."""
NODATA = 0


def parser():
    p = sr.OneLineParser(prog="worldcover_labels.py", description=__doc__)
    p.add_argument("--like", required=True, metavar="SCENE", help="Scene whose grid the labels take (path or URL).")
    p.add_argument("--year", type=int, choices=(2020, 2021), default=2021, help="WorldCover edition (default 2021).")
    p.add_argument("--stac-url", default=sr.PLANETARY_COMPUTER, help=f"STAC API (default {sr.PLANETARY_COMPUTER}).")
    p.add_argument("--collection", default="esa-worldcover", help="Collection (default esa-worldcover).")
    p.add_argument("--asset", default="map", help="Asset key of the class map (default map).")
    p.add_argument("--sign", choices=("auto", "yes", "no"), default="auto",
                   help="Sign asset URLs with planetary-computer (auto: for the Planetary Computer API).")
    p.add_argument("-o", "--output", required=True, help="Label GeoTIFF to write (replaced atomically).")
    return p


def colormap() -> dict[int, tuple[int, int, int, int]]:
    table = {NODATA: (0, 0, 0, 0)}
    for value, (_, colour) in CLASSES.items():
        table[value] = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5)) + (255,)
    return table


def category_names() -> list[str]:
    names = [""] * (max(CLASSES) + 1)
    for value, (name, _) in CLASSES.items():
        names[value] = name
    return names


def build(args) -> str:
    from rasterio.warp import transform_bounds

    from rs_pgd.output import check_output_path
    from rs_pgd.raster import require_north_up, scene_info

    check_output_path(args.output, inputs=[args.like])
    info = scene_info(args.like)
    require_north_up(info, vector_labels=True)  # needs a CRS and a north-up transform to place the labels
    grid = sr.Grid(info.crs, info.transform, info.width, info.height)
    bbox = sr.check_bbox(transform_bounds(info.crs, "EPSG:4326", *info.bounds, densify_pts=21))
    client = sr.open_catalog(args.stac_url, args.sign)
    items = sr.search_items(client, args.stac_url, args.collection, bbox=bbox,
                            dates=f"{args.year}-01-01/{args.year}-12-31")
    if not items:
        raise sr.RecipeError(f"no {args.collection} tile of {args.year} touches the scene's footprint "
                             f"({', '.join(f'{v:.4f}' for v in bbox)}): check --like and --year")
    hrefs = [sr.asset_href(item, args.asset)[1] for item in items]
    band = sr.Band("ESA WorldCover class", [], nodata=NODATA)
    try:
        for href in hrefs:
            band.datasets.append(sr.open_remote(href))
        tags = {"STAC_ITEM_IDS": " ".join(it.id for it in items), "STAC_COLLECTION": args.collection,
                "STAC_API": args.stac_url, "YEAR": args.year, "LIKE": info.path,
                "CLASS_VALUES": json.dumps(list(CLASSES)),
                "CLASS_NAMES": json.dumps([name for name, _ in CLASSES.values()]),
                "LICENSE": "CC-BY-4.0, (c) ESA WorldCover project / contains modified Copernicus Sentinel data"}
        return sr.write_raster(args.output, [band], grid, dtype="uint8", nodata=NODATA, tags=tags,
                               resampling="nearest", colormap=colormap(), category_names=category_names(),
                               predictor=1)
    finally:
        sr.close_all([band])


if __name__ == "__main__":
    sr.run(build, parser())
