"""Band presets: registry, scaling constants, band selection."""

import json

import pytest

from rs_pgd.errors import PresetError
from rs_pgd.presets import PRESETS, Preset, get_preset, parse_bands, preset_names, resolve_bands


def test_registry_has_the_documented_presets():
    for name in (
        "generic",
        "landsat-c2-l2",
        "landsat8-l1",
        "sentinel2-l2a",
        "sentinel2-l2a-pre04",
        "sentinel2-l1c",
    ):
        assert name in PRESETS
        assert PRESETS[name].name == name
        json.dumps(PRESETS[name].to_dict())


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(PresetError) as info:
        get_preset("sentinel3")
    message = str(info.value)
    assert "sentinel3" in message and "\n" not in message
    for name in preset_names():
        assert name in message
    assert isinstance(info.value, KeyError)


def test_lookup_is_case_insensitive_accepts_alias_and_presets():
    assert get_preset("Sentinel2-L2A") is PRESETS["sentinel2-l2a"]
    assert get_preset("landsat-l1") is PRESETS["landsat8-l1"]
    assert get_preset(None) is PRESETS["generic"]
    custom = Preset(name="mine", description="x", scale=2.0)
    assert get_preset(custom) is custom


@pytest.mark.parametrize(
    "name, dn, value",
    [
        ("landsat-c2-l2", 7273, 7273 * 0.0000275 - 0.2),  # about 0: DN 7273 is zero reflectance
        ("landsat-c2-l2", 43636, 43636 * 0.0000275 - 0.2),  # about 1
        ("sentinel2-l2a", 1000, 0.0),  # baseline >= 04.00: DN 1000 is zero reflectance
        ("sentinel2-l2a", 11000, 1.0),
        ("sentinel2-l2a-pre04", 10000, 1.0),
        ("sentinel2-l1c", 1000, 0.0),
        ("generic", 123, 123.0),
        ("landsat8-l1", 123, 123.0),
    ],
)
def test_scale_and_offset(name, dn, value):
    preset = get_preset(name)
    assert dn * preset.scale + preset.offset == pytest.approx(value, abs=1e-9)


def test_band_names_follow_the_products():
    assert get_preset("sentinel2-l2a").band_names == (
        "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
    )  # fmt: skip
    assert (
        len(get_preset("sentinel2-l1c").band_names) == 13 and "B10" in get_preset("sentinel2-l1c").band_names
    )
    assert get_preset("landsat-c2-l2").band_names == tuple(f"SR_B{i}" for i in range(1, 8))
    assert get_preset("landsat-c2-l2").nodata == 0 and get_preset("sentinel2-l2a").nodata == 0


def test_parse_bands():
    assert parse_bands("1,2,3") == [1, 2, 3]
    assert parse_bands(" 4 3, 2 ") == [4, 3, 2]
    assert parse_bands("B04,B03,B02") == ["B04", "B03", "B02"]
    assert parse_bands("") is None and parse_bands(None) is None
    assert parse_bands([3, "B02"]) == [3, "B02"]


def test_resolve_bands_numbers_and_default():
    assert resolve_bands(None, 4) == (1, 2, 3, 4)
    assert resolve_bands([3, 1], 4) == (3, 1)
    assert resolve_bands("2,2", 4) == (2, 2)
    with_default = Preset(name="d", description="", default_bands=(4, 3, 2))
    assert resolve_bands(None, 4, with_default) == (4, 3, 2)


def test_resolve_bands_by_name():
    assert resolve_bands(["B04", "B03", "B02"], 12, "sentinel2-l2a") == (4, 3, 2)
    # B11 is the 11th band of L2A (no B10), the 12th of L1C
    assert resolve_bands(["b4", "B8A", "B11"], 12, "sentinel2-l2a") == (4, 9, 11)
    assert resolve_bands(["B8", "B11"], 13, "sentinel2-l1c") == (8, 12)  # B10 shifts B11 in L1C
    assert resolve_bands("SR_B4,SR_B3,SR_B2", 7, "landsat-c2-l2") == (4, 3, 2)


@pytest.mark.parametrize("bands", [[0], [5], [-1], "1,5"])
def test_out_of_range_says_how_many_bands(bands):
    with pytest.raises(PresetError, match="the scene has 4 bands"):
        resolve_bands(bands, 4)


def test_band_name_beyond_scene_count_is_out_of_range():
    with pytest.raises(PresetError, match="the scene has 3 bands"):
        resolve_bands(["B08"], 3, "sentinel2-l2a")


def test_unknown_band_name():
    with pytest.raises(PresetError, match="B10.*sentinel2-l2a"):
        resolve_bands(["B10"], 12, "sentinel2-l2a")  # L2A has no cirrus band
    with pytest.raises(PresetError, match="no band names"):
        resolve_bands(["red"], 3, "generic")
    with pytest.raises(PresetError):
        resolve_bands([], 3)


def test_scene_preset_is_one_value_when_the_bands_agree_and_one_per_band_otherwise():
    from rs_pgd.presets import scene_preset

    same = scene_preset([0.0001, 0.0001], [-0.1, -0.1])
    assert (same.name, same.scale, same.offset, same.from_scene) == ("from-scene", 0.0001, -0.1, True)
    mixed = scene_preset([0.0001, None], [-0.1, None])  # no metadata: as stored
    assert (mixed.scale, mixed.offset) == ((0.0001, 1.0), (-0.1, 0.0)) and not mixed.is_identity
    assert mixed.to_dict()["scale"] == [0.0001, 1.0]
    assert scene_preset([None], [None]).is_identity
    with pytest.raises(PresetError, match="cannot be used"):
        scene_preset([0.0], [0.0])
    assert get_preset("from-scene").from_scene and "from-scene" in preset_names()
