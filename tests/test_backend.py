"""The dispatch policy: one module decides, an environment variable forces the reference."""

import pytest
import torch

from patchgan_fast import backend_info, ops
from patchgan_fast.ops import _backend
from patchgan_fast.ops import reference as R


def test_reference_policy_forces_the_pure_pytorch_path(monkeypatch):
    monkeypatch.setenv("PATCHGAN_FAST_BACKEND", "reference")
    assert not _backend.use_native_masks(torch.device("cpu"))
    assert not _backend.use_triton_scores(torch.device("cpu"))
    called = []
    monkeypatch.setattr(ops, "build_masks_reference", lambda *a, **k: called.append(1) or R.build_masks_reference(*a, **k))
    ops.build_masks(torch.arange(3), (16, 16), patch_size=4)
    assert called == [1]


def test_auto_policy_uses_the_extension_on_cpu(monkeypatch):
    monkeypatch.setenv("PATCHGAN_FAST_BACKEND", "auto")
    assert _backend.extension() is not None, "patchgan_fast._C did not build; the suite expects the C++ ops"
    assert _backend.use_native_masks(torch.device("cpu"))


def test_native_policy_names_what_is_missing(monkeypatch):
    monkeypatch.setenv("PATCHGAN_FAST_BACKEND", "native")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match=r"fast patch-score kernel is unavailable: the Triton kernel runs on CUDA"):
        _backend.use_triton_scores(torch.device("cpu"))
    monkeypatch.setitem(_backend._loaded, "ext", (None, "patchgan_fast._C is not built (test)"))
    with pytest.raises(RuntimeError, match=r"fast masks op is unavailable: patchgan_fast._C is not built \(test\)"):
        ops.build_masks(torch.arange(3), (16, 16), patch_size=4)


def test_auto_policy_falls_back_when_the_extension_is_missing(monkeypatch):
    monkeypatch.setenv("PATCHGAN_FAST_BACKEND", "auto")
    native = ops.mask_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), patch_size=4)
    monkeypatch.setitem(_backend._loaded, "ext", (None, "missing for the test"))
    assert not _backend.use_native_masks(torch.device("cpu"))
    assert torch.equal(ops.mask_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), patch_size=4), native)


def test_unknown_policy(monkeypatch):
    monkeypatch.setenv("PATCHGAN_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match=r"PATCHGAN_FAST_BACKEND='fastest' is not a backend policy; expected one of"):
        _backend.mode()


def test_backend_info_reports_the_build():
    info = backend_info()
    assert info["extension"]["torch"] == torch.__version__
    assert info["extension"]["cuda"] == (torch.version.cuda is not None and info["extension"]["cuda_version"] != "")
