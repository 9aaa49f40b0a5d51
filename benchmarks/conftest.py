"""Shared fixtures of the benchmarks: device, measured copy bandwidth, and the results recorder.

    pytest benchmarks --benchmark-only                       # print the comparison tables
    pytest benchmarks --benchmark-only --record h100-scoring # also write benchmarks/results/h100-scoring.{json,md}

GPU figures mean something in absolute terms; on a CPU only ratios measured in the same run do.
"""

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import pytest
import torch

import patchgan_fast

# benchmarks/results, or PATCHGAN_FAST_RESULTS (a dry run's scratch folder); with OUT set (a device machine),
# every results file is also written there as it is measured
RESULTS = Path(os.environ.get("PATCHGAN_FAST_RESULTS") or Path(__file__).parent / "results")
_records: list[dict] = []


def pytest_addoption(parser):
    parser.addoption("--record", default=None, help="write the figures to benchmarks/results/NAME.json and NAME.md")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def versions() -> dict:
    info = patchgan_fast.backend_info()
    return {"torch": info["torch"], "triton": info["triton"], "cuda": torch.version.cuda,
            "patchgan_fast": patchgan_fast.__version__, "extension": info["extension"], "python": platform.python_version()}


def calls_per_round(device: torch.device) -> int:
    """GPU rounds run several calls and synchronize once, so that launch latency and the final
    synchronization are amortized; every implementation of a case gets the same count, so the rows
    of a pytest-benchmark table compare directly."""
    return 20 if device.type == "cuda" else 1


def _round(fn, device, n):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run():
        for _ in range(n):
            fn()
        sync()

    return run


def measure(benchmark, fn, device):
    """Benchmarks fn; returns the median seconds per call (None under --benchmark-disable)."""
    n = calls_per_round(device)
    benchmark.extra_info["calls_per_round"] = n
    rounds = 20 if device.type == "cuda" else 5
    benchmark.pedantic(_round(fn, device, n), rounds=rounds, iterations=1, warmup_rounds=2)
    if benchmark.stats is None:
        return None
    return benchmark.stats.stats.median / n


@pytest.fixture(scope="session")
def copy_bandwidth(device):
    """Measured device-to-device copy bandwidth in bytes/s (read + write), per buffer size."""
    cache = {}

    def bandwidth(nbytes: int) -> float:
        nbytes = max(int(nbytes), 1 << 20)
        if nbytes not in cache:
            src = torch.empty(nbytes, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            n = 10 * calls_per_round(device)
            run = _round(lambda: dst.copy_(src), device, n)
            run()
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                run()
                best = min(best, (time.perf_counter() - t0) / n)
            cache[nbytes] = 2 * nbytes / best
        return cache[nbytes]

    return bandwidth


@pytest.fixture
def record(request, device):
    """record(metric, value, unit, config): adds one figure to the results of this run."""

    name = request.config.getoption("--record")

    def add(metric: str, value: float, unit: str, config: dict):
        _records.append({
            "metric": metric, "value": value, "unit": unit, "config": config, "device": device_name(device),
            "versions": versions(), "command": " ".join(["pytest", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "test": request.node.nodeid,
        })
        if name:  # written at every figure: a run stopped by a time limit keeps what it measured
            write_results(name, _records)

    return add


def write_results(name: str, records: list[dict]) -> None:
    """Writes the records to benchmarks/results/NAME.json and a table to NAME.md."""
    folders = [RESULTS, *([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n")
    first = records[0]
    lines = [f"# {name}", "", f"Command: `{first['command']}`  ", f"Device: {first['device']}  ",
             f"Versions: {json.dumps(first['versions'])}  ", f"Date: {first['date']}", "",
             "| metric | config | value | unit |", "|---|---|---|---|"]
    for r in records:
        cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items())
        lines.append(f"| {r['metric']} | {cfg} | {r['value']:.4g} | {r['unit']} |")
    for folder in folders:
        (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
