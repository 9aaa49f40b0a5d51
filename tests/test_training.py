"""Training, model files, checkpoints and resume, and distributed training (CPU, small)."""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import SMALL, blobs, torchrun_cpu_env
from sklearn.metrics import roc_auc_score

from patchgan_fast import PatchGAN, TrainConfig, score_batch
from patchgan_fast import ops
from patchgan_fast.models import schedule as S
from patchgan_fast.models import training as T

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained():
    return PatchGAN.fit(blobs(160), TrainConfig(steps=60, val_every=20, **SMALL))


def test_training_lowers_the_loss_and_detects_obvious_anomalies(trained):
    first, last = trained.history[0], trained.history[-1]
    assert last["rec"] < 0.3 * first["rec"]
    assert all(torch.isfinite(torch.tensor([h["rec"], h["adv"], h["d"]])).all() for h in trained.history)
    normal = score_batch(trained, blobs(40, seed=5)).scores
    abnormal = score_batch(trained, blobs(40, seed=6, abnormal=True)).scores
    auroc = roc_auc_score([0] * 40 + [1] * 40, torch.cat([normal, abnormal]).numpy())
    assert auroc > 0.9
    stats = trained.score_stats
    assert stats["count"] == 16 and stats["p50"] <= stats["p95"] <= stats["p99"]
    z_normal, z_abnormal = trained.normalize(normal), trained.normalize(abnormal)
    assert abs(float(z_normal.median())) < 2 and float(z_abnormal.median()) > 3


def test_position_weights_come_from_the_validation_images(trained):
    """1.1 m / (m_pos + 0.1 m) per position, from the mean patch errors of the held-out normal images."""
    cfg = trained.score_config
    weights = torch.tensor(cfg.patch_weights, dtype=torch.float64)
    assert weights.shape == (4, 4) and bool((weights > 0).all()) and bool((weights <= 11).all())
    g = torch.Generator().manual_seed(trained.config.seed)  # the validation split of fit()
    val = blobs(160)[torch.randperm(160, generator=g)[:16]]
    m_pos = score_batch(trained, val, dataclasses.replace(cfg, patch_weights=None)).patch_errors.double().mean(0)
    torch.testing.assert_close(weights, 1.1 * m_pos.mean() / (m_pos + 0.1 * m_pos.mean()), rtol=1e-5, atol=1e-6)
    # the score statistics, ranked from the same pass's errors, are those of the fast scores
    scores = score_batch(trained, val).scores.double()
    assert trained.score_stats["mean"] == pytest.approx(float(scores.mean()), rel=1e-5)
    assert trained.score_stats["std"] == pytest.approx(float(scores.std()), rel=1e-4)
    # the scores use them; position_weights=False scores without them
    x = blobs(8, seed=7)
    plain = dataclasses.replace(trained.config, position_weights=False)
    off = PatchGAN.from_state({**trained.state(), "config": plain.to_dict()})
    assert off.score_config.patch_weights is None
    assert not torch.allclose(score_batch(trained, x).scores, score_batch(off, x).scores)


def test_error_scales_come_from_the_validation_images(trained):
    """The spread of each measure's unweighted scores; a model scoring with 'mse+msgms' takes its position
    weights and score statistics from the scaled sum."""
    g = torch.Generator().manual_seed(trained.config.seed)  # the validation split of fit()
    val = blobs(160)[torch.randperm(160, generator=g)[:16]]
    unweighted = dataclasses.replace(trained.score_config, patch_weights=None)
    parts = {}
    for i, error in enumerate(("mse", "msgms")):
        res = score_batch(trained, val, dataclasses.replace(unweighted, error=error))
        parts[error] = res.patch_errors.double()
        assert trained.error_scales[i] == pytest.approx(float(res.scores.double().std()), rel=1e-4)
    both = PatchGAN.from_state({**trained.state(), "config": dataclasses.replace(trained.config, error="mse+msgms").to_dict()})
    T.validation_statistics(both, val, torch.device("cpu"), 5)
    assert both.error_scales == pytest.approx(trained.error_scales, rel=1e-6)
    combined = parts["mse"] / both.error_scales[0] + parts["msgms"] / both.error_scales[1]
    m_pos = combined.mean(0)
    torch.testing.assert_close(torch.tensor(both.patch_weights, dtype=torch.float64),
                               1.1 * m_pos.mean() / (m_pos + 0.1 * m_pos.mean()), rtol=1e-5, atol=1e-6)
    scores = score_batch(both, val).scores.double()
    assert both.score_stats["mean"] == pytest.approx(float(scores.mean()), rel=1e-5)
    assert both.score_config.error_scales == both.error_scales


