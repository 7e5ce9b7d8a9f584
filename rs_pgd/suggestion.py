"""``suggest()``: where labels would help the model most, as polygons a GIS user can open and label (no torch here).

The scene is predicted once with :func:`rs_pgd.predict` (streaming, seamless, bounded memory) into a temporary
class map and uncertainty raster (:mod:`rs_pgd.uncertainty`). Those are then read back window by window and summed
per *cell* of ``size / 2`` pixels: valid pixels, summed uncertainty, pixels of each predicted class and, with
``labels``, pixels already labelled. A candidate region is a square of 2 x 2 cells (``size`` pixels, on a lattice
of ``size / 2``), so every region's sums are four cell sums; no scene-sized array is ever built (memory: one
window of pixels plus ``classes + 3`` 8-byte numbers per cell: 40 bytes per 128 x 128 px cell with two classes at
the default size, 25 MB for a 100 000 x 100 000 px scene).

The score of a region is its mean uncertainty over valid pixels, times ``1 - labelled_weight x labelled share``
when labels are given (a region already labelled is worth less). Regions with fewer than ``min_valid`` of their
pixels valid are no candidates. The ``top`` regions are picked greedily by score, each one excluding the candidates
that overlap it, so no two suggested regions overlap.

The output (GeoPackage, or GeoJSON in WGS84 as RFC 7946 asks) has one square polygon per region with ``rank``
(1 = label first), ``score``, ``mean_uncertainty``, ``valid_share``, ``labelled_share`` (with labels),
``top_class``, one ``share_<class>`` column per predicted class, and the pixel window (``row_off``, ``col_off``,
``height``, ``width``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rs_pgd import defaults
from rs_pgd.errors import LabelError, OptionError, OutputError

DEFAULT_TOP = defaults.SUGGEST_TOP
DEFAULT_SIZE = defaults.SUGGEST_SIZE
DEFAULT_MIN_VALID = defaults.SUGGEST_MIN_VALID
DEFAULT_LABELLED_WEIGHT = defaults.SUGGEST_LABELLED_WEIGHT
DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
"""Output vector format by file extension."""

READ_COLUMNS = 4096
"""Widest window read at once (pixels; rounded down to whole cells)."""


@dataclass
class SuggestResult:
    """What :func:`suggest` returns."""

    output: Path
    regions: list = field(default_factory=list)
    candidates: int = 0
    size: int = DEFAULT_SIZE
    uncertainty: Path | None = None
    uncertainty_kind: str = defaults.UNCERTAINTY_KIND
    seconds: float = 0.0
    predict_seconds: float = 0.0


@dataclass
class CellStats:
    """Sums per cell of ``cell`` pixels (the last row and column of cells may be cut by the scene's edge).

    Attributes
    ----------
    cell : int
        Cell side in pixels.
    height, width : int
        Scene size in pixels.
    valid : ndarray (rows, cols) int64
        Pixels with a prediction.
    uncertainty : ndarray (rows, cols) float64
        Summed uncertainty (in [0, 1] per pixel) over the valid pixels.
    classes : ndarray (K, rows, cols) int64
        Valid pixels predicted as each class.
    labelled : ndarray (rows, cols) int64 or None
        Valid pixels that already have a label.
    """

    cell: int
    height: int
    width: int
    valid: np.ndarray
    uncertainty: np.ndarray
    classes: np.ndarray
    labelled: np.ndarray | None = None


def check_options(output, top, size, labelled_weight, min_valid) -> str:
    """Raise :class:`OptionError` / :class:`OutputError` for bad options; return the output's OGR driver."""
    suffix = Path(output).suffix.lower()
    if suffix not in DRIVERS:
        given = f"ends in {suffix}" if suffix else "has no file suffix"
        raise OutputError(f"-o {Path(output).name} {given}, but rs-pgd suggest writes a GeoPackage or GeoJSON; "
                          f"name it {Path(output).stem}.gpkg")
    for name, value, low in (("--top", top, 1), ("--size", size, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise OptionError(f"{name} {value!r} must be a whole number of at least {low}")
    if size % 2:
        raise OptionError(f"--size {size} must be an even number of pixels (regions lie on a lattice of size / 2), "
                          f"e.g. {size + 1}")
    if not 0 <= labelled_weight <= 1:
        raise OptionError(f"--labelled-weight {labelled_weight} must lie in [0, 1] (0: ignore the labels' extent, "
                          "1: a fully labelled region scores 0)")
    if not 0 < min_valid <= 1:
        raise OptionError(f"--min-valid {min_valid} must lie in (0, 1]")
    return DRIVERS[suffix]


def suggest(model, scene, output, *, top: int = DEFAULT_TOP, size: int = DEFAULT_SIZE, labels=None,
            class_column=None, layer=None, mapping=None, labelled_weight: float = DEFAULT_LABELLED_WEIGHT,
            min_valid: float = DEFAULT_MIN_VALID, uncertainty=None, uncertainty_kind=defaults.UNCERTAINTY_KIND,
            tta: bool = False, batch_size=None, device=defaults.DEVICE, precision=defaults.PRECISION, workers=None,
            bands=None, nodata=None, progress: bool = True) -> SuggestResult:
    """Write the ``top`` regions of ``scene`` where labels would help ``model`` most to a vector file.

    Parameters
    ----------
    model : path
        Checkpoint from :func:`rs_pgd.fit` or ONNX file from :func:`rs_pgd.export`.
    scene : path
        The scene to look at (any GDAL raster with the model's bands).
    output : path
        ``.gpkg`` (in the scene's CRS) or ``.geojson`` (WGS84): one square polygon per region, ranked.
    top : int
        Number of regions.
    size : int
        Side of a region in pixels, even (regions lie on a lattice of ``size / 2`` pixels).
    labels : path, optional
        Labels the model already has (vector or raster); their share of each region is reported and, with
        ``labelled_weight``, lowers its score. ``class_column``, ``layer`` and ``mapping`` as in
        :func:`rs_pgd.labels.open_labels`.
    labelled_weight : float
        In [0, 1]: score = mean uncertainty x (1 - labelled_weight x labelled share).
    min_valid : float
        Smallest share of a region's pixels with data for it to be a candidate.
    uncertainty : path, optional
        Keep the uncertainty raster here (a COG); by default it is a temporary file.
    uncertainty_kind : {"least-confidence", "margin", "entropy"}
        The per-pixel measure (:mod:`rs_pgd.uncertainty`).
    tta, batch_size, device, precision, workers, bands, nodata, progress
        As for :func:`rs_pgd.predict`.

    Returns
    -------
    SuggestResult
        ``regions``: the written rows as dicts (rank order), ``candidates``: how many regions were ranked.

    Every check that needs no model runs first (options, the output paths, the labels, and
    :func:`rs_pgd.config.preflight_predict` for the scene and the model), so bad input writes nothing.
    """
    from rs_pgd.config import preflight_predict
    from rs_pgd.infer import predict
    from rs_pgd.output import check_outputs
    from rs_pgd.raster import scene_info

    started = time.perf_counter()
    driver = check_options(output, top, size, labelled_weight, min_valid)
    output = Path(output)
    check_outputs({"output": output, "--uncertainty": uncertainty}, inputs=[model, scene, labels])
    probe = output.with_name(f".{output.name}.classes.tif")  # where the temporary class map goes; not created
    preflight_predict(model, scene, probe, uncertainty=uncertainty, uncertainty_kind=uncertainty_kind,
                      batch_size=batch_size, workers=workers, bands=bands)
    source = None
    if labels is not None:
        from rs_pgd.labels import open_labels

        if not Path(labels).exists():
            raise LabelError(f"labels not found: {labels}; check the path")
        source = open_labels(labels, scene_info(scene), class_column=class_column, mapping=mapping, layer=layer)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent if str(output.parent) else ".") as tmp:
        classes_path = Path(tmp) / "classes.tif"
        unc_path = Path(uncertainty) if uncertainty is not None else Path(tmp) / "uncertainty.tif"
        predicted = predict(model, scene, classes_path, uncertainty=unc_path, uncertainty_kind=uncertainty_kind,
                            tta=tta, batch_size=batch_size, device=device, precision=precision, workers=workers,
                            bands=bands, nodata=nodata, cog=uncertainty is not None, progress=progress)
        stats, names, georef = cell_stats(unc_path, classes_path, size // 2, source, progress=progress)
    scores, candidate = region_scores(stats, size, labelled_weight, min_valid)
    if not candidate.any():
        raise OptionError(f"no region of {size} x {size} px has {min_valid:.0%} of its pixels with data; "
                          "lower --size or --min-valid")
    picked = select_regions(scores, candidate, top)
    rows = region_rows(stats, picked, scores, size, names, labelled=source is not None)
    _write_regions(rows, output, driver, georef, inputs=[model, scene, labels])
    return SuggestResult(output, rows, int(candidate.sum()), size, Path(uncertainty) if uncertainty else None,
                         uncertainty_kind, time.perf_counter() - started, predicted.seconds)


# -- aggregation ---------------------------------------------------------------------------------------------------
def cell_stats(uncertainty_path, classes_path, cell: int, labels=None, progress: bool = False):
    """Sum the uncertainty raster and the class map per cell of ``cell`` pixels, window by window.

    Parameters
    ----------
    uncertainty_path : path
        uint8 uncertainty raster (``predict --uncertainty``): ``u * 254``, 255 nodata.
    classes_path : path
        The class map of the same run (its grid, class names in its tags).
    cell : int
        Cell side in pixels.
    labels : LabelSource, optional
        Read on the same grid; its labelled pixels are counted per cell.

    Returns
    -------
    (CellStats, dict, dict)
        The sums; the class map's ``{value: name}``; its ``crs`` and ``transform``.
    """
    import rasterio
    from rasterio.windows import Window

    from rs_pgd.classes import IGNORE_INDEX, open_class_map, read_class_names
    from rs_pgd.progress import track
    from rs_pgd.uncertainty import NODATA, SCALE

    with open_class_map(classes_path) as cls_ds, rasterio.open(uncertainty_path) as unc_ds:
        names = read_class_names(cls_ds)
        values = sorted(names)
        height, width = cls_ds.height, cls_ds.width
        if (unc_ds.height, unc_ds.width) != (height, width):
            raise OutputError(f"{uncertainty_path} and {classes_path} differ in size; write both in one predict run")
        georef = {"crs": cls_ds.crs, "transform": cls_ds.transform}
        rows, cols = -(-height // cell), -(-width // cell)
        stats = CellStats(cell, height, width, np.zeros((rows, cols), np.int64), np.zeros((rows, cols), np.float64),
                          np.zeros((len(values), rows, cols), np.int64),
                          np.zeros((rows, cols), np.int64) if labels is not None else None)  # fmt: skip
        lut = np.full(256, -1, dtype=np.int64)
        for index, value in enumerate(values):
            lut[value] = index
        step = max(cell, READ_COLUMNS // cell * cell)
        chunks = [(r, c) for r in range(0, height, cell) for c in range(0, width, step)]
        for r0, c0 in (track(chunks, "suggest") if progress else chunks):  # JSON lines with --progress json
            h, w = min(cell, height - r0), min(step, width - c0)
            window = Window(c0, r0, w, h)
            u = unc_ds.read(1, window=window)
            predicted = cls_ds.read(1, window=window)
            valid = u != NODATA
            i, j0 = r0 // cell, c0 // cell
            starts = np.arange(0, w, cell)
            j1 = j0 + len(starts)
            stats.valid[i, j0:j1] += _cells(valid, starts)
            stats.uncertainty[i, j0:j1] += _cells(np.where(valid, u, 0).astype(np.float64), starts) / SCALE
            index = lut[predicted]
            for k in range(len(values)):
                stats.classes[k, i, j0:j1] += _cells(valid & (index == k), starts)
            if labels is not None:
                labelled = labels.read((r0, c0, r0 + h, c0 + w)) != IGNORE_INDEX
                stats.labelled[i, j0:j1] += _cells(valid & labelled, starts)
    return stats, names, georef


def _cells(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of a ``(rows, width)`` band over the column ranges that begin at ``starts``."""
    column_sums = x.sum(axis=0, dtype=np.float64 if x.dtype.kind == "f" else np.int64)
    return np.add.reduceat(column_sums, starts)


def _region_sum(x: np.ndarray) -> np.ndarray:
    """Sums over 2 x 2 cells for every origin cell ``(i, j)`` with ``i < rows - 1`` and ``j < cols - 1`` (one origin
    along an axis that has a single cell)."""
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, 1), (0, 1)])
    total = padded[..., :-1, :-1] + padded[..., 1:, :-1] + padded[..., :-1, 1:] + padded[..., 1:, 1:]
    rows, cols = x.shape[-2:]
    return total[..., : max(rows - 1, 1), : max(cols - 1, 1)]


def region_scores(stats: CellStats, size: int, labelled_weight: float = DEFAULT_LABELLED_WEIGHT,
                  min_valid: float = DEFAULT_MIN_VALID) -> tuple[np.ndarray, np.ndarray]:
    """Score of every candidate region (origins on the cell lattice) and which regions are candidates.

    Returns
    -------
    (ndarray, ndarray)
        float64 scores (``mean uncertainty x (1 - labelled_weight x labelled share)``, NaN for no candidate) and
        the bool candidate mask, both ``(origin rows, origin cols)``.
    """
    valid = _region_sum(stats.valid)
    nominal = min(size, stats.height) * min(size, stats.width)
    candidate = valid >= min_valid * nominal
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = _region_sum(stats.uncertainty) / valid
        score = mean.copy()
        if stats.labelled is not None:
            score *= 1.0 - labelled_weight * _region_sum(stats.labelled) / valid
    return np.where(candidate, score, np.nan), candidate


def select_regions(scores: np.ndarray, candidate: np.ndarray, top: int) -> list[tuple[int, int]]:
    """Origins ``(i, j)`` of up to ``top`` regions, greedily by ``scores`` (highest first), none overlapping.

    Two regions of 2 x 2 cells overlap when their origins differ by less than 2 cells along both axes; each pick
    removes the candidates that overlap it. Ties go to the earlier origin in row-major order. Pass random scores
    for random non-overlapping regions of the same lattice.
    """
    flat = np.where(candidate, scores, -np.inf).ravel()
    order = np.lexsort((np.arange(flat.size), -flat))  # by score descending, then row-major
    blocked = ~candidate.copy()
    rows, cols = candidate.shape
    picked: list[tuple[int, int]] = []
    for position in order:
        if len(picked) >= top:
            break
        i, j = divmod(int(position), cols)
        if blocked[i, j]:
            continue
        picked.append((i, j))
        blocked[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2] = True
    return picked


def region_rows(stats: CellStats, picked, scores, size: int, names: dict, labelled: bool) -> list[dict]:
    """One dict per picked region (rank order): scores, shares and the pixel window."""
    valid = _region_sum(stats.valid)
    unc = _region_sum(stats.uncertainty)
    classes = _region_sum(stats.classes)
    lab = _region_sum(stats.labelled) if labelled else None
    values = sorted(names)
    rows = []
    for rank, (i, j) in enumerate(picked, start=1):
        n = int(valid[i, j])
        row_off, col_off = i * stats.cell, j * stats.cell
        shares = classes[:, i, j] / n
        row = {"rank": rank, "score": float(scores[i, j]), "mean_uncertainty": float(unc[i, j] / n),
               "valid_share": n / (min(size, stats.height - row_off) * min(size, stats.width - col_off))}
        if labelled:
            row["labelled_share"] = float(lab[i, j] / n)
        row["top_class"] = str(names[values[int(np.argmax(shares))]]) if len(values) else ""
        for value, share in zip(values, shares):
            row[f"share_{names[value]}"] = float(share)
        row.update(row_off=row_off, col_off=col_off, height=min(size, stats.height - row_off),
                   width=min(size, stats.width - col_off))
        rows.append(row)
    return rows


def _write_regions(rows: list[dict], output: Path, driver: str, georef: dict, inputs) -> None:
    """The regions as square polygons in the scene's CRS (WGS84 for GeoJSON), written atomically."""
    import geopandas as gpd
    from shapely.geometry import box

    from rs_pgd.output import AtomicOutput

    transform = georef["transform"]
    geometries = []
    for row in rows:
        x0, y0 = transform * (row["col_off"], row["row_off"])
        x1, y1 = transform * (row["col_off"] + row["width"], row["row_off"] + row["height"])
        geometries.append(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    frame = gpd.GeoDataFrame(rows, geometry=geometries, crs=georef["crs"])
    if not rows:
        frame = gpd.GeoDataFrame({"rank": np.zeros(0, np.int32), "score": np.zeros(0)},
                                 geometry=gpd.GeoSeries([], crs=georef["crs"]), crs=georef["crs"])  # fmt: skip
    kwargs = {"driver": driver, "engine": "pyogrio"}
    if driver == "GPKG":
        kwargs["layer"] = output.stem
    else:
        if frame.crs is not None:
            frame = frame.to_crs("EPSG:4326")  # RFC 7946
            kwargs["RFC7946"] = "YES"
    if not rows:
        kwargs["geometry_type"] = "Polygon"
    with AtomicOutput(output, inputs=inputs) as temp:
        frame.to_file(temp, **kwargs)


def format_regions(result: SuggestResult) -> str:
    """Terminal report of :func:`suggest`: one line per region."""
    lines = [f"Wrote {len(result.regions)} regions of {result.size} x {result.size} px to {result.output} "
             f"(ranked among {result.candidates} candidates by {result.uncertainty_kind} uncertainty)"]
    for row in result.regions:
        labelled = f"  labelled {row['labelled_share']:.0%}" if "labelled_share" in row else ""
        lines.append(f"  {row['rank']:>3}  score {row['score']:.3f}  uncertainty {row['mean_uncertainty']:.3f}"
                     f"{labelled}  mostly {row['top_class']}  rows {row['row_off']}-{row['row_off'] + row['height']}"
                     f" cols {row['col_off']}-{row['col_off'] + row['width']}")
    return "\n".join(lines)


__all__ = ["suggest", "SuggestResult", "CellStats", "cell_stats", "region_scores", "select_regions", "format_regions"]
