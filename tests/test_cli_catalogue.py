"""Bad-input catalogue: every case runs the real CLI in a subprocess (``python -m rs_pgd.cli.main``).

A refused input must give exit status 2, exactly one non-empty stderr line ``Error: ...`` naming the problem and
what to do, no traceback, and nothing at all in the output folder (no file, no hidden temporary file). An input
that rs-pgd handles must give exit status 0, the expected output and, where asked, a ``Warning:`` line.

The cases run concurrently (a thread pool of subprocesses) on first use, because each ``fit``/``predict`` pays
~3.5 s of torch import; the parametrized tests then check one result each. docs/reliability.md lists the table.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio

_spec = importlib.util.spec_from_file_location("bad_inputs", Path(__file__).parent / "data" / "bad_inputs.py")
bad = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad)

FAST = ["--encoder", "resnet18", "--tile", "64", "--margin", "32", "--epochs", "1", "--batch-size", "4",
        "--workers", "0", "--quiet", "--val-fraction", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONWARNINGS": "ignore::DeprecationWarning"}
ENV.pop("RS_PGD_DEBUG", None)


def run_cli(args, cwd, timeout=180) -> subprocess.CompletedProcess:
    """Run ``rs-pgd ARGS`` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "rs_pgd.cli.main", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Case:
    """One catalogue row: ``args`` may use ``{in}`` (inputs folder) and ``{out}`` (this case's output folder)."""

    id: str
    args: list
    expect: str  # "error" or "ok"
    match: str  # regex the Error/Warning line (or stdout, for ok) must match
    output: str | None = "out.tif"  # relative to {out}: must not exist on error, must exist on ok
    warning: str | None = None  # ok cases: regex of a required "Warning:" line
    check: object = None  # ok cases: callable(output_path) with extra assertions
    tags: list = field(default_factory=list)


def fit(scene, labels, out="m.safetensors", *extra):
    return ["fit", f"{{in}}/{scene}", f"{{in}}/{labels}", "-o", f"{{out}}/{out}", *FAST, *extra]


def info(scene, labels=None):
    return ["info", f"{{in}}/{scene}", *([f"{{in}}/{labels}"] if labels else [])]


def predict(model, scene, out="out.tif", *extra):
    return ["predict", f"{{in}}/{model}", f"{{in}}/{scene}", "-o", f"{{out}}/{out}", "--quiet", "--workers", "0",
            *extra]


def _class_map_ok(path):
    with rasterio.open(path) as ds:
        data = ds.read(1)
        assert ds.crs is not None and not ds.transform.is_identity
    assert set(np.unique(data)) <= {1, 2, 255}


