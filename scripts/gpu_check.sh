#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and a CUDA build of torch: build the CUDA kernels, run the whole test
# suite (CUDA tests included), the benchmarks and the screening-throughput sweep, and record the figures
# under benchmarks/results/ (NAME.{json,md} and NAME-pipeline-sweep.{json,md}).
#
#   bash scripts/gpu_check.sh [RESULTS_NAME]      # default name: the GPU model, e.g. h100
#
# Uses the python on PATH (the GPU machine's torch), not .venv. Logs go to $OUT when it is set.
# A machine without network gets the pure-Python packages it lacks (nibabel, pydicom) as wheels in
# .whl/ (e.g. `pip download --no-deps -d .whl nibabel pydicom importlib-resources` beforehand).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps .whl/*.whl
fi
name=${1:-$(python -c "import torch; print(torch.cuda.get_device_name().split()[1].lower() if torch.cuda.is_available() else 'cpu')")}
log=${OUT:-benchmarks/results}
mkdir -p "$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$log/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$log/gpu.txt"
python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
python -c "import patchgan_fast, json; info = patchgan_fast.backend_info(); print(json.dumps(info)); assert info['extension']['cuda'], 'built without CUDA'"
python -m pytest -q tests -p no:cacheprovider 2>&1 | tee "$log/tests.log" | tail -5
python -m pytest benchmarks --benchmark-only --record "$name" -p no:cacheprovider 2>&1 | tee "$log/benchmarks.log" | tail -60
python benchmarks/sweep_pipeline.py --record "$name-pipeline-sweep" 2>&1 | tee "$log/sweep.log" | tail -80
if [ -n "${OUT:-}" ]; then cp benchmarks/results/"$name".{json,md} benchmarks/results/"$name"-pipeline-sweep.{json,md} "$OUT/"; fi
