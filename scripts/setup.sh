#!/usr/bin/env bash
# Sets up everything patchgan_fast needs in a virtual environment (default .venv), idempotently:
# torch (the CPU build 2.13.0 unless a torch is already there), triton where a wheel exists, the test
# tools, and the package itself with its compiled ops built against that torch.
#
#   bash scripts/setup.sh          # the package, its ops and the test tools
#   bash scripts/setup.sh --data   # also the built-in real data (Debian packages mricron-data, dataset-fashion-mnist)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }

if ! "$py" -c "import torch" 2>/dev/null; then
  echo "==> installing torch==$TORCH_VERSION"
  pip install "torch==$TORCH_VERSION"
fi
need=()
for mod in numpy sklearn ninja setuptools wheel pytest pytest_benchmark hypothesis importlinter nibabel nilearn pydicom PIL matplotlib tqdm; do
  "$py" -c "import $mod" 2>/dev/null || need+=("$mod")
done
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && ! "$py" -c "import triton" 2>/dev/null; then
  need+=(triton)
fi
if [ ${#need[@]} -gt 0 ]; then
  pkgs=("${need[@]/sklearn/scikit-learn}")
  pkgs=("${pkgs[@]/pytest_benchmark/pytest-benchmark}")
  pkgs=("${pkgs[@]/PIL/pillow}")
  pkgs=("${pkgs[@]/importlinter/import-linter}")
  echo "==> installing ${pkgs[*]}"
  pip install "${pkgs[@]}"
fi

if ! "$py" -c "import patchgan_fast._C" 2>/dev/null || [ ! -x "$VENV/bin/patchgan-fast" ]; then
  echo "==> installing patchgan_fast (editable) and building its ops against torch $("$py" -c 'import torch; print(torch.__version__)')"
  pip install --no-build-isolation --no-deps -e .
fi
# incremental rebuild of the ops (ninja does nothing when csrc/ is unchanged)
"$py" setup.py -q build_ext --inplace >/dev/null

if [ "${1:-}" = "--data" ]; then
  # the built-in real data: T1 brain MRI (mricron-data) and Fashion-MNIST (dataset-fashion-mnist)
  missing=()
  for pkg in mricron-data dataset-fashion-mnist; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "==> installing the Debian packages ${missing[*]} (built-in real data)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "missing data packages: run 'sudo apt-get install ${missing[*]}' (Debian/Ubuntu), or point" \
           "PATCHGAN_FAST_BRAIN_MRI / PATCHGAN_FAST_FASHION_MNIST at folders holding the files" >&2
    fi
  fi
fi
echo "==> ready: $("$py" -c 'import json, patchgan_fast; print(json.dumps(patchgan_fast.backend_info()))')"
