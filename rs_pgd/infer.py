"""``predict()``: seamless, streaming inference of a trained model over a scene into a GeoTIFF/COG.

Windows are read row by row of the grid (the same geometry as training: centre tile, context margin, reflect
padding at scene edges, origins aligned to the model's output stride), run through the model, and stitched by
:class:`rs_pgd.stitch.RowStitcher`, which holds only the rows in flight. Finished rows go straight into the
output file, so memory is bounded by the scene width times the window height, not by the scene.

The window loop is shared by two runtimes, each a :class:`Backend`: torch with a checkpoint (built here) and
onnxruntime with an exported ONNX file (:mod:`rs_pgd.onnx_backend`, which never imports torch). A backend gives
the checkpoint metadata, a ``forward`` (normalised windows -> class probabilities, numpy in and out) and the
stream of window batches; reading, stitching and writing are the same for both.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rs_pgd import defaults
from rs_pgd.errors import CheckpointError, OptionError, RsPgdError
from rs_pgd.grid import WindowGrid
from rs_pgd.raster import gdal_env

logger = logging.getLogger(__name__)


@dataclass
class PredictResult:
    """What :func:`predict` returns."""

    output: Path
    probabilities: Path | None
    preview: Path | None
    windows: int
    windows_run: int
    seconds: float
    tile: int = 0
    margin: int = 0
    written: bool = True  # False on torchrun ranks other than 0, which compute rows but write nothing
    uncertainty: Path | None = None


@dataclass
class Backend:
    """What the window loop of :func:`predict` needs from a model runtime.

    Attributes
    ----------
    meta : rs_pgd.checkpoint.CheckpointMeta
        The checkpoint metadata (bands, preset, stats, classes, geometry).
    forward : callable
        ``forward(images) -> probabilities``: float32 ``(n, C, S, S)`` normalised windows to float32
        ``(n, K, S, S)`` softmax probabilities.
    batches : callable
        ``batches(reader, grid, stats)`` yields ``(window indexes, images, valid)`` per batch: a list of ints,
        float32 ``(n, C, S, S)`` normalised windows and bool ``(n, S, S)`` masks of the centre pixels that are
        inside the scene and hold data.
    geometry : callable
        ``geometry(tile, margin, stride) -> (tile, margin, stride)``: the prediction geometry from the user's
        values (None for the default).
    """

    meta: object
    forward: Callable[[np.ndarray], np.ndarray]
    batches: Callable[..., Iterable[tuple[list, np.ndarray, np.ndarray]]]
    geometry: Callable[..., tuple[int, int, int | None]]


@gdal_env()
def predict(model, scene, output, *, tile=None, margin=None, stride=None, blend=defaults.BLEND, probabilities=None,
            probability_dtype=defaults.PROBABILITY_DTYPE, preview=None, batch_size=None, device=defaults.DEVICE,
            precision=defaults.PRECISION, workers=None, cog=True, progress=True, nodata=None, bbox=None,
            bbox_crs=defaults.BBOX_CRS, aoi=None, bands=None, threads=defaults.THREADS, uncertainty=None,
            uncertainty_kind=defaults.UNCERTAINTY_KIND, tta=False) -> PredictResult:
    """Predict a class map for ``scene`` with the checkpoint ``model`` and write it to ``output``.

    Parameters
    ----------
    model : path
        Checkpoint written by :func:`rs_pgd.fit`, or an ``.onnx`` file written by :func:`rs_pgd.export` (run
        with onnxruntime, in float32, without importing torch; its window size is fixed at export).
    scene : path
        Any GDAL raster with the bands the model was trained on.
    output : path
        Class map to write (COG by default): the input's CRS, transform and size; class values of the training
        labels; 255 where the input is nodata; colour table and class names.
    tile, margin, stride : int, optional
        Window geometry; by default the checkpoint's, grown to a margin of at least 128 px and a tile of at least
        4 x the margin (:func:`rs_pgd.config.inference_geometry`: 99.97 % agreement with a whole-image prediction
        on the demo scene, against 99.81 % at the training margin of 64).
    blend : {"none", "linear", "cosine"}
        ``none`` keeps each window's centre (nearest centre where windows overlap); ``linear``/``cosine`` blend
        overlapping windows (use with ``stride < tile``).
    probabilities : path, optional
        Also write per-class probabilities (one band per class) to this COG.
    probability_dtype : {"uint8", "float32"}
        uint8 stores round(p * 254) with nodata 255; float32 stores p with NaN nodata.
    preview : path, optional
        Write a PNG quick-look (input beside the class map, with a legend).
    batch_size : int, optional
        Windows per forward pass; default 1 on CPU (batching adds memory, not throughput), 8 on CUDA.
    device, precision, workers, threads
        As in :func:`rs_pgd.fit`. For an ONNX model: onnxruntime's CUDA provider or the CPU, float32 only,
        ``threads`` onnxruntime's intra-op threads (not spinning when idle), and windows read in this process
        (``workers`` is not used).
    cog : bool
        Write a Cloud Optimized GeoTIFF (tiled, DEFLATE, mode overviews); otherwise a tiled GeoTIFF.
    nodata : float, optional
        Stored fill value the scene does not tag; default: the ``nodata`` the model was trained with, if any.
    bbox, bbox_crs, aoi : optional
        Predict only the area ``bbox = (W, S, E, N)`` (in ``bbox_crs``) or the bounds of the vector file ``aoi``:
        the output covers that area snapped to the scene's pixels, and only the windows it needs are read.
    bands : list of int or str, optional
        The scene's bands to feed the model (numbers, descriptions or preset names); by default the training
        bands. Needed when the scene's band count differs from the training scenes'.
    uncertainty : path, optional
        Also write the per-pixel uncertainty to this COG (uint8: ``round(u * 254)``, 255 where the class map is
        nodata; the class map's grid; the band description names the measure).
    uncertainty_kind : {"least-confidence", "margin", "entropy"}
        ``1 - max p`` (default), ``1 - (p1 - p2)`` or the entropy divided by ``log K``
        (:mod:`rs_pgd.uncertainty`).
    tta : bool
        Test-time augmentation: average each window's probabilities over the 8 flips and rotations of D4 before
        stitching (:mod:`rs_pgd.tta`; 8 forward passes per window, the same memory, still seamless).

    Every check that needs no model runs first, before torch is imported (:func:`rs_pgd.config.preflight_predict`):
    options, every output path, the checkpoint header and whether the scene fits the model.
    """
    import time

    from rs_pgd.config import plan_scene, preflight_predict
    from rs_pgd.onnx_backend import is_onnx_path
    from rs_pgd.runtime import choose_threads, log_threads, parse_threads, torch_threads

    started = time.perf_counter()
    threads = parse_threads(threads)
    plan = preflight_predict(model, scene, output, probabilities=probabilities, preview=preview, blend=blend,
                             tile=tile, margin=margin, stride=stride, bands=bands, batch_size=batch_size,
                             workers=workers, cog=cog, bbox=bbox, bbox_crs=bbox_crs, aoi=aoi, uncertainty=uncertainty,
                             uncertainty_kind=uncertainty_kind)
    if is_onnx_path(model):
        from rs_pgd.onnx_backend import onnx_backend

        if _world_size() > 1:
            raise OptionError("torchrun predict runs torch checkpoints; give the .safetensors model, or run an "
                              "ONNX model in one process")
        choice = choose_threads(threads)
        backend = onnx_backend(model, device=device, precision=precision, batch_size=batch_size,
                               threads=choice.threads, spinning=not choice.environment)
        log_threads(choice)
        plan = plan_scene(backend.meta, plan.info, model, bands, plan.window)  # its metadata, read by onnxruntime
        return _predict_windows(backend, plan, model, scene, output, tile, margin, stride, blend, probabilities,
                                probability_dtype, preview, cog, progress, started, nodata, plan.window,
                                uncertainty=uncertainty, uncertainty_kind=uncertainty_kind, tta=tta)
    with torch_threads(threads, log=False) as choice:  # before torch: its OpenMP runtime reads the wait policy
        backend = _torch_backend(model, device, precision, batch_size, workers)
        log_threads(choice)
        return _predict_windows(backend, plan, model, scene, output, tile, margin, stride, blend, probabilities,
                                probability_dtype, preview, cog, progress, started, nodata, plan.window,
                                uncertainty=uncertainty, uncertainty_kind=uncertainty_kind, tta=tta)


def _predict_windows(backend: Backend, plan, model, scene, output, tile, margin, stride, blend, probabilities,
                     probability_dtype, preview, cog, progress, started, nodata=None, window=None, *,
                     uncertainty=None, uncertainty_kind=defaults.UNCERTAINTY_KIND, tta=False) -> PredictResult:
    """The window loop shared by every backend: read, run ``backend.forward`` (D4-averaged with ``tta``), stitch,
    write.

    Under torchrun (a torch backend) the ranks share the grid rows and rank 0 alone stitches and writes
    (:class:`rs_pgd.distributed.RowExchange`)."""
    import time

    from rs_pgd.output import StreamingClassWriter, StreamingProbabilityWriter
    from rs_pgd.stitch import RowStitcher
    from rs_pgd.tta import d4_forward
    from rs_pgd.uncertainty import StreamingUncertaintyWriter

    meta = backend.meta
    classes = meta.class_table()
    reader = _open_scene_for(meta, plan, scene, model, nodata, window)
    tile, margin, stride = backend.geometry(tile, margin, stride)
    grid = WindowGrid(reader.height, reader.width, tile, margin, stride, align=int(meta.geometry.get("align", 32)))
    k = classes.num_classes
    values = np.asarray(classes.values, dtype=np.uint8)
    stitcher = RowStitcher(grid, k + 1, blend=blend, dtype=np.float32)
    exchange = _row_exchange(grid, k + 1)  # under torchrun: this rank's rows; rank 0 gathers, stitches, writes
    ran = [0]
    forward = d4_forward(backend.forward) if tta else backend.forward
    outputs = _window_outputs(backend, forward, reader, grid, k, exchange, ran)
    if exchange is not None and not exchange.is_main:
        exchange.send(outputs)
        windows_run = exchange.total(ran[0])
        exchange.dist.close()
        return PredictResult(Path(output), Path(probabilities) if probabilities else None, None, len(grid),
                             windows_run, time.perf_counter() - started, grid.tile, grid.margin, written=False)
    class_writer = StreamingClassWriter(output, _profile(reader), classes, cog=cog, inputs=[model, scene])
    prob_writer = unc_writer = None
    try:
        if probabilities is not None:
            prob_writer = StreamingProbabilityWriter(probabilities, _profile(reader), classes, dtype=probability_dtype,
                                                     cog=cog, inputs=[model, scene, output])
        if uncertainty is not None:
            unc_writer = StreamingUncertaintyWriter(uncertainty, _profile(reader), uncertainty_kind, cog=cog,
                                                    inputs=[model, scene, output, probabilities])
        bar = _progress(len(grid), progress)
        for window_index, out in outputs:
            for band in stitcher.add(grid.window(window_index), out):
                _write_band(band, values, class_writer, prob_writer, unc_writer)
            bar.update(1)
        for band in stitcher.flush():
            _write_band(band, values, class_writer, prob_writer, unc_writer)
        bar.close()
        windows_run = ran[0] if exchange is None else exchange.total(ran[0])
        for writer in (class_writer, prob_writer, unc_writer):
            if writer is not None:
                writer.close()
    except BaseException:
        for writer in (class_writer, prob_writer, unc_writer):
            if writer is not None:
                writer.abort()
        raise
    if exchange is not None:
        exchange.dist.close()
    preview_path = None
    if preview is not None:
        from rs_pgd.preview import write_preview

        preview_path = write_preview(scene, output, preview, bands=reader.bands, classes=classes)
    return PredictResult(Path(output), Path(probabilities) if probabilities else None, preview_path, len(grid),
                         windows_run, time.perf_counter() - started, grid.tile, grid.margin,
                         uncertainty=Path(uncertainty) if uncertainty else None)


def _window_outputs(backend, forward, reader, grid, k: int, exchange, ran: list):
    """``(window index, output)`` for every window, in grid order: all of them in one process; under torchrun this
    rank's rows, or on rank 0 every row (its own and the others', :meth:`RowExchange.gather`). ``forward`` is the
    backend's (D4-averaged with ``tta``). ``ran[0]`` counts
    this rank's windows that went through the model (see :func:`_run_batch`)."""
    stats = backend.meta.band_stats()
    if exchange is None:
        batches = backend.batches(reader, grid, stats)
    else:
        batches = backend.batches(reader, grid, stats, windows=exchange.mine)

    def mine():
        for window_indexes, images, valid in batches:
            outputs, count = _run_batch(forward, images, valid, k)
            ran[0] += count
            yield from zip(window_indexes, outputs)

    return exchange.gather(mine()) if exchange is not None and exchange.is_main else mine()


