"""Classes of a segmentation: the class table, display colours, the ignore value and class mappings (no torch).

Conventions
-----------
- Class *values* are what the user's data says (integer ids ``0..254``; string classes get ``1..K`` in sorted
  order). Class *indices* ``0..K-1`` are what the model predicts; index ``i`` is ``classes.values[i]`` and the
  values are kept in ascending order.
- :data:`IGNORE_INDEX` (255) marks a pixel without a label in label windows, the pixels the loss ignores, and
  the nodata value of class maps. It is the one name of that value in rs-pgd.
- A mapping (``--mapping``, a JSON object) turns source class values or names into target classes: every
  target a class name, or every target an integer id ``0..254``; ``null`` drops a source class.

This module also reads a class map back (:func:`open_class_map`, :func:`read_class_names`); the writers of
colour tables and category names live in :mod:`rs_pgd.output`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rs_pgd.errors import LabelError, SceneError

IGNORE_INDEX = 255
"""Index written where a pixel has no label; the loss ignores it."""


_NAMED_COLOURS = (
    (("water", "sea", "ocean", "lake", "river"), (0, 112, 255)),
    (("wetland", "marsh", "mangrove"), (0, 168, 132)),
    (("forest", "tree", "wood"), (38, 115, 0)),
    (("grass", "pasture", "meadow"), (163, 255, 115)),
    (("shrub", "bush"), (152, 230, 0)),
    (("land",), (76, 168, 0)),
    (("crop", "agri", "farm", "field"), (255, 211, 0)),
    (("developed", "urban", "built", "building", "settlement", "road"), (230, 0, 0)),
    (("bare", "sand", "soil", "rock"), (205, 170, 102)),
    (("snow", "ice", "glacier"), (232, 246, 255)),
    (("cloud",), (200, 200, 200)),
    (("background", "other", "unknown", "nodata"), (0, 0, 0)),
)

_PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)


class LabelWarning(UserWarning):
    """Something in the labels was repaired or dropped; the message says what and how many."""


def warn_label(report: list[str], message: str):
    """Note ``message`` in a label source's report and raise it as a :class:`LabelWarning`."""
    report.append(message)
    warnings.warn(message, LabelWarning, stacklevel=4)


# ----------------------------------------------------------------------------------------------------------------
# Class table


def _named_colour(name: str) -> tuple[int, int, int] | None:
    lowered = name.lower()
    for keywords, colour in _NAMED_COLOURS:
        if any(keyword in lowered for keyword in keywords):
            return colour
    return None


