"""Click options shared by several commands (rasterio's ``rio/options.py`` habit)."""

import click

from rs_pgd import defaults


def _parse_bands(ctx, param, value):
    if value is None:
        return None
    from rs_pgd.presets import parse_bands

    try:
        return parse_bands(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _read_mapping(ctx, param, value):
    if value is None:
        return None
    from rs_pgd.classes import read_mapping
    from rs_pgd.errors import LabelError

    try:
        return read_mapping(value)
    except LabelError as exc:
        raise click.BadParameter(str(exc)) from None


existing_file = click.Path(exists=False, dir_okay=False)

bands_opt = click.option(
    "--bands", callback=_parse_bands, default=None, metavar="LIST",
    help="Bands to use, 1-based as in rasterio (e.g. 4,3,2) or preset band names. Default: all (or the preset's).",
)
preset_opt = click.option(
    "--preset", default=None, metavar="NAME",
    help="Sensor preset with band names and scale/offset (generic, landsat-c2-l2, sentinel2-l2a, ...; from-scene: "
         "each band's own scale/offset). Default: generic, or from-scene for a STAC item with raster:bands.",
)
class_column_opt = click.option(
    "--class-column", default=None, metavar="NAME", help="Attribute that holds the class (auto-detected if omitted)."
)
layer_opt = click.option("--layer", default=None, metavar="NAME", help="Layer of a multi-layer vector file (GPKG).")
tile_opt = click.option("--tile", type=int, default=None, help="Centre tile size in pixels (multiple of 32).")
margin_opt = click.option("--margin", type=int, default=None, help="Context margin around each tile, pixels (multiple of 32).")
stride_opt = click.option("--stride", type=int, default=None, help="Distance between tiles, pixels (<= tile; default = tile).")
device_opt = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where the model runs.",
)
json_opt = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
threads_opt = click.option(
    "--threads", default=defaults.THREADS, show_default=True, metavar="N|auto",
    help="CPU threads for the model. auto: OMP_NUM_THREADS if set, else the physical cores available, fewer when "
         "other processes keep cores busy (idle threads sleep instead of spinning).",
)
workers_opt = click.option("--workers", type=int, default=None, help="Data-loading worker processes (default: auto).")
output_opt = click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output file.")
mapping_opt = click.option(
    "--mapping", callback=_read_mapping, default=None, metavar="JSON",
    help="JSON file mapping source class values/names to classes (merge or rename classes; null drops one).",
)
nodata_opt = click.option(
    "--nodata", type=float, default=None, metavar="VALUE",
    help="Stored value that means no data although the file does not say so (fill pixels, e.g. 0); nan allowed.",
)


def area_options(what: str, outcome: str = ""):
    """``--bbox W S E N``, ``--bbox-crs`` and ``--aoi VECTOR``: the area a command works on (``what`` says what it
    does there, e.g. "Predict" or "Train on"; ``outcome`` is a sentence added to --bbox's help). The library snaps
    the area outward to the scene's pixels."""
    bbox = click.option(
        "--bbox", nargs=4, type=float, default=None, metavar="W S E N",
        help=f"{what} only the windows that cover this box (in --bbox-crs), snapped outward to the scene's pixels."
             + (f" {outcome}" if outcome else ""),
    )
    bbox_crs = click.option("--bbox-crs", default=defaults.BBOX_CRS, show_default=True, metavar="CRS",
                            help="CRS of --bbox (EPSG code, WKT or PROJ string).")
    aoi = click.option("--aoi", type=click.Path(dir_okay=False), default=None, metavar="VECTOR",
                       help=f"{what} only the bounding box of this vector file's features (GPKG, GeoJSON, ...).")

    def decorate(command):
        return bbox(bbox_crs(aoi(command)))

    return decorate
