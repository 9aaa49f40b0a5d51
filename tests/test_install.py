"""A regular install works: the wheel and the source distribution, each installed into a fresh virtual
environment with no source tree on the path, import, score a batch with the compiled ops and run the CLI.

The fresh environments take their dependencies (torch, numpy, ...) from this interpreter's site-packages
through a path entry, whose .pth files (this checkout's editable install among them) are not run; the
package itself comes only from the wheel. Building twice takes a few minutes; ``-m "not install"`` skips it.
"""

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.install

CHECK = """
import sys, torch, patchgan_fast
from pathlib import Path
root = Path(sys.argv[1])
where = Path(patchgan_fast.__file__).resolve()
assert root not in where.parents, f"imported from the source tree: {where}"
info = patchgan_fast.backend_info()
assert info["extension"] is not None, info
import patchgan_fast._C
from patchgan_fast import PatchGAN, TrainConfig, score_batch
from patchgan_fast.models import networks, training
from patchgan_fast.app import screening
from patchgan_fast.evaluation import tables
x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
model = PatchGAN(TrainConfig(image_size=32, patch_size=8, depth=2, width=8), 1, (0.5,), (0.25,))
result = score_batch(model, x)
assert result.scores.shape == (2,) and torch.isfinite(result.scores).all()
print("ok", where)
"""


def _run(cmd, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _fresh_venv(path: Path) -> Path:
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd=path.parent)
    python = path / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path.parent)
    # dependencies from here, as a plain path entry (appended after the venv's own site-packages)
    Path(site.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _install_and_check(artifact: Path, tmp_path: Path, name: str) -> None:
    python = _fresh_venv(tmp_path / name)
    # --ignore-installed: the editable install seen through deps.pth is neither replaced nor removed
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "--no-build-isolation", "--ignore-installed", "-q", str(artifact)], cwd=tmp_path)
    work = tmp_path / f"{name}-cwd"
    work.mkdir()
    out = _run([str(python), "-c", CHECK, str(ROOT)], cwd=work)
    assert out.startswith("ok"), out
    help_text = _run([str(tmp_path / name / "bin" / "patchgan-fast"), "--help"], cwd=work)
    assert "train" in help_text and "screen" in help_text and "benchmark" in help_text


def test_the_wheel_installs_and_runs(tmp_path):
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
         cwd=ROOT)
    [wheel] = tmp_path.glob("patchgan_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("patchgan_fast/ops/__init__.py", "patchgan_fast/scoring/scorer.py", "patchgan_fast/models/patchgan.py",
                   "patchgan_fast/data/io.py", "patchgan_fast/evaluation/tables.py", "patchgan_fast/app/cli.py",
                   "patchgan_fast/kernels/patch_score.py"):
        assert module in names, f"{module} missing from the wheel"
    assert any(n.startswith("patchgan_fast/_C") and n.endswith(".so") for n in names), "compiled ops missing"
    assert not any(n.startswith(("kernels/", "tests/", "benchmarks/", "experiments/")) for n in names)
    _install_and_check(wheel, tmp_path, "wheel-env")


def test_the_source_distribution_builds_installs_and_runs(tmp_path):
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=ROOT)
    [sdist] = tmp_path.glob("patchgan_fast-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for source in ("csrc/masks.cpp", "csrc/masks.h", "csrc/masks_hash.h", "csrc/cpu/masks_cpu.cpp",
                   "csrc/cuda/masks_cuda.cu", "kernels/patch_score.py", "setup.py", "pyproject.toml"):
        assert source in names, f"{source} missing from the source distribution"
    _install_and_check(sdist, tmp_path, "sdist-env")
