#!/usr/bin/env bash
# On a GPU machine: the full detection benchmarks (paper Tables 1 and 2 with every baseline and the
# ablations), several small models training at once, recorded under benchmarks/results/NAME-*/.
#
#   bash scripts/gpu_detection.sh [NAME] [JOBS]     # default NAME: the GPU model (e.g. h100), JOBS 8
#
# Needs the built-in data (Debian packages dataset-fashion-mnist and mricron-data, or
# PATCHGAN_FAST_FASHION_MNIST / PATCHGAN_FAST_BRAIN_MRI pointing at copies of the files).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-$(python -c "import torch; print(torch.cuda.get_device_name().split()[1].lower() if torch.cuda.is_available() else 'cpu')")}
jobs=${2:-8}
for dataset in fashion-mnist brain-mri; do
  out="benchmarks/results/$name-$dataset"
  python -m patchgan_fast.cli benchmark "$dataset" --jobs "$jobs" --methods patchgan,ae,ocsvm,alocc,fanogan,perceptual_ae,threshold --out "$out"
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/$name-$dataset" && cp "$out"/* "$OUT/$name-$dataset/"; fi
done
