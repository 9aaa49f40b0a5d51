"""The --quick benchmark produces the tables, the plots and the JSON (on small files made here)."""

import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image
from helpers import write_brain_templates, write_fashion_mnist

from patchgan_fast.evaluation import baselines
from patchgan_fast.evaluation import tables as benchmark
from patchgan_fast.cli import main
from patchgan_fast.models import TrainConfig, training

nib = pytest.importorskip("nibabel")


def test_quick_fashion_mnist_benchmark(tmp_path):
    write_fashion_mnist(tmp_path, 200, 100)
    out = tmp_path / "out"
    assert main(["benchmark", "fashion-mnist", "--quick", "--steps", "4", "--data", str(tmp_path), "--out", str(out),
                 "--methods", "patchgan,ae,ocsvm"]) == 0
    table = (out / "table.md").read_text()
    assert "## Table 1" in table and "| patchgan |" in table and "| ocsvm |" in table and "ranking off" in table
    default = "patchgan (msgms error, loss default, ranking paper, position weights)"
    assert default in table
    assert "patchgan, multi-scale scoring (patches 16+8+4)" in table and "patchgan + nearest-neighbour discriminator features (k = 5)" in table
    assert "patchgan + nearest-neighbour patches features (k = 40)" in table
    assert "patchgan, mse+msgms error, no position weights" in table and "patchgan, mse error, no position weights" in table
    records = json.loads((out / "results.json").read_text())
    means = [r for r in records if r["metric"] == "mean_image_auroc"]
    assert {r["config"]["method"] for r in means if "variant" not in r["config"]} == {"patchgan", "ae", "ocsvm"}
    assert all(r["versions"]["torch"] and r["command"] and r["device"] for r in records)
    assert all((r["seed"], r["steps"], r["quick"]) == (0, 4, True) for r in records)
    assert all(0 <= r["value"] <= 1 for r in records if r["unit"] == "ratio")
    assert {r["config"]["method"] for r in records if r["metric"] == "train_and_score_seconds"} == {"patchgan", "ae", "ocsvm"}
    # every Table 2 row is in the JSON too: per class and its mean, with the figure the table prints
    variants = {r["config"]["variant"]: r["value"] for r in means if "variant" in r["config"]}
    assert len(variants) == 10 and f"| patchgan, ranking off (sum) | {100 * variants['patchgan, ranking off (sum)']:.1f} |" in table
    assert variants[default] == next(r["value"] for r in means if r["config"]["method"] == "patchgan" and "variant" not in r["config"])
    assert len([r for r in records if r["metric"] == "image_auroc" and "variant" in r["config"]]) == 10 * 2
    assert (out / "roc.png").stat().st_size > 0
    with Image.open(out / "scores.png") as fig3:  # one panel per method and the Patch-GAN without ranking, in a row
        assert fig3.size == (4 * 432, 384)


def test_quick_unregistered_brain_mri_benchmark(tmp_path):
    z, y, x = np.mgrid[0:40, 0:48, 0:40]
    brain = ((x - 20) / 16) ** 2 + ((y - 24) / 20) ** 2 + ((z - 20) / 18) ** 2 < 1
    vol = np.where(brain, 60 + 40 * np.sin(x / 3.0) * np.cos(y / 4.0), 0)
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0).astype(np.float32), np.eye(4)), tmp_path / "ch2bet.nii.gz")
    out = tmp_path / "out"
    assert main(["benchmark", "brain-mri-unregistered", "--quick", "--steps", "4", "--size", "32", "--data",
                 str(tmp_path), "--out", str(out), "--methods", "patchgan,threshold,fanogan"]) == 0
    table = (out / "table.md").read_text()
    assert "pixel AUROC" in table and "| threshold |" in table
    assert "patchgan (mse error, loss reconstruction, ranking paper, position weights)" in table and "msgms error, no position weights" in table
    records = json.loads((out / "results.json").read_text())
    metrics = {(r["metric"], r["config"]["method"]) for r in records}
    assert ("pixel_auroc", "patchgan") in metrics and ("image_auroc", "threshold") in metrics
    assert ("pixel_auroc", "fanogan") in metrics and ("pixel_auroc_brain", "patchgan") in metrics
    ablation = {r["config"]["variant"]: r["value"] for r in records if "variant" in r["config"]}
    assert f"| patchgan, no position weights | {ablation['patchgan, no position weights']:.3f} |" in table


