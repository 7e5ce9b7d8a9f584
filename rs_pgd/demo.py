"""The embedded demo: the shipped Landsat 7 scene (rasterio's RGB.byte.tif) with GSHHG land/water labels."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
DEMO_SCENE = DATA / "RGB.byte.tif"
DEMO_LABELS = DATA / "RGB.byte_gshhg_landwater.gpkg"
DEMO_LABEL_RASTER = DATA / "RGB.byte_gshhg_landwater.tif"


def run_demo(directory="rs-pgd-demo", epochs: int = 25, progress: bool = True) -> dict:
    """Fit on the demo scene, predict it, evaluate the prediction; return the paths and scores."""
    from rs_pgd import fit
    from rs_pgd.evaluation import evaluate
    from rs_pgd.infer import predict

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model = out / "model.safetensors"
    fit(DEMO_SCENE, DEMO_LABELS, model, epochs=epochs, progress=progress)
    prediction = out / "prediction.tif"
    preview = out / "preview.png"
    predict(model, DEMO_SCENE, prediction, preview=preview, progress=progress)
    scores = evaluate(prediction, DEMO_LABELS)
    return {"model": model, "prediction": prediction, "preview": preview, "miou": scores["miou"],
            "accuracy": scores["accuracy"]}
