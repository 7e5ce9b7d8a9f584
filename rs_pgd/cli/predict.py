"""``rs-pgd predict``: seamless streaming inference into a GeoTIFF/COG."""

import click

from rs_pgd import defaults
from rs_pgd.cli import options
from rs_pgd.cli.config_file import config_options


@click.command(short_help="Predict a class map (COG) for a scene with a trained model.")
@config_options
@click.argument("model", type=options.existing_file)
@click.argument("scene", type=options.existing_file)
@options.output_opt
@options.tile_opt
@options.margin_opt
@options.stride_opt
@click.option("--blend", type=click.Choice(defaults.BLENDS), default=defaults.BLEND, show_default=True,
              help="Keep window centres (none) or blend overlapping windows (with --stride < --tile).")
@click.option("--probabilities", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also write per-class probabilities (one band per class) to this COG.")
@click.option("--probability-dtype", type=click.Choice(defaults.PROBABILITY_DTYPES), default=defaults.PROBABILITY_DTYPE,
              show_default=True)
@click.option("--uncertainty", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also write the per-pixel uncertainty (uint8 COG, 0..254 for 0..1, 255 nodata) to this file.")
@click.option("--uncertainty-kind", type=click.Choice(defaults.UNCERTAINTY_KINDS), default=defaults.UNCERTAINTY_KIND,
              show_default=True, help="1 - max probability, 1 - (p1 - p2), or the entropy divided by log K.")
@click.option("--tta", is_flag=True, help="Test-time augmentation: average each window over its 8 flips and "
              "rotations (8x the compute; still seamless).")
@click.option("--preview", type=click.Path(dir_okay=False), default=None, metavar="PNG",
              help="Write a quick-look PNG (input beside the class map, with a legend).")
@click.option("--batch-size", type=int, default=None, help="Windows per forward pass (default: 1 on CPU, 8 on CUDA).")
@click.option("--precision", type=click.Choice(defaults.PRECISIONS), default=defaults.PRECISION, show_default=True)
@options.nodata_opt
@click.option("--bands", callback=options._parse_bands, default=None, metavar="LIST",
              help="The scene's bands to feed the model (e.g. 4,3,2 or band names), when its band count differs "
                   "from the training scenes'. Default: the training bands.")
@options.area_options("Predict", "The output covers just that area.")
@click.option("--no-cog", is_flag=True, help="Write a plain tiled GeoTIFF instead of a Cloud Optimized GeoTIFF.")
@options.workers_opt
@options.threads_opt
@options.device_opt
@click.option("--quiet", is_flag=True, help="No progress bar or log lines (as the global -q).")
def predict(model, scene, output, tile, margin, stride, blend, probabilities, probability_dtype, uncertainty,
            uncertainty_kind, tta, preview, batch_size, precision, nodata, bands, bbox, bbox_crs, aoi, no_cog, workers,
            threads, device, quiet):
    """Predict classes for SCENE with the checkpoint MODEL and write them to OUTPUT.

    MODEL may also be an .onnx file written by `rs-pgd export`: it runs with onnxruntime, without torch.
    """
    import rs_pgd

    if quiet:
        from rs_pgd.cli.errors import configure_logging

        configure_logging(quiet=True)
    result = rs_pgd.predict(
        model, scene, output, tile=tile, margin=margin, stride=stride, blend=blend, probabilities=probabilities,
        probability_dtype=probability_dtype, preview=preview, batch_size=batch_size, device=device,
        precision=precision, workers=workers, threads=threads, cog=not no_cog, progress=not quiet, nodata=nodata,
        bbox=bbox, bbox_crs=bbox_crs, aoi=aoi, bands=bands, uncertainty=uncertainty,
        uncertainty_kind=uncertainty_kind, tta=tta,
    )
    if result.written:  # under torchrun only rank 0 writes
        click.echo(f"wrote {result.output} ({result.windows} windows, {result.seconds:.1f} s)")