def _generated_colour(position: int) -> tuple[int, int, int]:
    """A deterministic colour beyond the fixed palette: golden-ratio hue steps."""
    import colorsys

    hue = (position * 0.618033988749895) % 1.0
    lightness = 0.45 + 0.15 * ((position // 7) % 2)
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.65)
    return (round(r * 255), round(g * 255), round(b * 255))


def default_colours(names: tuple[str, ...] | list[str]) -> tuple[tuple[int, int, int], ...]:
    """Distinct, deterministic display colours for class names.

    Common land-cover names get their usual colour (water blue, tree/forest/land green, crop yellow,
    developed/urban red, ...); the first class to claim a named colour gets it, the others take the next
    unused colour of a fixed 20-colour palette, then generated colours.
    """
    colours: list[tuple[int, int, int] | None] = [None] * len(names)
    used: set[tuple[int, int, int]] = set()
    for i, name in enumerate(names):
        colour = _named_colour(str(name))
        if colour is not None and colour not in used:
            colours[i] = colour
            used.add(colour)
    pool = iter(_PALETTE)
    generated = 0
    for i, colour in enumerate(colours):
        if colour is not None:
            continue
        candidate = next(pool, None)
        while candidate is not None and candidate in used:
            candidate = next(pool, None)
        while candidate is None or candidate in used:
            candidate = _generated_colour(generated)
            generated += 1
        colours[i] = candidate
        used.add(candidate)
    return tuple(colours)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClassTable:
    """The classes of a label source.

    Parameters
    ----------
    values : tuple of int
        Output class values, ascending, each in ``0..254``. Index ``i`` (what the model predicts) is class
        ``values[i]``.
    names : tuple of str
        One name per class.
    colours : tuple of (r, g, b), optional
        One display colour per class; :func:`default_colours` when empty.
    ignore_index : int
        Index that marks pixels without a label (255).
    """

    values: tuple[int, ...]
    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        values = tuple(int(v) for v in self.values)
        names = tuple(str(n) for n in self.names)
        if len(values) != len(names):
            raise LabelError(
                f"class table has {len(values)} values but {len(names)} names; give one name per value"
            )
        if not values:
            raise LabelError("class table is empty; the labels need at least one class")
        if len(values) > 255:
            raise LabelError(f"{len(values)} classes is more than 255; merge classes with a mapping")
        if len(set(values)) != len(values):
            raise LabelError(f"class values {list(values)} repeat; give each class its own value")
        if len(set(names)) != len(names):
            raise LabelError(f"class names {list(names)} repeat; give each class its own name")
        bad = [v for v in values if not 0 <= v <= 254]
        if bad:
            raise LabelError(f"class values {bad} are outside 0..254; map them to smaller ids with a mapping")
        if list(values) != sorted(values):
            raise LabelError(f"class values {list(values)} are not ascending; list classes by value")
        colours = tuple(tuple(int(c) for c in colour) for colour in self.colours) or default_colours(names)
        if len(colours) != len(values) or any(
            len(c) != 3 or not all(0 <= x <= 255 for x in c) for c in colours
        ):
            raise LabelError("class colours must be one (r, g, b) triple of 0..255 per class")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "colours", colours)
        object.__setattr__(self, "ignore_index", int(self.ignore_index))

    @property
    def num_classes(self) -> int:
        """Number of classes (model output channels)."""
        return len(self.values)

    def index_of(self, value: int | str) -> int:
        """Index of a class given its value or its name; LabelError when there is no such class."""
        if isinstance(value, str):
            if value in self.names:
                return self.names.index(value)
            raise LabelError(f"no class named {value!r}; the classes are {list(self.names)}")
        if int(value) in self.values:
            return self.values.index(int(value))
        raise LabelError(f"no class with value {value!r}; the class values are {list(self.values)}")

    def value_of(self, index: int) -> int:
        """Class value of a model index."""
        if not 0 <= int(index) < self.num_classes:
            raise LabelError(f"class index {index} is outside 0..{self.num_classes - 1}")
        return self.values[int(index)]

    def name_of(self, index: int) -> str:
        """Class name of a model index."""
        return self.names[self.values.index(self.value_of(index))]

    def value_lut(self) -> np.ndarray:
        """``uint8`` lookup of 256 entries: class index -> class value (ignore -> ignore)."""
        lut = np.full(256, self.ignore_index, dtype=np.uint8)
        lut[: self.num_classes] = np.asarray(self.values, dtype=np.uint8)
        return lut

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "values": list(self.values),
            "names": list(self.names),
            "colours": [list(c) for c in self.colours],
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassTable:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                values=tuple(data["values"]),
                names=tuple(data["names"]),
                colours=tuple(tuple(c) for c in data.get("colours", ())),
                ignore_index=data.get("ignore_index", IGNORE_INDEX),
            )
        except (KeyError, TypeError) as exc:
            raise LabelError(
                f"class table description is incomplete ({exc}); it needs 'values' and 'names'"
            ) from exc


def sorted_table(
    pairs: dict[int, str], colours: dict[int, tuple[int, int, int]] | None = None
) -> ClassTable:
    """A :class:`ClassTable` from ``{value: name}`` in ascending value order (colours kept when all are given)."""
    values = tuple(sorted(pairs))
    names = tuple(pairs[v] for v in values)
    colour_list = ()
    if colours and all(v in colours for v in values):
        colour_list = tuple(colours[v] for v in values)
    return ClassTable(values=values, names=names, colours=colour_list)


# ----------------------------------------------------------------------------------------------------------------
# Reading a class map back


def read_class_names(dataset) -> dict[int, str]:
    """Class names stored in a prediction raster, ``{value: name}``; empty when it has none.

    Looks, in order, at the ``CLASS_NAMES`` tag of band 1 and of the dataset (a JSON object ``{value: name}``, or
    a JSON list of names with a ``CLASS_VALUES`` JSON list of the same length, or a plain list indexed by value),
    then at the GDAL category names of band 1 (``.aux.xml``).

    Parameters
    ----------
    dataset : rasterio.io.DatasetReader
        The open class map.
    """
    for tags in (dataset.tags(1), dataset.tags()):
        names = _names_from_tags(tags)
        if names:
            return names
    from rs_pgd.output import read_category_names

    try:
        categories = read_category_names(dataset.name)
    except Exception:  # pragma: no cover - unreadable PAM sidecar
        categories = []
    return {v: str(name) for v, name in enumerate(categories) if name}


def _names_from_tags(tags: dict) -> dict[int, str]:
    text = tags.get("CLASS_NAMES")
    if not text:
        return {}
    try:
        names = json.loads(text)
        if isinstance(names, dict):
            return {int(k): str(v) for k, v in names.items()}
        if isinstance(names, list):
            values = json.loads(tags["CLASS_VALUES"]) if "CLASS_VALUES" in tags else list(range(len(names)))
            if len(values) == len(names):
                return {int(v): str(n) for v, n in zip(values, names)}
    except (ValueError, TypeError, KeyError):
        pass
    return {}


