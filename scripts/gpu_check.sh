#!/usr/bin/env bash
# One command for the GPU: build with CUDA, run every test (CUDA tests first, then the rest in parallel), then
# measure everything and record it under benchmarks/results/ (and in $OUT when set), within BUDGET seconds
# (default 500: with the build, under 9 minutes on one H200).
#
#   bash scripts/gpu_check.sh                 # every stage, in this order
#   bash scripts/gpu_check.sh diag tests      # some stages
#   bash scripts/gpu_check.sh --dry-run       # the same stages on the CPU with tiny sizes (tests/test_gpu_check.py)
#
# Stages and their own time limits (s): diag 45 (toolchain; an argument error thrown by the extension must
# raise; torch.compile on the CPU and the GPU), tests 170, kernels 70 (masks and patch-score kernels: time,
# GB/s, fraction of a device copy measured in the same run, x eager, x torch.compile), score-batch 40,
# training 35 (images/s), pipeline 70 (score_batch and the Scorer end to end from uint8 on the GPU and from
# JPEG files, with the decode limit), sweep 60 (256x256, C 1 and 3, K 1 and 4, batch sizes, memory peaks,
# per-stage times, the default model at widths 24 and 16 and the TFLOP/s each reaches). A stage gets the smaller of its limit and what is left of the budget; one stopped by its
# limit gets SIGABRT, so every Python thread's stack is dumped to its log (PYTHONFAULTHANDLER), and the next
# stage runs. Figures are written as they are measured: a stopped stage keeps them. NAME is the GPU model
# (e.g. h200) unless RESULTS_NAME is set. Logs go to $OUT/logs.tar.gz when OUT is set, else to
# benchmarks/results/logs/ (a dry run: a scratch folder it prints).
#
# Setup on the GPU machine (the python, carried wheels and data, the CUDA build): scripts/gpu_env.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then
  dry=1
  shift
fi
if [ $dry = 1 ]; then  # the CPU, the project's venv, figures and logs in a scratch folder
  PY=${PY:-.venv/bin/python}
  GPU_NAME=dryrun-cpu
  export PATCHGAN_FAST_RESULTS=${PATCHGAN_FAST_RESULTS:-$(mktemp -d)}
  export CUDA_VISIBLE_DEVICES=""
  unset TRITON_INTERPRET  # the kernels' speed is a GPU's; on the CPU the benchmarks time the references
else
  source scripts/gpu_env.sh
fi
name=${RESULTS_NAME:-$GPU_NAME}
results=${PATCHGAN_FAST_RESULTS:-benchmarks/results}
BUDGET=${BUDGET:-500}
export PYTHONFAULTHANDLER=1
declare -A LIMIT=([diag]=45 [tests]=170 [kernels]=70 [score-batch]=40 [training]=35 [pipeline]=70 [sweep]=60)
if [ $dry = 1 ]; then  # 2 CPU cores, a cold disk cache (torch.compile's first hash of triton) can take far longer
  for s in "${!LIMIT[@]}"; do LIMIT[$s]=$((2 * LIMIT[$s])); done
fi
ORDER=(diag tests kernels score-batch training pipeline sweep)
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=("${ORDER[@]}")
for s in "${stages[@]}"; do
  [ -n "${LIMIT[$s]:-}" ] || { echo "unknown stage $s; expected ${ORDER[*]}"; exit 2; }
