"""Export a checkpoint to ONNX, for onnxruntime and for QGIS's Deepness plugin.

The exported graph takes one input ``input``, float32 NCHW windows of a fixed square size (tile + 2 x margin)
with a dynamic batch axis, and returns one output ``output``, the per-class softmax probabilities
``[batch, K, H, W]``. It is written with torch's TorchScript-based exporter (``dynamo=False``) at opset 17, the
newest that Deepness's onnxruntime (<= 1.17) runs.

The file carries the metadata Deepness reads (``ModelBase`` in PUTvision/qgis-plugin-deepness,
``src/deepness/processing/models/model_base.py``: it ``json.loads`` every value), so that "Load default
parameters" configures it, and a key ``rs_pgd`` with the checkpoint's whole metadata plus the export geometry, so
that ``rs-pgd predict model.onnx`` needs nothing else. See docs/export.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rs_pgd.errors import ModelError, OutputError
from rs_pgd.onnx_backend import INSTALL_HINT, META_KEY, MissingExtraError, is_onnx_path

OPSET = 17
"""Default and highest opset: Deepness pins onnxruntime <= 1.17, which runs opsets up to 20 but IR version 9;
torch's TorchScript exporter writes IR 8 at opset 17."""
INPUT_NAME = "input"
OUTPUT_NAME = "output"
DEGREE_METRES = 111319.49079327358
"""Metres per degree that QGIS uses to convert map units (``QgsUnitTypes::fromUnitToUnitFactor``), so that a
resolution in cm/px for a scene in degrees comes back to the scene's pixel size in Deepness."""


@dataclass
class ExportResult:
    """What :func:`export` returns."""

    output: Path
    window: int
    tile: int
    margin: int
    opset: int
    classes: int
    max_abs_diff: float
    metadata: dict = field(default_factory=dict)


def export(model, output, tile=None, margin=None, *, opset: int = OPSET, check: bool = True) -> ExportResult:
    """Export the checkpoint ``model`` to the ONNX file ``output``.

    Parameters
    ----------
    model : path
        Checkpoint written by :func:`rs_pgd.fit`.
    output : path
        ONNX file to write (``.onnx``); written to a temporary file and renamed into place.
    tile, margin : int, optional
        Centre tile and context margin of the exported window (multiples of 32); the window side is
        ``tile + 2 * margin``. By default those :func:`rs_pgd.predict` uses for the checkpoint
        (:func:`rs_pgd.config.inference_geometry`), so ``rs-pgd predict model.onnx`` matches
        ``rs-pgd predict model.safetensors``.
    opset : int
        ONNX opset, at most 17 (Deepness's onnxruntime).
    check : bool
        Run the exported file with onnxruntime on one window of random input and compare it with torch;
        a difference above 1e-3 is an error (nothing is written).

    Returns
    -------
    ExportResult
        The path, the geometry, the largest |onnxruntime - torch| difference of the check (NaN without check) and
        the metadata written (decoded).
    """
    from rs_pgd.checkpoint import read_header
    from rs_pgd.config import inference_geometry
    from rs_pgd.grid import validate_geometry
    from rs_pgd.output import AtomicOutput, check_output_path

    if not is_onnx_path(output):
        raise OutputError(f"output {output} must end in .onnx (Deepness and rs-pgd predict know the file by it); "
                          f"give e.g. {Path(output).with_suffix('.onnx').name}")
    check_output_path(output, inputs=[model])
    if not 7 <= int(opset) <= OPSET:
        raise ModelError(f"opset {opset} is not supported; give an opset from 7 to {OPSET} (Deepness runs up to 17)")
    meta = read_header(model)
    geometry = meta.geometry
    align = int(geometry.get("align", 32))
    tile, margin, stride = inference_geometry(geometry, tile, margin, None)
    validate_geometry(tile, margin, stride, align)
    onnx, ort = _import_extra()
    window = tile + 2 * margin
    metadata = deepness_metadata(meta, tile, margin, stride)
    proto, wrapped = _trace(model, meta, window, opset, onnx)
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    diff = float("nan")
    with AtomicOutput(output, inputs=[model]) as temp:
        onnx.save_model(proto, str(temp))
        if check:
            diff = _check_against_torch(temp, wrapped, meta.in_channels, window, ort)
    decoded = {key: json.loads(value) for key, value in metadata.items()}
    return ExportResult(Path(output), window, tile, margin, int(opset), len(meta.class_names), diff,
                        decoded)


def _import_extra():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError(
            f"exporting to ONNX needs onnx and onnxruntime ({exc.name} is not installed); {INSTALL_HINT}"
        ) from None
    return onnx, onnxruntime