def class_name(names: dict[int, str], value: int) -> str:
    """Name of a class value, ``"class <value>"`` when the raster does not name it."""
    return names.get(int(value), f"class {int(value)}")


def open_class_map(path):
    """Open a class map (one band of integer class values) with rasterio; a one-line :class:`SceneError` otherwise.

    Refuses what is no class map: several bands, floating-point pixels, or a band scale or offset (probability
    rasters written by ``rs-pgd predict --probabilities`` have all three, one band per class).
    """
    from rs_pgd.raster import open_scene

    dataset = open_scene(path)
    problem = _class_map_problem(dataset)
    if problem:
        dataset.close()
        raise SceneError(f"{path} {problem}; give the class map written by rs-pgd predict -o")
    return dataset


def _class_map_problem(dataset) -> str | None:
    """Why an open raster is no class map, or None."""
    if dataset.count > 1:
        return (
            f"has {dataset.count} bands, not one band of class values (it looks like a probability raster from "
            "--probabilities)"
        )
    dtype = np.dtype(dataset.dtypes[0])
    if not np.issubdtype(dtype, np.integer):
        return f"holds {dtype.name} pixels, not class values (a probability or continuous raster)"
    scale, offset = dataset.scales[0], dataset.offsets[0]
    if (scale is not None and scale != 1.0) or (offset is not None and offset != 0.0):
        return f"has a band scale {scale:g} and offset {offset:g}, so its pixels are measurements, not class values"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Mappings


def normalise_key(value, integer: bool):
    """A class key as compared with mapping keys: an int for whole numbers of an integer column, else a string."""
    if integer:
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            return str(value)
        return int(as_float) if as_float == int(as_float) else str(value)
    return str(value)


