"""Label rasters read on the scene grid, window by window (no torch).

Create with :func:`rs_pgd.labels.open_labels`. Same or pixel-aligned grid: plain windowed reads; other grid or
CRS: a ``WarpedVRT`` with nearest-neighbour resampling. Label nodata, masked pixels, the value 255 and values
that are no class become 255 (ignored). The dataset is opened lazily in each process, so the source pickles.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from affine import Affine

from rs_pgd.classes import IGNORE_INDEX, apply_mapping, normalise_key, preview, sorted_table, with_background
from rs_pgd.errors import LabelError
from rs_pgd.label_source import (
    LabelSource,
    SceneGrid,
    apply_transform,
    bbox_overlap_fraction,
    crs_name,
    first_line,
    fmt_bbox,
    same_crs,
)


class RasterLabels(LabelSource):
    """A label raster read on the scene grid, one window at a time.

    Same or pixel-aligned grid: plain windowed reads. Other grid or CRS: a ``WarpedVRT`` to the scene grid with
    nearest-neighbour resampling. Label nodata, masked pixels and values that are no class become 255. The
    dataset is opened lazily in each process, so the object pickles. Create with :func:`open_labels`.
    """

    def __init__(
        self,
        path,
        grid: SceneGrid,
        classes,
        *,
        band,
        source_values,
        source_indices,
        offset,
        warp,
        background_index,
        overlap,
        report,
    ):
        self.path = str(path)
        self._init_grid(grid)
        self.classes = classes
        self.band = int(band)
        self.source_values = np.asarray(source_values, dtype=np.int64)  # sorted
        self.source_indices = np.asarray(source_indices, dtype=np.uint8)
        self.offset = offset  # (row, col) of the scene's origin in label pixels, when aligned
        self.warp = bool(warp)
        self.background_index = background_index
        self.overlap = overlap
        self.report = list(report)
        self._handles = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = None
        return state

    def _datasets(self):
        import rasterio

        if self._handles is None or self._handles[0] != os.getpid():
            src = rasterio.open(self.path)
            view = src
            if self.warp:
                view = _warped_view(src, self._grid)
            self._handles = (os.getpid(), src, view)
        return self._handles[1], self._handles[2]

    def close(self):
        """Close the datasets opened in this process (they reopen on the next read)."""
        if self._handles is not None:
            _, src, view = self._handles
            if view is not src:
                view.close()
            src.close()
            self._handles = None

    def _to_indices(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = np.full(data.shape, IGNORE_INDEX, dtype=np.uint8)
        if self.source_values.size == 0:
            return out
        if data.dtype.kind == "f":
            data = np.where(valid, data, 0)  # NaN would not cast to an integer
        flat = data.astype(np.int64, copy=False)
        pos = np.clip(np.searchsorted(self.source_values, flat), 0, self.source_values.size - 1)
        known = valid & (self.source_values[pos] == flat)
        out[known] = self.source_indices[pos[known]]
        return out

    def _read_inside(self, r0, c0, r1, c1):
        from rasterio.windows import Window

        src, view = self._datasets()
        out = np.full((r1 - r0, c1 - c0), IGNORE_INDEX, dtype=np.uint8)
        if self.warp:
            window = Window(c0, r0, c1 - c0, r1 - r0)
            data = view.read(self.band, window=window)
            valid = _valid(data, view.read_masks(self.band, window=window))
            return self._to_indices(data, valid)
        off_row, off_col = self.offset
        # window in label pixels, clipped to the label raster
        lr0, lc0 = max(r0 + off_row, 0), max(c0 + off_col, 0)
        lr1, lc1 = min(r1 + off_row, src.height), min(c1 + off_col, src.width)
        if lr1 <= lr0 or lc1 <= lc0:
            return out
        window = Window(lc0, lr0, lc1 - lc0, lr1 - lr0)
        data = src.read(self.band, window=window)
        valid = _valid(data, src.read_masks(self.band, window=window))
        out[lr0 - off_row - r0 : lr1 - off_row - r0, lc0 - off_col - c0 : lc1 - off_col - c0] = (
            self._to_indices(data, valid)
        )
        return out


def _warped_view(src, grid: SceneGrid):
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    # Without a nodata value, an alpha band is the only way the VRT can tell "outside the label raster" (or
    # masked) pixels from class values; with one, those pixels take the nodata value.
    return WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=Resampling.nearest,
        add_alpha=src.nodata is None,
        tolerance=1e-9,  # (near) exact transformer: a window reads the same pixels as the whole scene
    )


# --- raster ------------------------------------------------------------------------------------------------------


def _transforms_close(a: Affine, b: Affine) -> bool:
    scale = max(abs(a.a), abs(a.e), abs(a.b), abs(a.d), 1e-12)
    return all(abs(x - y) <= 1e-6 * scale for x, y in zip(tuple(a)[:6], tuple(b)[:6]))


def _aligned_offset(src, grid: SceneGrid):
    """(row, col) of the scene origin in label pixels when both share a pixel grid, else None."""
    a, b = src.transform, grid.transform
    scale = max(abs(a.a), abs(a.e), 1e-12)
    if any(abs(x - y) > 1e-6 * scale for x, y in ((a.a, b.a), (a.b, b.b), (a.d, b.d), (a.e, b.e))):
        return None
    col, row = apply_transform(~a, b.c, b.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return int(round(row)), int(round(col))


def _valid(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels with a label value: GDAL's mask (nodata, alpha, ...) and, for floating point, not NaN or infinite."""
    valid = mask > 0
    if data.dtype.kind == "f":
        valid &= np.isfinite(data)
    return valid


