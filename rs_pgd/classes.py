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

from rs_pgd.errors import LabelError

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
    values = tuple(sorted(pairs))
    names = tuple(pairs[v] for v in values)
    colour_list = ()
    if colours and all(v in colours for v in values):
        colour_list = tuple(colours[v] for v in values)
    return ClassTable(values=values, names=names, colours=colour_list)


# ----------------------------------------------------------------------------------------------------------------
# Mappings


def normalise_key(value, integer: bool):
    if integer:
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            return str(value)
        return int(as_float) if as_float == int(as_float) else str(value)
    return str(value)


def preview(items, limit=10) -> str:
    items = list(items)
    text = ", ".join(repr(i) for i in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def apply_mapping(source_keys: list, integer: bool, mapping: dict, report: list[str]):
    """Map source keys to targets. Returns ({source key: target value or None}, {target value: name})."""
    norm = {normalise_key(k, integer): t for k, t in mapping.items()}
    targets = {t for t in norm.values() if t is not None}
    if not targets:
        raise LabelError("the mapping maps every value to None; map at least one value to a class")
    if all(isinstance(t, str) for t in targets):
        names = sorted(targets)
        value_of_target = {name: i + 1 for i, name in enumerate(names)}
        if len(names) > 254:
            raise LabelError(f"the mapping has {len(names)} target classes, more than 254; merge some")
        table = {v: n for n, v in value_of_target.items()}
    elif all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in targets):
        value_of_target = {int(t): int(t) for t in targets}
        bad = sorted(t for t in value_of_target if not 0 <= t <= 254)
        if bad:
            raise LabelError(f"mapping targets {bad} are outside 0..254; use class ids 0..254 or class names")
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


