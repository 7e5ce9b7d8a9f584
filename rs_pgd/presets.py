"""Band presets: how to turn a product's stored numbers into physical values, and what its bands are called.

A :class:`Preset` names the bands of a product in file order and gives the linear rescaling from stored
digital numbers (DN) to physical values: ``value = DN * scale + offset``. It may also name a nodata DN that the
product uses even when the file carries no nodata tag (0 for Landsat Collection 2 and Sentinel-2 products).

Presets live in the :data:`PRESETS` registry; :func:`get_preset` looks one up by name and raises
:class:`~rs_pgd.errors.PresetError` listing the valid names. :func:`resolve_bands` turns a user's band selection
(1-based band numbers or band names) into rasterio band indexes.

One preset, :data:`FROM_SCENE` (``from-scene``), holds no numbers of its own: a reader given it takes each selected
band's scale and offset from the scene itself (a STAC item's ``raster:bands``, or a raster's GDAL band
scale/offset metadata), see :func:`scene_preset`. It is what a STAC item is read with when no preset is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rs_pgd.errors import PresetError


@dataclass(frozen=True)
class Preset:
    """How to read one product.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"sentinel2-l2a"``.
    description : str
        One line for ``--help`` and reports.
    band_names : tuple of str
        Band names in file order (band 1 first). Empty for the generic preset.
    scale, offset : float or tuple of float
        Physical value = DN * scale + offset. A tuple gives one value per selected band (only the presets
        :func:`scene_preset` makes, which belong to one band selection of one scene).
    default_bands : tuple of int or None
        1-based bands read when the user selects none; None means every band of the scene.
    nodata : float or None
        DN that means "no data" in this product even where the file has no nodata tag.
    from_scene : bool
        The scale and offset are read from the scene (see :func:`scene_preset`); for :data:`FROM_SCENE` itself
        they are placeholders.
    """

    name: str
    description: str
    band_names: tuple[str, ...] = ()
    scale: float | tuple[float, ...] = 1.0
    offset: float | tuple[float, ...] = 0.0
    default_bands: tuple[int, ...] | None = None
    nodata: float | None = None
    from_scene: bool = False

    @property
    def is_identity(self) -> bool:
        """True when the preset leaves stored values unchanged (scale 1, offset 0, in every band)."""
        scales = self.scale if isinstance(self.scale, tuple) else (self.scale,)
        offsets = self.offset if isinstance(self.offset, tuple) else (self.offset,)
        return all(v == 1.0 for v in scales) and all(v == 0.0 for v in offsets)

    def to_dict(self) -> dict:
        """JSON-ready description, stored in checkpoints so inference reads the scene the same way."""
        return {
            "name": self.name,
            "description": self.description,
            "band_names": list(self.band_names),
            "scale": list(self.scale) if isinstance(self.scale, tuple) else self.scale,
            "offset": list(self.offset) if isinstance(self.offset, tuple) else self.offset,
            "default_bands": None if self.default_bands is None else list(self.default_bands),
            "nodata": self.nodata,
        }


_S2_L2A_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
_S2_L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_LANDSAT_OLI_SR_BANDS = ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7")
_LANDSAT8_L1_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11")

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="generic",
            description="any raster: values used as stored (scale 1, offset 0)",
        ),
        Preset(
            name="landsat-c2-l2",
            description="Landsat 8/9 Collection 2 Level-2 surface reflectance (SR_B1..SR_B7): DN * 0.0000275 - 0.2",
            band_names=_LANDSAT_OLI_SR_BANDS,
            scale=0.0000275,
            offset=-0.2,
            nodata=0.0,
        ),
        Preset(
            name="landsat8-l1",
            description="Landsat 8 Level-1 digital numbers (B1..B11), used as stored",
            band_names=_LANDSAT8_L1_BANDS,
        ),
        Preset(
            name="sentinel2-l2a",
            description="Sentinel-2 L2A, processing baseline 04.00 or later: (DN - 1000) / 10000",
            band_names=_S2_L2A_BANDS,
            scale=1e-4,
            offset=-0.1,
            nodata=0.0,
        ),
        Preset(
            name="sentinel2-l2a-pre04",
            description="Sentinel-2 L2A, processing baseline before 04.00 (before 2022-01-25): DN / 10000",
            band_names=_S2_L2A_BANDS,
            scale=1e-4,
            offset=0.0,
            nodata=0.0,
        ),
        Preset(
            name="sentinel2-l1c",
            description="Sentinel-2 L1C top-of-atmosphere, processing baseline 04.00 or later: (DN - 1000) / 10000",
            band_names=_S2_L1C_BANDS,
            scale=1e-4,
            offset=-0.1,
            nodata=0.0,
        ),
        Preset(
            name="sentinel2-l1c-pre04",
            description="Sentinel-2 L1C top-of-atmosphere, processing baseline before 04.00: DN / 10000",
            band_names=_S2_L1C_BANDS,
            scale=1e-4,
            offset=0.0,
            nodata=0.0,
        ),
        Preset(
            name="from-scene",
            description="scale/offset read from the scene: a STAC item's raster:bands, or the raster's band "
                        "scale/offset metadata (per band)",
            from_scene=True,
        ),
    )
}
"""Registry of presets by name."""

FROM_SCENE = "from-scene"
"""Name of the preset whose scale and offset come from the scene itself (see :func:`scene_preset`)."""

PRESET_ALIASES: dict[str, str] = {"landsat-l1": "landsat8-l1"}
"""Other accepted spellings of preset names."""


def preset_names() -> list[str]:
    """Valid preset names, sorted (aliases not included)."""
    return sorted(PRESETS)


def get_preset(name: str | Preset | None) -> Preset:
    """Look up a preset by name (case-insensitive); a :class:`Preset` is returned as it is, None means generic.

    Raises
    ------
    PresetError
        If the name is unknown; the message lists the valid names.
    """
    if isinstance(name, Preset):
        return name
    if name is None:
        return PRESETS["generic"]
    key = str(name).strip().lower()
    key = PRESET_ALIASES.get(key, key)
    if key not in PRESETS:
        raise PresetError(f"unknown preset {name!r}: choose one of {', '.join(preset_names())}")
    return PRESETS[key]


def scene_preset(scales, offsets) -> Preset:
    """The ``from-scene`` preset of one band selection: ``scales``/``offsets`` are the selected bands' own values.

    ``None`` (no metadata) counts as scale 1, offset 0. Equal values in every band give plain floats, otherwise
    one value per selected band.

    Raises
    ------
    PresetError
        If a scale is zero or a value is not finite (the stored values could not be told apart).
    """
    import math

    scales = tuple(1.0 if v is None else float(v) for v in scales)
    offsets = tuple(0.0 if v is None else float(v) for v in offsets)
    bad = [v for v in scales + offsets if not math.isfinite(v)] + [v for v in scales if v == 0]
    if bad:
        raise PresetError(f"the scene's band scale/offset {bad[0]} cannot be used: give --preset generic or the "
                          "product's preset")
    scale = scales[0] if len(set(scales)) == 1 else scales
    offset = offsets[0] if len(set(offsets)) == 1 else offsets
    return Preset(name=FROM_SCENE, description=PRESETS[FROM_SCENE].description, scale=scale, offset=offset,
                  from_scene=True)


def parse_bands(text: str | Sequence | None) -> list[int | str] | None:
    """Parse a band selection such as ``"1,2,3"``, ``"B04,B03,B02"`` or ``"4 3 2"``.

    Numbers become ints (1-based band numbers), anything else stays a band name. None or an empty string means
    "no selection" and returns None. A sequence is passed through item by item.
    """
    if text is None:
        return None
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    if not items:
        return None
    return [_parse_band_item(item) for item in items]


def _parse_band_item(item) -> int | str:
    if isinstance(item, str):
        item = item.strip()
        return int(item) if item.lstrip("+-").isdigit() else item
    if isinstance(item, bool) or int(item) != item:
        raise PresetError(
            f"band {item!r} is not a band number or name: give 1-based band numbers such as 1,2,3"
        )
    return int(item)


def resolve_bands(bands, count: int, preset: str | Preset | None = "generic", *, descriptions=(),
                  alpha=()) -> tuple[int, ...]:
    """Turn a band selection into 1-based rasterio band indexes.

    Parameters
    ----------
    bands : None, str, or sequence of int or str
        None selects the preset's default bands, or every band that is not an alpha band. Items are 1-based
        band numbers, the scene's band descriptions, or band names of the preset (case-insensitive, ``"B4"``
        also matches ``"B04"``). A string is parsed by :func:`parse_bands`.
    count : int
        Number of bands in the scene.
    preset : str or Preset
        Preset that names the bands.
    descriptions : sequence of (str or None)
        The scene's band descriptions, band 1 first. A name that matches one wins over the preset's band order,
        so a file holding a subset of a product's bands (B02, B03, B04, B08 written by a data recipe) is read
        right.
    alpha : sequence of int
        1-based alpha bands of the scene: masks, never selected by default and refused when asked for.

    Raises
    ------
    PresetError
        If a band number is out of range, a name is neither a band description nor one of the preset's band
        names, or an alpha band is selected.
    """
    preset = get_preset(preset)
    if isinstance(bands, str):
        bands = parse_bands(bands)
    if bands is None:
        bands = preset.default_bands or [b for b in range(1, count + 1) if b not in set(alpha)]
    indexes = tuple(_band_index(item, count, preset, descriptions) for item in bands)
    if not indexes:
        raise PresetError("empty band selection: give at least one band, e.g. --bands 1,2,3")
    masks = [b for b in indexes if b in set(alpha)]
    if masks:
        raise PresetError(
            f"band {masks[0]} is the scene's alpha band, a validity mask rather than data: leave it out of --bands "
            "(its transparent pixels are nodata already); if it holds data, clear its alpha interpretation with "
            "rio edit-info --colorinterp"
        )
    return indexes


def _band_index(item, count: int, preset: Preset, descriptions=()) -> int:
    item = _parse_band_item(item)
    if isinstance(item, str):
        index = _description_index(item, descriptions) or _name_to_index(item, preset)
    else:
        index = item
    if not 1 <= index <= count:
        raise PresetError(
            f"band {item} is out of range: the scene has {count} band{'s' if count != 1 else ''} (numbered 1 to {count})"
        )
    return index


def _description_index(name: str, descriptions) -> int | None:
    wanted = _normal_band_name(name)
    for position, description in enumerate(descriptions or (), start=1):
        if description and _normal_band_name(description) == wanted:
            return position
    return None


def _name_to_index(name: str, preset: Preset) -> int:
    wanted = _normal_band_name(name)
    for position, band_name in enumerate(preset.band_names, start=1):
        if _normal_band_name(band_name) == wanted:
            return position
    if preset.band_names:
        raise PresetError(
            f"band {name!r} is not a band of preset {preset.name!r}: use one of {', '.join(preset.band_names)} "
            "or 1-based band numbers"
        )
    raise PresetError(
        f"band {name!r} cannot be resolved: preset {preset.name!r} has no band names, give 1-based band numbers "
        "or choose a preset"
    )


def _normal_band_name(name: str) -> str:
    """Upper-case name with leading zeros dropped from its number part: B04 -> B4, sr_b4 -> SR_B4."""
    name = name.strip().upper()
    head = name.rstrip("0123456789A")
    tail = name[len(head) :]
    digits = tail.rstrip("A")
    suffix = tail[len(digits) :]
    return head + (digits.lstrip("0") or ("0" if digits else "")) + suffix