def test_quick_brain_mri_benchmark(tmp_path):
    """The registered brain-mri data set (synthetic templates here): results per lesion kind and size in mm,
    pixel AUPRC and best Dice per kind, and the two difficulty bounds that train nothing."""
    write_brain_templates(tmp_path)
    out = tmp_path / "out"
    assert main(["benchmark", "brain-mri", "--quick", "--steps", "3", "--size", "32", "--data", str(tmp_path),
                 "--out", str(out), "--methods", "patchgan,ae"]) == 0
    table = (out / "table.md").read_text()
    assert "registered subjects with lesions modelled on pathology" in table
    for column in ("best Dice", "AUROC tumour", "AUROC ms", "AUROC infarct", "AUROC small", "AUROC 3-7 mm"):
        assert column in table
    assert "| bound: intensity threshold |" in table and "| bound: atlas residual (position known) |" in table
    assert "| patchgan | tumour |" in table  # the per-kind pixel table
    records = json.loads((out / "results.json").read_text())
    kinds = {r["config"].get("kind") for r in records if r["metric"] == "pixel_best_dice"}
    assert kinds >= {"tumour", "ms", "infarct", "small"}
    assert any(r["metric"] == "image_auroc_tumour" and r["config"]["method"] == "patchgan" for r in records)
    # the benchmark's Patch-GAN has the patches bank: its Table 2 row of that space is its own score, not redone
    own = next(r["value"] for r in records if r["metric"] == "image_auroc" and r["config"]["method"] == "patchgan"
               and "variant" not in r["config"] and "kind" not in r["config"])
    ablation = {r["config"]["variant"]: r["value"] for r in records if "variant" in r["config"]}
    assert ablation["patchgan + nearest-neighbour patches features (k = 40)"] == own


def test_perceptual_ae_takes_an_exported_network(tmp_path, capsys):
    write_fashion_mnist(tmp_path, 60, 40, seed=2)
    net = tmp_path / "features.pt2"
    features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    dynamic = ({0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO},)
    torch.export.save(torch.export.export(features, (torch.randn(2, 3, 64, 64),), dynamic_shapes=dynamic), net)
    out = tmp_path / "out"
    args = ["benchmark", "fashion-mnist", "--quick", "--classes", "3", "--steps", "2", "--data", str(tmp_path),
            "--out", str(out), "--methods", "perceptual_ae"]
    assert main(args + ["--perceptual-net", str(net)]) == 0
    assert "perceptual_ae features: the network given with --perceptual-net" in (out / "table.md").read_text()
    assert main(args) == 0
    assert "random-init VGG-style stand-in" in (out / "table.md").read_text()
    capsys.readouterr()
    assert main(args + ["--perceptual-net", str(tmp_path / "train-images-idx3-ubyte.gz")]) == 2
    assert "expected a .pt2 file written by torch.export.save" in capsys.readouterr().err
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    assert main(args + ["--perceptual-net", str(tmp_path / "junk.pt2")]) == 2
    assert "is not a readable torch.export program" in capsys.readouterr().err


def test_unknown_method_or_dataset(tmp_path, capsys):
    assert main(["benchmark", "brain-mri", "--methods", "patchgan,svdd", "--out", str(tmp_path)]) == 2
    assert "unknown method 'svdd'; expected one of patchgan, ae, alocc, fanogan, perceptual_ae, ocsvm, threshold" in capsys.readouterr().err


def test_full_run_adds_the_ablations(tmp_path):
    write_fashion_mnist(tmp_path, 60, 40, seed=1)
    out = tmp_path / "out"
    assert main(["benchmark", "fashion-mnist", "--classes", "2", "--steps", "2", "--data", str(tmp_path),
                 "--out", str(out), "--methods", "patchgan"]) == 0
    table = (out / "table.md").read_text()
    for variant in ("loss paper", "loss reconstruction", "no masks at scoring", "random layout K = 4",
                    "half-size patches", "ranking off", "no position weights", "mse error, no position weights"):
        assert variant in table
    assert "loss default (" not in table  # fashion-mnist's own preset: the default row, not trained twice
    assert "phases K = 9" not in table  # 32x32 images in 16x16 patches have 4 patches, too few for K = 9