def test_gradients_reach_both_networks():
    model = PatchGAN(TrainConfig(**SMALL), 1, (0.5,), (0.25,))
    x = blobs(4)
    z, target = T._masked_inputs(x, torch.arange(4), model, step=0)
    recon = model.reconstructor(z)
    loss_d = T._bce(model.discriminator(torch.cat([target, recon.detach()])), True)
    loss_r = torch.nn.functional.mse_loss(recon, target) + T._bce(model.discriminator(recon), True)
    (loss_d + loss_r).backward()
    for net in (model.reconstructor, model.discriminator):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_training_masks_mix_boxes_and_the_scoring_layout():
    model = PatchGAN(TrainConfig(**SMALL), 1, (0.0,), (1.0,))
    x = torch.full((8, 1, 32, 32), 255, dtype=torch.uint8)
    z, target = T._masked_inputs(x, torch.arange(8), model, step=3)
    hidden = (z == 0)[:, 0]
    assert torch.equal(target, torch.ones_like(target))
    # odd (key + step) -> one copy of the 2x2 phases: exactly a quarter of the 16 patches hidden
    per_patch = hidden.view(8, 4, 8, 4, 8).all(dim=(2, 4))
    for i in range(8):
        if (i + 3) % 2 == 1:
            assert int(per_patch[i].sum()) == 4 and torch.equal(hidden[i].view(4, 8, 4, 8).any(dim=(1, 3)), per_patch[i])
        else:
            assert 0 < int(hidden[i].sum()) < 32 * 32


@pytest.mark.parametrize("layout", ["phases", "random"])
def test_training_masks_are_the_scoring_copies(layout):
    # each image's layout half is exactly copy (key + step) % K of mask_images, its box half the boxes copy
    model = PatchGAN(TrainConfig(**{**SMALL, "layout": layout}), 1, (0.5,), (0.25,))
    x, keys, step = blobs(8), torch.arange(10, 18), 5
    z, target = T._masked_inputs(x, keys, model, step)
    cfg, seed = model.config, T._mask_seed(model.config, step)
    norm = dict(mean=model.mean, std=model.std)
    copies = ops.mask_images(x, keys, layout=layout, patch_size=cfg.patch_size, num_copies=cfg.num_copies, seed=seed,
                             **norm)
    boxes = ops.mask_images(x, keys, layout="boxes", num_copies=1, seed=seed, box_count=cfg.boxes[0],
                            box_size=cfg.boxes[1], **norm)[0]
    for i, key in enumerate(keys.tolist()):
        expected = copies[(key + step) % cfg.num_copies, i] if (key + step) % 2 else boxes[i]
        assert torch.equal(z[i], expected)
    assert torch.equal(target, ops.mask_images(x, keys, layout="none", num_copies=1, **norm)[0])


@pytest.mark.cuda
def test_bf16_autocast_losses_are_finite_on_gpu():
    model = PatchGAN.fit(blobs(64), TrainConfig(steps=5, val_fraction=0, **{**SMALL, "device": "cuda"}))
    assert all(torch.isfinite(torch.tensor([h["rec"], h["adv"], h["d"]])).all() for h in model.history)
    assert next(model.parameters()).is_cuda
    assert torch.isfinite(score_batch(model, blobs(8).cuda()).scores).all()


def test_save_load_gives_identical_scores(trained, tmp_path):
    path = tmp_path / "m.pgf"
    trained.save(path)
    loaded = PatchGAN.load(path)
    x = blobs(12, seed=9)
    assert torch.equal(score_batch(trained, x).scores, score_batch(loaded, x).scores)
    assert loaded.config == trained.config and loaded.score_stats == trained.score_stats
    assert loaded.patch_weights == trained.patch_weights and loaded.score_config == trained.score_config
    assert loaded.error_scales == trained.error_scales is not None
    assert loaded.mean == trained.mean and loaded.std == trained.std
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file of the atomic write was left behind"


