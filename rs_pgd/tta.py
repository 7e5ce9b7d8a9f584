"""Test-time augmentation: the D4 average of a window model's probabilities (numpy, no torch).

``predict --tta`` wraps the backend's ``forward`` (normalised windows -> class probabilities, numpy in and out)
in :func:`d4_forward`: every batch of windows is run once per element of the dihedral group D4 (the identity,
three rotations by 90 degrees, and the same four after a horizontal flip), each output is mapped back by the
inverse transform and the eight are averaged. The windows are square and a multiple of the model's output stride,
so a transformed window is a window of the transformed scene on the same patch lattice; the centre of each window
is still what the stitcher keeps, so the stitching, and with it seamlessness and bounded memory, is unchanged:
one batch's input and one accumulator more, never eight batches at once. It costs eight forward passes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TRANSFORMS = tuple((flip, turns) for flip in (False, True) for turns in range(4))
"""The eight elements of D4 as ``(flip, quarter turns)``: flip the last axis first, then rotate."""


def apply(array: np.ndarray, flip: bool, turns: int) -> np.ndarray:
    """Transform the last two (square) axes of ``array``: flip left-right if ``flip``, then rotate ``turns`` x 90°."""
    out = array[..., ::-1] if flip else array
    return np.rot90(out, turns, axes=(-2, -1))


def invert(array: np.ndarray, flip: bool, turns: int) -> np.ndarray:
    """The inverse of :func:`apply` with the same arguments."""
    out = np.rot90(array, -turns, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def d4_forward(forward: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``forward`` averaged over D4: ``mean_g g^-1(forward(g(x)))`` for ``(n, C, S, S)`` float32 windows.

    Parameters
    ----------
    forward : callable
        ``forward(images) -> probabilities``, float32 ``(n, C, S, S)`` to float32 ``(n, K, S, S)`` (float64 is
        kept as float64).

    Returns
    -------
    callable
        The same signature; a D4-equivariant ``forward`` (e.g. a per-pixel model) comes back unchanged, up to
        float32 rounding.
    """

    def averaged(images: np.ndarray) -> np.ndarray:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"test-time augmentation needs square windows, got {images.shape[-2:]}")
        total = None
        for flip, turns in TRANSFORMS:
            out = invert(forward(np.ascontiguousarray(apply(images, flip, turns))), flip, turns)
            if total is None:
                total = np.array(out, dtype=np.result_type(out.dtype, np.float32))  # float64 stays float64
            else:
                total += out
        total /= len(TRANSFORMS)
        return total

    return averaged


__all__ = ["TRANSFORMS", "apply", "invert", "d4_forward"]
