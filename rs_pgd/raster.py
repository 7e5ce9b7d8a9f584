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
nodata DN (or the user's ``nodata`` value, for fill pixels the file does not tag). Invalid pixels read as 0
after scaling. Alpha bands (colour interpretation ``alpha``) are masks, never model bands: the default band
selection leaves them out and GDAL's band masks already turn their zeros into invalid pixels.

Scenes may be remote: ``https://`` URLs (read through GDAL's ``/vsicurl/``), ``s3://``, ``gs://``, ``az://`` and
any ``/vsi...`` path. Every open and read of a remote scene runs inside :func:`remote_env`, GDAL settings made for
windowed range reads (no directory listing, bounded caches, retries); a network failure is one
:class:`~rs_pgd.errors.SceneError` line naming the URL.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from rs_pgd.errors import GridError, SceneError
from rs_pgd.presets import FROM_SCENE, Preset, get_preset, resolve_bands, scene_preset

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
    alpha_bands : tuple of int
        1-based bands whose colour interpretation is alpha: validity masks, not data.
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
    alpha_bands: tuple[int, ...] = ()

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
            "alpha_bands": list(self.alpha_bands),
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


REMOTE_SCHEMES = {"http://": "/vsicurl/", "https://": "/vsicurl/", "s3://": "/vsis3/", "gs://": "/vsigs/",
                  "az://": "/vsiaz/"}
"""URL schemes rs-pgd turns into GDAL virtual file system paths (``s3://bucket/key`` -> ``/vsis3/bucket/key``)."""

REMOTE_GDAL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing, no probing for sidecar files
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "15",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(32 * 2**20),
    "CPL_VSIL_CURL_CACHE_SIZE": str(64 * 2**20),
}
"""GDAL settings for windowed reads of remote COGs: a window costs a few range requests, caches stay bounded
(32 MiB per open file, 64 MiB of downloaded chunks per process) and transient HTTP errors are retried. Only remote
scenes get them: ``EMPTY_DIR`` would hide a local file's ``.msk``/``.aux.xml`` sidecars. A value set in the
environment (e.g. ``GDAL_HTTP_MAX_RETRY=10``) wins."""


def is_remote(path) -> bool:
    """True for URLs and GDAL virtual file system paths (``/vsicurl/``, ``/vsis3/``, ``/vsizip/``, ...)."""
    text = os.fspath(path)
    return text.startswith("/vsi") or "://" in text


def gdal_path(path) -> str:
    """The path GDAL opens: ``https://`` -> ``/vsicurl/https://``, ``s3://b/k`` -> ``/vsis3/b/k``; others unchanged."""
    text = os.fspath(path)
    for scheme, prefix in REMOTE_SCHEMES.items():
        if text.startswith(scheme):
            return prefix + (text if prefix == "/vsicurl/" else text[len(scheme):])
    return text


def remote_options() -> dict:
    """:data:`REMOTE_GDAL_OPTIONS` less those the user set in the environment."""
    return {k: v for k, v in REMOTE_GDAL_OPTIONS.items() if k not in os.environ}


def remote_env(path=None):
    """A ``rasterio.Env`` with :data:`REMOTE_GDAL_OPTIONS` for a remote ``path`` (or for any when None).

    rasterio's Env sets GDAL options for the calling thread while it is entered, so every open *and* read of a
    remote dataset runs inside one; a local path gets a no-op context.
    """
    if path is not None and not (is_remote(path) or is_stac_item(path)):
        return contextlib.nullcontext()
    return rasterio.Env(**remote_options())


def open_scene(path):
    """Open a raster with rasterio, turning every failure into a one-line :class:`SceneError`.

    ``path`` may be a local file, a URL (``https://``, ``s3://``, ...) or a GDAL ``/vsi...`` path.
    """
    text = os.fspath(path)
    if _is_local(text):
        _check_local_file(Path(text))
    if is_stac_item(text):
        source = stac_item_vrt(text)
    else:
        source = gdal_path(text)
    try:
        with warnings.catch_warnings(), remote_env(text):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(source)
    except RasterioIOError as exc:
        if not _is_local(text):
            raise SceneError(
                f"cannot open {text} ({_first_line(exc)}): check the URL or path and your network connection, "
                "then run again"
            ) from exc
        if _has_tiff_magic(Path(text)):
            raise SceneError(
                f"{text} looks like a TIFF but GDAL cannot read it (corrupt or truncated): copy or download it again"
            ) from exc
        raise SceneError(
            f"{text} is not a raster GDAL can read: give a GeoTIFF or another GDAL raster"
        ) from exc


