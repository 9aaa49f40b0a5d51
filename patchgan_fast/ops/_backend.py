"""The one place that knows which fast implementations are available and decides who runs.

``PATCHGAN_FAST_BACKEND`` selects the policy:

* ``auto`` (default): the compiled masks op where ``patchgan_fast._C`` loads (CPU, and CUDA where it
  was built with CUDA); the Triton score kernel on CUDA tensors (and on CPU tensors when
  ``TRITON_INTERPRET=1``); the pure-PyTorch reference everywhere else.
* ``reference``: always the pure-PyTorch reference.
* ``native``: like ``auto``, but raise instead of falling back, naming what is missing.

Both fast implementations are imported by name on first use (either may be missing). Nothing here
touches the GPU at import time.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from types import ModuleType
from typing import Optional

import torch

ENV_VAR = "PATCHGAN_FAST_BACKEND"
_MODES = ("auto", "reference", "native")


def mode() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in _MODES:
        raise ValueError(f"{ENV_VAR}={value!r} is not a backend policy; expected one of {', '.join(_MODES)}")
    return value


_loaded: dict[str, tuple[Optional[ModuleType], str]] = {}  # plain dict: torch.compile traces through it


def _load_extension() -> tuple[Optional[ModuleType], str]:
    if "ext" not in _loaded:
        try:
            _loaded["ext"] = (importlib.import_module("patchgan_fast._C"), "")  # registers torch.ops.patchgan_fast.*
        except ImportError as exc:
            _loaded["ext"] = (None, f"patchgan_fast._C is not built ({exc}); run `pip install -e . --no-build-isolation`")
    return _loaded["ext"]


def _load_triton() -> tuple[Optional[ModuleType], str]:
    if "triton" not in _loaded:
        try:
            kernels = importlib.import_module("patchgan_fast.kernels")
            from .library import register

            register(kernels)  # torch.ops.patchgan_fast.patch_scores
            _loaded["triton"] = (kernels, "")
        except ImportError as exc:
            _loaded["triton"] = (None, f"triton is not importable ({exc})")
    return _loaded["triton"]


def extension() -> Optional[ModuleType]:
    """The compiled module, or None when it is not built."""
    return _load_extension()[0]


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _masks_missing(device: torch.device) -> str:
    ext, why = _load_extension()
    if ext is None:
        return why
    if device.type == "cuda" and not ext.build_info()["cuda"]:
        return "patchgan_fast._C was built without CUDA; rebuild it on a machine with a CUDA torch and nvcc"
    if device.type not in ("cpu", "cuda"):
        return f"the masks op has no kernel for device type {device.type!r}"
    return ""


def _scores_missing(device: torch.device) -> str:
    kernels, why = _load_triton()
    if kernels is None:
        return why
    if device.type == "cuda" or (device.type == "cpu" and _interpret()):
        return ""
    return f"the Triton kernel runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1), got device {device}"


def _decide(missing: str, what: str) -> bool:
    m = mode()
    if m == "reference":
        return False
    if missing and m == "native":
        raise RuntimeError(f"{ENV_VAR}=native but the fast {what} is unavailable: {missing}")
    return not missing


def use_native_masks(device: torch.device) -> bool:
    """True when the compiled masks op should run for tensors on ``device``."""
    return _decide(_masks_missing(device), "masks op")


def use_triton_scores(device: torch.device) -> bool:
    """True when the Triton patch-score kernel should run for tensors on ``device``."""
    return _decide(_scores_missing(device), "patch-score kernel")


def triton_kernels() -> ModuleType:
    kernels, why = _load_triton()
    if kernels is None:
        raise RuntimeError(why)
    return kernels


def torch_compiler() -> Optional[str]:
    """The compiler that built torch, as torch reports it (e.g. 'GCC 13.3'), or None."""
    match = re.search(r"^\s*-\s*((?:GCC|clang|Clang|MSVC)[^\n]*)$", torch.__config__.show(), re.M)
    return match.group(1).strip() if match else None


def _family_and_major(compiler: Optional[str]) -> Optional[tuple[str, str]]:
    match = re.match(r"\s*(gcc|clang|msvc)\D*(\d+)", compiler or "", re.I)
    return (match.group(1).lower(), match.group(2)) if match else None


_warned: set = set()


def info() -> dict:
    """What is available, for bug reports and the benchmark records. Warns (once) when the extension was built
    by another compiler family or major version than torch: C++ exceptions (the ops' argument errors) may
    then not cross into torch safely (they killed the process on one H100 build); the Python layer checks
    every argument before calling the extension, so no such error should reach it."""
    ext, ext_why = _load_extension()
    kernels, tri_why = _load_triton()
    built = ext.build_info() if ext is not None else None
    theirs = torch_compiler()
    differ = built is not None and _family_and_major(built.get("compiler")) != _family_and_major(theirs)
    out = {
        "policy": mode(),
        "torch": torch.__version__,
        "torch_compiler": theirs,
        "extension": built,
        "extension_missing": ext_why or None,
        "compilers_differ": differ,
        "triton": None,
        "triton_missing": tri_why or None,
        "triton_interpret": _interpret(),
    }
    if differ and "compilers" not in _warned:
        _warned.add("compilers")
        warnings.warn(f"patchgan_fast._C was built by {built.get('compiler')} but torch by {theirs}: rebuild the "
                      "extension with torch's compiler family and major version (CXX=...) if an op ever crashes the "
                      "process instead of raising", RuntimeWarning, stacklevel=2)
    if kernels is not None:
        import triton

        out["triton"] = triton.__version__
    return out
