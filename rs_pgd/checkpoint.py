"""Checkpoints: the one metadata schema, the one header reader, save/load, the one resume format, and the
one check that a scene fits a model.

No torch at import: :func:`read_header` and :func:`check_scene` parse the safetensors header with the standard
library, so ``predict``, ``evaluate``, ``export``, ``info`` and the QGIS provider refuse a bad checkpoint or an
unfit scene in a fraction of a second. :func:`save`, :func:`load`, :func:`save_resume` and :func:`load_resume`
import torch/safetensors inside.

Files
-----
``model.safetensors``
    The weights (tensors only) and one JSON string under the safetensors metadata key ``"rs_pgd"``: a
    :class:`CheckpointMeta`. Loading never unpickles anything.
``model.resume.pt``
    Everything ``--resume`` needs (weights, optimizer, scheduler, loss table, counters), written with
    :func:`torch.save` and read with ``torch.load(weights_only=True)``; only tensors and plain containers are
    accepted, checked before writing.

Schema versions
---------------
1 (rs-pgd 0.1)
    The first layout: ``format``/``format_version`` inside the metadata, no ``precision_reason``, training scenes
    without band count or data type.
2 (this version)
    ``schema_version``; ``precision_reason``; each training scene records ``count`` and ``dtype`` (for the scene
    check); ``export`` (the window geometry) in ONNX files. :func:`upgrade` reads version 1 files.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from rs_pgd.errors import CheckpointError

FORMAT = "rs-pgd-checkpoint"
SCHEMA_VERSION = 2
META_KEY = "rs_pgd"
RESUME_SUFFIX = ".resume.pt"
_MAX_HEADER = 100_000_000

DEFAULT_GEOMETRY = {"tile": 256, "margin": 64, "stride": None, "align": 32}


# -- the schema -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about its model: everything inference needs, and the story of the run.

    Attributes
    ----------
    model : dict
        :meth:`rs_pgd.models.ModelSpec.to_dict`: ``arch``, ``encoder``, ``in_channels``, ``classes``, ``norm``.
    classes : dict
        :meth:`rs_pgd.classes.ClassTable.to_dict`.
    stats : dict
        :meth:`rs_pgd.raster.BandStats.to_dict`: per-band mean/std/count after preset scaling.
    bands, band_names : tuple
        1-based band indexes read from the training scenes, and their names.
    preset : str
    scale, offset : float or list of float
        The preset's scaling of raw values (reflectance = raw * scale + offset); one per band for the
        ``from-scene`` preset (a STAC item's ``raster:bands``).
    geometry : dict
        ``tile``, ``margin``, ``stride``, ``align`` of the training windows.
    training_scenes : tuple of dict
        ``path``, ``crs``, ``res``, ``width``, ``height``, ``count``, ``dtype`` (and the ``area`` trained on).
    config : dict
        The resolved :class:`rs_pgd.config.FitConfig`.
    precision, precision_reason : str
    history : tuple of dict
        One record per epoch.
    best : dict or None
        The best validation scores.
    steps : int
        Optimizer steps taken.
    rs_pgd_version : str
    schema_version : int
    export : dict or None
        Exported window geometry (``tile``, ``margin``, ``stride``, ``window``, ...); set in ONNX files only.
    """

    model: dict
    classes: dict
    stats: dict
    bands: tuple = ()
    band_names: tuple = ()
    preset: str = "generic"
    scale: float | list = 1.0
    offset: float | list = 0.0
    geometry: dict = field(default_factory=lambda: dict(DEFAULT_GEOMETRY))
    training_scenes: tuple = ()
    config: dict = field(default_factory=dict)
    precision: str | None = None
    precision_reason: str = ""
    history: tuple = ()
    best: dict | None = None
    steps: int = 0
    rs_pgd_version: str = ""
    schema_version: int = SCHEMA_VERSION
    export: dict | None = None

    # -- conversions
    def to_dict(self) -> dict:
        """JSON-ready data (lists for tuples); ``export`` only when set."""
        data = json.loads(json.dumps(asdict(self), default=_json_default, allow_nan=False))
        if data.get("export") is None:
            data.pop("export", None)
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "the checkpoint") -> CheckpointMeta:
        """Read metadata of any schema version (older ones through :func:`upgrade`).

        Raises :class:`CheckpointError` naming ``source`` when a required entry is missing or malformed.
        """
        data = upgrade(data, source)
        missing = [name for name in ("model", "classes", "stats") if not isinstance(data.get(name), dict)]
        if missing:
            raise CheckpointError(f"{source} has no {', '.join(missing)} in its rs-pgd metadata; the file is damaged "
                                  "or not written by rs-pgd fit")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("bands", "band_names", "training_scenes", "history"):
            values[name] = tuple(values.get(name) or ())
        geometry = {**DEFAULT_GEOMETRY, **(values.get("geometry") or {})}
        values["geometry"] = geometry
        return cls(**values)

    def replace(self, **changes) -> CheckpointMeta:
        """A copy with some fields changed."""
        return replace(self, **changes)

    # -- typed views
    @property
    def in_channels(self) -> int:
        """Bands the model takes."""
        return int(self.model["in_channels"])

    @property
    def class_names(self) -> list[str]:
        """Class names in output-channel order."""
        return [str(n) for n in self.classes["names"]]

    def class_table(self):
        """The :class:`rs_pgd.classes.ClassTable`."""
        from rs_pgd.classes import ClassTable

        return ClassTable.from_dict(self.classes)

    def band_stats(self):
        """The :class:`rs_pgd.raster.BandStats` the model's input is normalised with."""
        from rs_pgd.raster import BandStats

        return BandStats.from_dict(self.stats)

    def training_nodata(self):
        """The fill value the model was trained with (``--nodata``), or None."""
        return (self.config or {}).get("nodata")


