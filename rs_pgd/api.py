"""The Python API's entry points that check their input before importing torch.

``rs_pgd.fit`` is :func:`fit` here: it runs every torch-free check (options, window geometry, output paths, scenes,
label files) and only then imports the training code, so the API refuses bad input as fast and as clearly as the
CLI, which makes this same call.
"""

from __future__ import annotations

import os
from pathlib import Path


def fit(scenes, labels, output="model.safetensors", *, resume=False, model=None, **options):
    """Train a segmentation model on ``scenes`` with ``labels`` and write a checkpoint to ``output``.

    Parameters
    ----------
    scenes : str or path or list of them
        Scene rasters (any GDAL raster).
    labels : str or path or list of them
        One label file (vector or raster) per scene.
    output : str or path
        Checkpoint to write (safetensors); its siblings hold the resume state and the training curve.
    resume : bool
        Continue from ``<output stem>.resume.pt`` if it exists.
    model : torch.nn.Module, optional
        Train this module instead of building ``arch``/``encoder`` with SMP: any fully convolutional network that
        maps ``(B, bands, H, W)`` to ``(B, classes, H, W)`` logits, with an ``output_stride`` attribute (default
        32) that divides 32. Images are cast to its parameters' dtype. The checkpoint holds its weights and
        metadata (``arch`` "custom"); rebuild the module yourself to use them.
    **options
        Any field of :class:`rs_pgd.config.FitConfig` (defaults in :mod:`rs_pgd.defaults`), e.g. ``tile``,
        ``margin``, ``epochs``, ``optimizer`` ("adamw" or "sgd"), ``precision``.

    Returns
    -------
    rs_pgd.train.FitResult
    """
    from rs_pgd.config import preflight_fit

    scenes = _as_list(scenes)
    labels = _as_list(labels)
    config = preflight_fit(scenes, labels, output, options)
    from rs_pgd.runtime import torch_threads

    with torch_threads(config.threads):  # before torch is imported: the OpenMP wait policy is read at its start
        from rs_pgd.train import train

        return train(scenes, labels, Path(output), config, resume=resume, model=model)


def _as_list(paths) -> list:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
