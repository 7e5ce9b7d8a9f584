"""Torch dataset over the windows of one or more scenes.

The dataset answers "what is in this window": it reads the image (reflect-padded at scene edges), normalises it,
rasterises the labels and builds the centre weights. Which windows come in which order is the trainer's business.
Readers are opened by path in each worker process (rasterio datasets cannot be shared across processes).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from rs_pgd.classes import IGNORE_INDEX
from rs_pgd.grid import GridWindow, WindowGrid
from rs_pgd.raster import BandStats, SceneReader, normalise


@dataclass
class SceneSource:
    """A scene, its labels (or ``None`` for inference) and its window grid."""

    reader: SceneReader
    labels: object | None
    grid: WindowGrid
    stats: BandStats


def window_sample(source: SceneSource, window: GridWindow, weight_kind: str = "uniform", table=None) -> dict:
    """Read one window: normalised image, target (255 outside the scored centre) and centre weights.

    Returns a dict of numpy arrays: ``image`` (C, S, S) float32, ``target`` (S, S) int64 and ``weight`` (S, S)
    float32. ``weight`` is the grid's partition-of-unity weight on centre pixels that are inside the scene, valid
    and labelled, and zero elsewhere; ``target`` is 255 wherever ``weight`` is zero.
    """
    data = source.reader.read(window.bounds)
    image = normalise(data.image, data.valid, source.stats)
    size = window.size
    weight = np.zeros((size, size), dtype=np.float64)
    table = table if table is not None else source.grid.weight_table(weight_kind)
    weight[window.centre_slice] = table.centre(window)
    weight[~(data.valid & data.inside)] = 0.0
    if source.labels is not None:
        target = source.labels.read(window.bounds).astype(np.int64)
        weight[target == IGNORE_INDEX] = 0.0
    else:
        target = np.full((size, size), IGNORE_INDEX, dtype=np.int64)
    target[weight == 0] = IGNORE_INDEX
    return {"image": image.astype(np.float32), "target": target, "weight": weight.astype(np.float32)}


class WindowDataset(torch.utils.data.Dataset):
    """Windows of several scenes, addressed by ``(scene index, window index)`` items.

    Parameters
    ----------
    sources : list of SceneSource
    items : list of (int, int)
        ``(source index, window index)`` pairs, in the order the trainer wants them.
    weight_kind : str
        Coverage weight profile of the grid (``uniform`` or ``position``).
    augment : bool
        Apply a random dihedral (D4) transform to image, target and weight together.
    seed : int
        Seed of the augmentation; each item draws from ``(seed, position)`` so a run is reproducible.
    """

    def __init__(self, sources, items, weight_kind="uniform", augment=False, seed=0):
        self.sources = list(sources)
        self.items = list(items)
        self.weight_kind = weight_kind
        self.augment = augment
        self.seed = seed
        self._tables = [s.grid.weight_table(weight_kind) for s in self.sources]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, position):
        scene_index, window_index = self.items[position]
        source = self.sources[scene_index]
        window = source.grid.window(window_index)
        sample = window_sample(source, window, self.weight_kind, self._tables[scene_index])
        if self.augment:
            sample = dihedral(sample, _item_seed(self.seed, position, scene_index, window_index))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(sample["image"])),
            "target": torch.from_numpy(np.ascontiguousarray(sample["target"])),
            "weight": torch.from_numpy(np.ascontiguousarray(sample["weight"])),
            "scene": scene_index,
            "window": window_index,
        }


def dihedral(sample: dict, seed: int) -> dict:
    """Apply one of the eight flips/rotations (albumentations ``D4``) to image, target and weight together."""
    import albumentations as A

    transform = A.Compose([A.D4(p=1.0)], additional_targets={"weight": "mask"}, seed=seed)
    out = transform(
        image=np.moveaxis(sample["image"], 0, -1),
        mask=sample["target"],
        weight=sample["weight"],
    )
    return {"image": np.moveaxis(out["image"], -1, 0), "target": out["mask"], "weight": out["weight"]}


def _item_seed(seed: int, *parts: int) -> int:
    return zlib.crc32(np.array([seed, *parts], dtype=np.int64).tobytes())
