# Sourced by the GPU scripts: picks the python, installs the carried wheels, points at the carried data and
# builds the package where it is not built yet. Sets PY and GPU_NAME (the GPU model, e.g. h100).
#
# The python is $PY, else /opt/torch/.venv/bin/python3 where it exists (the lent GPU machines), else python3.
# Pure-Python packages that machine lacks (nibabel, pydicom) come as wheels in .whl/, e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl nibabel pydicom
# and the built-in data as .gpudata/fashion-mnist/*.gz, .gpudata/mricron/ch2bet.nii.gz (copies of what
# `make demo` installs under /usr/share) and .gpudata/mni/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz
# (from the nilearn wheel's nilearn/datasets/data/, for brain-mri); both folders are ignored by git, so pass them
# with the device tool's carry.
if [ -z "${PY:-}" ]; then
  PY=python3
  [ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
fi
export PATH="$(dirname "$(command -v "$PY")"):$PATH"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --upgrade --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
[ -f .gpudata/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && export PATCHGAN_FAST_FASHION_MNIST=$PWD/.gpudata/fashion-mnist
[ -f .gpudata/mricron/ch2bet.nii.gz ] && export PATCHGAN_FAST_BRAIN_MRI=$PWD/.gpudata/mricron
[ -f .gpudata/mni/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz ] && export PATCHGAN_FAST_MNI=$PWD/.gpudata/mni
# `pip install -e`, not PYTHONPATH alone: setup.py maps patchgan_fast.kernels from kernels/
if ! $PY -c "import patchgan_fast._C, patchgan_fast.kernels" 2>/dev/null; then
  timeout 400 $PY -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
fi
GPU_NAME=$($PY -c "import torch; print(torch.cuda.get_device_name().split()[1].lower() if torch.cuda.is_available() else 'cpu')")