def _world_size() -> int:
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _row_exchange(grid, channels: int):
    """Under torchrun, this rank's :class:`rs_pgd.distributed.RowExchange` (gloo); None in one process."""
    if _world_size() <= 1:
        return None
    from rs_pgd.distributed import RowExchange, init_distributed

    dist = init_distributed("cpu", backend="gloo")  # the rows travel as CPU tensors, also between GPU ranks
    return RowExchange(dist, grid, channels) if dist.enabled else None


def _torch_backend(model, device, precision, batch_size, workers) -> Backend:
    """A checkpoint run with torch: the model on ``device`` at ``precision``, windows from a DataLoader."""
    from rs_pgd.config import inference_geometry
    from rs_pgd.distributed import local_device
    from rs_pgd.models import model_from_checkpoint
    from rs_pgd.runtime import default_workers, resolve_device, resolve_precision

    dev = local_device(resolve_device(device))  # under torchrun, the GPU of LOCAL_RANK
    choice = resolve_precision(precision, dev)
    prec = choice.precision
    logger.info("precision %s (%s)", prec, choice.reason)
    net, meta = model_from_checkpoint(model, device=dev)
    if batch_size is None:
        batch_size = 8 if dev.type == "cuda" else 1  # on CPU batching adds no throughput, only memory
    workers = default_workers(dev) if workers is None else workers

    def batches(reader, grid, stats, windows=None):
        from rs_pgd.dataset import SceneSource

        source = SceneSource(reader, None, grid, stats)
        for batch in _window_loader(source, grid, batch_size, workers, windows):
            yield batch["window"].tolist(), batch["image"].numpy(), (batch["weight"] > 0).numpy()

    def geometry(tile, margin, stride):
        return inference_geometry(meta.geometry, tile, margin, stride)

    return Backend(meta, _torch_forward(net, dev, prec), batches, geometry)