def test_corrupt_truncated_foreign_and_newer_files_raise(trained, tmp_path):
    good = tmp_path / "m.pgf"
    trained.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.pgf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"'.*trunc.pgf' is not a readable patchgan_fast model file \(corrupt, truncated"):
        PatchGAN.load(tmp_path / "trunc.pgf")
    (tmp_path / "junk.pgf").write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match=r"not a readable patchgan_fast model file"):
        PatchGAN.load(tmp_path / "junk.pgf")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"is not a patchgan_fast model file \(no 'patchgan_fast.PatchGAN' header\)"):
        PatchGAN.load(tmp_path / "other.pt")
    state = trained.state()
    state["format_version"] = 99
    torch.save(state, tmp_path / "new.pgf")
    with pytest.raises(ValueError, match=r"has model format 99.*reads formats up to 2: upgrade patchgan_fast"):
        PatchGAN.load(tmp_path / "new.pgf")
    old = {k: v for k, v in trained.state().items() if k not in ("feature_bank", "neighbour_scales")}
    torch.save({**old, "format_version": 1}, tmp_path / "old.pgf")  # as written before feature banks
    loaded = PatchGAN.load(tmp_path / "old.pgf")
    assert loaded.feature_bank is None and loaded.score_config.neighbour_scales is None
    with pytest.raises(FileNotFoundError, match=r"model file '.*missing.pgf' does not exist"):
        PatchGAN.load(tmp_path / "missing.pgf")


_TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from helpers import blobs
    from patchgan_fast import TrainConfig
    from patchgan_fast.models import train
    cfg = TrainConfig(steps={steps}, checkpoint_every=5, val_every=20, checkpoint_dir={ckpt!r}, **{small!r})
    train(blobs(160), cfg, {out!r}, resume=True)
