"""Write a class mapping that merges Danish LPIS crop names (column ``Afgroede``) into four groups.

Usage: python data_recipes/denmark_crop_groups.py PARCELS.shp OUT.json

The parcels are the Danish open LPIS data of 2016 (via chrieke/InstanceSegmentation_Sentinel2). Crops whose
name contains a cereal word become ``cereal``, grass and clover leys ``grass``, maize ``maize``, everything else
``other``.
"""

import json
import sys

import geopandas as gpd

GROUPS = {
    "cereal": ("hvede", "byg", "rug", "havre", "triticale", "spelt"),
    "grass": ("græs", "kløver", "graes"),
    "maize": ("majs",),
}


def crop_group(name: str) -> str:
    """The group of one crop name (case-insensitive substring match)."""
    lower = name.lower()
    for group, words in GROUPS.items():
        if any(word in lower for word in words):
            return group
    return "other"


def crop_mapping(parcels, column: str = "Afgroede") -> dict:
    """``{crop name: group}`` for every crop name in the parcels file."""
    names = gpd.read_file(parcels, columns=[column])[column].dropna().unique()
    return {str(n): crop_group(str(n)) for n in sorted(names)}


if __name__ == "__main__":
    mapping = crop_mapping(sys.argv[1])
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(mapping, f, ensure_ascii=False, indent=1)
    print(f"{len(mapping)} crops -> {sorted(set(mapping.values()))}")
