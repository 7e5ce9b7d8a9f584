"""Scene reading: describe a raster, read windows of it with reflect padding, and compute band statistics.

No torch here. A scene is any raster GDAL can open. :func:`scene_info` describes it and lists what may go wrong
with it; :class:`SceneReader` reads windows given in scene pixels, possibly reaching past the scene, and is safe
to pickle into DataLoader workers (it holds the path and opens the dataset lazily in each process).

Window reads never use ``boundless=True`` (about six times slower): the reader reads the part of the scene the
window needs and mirrors it. Pixels outside the scene take the value of their reflection about the scene edge
(numpy's ``"reflect"`` mode, repeated when the window reaches further than the scene is wide, and ``"edge"`` for a
scene one pixel wide), so a window equals the same slice of the whole scene reflect-padded with ``np.pad``.

Validity follows GDAL: a pixel is valid when every selected band has data there according to the band masks
(nodata tag, internal or external mask band, alpha band), its value is finite, and it differs from the preset's
nodata DN. Invalid pixels read as 0 after scaling.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from rs_pgd.errors import GridError, SceneError
from rs_pgd.presets import Preset, get_preset, resolve_bands

STD_EPSILON = 1e-6
"""Smallest standard deviation :func:`compute_band_stats` returns, so constant bands do not divide by zero."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# ---------------------------------------------------------------------------------------------------------------
# scene_info
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneInfo:
    """What a scene is: size, bands, georeferencing, layout, and the problems found with it.

    Attributes
    ----------
    path : str
    width, height, count : int
    dtype : str
        Data type of band 1 (see ``dtypes`` for every band).
    crs : rasterio.crs.CRS or None
    crs_string : str or None
        ``"EPSG:NNNN"`` when the CRS has an EPSG code, else its WKT; None without a CRS.
    transform : affine.Affine
    res : tuple of float
        Pixel size (x, y) in CRS units.
    bounds : rasterio.coords.BoundingBox
    nodata : float or None
    block_shapes : tuple of (int, int)
        Block (tile or strip) shape of each band.
    tiled : bool
    georeferenced : bool
        True when the scene has a CRS and a real (non-identity) transform.
    problems : tuple of str
        Plain-English warnings, empty when all is well.
    band_descriptions : tuple of (str or None)
    dtypes : tuple of str
    """

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    crs_string: str | None
    transform: object
    res: tuple[float, float]
    bounds: object
    nodata: float | None
    block_shapes: tuple[tuple[int, int], ...]
    tiled: bool
    georeferenced: bool
    problems: tuple[str, ...] = ()
    band_descriptions: tuple[str | None, ...] = ()
    dtypes: tuple[str, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.height, self.width

    def to_dict(self) -> dict:
        """JSON-ready description (plain str, int, float, list, None)."""
        return {
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "count": self.count,
            "dtype": self.dtype,
            "dtypes": list(self.dtypes),
            "crs": self.crs_string,
            "transform": [float(v) for v in tuple(self.transform)[:6]],
            "res": [float(v) for v in self.res],
            "bounds": [float(v) for v in self.bounds],
            "nodata": _json_float(self.nodata),
            "block_shapes": [list(shape) for shape in self.block_shapes],
            "tiled": self.tiled,
            "georeferenced": self.georeferenced,
            "problems": list(self.problems),
            "band_descriptions": list(self.band_descriptions),
        }


def scene_info(path) -> SceneInfo:
    """Describe the raster at ``path`` and list its problems.

    Raises
    ------
    SceneError
        If the file is missing, empty, not a raster, or corrupt (a block at its end cannot be read).
    """
    with open_scene(path) as ds:
        _check_last_block(ds, path)
        return _describe(ds, path)


def open_scene(path):
    """Open a raster with rasterio, turning every failure into a one-line :class:`SceneError`."""
    text = os.fspath(path)
    if _is_local(text):
        _check_local_file(Path(text))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(text)
    except RasterioIOError as exc:
        if _is_local(text) and _has_tiff_magic(Path(text)):
            raise SceneError(
                f"{text} looks like a TIFF but GDAL cannot read it (corrupt or truncated): copy or download it again"
            ) from exc
        raise SceneError(
            f"{text} is not a raster GDAL can read: give a GeoTIFF or another GDAL raster"
        ) from exc


def _is_local(text: str) -> bool:
    return not (text.startswith("/vsi") or "://" in text)


def _check_local_file(path: Path) -> None:
    if not path.exists():
        raise SceneError(f"scene not found: {path}: check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise SceneError(f"{path} is empty (0 bytes): copy or download it again")


def _has_tiff_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _check_last_block(ds, path) -> None:
    """Read the last block of the first and last band: a truncated file fails here, cheaply, not mid-training."""
    if ds.width == 0 or ds.height == 0 or ds.count == 0:
        raise SceneError(
            f"{path} has no pixels ({ds.width} x {ds.height}, {ds.count} bands): give a real scene"
        )
    block_rows, block_cols = ds.block_shapes[0]
    row_off = (ds.height - 1) // block_rows * block_rows
    col_off = (ds.width - 1) // block_cols * block_cols
    last = Window(col_off, row_off, ds.width - col_off, ds.height - row_off)
    try:
        ds.read(sorted({1, ds.count}), window=last)
    except RasterioIOError as exc:
        raise SceneError(
            f"{path} is corrupt or truncated (its last block cannot be read): copy it again"
        ) from exc


def _describe(ds, path) -> SceneInfo:
    crs = ds.crs
    transform = ds.transform
    identity = transform.is_identity
    has_gcps = bool(ds.gcps[0])
    return SceneInfo(
        path=os.fspath(path),
        width=ds.width,
        height=ds.height,
        count=ds.count,
        dtype=ds.dtypes[0],
        crs=crs,
        crs_string=crs_to_string(crs),
        transform=transform,
        res=tuple(float(v) for v in ds.res),
        bounds=ds.bounds,
        nodata=ds.nodata,
        block_shapes=tuple(tuple(shape) for shape in ds.block_shapes),
        tiled=_is_tiled(ds),
        georeferenced=crs is not None and not identity,
        problems=tuple(_problems(crs, transform, identity, has_gcps)),
        band_descriptions=tuple(ds.descriptions),
        dtypes=tuple(ds.dtypes),
    )


def require_north_up(info: SceneInfo, vector_labels: bool = False) -> None:
    """Refuse scenes whose pixels cannot be placed on a north-up map grid (and, with vector labels, no CRS).

    Parameters
    ----------
    info : SceneInfo
        From :func:`scene_info`.
    vector_labels : bool
        True when vector labels must be rasterised onto the scene: then the scene needs a CRS.

    Raises
    ------
    SceneError
        GCP-only placement, a rotated or sheared transform, or no CRS with vector labels.
    """
    name = Path(info.path).name
    if any(p.startswith("GCPs only") for p in info.problems):
        raise SceneError(
            f"{name} is placed by ground control points only (no geotransform): warp it to a north-up grid first, "
            f"e.g. gdalwarp -r bilinear {name} {Path(name).stem}_warped.tif"
        )
    t = info.transform
    if t.b != 0 or t.d != 0:
        raise SceneError(
            f"{name} has a rotated or sheared transform: warp it to a north-up grid first, "
            f"e.g. gdalwarp -r bilinear {name} {Path(name).stem}_northup.tif"
        )
    if vector_labels and info.crs is None:
        raise SceneError(
            f"{name} has no CRS, so vector labels cannot be placed on it: assign one "
            f"(rio edit-info --crs EPSG:XXXX {name}) or give a label raster on the scene's grid"
        )


def crs_to_string(crs: CRS | None) -> str | None:
    """``"EPSG:NNNN"`` when the CRS has an EPSG code, else its WKT; None for no CRS."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


def _is_tiled(ds) -> bool:
    block_rows, block_cols = ds.block_shapes[0]
    return block_cols < ds.width and block_rows > 1


def _problems(crs, transform, identity: bool, has_gcps: bool) -> list[str]:
    problems = []
    if crs is None:
        problems.append("no CRS: outputs will not line up with other data; assign one (rio edit-info --crs)")
    if has_gcps and identity:
        problems.append(
            "GCPs only: the scene is placed by ground control points, not a transform; warp it first"
        )
    elif identity:
        problems.append("identity transform: not georeferenced (pixel coordinates only)")
    elif transform.b != 0 or transform.d != 0:
        problems.append(
            "rotated or sheared transform: some GIS tools will misplace outputs; warp it north-up"
        )
    if crs is not None and crs.is_geographic:
        problems.append(f"geographic CRS ({crs_to_string(crs)}): pixel sizes are in degrees")
    return problems


def _json_float(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


# ---------------------------------------------------------------------------------------------------------------
# SceneReader
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class WindowData:
    """One window read from a scene.

    Attributes
    ----------
    image : numpy.ndarray
        float32 (C, H, W), after the preset's scale and offset; invalid pixels are 0.
    valid : numpy.ndarray
        bool (H, W): the pixel has data in every selected band. Padding mirrors the validity of its source pixel.
    inside : numpy.ndarray
        bool (H, W): the pixel lies inside the scene (False for padding).
    """

    image: np.ndarray
    valid: np.ndarray
    inside: np.ndarray


class SceneReader:
    """Read windows of one scene, reflect-padded past its edges.

    Pickle-safe: it holds the path and opens the dataset lazily in the process that reads (a handle is never
    pickled, and a handle inherited through ``fork`` is replaced).

    Parameters
    ----------
    path : str or path-like
        Any raster GDAL can open.
    bands : None, str, or sequence of int or str
        Bands to read: 1-based numbers or the preset's band names; None for the preset's default or every band.
    preset : str or Preset
        How to scale stored values (see :mod:`rs_pgd.presets`).

    Attributes
    ----------
    height, width : int
    count : int
        Number of selected bands.
    bands : tuple of int
        Selected 1-based band indexes.
    crs, transform, nodata, preset, dtype
    """

    def __init__(self, path, bands=None, preset: str | Preset = "generic"):
        self.path = os.fspath(path)
        self.preset = get_preset(preset)
        self._dataset = None
        self._pid = None
        ds = self._open()
        self.height = ds.height
        self.width = ds.width
        self.scene_count = ds.count
        self.bands = resolve_bands(bands, ds.count, self.preset)
        self.count = len(self.bands)
        self.crs = ds.crs
        self.transform = ds.transform
        self.dtype = ds.dtypes[self.bands[0] - 1]
        self.nodata = ds.nodata if ds.nodata is not None else self.preset.nodata
        self._all_valid = all(MaskFlags.all_valid in ds.mask_flag_enums[i - 1] for i in self.bands)
        self._floating = any(np.issubdtype(np.dtype(ds.dtypes[i - 1]), np.floating) for i in self.bands)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the scene in pixels."""
        return self.height, self.width

    @property
    def dataset(self):
        """The open rasterio dataset of this process (opened on first use)."""
        return self._open()

    def _open(self):
        if self._dataset is None or self._pid != os.getpid() or self._dataset.closed:
            self._dataset = open_scene(self.path)
            self._pid = os.getpid()
        return self._dataset

    def close(self) -> None:
        """Close the dataset handle of this process; a later read reopens it."""
        if self._dataset is not None and self._pid == os.getpid():
            self._dataset.close()
        self._dataset = None
        self._pid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_dataset"] = None
        state["_pid"] = None
        return state

    def __repr__(self):
        return (
            f"SceneReader({self.path!r}, bands={list(self.bands)}, preset={self.preset.name!r}, "
            f"shape=({self.count}, {self.height}, {self.width}))"
        )

    def read(self, bounds) -> WindowData:
        """Read the window ``bounds = (row_start, col_start, row_stop, col_stop)`` in scene pixels.

        The window may reach past the scene on any side (or lie wholly outside it on an axis): those pixels are
        filled by reflection about the scene edges, never with zeros pretending to be data.
        """
        row_start, col_start, row_stop, col_stop = _check_bounds(bounds)
        rows = reflect_indices(row_start, row_stop, self.height)
        cols = reflect_indices(col_start, col_stop, self.width)
        raw, valid = self._read_source(
            int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        )
        raw, valid = _gather(raw, valid, rows - rows.min(), cols - cols.min())
        image = self._scale(raw, valid)
        inside = _inside_mask(row_start, row_stop, self.height)[:, None] & _inside_mask(
            col_start, col_stop, self.width
        )
        return WindowData(image=image, valid=valid, inside=inside)

    def _read_source(self, row0: int, row1: int, col0: int, col1: int) -> tuple[np.ndarray, np.ndarray]:
        """Read a window that lies inside the scene: raw values and the per-pixel validity."""
        ds = self._open()
        window = Window(col0, row0, col1 - col0, row1 - row0)
        raw = ds.read(self.bands, window=window, masked=False)
        if self._all_valid:
            valid = np.ones(raw.shape[1:], dtype=bool)
        else:
            valid = np.all(ds.read_masks(self.bands, window=window) > 0, axis=0)
        if self._floating:
            valid &= np.all(np.isfinite(raw), axis=0)
        if self.preset.nodata is not None:
            valid &= ~np.any(raw == self.preset.nodata, axis=0)
        return raw, valid

    def _scale(self, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        image = raw.astype(np.float32, copy=True)
        if not self.preset.is_identity:
            image *= np.float32(self.preset.scale)
            image += np.float32(self.preset.offset)
        image[:, ~valid] = 0.0
        return image


def reflect_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Scene indices that fill positions ``start..stop-1`` of an axis of ``length`` pixels, by reflection.

    Same as ``np.pad(np.arange(length), pad, mode="reflect")`` sliced to the window: positions past the edge
    mirror about the edge pixel, repeatedly when they reach further than the axis is long; an axis one pixel long
    repeats that pixel (``"edge"``).
    """
    positions = np.arange(start, stop, dtype=np.int64)
    if length == 1:
        return np.zeros_like(positions)
    period = 2 * (length - 1)
    folded = np.mod(positions, period)
    return np.where(folded < length, folded, period - folded)


def _gather(raw: np.ndarray, valid: np.ndarray, rows: np.ndarray, cols: np.ndarray):
    """Pick rows and columns of the source block; a no-op when the window lies inside the scene."""
    if not _is_arange(rows, raw.shape[1]):
        raw = raw[:, rows, :]
        valid = valid[rows, :]
    if not _is_arange(cols, raw.shape[2]):
        raw = raw[:, :, cols]
        valid = valid[:, cols]
    return raw, valid


def _is_arange(indices: np.ndarray, length: int) -> bool:
    return (
        len(indices) == length
        and indices[0] == 0
        and indices[-1] == length - 1
        and bool(np.all(np.diff(indices) == 1))
    )


def _inside_mask(start: int, stop: int, length: int) -> np.ndarray:
    positions = np.arange(start, stop)
    return (positions >= 0) & (positions < length)


def _check_bounds(bounds) -> tuple[int, int, int, int]:
    try:
        row_start, col_start, row_stop, col_stop = (int(v) for v in bounds)
    except (TypeError, ValueError) as exc:
        raise GridError(
            f"bounds {bounds!r} are not (row_start, col_start, row_stop, col_stop) integers"
        ) from exc
    if row_stop <= row_start or col_stop <= col_start:
        raise GridError(f"bounds {bounds!r} are empty: stops must be greater than starts")
    return row_start, col_start, row_stop, col_stop


# ---------------------------------------------------------------------------------------------------------------
# Band statistics
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BandStats:
    """Per-band mean, standard deviation and number of valid pixels (after preset scaling).

    Attributes
    ----------
    mean, std, count : numpy.ndarray
        float64 arrays of length C (selected bands). ``std`` is the population standard deviation, floored at
        :data:`STD_EPSILON`.
    """

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready lists, stored in checkpoints."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": self.count.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> BandStats:
        """Inverse of :meth:`to_dict`."""
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            std=np.asarray(data["std"], dtype=np.float64),
            count=np.asarray(data["count"], dtype=np.float64),
        )


def compute_band_stats(
    reader: SceneReader, tile: int = 512, max_windows: int = 64, seed: int = 0
) -> BandStats:
    """Per-band mean and std of valid pixels over a random sample of non-overlapping scene tiles.

    Streams: one tile in memory at a time, partial results merged with Chan et al.'s parallel algorithm in
    float64. The sample is deterministic for a given seed; with ``max_windows`` at least the number of tiles the
    whole scene is used and the result is exact.

    Raises
    ------
    SceneError
        If the sampled tiles hold no valid pixel.
    """
    if tile < 1 or max_windows < 1:
        raise GridError(f"tile ({tile}) and max_windows ({max_windows}) must be at least 1")
    tiles = _sample_tiles(reader.height, reader.width, tile, max_windows, seed)
    count = np.zeros(reader.count)
    mean = np.zeros(reader.count)
    m2 = np.zeros(reader.count)
    for bounds in tiles:
        window = reader.read(bounds)
        count, mean, m2 = _merge(count, mean, m2, *_tile_moments(window.image, window.valid))
    if not np.all(count > 0):
        raise SceneError(
            f"{reader.path} has no valid pixel in the sampled tiles: check its nodata value and mask"
        )
    std = np.maximum(np.sqrt(m2 / count), STD_EPSILON)
    return BandStats(mean=mean, std=std, count=count)


def merge_band_stats(parts: list[BandStats]) -> BandStats:
    """Band statistics of several scenes together (pooled mean and variance, weighted by valid pixel counts)."""
    if len(parts) == 1:
        return parts[0]
    count = np.sum([np.asarray(p.count, dtype=np.float64) for p in parts], axis=0)
    mean = np.sum([np.asarray(p.count) * np.asarray(p.mean) for p in parts], axis=0) / count
    second = np.sum([np.asarray(p.count) * (np.asarray(p.std) ** 2 + (np.asarray(p.mean) - mean) ** 2)
                     for p in parts], axis=0) / count
    return BandStats(mean=mean, std=np.maximum(np.sqrt(second), STD_EPSILON), count=count)


def _sample_tiles(
    height: int, width: int, tile: int, max_windows: int, seed: int
) -> list[tuple[int, int, int, int]]:
    """Non-overlapping tiles covering the scene, clipped to it; a sorted random subset of at most max_windows."""
    tiles = [
        (row, col, min(row + tile, height), min(col + tile, width))
        for row in range(0, height, tile)
        for col in range(0, width, tile)
    ]
    if len(tiles) <= max_windows:
        return tiles
    chosen = np.random.default_rng(seed).choice(len(tiles), size=max_windows, replace=False)
    return [tiles[i] for i in sorted(chosen)]


def _tile_moments(image: np.ndarray, valid: np.ndarray):
    values = image[:, valid].astype(np.float64)
    n = values.shape[1]
    if n == 0:
        zeros = np.zeros(image.shape[0])
        return zeros, zeros, zeros
    mean = values.mean(axis=1)
    m2 = ((values - mean[:, None]) ** 2).sum(axis=1)
    return np.full(image.shape[0], float(n)), mean, m2


def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.: combine count, mean and sum of squared deviations of two disjoint samples."""
    n = n_a + n_b
    safe_n = np.where(n > 0, n, 1.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * n_b / safe_n
    m2 = m2_a + m2_b + delta**2 * n_a * n_b / safe_n
    return n, mean, m2


def normalise(image: np.ndarray, valid: np.ndarray, stats: BandStats) -> np.ndarray:
    """``(image - mean) / std`` per band as float32, with invalid pixels set to 0."""
    mean = np.asarray(stats.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(stats.std, dtype=np.float32)[:, None, None]
    if image.shape[0] != mean.shape[0]:
        raise SceneError(
            f"image has {image.shape[0]} bands but the statistics have {mean.shape[0]}: use the same band selection"
        )
    out = (image.astype(np.float32) - mean) / std
    out[:, ~valid] = 0.0
    return out


GDAL_CACHEMAX_MB = 64
"""rs-pgd's cap on GDAL's block cache, in MiB, unless ``GDAL_CACHEMAX`` is already set.

GDAL's default is 5 % of RAM per process (1.2 GB on a 24 GB machine), and reading every window of a large scene
fills it: fit's peak RSS on a 16k x 16k scene was 1.81x that on a 1k x 1k scene with the default and 1.03x with
64 MiB (docs/benchmarks.md). Windows are read once per pass, so a small cache costs little.
"""


@contextlib.contextmanager
def gdal_env(cache_mb: int = GDAL_CACHEMAX_MB, **options):
    """A ``rasterio.Env`` with rs-pgd's GDAL settings: the block cache capped at ``cache_mb`` MiB (unless the user
    set ``GDAL_CACHEMAX``), plus any other GDAL ``options``. The previous settings return on exit.

    Usable as a context manager or as a decorator. DataLoader workers forked inside it inherit the cache cap.
    """
    settings = dict(options)
    if "GDAL_CACHEMAX" not in os.environ:
        settings["GDAL_CACHEMAX"] = int(cache_mb) * 2**20
    with rasterio.Env(**settings):
        yield