""")


def _script(tmp_path, steps, name):
    script = tmp_path / f"{name}.py"
    script.write_text(_TRAIN_SCRIPT.format(tests=str(ROOT / "tests"), steps=steps, ckpt=str(tmp_path / name),
                                           small=SMALL, out=str(tmp_path / f"{name}.pgf")))
    return script


def _wait_for(path: Path, proc: subprocess.Popen, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"training exited early: {proc.communicate()}"
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.02)


def test_killed_run_resumes_to_the_same_model(tmp_path):
    steps = 120
    ref = subprocess.run([sys.executable, _script(tmp_path, steps, "ref")], capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen([sys.executable, _script(tmp_path, steps, "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = tmp_path / "run" / T.CHECKPOINT
    _wait_for(ckpt, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run.pgf").exists(), "the run finished before it was killed; the test proves nothing"
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < killed_at < steps
    resumed = subprocess.run([sys.executable, _script(tmp_path, steps, "run")], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = PatchGAN.load(tmp_path / "ref.pgf"), PatchGAN.load(tmp_path / "run.pgf")
    assert torch.load(ckpt, weights_only=True)["step"] == steps
    for (k, va), vb in zip(a.reconstructor.state_dict().items(), b.reconstructor.state_dict().values()):
        torch.testing.assert_close(va, vb, atol=1e-6, rtol=1e-5, msg=f"{k} differs after resume")
    x = blobs(8, seed=3)
    torch.testing.assert_close(score_batch(a, x).scores, score_batch(b, x).scores, atol=1e-6, rtol=1e-5)


def test_sigterm_writes_a_checkpoint_before_stopping(tmp_path):
    proc = subprocess.Popen([sys.executable, _script(tmp_path, 100_000, "term")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = tmp_path / "term" / T.CHECKPOINT
    _wait_for(ckpt, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    match = re.search(rb"stopped by signal 15 at step (\d+)", err)
    assert match, err[-2000:]
    assert torch.load(ckpt, weights_only=True)["step"] == int(match.group(1)) > 0  # written at the stop itself


def test_resume_refuses_a_different_schedule(tmp_path):
    cfg = TrainConfig(steps=10, checkpoint_every=5, checkpoint_dir=str(tmp_path), val_fraction=0, **SMALL)
    PatchGAN.fit(blobs(32), cfg)
    other = TrainConfig(steps=10, checkpoint_every=5, checkpoint_dir=str(tmp_path), val_fraction=0, **{**SMALL, "lr": 1e-4})
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint.pt': the config differs in lr \(0.002 -> 0.0001\)"):
        PatchGAN.fit(blobs(32), other, resume=True)


def test_ranks_read_disjoint_shards_of_each_global_batch():
    order = S.Order(torch.arange(100), seed=0)
    for step in (0, 7):
        parts = [order.take(S.positions(step, rank, 2, 16)) for rank in (0, 1)]
        assert not set(parts[0].tolist()) & set(parts[1].tolist())
    epoch = torch.cat([order.take(S.positions(s, r, 2, 10)) for s in range(5) for r in (0, 1)])
    assert sorted(epoch.tolist()) == list(range(100))  # one epoch = every training image once


def test_torchrun_two_processes_gloo(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        import torch.distributed as dist
        from helpers import blobs
        from patchgan_fast import TrainConfig
        from patchgan_fast.models import train
        cfg = TrainConfig(steps=6, checkpoint_every=3, val_every=3, checkpoint_dir={str(tmp_path / 'ckpt')!r}, **{SMALL!r})
        model = train(blobs(64), cfg, {str(tmp_path / 'ddp.pgf')!r})
        with open({str(tmp_path)!r} + f"/rank{{dist.get_rank()}}.txt", "w") as f:
            f.write(f"world {{dist.get_world_size()}} steps {{model.history[-1]['step']}}")
        dist.destroy_process_group()
    """))
    env = torchrun_cpu_env(tmp_path)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "world 2 steps 6"
    assert [p.name for p in tmp_path.glob("*.pgf")] == ["ddp.pgf"]
    model = PatchGAN.load(tmp_path / "ddp.pgf")
    assert torch.isfinite(score_batch(model, blobs(4)).scores).all()


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    # the signal reaches rank 1 only; the ranks agree, so rank 0 checkpoints the step where both stopped
    script = tmp_path / "ddp_term.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from helpers import blobs
        from patchgan_fast import TrainConfig
        from patchgan_fast.models import train
        with open({str(tmp_path)!r} + "/pid" + os.environ["RANK"], "w") as f:
            f.write(str(os.getpid()))
        cfg = TrainConfig(steps=100_000, checkpoint_every=20, val_fraction=0, checkpoint_dir={str(tmp_path / 'ckpt')!r},
                          **{SMALL!r})
        train(blobs(64), cfg, {str(tmp_path / 'never.pgf')!r})
    """))
    env = torchrun_cpu_env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    ckpt = tmp_path / "ckpt" / T.CHECKPOINT
    _wait_for(ckpt, proc, timeout=120)
    os.kill(int((tmp_path / "pid1").read_text()), signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    stops = {int(m) for m in re.findall(rb"stopped by signal 15 at step (\d+)", err)}
    assert len(stops) == 1, err[-3000:]  # both ranks, one step
    assert len(re.findall(rb"stopped by signal 15 at step", err)) >= 2, err[-3000:]
    assert torch.load(ckpt, weights_only=True)["step"] == stops.pop() > 0
    assert not (tmp_path / "never.pgf").exists()


def test_grouped_validation_split_holds_out_whole_groups():
    config = TrainConfig(**SMALL, val_fraction=0.2, seed=3)
    groups = [f"s{i % 7}" for i in range(70)]  # seven subjects of ten images
    val, train = S.validation_split(70, config, groups)
    held = {groups[i] for i in val.tolist()}
    assert len(held) == 2 and len(val) == 20 and sorted(val.tolist() + train.tolist()) == list(range(70))
    assert held.isdisjoint(groups[i] for i in train.tolist())
    again, _ = S.validation_split(70, config, torch.tensor([i % 7 for i in range(70)]))  # a tensor of labels too
    assert len(again) == 20 and len({i % 7 for i in again.tolist()}) == 2
    assert len(S.validation_split(70, dataclasses.replace(config, val_fraction=0.9), groups)[1]) == 10  # one trains
    assert len(S.validation_split(70, dataclasses.replace(config, val_fraction=0.0), groups)[0]) == 0
    with pytest.raises(ValueError, match=r"expected one group label per image \(70\), got 69"):
        S.validation_split(70, config, groups[:69])
    with pytest.raises(ValueError, match=r"expected at least two groups .* got 1"):
        S.validation_split(70, config, ["a"] * 70)


def test_fit_with_groups_takes_its_statistics_from_the_held_out_groups():
    images, config = blobs(48), TrainConfig(steps=4, **SMALL)
    groups = [i // 8 for i in range(48)]  # six subjects
    model = PatchGAN.fit(images, config, groups=groups)
    val, _ = S.validation_split(48, config, groups)
    assert model.score_stats["count"] == len(val) == 8
    scores = score_batch(model, images[val]).scores.double()
    assert model.score_stats["mean"] == pytest.approx(float(scores.mean()), rel=1e-5)


def test_training_input_errors():
    with pytest.raises(ValueError, match=r"training images are 16x16 but the config.s image_size is 32"):
        PatchGAN.fit(blobs(8, size=16), TrainConfig(**SMALL))
    with pytest.raises(ValueError, match=r"image_size 40 must be a multiple of patch_size 8 and of the network stride 2\*\*depth = 16"):
        TrainConfig(image_size=40, patch_size=8, depth=4)
    with pytest.raises(ValueError, match=r"unknown loss preset 'gan'; expected one of paper, default, reconstruction"):
        TrainConfig(loss="gan")
    with pytest.raises(TypeError, match=r"expected training images as a Tensor \[N, C, H, W\] or a map-style Dataset, got int"):
        PatchGAN.fit(3, TrainConfig(**SMALL))


def test_paper_loss_preset():
    assert TrainConfig(loss="paper").loss_weights == (0.2, 1.0)
    assert TrainConfig(loss="paper", adv_weight=0.5).loss_weights == (0.2, 0.5)


class _ImageFolderLike(torch.utils.data.Dataset):
    """A map-style dataset yielding (image [C, H, W], label) like torchvision's folders."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0


