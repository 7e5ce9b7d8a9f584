"""Training options and the checks that need no torch (so the CLI can refuse bad input in a fraction of a second).

``preflight_fit`` runs every check that reads no pixels and imports no torch: option values and window geometry,
the output path, the scenes (readable, north-up), the training area (``--bbox``/``--aoi`` on every training
scene) and the label files' existence. ``rs_pgd.fit`` (the API, which
the CLI calls) runs it once, before importing torch; the training code does not repeat it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rs_pgd import defaults
from rs_pgd.defaults import NORMS, OPTIMIZERS, PRECISIONS, WEIGHTINGS
from rs_pgd.errors import DeviceError, GridError, LabelError, SceneError, TrainingError
from rs_pgd.grid import validate_geometry

STEP_EVERY_SCENE = defaults.STEP_EVERY


@dataclass
class FitConfig:
    """Every option of :func:`fit`, with its default. Stored, resolved, in the checkpoint."""

    class_column: str | None = None
    layer: str | None = None
    mapping: dict | None = None
    background: str | int | None = None
    all_touched: bool = False
    bands: list | None = None
    preset: str | None = None
    nodata: float | None = None
    arch: str = defaults.ARCH
    encoder: str = defaults.ENCODER
    encoder_weights: str | None = None
    tile: int = defaults.TILE
    margin: int = defaults.MARGIN
    stride: int | None = None
    batch_size: int = defaults.BATCH_SIZE
    epochs: int = defaults.EPOCHS
    max_steps: int | None = None
    lr: float = defaults.LR
    weight_decay: float = defaults.WEIGHT_DECAY
    optimizer: str = defaults.OPTIMIZER
    momentum: float = defaults.MOMENTUM
    step_every: str | int = STEP_EVERY_SCENE
    weighting: str = defaults.WEIGHTING
    hard_mining: float | None = None
    hard_mining_unbiased: bool = True
    norm: str = defaults.NORM
    precision: str = defaults.PRECISION
    grad_checkpointing: bool = False
    channels_last: bool = True
    augment: bool = True
    workers: int | None = None
    seed: int = defaults.SEED
    device: str = defaults.DEVICE
    val_fraction: float = defaults.VAL_FRACTION
    val_scene: str | None = None
    val_labels: str | None = None
    stats_windows: int = defaults.STATS_WINDOWS
    bbox: list | None = None
    bbox_crs: str = defaults.BBOX_CRS
    aoi: str | None = None
    log_json: str | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)


def make_config(options: dict) -> FitConfig:
    """A validated :class:`FitConfig` from keyword options; unknown names are a TypeError."""
    known = {f for f in FitConfig.__dataclass_fields__}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"fit() got unknown options {unknown}; valid: {sorted(known)}")
    config = FitConfig(**{k: v for k, v in options.items() if v is not None or k in ("stride", "max_steps")})
    _validate_config(config)
    return config


def _validate_config(c: FitConfig) -> None:
    if c.weighting not in WEIGHTINGS:
        raise GridError(f"unknown weighting {c.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if c.precision not in PRECISIONS:
        raise TrainingError(f"unknown precision {c.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if c.optimizer not in OPTIMIZERS:
        raise TrainingError(f"unknown optimizer {c.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if c.norm not in NORMS:
        raise TrainingError(f"unknown norm {c.norm!r}; choose one of {', '.join(NORMS)}")
    if c.step_every != STEP_EVERY_SCENE:
        try:
            c.step_every = int(c.step_every)
        except (TypeError, ValueError):
            raise TrainingError(f"--step-every {c.step_every!r} must be 'scene' or a number of windows") from None
        if c.step_every < 1:
            raise TrainingError("--step-every must be 'scene' or a positive number of windows")
    if c.hard_mining is not None and not 0 < c.hard_mining <= 1:
        raise TrainingError(f"--hard-mining {c.hard_mining} must be a fraction in (0, 1]")
    if not 0 <= c.val_fraction < 1:
        raise TrainingError(f"--val-fraction {c.val_fraction} must be in [0, 1)")
    for name in ("batch_size", "epochs"):
        if getattr(c, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be at least 1")
    if c.workers is not None and c.workers < 0:
        raise TrainingError(f"--workers {c.workers} must be 0 (read in the main process) or a positive number")
    if c.max_steps is not None and c.max_steps < 1:
        raise TrainingError("--max-steps must be at least 1")
    if c.lr <= 0:
        raise TrainingError("--lr must be positive")
    validate_geometry(c.tile, c.margin, c.stride)
    if c.bbox is not None:
        c.bbox = _check_bbox(c.bbox)
        if c.aoi is not None:
            raise SceneError("give --bbox or --aoi, not both")
    if c.aoi is not None:
        c.aoi = os.fspath(c.aoi)


def _check_bbox(bbox) -> list[float]:
    """``[W, S, E, N]`` as floats, or a one-line SceneError."""
    import math

    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise SceneError(f"--bbox {bbox!r} is not four numbers W S E N") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise SceneError(f"--bbox {bbox!r} is not four numbers W S E N")
    w, s, e, n = values
    if not (w < e and s < n):
        raise SceneError(f"--bbox {w:g} {s:g} {e:g} {n:g} needs W < E and S < N")
    return values


def sibling(output: Path, suffix: str) -> Path:
    """``model.safetensors`` -> ``model<suffix>`` (e.g. ``.resume.pt``)."""
    name = output.name
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else output.stem
    return output.with_name(stem + suffix)


def preflight_fit(scenes, labels, output, options: dict) -> FitConfig:
    """Check a fit's options, output path and inputs before any heavy import; return the config.

    Raises the same :class:`~rs_pgd.errors.RsPgdError` subclasses as :func:`rs_pgd.fit` would, sooner.
    """
    from rs_pgd.output import check_output_path
    from rs_pgd.raster import area_of_interest, require_north_up, scene_info, window_for_bbox

    config = make_config(options)
    n_train = len(scenes)
    if len(scenes) != len(labels):
        raise LabelError(f"{len(scenes)} scenes but {len(labels)} label files; give one label file per scene")
    if (config.val_scene is None) != (config.val_labels is None):
        raise LabelError("give both a validation scene and its labels (--val SCENE LABELS), or neither")
    if config.val_scene is not None:
        scenes, labels = [*scenes, config.val_scene], [*labels, config.val_labels]
    check_output_path(output, inputs=[*scenes, *labels])
    if config.device == "cuda" and not cuda_visible():
        raise DeviceError("--device cuda was asked for but CUDA is not available here; use --device cpu or auto")
    area = area_of_interest(config.bbox, config.bbox_crs, config.aoi)
    for index, (scene, label) in enumerate(zip(scenes, labels)):
        info = scene_info(scene)
        require_north_up(info, vector_labels=not _is_raster_path(label))
        if area is not None and index < n_train:  # the area is on the training scenes; --val is whole
            window_for_bbox(info, *area)
        if not Path(label).exists():
            raise LabelError(f"label file {str(label)!r} not found; check the path")
    if config.encoder_weights is not None and not Path(config.encoder_weights).is_file():
        from rs_pgd.errors import ModelError

        raise ModelError(f"encoder weights file {config.encoder_weights!r} not found; give a local .pth or .safetensors file")
    return config


def _is_raster_path(path) -> bool:
    from rs_pgd.labels import _looks_like_raster

    return _looks_like_raster(Path(path))


def cuda_visible() -> bool:
    """Whether a CUDA device could exist, without importing torch (NVIDIA driver present and not hidden)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def read_checkpoint_header(path) -> dict:
    """The JSON metadata of an rs-pgd checkpoint, read from the safetensors header alone (no torch, no pickle).

    Raises :class:`~rs_pgd.errors.CheckpointError` for a missing file, a file that is not safetensors, or one
    without rs-pgd metadata.
    """
    import json
    import struct

    from rs_pgd.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found; check the path")
    foreign = CheckpointError(f"not an rs-pgd checkpoint: {str(path)!r} is not a safetensors file written by rs-pgd; "
                              "give a checkpoint written by rs-pgd fit")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise foreign
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= min(size - 8, 100_000_000):
            raise foreign
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise foreign from None
    if not isinstance(header, dict):
        raise foreign
    unlabelled = CheckpointError(f"not an rs-pgd checkpoint: {str(path)!r} has no rs-pgd metadata; "
                                 "give a checkpoint written by rs-pgd fit")
    try:
        meta = json.loads((header.get("__metadata__") or {})["rs_pgd"])
    except (ValueError, KeyError, TypeError):
        raise unlabelled from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise unlabelled
    return meta


