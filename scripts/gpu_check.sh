#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and a CUDA build of torch: build the CUDA kernels, run the test suite
# (CUDA tests included), the benchmarks and the screening-throughput sweep, and record the figures under
# benchmarks/results/ (NAME-kernels, NAME-score-batch, NAME-training, NAME-pipeline, NAME-pipeline-sweep).
#
#   bash scripts/gpu_check.sh [STAGE ...]     # default: every stage, in this order
#
# Stages: diag (toolchain, an argument error thrown by the extension, torch.compile on the CPU and the GPU,
# each under a time limit), tests, kernels (mask and patch-score benchmarks), score-batch, training, pipeline
# (benchmarks/test_bench_pipeline.py), sweep. Each stage runs under its own time limit (STAGE_TIMEOUT seconds,
# default 480) and a failing stage does not stop the next; benchmark figures are written as they are measured,
# so a stage stopped by its limit keeps what it measured. NAME is the GPU model (e.g. h100) unless RESULTS_NAME
# is set. Logs go to $OUT/logs.tar.gz when OUT is set (a device machine returns only a few files), else to
# benchmarks/results/logs/.
#
# Setup (the python, carried wheels and data, the build): scripts/gpu_env.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
name=${RESULTS_NAME:-$GPU_NAME}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-480}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(diag tests kernels score-batch training pipeline sweep)
logs=$(mktemp -d)
trap 'if [ -n "${OUT:-}" ]; then tar -czf "$OUT/logs.tar.gz" -C "$logs" .; cp benchmarks/results/"$name"*.{json,md} "$OUT/" 2>/dev/null; else mkdir -p benchmarks/results/logs; cp "$logs"/* benchmarks/results/logs/; fi' EXIT

$PY -c "import patchgan_fast, json; info = patchgan_fast.backend_info(); print(json.dumps(info))
if not (info['extension'] or {}).get('cuda'): print('WARNING: the extension was built without CUDA: the CUDA ops are not tested')" \
  | tee "$logs/backend.txt"

stage() {  # stage NAME COMMAND...: runs under the time limit, logs to $logs/NAME.log, prints the tail
  local n=$1; shift
  echo "== $n: $*"
  local t0=$SECONDS
  timeout -k 10 "$STAGE_TIMEOUT" "$@" >"$logs/$n.log" 2>&1
  local rc=$?
  tail -25 "$logs/$n.log"
  echo "== $n: exit $rc after $((SECONDS - t0)) s"
}

diag() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'cxx11 abi', torch._C._GLIBCXX_USE_CXX11_ABI)"
  $PY -c "import torch; print(torch.__config__.show())" | grep -E "GCC|C\+\+ Version|CXX_COMPILER"
  echo "g++ on PATH: $(command -v g++) $(g++ -dumpfullversion 2>/dev/null); CXX=${CXX:-unset}"
  so=$($PY -c "import patchgan_fast._C as m; print(m.__file__)")
  ldd "$so" | grep -E "stdc\+\+|c10|torch" || true
  # an argument error thrown by the extension must reach Python as a RuntimeError
  local throw='import torch, patchgan_fast
try:
    torch.ops.patchgan_fast.build_masks(torch.arange(2).view(1, 2), 16, 16, 1, 4, 4, 0, 1, 4, 2, 8)
except RuntimeError as e:
    print("TORCH_CHECK raised RuntimeError:", str(e).splitlines()[0])'
  timeout 60 $PY -c "$throw"
  local rc=$?
  echo "throw check exit $rc"
  if [ $rc -ne 0 ]; then
    if command -v cuda-gdb >/dev/null; then
      timeout 120 cuda-gdb -batch -ex run -ex bt --args "$PY" -c "$throw" 2>&1 | tail -40
    fi
    # the same throw from a minimal extension: does it crash too (the toolchain), or only ours (our code)?
    timeout 240 $PY - <<'EOF'
import torch
from torch.utils.cpp_extension import load_inline
m = load_inline("pgf_throw", "#include <torch/extension.h>\nvoid fail(at::Tensor t) { TORCH_CHECK(t.dim() == 1, \"got \", t.dim(), \"-D\"); }",
                functions=["fail"], verbose=False)
try:
    m.fail(torch.zeros(2, 2))
except RuntimeError as e:
    print("minimal extension: TORCH_CHECK raised RuntimeError:", str(e).splitlines()[0])
EOF
    echo "minimal extension check exit $?"
  fi
  # torch.compile: how long a tiny model takes, on the CPU and the GPU (a hang dumps every thread's stack)
  for dev in cpu $($PY -c "import torch; print('cuda' if torch.cuda.is_available() else '')"); do
    timeout -k 5 200 $PY - "$dev" <<'EOF'
import faulthandler, sys, time
import torch
faulthandler.dump_traceback_later(180, exit=True)
dev = sys.argv[1]
net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1)).to(dev)
t0 = time.perf_counter()
torch.compile(net)(torch.randn(4, 1, 32, 32, device=dev))
print(f"torch.compile on {dev}: {time.perf_counter() - t0:.1f} s")
EOF
  done
}

for s in "${stages[@]}"; do
  case $s in
    diag) echo "== diag"; diag 2>&1 | tee "$logs/diag.log" ;;
    tests) stage tests $PY -m pytest -q -n 12 tests -p no:cacheprovider -o faulthandler_timeout=150 ;;
    kernels) stage kernels $PY -m pytest benchmarks/test_bench_masks.py benchmarks/test_bench_patch_scores.py \
               --benchmark-only --record "$name-kernels" -p no:cacheprovider ;;
    score-batch) stage score-batch $PY -m pytest benchmarks/test_bench_score_batch.py --benchmark-only \
                   --record "$name-score-batch" -p no:cacheprovider ;;
    training) stage training $PY -m pytest benchmarks/test_bench_training.py --benchmark-only \
                --record "$name-training" -p no:cacheprovider ;;
    pipeline) stage pipeline $PY -m pytest benchmarks/test_bench_pipeline.py --benchmark-only \
                --record "$name-pipeline" -p no:cacheprovider -o faulthandler_timeout=400 ;;
    sweep) stage sweep $PY benchmarks/sweep_pipeline.py --record "$name-pipeline-sweep" ;;
    *) echo "unknown stage $s; expected diag tests kernels score-batch training pipeline sweep"; exit 2 ;;
  esac
done
