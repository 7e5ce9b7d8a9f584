"""GeoTIFF / Cloud Optimized GeoTIFF output, written band of rows by band of rows.

No torch. The writers take finished row bands (from :class:`rs_pgd.stitch.RowStitcher`) and write them into a
tiled, DEFLATE-compressed GeoTIFF as they come, so memory never holds the whole scene. On close the file is
converted to a COG (GDAL's COG driver builds the overviews) and moved onto the target in one ``os.replace``:
an interrupted run leaves at most a hidden temporary file, never a half-written file at the target.

Class maps carry a colour table, the class names (``CLASS_NAMES`` tag and GDAL category names in the
``.aux.xml`` sidecar, which QGIS and ``gdalinfo`` show), and nodata 255. Probability rasters carry one band per
class, described by the class name.
"""

from __future__ import annotations

import colorsys
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from rs_pgd.classes import IGNORE_INDEX
from rs_pgd.errors import OutputError

SIDECARS = (".aux.xml", ".ovr", ".msk")
"""GDAL sidecar files that travel with a raster."""

PROBABILITY_NODATA_UINT8 = 255
PROBABILITY_SCALE_UINT8 = 254


# -- atomic target --------------------------------------------------------------------------------------------
def check_output_path(path, inputs: Iterable = (), overwrite: bool = True) -> Path:
    """Raise :class:`OutputError` unless ``path`` can be written; call it before any long computation.

    Parameters
    ----------
    path : path-like
        The output file.
    inputs : iterable of path-like
        Input files of the run; the output must not replace one of them.
    overwrite : bool
        Whether an existing file at ``path`` may be replaced.
    """
    target = Path(path).expanduser()
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"directory {parent} does not exist; create it or choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK) or not _can_create_in(parent):
        raise OutputError(f"directory {parent} is not writable; choose another output path")
    if target.is_dir():
        raise OutputError(
            f"output {target} is a directory; give a file name such as {target / 'prediction.tif'}"
        )
    if target.exists():
        if not overwrite:
            raise OutputError(
                f"output {target} already exists; pass overwrite=True (--overwrite) or choose another path"
            )
        if not os.access(target, os.W_OK):
            raise OutputError(f"output {target} exists and is not writable; choose another output path")
    for item in inputs:
        if item is not None and _same_file(target, Path(item)):
            raise OutputError(f"output {target} is also an input of this run; choose another output path")
    return target


def check_outputs(outputs: dict, inputs: Iterable = (), overwrite: bool = True) -> dict[str, Path]:
    """Check every output path of a run before any work: each writable (:func:`check_output_path`), none an input,
    no two the same file.

    Parameters
    ----------
    outputs : dict
        ``{option name: path or None}``; the names appear in the errors (``"--preview"``, ...). None is skipped.
    inputs : iterable of path-like
        The run's input files.

    Returns
    -------
    dict
        The checked paths by name.
    """
    checked: dict[str, Path] = {}
    inputs = [item for item in inputs if item is not None]
    for name, path in outputs.items():
        if path is None:
            continue
        try:
            target = check_output_path(path, inputs=inputs, overwrite=overwrite)
        except OutputError as exc:
            raise OutputError(f"{name}: {exc}" if name != "output" else str(exc)) from None
        for other, earlier in checked.items():
            if _same_file(target, earlier):
                raise OutputError(f"{name} {path} is the same file as {other}; give each output its own file name")
        checked[name] = target
    return checked


GEOTIFF_SUFFIXES = (".tif", ".tiff")
"""Names rs-pgd accepts for the GeoTIFFs it writes (class maps, probabilities)."""


def check_format_suffix(path, suffixes: Sequence[str], writes: str, option: str = "-o") -> Path:
    """Raise :class:`OutputError` unless ``path`` ends in one of ``suffixes`` (any case).

    rs-pgd writes the format of the writer, not the one the name suggests: without this check ``-o pred.png``
    would be a GeoTIFF named .png, which viewers refuse or misread. ``writes`` names the format in the message.
    """
    target = Path(path)
    if target.suffix.lower() not in suffixes:
        given = f"ends in {target.suffix}" if target.suffix else "has no file suffix"
        raise OutputError(f"{option} {target.name} {given}, but rs-pgd writes {writes} there; "
                          f"name it {target.stem}{suffixes[0]}")
    return target


