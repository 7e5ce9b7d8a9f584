"""``rs-pgd suggest``: the regions of a scene where labels would help the model most."""

import click

from rs_pgd import defaults
from rs_pgd.cli import options

TOP, SIZE = defaults.SUGGEST_TOP, defaults.SUGGEST_SIZE
LABELLED_WEIGHT, MIN_VALID = defaults.SUGGEST_LABELLED_WEIGHT, defaults.SUGGEST_MIN_VALID


@click.command(short_help="Suggest where to label next: the most uncertain regions of a scene, as polygons.")
@click.argument("model", type=options.existing_file)
@click.argument("scene", type=options.existing_file)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Regions to write: .gpkg (the scene's CRS) or .geojson (WGS84).")
@click.option("--top", type=int, default=TOP, show_default=True, help="Number of regions.")
@click.option("--size", type=int, default=SIZE, show_default=True,
              help="Region side in pixels, even (regions lie on a lattice of size / 2).")
@click.option("--labels", type=click.Path(dir_okay=False), default=None, metavar="LABELS",
              help="Labels the model already has (vector or raster): their share of each region is reported and "
                   "lowers its score (see --labelled-weight).")
@options.class_column_opt
@options.layer_opt
@options.mapping_opt
@click.option("--labelled-weight", type=float, default=LABELLED_WEIGHT, show_default=True,
              help="score = mean uncertainty x (1 - weight x labelled share); 0 ignores the labels' extent.")
@click.option("--min-valid", type=float, default=MIN_VALID, show_default=True,
              help="Smallest share of a region's pixels with data for it to be suggested.")
@click.option("--uncertainty", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Keep the per-pixel uncertainty raster (COG) here.")
@click.option("--uncertainty-kind", type=click.Choice(defaults.UNCERTAINTY_KINDS), default=defaults.UNCERTAINTY_KIND,
              show_default=True, help="1 - max probability, 1 - (p1 - p2), or the entropy divided by log K.")
@click.option("--tta", is_flag=True, help="Predict with test-time augmentation (8 flips and rotations).")
@click.option("--batch-size", type=int, default=None, help="Windows per forward pass (default: 1 on CPU, 8 on CUDA).")
@click.option("--precision", type=click.Choice(defaults.PRECISIONS), default=defaults.PRECISION, show_default=True)
@options.nodata_opt
@click.option("--bands", callback=options._parse_bands, default=None, metavar="LIST",
              help="The scene's bands to feed the model, when its band count differs from the training scenes'.")
@options.workers_opt
@options.device_opt
@options.json_opt
@click.option("--quiet", is_flag=True, help="No progress bar or log lines (as the global -q).")
def suggest(model, scene, output, top, size, labels, class_column, layer, mapping, labelled_weight, min_valid,
            uncertainty, uncertainty_kind, tta, batch_size, precision, nodata, bands, workers, device, as_json, quiet):
    """Predict SCENE with MODEL and write the TOP regions where labels would help most to OUTPUT.

    Each region is a square polygon with its rank, score, mean uncertainty, predicted class shares and (with
    --labels) the share already labelled; open it in QGIS, label the first regions, and fit again.
    """
    import json

    import rs_pgd
    from rs_pgd.suggestion import format_regions

    if quiet:
        from rs_pgd.cli.errors import configure_logging

        configure_logging(quiet=True)
    result = rs_pgd.suggest(
        model, scene, output, top=top, size=size, labels=labels, class_column=class_column, layer=layer,
        mapping=mapping, labelled_weight=labelled_weight, min_valid=min_valid, uncertainty=uncertainty,
        uncertainty_kind=uncertainty_kind, tta=tta, batch_size=batch_size, device=device, precision=precision,
        workers=workers, bands=bands, nodata=nodata, progress=not quiet,
    )
    if as_json:
        click.echo(json.dumps({"output": str(result.output), "candidates": result.candidates, "size": result.size,
                               "uncertainty_kind": result.uncertainty_kind, "regions": result.regions}, indent=2))
    else:
        click.echo(format_regions(result))