def _figures(folder) -> dict:
    """Every ratio a benchmark in ``folder`` recorded, by metric, class, method and variant."""
    return {(r["metric"], r["config"].get("class"), r["config"]["method"], r["config"].get("variant")): r["value"]
            for r in json.loads((folder / "results.json").read_text()) if r["unit"] == "ratio"}


def test_jobs_train_side_by_side_with_the_same_results(tmp_path):
    write_fashion_mnist(tmp_path, 60, 40, seed=3)
    tables = []
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}"
        assert main(["benchmark", "fashion-mnist", "--quick", "--classes", "1,4", "--steps", "3", "--data", str(tmp_path),
                     "--out", str(out), "--methods", "patchgan,ae", "--jobs", jobs]) == 0
        tables.append(_figures(out))
    assert len(tables[0]) == 6 + 3 * 5 and tables[0] == tables[1]  # Table 1, and Table 2's 5 rows per class and mean
    # (no multi-scale or nearest-neighbour row: 6 training images per class hold out 1, too few to normalize by)


def test_a_stopped_pool_worker_exits_quietly(monkeypatch):
    def stopped(job, partial):  # a worker's training stopped by the pool's terminate (SIGTERM) or by Ctrl-C
        raise KeyboardInterrupt("stopped by signal 15 at step 3")

    monkeypatch.setattr(benchmark, "_train_and_score", stopped)
    with pytest.raises(SystemExit) as e:  # multiprocessing prints no traceback for SystemExit
        benchmark._indexed((0, ("patchgan",), None))
    assert e.value.code == 130


def test_a_pool_worker_turns_sigterm_into_an_interrupt_that_training_loops_checkpoint_on():
    old = signal.getsignal(signal.SIGTERM)
    try:
        benchmark._worker_start()
        with pytest.raises(KeyboardInterrupt, match="stopped by signal 15"):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 1)  # (the handler runs here at the latest)
    finally:
        signal.signal(signal.SIGTERM, old)


def test_an_interrupted_run_resumes_without_training_finished_models_again(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path, 60, 40, seed=4)
    args = ["benchmark", "fashion-mnist", "--quick", "--classes", "1,4", "--steps", "3", "--data", str(tmp_path),
            "--methods", "patchgan,ocsvm", "--out"]
    assert main(args + [str(tmp_path / "whole")]) == 0
    real, calls = benchmark._train_and_score, []

    def interrupted_at_the_third(job, partial=None):  # by SIGTERM (as `timeout` or a scheduler stops a run), which
        if len(calls) == 2:  # Ctrl-C shares
            os.kill(os.getpid(), signal.SIGTERM)
        calls.append(job[0])
        return real(job, partial)

    monkeypatch.setattr(benchmark, "_train_and_score", interrupted_at_the_third)
    out = tmp_path / "out"
    assert main(args + [str(out)]) == 130
    assert len(list((out / "jobs").glob("*.pt"))) == 2 and not list((out / "jobs").glob("*.tmp"))

    def counted(job, partial=None):
        calls.append(job[0])
        return real(job, partial)

    monkeypatch.setattr(benchmark, "_train_and_score", counted)
    calls.clear()
    assert main(args + [str(out), "--resume"]) == 0
    assert calls == ["patchgan", "ocsvm"]  # class 4's jobs only
    assert "2 trained model(s) reused from" in (out / "table.md").read_text()

    assert len(_figures(out)) == 6 + 3 * 5 and _figures(out) == _figures(tmp_path / "whole")
    calls.clear()  # without --resume everything trains again
    assert main(args[:-2] + ["ocsvm", "--out", str(out)]) == 0 and calls == ["ocsvm", "ocsvm"]
    calls.clear()  # other images under the same name are new data: nothing is reused
    write_fashion_mnist(tmp_path, 60, 40, seed=5)
    assert main(args + [str(out), "--resume"]) == 0 and len(calls) == 4