def _can_create_in(folder: Path) -> bool:
    """Whether a file can really be created in ``folder`` (``os.access`` says yes to root everywhere, e.g. /proc)."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".rs-pgd-probe.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def sibling(output, suffix: str) -> Path:
    """A file named after an output: ``model.safetensors`` -> ``model<suffix>`` (e.g. ``.curve.png``)."""
    output = Path(output)
    name = output.name
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else output.stem
    return output.with_name(stem + suffix)


def temporary_path(target: Path, tag: str = "tmp") -> Path:
    """A hidden path next to ``target``: ``.<name>.<pid>.<tag><suffix>`` (same filesystem, so rename is atomic)."""
    suffix = target.suffix or ".tif"
    return target.with_name(f".{target.name}.{os.getpid()}.{tag}{suffix}")


def remove_raster(path: Path) -> None:
    """Remove a raster file and its GDAL sidecars, ignoring the ones that do not exist."""
    for name in (str(path), *(str(path) + s for s in SIDECARS)):
        try:
            os.remove(name)
        except FileNotFoundError:
            pass


class AtomicOutput:
    """The one atomic writer: write to a hidden temporary file, move it onto ``path`` only on success.

    Every file rs-pgd writes goes through it (rasters, checkpoints, resume state, PNGs, vectors, ONNX files). The
    target is validated on construction (:func:`check_output_path`). Inside the ``with`` block write to the
    yielded temporary path; on a normal exit it replaces the target together with its sidecars (stale sidecars of
    an older target are removed); on any exception the temporary files are removed and an existing target is left
    untouched. A killed process leaves only the hidden temporary file.

    Parameters
    ----------
    path : path-like
        The target.
    inputs : iterable of path-like
        Input files of the run, which the target must not replace.
    overwrite : bool
        Whether an existing target may be replaced.
    sidecars : tuple of str
        Companion files that travel with the target: suffixes appended to the name (GDAL's ``.aux.xml``, the
        default) or, with ``replace_suffix``, replacing its suffix (a shapefile's ``.shx``, ``.dbf``, ...).
    replace_suffix : bool
        Sidecars are ``path.with_suffix(s)`` rather than ``path + s``.

    Examples
    --------
    >>> with AtomicOutput("pred.tif", inputs=["scene.tif"]) as tmp:
    ...     with rasterio.open(tmp, "w", **profile) as dst:
    ...         dst.write(data)
    """

    def __init__(self, path, inputs: Iterable = (), overwrite: bool = True, sidecars: tuple = SIDECARS,
                 replace_suffix: bool = False):
        self.path = check_output_path(path, inputs, overwrite)
        self.temp = temporary_path(self.path)
        self.sidecars = tuple(sidecars)
        self.replace_suffix = replace_suffix
        self.committed = False

    def __enter__(self) -> Path:
        self.discard()
        return self.temp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False

    def _sidecar(self, path: Path, suffix: str) -> str:
        return str(path.with_suffix(suffix)) if self.replace_suffix else str(path) + suffix

    def commit(self) -> Path:
        """Move the temporary file (and its sidecars) onto the target."""
        if not self.temp.exists():
            raise OutputError(f"nothing was written to {self.temp}; the output {self.path} was not created")
        for sidecar in self.sidecars:
            new, old = self._sidecar(self.temp, sidecar), self._sidecar(self.path, sidecar)
            if os.path.exists(new):
                os.replace(new, old)
            elif os.path.exists(old):
                os.remove(old)  # it described the file being replaced
        os.replace(self.temp, self.path)
        self.committed = True
        return self.path

    def discard(self) -> None:
        """Remove the temporary file and its sidecars; the target stays as it was."""
        for name in (str(self.temp), *(self._sidecar(self.temp, s) for s in self.sidecars)):
            try:
                os.remove(name)
            except FileNotFoundError:
                pass


# -- profiles and class tables ------------------------------------------------------------------------------
def georeference(source) -> dict:
    """``width``, ``height``, ``crs`` and ``transform`` of a profile dict, dataset, or SceneInfo-like object."""
    keys = ("width", "height", "crs", "transform")
    if isinstance(source, dict):
        missing = [k for k in keys[:2] if k not in source]
        if missing:
            raise OutputError(f"output profile lacks {', '.join(missing)}; pass the input scene's profile")
        return {k: source.get(k) for k in keys}
    return {k: getattr(source, k, None) for k in keys}


def parse_colour(colour) -> tuple[int, int, int, int]:
    """An RGBA tuple from ``(r, g, b)``, ``(r, g, b, a)`` or ``"#rrggbb[aa]"``."""
    if isinstance(colour, str):
        text = colour.lstrip("#")
        if len(text) not in (6, 8):
            raise OutputError(f"colour {colour!r} is not #rrggbb or #rrggbbaa; fix the class colours")
        rgba = [int(text[i : i + 2], 16) for i in range(0, len(text), 2)]
    else:
        rgba = [int(v) for v in colour]
    if len(rgba) == 3:
        rgba.append(255)
    if len(rgba) != 4 or not all(0 <= v <= 255 for v in rgba):
        raise OutputError(f"colour {colour!r} is not 3 or 4 values in 0..255; fix the class colours")
    return tuple(rgba)


def default_colour(i: int) -> tuple[int, int, int, int]:
    """A distinct, deterministic colour for class number ``i`` (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
    return int(r * 255), int(g * 255), int(b * 255), 255


def class_colormap(classes, nodata: int | None = IGNORE_INDEX) -> dict[int, tuple[int, int, int, int]]:
    """Colour table ``value -> RGBA`` of a class table (``values``, ``colours``); nodata is transparent."""
    colours = getattr(classes, "colours", None) or [None] * len(classes.values)
    cmap = {
        int(v): parse_colour(c) if c is not None else default_colour(i)
        for i, (v, c) in enumerate(zip(classes.values, colours))
    }
    if nodata is not None:
        cmap[int(nodata)] = (0, 0, 0, 0)
    return cmap


def category_names(classes) -> list[str]:
    """GDAL category names indexed by pixel value, ``0..max(values)``; values without a class get ``""``."""
    values = [int(v) for v in classes.values]
    names = [""] * (max(values) + 1 if values else 0)
    for v, name in zip(values, classes.names):
        names[v] = str(name)
    return names


def write_category_names(path: Path, names: Sequence[str], description: str | None = None) -> Path:
    """Write a GDAL PAM sidecar ``<path>.aux.xml`` holding band 1's category names (and description)."""
    items = "\n".join(f"      <Category>{escape(n)}</Category>" for n in names)
    desc = f"    <Description>{escape(description)}</Description>\n" if description else ""
    xml = (
        "<PAMDataset>\n"
        '  <PAMRasterBand band="1">\n'
        f"{desc}"
        "    <CategoryNames>\n"
        f"{items}\n"
        "    </CategoryNames>\n"
        "  </PAMRasterBand>\n"
        "</PAMDataset>\n"
    )
    sidecar = Path(str(path) + ".aux.xml")
    sidecar.write_text(xml, encoding="utf-8")
    return sidecar


def read_category_names(path) -> list[str]:
    """Band 1's category names from a raster's ``.aux.xml`` sidecar (empty list when there are none)."""
    import xml.etree.ElementTree as ET

    sidecar = Path(str(path) + ".aux.xml")
    if not sidecar.exists():
        return []
    root = ET.parse(sidecar).getroot()
    for band in root.iter("PAMRasterBand"):
        if band.get("band") == "1":
            return [c.text or "" for c in band.iter("Category")]
    return []


# -- streaming writers --------------------------------------------------------------------------------------
class _StreamingWriter:
    """Shared machinery: a tiled GTiff written row band by row band, then COG conversion and atomic commit."""

    resampling = "NEAREST"

    def __init__(
        self, path, profile, count: int, dtype: str, nodata, cog: bool, blocksize: int, inputs, overwrite
    ):
        if blocksize % 16:
            raise OutputError(f"block size {blocksize} must be a multiple of 16; use 256 or 512")
        self.geo = georeference(profile)
        self.height, self.width = int(self.geo["height"]), int(self.geo["width"])
        self.count, self.dtype, self.nodata = count, np.dtype(dtype), nodata
        self.cog, self.blocksize = cog, blocksize
        self._atomic = AtomicOutput(path, inputs=inputs, overwrite=overwrite)
        self.path = self._atomic.path
        self._final_temp = self._atomic.__enter__()
        self._stream_path = temporary_path(self.path, "stream") if cog else self._final_temp
        self._written = np.zeros(self.height, dtype=bool)
        self._closed = False
        try:
            self._dataset = rasterio.open(self._stream_path, "w", **self._stream_profile())
            self._before_write(self._dataset)
        except Exception:
            self.abort()
            raise

    def _stream_profile(self) -> dict:
        return dict(
            driver="GTiff",
            width=self.width,
            height=self.height,
            count=self.count,
            dtype=self.dtype.name,
            crs=self.geo["crs"],
            transform=self.geo["transform"],
            nodata=self.nodata,
            tiled=True,
            blockxsize=self.blocksize,
            blockysize=self.blocksize,
            compress="deflate",
            predictor=2 if self.dtype.kind in "iu" else 3,
            bigtiff="IF_SAFER",
        )

    # -- context manager ----------------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    # -- writing ------------------------------------------------------------------------------------------
    def _write_rows(self, row_start: int, data: np.ndarray) -> None:
        """Write a ``(count, rows, width)`` array at scene row ``row_start``."""
        if self._closed:
            raise OutputError(f"the writer for {self.path} is closed; open a new one to write again")
        rows = data.shape[1]
        if (
            data.shape[0] != self.count
            or data.shape[2] != self.width
            or row_start < 0
            or row_start + rows > self.height
        ):
            raise OutputError(
                f"row band {tuple(data.shape)} at row {row_start} does not fit the {self.count}x{self.height}x{self.width} "
                "output; write (bands, rows, width) arrays inside the scene"
            )
        try:
            self._dataset.write(
                data.astype(self.dtype, copy=False), window=Window(0, row_start, self.width, rows)
            )
        except _GDAL_ERRORS as exc:
            raise _write_failed(self.path, exc) from None
        self._written[row_start : row_start + rows] = True

    @property
    def rows_written(self) -> int:
        """Number of scene rows written so far."""
        return int(self._written.sum())

    def _before_write(self, dataset) -> None:  # what GTiff needs before any pixel (the colour table)
        pass

    def _describe(self, dataset) -> None:  # band descriptions, tags
        pass

    def _sidecar(self, path: Path) -> None:  # PAM sidecar of the streamed file
        pass

    def close(self) -> Path:
        """Finish the file: check every row was written, convert to COG, move onto the target; return its path."""
        if self._closed:
            return self.path
        try:
            missing = self.height - self.rows_written
            if missing:
                first = int(np.argmin(self._written))
                raise OutputError(
                    f"{missing} of {self.height} rows (from row {first}) were never written to {self.path}; "
                    "write every row band before closing"
                )
            self._describe(self._dataset)
            self._dataset.close()
            self._sidecar(self._stream_path)
            if self.cog:
                self._convert_to_cog()
            self._atomic.commit()
        except _GDAL_ERRORS as exc:
            self.abort()
            raise _write_failed(self.path, exc) from None
        except BaseException:
            self.abort()
            raise
        finally:
            self._closed = True
            if self.cog:
                remove_raster(self._stream_path)
        return self.path

    def _convert_to_cog(self) -> None:
        options = dict(
            COMPRESS="DEFLATE",
            PREDICTOR="YES",
            BLOCKSIZE=self.blocksize,
            OVERVIEW_RESAMPLING=self.resampling,
            BIGTIFF="IF_SAFER",
        )
        rasterio.shutil.copy(self._stream_path, self._final_temp, driver="COG", **options)
        self._after_cog(self._final_temp)

    def _after_cog(self, path: Path) -> None:
        pass

    def abort(self) -> None:
        """Drop everything written; an existing file at the target stays untouched."""
        self._closed = True
        dataset = getattr(self, "_dataset", None)
        if dataset is not None and not dataset.closed:
            try:
                dataset.close()
            except Exception:
                pass
        remove_raster(self._stream_path)
        self._atomic.discard()


from rasterio._err import CPLE_BaseError  # noqa: E402  (GDAL errors that are not OSError, e.g. on a full disk)
from rasterio.errors import RasterioError  # noqa: E402

_GDAL_ERRORS = (CPLE_BaseError, RasterioError)


def _write_failed(path: Path, exc: BaseException) -> OutputError:
    """One-line :class:`OutputError` for a GDAL failure while writing ``path`` (full disk, file-size limit, ...)."""
    detail = " ".join(str(exc).split())[:200]
    return OutputError(f"could not write {path} ({detail}); check free disk space and file-size limits, then run again")


class StreamingClassWriter(_StreamingWriter):
    """Write a single-band uint8 class map row band by row band into a (COG) GeoTIFF with colours and names.

    Parameters
    ----------
    path : path-like
        Output file; replaced atomically on :meth:`close`.
    profile : dict, dataset or SceneInfo
        Source of ``width``, ``height``, ``crs`` and ``transform`` (the input scene's).
    classes : ClassTable-like
        ``values`` (pixel values, 0..254), ``names`` and optionally ``colours`` (RGB(A) tuples or ``#rrggbb``).
    nodata : int
        Value of pixels without a prediction.
    cog : bool
        Convert to a Cloud Optimized GeoTIFF with MODE overviews; otherwise a tiled GeoTIFF without overviews.
    blocksize : int
        Tile size of the file, a multiple of 16.
    inputs : iterable of path-like
        Input files of the run; the output may not replace one.

    Write arrays of class *values* (not model indices) with :meth:`write`.
    """

    resampling = "MODE"

    def __init__(
        self,
        path,
        profile,
        classes,
        nodata: int = IGNORE_INDEX,
        cog: bool = True,
        blocksize: int = 512,
        inputs: Iterable = (),
        overwrite: bool = True,
        description: str = "class",
    ):
        values = [int(v) for v in classes.values]
        if any(not 0 <= v <= 255 for v in values) or int(nodata) in values:
            raise OutputError(
                f"class values {values} must lie in 0..255 and differ from nodata {nodata}; renumber the classes"
            )
        self.classes, self.description = classes, description
        super().__init__(path, profile, 1, "uint8", int(nodata), cog, blocksize, inputs, overwrite)

    def write(self, row_start: int, data: np.ndarray) -> None:
        """Write class values for scene rows ``row_start ..``; ``data`` is ``(rows, width)`` or ``(1, rows, width)``."""
        data = np.asarray(data)
        if data.ndim == 2:
            data = data[None]
        self._write_rows(row_start, data)

    def _before_write(self, dataset) -> None:
        # a palette must be set before pixels are written: later, libtiff refuses to change PhotometricInterpretation
        dataset.write_colormap(1, class_colormap(self.classes, self.nodata))

    def _describe(self, dataset) -> None:
        dataset.set_band_description(1, self.description)
        dataset.update_tags(
            1,
            CLASS_NAMES=json.dumps([str(n) for n in self.classes.names]),
            CLASS_VALUES=json.dumps([int(v) for v in self.classes.values]),
        )

    def _sidecar(self, path: Path) -> None:
        write_category_names(path, category_names(self.classes), self.description)

    def _after_cog(self, path: Path) -> None:
        # GDAL carries the category names into the COG's own sidecar; write them if this GDAL did not.
        if not read_category_names(path):
            write_category_names(path, category_names(self.classes), self.description)


class StreamingProbabilityWriter(_StreamingWriter):
    """Write per-class probabilities (one band per class) row band by row band into a (COG) GeoTIFF.

    ``dtype="uint8"`` stores ``round(p * 254)`` with nodata 255 and a band scale of 1/254 (GDAL-aware readers
    unscale it); ``dtype="float32"`` stores ``p`` with NaN nodata. Overviews use AVERAGE resampling. NaN in the
    written probabilities marks pixels without a prediction.
    """

    resampling = "AVERAGE"

    def __init__(
        self,
        path,
        profile,
        classes,
        dtype: str = "uint8",
        cog: bool = True,
        blocksize: int = 512,
        inputs: Iterable = (),
        overwrite: bool = True,
    ):
        if dtype not in ("uint8", "float32"):
            raise OutputError(f"probability dtype {dtype!r} is not supported; choose uint8 or float32")
        self.classes = classes
        nodata = PROBABILITY_NODATA_UINT8 if dtype == "uint8" else float("nan")
        super().__init__(path, profile, len(classes.values), dtype, nodata, cog, blocksize, inputs, overwrite)

    def write(self, row_start: int, probabilities: np.ndarray) -> None:
        """Write ``(classes, rows, width)`` probabilities in [0, 1] (NaN = no prediction) at scene row ``row_start``."""
        self._write_rows(row_start, self.encode(probabilities))

    def encode(self, probabilities: np.ndarray) -> np.ndarray:
        """Probabilities as stored: scaled uint8 with 255 nodata, or float32 with NaN nodata."""
        p = np.asarray(probabilities)
        if self.dtype == np.uint8:
            scaled = np.rint(np.clip(p, 0.0, 1.0) * PROBABILITY_SCALE_UINT8)
            return np.where(np.isnan(p), PROBABILITY_NODATA_UINT8, scaled).astype(np.uint8)
        return p.astype(np.float32, copy=False)

    def _describe(self, dataset) -> None:
        names = [str(n) for n in self.classes.names]
        for band, name in enumerate(names, start=1):
            dataset.set_band_description(band, name)
        if self.dtype == np.uint8:
            dataset.scales = [1.0 / PROBABILITY_SCALE_UINT8] * self.count
            dataset.offsets = [0.0] * self.count
        dataset.update_tags(
            CLASS_NAMES=json.dumps(names), CLASS_VALUES=json.dumps([int(v) for v in self.classes.values])
        )
