"""The plugin object: registers the Processing provider; no GUI work (``iface`` is None under qgis_process)."""

from qgis.core import QgsApplication

from .provider import RsPgdProvider


class RsPgdPlugin:
    """Registers :class:`RsPgdProvider` with QGIS Processing and removes it on unload."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 - QGIS API name
        """Called by QGIS (also headless) for plugins with ``hasProcessingProvider=yes``."""
        if self.provider is None:
            self.provider = RsPgdProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - QGIS API name
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
