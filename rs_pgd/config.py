"""Training options and the checks that need no torch (so the CLI can refuse bad input in a fraction of a second).

``preflight_fit`` runs every check that reads no pixels and imports no torch: option values and window geometry,
the output path, the scenes (readable, north-up), the training area (``--bbox``/``--aoi`` on every training
scene) and the label files' existence. ``rs_pgd.fit`` (the API, which
the CLI calls) runs it once, before importing torch; the training code does not repeat it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from rs_pgd import defaults
from rs_pgd.defaults import CLASS_WEIGHT_NAMES, NORMS, OPTIMIZERS, PRECISIONS, STEP_EVERY_NAMES, WEIGHTINGS
from rs_pgd.errors import DeviceError, GridError, LabelError, OptionError, SceneError, TrainingError
from rs_pgd.grid import validate_geometry

STEP_EVERY_SCENE = "scene"
STEP_EVERY_AUTO = "auto"


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
    max_minutes: float | None = defaults.MAX_MINUTES
    warmup: float = defaults.WARMUP
    patience: int = defaults.PATIENCE
    resume_every_minutes: float = defaults.RESUME_EVERY_MINUTES
    class_weights: str = defaults.CLASS_WEIGHTS
    lr: float = defaults.LR
    weight_decay: float = defaults.WEIGHT_DECAY
    optimizer: str = defaults.OPTIMIZER
    momentum: float = defaults.MOMENTUM
    step_every: str | int = defaults.STEP_EVERY
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
    threads: int | str = defaults.THREADS
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
    config = FitConfig(**{k: v for k, v in options.items() if v is not None or k in ("stride", "max_steps", "max_minutes")})
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
    if c.step_every not in STEP_EVERY_NAMES:
        try:
            c.step_every = int(c.step_every)
        except (TypeError, ValueError):
            raise TrainingError(f"--step-every {c.step_every!r} must be 'auto', 'scene' or a number of windows") from None
        if c.step_every < 1:
            raise TrainingError("--step-every must be 'auto', 'scene' or a positive number of windows")
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
    from rs_pgd.runtime import parse_threads

    c.threads = parse_threads(c.threads)
    _validate_budget(c)
    if c.class_weights not in CLASS_WEIGHT_NAMES:
        read_class_weights(c.class_weights)
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


def _validate_budget(c: FitConfig) -> None:
    """The training budget's options: time limits, warm-up share, early-stopping patience."""
    if c.max_minutes is not None and not _positive_number(c.max_minutes):
        raise OptionError(f"--max-minutes {c.max_minutes} must be a positive number of minutes")
    if not _positive_number(c.resume_every_minutes, zero=True):
        raise OptionError(f"--resume-every-minutes {c.resume_every_minutes} must be 0 (after every step) or a "
                          "positive number of minutes")
    if not (_positive_number(c.warmup, zero=True) and c.warmup < 1):
        raise OptionError(f"--warmup {c.warmup} must be a share of the planned steps in [0, 1), e.g. 0.05")
    if isinstance(c.patience, bool) or not isinstance(c.patience, int) or c.patience < 0:
        raise OptionError(f"--patience {c.patience} must be 0 (never stop early) or a positive whole number of "
                          "validations without a better validation mIoU")