def _scan_values(src, band: int, path) -> np.ndarray:
    """Distinct valid values of a label raster, streaming row strips (never the whole raster at once).

    Floating-point label rasters (as GRASS, QGIS, R or numpy pipelines write them) are read as class ids when every
    valid value is integral; NaN and the nodata value mean unlabelled. Any other value is a LabelError naming a
    few of them.
    """
    from rasterio.windows import Window

    block_rows = src.block_shapes[band - 1][0] if src.block_shapes else 1
    rows = max(block_rows, (4_000_000 // max(src.width, 1)) // max(block_rows, 1) * max(block_rows, 1), 1)
    found: set = set()
    fractional: set = set()
    for row in range(0, src.height, rows):
        window = Window(0, row, src.width, min(rows, src.height - row))
        data = src.read(band, window=window)
        values = np.unique(data[_valid(data, src.read_masks(band, window=window))])
        if values.dtype.kind == "f":
            integral = values == np.round(values)
            if len(fractional) < 5:
                fractional.update(values[~integral][:5].tolist())
            values = values[integral]
        found.update(int(v) for v in values.tolist())
    if fractional:
        shown = ", ".join(f"{v:g}" for v in sorted(fractional)[:5])
        raise LabelError(
            f"label raster {path} holds {src.dtypes[band - 1]} values that are not whole numbers ({shown}, ...); "
            "class ids must be integers: round or reclassify it (e.g. gdal_calc.py), or set those pixels as nodata"
        )
    return np.array(sorted(found), dtype=np.int64)


def _raster_colours(src, band: int, values) -> dict[int, tuple[int, int, int]] | None:
    try:
        cmap = src.colormap(band)
    except Exception:
        return None
    return {int(v): tuple(int(c) for c in cmap[int(v)][:3]) for v in values if int(v) in cmap}


def open_raster_labels(path: Path, grid: SceneGrid, mapping, background, unknown_keys: str = "error"):
    import rasterio
    from rasterio.warp import transform_bounds

    try:
        src = rasterio.open(path)
    except Exception as exc:
        raise LabelError(
            f"cannot read labels {path}: {first_line(exc)}; check it is a raster or vector file"
        ) from exc
    with src:
        band = 1
        report = [f"label raster {path}: {src.width}x{src.height}, {src.dtypes[0]}, {crs_name(src.crs)}"]
        if src.count > 1:
            report.append(f"label raster has {src.count} bands; using band 1")
        kind = np.dtype(src.dtypes[band - 1]).kind
        if kind not in "iuf":
            raise LabelError(
                f"label raster {path} is {src.dtypes[band - 1]}, not a number type; write class ids as an integer raster"
            )
        if kind == "f":
            report.append("floating-point label raster: whole values are class ids; NaN and nodata are unlabelled")
        offset, warp = _raster_placement(src, grid, path, report)

        source_values = _scan_values(src, band, path)
        if source_values.size == 0:
            raise LabelError(f"label raster {path} has no valid pixel; check its nodata value")
        report.append(f"label values found: {preview(source_values.tolist(), 20)}")
        mapped_keys = {normalise_key(k, True) for k in (mapping or {})}
        if IGNORE_INDEX in source_values and IGNORE_INDEX not in mapped_keys:
            report.append(f"label value {IGNORE_INDEX} is read as 'no label' (ignored)")
            source_values = source_values[source_values != IGNORE_INDEX]
            if source_values.size == 0:
                raise LabelError(
                    f"label raster {path} holds only the ignore value {IGNORE_INDEX}; check the file"
                )
        if mapping:
            key_to_value, pairs = apply_mapping(
                [int(v) for v in source_values], True, mapping, report, where=f"label raster {path}",
                unknown_keys=unknown_keys,
            )
            table = sorted_table(pairs)
            src_vals = [v for v in source_values.tolist() if key_to_value[int(v)] is not None]
            targets = [key_to_value[int(v)] for v in src_vals]
        else:
            bad = [int(v) for v in source_values if not 0 <= v <= 254]
            if bad:
                raise LabelError(
                    f"label raster {path} has values {preview(bad)} outside 0..254; set them as nodata or map "
                    "them to ids 0..254 with a mapping"
                )
            values = [int(v) for v in source_values]
            table = sorted_table({v: str(v) for v in values}, _raster_colours(src, band, values))
            src_vals, targets = values, values

        table, background_index = with_background(table, background, report)
        index_of = {v: i for i, v in enumerate(table.values)}
        source_indices = [index_of[t] for t in targets]

        if warp:
            label_bbox = transform_bounds(src.crs, grid.crs, *src.bounds)
        elif offset is not None:
            label_bbox = SceneGrid(src.width, src.height, src.transform, src.crs).bbox()
        overlap = bbox_overlap_fraction(grid.bbox(), label_bbox)
        if overlap <= 0:
            raise LabelError(
                f"labels {path} do not overlap the scene: labels {fmt_bbox(label_bbox)}, scene "
                f"{fmt_bbox(grid.bbox())} in {grid.crs_name}; check both files cover the same area"
            )
        report.append(f"labels' extent covers {overlap:.1%} of the scene")
    return RasterLabels(
        path,
        grid,
        table,
        band=band,
        source_values=src_vals,
        source_indices=source_indices,
        offset=offset,
        warp=warp,
        background_index=background_index,
        overlap=overlap,
        report=report,
    )


def _raster_placement(src, grid: SceneGrid, path, report: list[str]):
    """(offset, warp): an aligned grid is read with a pixel offset, anything else through a WarpedVRT."""
    same_size = (src.width, src.height) == (grid.width, grid.height)
    if (
        same_size
        and _transforms_close(src.transform, grid.transform)
        and (same_crs(src.crs, grid.crs) or src.crs is None or grid.crs is None)
    ):
        if not same_crs(src.crs, grid.crs):
            report.append(
                "label raster and scene differ in CRS presence but share size and transform: same grid"
            )
        if src.transform.is_identity:
            report.append(
                "identity transform (not georeferenced): labels taken to be on the scene's pixel grid"
            )
        return (0, 0), False
    if src.crs is None or grid.crs is None:
        raise LabelError(
            f"label raster {path} ({crs_name(src.crs)}) and scene ({grid.crs_name}) are on different grids and "
            "one has no CRS; georeference both, or give labels on the scene's exact grid"
        )
    if same_crs(src.crs, grid.crs):
        offset = _aligned_offset(src, grid)
        if offset is not None:
            if offset != (0, 0) or not same_size:
                report.append(f"label raster is on the scene's pixel grid, offset {offset} pixels (row, col)")
            return offset, False
    report.append(
        f"label raster warped to the scene grid ({crs_name(src.crs)} -> {grid.crs_name}, nearest neighbour)"
    )
    return None, True


