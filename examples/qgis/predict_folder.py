"""Processing script: predict a class map for every raster of a folder with one rs-pgd model, then vectorise it.

Put this file into QGIS's Processing scripts folder (Processing Toolbox > Scripts > Add Script to Toolbox...),
or run it from the Python console with ``processing.run(PredictFolder(), {...})``. It needs the rs-pgd provider
(``rs-pgd qgis install``). For each ``*.tif`` in FOLDER it writes ``<name>_classes.tif`` (styled class map) and
``<name>_polygons.gpkg`` (polygons by class) into OUTPUT_FOLDER.
"""

import glob
import os

import processing
from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingMultiStepFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
)


class PredictFolder(QgsProcessingAlgorithm):
    FOLDER, MODEL, MIN_AREA, OUTPUT_FOLDER = "FOLDER", "MODEL", "MIN_AREA", "OUTPUT_FOLDER"

    def name(self):
        return "predict_folder"

    def displayName(self):
        return "Predict and vectorise every raster of a folder (rs-pgd)"

    def shortHelpString(self):
        return "Runs rs_pgd:predict, then rs_pgd:vectorize, on every .tif of a folder."

    def createInstance(self):
        return PredictFolder()

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(self.FOLDER, "Folder of rasters",
                                                     behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterFile(self.MODEL, "rs-pgd model", extension="safetensors"))
        self.addParameter(QgsProcessingParameterNumber(self.MIN_AREA, "Minimum polygon area (map units²)",
                                                       QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputNumber("RASTERS", "Rasters processed"))

    def processAlgorithm(self, parameters, context, feedback):
        folder = self.parameterAsFile(parameters, self.FOLDER, context)
        model = self.parameterAsFile(parameters, self.MODEL, context)
        min_area = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        out_folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        os.makedirs(out_folder, exist_ok=True)
        rasters = sorted(glob.glob(os.path.join(folder, "*.tif")))
        if not rasters:
            raise QgsProcessingException(f"no .tif file in {folder}")
        steps = QgsProcessingMultiStepFeedback(2 * len(rasters), feedback)
        for i, raster in enumerate(rasters):
            if feedback.isCanceled():
                break
            stem = os.path.splitext(os.path.basename(raster))[0]
            feedback.pushInfo(f"{i + 1}/{len(rasters)}: {stem}")
            steps.setCurrentStep(2 * i)
            classes = processing.run("rs_pgd:predict", {
                "MODEL": model, "INPUT": raster, "OUTPUT": os.path.join(out_folder, f"{stem}_classes.tif"),
            }, context=context, feedback=steps, is_child_algorithm=True)["OUTPUT"]
            steps.setCurrentStep(2 * i + 1)
            processing.run("rs_pgd:vectorize", {
                "INPUT": classes, "MIN_AREA": min_area,
                "OUTPUT": os.path.join(out_folder, f"{stem}_polygons.gpkg"),
            }, context=context, feedback=steps, is_child_algorithm=True)
        return {self.OUTPUT_FOLDER: out_folder, "RASTERS": len(rasters)}