def preflight_predict(model, scene, output, probabilities=None, blend="none", tile=None, margin=None, stride=None,
                      *, bbox=None, bbox_crs=defaults.BBOX_CRS, aoi=None):
    """Check a prediction's inputs and outputs before any heavy import: checkpoint header, scene, paths, geometry,
    the area (``bbox``/``aoi``) and, for a model trained with the ``from-scene`` preset, the scene's scaling."""
    from rs_pgd.output import check_output_path
    from rs_pgd.raster import area_of_interest, require_north_up, scene_info, window_for_bbox
    from rs_pgd.stitch import weight_kind

    weight_kind(blend)
    meta = read_checkpoint_header(model)
    geometry = meta.get("geometry", {})
    validate_geometry(*inference_geometry(geometry, tile, margin, stride), int(geometry.get("align", 32)))
    check_output_path(output, inputs=[model, scene])
    if probabilities is not None:
        check_output_path(probabilities, inputs=[model, scene, output])
        if Path(probabilities).resolve() == Path(output).resolve():
            from rs_pgd.errors import OutputError

            raise OutputError("--probabilities must differ from the output path; give another file name")
    info = scene_info(scene)
    require_north_up(info)
    check_scene_bands(meta, info.count, model, scene)
    area = area_of_interest(_check_bbox(bbox) if bbox is not None else None, bbox_crs, aoi)
    if area is not None:
        window_for_bbox(info, *area)
    check_scene_scaling(meta, scene, model)
    return meta


