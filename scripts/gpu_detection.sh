#!/usr/bin/env bash
# On a GPU machine: the full detection benchmarks (paper Tables 1 and 2 with every baseline and the
# ablations), several small models training at once, recorded under benchmarks/results/NAME-*/.
#
#   bash scripts/gpu_detection.sh [NAME] [JOBS]     # default NAME: the GPU model (e.g. h100), JOBS 8
#
# Needs the built-in data (Debian packages dataset-fashion-mnist and mricron-data, copies in .gpudata/, or
# PATCHGAN_FAST_FASHION_MNIST / PATCHGAN_FAST_BRAIN_MRI pointing at copies of the files); the setup (python,
# carried wheels and data, the build) is scripts/gpu_env.sh.
#
# The benchmarks run with --resume and stop themselves after BUDGET seconds (default 540, inside one
# 10-minute device call): every model finished by then is in benchmarks/results/NAME-DATASET/jobs/ (packed into
# $OUT/NAME-DATASET.tar.gz when OUT is set, tables or not: a device machine returns only a few files, each at
# most 16 MiB, so the tables, plots and results.json also come alone in $OUT/NAME-DATASET-tables.tar.gz: at
# 128x128 a brain job with maps is 19 MB). To go on, unpack the jobs in place (on a fresh machine: pass the
# folders with the device tool's carry) and run this again.
# The training checkpoint of each model stopped mid-way, in jobs/KEY.partial/, continues it when this runs again
# on the same machine; it is not packed (an f-AnoGAN's is 150 MB at 128x128, over what a device call returns).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
name=${1:-$GPU_NAME}
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
  # SIGTERM stops the benchmark as Ctrl-C does (it terminates its workers, each after its step under way with
  # a checkpoint; every finished model is already on disk); SIGINT would do nothing where a non-interactive
  # shell started the script in the background
  timeout -k 30 --signal=TERM "$left" $PY -m patchgan_fast.cli benchmark "$dataset" --jobs "$jobs" --resume \
    --methods patchgan,ae,ocsvm,alocc,fanogan,perceptual_ae,threshold --out "$out" || status=$?
  if [ -n "${OUT:-}" ] && [ -d "$out" ]; then
    tar -czf "$OUT/$name-$dataset-tables.tar.gz" --exclude=jobs -C "$(dirname "$out")" "$(basename "$out")"
    tar -czf "$OUT/$name-$dataset.tar.gz" --exclude='*.partial' -C "$(dirname "$out")" "$(basename "$out")"
  fi
  if [ "$status" -ne 0 ]; then
    echo "$dataset: stopped (exit $status) after $SECONDS s with $(ls "$out"/jobs 2>/dev/null | grep -c '\.pt$') models done; run this script again to continue" >&2
    exit "$status"
  fi
done
