"""Fit, predict, evaluate and vectorize the shipped Landsat 7 scene with the Python API.

Usage: python examples/fit_predict.py OUTPUT_DIR [--quick]
"""

import sys
from pathlib import Path

import rs_pgd
from rs_pgd.demo import DEMO_LABELS, DEMO_SCENE


def main(out: Path, quick: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    options = dict(encoder="resnet18", tile=128, margin=32, epochs=20)
    if quick:
        options.update(tile=64, epochs=1)
    result = rs_pgd.fit(DEMO_SCENE, DEMO_LABELS, out / "model.safetensors", **options)
    print("best validation:", result.best)
    rs_pgd.predict(out / "model.safetensors", DEMO_SCENE, out / "prediction.tif",
                   probabilities=out / "probabilities.tif", preview=out / "preview.png")
    scores = rs_pgd.evaluate(out / "prediction.tif", DEMO_LABELS)
    print(f"mIoU {scores['miou']:.4f}, accuracy {scores['accuracy']:.4f}")
    summary = rs_pgd.vectorize(out / "prediction.tif", out / "prediction.gpkg", min_area=300 * 300 * 4)
    print(f"{summary['polygons']} polygons in {summary['output']}")
    return scores


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "rs-pgd-example"), quick="--quick" in sys.argv)