def preview(items, limit=10) -> str:
    """The first ``limit`` items, quoted, for one-line messages."""
    items = list(items)
    text = ", ".join(repr(i) for i in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def read_mapping(path) -> dict:
    """Read a mapping file: a JSON object of source class value or name -> target class name, id or ``null``.

    A UTF-8 byte-order mark is accepted; the contents are checked with :func:`check_mapping`.

    Raises
    ------
    LabelError
        Missing or unreadable file, invalid JSON (with its line and column), not an object, empty, or a target
        that is not a class name, an id 0..254 or ``null``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelError(f"mapping file {path} not found; give a JSON file mapping source classes to classes") from None
    except UnicodeDecodeError:
        raise LabelError(f"mapping file {path} is not UTF-8 text; save it as UTF-8 JSON") from None
    except OSError as exc:
        raise LabelError(f"cannot read mapping file {path}: {exc.strerror or exc}; check the path") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelError(
            f"mapping file {path} is not a JSON object of source class -> class: {exc.msg} at line {exc.lineno}, "
            f'column {exc.colno}; write it like {{"Vinterhvede": "cereal", "Skov": null}}'
        ) from None
    return check_mapping(data, where=f"mapping file {path}")


def check_mapping(mapping, where: str = "the mapping") -> dict:
    """Check a mapping's shape and targets, raising a one-line :class:`LabelError`; returns it unchanged.

    Every target must be a class name (a non-empty string), an integer class id ``0..254`` (not a boolean, not a
    fraction) or ``None``; the mapping must hold at least one entry.
    """
    if not isinstance(mapping, dict):
        raise LabelError(
            f'{where} must hold a JSON object such as {{"Vinterhvede": "cereal"}}, not a {type(mapping).__name__}'
        )
    if not mapping:
        raise LabelError(f'{where} is empty ({{}}); map at least one source class, e.g. {{"Vinterhvede": "cereal"}}')
    for key, target in mapping.items():
        problem = _target_problem(target)
        if problem:
            raise LabelError(
                f"{where}: the target of {str(key)!r} is {json.dumps(target)} ({problem}); map each source class "
                "to a class name, an integer id 0..254, or null to drop it"
            )
    return mapping


def _target_problem(target) -> str | None:
    """Why a mapping target is not usable, or None when it is."""
    if target is None:
        return None
    if isinstance(target, bool):
        return "a boolean"
    if isinstance(target, str):
        return None if target.strip() else "an empty name"
    if isinstance(target, (int, np.integer)):
        return None if 0 <= int(target) <= 254 else "outside 0..254"
    if isinstance(target, (float, np.floating)):
        return "not an integer" if target != int(target) else "a decimal number; write it without '.0'"
    return f"a {type(target).__name__}"


def apply_mapping(source_keys: list, integer: bool, mapping: dict, report: list[str], where: str = "the labels",
                  unknown_keys: str = "error"):
    """Map source keys to targets. Returns ({source key: target value or None}, {target value: name}).

    A mapping key that is no class of the labels is a LabelError when ``unknown_keys`` is ``"error"`` (a typo
    would otherwise add an empty class and drop the features it meant to map). With ``"keep"`` (several label
    files sharing one mapping, each holding only some of its keys) its target stays a class, noted in ``report``.
    """
    check_mapping(mapping)
    norm = {normalise_key(k, integer): t for k, t in mapping.items()}
    known = set(source_keys)
    unknown = [str(k) for k in mapping if normalise_key(k, integer) not in known]
    if unknown and unknown_keys == "keep":
        report.append(f"mapping keys not found in {where}: {preview(unknown)}")
    elif unknown:
        raise LabelError(
            f"mapping keys {preview(unknown)} are no class of {where}; its classes are "
            f"{preview(sorted(known, key=str), 20)}; fix or remove those keys"
        )
    targets = {t for t in norm.values() if t is not None}
    if not targets:
        raise LabelError("the mapping maps every value to None; map at least one value to a class")
    if all(isinstance(t, str) for t in targets):
        names = sorted(targets)
        value_of_target = {name: i + 1 for i, name in enumerate(names)}
        if len(names) > 254:
            raise LabelError(f"the mapping has {len(names)} target classes, more than 254; merge some")
        table = {v: n for n, v in value_of_target.items()}
    elif all(isinstance(t, (int, np.integer)) for t in targets):
        value_of_target = {int(t): int(t) for t in targets}
        table = {v: str(v) for v in value_of_target.values()}
    else:
        raise LabelError(
            "mapping targets mix names and numbers; map every value to a class name, or every one to an id"
        )
    unmapped = sorted({k for k in source_keys if k not in norm}, key=str)
    if unmapped:
        warn_label(
            report,
            f"dropped the features of {len(unmapped)} class values not in the mapping: {preview(unmapped)}",
        )
    key_to_value = {
        k: (value_of_target[norm[k]] if norm.get(k) is not None else None) for k in set(source_keys)
    }
    return key_to_value, table


def with_background(table: ClassTable, background, report: list[str]):
    """Class table with the background class added if needed, and the background index (or None)."""
    if background is None:
        return table, None
    if isinstance(background, str) and background in table.names:
        index = table.names.index(background)
    elif not isinstance(background, str) and int(background) in table.values:
        index = table.values.index(int(background))
    else:
        pairs = dict(zip(table.values, table.names))
        if isinstance(background, str):
            value = next(v for v in range(255) if v not in pairs)
            pairs[value] = background
        else:
            value = int(background)
            if not 0 <= value <= 254:
                raise LabelError(f"background value {value} is outside 0..254; choose a class id in 0..254")
            pairs[value] = "background"
        table = sorted_table(pairs)
        index = table.values.index(value)
        report.append(f"added background class {table.names[index]!r} with value {table.values[index]}")
    report.append(
        f"scene pixels with no label are class {table.names[index]!r} (value {table.values[index]})"
    )
    return table, index


def unify_class_tables(tables: list, names_of_sources: list) -> tuple:
    """One class table for several label sources, matched by class name: the union, in value order.

    A class keeps its value from the first table that has it; a name whose value is taken by another class gets
    the next free value. Labels that hold one class only are refused: a model cannot learn from them.

    Parameters
    ----------
    tables : list of ClassTable
    names_of_sources : list of str
        The label files, for messages.

    Returns
    -------
    union : ClassTable
    luts : list of (256,) uint8 arrays or None
        Per table, the lookup from its class indices to the union's (None where they already agree).
    """
    first = tables[0]
    names, values, colours = list(first.names), list(first.values), list(first.colours)
    for table, source in zip(tables[1:], names_of_sources[1:]):
        new = [n for n in table.names if n not in names]
        if new:
            warnings.warn(f"{source} adds classes {new} to those of {names_of_sources[0]}", LabelWarning, stacklevel=2)
        for name in new:
            value = table.values[table.names.index(name)]
            if value in values:
                value = min(v for v in range(255) if v not in values)
            names.append(name)
            values.append(value)
            colours.append(table.colours[table.names.index(name)])
    order = sorted(range(len(values)), key=values.__getitem__)
    union = ClassTable(tuple(values[i] for i in order), tuple(names[i] for i in order),
                       tuple(colours[i] for i in order))
    if union.num_classes < 2:
        raise LabelError(f"the labels hold one class only ({union.names[0]!r}): a model cannot learn from them; "
                         "label the other classes too, or give --background CLASS to call every unlabelled pixel "
                         "that class")
    luts = []
    for table in tables:
        if table.names == union.names:
            luts.append(None)
            continue
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[: table.num_classes] = [union.names.index(n) for n in table.names]
        luts.append(lut)
    return union, luts
