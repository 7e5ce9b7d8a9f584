"""Run an ONNX file written by :func:`rs_pgd.export` through onnxruntime: the torch-free backend of ``predict``.

No torch here, and onnxruntime is imported only when a model is loaded. :func:`onnx_backend` gives
:func:`rs_pgd.infer.predict` the checkpoint metadata stored in the file (key ``rs_pgd``), a ``forward`` that runs
the onnxruntime session, and the window batches, read with :class:`rs_pgd.raster.SceneReader` and normalised with
:func:`rs_pgd.raster.normalise` exactly as the torch path's dataset does. The window size is the one fixed at
export; the grid, stitching and outputs are those of the torch path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rs_pgd.errors import CheckpointError, DeviceError, ModelError, RsPgdError

ONNX_SUFFIX = ".onnx"
META_KEY = "rs_pgd"
"""Metadata key holding the checkpoint's full metadata plus an ``export`` entry (tile, margin, stride, window)."""
INSTALL_HINT = "pip install rs-pgd[onnx]"


class MissingExtraError(RsPgdError, ImportError):
    """onnx or onnxruntime is not installed."""


def is_onnx_path(path) -> bool:
    """Whether ``path`` names an ONNX model (by its ``.onnx`` suffix, any case)."""
    return str(path).lower().endswith(ONNX_SUFFIX)


def import_onnxruntime():
    """The ``onnxruntime`` module, or a one-line :class:`MissingExtraError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError(
            f"running an ONNX model needs onnxruntime, which is not installed; {INSTALL_HINT}"
        ) from None
    return onnxruntime


def load_session(path, device: str = "cpu", threads: int | None = None, spinning: bool = True):
    """An onnxruntime ``InferenceSession`` for the ONNX file at ``path`` on ``device`` (auto, cpu or cuda), with
    ``threads`` intra-op threads (default: ``OMP_NUM_THREADS`` when set, else onnxruntime's) that spin while idle
    only with ``spinning``."""
    ort = import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model {str(path)!r} not found; check the path")
    providers = _providers(ort, device)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers on stderr
    if threads is None:
        threads = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(threads) if threads.isdigit() else None  # the variable torch also follows
    if threads:
        options.intra_op_num_threads = int(threads)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for unreadable files
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{str(path)!r} is not an ONNX model onnxruntime can load ({first}); export it again with rs-pgd export"
        ) from None


def _providers(ort, device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise DeviceError("--device cuda was asked for but this onnxruntime has no CUDA provider; "
                              "use --device cpu or install onnxruntime-gpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise DeviceError(f"unknown device {device!r}; use auto, cpu or cuda")


def read_onnx_meta(session, path) -> dict:
    """The rs-pgd metadata stored in an exported model (a :class:`rs_pgd.checkpoint.CheckpointMeta` with
    ``export`` set); a foreign ONNX file is a :class:`CheckpointError`."""
    props = session.get_modelmeta().custom_metadata_map
    try:
        meta = json.loads(props[META_KEY])
    except (KeyError, ValueError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("export"), dict) or "stats" not in meta:
        raise CheckpointError(
            f"{Path(path).name} is an ONNX model without rs-pgd metadata; export it with rs-pgd export"
        )
    from rs_pgd.checkpoint import CheckpointMeta

    return CheckpointMeta.from_dict(meta, Path(path).name)


def onnx_backend(path, device: str = "auto", precision: str = "auto", batch_size: int | None = None,
                 threads: int | None = None, spinning: bool = True):
    """A :class:`rs_pgd.infer.Backend` that runs the exported model at ``path`` with onnxruntime.

    Parameters
    ----------
    path : path
        ONNX file written by :func:`rs_pgd.export`.
    device : {"auto", "cpu", "cuda"}
        ``auto`` uses onnxruntime's CUDA provider when it has one, else the CPU.
    precision : {"auto", "32"}
        ONNX models run in float32; other precisions are refused.
    batch_size : int, optional
        Windows per run; default 1 (the CPU gains no throughput from batching).
    threads, spinning
        onnxruntime's intra-op threads and whether they spin while idle (see :func:`load_session`).
    """
    from rs_pgd.infer import Backend

    if precision not in ("auto", "32"):
        raise ModelError(f"an ONNX model runs in float32, not {precision}; drop --precision or give --precision 32")
    session = load_session(path, device, threads, spinning)
    meta = read_onnx_meta(session, path)
    inputs = session.get_inputs()
    name, window = inputs[0].name, int(meta.export["window"])
    if len(inputs) != 1 or list(inputs[0].shape[1:]) != [meta.in_channels, window, window]:
        raise CheckpointError(f"{Path(path).name} does not take the [batch, {meta.in_channels}, "
                              f"{window}, {window}] input its metadata describes; export it again with rs-pgd export")
    size = batch_size or 1
    if size < 1:
        raise ModelError(f"batch size {batch_size} must be at least 1")

    def forward(images: np.ndarray) -> np.ndarray:
        return session.run(None, {name: images})[0]

    def batches(reader, grid, stats):
        return window_batches(reader, grid, stats, size)

    def geometry(tile, margin, stride):
        return onnx_geometry(meta, window, tile, margin, stride, Path(path).name)

    return Backend(meta, forward, batches, geometry)


def onnx_geometry(meta, window: int, tile=None, margin=None, stride=None, name="the model"):
    """Prediction tile, margin and stride for an exported model whose window side is fixed at ``window``.

    By default those of the export; a tile or margin given alone sets the other so that
    ``tile + 2 * margin == window``; both given must add up to it.
    """
    from rs_pgd.errors import GridError

    exported = meta.export
    if tile is None and margin is None:
        tile, margin = int(exported["tile"]), int(exported["margin"])
        stride = exported.get("stride") if stride is None else stride
    elif tile is None:
        tile = window - 2 * int(margin)
    elif margin is None:
        margin, odd = divmod(window - int(tile), 2)
        if odd:
            margin = -1  # refused below
    if int(tile) + 2 * int(margin) != window or int(tile) < 1 or int(margin) < 0:
        raise GridError(
            f"{name} takes {window} px windows, so tile + 2 x margin must be {window} (got tile {tile}, margin "
            f"{margin}); give one of them, or export again with rs-pgd export --tile/--margin"
        )
    return int(tile), int(margin), stride


def window_batches(reader, grid, stats, batch_size: int):
    """``(window indexes, images, valid)`` for every ``batch_size`` windows of ``grid``, in row-major order.

    Each window is read reflect-padded by ``reader`` and normalised by :func:`rs_pgd.raster.normalise` (invalid
    pixels 0), as :func:`rs_pgd.dataset.window_sample` does for the torch path; ``valid`` marks the centre pixels
    that lie inside the scene and hold data (where that function's uniform weight is positive).
    """
    from rs_pgd.raster import normalise

    table = grid.weight_table("uniform")
    indexes, images, valids = [], [], []
    for window in grid:
        data = reader.read(window.bounds)
        valid = np.zeros((window.size, window.size), dtype=bool)
        valid[window.centre_slice] = table.centre(window) > 0
        valid &= data.valid & data.inside
        indexes.append(window.index)
        images.append(normalise(data.image, data.valid, stats))
        valids.append(valid)
        if len(indexes) == batch_size:
            yield indexes, np.stack(images), np.stack(valids)
            indexes, images, valids = [], [], []
    if indexes:
        yield indexes, np.stack(images), np.stack(valids)
