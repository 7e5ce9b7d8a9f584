"""``rs-pgd demo``: fit and predict on the embedded Landsat 7 scene, end to end."""

import click


@click.command(short_help="Train and predict on the embedded Landsat 7 land/water scene.")
@click.option("-d", "--directory", default="rs-pgd-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the checkpoint, the prediction and the preview.")
@click.option("--epochs", type=int, default=25, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar or epoch lines.")
def demo(directory, epochs, quiet):
    """Fit a small U-Net on the shipped Landsat 7 scene, then predict it to a COG with a preview PNG."""
    from rs_pgd.demo import run_demo

    result = run_demo(directory, epochs=epochs, progress=not quiet)
    click.echo(f"model: {result['model']}\nprediction: {result['prediction']}\npreview: {result['preview']}")
    if result.get("miou") is not None:
        click.echo(f"prediction vs labels: mIoU {result['miou']:.4f}, accuracy {result['accuracy']:.4f}")
