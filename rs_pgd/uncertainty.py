"""Per-pixel uncertainty of a class-probability map, and its streaming uint8 COG writer (no torch).

``predict --uncertainty unc.tif`` computes one of three measures from the stitched softmax probabilities ``p``
(``K`` classes) of each pixel, all in [0, 1], 0 for a certain pixel:

``least-confidence`` (the default)
    ``1 - max_k p_k``.
``margin``
    ``1 - (p_(1) - p_(2))``, one minus the gap between the two most probable classes.
``entropy``
    ``-sum_k p_k log p_k / log K``, the Shannon entropy normalised by its largest value.

The raster is uint8 like the uint8 probability raster: ``round(u * 254)``, nodata 255 where the class map is
nodata, a band scale of 1/254 (GDAL-aware readers unscale it) and a band description naming the measure, on the
class map's grid; AVERAGE overviews. ``rs-pgd suggest`` (:mod:`rs_pgd.suggestion`) aggregates it per region.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from rs_pgd import defaults
from rs_pgd.errors import OptionError
from rs_pgd.output import PROBABILITY_NODATA_UINT8, PROBABILITY_SCALE_UINT8, _StreamingWriter

KINDS = defaults.UNCERTAINTY_KINDS
"""The uncertainty measures."""

DEFAULT_KIND = defaults.UNCERTAINTY_KIND

DESCRIPTIONS = {
    "least-confidence": "uncertainty: 1 - max probability",
    "margin": "uncertainty: 1 - (p1 - p2), top-two margin",
    "entropy": "uncertainty: entropy / log K",
}
"""Band description of each measure (shown by QGIS and gdalinfo)."""

NODATA = PROBABILITY_NODATA_UINT8
SCALE = PROBABILITY_SCALE_UINT8


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a measure of :data:`KINDS`; :class:`OptionError` names the valid ones."""
    if kind not in KINDS:
        raise OptionError(f"--uncertainty-kind {kind!r} is not a measure; choose one of {', '.join(KINDS)}")
    return kind


def uncertainty(probabilities: np.ndarray, kind: str = DEFAULT_KIND) -> np.ndarray:
    """Per-pixel uncertainty in [0, 1] of ``(K, ...)`` class probabilities (float32 out).

    Parameters
    ----------
    probabilities : ndarray, shape (K, ...)
        Probabilities along the first axis (summing to 1); NaN marks pixels without a prediction and stays NaN.
    kind : {"least-confidence", "margin", "entropy"}
        The measure (see the module docstring).

    Returns
    -------
    ndarray, shape (...)
        float32 uncertainty, clipped to [0, 1].
    """
    check_kind(kind)
    p = np.asarray(probabilities, dtype=np.float32)
    k = p.shape[0]
    if kind == "least-confidence":
        u = 1.0 - p.max(axis=0)
    elif kind == "margin":
        if k < 2:
            u = np.zeros(p.shape[1:], dtype=np.float32)
        else:
            top = np.partition(p, k - 2, axis=0)[k - 2 :]  # the two largest, in order
            u = 1.0 - (top[1] - top[0])
    else:
        if k < 2:
            u = np.zeros(p.shape[1:], dtype=np.float32)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                terms = np.where(p > 0, p * np.log(p), 0.0)
            u = -terms.sum(axis=0) / np.float32(np.log(k))
    u = np.where(np.isnan(p).any(axis=0), np.float32(np.nan), u.astype(np.float32, copy=False))
    return np.clip(u, 0.0, 1.0)


def encode(u: np.ndarray) -> np.ndarray:
    """Uncertainty as stored: ``round(u * 254)`` as uint8, 255 where ``u`` is NaN."""
    u = np.asarray(u)
    scaled = np.rint(np.clip(u, 0.0, 1.0) * SCALE)
    return np.where(np.isnan(u), NODATA, scaled).astype(np.uint8)


def decode(stored: np.ndarray) -> np.ndarray:
    """Stored uint8 values back to float32 uncertainty, NaN at nodata."""
    stored = np.asarray(stored)
    return np.where(stored == NODATA, np.float32(np.nan), stored.astype(np.float32) / np.float32(SCALE))


class StreamingUncertaintyWriter(_StreamingWriter):
    """Write a single-band uint8 uncertainty raster row band by row band into a (COG) GeoTIFF.

    Parameters
    ----------
    path : path-like
        Output file; replaced atomically on :meth:`close`.
    profile : dict, dataset or SceneInfo
        Source of ``width``, ``height``, ``crs`` and ``transform`` (the input scene's).
    kind : {"least-confidence", "margin", "entropy"}
        The measure written (and named in the band description).
    cog : bool
        Convert to a Cloud Optimized GeoTIFF with AVERAGE overviews; otherwise a tiled GeoTIFF.
    blocksize : int
        Tile size of the file, a multiple of 16.
    inputs : iterable of path-like
        Input files of the run; the output may not replace one.

    Write probabilities with :meth:`write`; the measure is computed here.
    """

    resampling = "AVERAGE"

    def __init__(self, path, profile, kind: str = DEFAULT_KIND, cog: bool = True, blocksize: int = 512,
                 inputs: Iterable = (), overwrite: bool = True):
        self.kind = check_kind(kind)
        super().__init__(path, profile, 1, "uint8", NODATA, cog, blocksize, inputs, overwrite)

    def write(self, row_start: int, probabilities: np.ndarray) -> None:
        """Write the uncertainty of ``(K, rows, width)`` probabilities (NaN = no prediction) at ``row_start``."""
        self._write_rows(row_start, encode(uncertainty(probabilities, self.kind))[None])

    def _describe(self, dataset) -> None:
        dataset.set_band_description(1, DESCRIPTIONS[self.kind])
        dataset.scales = [1.0 / SCALE]
        dataset.offsets = [0.0]
        dataset.update_tags(1, UNCERTAINTY=self.kind)


__all__ = ["KINDS", "DEFAULT_KIND", "uncertainty", "encode", "decode", "check_kind", "StreamingUncertaintyWriter"]
