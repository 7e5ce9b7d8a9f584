"""rs_pgd.classes: mapping files (issue 14, finding 10) and the one ignore value."""

import json

import pytest
from rasterio.transform import from_origin

from rs_pgd.classes import IGNORE_INDEX, check_mapping, read_mapping
from rs_pgd.errors import LabelError
from rs_pgd.labels import open_labels


def _write(tmp_path, content, name="mapping.json") -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    """Notepad and Excel save UTF-8 with a BOM; json.loads alone rejects it."""
    text = json.dumps({"Vinterhvede": "cereal", "Skov": None}, ensure_ascii=False)
    path = _write(tmp_path, b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert read_mapping(path) == {"Vinterhvede": "cereal", "Skov": None}
    with pytest.raises(json.JSONDecodeError):  # the companion: without utf-8-sig this file fails
        json.loads(open(path, encoding="utf-8").read())


def test_syntax_errors_give_line_and_column(tmp_path):
    path = _write(tmp_path, '{\n  "Vinterhvede": "cereal",\n  "Skov" "forest"\n}\n')
    with pytest.raises(LabelError, match=r"not a JSON object .*line 3, column 10") as error:
        read_mapping(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{}", r"is empty \(\{\}\); map at least one source class"),
        ("[1, 2]", r"must hold a JSON object .* not a list"),
        ('{"water": true}', r"target of 'water' is true \(a boolean\)"),
        ('{"water": 1.5}', r"target of 'water' is 1.5 \(not an integer\)"),
        ('{"water": 2.0}', r"target of 'water' is 2.0 \(a decimal number; write it without '.0'\)"),
        ('{"water": {"id": 1}}', r"target of 'water' is \{\"id\": 1\} \(a dict\)"),
        ('{"water": ""}', r"target of 'water' is \"\" \(an empty name\)"),
        ('{"water": 300}', r"target of 'water' is 300 \(outside 0..254\)"),
    ],
)
def test_bad_mapping_files_are_one_line_errors(tmp_path, content, message):
    with pytest.raises(LabelError, match=message) as error:
        read_mapping(_write(tmp_path, content))
    assert "\n" not in str(error.value)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(LabelError, match="not found"):
        read_mapping(tmp_path / "nothing.json")
    with pytest.raises(LabelError, match="not UTF-8"):
        read_mapping(_write(tmp_path, '{"Sø": "water"}'.encode("latin-1")))


def test_good_targets_pass_the_check():
    assert check_mapping({"a": "crop", "b": None}) == {"a": "crop", "b": None}
    assert check_mapping({"1": 0, "2": 254})


class Scene:
    width, height, crs = 20, 10, "EPSG:32618"
    transform = from_origin(600000, 5000000, 10, 10)


def _labels(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    halves = [box(600000, 4999900, 600100, 5000000), box(600100, 4999900, 600200, 5000000)]
    path = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"class": ["Vinterhvede", "Skov"]}, geometry=halves, crs="EPSG:32618").to_file(path)
    return path


def test_an_unknown_key_is_an_error_naming_the_classes(tmp_path):
    """A typo used to add an empty class 'cereal' and drop the features the key meant to map."""
    labels = _labels(tmp_path)
    with pytest.raises(LabelError, match=r"keys 'Vinterhvde' are no class of column .class..*'Skov', 'Vinterhvede'"):
        open_labels(labels, Scene(), mapping={"Vinterhvde": "cereal", "Skov": "forest"})
    good = open_labels(labels, Scene(), mapping={"Vinterhvede": "cereal", "Skov": "forest"})
    shared = open_labels(labels, Scene(), mapping={"Vinterhvede": "cereal", "Skov": "forest", "Majs": "maize"},
                         unknown_keys="keep")  # one mapping for several label files: 'maize' stays a class
    assert shared.classes.names == ("cereal", "forest", "maize")
    assert any("'Majs'" in line for line in shared.report)
    assert good.classes.names == ("cereal", "forest")
    assert good.pixel_counts() == {1: 100, 2: 100}


def test_an_empty_mapping_is_not_silently_ignored(tmp_path):
    with pytest.raises(LabelError, match="empty"):
        open_labels(_labels(tmp_path), Scene(), mapping={})


def test_open_labels_reads_a_mapping_file(tmp_path):
    path = _write(tmp_path, '\ufeff{"Vinterhvede": "cereal", "Skov": null}')
    labels = open_labels(_labels(tmp_path), Scene(), mapping=path)
    assert labels.classes.names == ("cereal",) and labels.pixel_counts() == {1: 100}


def test_the_ignore_value_has_one_name():
    """255 is IGNORE_INDEX, defined in rs_pgd.classes only; the other modules import it."""
    import ast
    from pathlib import Path

    import rs_pgd

    assert IGNORE_INDEX == 255
    definitions = []
    for path in Path(rs_pgd.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value == 255:
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                definitions += [f"{path.name}:{n}" for n in names if "PROBABILITY" not in n]
    assert definitions == ["classes.py:IGNORE_INDEX"]