# -- STAC items as scenes ---------------------------------------------------------------------------------------
STAC_SKIPPED_ROLES = {"thumbnail", "overview", "metadata", "visual"}


def is_stac_item(path) -> bool:
    """True for a path or URL ending in ``.json`` (a STAC item: its image assets are read as one scene)."""
    text = os.fspath(path).split("?", 1)[0].lower()
    return text.endswith(".json") or text.endswith(".geojson")


@functools.lru_cache(maxsize=16)
def stac_item_vrt(path: str) -> str:
    """A GDAL VRT (XML text) that stacks the image assets of the STAC item at ``path`` as bands.

    Bands keep the item's asset order and are described by their asset keys, so ``--bands red,green,nir`` picks
    them (see :func:`rs_pgd.presets.resolve_bands`). The grid is that of the finest asset; coarser assets of the
    same CRS (20 m bands next to 10 m ones) are resampled onto it with nearest neighbour by GDAL. Assets with
    another CRS or a role such as thumbnail or overview are left out. Each asset's ``raster:bands`` nodata,
    scale and offset are recorded in the VRT band.
    """
    item = _load_item(path)
    assets = []
    for key, asset in (item.get("assets") or {}).items():
        if not _is_image_asset(asset):
            continue
        href = _resolve_href(path, asset["href"])
        try:
            with remote_env(href), rasterio.open(gdal_path(href)) as ds:
                assets.append((key, asset, gdal_path(href), ds.crs, ds.transform, ds.width, ds.height, ds.dtypes[0],
                               ds.nodata))
        except RasterioIOError as exc:
            raise SceneError(f"cannot open asset {key!r} of {path} ({_first_line(exc)}): check the item and your "
                             "network connection") from exc
    if not assets:
        raise SceneError(f"the STAC item {path} has no GeoTIFF image asset: give an item with COG assets")
    ref = min(assets, key=lambda a: abs(a[4].a * a[4].e))
    crs, t, width, height = ref[3], ref[4], ref[5], ref[6]
    bands = [a for a in assets if a[3] == crs]
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"<SRS>{_xml(crs.to_wkt())}</SRS>",
             f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"]
    for number, (key, asset, href, _, st, sw, sh, dtype, nodata) in enumerate(bands, start=1):
        raster = (asset.get("raster:bands") or [{}])[0]
        nodata = raster.get("nodata", nodata)
        x0, y0 = (st.c - t.c) / t.a, (st.f - t.f) / t.e
        x1, y1 = (st.c + sw * st.a - t.c) / t.a, (st.f + sh * st.e - t.f) / t.e
        parts += [f'<VRTRasterBand dataType="{_GDAL_TYPES.get(dtype, "Float32")}" band="{number}">',
                  f"<Description>{_xml(key)}</Description>"]
        if nodata is not None:
            parts.append(f"<NoDataValue>{float(nodata)!r}</NoDataValue>")
        if "scale" in raster or "offset" in raster:
            parts += [f"<Offset>{float(raster.get('offset', 0.0))!r}</Offset>",
                      f"<Scale>{float(raster.get('scale', 1.0))!r}</Scale>"]
        source = "ComplexSource" if nodata is not None else "SimpleSource"
        parts += [f'<{source} resampling="nearest">',
                  f'<SourceFilename relativeToVRT="0">{_xml(href)}</SourceFilename><SourceBand>1</SourceBand>',
                  f'<SrcRect xOff="0" yOff="0" xSize="{sw}" ySize="{sh}"/>',
                  f'<DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{x1 - x0!r}" ySize="{y1 - y0!r}"/>',
                  *([f"<NODATA>{float(nodata)!r}</NODATA>"] if nodata is not None else []),
                  f"</{source}>", "</VRTRasterBand>"]
    parts.append("</VRTDataset>")
    return "".join(parts)