done
logs=$(mktemp -d)
finish() {
  if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/logs.tar.gz" -C "$logs" .
    cp "$results/$name"*.{json,md} "$OUT/" 2>/dev/null
  elif [ $dry = 1 ]; then
    cp "$logs"/* "$results/"
    echo "dry run: logs and figures in $results"
  else
    mkdir -p benchmarks/results/logs
    cp "$logs"/* benchmarks/results/logs/
  fi
}
trap finish EXIT

$PY -c "import patchgan_fast, json; info = patchgan_fast.backend_info(); print(json.dumps(info))
if not (info['extension'] or {}).get('cuda'): print('WARNING: the extension was built without CUDA: the CUDA ops are not tested')" \
  2>&1 | tee "$logs/backend.txt"

start=$SECONDS
stage() {  # stage NAME COMMAND...: under min(its limit, the budget left), logged to $logs/NAME.log
  local n=$1; shift
  local left=$((BUDGET - (SECONDS - start)))
  local limit=${LIMIT[$n]}
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    echo "== $n: skipped ($left s of the budget left)" | tee -a "$logs/stages.txt"
    return
  fi
  echo "== $n: $* (limit $limit s)"
  local t0=$SECONDS
  timeout -s ABRT -k 10 "$limit" bash -c '"$@"' stage "$@" >"$logs/$n.log" 2>&1  # the group: python included
  local rc=$?
  tail -15 "$logs/$n.log"
  echo "== $n: exit $rc after $((SECONDS - t0)) s" | tee -a "$logs/stages.txt"
}

diag() {
  if [ $dry = 0 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c "import torch; print(torch.__config__.show())" | grep -E "GCC|C\+\+ Version|CXX_COMPILER"
    echo "g++ on PATH: $(command -v g++) $(g++ -dumpfullversion 2>/dev/null); CXX=${CXX:-unset}"
  fi
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  # an argument error thrown by the extension must reach Python as a RuntimeError, not kill the process
  timeout 60 $PY -c 'import torch, patchgan_fast
try:
    torch.ops.patchgan_fast.build_masks(torch.arange(2).view(1, 2), 16, 16, 1, 4, 4, 0, 1, 4, 2, 8)
except RuntimeError as e:
    print("TORCH_CHECK raised RuntimeError:", str(e).splitlines()[0])'
  echo "throw check exit $?"
  # torch.compile: how long a tiny model takes on each device (a hang dumps every thread's stack)
  for dev in cpu $($PY -c "import torch; print('cuda' if torch.cuda.is_available() else '')"); do
    timeout -s ABRT 40 $PY -c "
import time, torch
net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1)).to('$dev')
t0 = time.perf_counter()
torch.compile(net)(torch.randn(4, 1, 32, 32, device='$dev'))
print(f'torch.compile on $dev: {time.perf_counter() - t0:.1f} s')"
  done
}

tests() {  # the CUDA tests first (the GPU paths), then every other test in parallel where xdist is there
  local par=()
  $PY -c "import xdist" 2>/dev/null && par=(-n "$(( $(nproc) > 12 ? 12 : $(nproc) ))")
  local common=(-q -p no:cacheprovider -o faulthandler_timeout=120 tests)
  $PY -m pytest -m cuda "${common[@]}"
  local rc=$?
  [ $dry = 1 ] && return $rc  # a dry run: the CPU has no CUDA tests to run, and make test ran the others
  $PY -m pytest -m "not cuda and not install" "${par[@]}" "${common[@]}" || rc=$?
  return $rc
}

bench() {  # bench NAME FILE...: pytest-benchmark, recorded as NAME
  local n=$1; shift
  $PY -m pytest "$@" --benchmark-only --record "$name-$n" -p no:cacheprovider -o faulthandler_timeout=120
}

export -f diag tests bench
export PY dry name
for s in "${stages[@]}"; do
  case $s in
    diag) stage diag diag ;;
    tests) stage tests tests ;;
    kernels) stage kernels bench kernels benchmarks/test_bench_masks.py benchmarks/test_bench_patch_scores.py ;;
    score-batch) stage score-batch bench score-batch benchmarks/test_bench_score_batch.py ;;
    training) stage training bench training benchmarks/test_bench_training.py ;;
    pipeline) stage pipeline bench pipeline benchmarks/test_bench_pipeline.py ;;
    sweep) stage sweep $PY benchmarks/sweep_pipeline.py --record "$name-pipeline-sweep" $([ $dry = 1 ] && echo --quick) ;;
  esac
done