def upgrade(data: dict, source: str = "the checkpoint") -> dict:
    """Metadata of an older schema version in the current layout (a new dict; ``data`` is not changed).

    Raises :class:`CheckpointError` for a version newer than this rs-pgd knows.
    """
    if not isinstance(data, dict):
        raise CheckpointError(f"{source} has malformed rs-pgd metadata; the file is damaged")
    data = dict(data)
    version = data.pop("schema_version", None) or data.pop("format_version", None) or 1
    data.pop("format", None)
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise CheckpointError(f"{source} has an unreadable schema version {version!r}; the file is damaged") from None
    if version > SCHEMA_VERSION:
        raise CheckpointError(f"{source} was written by a newer rs-pgd (checkpoint schema {version}, this rs-pgd "
                              f"reads up to {SCHEMA_VERSION}); upgrade rs-pgd (pip install -U rs-pgd)")
    if version == 1:
        data.setdefault("precision_reason", "not recorded (rs-pgd 0.1 checkpoint)")
        data["training_scenes"] = [{"count": None, "dtype": None, **scene}
                                   for scene in data.get("training_scenes") or [] if isinstance(scene, dict)]
    data["schema_version"] = SCHEMA_VERSION
    return data


# -- the one header reader ------------------------------------------------------------------------------------------
def read_header(path) -> CheckpointMeta:
    """The metadata of an rs-pgd checkpoint, read from the safetensors header alone (no torch, no pickle).

    Raises :class:`CheckpointError` for a missing file, a file that is not safetensors, a truncated file, or one
    without rs-pgd metadata.
    """
    path = Path(path)
    header = _safetensors_header(path)
    return _meta_of(header, path)


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found; check the path")
    foreign = CheckpointError(f"not an rs-pgd checkpoint: {str(path)!r} is not a safetensors file written by "
                              "rs-pgd; give a checkpoint written by rs-pgd fit")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise foreign
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > _MAX_HEADER:
            raise foreign
        text = handle.read(length)
    if len(text) < length or not text.lstrip().startswith(b"{"):
        if text.lstrip().startswith(b"{"):
            raise _truncated(path, size, 8 + length)
        raise foreign
    try:
        header = json.loads(text)
    except ValueError:
        raise foreign from None
    if not isinstance(header, dict):
        raise foreign
    end = 8 + length + max((int(t["data_offsets"][1]) for k, t in header.items()
                            if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t), default=0)
    if size < end:
        raise _truncated(path, size, end)
    return header


def _truncated(path: Path, size: int, expected: int) -> CheckpointError:
    return CheckpointError(f"checkpoint {str(path)!r} is truncated ({size:,} of {expected:,} bytes); copy or "
                           "download it again")


def _meta_of(header: dict, path: Path) -> CheckpointMeta:
    unlabelled = CheckpointError(f"not an rs-pgd checkpoint: {str(path)!r} has no rs-pgd metadata; "
                                 "give a checkpoint written by rs-pgd fit")
    outer = header.get("__metadata__") or {}
    if not isinstance(outer, dict) or outer.get("format") not in (None, FORMAT):
        raise unlabelled
    try:
        data = json.loads(outer[META_KEY])
    except (ValueError, KeyError, TypeError):
        raise unlabelled from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise unlabelled
    if outer.get("format_version") is not None and "schema_version" not in data and "format_version" not in data:
        data["schema_version"] = outer["format_version"]
    return CheckpointMeta.from_dict(data, f"checkpoint {str(path)!r}")


