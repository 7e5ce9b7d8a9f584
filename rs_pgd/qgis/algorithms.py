"""The four Processing algorithms: rs_pgd:predict, rs_pgd:fit, rs_pgd:vectorize, rs_pgd:evaluate.

Each one turns its parameters into files (layers that are not plain files are written to temporary GeoTIFF or
GeoPackage files first), runs the rs-pgd command line in a subprocess (:mod:`.runner`), and moves the outputs into
place only when rs-pgd succeeded, with a ``.qml`` style beside each map output.
"""

import json
import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from . import layers, styles
from .runner import Cancelled, RunnerError, Staging, epoch_percent, run_rs_pgd

BLENDS = ["none", "linear", "cosine"]
PRECISIONS = ["auto", "32", "bf16", "16-mixed"]
DEVICES = ["auto", "cpu", "cuda"]
VECTOR_EXTENSIONS = (".gpkg", ".geojson", ".json", ".fgb", ".shp")


class RsPgdAlgorithm(QgsProcessingAlgorithm):
    """Shared plumbing: running rs-pgd, staging outputs, layers as files."""

    def createInstance(self):  # noqa: N802 - QGIS API name
        return type(self)()

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API name
        # LABELS is a map layer (vector or raster); a script may also pass the "selected features only" form of
        # a vector layer, which the map layer parameter itself would refuse
        value = parameters.get("LABELS")
        if isinstance(value, QgsProcessingFeatureSourceDefinition):
            parameters = dict(parameters, LABELS=value.source)
        return super().checkParameterValues(parameters, context)

    def helpUrl(self):  # noqa: N802 - QGIS API name
        return "https://github.com/rs-pgd/rs-pgd/blob/main/docs/qgis.md"

    def _advanced(self, parameter):
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(parameter)

    def _add_runtime_parameters(self):
        self._advanced(QgsProcessingParameterEnum("PRECISION", "Numeric precision", PRECISIONS, defaultValue=0))
        self._advanced(QgsProcessingParameterEnum("DEVICE", "Device", DEVICES, defaultValue=0))

    def _runtime_args(self, parameters, context):
        return ["--precision", PRECISIONS[self.parameterAsEnum(parameters, "PRECISION", context)],
                "--device", DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)]]

    def _add_labels_parameters(self, optional_field=True):
        self.addParameter(QgsProcessingParameterMapLayer(
            "LABELS", "Labels (polygons with a class attribute, or a label raster)",
            types=[QgsProcessing.TypeVectorPolygon, QgsProcessing.TypeRaster]))
        self.addParameter(QgsProcessingParameterField(
            "CLASS_FIELD", "Class field (auto-detected if empty)", parentLayerParameterName="LABELS",
            optional=optional_field))
        self.addParameter(QgsProcessingParameterBoolean(
            "SELECTED_ONLY", "Use only the selected label features", defaultValue=False))

    def _labels_args(self, parameters, context, feedback):
        """Label file arguments for rs-pgd: path, ``--layer`` and ``--class-column``."""
        value = parameters.get("LABELS")
        selected = self.parameterAsBoolean(parameters, "SELECTED_ONLY", context)
        if isinstance(value, QgsProcessingFeatureSourceDefinition):
            selected = selected or value.selectedFeaturesOnly
            value = value.source.staticValue() if hasattr(value.source, "staticValue") else value.source
        layer = self.parameterAsLayer({"LABELS": value}, "LABELS", context)
        if layer is None:
            raise QgsProcessingException("the LABELS layer could not be loaded; give a polygon layer or a raster")
        args = layers.labels_as_file(layer, selected, context, feedback)
        field = self.parameterAsString(parameters, "CLASS_FIELD", context)
        if field:
            args += ["--class-column", field]
        return args

    def _scene(self, parameters, name, context, feedback):
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        return layers.raster_as_file(layer, context, feedback)

    def _run(self, args, feedback, **kwargs):
        try:
            text = run_rs_pgd(args, feedback, **kwargs)
            feedback.setProgress(100)
            return text
        except Cancelled:
            feedback.pushInfo("cancelled: rs-pgd was stopped and no output was written")
            raise QgsProcessingException("cancelled by the user; no output was written") from None
        except RunnerError as exc:
            raise QgsProcessingException(str(exc)) from None

    @staticmethod
    def _refuse_overwriting(outputs, inputs):
        for out in outputs:
            for item in inputs:
                if out and item and os.path.abspath(out) == os.path.abspath(item):
                    raise QgsProcessingException(f"{out} is also an input; choose another output file")


