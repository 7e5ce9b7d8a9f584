"""The ``rs_pgd`` Processing provider."""

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import EvaluateAlgorithm, FitAlgorithm, PredictAlgorithm, VectorizeAlgorithm
from .runner import describe_command

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")


class RsPgdProvider(QgsProcessingProvider):
    """rs-pgd's four algorithms: predict, fit, vectorize and evaluate."""

    def id(self):
        return "rs_pgd"

    def name(self):
        return "rs-pgd"

    def longName(self):  # noqa: N802 - QGIS API name
        return f"rs-pgd (runs {describe_command()})"

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self):  # noqa: N802 - QGIS API name
        return ICON

    def loadAlgorithms(self):  # noqa: N802 - QGIS API name
        for algorithm in (PredictAlgorithm(), FitAlgorithm(), VectorizeAlgorithm(), EvaluateAlgorithm()):
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 - QGIS API name
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802 - QGIS API name
        return ["gpkg", "geojson", "fgb", "shp"]

    def defaultVectorFileExtension(self, hasGeometry=True):  # noqa: N802,N803 - QGIS API names
        return "gpkg"

    def defaultRasterFileExtension(self):  # noqa: N802 - QGIS API name
        return "tif"
