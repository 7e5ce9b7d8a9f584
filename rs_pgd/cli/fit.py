"""``rs-pgd fit``: train a model with Patch Gradient Descent."""

import click

from rs_pgd import defaults
from rs_pgd.cli import options
from rs_pgd.cli.config_file import config_options


@click.command(short_help="Train a segmentation model on a scene and its labels (PGD).")
@config_options
@click.argument("scene", type=options.existing_file)
@click.argument("labels", type=options.existing_file)
@click.option("-o", "--output", default="model.safetensors", show_default=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write (best model); resume state and curve go next to it.")
@click.option("--add", "extra", nargs=2, multiple=True, metavar="SCENE LABELS",
              help="Another scene and its labels to train on (repeatable).")
@options.class_column_opt
@options.layer_opt
@options.mapping_opt
@click.option("--background", default=None, metavar="CLASS",
              help="Burn this class wherever no label polygon lies (default: such pixels are ignored).")
@click.option("--all-touched", is_flag=True, help="Rasterise every pixel a label geometry touches.")
@options.bands_opt
@options.preset_opt
@options.nodata_opt
@options.area_options("Train on", "Validation blocks are held out inside it too.")
@click.option("--arch", default=defaults.ARCH, show_default=True, help="Any SMP architecture (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, ...).")
@click.option("--encoder", default=defaults.ENCODER, show_default=True, help="Any SMP encoder (resnet18, resnet34, efficientnet-b0, ...).")
@click.option("--encoder-weights", default=None, type=click.Path(dir_okay=False), metavar="PATH",
              help="Local encoder weights file (.pth/.safetensors). Nothing is ever downloaded.")
@click.option("--tile", type=int, default=defaults.TILE, show_default=True, help="Centre tile size in pixels (multiple of 32).")
@click.option("--margin", type=int, default=defaults.MARGIN, show_default=True, help="Context margin around each tile (multiple of 32).")
@options.stride_opt
@click.option("--batch-size", type=int, default=defaults.BATCH_SIZE, show_default=True, help="Windows per forward/backward pass.")
@click.option("--epochs", type=int, default=defaults.EPOCHS, show_default=True,
              help="Passes over the scene(s), at most (see --patience).")
@click.option("--max-steps", type=int, default=None,
              help="Stop after this many optimizer steps (the schedule still follows --epochs: --resume goes on exactly).")
@click.option("--max-minutes", type=float, default=defaults.MAX_MINUTES, metavar="MINUTES",
              help="Stop after this many minutes of training; the schedule is fitted to it after the first epoch.")
@click.option("--patience", type=int, default=defaults.PATIENCE, show_default=True,
              help="Stop after this many epochs without a better validation mIoU (0: never stop early).")
@click.option("--lr", type=float, default=defaults.LR, show_default=True,
              help="Peak learning rate (linear warm-up, then cosine to 0).")
@click.option("--warmup", type=float, default=defaults.WARMUP, show_default=True, metavar="FRACTION",
              help="Share of the planned steps over which the learning rate rises to --lr.")
@click.option("--optimizer", type=click.Choice(defaults.OPTIMIZERS), default=defaults.OPTIMIZER, show_default=True,
              help="AdamW, or SGD with momentum 0.9.")
@click.option("--step-every", default=defaults.STEP_EVERY, show_default=True, metavar="auto|scene|N",
              help="Windows per optimizer step (PGD group): N, the whole scene, or auto (the largest groups that "
                   f"give at least {defaults.AUTO_MIN_STEPS} steps in --epochs).")
@click.option("--class-weights", default=defaults.CLASS_WEIGHTS, show_default=True, metavar="auto|none|FILE.json",
              help="Per-class loss weights: auto (from the training pixels of each class), none, or a JSON file "
                   "of class name: weight.")
@click.option("--weighting", type=click.Choice(defaults.WEIGHTINGS), default=defaults.WEIGHTING, show_default=True,
              help="How windows and overlapping centres are weighted in the aggregated gradient.")
@click.option("--hard-mining", type=float, default=None, metavar="FRACTION",
              help="Train each step on this fraction of windows, sampled by recent loss (importance-weighted).")
@click.option("--norm", type=click.Choice(defaults.NORMS), default=defaults.NORM, show_default=True,
              help="BatchNorm policy: batch statistics, frozen (eval statistics: exact PGD), or GroupNorm.")
@click.option("--precision", type=click.Choice(defaults.PRECISIONS), default=defaults.PRECISION, show_default=True,
              help="Numeric precision (auto: bf16 where the CPU/GPU runs it natively, else float32 or fp16).")
@click.option("--grad-checkpointing", is_flag=True, help="Recompute activations in backward to save memory.")
@click.option("--no-augment", is_flag=True, help="Turn off the random flips/rotations (D4).")
@options.workers_opt
@options.threads_opt
@click.option("--seed", type=int, default=defaults.SEED, show_default=True, help="Random seed (runs are reproducible on CPU).")
@options.device_opt
@click.option("--val-fraction", type=float, default=defaults.VAL_FRACTION, show_default=True,
              help="Share of labelled pixels held out as spatial blocks for validation (0 to turn off).")
@click.option("--val", "val_pair", nargs=2, default=None, metavar="SCENE LABELS",
              help="Validate on this separate scene and its labels instead of held-out blocks.")
@click.option("--log-json", type=click.Path(dir_okay=False), default=None, help="Append one JSON line per optimizer step to this file.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last resume state.")
@click.option("--resume-every-minutes", type=float, default=defaults.RESUME_EVERY_MINUTES, show_default=True,
              metavar="MINUTES", help="Write the resume state at most this often (and at the end; 0: every step).")
@click.option("--quiet", is_flag=True, help="No progress bar or epoch lines (as the global -q).")
def fit(scene, labels, output, extra, class_column, layer, mapping, background, all_touched, bands, preset, nodata,
        bbox, bbox_crs, aoi, arch, encoder, encoder_weights, tile, margin, stride, batch_size, epochs, max_steps,
        max_minutes, patience, lr, warmup, optimizer, step_every, class_weights, weighting, hard_mining, norm, precision,
        grad_checkpointing, no_augment, workers, threads, seed, device, val_fraction, val_pair, log_json, resume,
        resume_every_minutes, quiet):
    """Train a segmentation model on SCENE with LABELS (vector file or label raster) and write a checkpoint.

    With --bbox or --aoi only the part of SCENE (and of each --add scene) that covers the area is trained on and
    validated; windows at its edges still see the scene's pixels around it.
    """
    import rs_pgd

    if quiet:
        from rs_pgd.cli.errors import configure_logging

        configure_logging(quiet=True)
    scenes = [scene, *(pair[0] for pair in extra)]
    label_files = [labels, *(pair[1] for pair in extra)]
    settings = dict(
        class_column=class_column, layer=layer, mapping=mapping, background=background, all_touched=all_touched,
        bands=bands, preset=preset, nodata=nodata, bbox=list(bbox) if bbox else None, bbox_crs=bbox_crs, aoi=aoi,
        arch=arch, encoder=encoder, encoder_weights=encoder_weights, tile=tile,
        margin=margin, stride=stride, batch_size=batch_size, epochs=epochs, max_steps=max_steps, max_minutes=max_minutes,
        patience=patience, lr=lr, warmup=warmup, optimizer=optimizer, step_every=step_every,
        class_weights=class_weights, resume_every_minutes=resume_every_minutes, weighting=weighting,
        hard_mining=hard_mining, norm=norm, precision=precision,
        grad_checkpointing=grad_checkpointing, augment=not no_augment, workers=workers, threads=threads, seed=seed,
        device=device,
        val_fraction=val_fraction, val_scene=val_pair[0] if val_pair else None,
        val_labels=val_pair[1] if val_pair else None, log_json=log_json, progress=not quiet,
    )
    result = rs_pgd.fit(scenes, label_files, output, resume=resume, **settings)
    best = result.best or {}
    summary = f"wrote {result.checkpoint} after {result.steps} step{'s' if result.steps != 1 else ''}"
    if best.get("val_miou") is not None:
        summary += f" (best val mIoU {best['val_miou']:.4f} at epoch {best['epoch']})"
    click.echo(summary)
