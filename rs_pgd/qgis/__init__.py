"""QGIS plugin of rs-pgd: a Processing provider (id ``rs_pgd``) whose algorithms run the rs-pgd CLI.

This folder is copied into a QGIS profile by ``rs-pgd qgis install`` (as ``rs_pgd_processing``); it imports only
QGIS and the standard library, with relative imports, and never imports torch, rasterio or the rs_pgd package.
"""


def classFactory(iface):  # noqa: N802 - QGIS's plugin entry point
    """Entry point QGIS calls with its interface (None under qgis_process)."""
    from .plugin import RsPgdPlugin

    return RsPgdPlugin(iface)