class PredictAlgorithm(RsPgdAlgorithm):
    """rs_pgd:predict: class map (and probabilities) from a trained model."""

    def name(self):
        return "predict"

    def displayName(self):  # noqa: N802 - QGIS API name
        return "Predict class map"

    def shortHelpString(self):  # noqa: N802 - QGIS API name
        return ("Predicts a class map for a raster with a model trained by rs-pgd (a .safetensors checkpoint). "
                "The scene is read window by window, so any size works. The class map is a GeoTIFF (COG) with "
                "the class colours and names; optional probabilities have one band per class.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API name
        self.addParameter(QgsProcessingParameterFile(
            "MODEL", "Model (rs-pgd checkpoint)", extension="safetensors"))
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.addParameter(QgsProcessingParameterEnum(
            "BLEND", "Blend overlapping windows (needs a stride smaller than the tile)", BLENDS, defaultValue=0))
        for name, label in (("TILE", "Centre tile size, pixels (default: the model's)"),
                            ("MARGIN", "Context margin, pixels (default: the model's)"),
                            ("STRIDE", "Stride between tiles, pixels (default: the tile)")):
            self._advanced(QgsProcessingParameterNumber(name, label, QgsProcessingParameterNumber.Integer,
                                                        optional=True, minValue=0))
        self._add_runtime_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Class map"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "PROBABILITIES", "Class probabilities", optional=True, createByDefault=False))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API name
        model = self.parameterAsFile(parameters, "MODEL", context)
        scene = self._scene(parameters, "INPUT", context, feedback)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        probabilities = self.parameterAsOutputLayer(parameters, "PROBABILITIES", context) or None
        for path in (output, probabilities):
            if path and os.path.splitext(path)[1].lower() not in (".tif", ".tiff"):
                raise QgsProcessingException(f"{path}: rs-pgd writes GeoTIFF; give a .tif file name")
        self._refuse_overwriting([output, probabilities], [model, scene])
        staging = Staging()
        try:
            staged = staging.path_for(output)
            args = ["predict", model, scene, "-o", staged,
                    "--blend", BLENDS[self.parameterAsEnum(parameters, "BLEND", context)]]
            if probabilities:
                args += ["--probabilities", staging.path_for(probabilities)]
            for name in ("TILE", "MARGIN", "STRIDE"):
                if parameters.get(name) not in (None, ""):
                    args += [f"--{name.lower()}", str(self.parameterAsInt(parameters, name, context))]
            self._run(args + self._runtime_args(parameters, context), feedback)
            styles.write_class_map_style(staged, feedback)
            staging.commit(stale=styles.sidecars(output) + (styles.sidecars(probabilities) if probabilities else []))
        finally:
            staging.discard()
        return {"OUTPUT": output, "PROBABILITIES": probabilities}


class FitAlgorithm(RsPgdAlgorithm):
    """rs_pgd:fit: train a segmentation model with Patch Gradient Descent."""

    def name(self):
        return "fit"

    def displayName(self):  # noqa: N802 - QGIS API name
        return "Train model (fit)"

    def shortHelpString(self):  # noqa: N802 - QGIS API name
        return ("Trains a segmentation model (any segmentation-models-pytorch encoder) on a raster and its labels "
                "with Patch Gradient Descent: the scene is cut into centre tiles with a context margin and the "
                "gradients of all windows are accumulated before each optimizer step. Labels are polygons with a "
                "class attribute or a label raster. Writes a .safetensors checkpoint for rs_pgd:predict.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API name
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self._add_labels_parameters()
        self.addParameter(QgsProcessingParameterString("ENCODER", "Encoder", defaultValue="resnet34"))
        self.addParameter(QgsProcessingParameterNumber(
            "TILE", "Centre tile size, pixels (multiple of 32)", QgsProcessingParameterNumber.Integer, 256,
            minValue=32))
        self.addParameter(QgsProcessingParameterNumber(
            "MARGIN", "Context margin, pixels (multiple of 32)", QgsProcessingParameterNumber.Integer, 64,
            minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            "EPOCHS", "Epochs", QgsProcessingParameterNumber.Integer, 40, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "MAX_STEPS", "Stop after this many optimizer steps", QgsProcessingParameterNumber.Integer,
            optional=True, minValue=1))
        self._advanced(QgsProcessingParameterNumber(
            "STEP_EVERY", "Optimizer step every N windows (default: auto, groups sized to give enough steps)",
            QgsProcessingParameterNumber.Integer, optional=True, minValue=1))
        self._advanced(QgsProcessingParameterString("ARCH", "Architecture", defaultValue="Unet"))
        self._advanced(QgsProcessingParameterNumber(
            "VAL_FRACTION", "Share of labelled pixels held out for validation", QgsProcessingParameterNumber.Double,
            0.2, minValue=0.0, maxValue=0.9))
        self._advanced(QgsProcessingParameterString(
            "BACKGROUND", "Class burnt where no label polygon lies (default: ignored)", optional=True))
        self._add_runtime_parameters()
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Model", "rs-pgd checkpoint (*.safetensors)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API name
        scene = self._scene(parameters, "INPUT", context, feedback)
        labels = self._labels_args(parameters, context, feedback)
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not output.lower().endswith(".safetensors"):
            raise QgsProcessingException(f"{output}: the model is a .safetensors file; give a name ending so")
        self._refuse_overwriting([output], [scene, labels[0]])
        epochs = self.parameterAsInt(parameters, "EPOCHS", context)
        args = ["fit", scene, *labels, "--encoder", self.parameterAsString(parameters, "ENCODER", context),
                "--arch", self.parameterAsString(parameters, "ARCH", context),
                "--tile", str(self.parameterAsInt(parameters, "TILE", context)),
                "--margin", str(self.parameterAsInt(parameters, "MARGIN", context)),
                "--epochs", str(epochs),
                "--val-fraction", repr(self.parameterAsDouble(parameters, "VAL_FRACTION", context))]
        planned = epochs
        if parameters.get("MAX_STEPS") not in (None, ""):
            max_steps = self.parameterAsInt(parameters, "MAX_STEPS", context)
            args += ["--max-steps", str(max_steps)]
            planned = min(epochs, max_steps)  # one optimizer step per epoch on one scene
        if parameters.get("STEP_EVERY") not in (None, ""):
            args += ["--step-every", str(self.parameterAsInt(parameters, "STEP_EVERY", context))]
            planned = epochs
        background = self.parameterAsString(parameters, "BACKGROUND", context)
        if background:
            args += ["--background", background]
        staging = Staging()
        try:
            args += ["-o", staging.path_for(output)] + self._runtime_args(parameters, context)
            self._run(args, feedback, progress=epoch_percent(planned))
            staging.commit()
        finally:
            staging.discard()
        return {"OUTPUT": output}


class VectorizeAlgorithm(RsPgdAlgorithm):
    """rs_pgd:vectorize: class map to polygons with class id and name."""

    def name(self):
        return "vectorize"

    def displayName(self):  # noqa: N802 - QGIS API name
        return "Vectorize class map"

    def shortHelpString(self):  # noqa: N802 - QGIS API name
        return ("Turns a class map (from rs_pgd:predict) into polygons with the attributes class_id and "
                "class_name, window by window, merged across window edges. MIN_AREA drops small polygons "
                "(map units squared).")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API name
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class map"))
        self.addParameter(QgsProcessingParameterNumber(
            "MIN_AREA", "Minimum polygon area (map units²)", QgsProcessingParameterNumber.Double, 0.0,
            minValue=0.0))
        self._advanced(QgsProcessingParameterNumber(
            "SIMPLIFY", "Simplification tolerance (map units)", QgsProcessingParameterNumber.Double, 0.0,
            minValue=0.0))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "OUTPUT", "Polygons", QgsProcessing.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputNumber("POLYGONS", "Number of polygons"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API name
        prediction = self._scene(parameters, "INPUT", context, feedback)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        if os.path.splitext(output)[1].lower() not in VECTOR_EXTENSIONS:
            raise QgsProcessingException(f"{output}: rs-pgd writes {', '.join(VECTOR_EXTENSIONS)} files; "
                                         "give a file name with one of these extensions")
        self._refuse_overwriting([output], [prediction])
        staging = Staging()
        try:
            staged = staging.path_for(output)
            text = self._run(["vectorize", prediction, "-o", staged, "--json",
                              "--min-area", repr(self.parameterAsDouble(parameters, "MIN_AREA", context)),
                              "--simplify", repr(self.parameterAsDouble(parameters, "SIMPLIFY", context))],
                             feedback, echo_stdout=False)
            summary = json.loads(text)
            feedback.pushInfo(f"{summary.get('polygons')} polygons written")
            styles.write_polygon_style(staged, prediction, feedback)
            staging.commit(stale=styles.sidecars(output))
        finally:
            staging.discard()
        return {"OUTPUT": output, "POLYGONS": summary.get("polygons")}


class EvaluateAlgorithm(RsPgdAlgorithm):
    """rs_pgd:evaluate: mIoU, accuracy and per-class scores of a class map against labels."""

    def name(self):
        return "evaluate"

    def displayName(self):  # noqa: N802 - QGIS API name
        return "Evaluate class map"

    def shortHelpString(self):  # noqa: N802 - QGIS API name
        return ("Scores a class map against reference labels (polygons or a label raster): mIoU, overall "
                "accuracy and per-class IoU/F1. MIOU and ACCURACY are outputs a model can branch on; the full "
                "report can be written to a JSON file.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API name
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class map"))
        self._add_labels_parameters()
        self._advanced(QgsProcessingParameterString(
            "BACKGROUND", "Score pixels outside every label polygon as this class", optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Report (JSON)", "JSON files (*.json)", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("MIOU", "Mean IoU"))
        self.addOutput(QgsProcessingOutputNumber("ACCURACY", "Overall accuracy"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API name
        prediction = self._scene(parameters, "INPUT", context, feedback)
        labels = self._labels_args(parameters, context, feedback)
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context) or None
        self._refuse_overwriting([output], [prediction, labels[0]])
        args = ["evaluate", prediction, *labels, "--json"]
        background = self.parameterAsString(parameters, "BACKGROUND", context)
        if background:
            args += ["--background", background]
        text = self._run(args, feedback, echo_stdout=False)
        result = json.loads(text)
        feedback.pushInfo(f"mIoU {result.get('miou')}, accuracy {result.get('accuracy')}")
        if output:
            staging = Staging()
            try:
                with open(staging.path_for(output), "w", encoding="utf-8") as handle:
                    handle.write(text)
                staging.commit()
            finally:
                staging.discard()
        return {"MIOU": result.get("miou"), "ACCURACY": result.get("accuracy"), "OUTPUT": output}