def test_a_model_stopped_mid_training_goes_on_from_its_checkpoint_on_resume(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path, 60, 40, seed=4)
    args = ["benchmark", "fashion-mnist", "--quick", "--classes", "1", "--steps", "3", "--data", str(tmp_path),
            "--methods", "patchgan,fanogan", "--out"]
    assert main(args + [str(tmp_path / "whole")]) == 0
    out, jobs = tmp_path / "out", tmp_path / "out" / "jobs"
    real_step, real_done, steps = training.train_step, baselines._Resumable.step_done, []

    def patchgan_step(*a, **k):  # SIGTERM in the middle of the Patch-GAN's second step
        steps.append(a[-2])
        if len(steps) == 2 and signalling:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*a, **k)

    def fanogan_step(run):  # and of f-AnoGAN's second generator step
        if run.done == 1 and signalling:
            os.kill(os.getpid(), signal.SIGTERM)
        real_done(run)

    monkeypatch.setattr(training, "train_step", patchgan_step)
    monkeypatch.setattr(baselines._Resumable, "step_done", fanogan_step)
    signalling = True
    assert main(args + [str(out)]) == 130  # stopped in the Patch-GAN's training: its checkpoint is kept
    assert {p.name for p in jobs.glob("*.partial/*")} == {training.CHECKPOINT, benchmark._CLOCK}
    assert not list(jobs.glob("*.pt"))
    steps.clear()
    assert main(args + [str(out), "--resume"]) == 130  # the Patch-GAN goes on (its third step), then f-AnoGAN stops
    assert steps[0] == 2 and len(list(jobs.glob("*.pt"))) == 1
    assert {p.name for p in jobs.glob("*.partial/*")} == {baselines.CHECKPOINT, benchmark._CLOCK}
    (clock,) = jobs.glob(f"*.partial/{benchmark._CLOCK}")
    clock.write_text('{"seconds": 5000.0}')  # as though its stopped runs had taken that long
    signalling = False
    steps.clear()
    assert main(args + [str(out), "--resume"]) == 0 and steps == []  # the Patch-GAN is not trained again
    assert not list(jobs.glob("*.partial")) and len(list(jobs.glob("*.pt"))) == 2
    # a resumed job's time counts its stopped runs
    seconds = {r["config"]["method"]: r["value"] for r in json.loads((out / "results.json").read_text())
               if r["metric"] == "train_and_score_seconds"}
    assert seconds["fanogan"] > 5000 > seconds["patchgan"]
    # Fashion-MNIST has no pixel truth: no job keeps maps (f-AnoGAN's would be 4 KB per test image)
    assert all(torch.load(f, weights_only=True)["maps"] is None for f in jobs.glob("*.pt"))

    assert _figures(out) == _figures(tmp_path / "whole")  # as though never stopped


def test_a_jobs_clock_is_on_disk_while_it_runs(tmp_path):
    folder = tmp_path / "job.partial"
    with benchmark._Clock(str(folder), every=0.02) as clock:
        time.sleep(0.3)
        written = json.loads((folder / benchmark._CLOCK).read_text())["seconds"]  # what a kill now would leave
        assert 0.02 <= written <= clock.seconds()
    assert benchmark._Clock(str(folder)).before >= written  # the next run counts from there
    (folder / benchmark._CLOCK).write_text('{"seco')  # torn by a kill mid-write: counts from zero
    assert benchmark._Clock(str(folder)).before == 0.0
    with pytest.raises(KeyboardInterrupt), benchmark._Clock(str(tmp_path / "other"), every=60) as clock:
        raise KeyboardInterrupt  # stopped before its first tick: written as it stops
    assert benchmark._Clock(str(tmp_path / "other")).before == pytest.approx(clock.seconds(), abs=0.05)


def test_a_finished_model_is_reused_when_only_settings_it_does_not_use_change():
    def key(name, **changes):
        config = TrainConfig(**{"image_size": 32, "patch_size": 8, "steps": 5, **changes})
        return benchmark._job_key((name, config, {}, None, None, 0, False, True, None, None), "data")

    assert key("patchgan") != key("patchgan", neighbours="patches")  # the Patch-GAN scores with its bank
    assert key("ae") == key("ae", neighbours="patches", ranking="none")  # the AE has neither
    assert key("ae") != key("ae", steps=6) and key("fanogan") != key("fanogan", width=8)
    assert key("ocsvm") == key("ocsvm", steps=6, width=8) != key("ocsvm", seed=1)  # raw pixels: only its sample's seed
    assert key("threshold") == key("threshold", seed=1)
