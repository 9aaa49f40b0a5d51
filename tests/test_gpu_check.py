"""`bash scripts/gpu_check.sh --dry-run`: the one GPU command's stages, run on the CPU with tiny sizes, each under
its time limit, every figure written where it belongs (so the GPU run's script is known to work before a GPU
is lent)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["diag", "tests", "kernels", "score-batch", "training", "pipeline", "sweep"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU's rehearsal of the GPU run")
def test_the_gpu_command_runs_every_stage_and_records_its_figures(tmp_path):
    env = {**os.environ, "PATCHGAN_FAST_RESULTS": str(tmp_path), "BUDGET": "400"}
    env.pop("OUT", None)
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stages = (tmp_path / "stages.txt").read_text().splitlines()
    assert [line.split(":")[0].removeprefix("== ") for line in stages] == STAGES
    assert all(": exit 0 after" in line for line in stages), stages
    assert "TORCH_CHECK raised RuntimeError" in (tmp_path / "diag.log").read_text()
    figures = {}
    for part in ("kernels", "score-batch", "training", "pipeline", "pipeline-sweep"):
        records = json.loads((tmp_path / f"dryrun-cpu-{part}.json").read_text())
        assert records and all({"metric", "value", "unit", "config", "device", "versions", "command", "date"} <= set(r)
                               for r in records)
        figures[part] = {r["metric"] for r in records}
    assert {"seconds_per_call", "effective_bandwidth", "fraction_of_copy_bandwidth"} <= figures["kernels"]
    assert "training_images_per_second" in figures["training"]
    assert {"images_per_second", "decode_images_per_second"} <= figures["pipeline-sweep"]
    assert not list((ROOT / "benchmarks" / "results").glob("dryrun-*"))  # a rehearsal records nothing for real


def test_an_unknown_stage_is_refused():
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "kernel"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "unknown stage kernel; expected diag tests kernels" in done.stdout
