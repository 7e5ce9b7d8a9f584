"""Render the four algorithm dialogs to PNG, headless (the screenshots in docs/qgis.md).

``QT_QPA_PLATFORM=offscreen python3 examples/qgis/render_dialogs.py docs/images/qgis`` with QGIS's Python. The
plugin is imported from this checkout (``rs_pgd/qgis``); no QGIS window or display is needed.
"""

import os
import sys

from qgis.core import QgsApplication

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Interface:
    """The little of QGIS's ``iface`` that Processing's dialog asks for."""

    def __init__(self):
        from qgis.gui import QgsMapCanvas
        from qgis.PyQt.QtWidgets import QMainWindow

        self.window = QMainWindow()
        self.canvas = QgsMapCanvas(self.window)

    def mainWindow(self):  # noqa: N802 - QGIS API name
        return self.window

    def mapCanvas(self):  # noqa: N802 - QGIS API name
        return self.canvas

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def main(folder):
    app = QgsApplication([], True)
    app.initQgis()
    import qgis.utils

    qgis.utils.iface = _Interface()
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    sys.path.insert(0, ROOT)
    from rs_pgd.qgis import classFactory

    plugin = classFactory(None)
    plugin.initProcessing()
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    os.makedirs(folder, exist_ok=True)
    for name, height in (("predict", 560), ("fit", 900), ("vectorize", 480), ("evaluate", 640)):
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(f"rs_pgd:{name}")
        dialog = AlgorithmDialog(algorithm, False, None)
        dialog.show()
        app.processEvents()
        dialog.resize(900, height)  # after show(): the dialog restores its last size when shown
        for _ in range(20):
            app.processEvents()
        path = os.path.join(folder, f"{name}.png")
        dialog.grab().save(path)
        print(f"wrote {path}")
    os._exit(0)  # skip QGIS 3.22's crash-prone teardown in scripts


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "images", "qgis"))
