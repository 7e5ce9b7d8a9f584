"""Segmentation metrics from a confusion matrix (numpy only, no torch).

The confusion matrix is accumulated window by window, so no scene-sized array is ever needed.
Rows are the reference classes, columns the predicted ones; both are class *indices* (0..K-1).
"""

from __future__ import annotations

import numpy as np

from rs_pgd.classes import IGNORE_INDEX


def update_confusion(confusion: np.ndarray, reference: np.ndarray, predicted: np.ndarray, ignore_index: int = IGNORE_INDEX):
    """Add the pixels of one window to ``confusion`` in place; pixels whose reference is ``ignore_index`` or
    whose prediction is out of range are skipped. Returns ``confusion``."""
    k = confusion.shape[0]
    ref = np.asarray(reference).ravel().astype(np.int64)
    pred = np.asarray(predicted).ravel().astype(np.int64)
    keep = (ref != ignore_index) & (ref >= 0) & (ref < k) & (pred >= 0) & (pred < k)
    confusion += np.bincount(ref[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    return confusion


def scores(confusion: np.ndarray, names=None) -> dict:
    """Per-class IoU, F1, precision and recall, mIoU and overall accuracy of a confusion matrix.

    Classes absent from both reference and prediction get ``None`` scores and do not count in the mIoU.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    k = confusion.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(k)]
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    per_class = []
    ious = []
    for i in range(k):
        support = int(tp[i] + fn[i])
        present = tp[i] + fp[i] + fn[i] > 0
        iou = tp[i] / (tp[i] + fp[i] + fn[i]) if present else None
        precision = tp[i] / (tp[i] + fp[i]) if tp[i] + fp[i] > 0 else (0.0 if present else None)
        recall = tp[i] / (tp[i] + fn[i]) if tp[i] + fn[i] > 0 else (0.0 if present else None)
        f1 = 2 * tp[i] / (2 * tp[i] + fp[i] + fn[i]) if present else None
        if iou is not None:
            ious.append(iou)
        per_class.append(
            {"index": i, "name": names[i], "iou": _f(iou), "f1": _f(f1), "precision": _f(precision),
             "recall": _f(recall), "support": support}
        )
    total = confusion.sum()
    return {
        "miou": _f(float(np.mean(ious)) if ious else None),
        "accuracy": _f(float(tp.sum() / total) if total > 0 else None),
        "pixels": int(total),
        "per_class": per_class,
        "confusion": confusion.astype(np.int64).tolist(),
    }


def majority_baseline_miou(confusion: np.ndarray) -> float:
    """mIoU of always predicting the most frequent reference class, over the classes present in the reference."""
    confusion = np.asarray(confusion, dtype=np.float64)
    support = confusion.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    majority = int(np.argmax(support))
    iou = np.zeros(len(support))
    iou[majority] = support[majority] / support.sum()
    return float(iou[present].mean())


def _f(value):
    return None if value is None else round(float(value), 6)