# -- save and load (torch inside) -----------------------------------------------------------------------------------
def save(path, state_dict, meta: CheckpointMeta) -> Path:
    """Write model weights and their metadata to a safetensors file, atomically.

    Parameters
    ----------
    path : path
        Output file (conventionally ``*.safetensors``), written through :class:`rs_pgd.output.AtomicOutput`.
    state_dict : dict of tensors, or a torch module
        The weights; a module's ``state_dict()`` is taken. Tensors are copied to CPU.
    meta : CheckpointMeta
    """
    import torch
    from safetensors.torch import save_file

    from rs_pgd.output import AtomicOutput

    if not isinstance(meta, CheckpointMeta):
        raise CheckpointError(f"checkpoint metadata must be a CheckpointMeta, not {type(meta).__name__}")
    if isinstance(state_dict, torch.nn.Module):
        state_dict = state_dict.state_dict()
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor; put it in meta")
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    try:
        text = json.dumps(meta.to_dict(), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable ({exc}); give plain values") from None
    metadata = {"format": FORMAT, "format_version": str(meta.schema_version), META_KEY: text}
    with AtomicOutput(path, sidecars=()) as temp:
        save_file(tensors, str(temp), metadata=metadata)
    return Path(path)


def load(path, device="cpu") -> tuple[dict, CheckpointMeta]:
    """Read a checkpoint: ``(state_dict, meta)``. Never unpickles or executes anything."""
    from safetensors import safe_open

    meta = read_header(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - a header that passed but data that does not parse
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged ({type(exc).__name__}); copy or download it "
                              "again") from None
    return state, meta


# -- the one resume format --------------------------------------------------------------------------------------
def resume_path(output) -> Path:
    """``model.safetensors`` -> ``model.resume.pt``: where ``--resume`` state lives."""
    from rs_pgd.output import sibling

    return sibling(output, RESUME_SUFFIX)


def save_resume(output, state: dict) -> Path:
    """Write resume state for the checkpoint ``output`` atomically; only tensors and plain containers."""
    import torch

    from rs_pgd.output import AtomicOutput

    _check_plain(state, "state")
    target = resume_path(output)
    with AtomicOutput(target, sidecars=()) as temp:
        torch.save(state, temp)
    return target


def load_resume(output) -> dict | None:
    """The resume state saved for ``output``, or None when there is none (never runs code from the file)."""
    import torch

    from rs_pgd.errors import TrainingError

    path = resume_path(output)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the safe unpickler refuses anything but plain data
        raise TrainingError(f"cannot read the resume state {path} ({type(exc).__name__}); delete it to start "
                            "afresh") from None


def _check_plain(obj, where: str) -> None:
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"resume state key {key!r} at {where} is not str/int; convert it before saving")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise CheckpointError(f"resume state holds a {type(obj).__name__} at {where}; only tensors and plain "
                          "containers can be saved")


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "item"):
        item = value.item()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"non-finite value {item}")
        return item
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# -- does a scene fit the model? ------------------------------------------------------------------------------------
def scene_bands(meta: CheckpointMeta, info, model, bands=None) -> list[int]:
    """The 1-based bands of scene ``info`` to feed the model: ``bands`` when given, else the training bands.

    Raises :class:`CheckpointError` when the scene lacks them, when ``bands`` does not give the model's band
    count, or when the scene's band count differs from the training scenes' and no ``bands`` were chosen (bands
    1..N of another sensor's scene are not the training bands).
    """
    name = Path(str(model)).name
    trained = _training_band_text(meta)
    if bands is not None:
        from rs_pgd.presets import resolve_bands

        bands = list(resolve_bands(bands, info.count, meta.preset or "generic", descriptions=info.band_descriptions,
                                   alpha=info.alpha_bands))
        if len(bands) != meta.in_channels:
            raise CheckpointError(f"--bands gives {len(bands)} band(s) but the model {name} takes "
                                  f"{meta.in_channels} ({trained})")
        return bands
    chosen = [int(b) for b in meta.bands] or list(range(1, meta.in_channels + 1))
    if max(chosen) > info.count:
        raise CheckpointError(f"the model {name} was trained on {trained} but {Path(str(info.path)).name} has "
                              f"{info.count} band(s); give a scene with the training bands, or choose them with "
                              "--bands")
    counts = {s.get("count") for s in meta.training_scenes if s.get("count")}
    if counts and info.count not in counts:
        raise CheckpointError(f"{Path(str(info.path)).name} has {info.count} bands but the model {name} was trained "
                              f"on {min(counts)}-band scenes ({trained}); say which bands to use with --bands, "
                              "e.g. --bands " + ",".join(map(str, chosen)))
    return chosen


