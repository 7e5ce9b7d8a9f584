"""``rs-pgd info``: what rs-pgd sees in a scene and its labels."""

import click

from rs_pgd.cli import options


@click.command(short_help="Describe a scene (and labels): size, bands, CRS, nodata, classes, suggested tiles.")
@click.argument("scene", type=options.existing_file)
@click.argument("labels", required=False, type=options.existing_file)
@options.class_column_opt
@options.layer_opt
@options.bands_opt
@options.preset_opt
@options.nodata_opt
@click.option("--model", type=options.existing_file, default=None, metavar="CHECKPOINT",
              help="Also say whether predict would accept SCENE for this model (bands, data type, CRS, pixel size).")
@options.json_opt
def info(scene, labels, class_column, layer, bands, preset, nodata, model, as_json):
    """Describe SCENE and, optionally, the LABELS that would train on it."""
    import json

    from rs_pgd.info import describe, format_report

    report = describe(scene, labels, class_column=class_column, layer=layer, bands=bands, preset=preset,
                      nodata=nodata, model=model)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
