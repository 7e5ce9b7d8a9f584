"""``rs-pgd evaluate``: score a class map against reference labels."""

import click

from rs_pgd.cli import options


@click.command(short_help="Score a class map against reference labels: mIoU, accuracy, per-class IoU/F1.")
@click.argument("prediction", metavar="PRED", type=options.existing_file)
@click.argument("labels", type=options.existing_file)
@options.class_column_opt
@options.layer_opt
@options.mapping_opt
@click.option("--all-touched", is_flag=True, help="Rasterise every pixel a label geometry touches.")
@click.option("--background", default=None, metavar="CLASS",
              help="Score pixels outside every label polygon as this class (default: they are ignored).")
@options.json_opt
@click.option("--confusion-png", default=None, metavar="PNG", type=click.Path(dir_okay=False),
              help="Also draw the row-normalised confusion matrix into this PNG.")
@click.option("--tile", type=int, default=1024, show_default=True, help="Window side in pixels (memory bound only).")
def evaluate(prediction, labels, class_column, layer, mapping, all_touched, background, as_json, confusion_png, tile):
    """Score the class map PRED (from rs-pgd predict) against LABELS (vector or raster).

    Pixels without a label are ignored; labelled pixels where PRED is nodata are reported as unscored. Named
    classes are matched to PRED's class names (as written by predict), numbered ones by value.
    """
    from rs_pgd.evaluation import confusion_png as draw_confusion
    from rs_pgd.evaluation import evaluate as run_evaluate
    from rs_pgd.evaluation import format_table, to_json

    if confusion_png:  # before the scoring, which may take long: a bad name must not waste it
        from rs_pgd.output import check_format_suffix, check_output_path

        check_format_suffix(confusion_png, (".png",), "a PNG", "--confusion-png")
        check_output_path(confusion_png, inputs=[prediction, labels])
    result = run_evaluate(prediction, labels, class_column=class_column, layer=layer, mapping=mapping,
                          all_touched=all_touched, background=background, tile=tile)
    if confusion_png:
        draw_confusion(result, confusion_png)
    click.echo(to_json(result) if as_json else format_table(result))