def _positive_number(value, zero: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value >= 0 if zero else value > 0


CLASS_WEIGHTS_FORM = 'a JSON object of class name: weight, e.g. {"water": 1, "land": 3.5}'


def read_class_weights(path) -> dict[str, float]:
    """The per-class loss weights of a ``--class-weights`` JSON file: ``{class name: weight >= 0}``.

    Raises
    ------
    OptionError
        One line naming the file and what is wrong with it: missing, unreadable, not JSON, not an object of
        names to numbers, a negative, infinite or non-numeric weight, or no positive weight at all.
    """
    import json

    where = f"--class-weights {path}"
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise OptionError(f"{where}: no such file; give auto, none or {CLASS_WEIGHTS_FORM}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"{where} cannot be read ({type(exc).__name__}); give {CLASS_WEIGHTS_FORM}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptionError(f"{where} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); give "
                          f"{CLASS_WEIGHTS_FORM}") from None
    if not isinstance(data, dict) or not data:
        raise OptionError(f"{where} holds {'{}' if data == {} else type(data).__name__}; give {CLASS_WEIGHTS_FORM}")
    weights = {}
    for name, value in data.items():
        if not _positive_number(value, zero=True):
            raise OptionError(f"{where}: the weight of {name!r} is {json.dumps(value)}; give a finite number >= 0")
        weights[str(name)] = float(value)
    if not any(weights.values()):
        raise OptionError(f"{where}: every weight is 0; give at least one class a positive weight")
    return weights


def preflight_fit(scenes, labels, output, options: dict) -> FitConfig:
    """Check a fit's options, output path and inputs before any heavy import; return the config.

    Raises the same :class:`~rs_pgd.errors.RsPgdError` subclasses as :func:`rs_pgd.fit` would, sooner.
    """
    from rs_pgd.checkpoint import resume_path
    from rs_pgd.output import check_outputs, sibling
    from rs_pgd.raster import area_of_interest, require_north_up, scene_info, window_for_bbox

    config = make_config(options)
    n_train = len(scenes)
    if len(scenes) != len(labels):
        raise LabelError(f"{len(scenes)} scenes but {len(labels)} label files; give one label file per scene")
    if (config.val_scene is None) != (config.val_labels is None):
        raise LabelError("give both a validation scene and its labels (--val SCENE LABELS), or neither")
    if config.val_scene is not None:
        scenes, labels = [*scenes, config.val_scene], [*labels, config.val_labels]
    check_outputs({"output": output, "resume state": resume_path(output), "training curve": sibling(output, ".curve.png"),
                   "--log-json": config.log_json},
                  inputs=[*scenes, *labels, config.encoder_weights, _weights_file(config)])
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


def _weights_file(config: FitConfig):
    return None if config.class_weights in CLASS_WEIGHT_NAMES else config.class_weights


def _is_raster_path(path) -> bool:
    from rs_pgd.labels import _looks_like_raster

    return _looks_like_raster(Path(path))


def cuda_visible() -> bool:
    """Whether a CUDA device could exist, without importing torch (NVIDIA driver present and not hidden)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


@dataclass(frozen=True)
class PredictPlan:
    """What :func:`preflight_predict` found: the checkpoint metadata (None for an ONNX model, read with its
    runtime), the scene's bands to feed the model, warnings about how the scene differs from the training
    scenes, the scene's facts and the window of the area to predict (None: the whole scene)."""

    meta: object
    bands: list | None
    warnings: tuple = ()
    info: object = None
    window: object = None


def preflight_predict(model, scene, output, *, probabilities=None, preview=None, blend="none", tile=None,
                      margin=None, stride=None, bands=None, batch_size=None, workers=None, cog=True, bbox=None,
                      bbox_crs=defaults.BBOX_CRS, aoi=None, uncertainty=None,
                      uncertainty_kind=defaults.UNCERTAINTY_KIND) -> PredictPlan:
    """Check a prediction's options, every output path (``-o``, ``--probabilities``, ``--uncertainty``,
    ``--preview``) and its inputs before any heavy import.

    For a checkpoint this reads its header (:func:`rs_pgd.checkpoint.read_header`) and checks that the scene fits
    (:func:`rs_pgd.checkpoint.scene_bands`); an ONNX model's metadata is checked the same way once onnxruntime
    has opened it.
    """
    from rs_pgd.checkpoint import read_header
    from rs_pgd.onnx_backend import is_onnx_path
    from rs_pgd.output import GEOTIFF_SUFFIXES, check_format_suffix, check_outputs
    from rs_pgd.raster import area_of_interest, require_north_up, scene_info, window_for_bbox
    from rs_pgd.runtime import check_loader_options
    from rs_pgd.stitch import weight_kind
    from rs_pgd.uncertainty import check_kind

    weight_kind(blend)
    check_kind(uncertainty_kind)
    check_loader_options(batch_size, workers)  # a DataLoader would fail deep inside, after the model was loaded
    geotiff = "a Cloud Optimized GeoTIFF" if cog else "a GeoTIFF"
    check_format_suffix(output, GEOTIFF_SUFFIXES, geotiff, "-o")
    if probabilities is not None:
        check_format_suffix(probabilities, GEOTIFF_SUFFIXES, geotiff, "--probabilities")
    if uncertainty is not None:
        check_format_suffix(uncertainty, GEOTIFF_SUFFIXES, geotiff, "--uncertainty")
    if preview is not None:
        check_format_suffix(preview, (".png",), "a PNG", "--preview")
    check_outputs({"output": output, "--probabilities": probabilities, "--uncertainty": uncertainty,
                   "--preview": preview}, inputs=[model, scene])
    info = scene_info(scene)
    require_north_up(info)  # a rotated or GCP-only output would be misplaced by most GIS tools
    area = area_of_interest(_check_bbox(bbox) if bbox is not None else None, bbox_crs, aoi)
    window = window_for_bbox(info, *area) if area is not None else None
    if is_onnx_path(model):
        return PredictPlan(None, bands, (), info, window)
    meta = read_header(model)
    validate_geometry(*inference_geometry(meta.geometry, tile, margin, stride), int(meta.geometry.get("align", 32)))
    return plan_scene(meta, info, model, bands, window)


def plan_scene(meta, info, model, bands=None, window=None) -> PredictPlan:
    """The one scene check (:mod:`rs_pgd.checkpoint`) of scene ``info`` against a model's metadata ``meta``:
    which bands to read, the scene's own scaling where the model needs it, and the warnings."""
    from rs_pgd.checkpoint import check_scene_scaling, scene_bands, scene_warnings

    chosen = scene_bands(meta, info, model, bands)
    check_scene_scaling(meta, info.path, model, chosen)
    return PredictPlan(meta, chosen, tuple(scene_warnings(meta, info)), info, window)


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
