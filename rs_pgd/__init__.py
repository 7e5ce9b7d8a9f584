"""rs-pgd: Patch Gradient Descent for semantic segmentation of huge georeferenced rasters.

Importing this package does not import torch: ``rio`` imports every plugin at start-up.
The heavy entry points are loaded on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "fit", "predict", "suggest", "evaluate", "vectorize", "export", "scene_info"]


def __getattr__(name):
    if name == "fit":
        from rs_pgd.api import fit

        return fit
    if name == "predict":
        from rs_pgd.infer import predict

        return predict
    if name == "suggest":
        from rs_pgd.suggestion import suggest

        return suggest
    if name == "evaluate":
        from rs_pgd.evaluation import evaluate

        return evaluate
    if name == "vectorize":
        from rs_pgd.vectorization import vectorize

        return vectorize
    if name == "export":
        from rs_pgd.onnx_export import export

        return export
    if name == "scene_info":
        from rs_pgd.raster import scene_info

        return scene_info
    raise AttributeError(f"module 'rs_pgd' has no attribute {name!r}")