def check_scene_scaling(meta: dict, scene, model) -> None:
    """Refuse a scene without band scale/offset for a model trained on values scaled by the training scene's own
    (the ``from-scene`` preset: a STAC item's ``raster:bands``): its stored numbers would be taken as physical."""
    import numpy as np

    from rs_pgd.errors import CheckpointError
    from rs_pgd.presets import FROM_SCENE
    from rs_pgd.raster import SceneReader

    if meta.get("preset") != FROM_SCENE:
        return
    scale = np.asarray(meta.get("scale", 1.0), dtype=float)
    offset = np.asarray(meta.get("offset", 0.0), dtype=float)
    if np.all(scale == 1.0) and np.all(offset == 0.0):
        return
    with SceneReader(scene, bands=meta.get("bands") or None, preset=FROM_SCENE) as reader:
        if reader.preset.is_identity:
            raise CheckpointError(
                f"the model {Path(model).name} was trained on values scaled by the scene's own scale/offset "
                f"(scale {meta.get('scale')}, offset {meta.get('offset')}), but {Path(scene).name} has none: give "
                "a scene with them (a STAC item with raster:bands, or a GeoTIFF with band scales and offsets)"
            )


def check_scene_bands(meta: dict, count: int, model, scene) -> None:
    """Raise :class:`~rs_pgd.errors.CheckpointError` when a scene of ``count`` bands lacks the training bands."""
    from rs_pgd.errors import CheckpointError

    bands = meta.get("bands") or []
    if bands and max(bands) > count:
        raise CheckpointError(
            f"the model {Path(model).name} was trained on bands {bands} but {Path(scene).name} has {count} "
            f"band(s); give a scene with the training bands ({', '.join(meta.get('band_names', []))})"
        )


INFERENCE_MIN_MARGIN = 128
"""Smallest default margin for prediction. A ResNet-34 U-Net's receptive field is ~500 px, so a margin is a trade:
on the demo scene 64 px (the training default) gave 99.81 % argmax agreement with a whole-image prediction and
128 px gave 99.97 % (docs/benchmarks.md). With the default tile grown to 4 x the margin, a window's centre
fraction, and so the compute per pixel, stays that of a 256 + 2 x 64 window."""


def inference_geometry(trained: dict, tile=None, margin=None, stride=None) -> tuple[int, int, int | None]:
    """Prediction tile, margin and stride: what the user gave, else the training geometry grown to a margin of at
    least :data:`INFERENCE_MIN_MARGIN` and a tile of at least 4 x the margin."""
    trained_tile = int(trained.get("tile", 256))
    trained_margin = int(trained.get("margin", 64))
    if margin is None:
        margin = max(trained_margin, INFERENCE_MIN_MARGIN)
    if tile is None:
        tile = max(trained_tile, 4 * margin)
        if stride is None and tile == trained_tile:
            stride = trained.get("stride")
    return int(tile), int(margin), stride
