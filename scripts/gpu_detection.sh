#!/usr/bin/env bash
# On a GPU machine: the full detection benchmarks (paper Tables 1 and 2 with every baseline and the
# ablations), several small models training at once, recorded under benchmarks/results/NAME-*/.
#
#   bash scripts/gpu_detection.sh [NAME] [JOBS]     # default NAME: the GPU model (e.g. h100), JOBS 8
#
# Needs the built-in data (Debian packages dataset-fashion-mnist and mricron-data, or
# PATCHGAN_FAST_FASHION_MNIST / PATCHGAN_FAST_BRAIN_MRI pointing at copies of the files).
#
# The benchmarks run with --resume and stop themselves after BUDGET seconds (default 540, inside one
# 10-minute device call): every model finished by then is in benchmarks/results/NAME-DATASET/jobs/
# (copied to $OUT/NAME-DATASET/ when OUT is set, tables or not). To go on, put those jobs/ folders back
# in place (on a fresh machine: fetch them and pass them with the device tool's carry) and run this again.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-$(python -c "import torch; print(torch.cuda.get_device_name().split()[1].lower() if torch.cuda.is_available() else 'cpu')")}
jobs=${2:-8}
budget=${BUDGET:-540}
for dataset in fashion-mnist brain-mri; do
  out="benchmarks/results/$name-$dataset"
  left=$((budget - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "$dataset: no time left in BUDGET=$budget s; run this script again to continue" >&2
    exit 3
  fi
  status=0
  # SIGTERM stops the benchmark as Ctrl-C does (it terminates its workers; every finished model is
  # already on disk); SIGINT would do nothing where a non-interactive shell started the script in the background
  timeout -k 30 --signal=TERM "$left" python -m patchgan_fast.cli benchmark "$dataset" --jobs "$jobs" --resume \
    --methods patchgan,ae,ocsvm,alocc,fanogan,perceptual_ae,threshold --out "$out" || status=$?
  if [ -n "${OUT:-}" ] && [ -d "$out" ]; then mkdir -p "$OUT/$name-$dataset" && cp -r "$out"/. "$OUT/$name-$dataset/"; fi
  if [ "$status" -ne 0 ]; then
    echo "$dataset: stopped (exit $status) after $SECONDS s with $(ls "$out"/jobs 2>/dev/null | grep -c '\.pt$') models done; run this script again to continue" >&2
    exit "$status"
  fi
done
