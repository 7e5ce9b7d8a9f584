"""Run rs-pgd's Processing algorithms through PyQGIS ``processing.run`` in a headless QgsApplication.

Run by tests/qgis_provider with QGIS's own Python (Debian's python3), never the test venv's:
``python3 pyqgis_session.py SPEC.json RESULTS.json``. SPEC names the installed plugin folder, the demo files and
a work folder; RESULTS gets one entry per case (its outputs, or the error it raised), which the tests assert on.
"""

import json
import os
import sys
import threading
import time
import traceback
import zipfile

from qgis.core import (
    QgsApplication,
    QgsFeatureRequest,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

TINY_FIT = json.loads(os.environ.get("RS_PGD_TINY_FIT", "{}"))


class RecordingFeedback(QgsProcessingFeedback):
    """Feedback that keeps the progress values and log lines it receives."""

    def __init__(self):
        super().__init__()
        self.progress_values = []
        self.progressChanged.connect(self.progress_values.append)


def run(algorithm, parameters, feedback=None):
    import processing

    return processing.run(algorithm, parameters, feedback=feedback or RecordingFeedback())


def listing(folder):
    return sorted(os.listdir(folder))


def rs_pgd_processes(marker):
    """PIDs of live processes whose command line contains ``marker`` (zombies count as ended)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{name}/status") as handle:
                state = next(line for line in handle if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if marker in command and "Z" not in state.split()[1]:
            pids.append(int(name))
    return pids


def case_fit(spec):
    out = os.path.join(spec["work"], "fit", "model.safetensors")
    os.makedirs(os.path.dirname(out))
    feedback = RecordingFeedback()
    result = run("rs_pgd:fit", {"INPUT": spec["scene"], "LABELS": spec["labels"], **TINY_FIT, "OUTPUT": out},
                 feedback)
    return {"results": result, "files": listing(os.path.dirname(out)), "progress": feedback.progress_values}


def case_predict(spec, model):
    out = os.path.join(spec["work"], "predict", "classes.tif")
    os.makedirs(os.path.dirname(out))
    feedback = RecordingFeedback()
    result = run("rs_pgd:predict", {"MODEL": model, "INPUT": spec["scene"], "PRECISION": 1, "OUTPUT": out,
                                    "PROBABILITIES": os.path.join(os.path.dirname(out), "probabilities.tif")},
                 feedback)
    layer = QgsRasterLayer(out, "classes", "gdal")
    renderer = layer.renderer()
    classes = [[c.value, c.label, c.color.name()] for c in renderer.classes()] if hasattr(renderer, "classes") else []
    return {"results": result, "files": listing(os.path.dirname(out)), "progress": feedback.progress_values,
            "renderer": renderer.type(), "classes": classes}


def case_vectorize(spec, class_map):
    out = os.path.join(spec["work"], "vectorize", "polygons.gpkg")
    os.makedirs(os.path.dirname(out))
    result = run("rs_pgd:vectorize", {"INPUT": class_map, "MIN_AREA": 0, "OUTPUT": out})
    layer = QgsVectorLayer(out, "polygons", "ogr")
    renderer = layer.renderer()
    categories = [[c.value(), c.label()] for c in renderer.categories()] if renderer.type() == "categorizedSymbol" \
        else []
    return {"results": result, "files": listing(os.path.dirname(out)), "features": layer.featureCount(),
            "fields": [f.name() for f in layer.fields()], "renderer": renderer.type(), "categories": categories}


def case_vectorize_vsizip(spec, class_map):
    """A raster layer that is not a plain file (inside a zip): the algorithm writes it to a temporary GeoTIFF."""
    archive = os.path.join(spec["work"], "classes.zip")
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(class_map, "classes.tif")
    layer = QgsRasterLayer(f"/vsizip/{archive}/classes.tif", "zipped", "gdal")
    out = os.path.join(spec["work"], "vectorize_zip", "polygons.gpkg")
    os.makedirs(os.path.dirname(out))
    result = run("rs_pgd:vectorize", {"INPUT": layer, "OUTPUT": out})
    return {"results": result, "valid": layer.isValid()}


def case_evaluate(spec, class_map):
    out = os.path.join(spec["work"], "evaluate", "report.json")
    os.makedirs(os.path.dirname(out))
    result = run("rs_pgd:evaluate", {"INPUT": class_map, "LABELS": spec["labels"], "OUTPUT": out})
    with open(out, encoding="utf-8") as handle:
        report = json.load(handle)
    return {"results": result, "report": report}


def case_evaluate_selected(spec, class_map):
    layer = QgsVectorLayer(spec["labels"], "labels", "ogr")
    QgsProject.instance().addMapLayer(layer)
    layer.selectByIds(spec["selected_fids"])
    by_definition = run("rs_pgd:evaluate", {
        "INPUT": class_map, "LABELS": QgsProcessingFeatureSourceDefinition(layer.id(), selectedFeaturesOnly=True)})
    by_flag = run("rs_pgd:evaluate", {"INPUT": class_map, "LABELS": layer, "SELECTED_ONLY": True})
    everything = run("rs_pgd:evaluate", {"INPUT": class_map, "LABELS": layer})
    return {"definition": by_definition, "flag": by_flag, "all": everything,
            "selected": layer.selectedFeatureCount()}


def case_evaluate_memory(spec, class_map):
    """A memory layer (no file behind it) is written to a temporary GeoPackage first."""
    source = QgsVectorLayer(spec["labels"], "labels", "ogr")
    memory = source.materialize(QgsFeatureRequest())
    result = run("rs_pgd:evaluate", {"INPUT": class_map, "LABELS": memory, "CLASS_FIELD": "class_id"})
    return {"results": result, "provider": memory.providerType()}


def case_cancel(spec, algorithm, parameters, folder):
    """Cancel once rs-pgd has run for a few seconds; report what is left and whether rs-pgd still runs."""
    os.makedirs(folder)
    feedback = RecordingFeedback()
    marker = os.path.join(folder, ".rs_pgd-")
    seen = {"pids": [], "cancelled_at": None}

    def cancel_later():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not seen["pids"]:
            seen["pids"] = rs_pgd_processes(marker)
            time.sleep(0.05)
        time.sleep(float(spec.get("cancel_after", 4)))
        seen["running_before"] = rs_pgd_processes(marker)
        seen["cancelled_at"] = time.monotonic()
        feedback.cancel()

    thread = threading.Thread(target=cancel_later, daemon=True)
    thread.start()
    error = None
    try:
        run(algorithm, parameters, feedback)
    except Exception as exc:  # QgsProcessingException
        error = str(exc)
    returned = time.monotonic()
    thread.join()
    return {"error": error, "files": listing(folder), "pids": seen["pids"],
            "running_before": seen.get("running_before", []), "alive_after": rs_pgd_processes(marker),
            "stop_seconds": None if seen["cancelled_at"] is None else returned - seen["cancelled_at"]}


def case_example_script(spec, model):
    """examples/qgis/predict_folder.py, the Processing script, on a folder with one raster and one other file."""
    import importlib.util

    loader = importlib.util.spec_from_file_location("predict_folder", os.path.join(spec["examples"], "predict_folder.py"))
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    out = os.path.join(spec["work"], "example_script")
    result = run(module.PredictFolder().create(), {"FOLDER": spec["crop_folder"], "MODEL": model, "MIN_AREA": 0,
                                                   "OUTPUT_FOLDER": out})
    return {"results": result, "files": listing(out),
            "features": QgsVectorLayer(os.path.join(out, "crop_polygons.gpkg"), "p", "ogr").featureCount()}


def case_example_model(spec, model):
    """examples/qgis/predict_vectorize_evaluate.model3, the Graphical Modeler model, loaded from its file."""
    from qgis.core import QgsProcessingModelAlgorithm

    algorithm = QgsProcessingModelAlgorithm()
    if not algorithm.fromFile(os.path.join(spec["examples"], "predict_vectorize_evaluate.model3")):
        raise RuntimeError("the .model3 file did not load")
    out = os.path.join(spec["work"], "example_model")
    os.makedirs(out)
    result = run(algorithm, {
        "model": model, "scene": os.path.join(spec["crop_folder"], "crop.tif"), "labels": spec["labels"],
        "min_area": 0, "predict:class_map": os.path.join(out, "classes.tif"),
        "vectorize:polygons": os.path.join(out, "polygons.gpkg"), "evaluate:report": os.path.join(out, "report.json"),
    })
    with open(os.path.join(out, "report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    return {"results": result, "files": listing(out), "report": report,
            "children": sorted(algorithm.childAlgorithms().keys())}


def case_bad_model(spec):
    out = os.path.join(spec["work"], "bad", "classes.tif")
    os.makedirs(os.path.dirname(out))
    try:
        run("rs_pgd:predict", {"MODEL": spec["bad_model"], "INPUT": spec["scene"], "OUTPUT": out})
        error = None
    except Exception as exc:
        error = str(exc)
    return {"error": error, "files": listing(os.path.dirname(out))}


def guarded(results, name, function, *args):
    try:
        results[name] = function(*args)
    except Exception:
        results[name] = {"exception": traceback.format_exc()}
    return results[name]


def main(spec_path, results_path):
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    sys.path.insert(0, spec["plugins"])
    import rs_pgd_processing  # the copy `rs-pgd qgis install` put into the profile

    plugin = rs_pgd_processing.classFactory(None)
    plugin.initProcessing()
    results = {"algorithms": sorted(a.id() for a in QgsApplication.processingRegistry().algorithms()
                                    if a.provider().id() == "rs_pgd")}
    fit = guarded(results, "fit", case_fit, spec)
    model = (fit.get("results") or {}).get("OUTPUT")
    if model:
        predict = guarded(results, "predict", case_predict, spec, model)
        class_map = (predict.get("results") or {}).get("OUTPUT")
        if class_map:
            guarded(results, "vectorize", case_vectorize, spec, class_map)
            guarded(results, "vectorize_vsizip", case_vectorize_vsizip, spec, class_map)
            guarded(results, "evaluate", case_evaluate, spec, class_map)
            guarded(results, "evaluate_selected", case_evaluate_selected, spec, class_map)
            guarded(results, "evaluate_memory", case_evaluate_memory, spec, class_map)
        guarded(results, "example_script", case_example_script, spec, model)
        guarded(results, "example_model", case_example_model, spec, model)
        long_fit = {**TINY_FIT, "EPOCHS": 1000, "MAX_STEPS": None, "STEP_EVERY": None}
        folder = os.path.join(spec["work"], "cancel_fit")
        guarded(results, "cancel_fit", case_cancel, spec, "rs_pgd:fit",
                {"INPUT": spec["scene"], "LABELS": spec["labels"], **long_fit,
                 "OUTPUT": os.path.join(folder, "model.safetensors")}, folder)
    guarded(results, "bad_model", case_bad_model, spec)
    with open(results_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, default=str)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # QGIS 3.22 can crash while tearing down layers and registries at exit; the results are written


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
