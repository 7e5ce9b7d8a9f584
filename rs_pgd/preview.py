"""Quick-look PNGs: the input scene beside its class map, with a legend (matplotlib, decimated reads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling


def write_preview(scene, class_map, path, bands=None, classes=None, max_side: int = 1024) -> Path:
    """Write ``path`` (PNG): a contrast-stretched RGB (or grey) view of ``scene`` and the colour class map.

    Both rasters are read decimated (overviews where present), so the preview costs little memory.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from rs_pgd.output import AtomicOutput, class_colormap

    with rasterio.open(scene) as src:
        scale = max(src.width, src.height) / max_side
        shape = (max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
        indexes = list(bands or range(1, src.count + 1))[:3]
        image = src.read(indexes, out_shape=(len(indexes), *shape), resampling=Resampling.nearest, masked=True)
    rgb = _stretch(image)
    with rasterio.open(class_map) as dst:
        labels = dst.read(1, out_shape=shape, resampling=Resampling.nearest)
    colours = class_colormap(classes) if classes is not None else {}
    lut = np.zeros((256, 4), dtype=np.uint8)
    for value, colour in colours.items():
        lut[value] = colour
    fig, axes = plt.subplots(1, 2, figsize=(12, 6), dpi=100)
    axes[0].imshow(rgb)
    axes[0].set_title(Path(scene).name)
    axes[1].imshow(lut[labels])
    axes[1].set_title(Path(class_map).name)
    for ax in axes:
        ax.set_axis_off()
    if classes is not None:
        handles = [Patch(color=np.asarray(colours[v][:3]) / 255, label=f"{v}: {n}")
                   for v, n in zip(classes.values, classes.names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    try:
        with AtomicOutput(path, inputs=[scene, class_map], sidecars=()) as temp:
            fig.savefig(temp, format="png")
    finally:
        plt.close(fig)
    return path


def _stretch(image: np.ma.MaskedArray) -> np.ndarray:
    """2-98 % per-band stretch to [0, 1], nodata black; one band is shown in grey."""
    data = image.astype("float64")
    out = np.zeros(data.shape, dtype=np.float64)
    for b in range(data.shape[0]):
        band = data[b]
        values = band.compressed() if np.ma.is_masked(band) else np.asarray(band).ravel()
        if values.size:
            lo, hi = np.percentile(values, [2, 98])
            out[b] = np.clip((np.ma.filled(band, lo) - lo) / max(hi - lo, 1e-9), 0, 1)
            out[b][np.ma.getmaskarray(band)] = 0
    if out.shape[0] < 3:
        out = np.repeat(out[:1], 3, axis=0)
    return np.moveaxis(out, 0, -1)