# -- metadata -------------------------------------------------------------------------------------------------
def deepness_metadata(meta, tile: int, margin: int, stride=None) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: Deepness's keys and ``rs_pgd``, every value JSON-encoded.

    Parameters
    ----------
    meta : dict
        Checkpoint metadata (:func:`rs_pgd.checkpoint.read_header`).
    tile, margin, stride : int
        Exported geometry; the window side is ``tile + 2 * margin``.
    """
    window = tile + 2 * margin
    mean, std = standardization(meta)
    values = {
        "model_type": "Segmentor",
        "class_names": {str(i): str(name) for i, name in enumerate(meta.class_names)},
        "tile_size": window,
        "tiles_size": window,
        "tiles_overlap": overlap_percent(window, margin),
        "seg_thresh": 0,
        "seg_small_segment": 0,
        "standardization_mean": mean,
        "standardization_std": std,
    }
    resolution = resolution_cm(meta)
    if resolution is not None:
        values["resolution"] = resolution
    export_info = {"tile": tile, "margin": margin, "stride": stride, "window": window, "input": INPUT_NAME,
                   "output": OUTPUT_NAME, "probabilities": "softmax"}
    values[META_KEY] = meta.replace(export=export_info).to_dict()
    return {key: json.dumps(value, allow_nan=False) for key, value in values.items()}


def standardization(meta) -> tuple[list[float], list[float]]:
    """Per-band ``(mean, std)`` such that Deepness's ``(raw / 255 - mean) / std`` equals rs-pgd's normalisation.

    rs-pgd computes ``(raw * scale + offset - m) / s`` (preset scale and offset, then the scene statistics m, s);
    solving ``(raw / 255 - mean) / std`` for the same line gives ``std = s / (255 * scale)`` and
    ``mean = (m - offset) / (255 * scale)``.
    """
    scale, offset = _scale_offset(meta)
    stats = meta.stats
    m = np.asarray(stats["mean"], dtype=np.float64)
    s = np.asarray(stats["std"], dtype=np.float64)
    mean = (m - offset) / (255.0 * scale)
    std = s / (255.0 * scale)
    return [float(v) for v in mean], [float(v) for v in std]


def _scale_offset(meta) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's scale and offset as float64 arrays (one value, or one per band for ``from-scene``)."""
    scale, offset = np.asarray(meta.scale, dtype=np.float64), np.asarray(meta.offset, dtype=np.float64)
    if np.any(scale == 0) or not np.all(np.isfinite(scale)) or not np.all(np.isfinite(offset)):
        raise ModelError(f"the checkpoint's preset scale {scale.tolist()} and offset {offset.tolist()} cannot be "
                         "exported; train with a preset whose scale is not zero")
    return scale, offset


def overlap_percent(window: int, margin: int) -> int:
    """The smallest whole percentage of tile overlap for which Deepness keeps at least ``margin`` px of context.

    Deepness (``ProcessingOverlap.get_overlap_px`` and ``TileParams.get_slice_on_full_image_for_copying``) overlaps
    tiles by ``int(window * percent / 100 * 2) // 2`` px and keeps each tile's result minus half the overlap on
    every inner side, so the overlap must be at least ``2 * margin``.
    """
    return int(math.ceil(200.0 * margin / window - 1e-9)) if margin > 0 else 0


def resolution_cm(meta) -> float | None:
    """The training scene's pixel size in cm/px (x size), or None when the checkpoint has no CRS for it."""
    scenes = meta.training_scenes
    if not scenes or not scenes[0].get("res") or not scenes[0].get("crs"):
        return None
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    size = abs(float(scenes[0]["res"][0]))
    try:
        crs = CRS.from_user_input(scenes[0]["crs"])
    except CRSError:
        return None
    if crs.is_geographic:
        metres = size * DEGREE_METRES
    else:
        metres = size * float(crs.linear_units_factor[1])
    return round(metres * 100.0, 6)


# -- tracing and writing -----------------------------------------------------------------------------------------
def _probabilities_module(net):
    import torch

    class Probabilities(torch.nn.Module):
        """The segmentation model followed by a softmax over classes."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return torch.softmax(self.net(x), dim=1)

    return Probabilities(net).eval()


def _trace(model, meta, window: int, opset: int, onnx):
    """Trace the checkpoint's model (with softmax) into an ONNX ModelProto with a dynamic batch axis."""
    import io

    import torch

    from rs_pgd.models import model_from_checkpoint

    net, _ = model_from_checkpoint(model)
    wrapped = _probabilities_module(net)
    channels = meta.in_channels
    example = torch.zeros((1, channels, window, window), dtype=torch.float32)
    buffer = io.BytesIO()
    spec = meta.model
    try:
        with warnings.catch_warnings(), _quiet_stdout():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            torch.onnx.export(wrapped, (example,), buffer, dynamo=False, opset_version=int(opset),
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types for graphs it cannot express
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"the {spec.get('arch')}-{spec.get('encoder')} model cannot be exported to ONNX at a {window} px window "
            f"({first}); try another --tile/--margin or architecture"
        ) from None
    proto = onnx.load_model_from_string(buffer.getvalue())
    _fix_output_shape(proto, int(spec["classes"]), window)
    return proto, wrapped


def _fix_output_shape(proto, classes: int, window: int) -> None:
    """Declare the output ``[batch, K, H, W]`` with K, H, W fixed: the exporter leaves H and W symbolic (and names
    H ``batch``, as if it had to equal the batch size)."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for dim, value in zip(list(dims)[1:], (classes, window, window)):
        dim.Clear()
        dim.dim_value = value


@contextlib.contextmanager
def _quiet_stdout():
    """Send file descriptor 1 to a temporary file: the exporter prints whole graphs there from C++ on failure."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


CHECK_TOLERANCE = 1e-3


def _check_against_torch(path, wrapped, channels: int, window: int, ort) -> float:
    """Largest |onnxruntime - torch| probability difference on two windows of seeded random input."""
    import torch

    x = np.random.default_rng(0).standard_normal((2, channels, window, window)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x})[0]
    with torch.no_grad():
        want = wrapped(torch.from_numpy(x)).numpy()
    diff = float(np.max(np.abs(got - want)))
    if not diff <= CHECK_TOLERANCE:
        raise ModelError(f"the exported model differs from the checkpoint by {diff:.2g} (more than "
                         f"{CHECK_TOLERANCE:g}); nothing was written; report it with the checkpoint's architecture")
    return diff


__all__ = ["export", "ExportResult", "deepness_metadata", "standardization", "overlap_percent", "resolution_cm"]
