"""Builds patchgan_fast and its compiled ops (patchgan_fast._C) against the installed torch.

    pip install -e . --no-build-isolation        # C++ CPU kernels; CUDA kernels too where torch has CUDA

Environment: FORCE_CUDA=1 builds the CUDA kernels even when no GPU is visible (needs a CUDA torch and
nvcc); NO_CUDA=1 skips them; DEBUG=1 builds with -O0 -g.
"""

import glob
import os
import re

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(ROOT, "patchgan_fast", "runtime", "__init__.py")) as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _extension():
    debug = os.getenv("DEBUG", "0") == "1"
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    with_cuda = (
        os.getenv("NO_CUDA", "0") != "1"
        and torch.version.cuda is not None
        and CUDA_HOME is not None
        and (torch.cuda.is_available() or os.getenv("FORCE_CUDA", "0") == "1")
    )
    opt = ["-O0", "-g"] if debug else ["-O3"]
    macros = [
        ("PGF_TORCH_VERSION", f'"{torch.__version__}"'),
        ("PGF_CUDA_VERSION", f'"{torch.version.cuda if with_cuda else ""}"'),
    ]
    # No -std flag: BuildExtension passes the standard the installed torch needs (C++17 in older releases, C++20
    # in recent ones such as 2.13, whose own build is C++20; newer headers refuse anything older).
    cxx = opt + ["-fno-fast-math"]
    if with_cuda:
        macros.append(("PGF_WITH_CUDA", None))
        nvcc = opt + ["--fmad=false", "-lineinfo"]
        return CUDAExtension(
            "patchgan_fast._C", sources + cuda_sources, define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        )
    return CppExtension("patchgan_fast._C", sources, define_macros=macros, extra_compile_args={"cxx": cxx})


setup(
    name="patchgan_fast",
    version=VERSION,
    description="Patch-GAN novelty detection for medical images with fused masks and patch-score kernels",
    # every subpackage of patchgan_fast, and the Triton kernels of the top-level kernels/ as patchgan_fast.kernels
    packages=find_packages(include=["patchgan_fast", "patchgan_fast.*"]) + ["patchgan_fast.kernels"],
    package_dir={"patchgan_fast": "patchgan_fast", "patchgan_fast.kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=[
        "nibabel",
        "pydicom",
        "pillow",
        "matplotlib",
        "tqdm",
        "torch>=2.4",
        "numpy",
        "scikit-learn",
        "triton; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    extras_require={"test": ["pytest", "pytest-benchmark", "hypothesis"]},
    entry_points={"console_scripts": ["patchgan-fast = patchgan_fast.app.cli:main"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