_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def _xml(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(str(text))


def _load_item(path: str) -> dict:
    import json
    import urllib.request

    try:
        if "://" in path:
            with urllib.request.urlopen(path, timeout=30) as response:  # noqa: S310 - the user's own URL
                item = json.loads(response.read())
        else:
            item = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SceneError(f"cannot read the STAC item {path} ({type(exc).__name__}: {exc}): check the path or URL "
                         "and your network connection") from exc
    if not isinstance(item, dict) or item.get("type") != "Feature" or not isinstance(item.get("assets"), dict):
        raise SceneError(f"{path} is not a STAC item (a GeoJSON Feature with assets): give an item.json")
    return item


def _is_image_asset(asset) -> bool:
    if not isinstance(asset, dict) or "href" not in asset:
        return False
    if set(asset.get("roles") or []) & STAC_SKIPPED_ROLES:
        return False
    kind = str(asset.get("type") or "")
    href = str(asset["href"]).split("?", 1)[0].lower()
    return "tiff" in kind or (not kind and href.endswith((".tif", ".tiff")))


def _resolve_href(item_path: str, href: str) -> str:
    from urllib.parse import urljoin

    if "://" in href or href.startswith("/"):
        return href
    if "://" in item_path:
        return urljoin(item_path, href)
    return str(Path(item_path).resolve().parent / href)


def _first_line(exc) -> str:
    lines = gdal_message(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def gdal_message(exc) -> str:
    """The message of a rasterio error, or of the GDAL error behind it ("Read failed. See previous exception")."""
    seen = 0
    while "see previous exception" in str(exc).lower() and seen < 5:
        cause = exc.__cause__ or exc.__context__
        if cause is None:
            break
        exc, seen = cause, seen + 1
    return str(exc)


def _is_local(text: str) -> bool:
    return not is_remote(text)


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
        with remote_env(path):
            ds.read(sorted({1, ds.count}), window=last)
    except RasterioIOError as exc:
        if is_remote(path):
            raise SceneError(
                f"reading {path} failed ({_first_line(exc)}): check your network connection and run again"
            ) from exc
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
        alpha_bands=alpha_bands(ds),
    )


def alpha_bands(ds) -> tuple[int, ...]:
    """1-based indexes of the bands of an open dataset whose colour interpretation is alpha."""
    return tuple(i for i, interp in enumerate(ds.colorinterp, start=1) if interp == ColorInterp.alpha)


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
        Bands to read: 1-based numbers, the scene's band descriptions or the preset's band names; None for the
        preset's default or every band except alpha bands.
    preset : str or Preset, optional
        How to scale stored values (see :mod:`rs_pgd.presets`). ``"from-scene"`` takes each selected band's
        scale and offset from the scene (a STAC item's ``raster:bands``, GDAL band scale/offset). None: the
        scene's default, which is ``from-scene`` for a STAC item whose selected bands carry a scale or offset,
        and ``generic`` otherwise.
    nodata : float, optional
        Stored value that means "no data" in this scene although the file does not say so (fill pixels): a pixel
        where any selected band holds it is invalid. Replaces the preset's nodata DN; NaN is allowed.
    window : rasterio.windows.Window, optional
        Read only this part of the scene (an area of interest, see :func:`window_for_bbox`): it becomes "the
        scene" (height, width, transform), but windows reaching past it read the real pixels around it as
        context, and reflect only at the file's own edges. ``inside`` is False outside the part.

    Attributes
    ----------
    height, width : int
    count : int
        Number of selected bands.
    bands : tuple of int
        Selected 1-based band indexes.
    crs, transform, nodata, preset, dtype
    """

    def __init__(self, path, bands=None, preset: str | Preset | None = "generic", nodata: float | None = None,
                 window: Window | None = None):
        self.path = os.fspath(path)
        self.preset = get_preset(preset)  # None: generic, unless the scene says otherwise (below)
        self._dataset = None
        self._pid = None
        ds = self._open()
        self.file_height, self.file_width = ds.height, ds.width
        self.window = _check_window(window, ds) if window is not None else None
        self.row_off = int(self.window.row_off) if self.window is not None else 0
        self.col_off = int(self.window.col_off) if self.window is not None else 0
        self.height = int(self.window.height) if self.window is not None else ds.height
        self.width = int(self.window.width) if self.window is not None else ds.width
        self.scene_count = ds.count
        self.alpha_bands = alpha_bands(ds)
        self.bands = resolve_bands(bands, ds.count, self.preset, descriptions=ds.descriptions,
                                   alpha=self.alpha_bands)
        self.count = len(self.bands)
        self.descriptions = tuple(ds.descriptions)
        if preset is None and is_stac_item(self.path) and not _band_scaling(ds, self.bands).is_identity:
            self.preset = get_preset(FROM_SCENE)  # the item's raster:bands scale/offset
        if self.preset.from_scene:
            self.preset = _band_scaling(ds, self.bands)
        self.crs = ds.crs
        self.transform = ds.window_transform(self.window) if self.window is not None else ds.transform
        self.dtype = ds.dtypes[self.bands[0] - 1]
        self.fill_value = _check_nodata(nodata, self.dtype) if nodata is not None else self.preset.nodata
        self.nodata = nodata if nodata is not None else (ds.nodata if ds.nodata is not None else self.preset.nodata)
        self.remote = is_remote(self.path) or is_stac_item(self.path)
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
        rows = reflect_indices(row_start + self.row_off, row_stop + self.row_off, self.file_height)
        cols = reflect_indices(col_start + self.col_off, col_stop + self.col_off, self.file_width)
        raw, valid = self._read_source(
            int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        )
        raw, valid = _gather(raw, valid, rows - rows.min(), cols - cols.min())
        image = self._scale(raw, valid)
        inside = _inside_mask(row_start, row_stop, self.height)[:, None] & _inside_mask(
            col_start, col_stop, self.width
        )
        return WindowData(image=image, valid=valid, inside=inside)

    def read_stored(self, bounds) -> tuple[np.ndarray, np.ndarray]:
        """Stored values (C, H, W, the file's dtype) and validity (H, W) of a window, clipped to the scene."""
        row_start, col_start, row_stop, col_stop = _check_bounds(bounds)
        row0, col0 = max(row_start, 0), max(col_start, 0)
        row1, col1 = min(row_stop, self.height), min(col_stop, self.width)
        if row1 <= row0 or col1 <= col0:
            raise GridError(f"bounds {bounds!r} lie outside the scene ({self.height} x {self.width} pixels)")
        r, c = self.row_off, self.col_off
        return self._read_source(row0 + r, row1 + r, col0 + c, col1 + c)

    def _read_source(self, row0: int, row1: int, col0: int, col1: int) -> tuple[np.ndarray, np.ndarray]:
        """Read a window that lies inside the scene: raw values and the per-pixel validity."""
        ds = self._open()
        window = Window(col0, row0, col1 - col0, row1 - row0)
        try:
            with remote_env(self.path):
                raw = ds.read(self.bands, window=window, masked=False)
                if self._all_valid:
                    valid = np.ones(raw.shape[1:], dtype=bool)
                else:
                    valid = np.all(ds.read_masks(self.bands, window=window) > 0, axis=0)
        except RasterioIOError as exc:
            what = "check your network connection and run again" if self.remote else "the file may be corrupt; copy it again"
            raise SceneError(f"reading {self.path} failed ({_first_line(exc)}): {what}") from exc
        if self._floating:
            valid &= np.all(np.isfinite(raw), axis=0)
        if self.fill_value is not None:
            if isinstance(self.fill_value, float) and math.isnan(self.fill_value):
                valid &= ~np.any(np.isnan(raw), axis=0)
            else:
                valid &= ~np.any(raw == self.fill_value, axis=0)
        return raw, valid

    def _scale(self, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        image = raw.astype(np.float32, copy=True)
        if not self.preset.is_identity:
            image *= _per_band(self.preset.scale)
            image += _per_band(self.preset.offset)
        image[:, ~valid] = 0.0
        return image


def _per_band(value) -> np.ndarray:
    """A preset's scale or offset as float32, shaped to broadcast over (C, H, W) when it is one value per band."""
    array = np.asarray(value, dtype=np.float32)
    return array[:, None, None] if array.ndim else array


def _band_scaling(ds, bands) -> Preset:
    """The ``from-scene`` preset of the selected bands of an open dataset (GDAL band scale/offset)."""
    return scene_preset([ds.scales[b - 1] for b in bands], [ds.offsets[b - 1] for b in bands])


def _check_window(window, ds) -> Window:
    window = Window(*(int(v) for v in (window.col_off, window.row_off, window.width, window.height)))
    if (window.width < 1 or window.height < 1 or window.col_off < 0 or window.row_off < 0
            or window.col_off + window.width > ds.width or window.row_off + window.height > ds.height):
        raise GridError(f"window {window} does not lie inside the scene ({ds.height} x {ds.width} pixels)")
    return window


def window_for_bbox(info: SceneInfo, bbox, bbox_crs="EPSG:4326") -> Window:
    """The scene pixels that cover ``bbox = (W, S, E, N)`` given in ``bbox_crs``, snapped outward, clipped.

    Raises
    ------
    SceneError
        If the scene has no CRS (with a bbox in another CRS), or the box does not overlap the scene.
    """
    from rasterio.warp import transform_bounds

    try:
        w, s, e, n = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise SceneError(f"--bbox {bbox!r} is not four numbers W S E N") from None
    if not (w < e and s < n):
        raise SceneError(f"--bbox {w:g} {s:g} {e:g} {n:g} needs W < E and S < N")
    bbox_crs = parse_crs(bbox_crs) if bbox_crs is not None else info.crs
    if info.crs is None:
        raise SceneError(f"{info.path} has no CRS, so --bbox cannot be placed on it: assign one (rio edit-info --crs)")
    if bbox_crs != info.crs:
        w, s, e, n = transform_bounds(bbox_crs, info.crs, w, s, e, n, densify_pts=21)
    t = info.transform
    cols = sorted(((w - t.c) / t.a, (e - t.c) / t.a))
    rows = sorted(((n - t.f) / t.e, (s - t.f) / t.e))
    col0, col1 = max(math.floor(cols[0] + 1e-9), 0), min(math.ceil(cols[1] - 1e-9), info.width)
    row0, row1 = max(math.floor(rows[0] + 1e-9), 0), min(math.ceil(rows[1] - 1e-9), info.height)
    if col1 <= col0 or row1 <= row0:
        scene = transform_bounds(info.crs, bbox_crs, *info.bounds, densify_pts=21)
        raise SceneError(f"--bbox does not overlap {Path(info.path).name}, which covers "
                         f"{', '.join(f'{v:.6g}' for v in scene)} in {crs_to_string(bbox_crs)}: check the box and "
                         "--bbox-crs")
    return Window(col0, row0, col1 - col0, row1 - row0)


def parse_crs(value, option: str = "--bbox-crs") -> CRS:
    """A CRS from user input (``EPSG:4326``, WKT, PROJ string); anything else is a one-line SceneError."""
    from rasterio.errors import CRSError

    try:
        return CRS.from_user_input(value)
    except (CRSError, TypeError, ValueError):
        raise SceneError(f"{option} {value!r} is not a CRS GDAL knows: give e.g. EPSG:4326 or the scene's "
                         "EPSG code") from None


def area_of_interest(bbox=None, bbox_crs="EPSG:4326", aoi=None):
    """``(bbox, crs)`` of an area given as a box (W, S, E, N in ``bbox_crs``) or as a vector file, or None.

    The argument of :func:`window_for_bbox` (``window_for_bbox(info, *area)``).

    Raises
    ------
    SceneError
        Both a box and a file, an unreadable file or one without geometry.
    """
    if bbox is not None and aoi is not None:
        raise SceneError("give --bbox or --aoi, not both")
    if aoi is not None:
        return aoi_bbox(aoi)
    return (tuple(bbox), bbox_crs) if bbox is not None else None


def aoi_bbox(path) -> tuple[tuple[float, float, float, float], object]:
    """The bounds of a vector area of interest and its CRS (for :func:`window_for_bbox`)."""
    import pyogrio

    try:
        meta = pyogrio.read_info(path)
        bounds = pyogrio.read_bounds(path)[1]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise SceneError(f"cannot read the area of interest {path} ({type(exc).__name__}): give a vector file "
                         "such as a GeoPackage or GeoJSON") from exc
    if bounds.size == 0:
        raise SceneError(f"the area of interest {path} has no geometry: give a file with a polygon")
    box = (float(bounds[0].min()), float(bounds[1].min()), float(bounds[2].max()), float(bounds[3].max()))
    return box, meta.get("crs")


def _check_nodata(value, dtype: str) -> float:
    """A user's nodata value as a float that the scene's data type can hold (NaN only for float scenes)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SceneError(f"nodata {value!r} is not a number: give the stored fill value, e.g. --nodata 0") from None
    kind = np.dtype(dtype)
    if math.isnan(number):
        if kind.kind != "f":
            raise SceneError(f"nodata nan cannot occur in a {dtype} scene: give the stored fill value, e.g. --nodata 0")
        return number
    if kind.kind in "iu":
        info = np.iinfo(kind)
        if number != int(number) or not info.min <= number <= info.max:
            raise SceneError(f"nodata {value} cannot occur in a {dtype} scene (integers {info.min}..{info.max}): "
                             "give the stored fill value")
    return number


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