def _open_scene_for(meta, plan, scene, model, nodata=None, window=None):
    """Open ``scene`` with the bands the scene check chose (``plan``, :func:`rs_pgd.config.plan_scene`) and the
    checkpoint's preset; differences from the training scenes that usually spoil a map are logged as warnings."""
    from rs_pgd.checkpoint import value_warnings
    from rs_pgd.raster import SceneReader, compute_band_stats

    if nodata is None:
        nodata = meta.training_nodata()  # the fill value the model was trained with
    reader = SceneReader(scene, bands=plan.bands, preset=meta.preset or "generic", nodata=nodata, window=window)
    if reader.count != meta.in_channels:
        raise CheckpointError(
            f"the model {Path(model).name} takes {meta.in_channels} band(s) but {Path(scene).name} gives "
            f"{reader.count}; give a scene with the training bands"
        )
    found = list(plan.warnings)
    try:
        found += value_warnings(meta, compute_band_stats(reader, tile=256, max_windows=4), Path(scene).name)
    except RsPgdError:  # a sample without valid pixels says nothing about the values
        pass
    for line in found:
        warnings.warn(line, stacklevel=3)
    return reader


def _profile(reader) -> dict:
    return {"width": reader.width, "height": reader.height, "crs": reader.crs, "transform": reader.transform}