def check_scene_scaling(meta: CheckpointMeta, scene, model, bands=None) -> None:
    """Refuse a scene without band scale/offset for a model trained on values scaled by the training scene's own
    (the ``from-scene`` preset: a STAC item's ``raster:bands``): its stored numbers would be taken as physical."""
    import numpy as np

    from rs_pgd.presets import FROM_SCENE
    from rs_pgd.raster import SceneReader

    if meta.preset != FROM_SCENE:
        return
    if np.all(np.asarray(meta.scale, dtype=float) == 1.0) and np.all(np.asarray(meta.offset, dtype=float) == 0.0):
        return
    with SceneReader(scene, bands=bands or list(meta.bands) or None, preset=FROM_SCENE) as reader:
        if reader.preset.is_identity:
            raise CheckpointError(
                f"the model {Path(str(model)).name} was trained on values scaled by the scene's own scale/offset "
                f"(scale {meta.scale}, offset {meta.offset}), but {Path(str(scene)).name} has none: give a scene "
                "with them (a STAC item with raster:bands, or a GeoTIFF with band scales and offsets)"
            )


def scene_warnings(meta: CheckpointMeta, info) -> list[str]:
    """Ways the scene ``info`` differs from the training scenes that usually mean a useless map: another data
    type, CRS or pixel size. Empty when it looks like them (or the checkpoint does not record them)."""
    scenes = [s for s in meta.training_scenes if isinstance(s, dict)]
    if not scenes:
        return []
    out = []
    name = Path(str(info.path)).name
    dtypes = {s.get("dtype") for s in scenes if s.get("dtype")}
    if dtypes and info.dtype not in dtypes:
        out.append(f"{name} holds {info.dtype} values but the model was trained on {'/'.join(sorted(dtypes))} "
                   "scenes (DN vs reflectance?); check --preset or convert the scene")
    crss = {s.get("crs") for s in scenes if s.get("crs")}
    if crss and info.crs_string and info.crs_string not in crss and not _same_units(info, scenes):
        out.append(f"{name} is in {info.crs_string} with other units than the training scenes ({', '.join(sorted(crss))})")
    sizes = [abs(float(s["res"][0])) for s in scenes if s.get("res")] if _same_units(info, scenes) else []
    if sizes and info.res and info.res[0]:
        ratio = abs(float(info.res[0])) / sizes[0]
        if not 1 / 1.5 <= ratio <= 1.5:
            out.append(f"{name} has {abs(info.res[0]):g} pixels but the model was trained on {sizes[0]:g} pixels "
                       f"({ratio:.2g}x); resample the scene (gdalwarp -tr) to the training resolution")
    return out


def value_warnings(meta: CheckpointMeta, sample, name: str) -> list[str]:
    """A warning per band whose sampled mean is far outside the training statistics (another scaling, units or
    sensor); ``sample`` is a :class:`rs_pgd.raster.BandStats` of the scene after the checkpoint's scaling."""
    import numpy as np

    train = meta.band_stats()
    mean, std = np.asarray(sample.mean), np.asarray(sample.std)
    far = np.abs(mean - train.mean) > 5 * train.std
    spread = (std > 10 * train.std) | (std < train.std / 10)
    bad = np.flatnonzero(far | spread)
    if not bad.size:
        return []
    b = int(bad[0])
    return [f"{name}: band {b + 1} of the model's input has mean {mean[b]:.4g} (std {std[b]:.4g}) but the training "
            f"scenes had {train.mean[b]:.4g} (std {train.std[b]:.4g}), {bad.size} band(s) differ; the map is likely "
            "wrong: check --preset (DN vs reflectance) and the bands"]


def _training_band_text(meta: CheckpointMeta) -> str:
    names = list(meta.band_names)
    bands = list(meta.bands)
    if names and len(names) == len(bands):
        return "bands " + ", ".join(f"{b} ({n})" for b, n in zip(bands, names))
    return f"bands {bands}" if bands else f"{meta.in_channels} bands"


def _same_units(info, scenes) -> bool:
    """Whether the scene's CRS has the same linear units as the first training scene's (metres vs degrees)."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        other = CRS.from_user_input(scenes[0]["crs"])
    except (CRSError, KeyError, TypeError):
        return True
    if info.crs is None:
        return True
    return bool(info.crs.is_geographic) == bool(other.is_geographic)

