"""Checkpoints for fast tests of predict and suggest: a random-weight SMP model, no training."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_SCENE = REPO / "rs_pgd" / "data" / "RGB.byte.tif"
NAMES = ("water", "land", "cloud", "shade")


def random_checkpoint(path, classes: int = 2, encoder: str = "resnet18", tile: int = 64, margin: int = 32,
                      scene=DEMO_SCENE, seed: int = 0) -> Path:  # fmt: skip
    """An untrained Unet checkpoint with ``classes`` classes (values 1..K) for ``scene``'s bands, in the schema
    :func:`rs_pgd.fit` writes; frozen BatchNorm, so its output does not depend on the batch."""
    import torch

    from rs_pgd import __version__, checkpoint
    from rs_pgd.classes import ClassTable
    from rs_pgd.models import ModelSpec
    from rs_pgd.raster import SceneReader, compute_band_stats, scene_info

    reader = SceneReader(scene)
    info = scene_info(scene)
    spec = ModelSpec(arch="Unet", encoder=encoder, in_channels=reader.count, classes=classes, norm="frozen")
    torch.manual_seed(seed)
    model, _ = spec.build()
    table = ClassTable(values=tuple(range(1, classes + 1)), names=NAMES[:classes])
    meta = checkpoint.CheckpointMeta(
        rs_pgd_version=__version__, model=spec.to_dict(), bands=tuple(reader.bands),
        band_names=tuple(f"band {b}" for b in reader.bands), preset=reader.preset.name, scale=reader.preset.scale,
        offset=reader.preset.offset, stats=compute_band_stats(reader, tile=512, max_windows=16).to_dict(),
        classes=table.to_dict(), geometry={"tile": tile, "margin": margin, "stride": tile, "align": 32},
        training_scenes=({"path": str(scene), "crs": info.crs_string, "res": list(info.res), "width": info.width,
                          "height": info.height, "count": info.count, "dtype": info.dtype},),
        precision="32", precision_reason="test checkpoint (random weights)",
    )
    return checkpoint.save(path, model.state_dict(), meta)
