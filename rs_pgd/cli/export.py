"""``rs-pgd export``: a checkpoint to ONNX, for onnxruntime and QGIS's Deepness plugin."""

import click

from rs_pgd.cli import options


@click.command(short_help="Export a checkpoint to ONNX (onnxruntime, QGIS Deepness).")
@click.argument("model", type=options.existing_file)
@options.output_opt
@click.option("--tile", type=int, default=None,
              help="Centre tile of the exported window, pixels (multiple of 32); default: predict's.")
@click.option("--margin", type=int, default=None,
              help="Context margin of the exported window, pixels (multiple of 32); default: predict's.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (at most 17, for Deepness).")
def export(model, output, tile, margin, opset):
    """Export the checkpoint MODEL to the ONNX file OUTPUT.

    The file takes float32 windows of (tile + 2 x margin) px, any batch size, and returns per-class softmax
    probabilities. Its metadata configures QGIS's Deepness plugin ("Load default parameters") and lets
    `rs-pgd predict OUTPUT scene.tif` run it with onnxruntime, without torch. Needs `pip install rs-pgd[onnx]`.
    """
    import rs_pgd

    result = rs_pgd.export(model, output, tile=tile, margin=margin, opset=opset)
    click.echo(f"wrote {result.output} ({result.window} px windows = tile {result.tile} + 2 x margin "
               f"{result.margin}, {result.classes} classes, opset {result.opset}; onnxruntime matches torch to "
               f"{result.max_abs_diff:.1g})")
