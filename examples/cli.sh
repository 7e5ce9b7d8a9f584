#!/usr/bin/env bash
# The command-line tour on the shipped Landsat 7 scene. Usage: bash examples/cli.sh [OUTPUT_DIR]
set -euo pipefail
out=${1:-rs-pgd-cli-example}
mkdir -p "$out"
data=$(python -c "import rs_pgd.demo as d; print(d.DATA)")
rs-pgd info "$data/RGB.byte.tif" "$data/RGB.byte_gshhg_landwater.gpkg"
rs-pgd fit "$data/RGB.byte.tif" "$data/RGB.byte_gshhg_landwater.gpkg" -o "$out/model.safetensors" \
    --encoder resnet18 --tile 128 --margin 32 --epochs 20 --log-json "$out/steps.jsonl"
rs-pgd predict "$out/model.safetensors" "$data/RGB.byte.tif" -o "$out/prediction.tif" --preview "$out/preview.png"
rs-pgd evaluate "$out/prediction.tif" "$data/RGB.byte_gshhg_landwater.gpkg" --confusion-png "$out/confusion.png"
rs-pgd vectorize "$out/prediction.tif" -o "$out/prediction.gpkg" --min-area 360000
# the same commands are available as a rasterio plugin:
rio pgd info "$out/prediction.tif"