def test_datasets_in_workers_train_exactly_like_tensors():
    """Same seed, same schedule: a dataset decoded in 2 DataLoader workers gives the same model as a
    tensor (and so a run is deterministic given its seed on a CPU)."""
    data = blobs(48)
    cfg = TrainConfig(steps=8, val_fraction=0.25, val_every=4, **SMALL)
    a = PatchGAN.fit(data, cfg)
    b = PatchGAN.fit(_ImageFolderLike(data), TrainConfig(**{**cfg.to_dict(), "num_workers": 2}))
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(va, vb)
    assert a.score_stats == b.score_stats


@pytest.mark.parametrize("size,patch,depth", [(64, 8, 3), (128, 16, 4), (256, 32, 5)])
def test_size_presets_build_models_that_fit_the_size(size, patch, depth):
    cfg = TrainConfig.for_image_size(size, width=4, progress=False)
    assert (cfg.patch_size, cfg.depth) == (patch, depth)
    model = PatchGAN(cfg, 3, (0.5,) * 3, (0.25,) * 3)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, size, size)).shape == (1, 3, size, size)
        assert score_batch(model, torch.zeros(2, 3, size, size, dtype=torch.uint8)).patch_errors.shape == (2, 8, 8)


def test_more_local_ranks_than_gpus_is_a_clear_error(monkeypatch):
    from patchgan_fast.runtime import local_cuda_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert local_cuda_device() == torch.device("cuda", 0)
    assert current == [torch.device("cuda", 0)]  # the rank's GPU is made current (NCCL, Triton launch there)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK is 1 but this machine has 1 GPU\(s\): start at most 1"):
        local_cuda_device()


def test_resume_refuses_other_held_out_images(tmp_path):
    """A run validated on other subjects (other groups) cannot continue another run's checkpoint: its validation
    error, model selection and score statistics would mix two held-out sets."""
    cfg = TrainConfig(steps=4, checkpoint_every=2, checkpoint_dir=str(tmp_path), val_fraction=0.25, **SMALL)
    images, subjects = blobs(32), torch.arange(32) // 4
    PatchGAN.fit(images, cfg, groups=subjects)
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint.pt': its run held out other validation "
                                         r"images \(8\) than this one does \(8\); the data or the groups"):
        PatchGAN.fit(images, cfg, groups=(torch.arange(32) + 2) // 4, resume=True)
    assert PatchGAN.fit(images, cfg, groups=subjects, resume=True).history  # the same groups resume
