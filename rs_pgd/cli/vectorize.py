"""``rs-pgd vectorize``: class map to polygons."""

import click

from rs_pgd.cli import options


@click.command(short_help="Turn a class map into polygons with class id and name (GPKG, GeoJSON, FlatGeobuf, SHP).")
@click.argument("prediction", metavar="PRED", type=options.existing_file)
@options.output_opt
@click.option("--min-area", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Drop polygons smaller than this, in map units squared (e.g. m²).")
@click.option("--simplify", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Simplification tolerance in map units (0: keep pixel edges).")
@click.option("--tile", type=int, default=2048, show_default=True,
              help="Window side in pixels (memory bound only; the polygons do not depend on it).")
@click.option("--layer", default=None, metavar="NAME", help="Layer name in the output GeoPackage (default: file name).")
@options.json_opt
def vectorize(prediction, output, min_area, simplify, tile, layer, as_json):
    """Write the polygons of the class map PRED to OUTPUT; the format follows the extension.

    Polygons are in PRED's CRS, except GeoJSON (.geojson, .json), which is written in WGS84 as RFC 7946 asks.
    """
    import json

    from rs_pgd.vectorization import format_summary
    from rs_pgd.vectorization import vectorize as run_vectorize

    summary = run_vectorize(prediction, output, min_area=min_area, simplify=simplify, tile=tile, layer=layer)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
