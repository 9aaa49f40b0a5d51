"""Without a GPU the CUDA kernels cannot run, but they can still be compiled: nvcc builds
csrc/cuda/ for sm_90 against this torch's headers, so a CPU-only CI catches CUDA code that does not
compile, in C++20 as torch builds extensions. (The CPU build of torch lacks one generated CUDA header; a
one-line stand-in supplies it.)"""

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
from torch.utils.cpp_extension import include_paths

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA torch builds and tests the kernels for real")
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = ["nvcc", "-c", str(ROOT / "csrc" / "cuda" / "masks_cuda.cu"), "-o", str(tmp_path / "masks_cuda.o"),
           *[f"-I{p}" for p in include_paths()], f"-I{tmp_path}", f"-I{sysconfig.get_paths()['include']}",
           "-std=c++20", "--fmad=false", "-O1", "-DTORCH_EXTENSION_NAME=_C", "-D_GLIBCXX_USE_CXX11_ABI=1",
           "-gencode", "arch=compute_90,code=sm_90", "-w"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"nvcc failed:\n{run.stderr[-5000:]}"
    assert (tmp_path / "masks_cuda.o").stat().st_size > 0