def _window_loader(source, grid, batch_size: int, workers: int, windows=None):
    """Batches of the grid's windows (or of ``windows``, indexes in grid order) that never straddle two grid rows,
    so that each window meets the model in the same batch however the rows are shared among torchrun ranks."""
    import torch

    from rs_pgd.dataset import WindowDataset

    indexes = list(range(len(grid))) if windows is None else list(windows)
    items = [(0, i) for i in indexes]
    dataset = WindowDataset([source], items, weight_kind="uniform")
    cols = grid.shape[1]
    sampler, start = [], 0
    while start < len(indexes):
        row = indexes[start] // cols
        stop = start
        while stop < len(indexes) and stop - start < batch_size and indexes[stop] // cols == row:
            stop += 1
        sampler.append(list(range(start, stop)))
        start = stop
    workers = min(workers, max(len(indexes) // max(batch_size, 1), 0))
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                       prefetch_factor=4 if workers else None)


def _torch_forward(net, device, precision):
    """``forward(images) -> probabilities`` for a torch model (channels-last, autocast at ``precision``)."""
    import torch

    from rs_pgd.runtime import autocast_context

    net = net.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).to(device).contiguous(memory_format=torch.channels_last)
        with autocast_context(precision, device):
            logits = net(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    return forward


def _run_batch(forward, images: np.ndarray, valid: np.ndarray, k: int):
    """Class probabilities plus a validity channel for every window of a batch, as float32 numpy arrays.

    Windows whose centre holds no valid pixel skip the model; their probabilities stay zero and their
    validity channel marks them as nodata.
    """
    n, _, size, _ = images.shape
    out = np.zeros((n, k + 1, size, size), dtype=np.float32)
    out[:, k] = valid
    has_data = valid.reshape(n, -1).any(axis=1)
    ran = int(has_data.sum())
    if ran:
        out[has_data, :k] = forward(np.ascontiguousarray(images[has_data], dtype=np.float32))
    return out, ran


def _write_band(band, values: np.ndarray, class_writer, prob_writer, unc_writer=None) -> None:
    data = band.data
    k = data.shape[0] - 1
    valid = data[k] > 0.5
    probs = data[:k]
    classes = values[np.argmax(probs, axis=0)]
    class_writer.write(band.row_start, np.where(valid, classes, 255).astype(np.uint8))
    if prob_writer is not None or unc_writer is not None:
        masked = np.where(valid[None], probs, np.nan)  # NaN: no prediction, nodata in every raster
        if prob_writer is not None:
            prob_writer.write(band.row_start, masked)
        if unc_writer is not None:
            unc_writer.write(band.row_start, masked)


def _progress(total: int, enabled: bool):
    from rs_pgd.progress import progress_bar  # a tqdm bar, or JSON lines with --progress json

    return progress_bar(total, "predict", enabled)


__all__ = ["predict", "PredictResult", "Backend"]
