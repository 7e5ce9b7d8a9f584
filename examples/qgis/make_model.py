"""Write predict_vectorize_evaluate.model3, the Graphical Modeler model of this folder, with PyQGIS.

Run with QGIS's Python (``QT_QPA_PLATFORM=offscreen python3 examples/qgis/make_model.py``); open the result in
Processing > Graphical Modeler, or add it to the toolbox (Processing Toolbox > Models > Add Model to Toolbox...).
The model chains rs_pgd:predict -> rs_pgd:vectorize and rs_pgd:predict -> rs_pgd:evaluate.
"""

import os
import sys

from qgis.core import (
    QgsApplication,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterFile,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)
from qgis.PyQt.QtCore import QPointF

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_FILE = os.path.join(HERE, "predict_vectorize_evaluate.model3")
Source = QgsProcessingModelChildParameterSource


def _input(model, parameter, x, y):
    component = QgsProcessingModelParameter(parameter.name())
    component.setPosition(QPointF(x, y))
    model.addModelParameter(parameter, component)


def _child(model, algorithm, child_id, description, sources, outputs, x, y):
    child = QgsProcessingModelChildAlgorithm(algorithm)
    child.setChildId(child_id)
    child.setDescription(description)
    child.setPosition(QPointF(x, y))
    for name, source in sources.items():
        child.addParameterSources(name, [source])
    model_outputs = {}
    for child_output, (name, description_) in outputs.items():
        output = QgsProcessingModelOutput(name, description_)
        output.setChildId(child_id)
        output.setChildOutputName(child_output)
        output.setPosition(QPointF(x + 200, y + 60))
        model_outputs[name] = output
    child.setModelOutputs(model_outputs)
    model.addChildAlgorithm(child)


def build_model():
    model = QgsProcessingModelAlgorithm("Predict, vectorise and evaluate", "rs-pgd", "rs_pgd_predict_vectorize_evaluate")
    model.setHelpContent({"ALG_DESC": "Predicts a class map with an rs-pgd model, turns it into polygons, and "
                                      "scores it against reference labels (JSON report with mIoU and accuracy)."})
    _input(model, QgsProcessingParameterFile("model", "rs-pgd model", extension="safetensors"), 80, 60)
    _input(model, QgsProcessingParameterRasterLayer("scene", "Scene"), 80, 160)
    _input(model, QgsProcessingParameterMapLayer("labels", "Reference labels (polygons or raster)"), 80, 260)
    _input(model, QgsProcessingParameterNumber("min_area", "Minimum polygon area (map units²)",
                                               QgsProcessingParameterNumber.Double, 0.0, minValue=0.0), 80, 360)
    _child(model, "rs_pgd:predict", "predict", "Predict class map",
           {"MODEL": Source.fromModelParameter("model"), "INPUT": Source.fromModelParameter("scene"),
            "BLEND": Source.fromStaticValue(0)},
           {"OUTPUT": ("class_map", "Class map")}, 360, 110)
    _child(model, "rs_pgd:vectorize", "vectorize", "Vectorize class map",
           {"INPUT": Source.fromChildOutput("predict", "OUTPUT"), "MIN_AREA": Source.fromModelParameter("min_area")},
           {"OUTPUT": ("polygons", "Polygons")}, 640, 60)
    _child(model, "rs_pgd:evaluate", "evaluate", "Evaluate class map",
           {"INPUT": Source.fromChildOutput("predict", "OUTPUT"), "LABELS": Source.fromModelParameter("labels")},
           {"OUTPUT": ("report", "Evaluation report (JSON)")}, 640, 260)
    return model


def main(path=MODEL_FILE):
    app = QgsApplication([], False)
    app.initQgis()
    model = build_model()
    if not model.toFile(path):
        sys.exit(f"could not write {path}")
    print(f"wrote {path}")
    os._exit(0)  # skip QGIS 3.22's crash-prone teardown in scripts


if __name__ == "__main__":
    main(*sys.argv[1:])