def _checkpoint_ok(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "rs-pgd-checkpoint"


E, OK = "error", "ok"
CASES = [
    # -- scene files --------------------------------------------------------------------------------------
    Case("scene-missing", fit("missing.tif", "labels.gpkg"), E, r"scene not found.*check the path", "m.safetensors"),
    Case("scene-not-raster", info("notes.tif"), E, r"not a raster.*GeoTIFF", None),
    Case("scene-truncated", info("truncated.tif"), E, r"corrupt or truncated.*again", None),
    Case("scene-truncated-predict", predict("model.safetensors", "truncated.tif"), E, r"corrupt or truncated"),
    Case("scene-truncated-fit", fit("truncated.tif", "labels.gpkg"), E, r"corrupt or truncated", "m.safetensors"),
    Case("scene-empty-file", info("empty.tif"), E, r"empty \(0 bytes\)", None),
    Case("scene-nocrs-vector-labels", fit("nocrs.tif", "labels.gpkg"), E, r"no CRS.*rio edit-info --crs",
         "m.safetensors"),
    Case("scene-nocrs-label-raster", fit("nocrs.tif", "labels.tif"), OK, r"wrote", "m.safetensors",
         check=_checkpoint_ok),
    Case("scene-rotated", fit("rotated.tif", "labels.gpkg"), E, r"rotated or sheared.*gdalwarp", "m.safetensors"),
    Case("scene-sheared-predict", predict("model.safetensors", "sheared.tif"), E, r"rotated or sheared.*gdalwarp"),
    Case("scene-gcps-only", fit("gcps.tif", "labels.gpkg"), E, r"ground control points.*gdalwarp", "m.safetensors"),
    Case("scene-gcps-only-predict", predict("model.safetensors", "gcps.tif"), E, r"ground control points.*gdalwarp"),
    Case("scene-epsg4326", fit("geographic.tif", "labels.gpkg"), OK, r"wrote", "m.safetensors",
         warning=r"geographic CRS \(EPSG:4326\)", check=_checkpoint_ok),
    Case("scene-all-nodata", fit("allnodata.tif", "labels.gpkg"), E, r"no valid pixel.*nodata", "m.safetensors"),
    Case("scene-smaller-than-window", fit("small.tif", "labels.gpkg"), OK, r"wrote", "m.safetensors",
         check=_checkpoint_ok),
    Case("scene-smaller-than-window-predict", predict("model.safetensors", "small.tif"), OK, r"wrote",
         check=_class_map_ok),
    Case("scene-1-band", info("bands1.tif", "labels.gpkg"), OK, r"1 band\(s\)", None),
    Case("scene-13-band", fit("bands13.tif", "labels.gpkg"), OK, r"wrote", "m.safetensors", check=_checkpoint_ok),
    Case("scene-uint16", info("uint16.tif", "labels.gpkg"), OK, r"uint16", None),
    Case("scene-int16", info("int16.tif", "labels.gpkg"), OK, r"int16", None),
    Case("scene-float32-nan", fit("float32.tif", "labels.gpkg"), OK, r"wrote .* after \d+ steps?$", "m.safetensors",
         check=_checkpoint_ok),
    # -- labels -------------------------------------------------------------------------------------------
    Case("labels-missing", info("scene.tif", "missing.gpkg"), E, r"labels not found.*check the path", None),
    Case("labels-no-crs", fit("scene.tif", "nocrs.gpkg"), E, r"no CRS.*ogr2ogr -a_srs", "m.safetensors"),
    Case("labels-other-crs", info("scene.tif", "mercator.gpkg"), OK,
         r"reprojected labels from EPSG:3857 to EPSG:32618", None),
    Case("labels-no-overlap", info("scene.tif", "elsewhere.gpkg"), E, r"do not overlap.*cover the same area", None),
    Case("labels-empty", info("scene.tif", "empty.gpkg"), E, r"no features.*add features", None),
    Case("labels-invalid-geometry", info("scene.tif", "invalid.gpkg"), OK, r"repaired 1 invalid geometr", None),
    Case("labels-points", info("scene.tif", "points.gpkg"), OK, r"water .* px", None),
    Case("labels-lines", info("scene.tif", "lines.gpkg"), OK, r"water .* px", None),
    Case("labels-no-class-column", info("scene.tif", "nocolumn.gpkg"), E, r"no class column.*--class-column", None),
    Case("labels-unknown-class-column", fit("scene.tif", "labels.gpkg", "m.safetensors", "--class-column", "nope"),
         E, r"no column 'nope'.*columns are", "m.safetensors"),
    Case("labels-ambiguous-column", info("scene.tif", "ambiguous.gpkg"), E, r"several possible class columns.*--class-column",
         None),
    Case("labels-null-classes", fit("scene.tif", "nulls.gpkg"), E, r"no feature .* has a value.*another column",
         "m.safetensors", tags=["warning-first"]),
    Case("labels-300-string-classes", info("scene.tif", "many.gpkg"), E, r"300 distinct classes.*mapping", None),
    Case("labels-mapping-not-json", fit("scene.tif", "labels.gpkg", "m.safetensors", "--mapping", "{in}/mapping.json"),
         E, r"--mapping.*not a JSON object", "m.safetensors"),
    Case("labels-raster-other-grid", info("scene.tif", "labels_3857.tif"), OK, r"labels_3857.tif \(raster\)", None),
    # -- checkpoints --------------------------------------------------------------------------------------
    Case("checkpoint-band-count", predict("model.safetensors", "bands1.tif"), E,
         r"trained on bands 1 \(band 1\), 2 \(band 2\), 3 \(band 3\) but bands1.tif has 1 band.*--bands"),
    Case("checkpoint-preset", predict("model_s2.safetensors", "scene.tif"), E, r"trained on bands .*has 3 band"),
    Case("checkpoint-text", predict("notes.safetensors", "scene.tif"), E, r"not an rs-pgd checkpoint.*written by rs-pgd"),
    Case("checkpoint-torch-pickle", predict("weights.pt", "scene.tif"), E, r"not an rs-pgd checkpoint.*not a safetensors"),
    Case("checkpoint-foreign-safetensors", predict("foreign.safetensors", "scene.tif"), E,
         r"no rs-pgd metadata.*written by rs-pgd"),
    Case("checkpoint-missing", predict("nothing.safetensors", "scene.tif"), E, r"not found; check the path"),
    # -- outputs ------------------------------------------------------------------------------------------
    Case("output-dir-missing", predict("model.safetensors", "scene.tif", "no/such/dir/out.tif"), E,
         r"does not exist; create it", "no/such/dir/out.tif"),
    Case("output-dir-is-a-file", ["predict", "{in}/model.safetensors", "{in}/scene.tif", "-o", "{in}/notes.tif/out.tif",
                                  "--quiet", "--workers", "0"], E, r"does not exist; create it", None),
    Case("output-dir-not-writable", ["predict", "{in}/model.safetensors", "{in}/scene.tif", "-o", "/proc/out.tif",
                                     "--quiet", "--workers", "0"], E, r"/proc is not writable", None),
    Case("output-equals-input-predict", ["predict", "{in}/model.safetensors", "{in}/scene.tif", "-o", "{in}/scene.tif",
                                         "--quiet"], E, r"also an input.*another output path", None),
    Case("output-equals-input-fit", ["fit", "{in}/scene.tif", "{in}/labels.gpkg", "-o", "{in}/labels.gpkg", *FAST], E,
         r"also an input.*another output path", None),
    # outputs named for another format than the one written (issue 14 #13: -o pred.png wrote a GeoTIFF)
    Case("output-png-name-predict", predict("model.safetensors", "scene.tif", "pred.png"), E,
         r"-o pred.png ends in .png, but rs-pgd writes a Cloud Optimized GeoTIFF there; name it pred.tif",
         "pred.png"),
    Case("output-probabilities-png-name", predict("model.safetensors", "scene.tif", "out.tif", "--probabilities",
                                                  "{out}/p.png"), E, r"--probabilities p.png .*GeoTIFF.*p.tif"),
    Case("output-preview-tif-name", predict("model.safetensors", "scene.tif", "out.tif", "--preview",
                                            "{out}/q.tif"), E, r"--preview q.tif .*a PNG there; name it q.png"),
    Case("output-confusion-not-png", ["evaluate", "{in}/classes.tif", "{in}/labels.gpkg", "--confusion-png",
                                      "{out}/c.jpg"], E, r"--confusion-png c.jpg .*PNG.*c.png", "c.jpg"),
    Case("vectorize-output-not-vector", ["vectorize", "{in}/classes.tif", "-o", "{in}/classes.tif"], E,
         r"cannot tell the vector format.*\.gpkg", None),
    # -- options ------------------------------------------------------------------------------------------
    Case("tile-not-multiple-of-32", fit("scene.tif", "labels.gpkg", "m.safetensors", "--tile", "50"), E,
         r"tile 50 must be a positive multiple of 32.*try 64", "m.safetensors"),
    Case("margin-negative-predict", predict("model.safetensors", "scene.tif", "out.tif", "--margin", "-32"), E,
         r"margin -32 is negative"),
    Case("stride-larger-than-tile-predict", predict("model.safetensors", "scene.tif", "out.tif", "--tile", "64", "--stride", "128"), E,
         r"stride 128 is larger than tile 64"),
    Case("unknown-arch", fit("scene.tif", "labels.gpkg", "m.safetensors", "--arch", "Nope"), E,
         r"unknown architecture 'Nope'; choose one of .*Unet.*FPN", "m.safetensors"),
    Case("unknown-encoder", fit("scene.tif", "labels.gpkg", "m.safetensors", "--encoder", "nope"), E,
         r"unknown encoder 'nope'.*resnet18", "m.safetensors"),
    Case("unknown-preset", fit("scene.tif", "labels.gpkg", "m.safetensors", "--preset", "nope"), E,
         r"unknown preset 'nope'.*generic.*sentinel2-l2a", "m.safetensors"),
    Case("encoder-weights-missing", fit("scene.tif", "labels.gpkg", "m.safetensors", "--encoder-weights",
                                        "{in}/missing.pth"), E, r"encoder weights file .* not found", "m.safetensors"),
    Case("unknown-option", fit("scene.tif", "labels.gpkg", "m.safetensors", "--bogus"), E,
         r"No such option '--bogus'.*--help", "m.safetensors"),
]
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
    CASES.append(Case("device-cuda-without-cuda", fit("scene.tif", "labels.gpkg", "m.safetensors", "--device", "cuda"),
                      E, r"CUDA is not available.*--device cpu", "m.safetensors"))


# -- issue 14: label rasters, mapping files, evaluate and vectorize -------------------------------------------
def _wgs84_geojson(path):
    import geopandas as gpd

    frame = gpd.read_file(path)
    assert frame.crs.to_epsg() == 4326 and -76 < frame.total_bounds[0] < -74  # RFC 7946 longitude/latitude


def _neighbours_share_a_border(path):
    import geopandas as gpd
    import shapely

    frame = gpd.read_file(path)
    water, land = (shapely.union_all(frame[frame["class_id"] == v].geometry.values) for v in (1, 2))
    assert shapely.length(shapely.intersection(water, land)) >= 0.99 * bad.SIZE * bad.RES  # the whole middle line
    assert shapely.area(shapely.intersection(water, land)) == 0


def evaluate(pred, labels, *extra):
    return ["evaluate", f"{{in}}/{pred}", f"{{in}}/{labels}", *extra]


def _has_pyarrow():
    return importlib.util.find_spec("pyarrow") is not None


CASES += [
    Case("labels-float-raster-whole-values", info("scene.tif", "labels_float.tif"), OK,
         r"labels_float.tif \(raster\)[\s\S]*1\s+1\s+4,416 px", None),
    Case("labels-float-raster-fractions", info("scene.tif", "labels_fraction.tif"), E,
         r"not whole numbers \(0.5, 1.25, 2.5, \.\.\.\).*integers", None),
    Case("mapping-empty-object", fit("scene.tif", "labels.gpkg", "m.safetensors", "--mapping", "{in}/mapping_empty.json"),
         E, r"--mapping.*empty \(\{\}\); map at least one", "m.safetensors"),
    Case("mapping-boolean-target", fit("scene.tif", "labels.gpkg", "m.safetensors", "--mapping",
                                       "{in}/mapping_boolean.json"), E, r"target of 'water' is true \(a boolean\)",
         "m.safetensors"),
    Case("mapping-fraction-target", fit("scene.tif", "labels.gpkg", "m.safetensors", "--mapping",
                                        "{in}/mapping_fraction.json"), E, r"target of 'water' is 1.5 \(not an integer\)",
         "m.safetensors"),
    Case("mapping-syntax-error", fit("scene.tif", "labels.gpkg", "m.safetensors", "--mapping", "{in}/mapping_syntax.json"),
         E, r"not a JSON object.*line 3, column 10", "m.safetensors"),
    Case("mapping-unknown-key", fit("scene.tif", "labels.gpkg", "m.safetensors", "--mapping",
                                    "{in}/mapping_unknown_key.json"), E,
         r"keys 'watr' are no class of .*'land', 'water'.*fix or remove", "m.safetensors"),
    Case("mapping-utf8-bom", evaluate("classes.tif", "labels.gpkg", "--mapping", "{in}/mapping_bom.json"), OK,
         r"mIoU", None),
    Case("evaluate-string-classes-by-name", evaluate("classes_named.tif", "tree_water.gpkg"), OK,
         r"tree\s+2\s+1\.0000[\s\S]*water\s+3\s+1\.0000[\s\S]*accuracy\s+1\.0000", None),
    Case("evaluate-probabilities", evaluate("probabilities.tif", "labels.gpkg"), E,
         r"2 bands, not one band of class values.*probability.*predict -o", None),
    Case("evaluate-tile-0", evaluate("classes.tif", "labels.gpkg", "--tile", "0"), E,
         r"^Error: tile 0 must be at least 1 pixel; it only bounds memory, e.g. --tile 1024$", None),
    Case("vectorize-tile-0", ["vectorize", "{in}/classes.tif", "-o", "{out}/p.gpkg", "--tile", "0"], E,
         r"^Error: tile 0 must be at least 1 pixel; it only bounds memory, e.g. --tile 2048$", "p.gpkg"),
    Case("vectorize-probabilities", ["vectorize", "{in}/probabilities.tif", "-o", "{out}/p.gpkg"], E,
         r"2 bands.*probability", "p.gpkg"),
    Case("vectorize-geojson-wgs84", ["vectorize", "{in}/classes.tif", "-o", "{out}/p.geojson"], OK, r"EPSG:4326",
         "p.geojson", check=_wgs84_geojson),
    Case("vectorize-simplify-coverage", ["vectorize", "{in}/classes.tif", "-o", "{out}/p.gpkg", "--simplify", "45"], OK,
         r"Wrote 2 polygons", "p.gpkg", check=_neighbours_share_a_border),
    Case("labels-geoparquet", info("scene.tif", "labels.parquet"), OK, r"water .* px", None) if _has_pyarrow() else
    Case("labels-geoparquet-without-pyarrow", info("scene.tif", "labels.parquet"), E,
         r"needs pyarrow.*pip install pyarrow", None),
]

# -- issue 14: every output checked before work; the scene compared with the training scenes ----------------------
CASES += [
    Case("predict-preview-not-png", predict("model.safetensors", "scene.tif", "out.tif", "--preview", "{in}/scene.tif"),
         E, r"--preview scene.tif ends in .tif, but rs-pgd writes a PNG there; name it scene.png"),
    Case("predict-preview-is-an-input", predict("model.safetensors", "scene_png.png", "out.tif", "--preview",
                                                "{in}/scene_png.png"), E, r"--preview: output .*scene_png.png is also an input"),
    Case("predict-preview-dir-missing", predict("model.safetensors", "scene.tif", "out.tif", "--preview",
                                                "{out}/missing/p.png"), E, r"--preview: directory .*missing does not exist"),
    Case("predict-probabilities-is-the-output", predict("model.safetensors", "scene.tif", "out.tif", "--probabilities",
                                                        "{out}/out.tif"), E, r"--probabilities .*same file as output"),
    Case("fit-log-json-is-an-input", fit("scene.tif", "labels.gpkg", "m.safetensors", "--log-json", "{in}/labels.gpkg"),
         E, r"--log-json: output .*labels.gpkg is also an input", "m.safetensors"),
    Case("predict-other-band-count", predict("model.safetensors", "bands13.tif"), E,
         r"bands13.tif has 13 bands but the model .* 3-band scenes .*--bands 1,2,3"),
    Case("predict-other-band-count-chosen", predict("model.safetensors", "bands13.tif", "out.tif", "--bands", "4,3,2"),
         OK, r"wrote", check=_class_map_ok),
    Case("predict-dn-scene-warns", predict("model.safetensors", "uint16.tif"), OK, r"wrote",
         warning=r"uint16.tif holds uint16 values but the model was trained on uint8 scenes"),
]

# -- issue 14: training ------------------------------------------------------------------------------------------
CASES += [
    Case("fit-one-class-labels", fit("scene.tif", "one_class.gpkg"), E, r"one class only.*--background CLASS",
         "m.safetensors"),
    Case("fit-workers-negative", fit("scene.tif", "labels.gpkg", "m.safetensors", "--workers", "-1"), E,
         r"--workers -1 must be 0 .* or a positive number", "m.safetensors"),
    # predict's options are checked by rs_pgd.predict itself, before torch (not only by click)
    Case("predict-batch-size-0", predict("model.safetensors", "scene.tif", "out.tif", "--batch-size", "0"), E,
         r"--batch-size 0 must be at least 1"),
    Case("predict-workers-negative", predict("model.safetensors", "scene.tif", "out.tif", "--workers", "-1"), E,
         r"--workers -1 must be 0 .* or a positive number"),
]

# -- issue 13: the training budget and class weights ---------------------------------------------------------------
CASES += [
    Case("fit-patience-negative", fit("scene.tif", "labels.gpkg", "m.safetensors", "--patience", "-1"), E,
         r"--patience -1 must be 0 \(never stop early\) or a positive whole number", "m.safetensors"),
    Case("fit-patience-not-a-number", fit("scene.tif", "labels.gpkg", "m.safetensors", "--patience", "soon"), E,
         r"'soon' is not a valid integer", "m.safetensors"),
    Case("fit-max-minutes-zero", fit("scene.tif", "labels.gpkg", "m.safetensors", "--max-minutes", "0"), E,
         r"--max-minutes 0.0 must be a positive number of minutes", "m.safetensors"),
    Case("fit-warmup-one", fit("scene.tif", "labels.gpkg", "m.safetensors", "--warmup", "1"), E,
         r"--warmup 1.0 must be a share of the planned steps in \[0, 1\)", "m.safetensors"),
    Case("fit-step-every-words", fit("scene.tif", "labels.gpkg", "m.safetensors", "--step-every", "often"), E,
         r"--step-every 'often' must be 'auto', 'scene' or a number of windows", "m.safetensors"),
    Case("fit-class-weights-missing", fit("scene.tif", "labels.gpkg", "m.safetensors", "--class-weights",
                                          "{in}/nothing.json"), E,
         r"--class-weights .*nothing.json: no such file; give auto, none or a JSON object", "m.safetensors"),
    Case("fit-class-weights-syntax", fit("scene.tif", "labels.gpkg", "m.safetensors", "--class-weights",
                                         "{in}/weights_syntax.json"), E,
         r"is not JSON \(Expecting ':' delimiter at line 3, column 10\)", "m.safetensors"),
    Case("fit-class-weights-list", fit("scene.tif", "labels.gpkg", "m.safetensors", "--class-weights",
                                       "{in}/weights_list.json"), E,
         r"holds list; give a JSON object of class name: weight", "m.safetensors"),
    Case("fit-class-weights-negative", fit("scene.tif", "labels.gpkg", "m.safetensors", "--class-weights",
                                           "{in}/weights_negative.json"), E,
         r"the weight of 'land' is -2; give a finite number >= 0", "m.safetensors"),
    Case("fit-class-weights-text", fit("scene.tif", "labels.gpkg", "m.safetensors", "--class-weights",
                                       "{in}/weights_text.json"), E,
         r"the weight of 'land' is \"heavy\"; give a finite number", "m.safetensors"),
    Case("fit-class-weights-all-zero", fit("scene.tif", "labels.gpkg", "m.safetensors", "--class-weights",
                                           "{in}/weights_zero.json"), E,
         r"every weight is 0; give at least one class a positive weight", "m.safetensors"),
    Case("fit-class-weights-unknown-class", fit("scene.tif", "labels.gpkg", "m.safetensors", "--class-weights",
                                                "{in}/weights_unknown.json"), E,
         r"names 'sea', which the labels do not hold; the classes are .*'water'", "m.safetensors"),
    Case("fit-class-weights-file", fit("scene.tif", "labels.gpkg", "m.safetensors", "--class-weights",
                                       "{in}/weights_good.json"), OK, r"wrote .* after \d+ steps?$", "m.safetensors",
         check=_checkpoint_ok),
    Case("fit-class-weights-is-the-output", ["fit", "{in}/scene.tif", "{in}/labels.gpkg", "-o",
                                             "{in}/weights_good.json", *FAST, "--class-weights",
                                             "{in}/weights_good.json"], E, r"also an input", None),
]

# -- issue 11: training and predicting on an area (--bbox, --bbox-crs, --aoi) -----------------------------------------
AREA_UTM = ["--bbox", 500_480, 3_997_600, 502_400, 3_999_520, "--bbox-crs", "EPSG:32618"]  # pixels 16..80 of 96


def _trained_on_the_area(path):
    from rs_pgd.checkpoint import read_header

    record = read_header(path).training_scenes[0]
    assert record["window"] == {"col_off": 16, "row_off": 16, "width": 64, "height": 64}, record


CASES += [
    Case("fit-bbox-outside-scene", fit("scene.tif", "labels.gpkg", "m.safetensors", "--bbox", 0, 0, 1, 1), E,
         r"--bbox does not overlap scene.tif, which covers .* in EPSG:4326: check the box and --bbox-crs",
         "m.safetensors"),
    Case("fit-bbox-crs-unknown", fit("scene.tif", "labels.gpkg", "m.safetensors", *AREA_UTM[:5], "--bbox-crs",
                                     "EPSG:99999"), E, r"--bbox-crs 'EPSG:99999' is not a CRS.*EPSG:4326",
         "m.safetensors"),
    Case("fit-bbox-inverted", fit("scene.tif", "labels.gpkg", "m.safetensors", "--bbox", -74, 36.2, -75, 36.1), E,
         r"--bbox -74 36.2 -75 36.1 needs W < E and S < N", "m.safetensors"),
    Case("fit-bbox-three-numbers", fit("scene.tif", "labels.gpkg", "m.safetensors", "--bbox", 1, 2, 3), E,
         r"--bbox.* requires 4 arguments.*--help", "m.safetensors"),
    Case("fit-aoi-empty", fit("scene.tif", "labels.gpkg", "m.safetensors", "--aoi", "{in}/empty.gpkg"), E,
         r"area of interest .*empty.gpkg has no geometry", "m.safetensors"),
    Case("fit-aoi-missing", fit("scene.tif", "labels.gpkg", "m.safetensors", "--aoi", "{in}/missing.gpkg"), E,
         r"cannot read the area of interest .*missing.gpkg.*GeoPackage or GeoJSON", "m.safetensors"),
    Case("fit-bbox-and-aoi", fit("scene.tif", "labels.gpkg", "m.safetensors", *AREA_UTM, "--aoi",
                                 "{in}/labels.gpkg"), E, r"give --bbox or --aoi, not both", "m.safetensors"),
    Case("fit-bbox", fit("scene.tif", "labels.gpkg", "m.safetensors", *AREA_UTM), OK, r"wrote", "m.safetensors",
         check=_trained_on_the_area),
    Case("predict-bbox-outside-scene", predict("model.safetensors", "scene.tif", "out.tif", "--bbox", 0, 0, 1, 1), E,
         r"--bbox does not overlap scene.tif"),
    Case("predict-bbox-crs-unknown", predict("model.safetensors", "scene.tif", "out.tif", *AREA_UTM[:5],
                                             "--bbox-crs", "nonsense"), E, r"--bbox-crs 'nonsense' is not a CRS"),
]


# -- issue 13: predict --uncertainty / --tta, suggest ---------------------------------------------------------------
def _class_map_and_uncertainty_ok(path):
    _class_map_ok(path)
    with rasterio.open(path) as classes, rasterio.open(path.with_name("u.tif")) as unc:
        assert unc.descriptions[0] == "uncertainty: 1 - max probability" and unc.nodata == 255
        assert np.array_equal(unc.read(1) == 255, classes.read(1) == 255)


def _regions_ok(path):
    import geopandas as gpd

    frame = gpd.read_file(path)
    assert list(frame["rank"]) == [1, 2] and (frame["score"] >= 0).all() and "labelled_share" in frame.columns


def suggest(model, scene, out="to_label.gpkg", *extra):
    return ["suggest", f"{{in}}/{model}", f"{{in}}/{scene}", "-o", f"{{out}}/{out}", "--quiet", "--workers", "0",
            *extra]


CASES += [
    Case("predict-uncertainty-png-name", predict("model.safetensors", "scene.tif", "out.tif", "--uncertainty",
                                                 "{out}/u.png"), E, r"--uncertainty u.png ends in .png.*name it u.tif"),
    Case("predict-uncertainty-is-the-scene", predict("model.safetensors", "scene.tif", "out.tif", "--uncertainty",
                                                     "{in}/scene.tif"), E, r"--uncertainty: output .*scene.tif is also an input"),
    Case("predict-uncertainty-is-the-output", predict("model.safetensors", "scene.tif", "out.tif", "--uncertainty",
                                                      "{out}/out.tif"), E, r"--uncertainty .*same file as output"),
    Case("predict-uncertainty-kind-unknown", predict("model.safetensors", "scene.tif", "out.tif", "--uncertainty",
                                                     "{out}/u.tif", "--uncertainty-kind", "gini"), E,
         r"'gini' is not one of 'least-confidence', 'margin', 'entropy'"),
    Case("predict-uncertainty-tta", predict("model.safetensors", "scene.tif", "out.tif", "--uncertainty", "{out}/u.tif",
                                            "--tta"), OK, r"wrote", check=_class_map_and_uncertainty_ok),
    Case("suggest-output-shp", suggest("model.safetensors", "scene.tif", "to_label.shp"), E,
         r"-o to_label.shp ends in .shp, but rs-pgd suggest writes a GeoPackage or GeoJSON; name it to_label.gpkg",
         "to_label.shp"),
    Case("suggest-top-0", suggest("model.safetensors", "scene.tif", "to_label.gpkg", "--top", "0"), E,
         r"--top 0 must be a whole number of at least 1", "to_label.gpkg"),
    Case("suggest-size-odd", suggest("model.safetensors", "scene.tif", "to_label.gpkg", "--size", "33"), E,
         r"--size 33 must be an even number of pixels", "to_label.gpkg"),
    Case("suggest-labels-missing", suggest("model.safetensors", "scene.tif", "to_label.gpkg", "--labels",
                                           "{in}/missing.gpkg"), E, r"labels not found.*check the path", "to_label.gpkg"),
    Case("suggest-uncertainty-is-the-scene", suggest("model.safetensors", "scene.tif", "to_label.gpkg", "--uncertainty",
                                                     "{in}/scene.tif"), E, r"--uncertainty: output .*scene.tif is also an input",
         "to_label.gpkg"),
    Case("suggest-bad-scene", suggest("model.safetensors", "sheared.tif"), E, r"rotated or sheared.*gdalwarp",
         "to_label.gpkg"),
    Case("suggest-with-labels", suggest("model.safetensors", "scene.tif", "to_label.gpkg", "--top", "2", "--size", "32",
                                        "--labels", "{in}/labels.gpkg"), OK, r"Wrote 2 regions of 32 x 32 px",
         "to_label.gpkg", check=_regions_ok),
]


def _sentinel_checkpoint(source, target, **changes):
    """The same weights, relabelled as trained on the 13 bands of the sentinel2-l2a preset (no training), or with
    other ``changes`` to the metadata."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    inner = json.loads(meta["rs_pgd"])
    inner.update(changes or dict(preset="sentinel2-l2a", bands=list(range(1, 14))))
    save_file(tensors, str(target), metadata={**meta, "rs_pgd": json.dumps(inner)})


CASES += [  # issue 11: a model trained on a STAC item's raster:bands scaling, given a scene without scale/offset
    Case("checkpoint-from-scene-unscaled-scene", predict("model_stac.safetensors", "scene.tif"), E,
         r"trained on values scaled by the scene's own scale/offset .*scene.tif has none.*raster:bands"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    bad.write_all(folder)
    (folder / "empty.tif").write_bytes(b"")
    bad.text_checkpoint(folder)
    bad.torch_pickle_checkpoint(folder)
    bad.foreign_safetensors(folder)
    done = run_cli(["fit", folder / "scene.tif", folder / "labels.gpkg", "-o", folder / "model.safetensors", *FAST],
                   folder)
    assert done.returncode == 0, done.stderr
    (folder / "model.curve.png").unlink()
    (folder / "model.resume.pt").unlink()
    _sentinel_checkpoint(folder / "model.safetensors", folder / "model_s2.safetensors")
    (folder / "scene_png.png").write_bytes((folder / "scene.tif").read_bytes())  # a GeoTIFF under a .png name
    _sentinel_checkpoint(folder / "model.safetensors", folder / "model_stac.safetensors", preset="from-scene",
                         scale=0.0001, offset=-0.1)
    with rasterio.open(folder / "scene.tif") as src:
        profile = {**src.profile, "count": 1}
    with rasterio.open(folder / "classes.tif", "w", **profile) as dst:
        dst.write(np.where(np.arange(bad.SIZE)[None, None] < 48, 1, 2).repeat(bad.SIZE, 1).astype("uint8"))
    return folder


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory):
    """Run every case once, three at a time: ``{case id: (CompletedProcess, output folder)}``."""
    root = tmp_path_factory.mktemp("outputs")

    def one(case):
        out = root / case.id
        out.mkdir()
        args = [str(a).replace("{in}", str(inputs)).replace("{out}", str(out)) for a in case.args]
        return case.id, (run_cli(args, out), out)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, CASES))


def _lines(text):
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(case, results, inputs):
    done, out = results[case.id]
    stderr = _lines(done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    if case.expect == E:
        assert done.returncode == 2, (done.returncode, done.stderr)
        if "warning-first" in case.tags:  # a Warning: line that leads to the error may come before it
            stderr = [line for line in stderr if not line.startswith("Warning: ")]
        assert len(stderr) == 1, f"expected one stderr line, got {stderr}"
        assert stderr[0].startswith("Error: "), stderr
        assert re.search(case.match, stderr[0]), f"{case.match!r} not in {stderr[0]!r}"
        assert list(out.iterdir()) == [], f"left behind: {sorted(p.name for p in out.iterdir())}"
        assert not [p for p in inputs.iterdir() if p.name.startswith(".")], "hidden temp files in the inputs"
    else:
        assert done.returncode == 0, done.stderr
        assert not [line for line in stderr if line.startswith("Error")], stderr
        assert re.search(case.match, done.stdout), done.stdout
        if case.warning:
            assert any(line.startswith("Warning: ") and re.search(case.warning, line) for line in stderr), stderr
        if case.output:
            target = out / case.output
            assert target.is_file()
            if case.check:
                case.check(target)
        assert not [p for p in out.iterdir() if p.name.startswith(".")], "hidden temp files left"


def test_catalogue_is_large_enough():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def test_checker_has_teeth(tmp_path):
    """The checks above fail on a multi-line error, a traceback or a leftover file (sanity of the harness)."""
    fake = subprocess.CompletedProcess([], 2, "", "Usage: x\n\nError: bad\n")
    with pytest.raises(AssertionError):
        assert len(_lines(fake.stderr)) == 1
    (tmp_path / ".out.tif.123.tmp.tif").write_bytes(b"x")
    assert list(tmp_path.iterdir()) != []
