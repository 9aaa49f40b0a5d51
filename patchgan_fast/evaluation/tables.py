"""``patchgan-fast benchmark``: every method on a built-in dataset, tables like the paper's, plots,
and a JSON record of every figure.

Table 1: image AUROC per method (Fashion-MNIST: per class of the one-class protocol and the mean;
brain MRI: image AUROC, pixel AUROC (all pixels and brain pixels only), AUPRC, best Dice and image AUROC per
lesion kind and size bin, pixel AUPRC and best Dice per kind, and two bounds that train nothing). Table 2: the
Patch-GAN's ablations (ranking on/off, position weights on/off, the other error measures, multi-scale scoring and the score plus a nearest-neighbour score of its features,
from the same model; outside --quick also the other loss presets, the masking layout, K and the patch
size, see ``ABLATIONS``). Nothing is tuned on test labels: every hyperparameter is fixed below.
``results.json`` holds one record per figure of both tables (``_record``).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import inspect
import json
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..models import TrainConfig
from ..ops import backend_info
from ..runtime import __version__, interrupt
from ..scoring import ERRORS
from ..scoring.neighbours import FEATURE_SPACES, bank_k, box_mean, default_k
from .methods import REGISTRY, get_method, uses_pool
from .metrics import image_metrics, pixel_metrics, plot_distribution_panels, plot_roc

DATASETS = ("fashion-mnist", "brain-mri", "brain-mri-unregistered")
DEFAULT_METHODS = ("patchgan", "ae", "ocsvm", "alocc", "fanogan", "anogan", "perceptual_ae", "sagan")
SETTINGS = ("one-class", "semi-supervised")
#: The row label of a method trained with the unlabelled pool as well (the semi-supervised setting).
POOL_SUFFIX = "+ unlabelled pool"


def default_size(dataset: str, quick: bool) -> int:
    """The slice size of a brain dataset: 128 (1.6 mm pixels; 64 with --quick) for brain-mri, 64 for the
    unregistered variant; Fashion-MNIST's images are 32."""
    return {"brain-mri": 64 if quick else 128, "brain-mri-unregistered": 64}.get(dataset, 32)


def _config(dataset: str, quick: bool, steps: Optional[int], seed: int, size: int) -> TrainConfig:
    if dataset == "fashion-mnist":
        # patch 16: each of the K = 4 copies hides a quadrant; +2.1 AUROC points over patch 8 on the four hardest
        # classes (experiments/results/cpu-experiment-scoring-scale.md). The structural error (msgms) beats both the
        # squared error and the two together (mse+msgms) over all ten classes: 89.5 against 86.4 (mse) and 89.4
        # (mse+msgms) at 200 steps, 92.0 against 91.7 (mse+msgms) at 1,000 (cpu-experiment-fmnist-ten-classes.md).
        # On brain MRI the squared error alone is best.
        base = dict(image_size=32, patch_size=16, depth=3, width=32, batch_size=32 if quick else 64, error="msgms")
    else:
        base = dict(image_size=size, patch_size=max(4, size // 8), depth=3, width=16 if quick else 32, skips=True,
                    loss="reconstruction", batch_size=16 if quick else 32)
        if dataset == "brain-mri":
            # registered slices: each patch against the nearest patch near the same place in the 40 most similar
            # training slices, added to eq. 5 (0.54 -> 0.76 image AUROC at the quick setting, the demo's model;
            # experiments/results/cpu-experiment-brain-subjects.md)
            base["neighbours"] = "patches"
    return TrainConfig(**base, steps=steps or (60 if quick else 3000), lr=1e-3, val_every=max(20, (steps or 3000) // 10),
                       seed=seed, progress=False)


def _subset(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(n, k)]


def _record(records, metric, value, unit, config, run):
    """One figure of the run: what was measured (``config``: dataset, class, method and, for Table 2, the
    variant), the run's command, seed, training steps and --quick (``run``), the hardware and the versions."""
    records.append({
        "metric": metric, "value": value, "unit": unit, "config": config, **run,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.machine()})",
        "cpu_count": os.cpu_count(),
        "versions": {"patchgan_fast": __version__, "torch": torch.__version__, "triton": backend_info()["triton"],
                     "python": platform.python_version()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })


_RANKING_OFF = "patchgan, ranking off (sum)"


def summed_evenly(scores: torch.Tensor, eq5: torch.Tensor, scales: tuple[float, float, float, float],
                  weights: tuple[float, float]) -> torch.Tensor:
    """The score of a model with a feature bank had it summed its two terms evenly (weights 1, 1), from its
    ``scores`` (``u * z1 + v * z2``, ``weights = (u, v)``, v > 0) and its eq. 5 alone: ``z1 + z2``, with no second
    search of the bank."""
    (u, v), z1 = weights, (eq5 - scales[0]) / scales[1]
    return z1 + (scores - u * z1) / v


def _default_variant(config: TrainConfig) -> str:
    bank = f" + nearest-neighbour {config.neighbours} (k = {config.neighbour_k})" if config.neighbours else ""
    return f"patchgan ({config.error} error, loss {config.loss}, ranking {config.ranking}, position weights{bank})"


#: Table 2's row of a model with a feature bank scored without it (the ranking, position-weight, error-measure and
#: multi-scale rows are eq. 5 alone too: ``PatchGANMethod.score`` drops the bank's term with any override).
_EQ5_ALONE = "patchgan, eq. 5 alone (no nearest-neighbour term)"

#: Table 2 variants trained besides the default Patch-GAN (full runs only): config overrides, or a
#: function of the config that returns them. A variant that is the default itself (the dataset's own
#: loss preset) or that the image grid cannot hold (K larger than the patch count) is left out.
ABLATIONS = {
    "patchgan, loss paper (0.2 L_R + 1.0 L_adv)": dict(loss="paper"),
    "patchgan, loss default (1.0 L_R + 0.01 L_adv)": dict(loss="default"),
    "patchgan, loss reconstruction (no adversarial term)": dict(loss="reconstruction"),
    "patchgan, no masks at scoring (K = 1)": dict(layout="none", num_copies=1),
    "patchgan, random layout K = 4": dict(layout="random", num_copies=4),
    "patchgan, phases K = 9": dict(layout="phases", num_copies=9),
    "patchgan, half-size patches": lambda config: dict(patch_size=max(1, config.patch_size // 2)),
}


def _ablations(config: TrainConfig) -> dict[str, TrainConfig]:
    out = {}
    for variant, overrides in ABLATIONS.items():
        if callable(overrides):
            overrides = overrides(config)
        cfg = dataclasses.replace(config, **overrides)
        if cfg != config and cfg.num_copies <= (cfg.image_size // cfg.patch_size) ** 2:
            out[variant] = cfg
    return out


def _multiscale_sizes(config: TrainConfig) -> list[int]:
    """The patch sizes of the multi-scale scoring ablation: the model's, half and a quarter of it (those
    that tile the image at least 2 x 2 and leave enough patches for K copies)."""
    sizes = [config.patch_size // d for d in (1, 2, 4)]
    return [p for p in sizes if p >= 2 and config.image_size % p == 0 and config.image_size // p >= 2
            and (config.image_size // p) ** 2 >= config.num_copies]


#: The suffix of a job's training-checkpoint folder in the benchmark's ``jobs/`` (while it trains).
_PARTIAL = ".partial"

#: Bump when the scoring ablations of _train_and_score change: finished jobs saved without them are not reused.
_SCORING_REVISION = 6  # 6: eq. 5 alone beside a feature bank's score


#: A job's seconds so far, in its training-checkpoint folder: a resumed job's time counts its stopped runs.
_CLOCK = "seconds.json"


class _Clock:
    """The seconds one job has run, over the runs an interruption stopped: read from ``folder/_CLOCK`` (when
    given) as it starts, and written back there every ``every`` seconds while it runs and when it stops, so a run
    killed outright loses at most ``every`` seconds of the count."""

    def __init__(self, folder: Optional[str], every: float = 30.0):
        self.path = Path(folder) / _CLOCK if folder else None
        self.every, self.before, self._stop = every, 0.0, threading.Event()
        if self.path is not None and self.path.is_file():
            try:
                self.before = float(json.loads(self.path.read_text())["seconds"])
            except (ValueError, KeyError, TypeError):  # torn by a kill mid-write: count from now
                pass
        self._t0 = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self._t0

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(_CLOCK + ".tmp")
        tmp.write_text(json.dumps({"seconds": self.seconds()}))
        os.replace(tmp, self.path)

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def __enter__(self) -> "_Clock":
        self._t0 = time.perf_counter()
        if self.path is not None:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self.path is None:
            return
        self._stop.set()
        self._thread.join()
        if kind is not None:  # stopped: the next run goes on counting from here
            self._write()


def _train_and_score(job: tuple, partial: Optional[str] = None) -> tuple:
    """Trains one method on ``train_x`` (and the unlabelled ``pool`` when not None) and scores ``test_x``: (scores,
    maps, {variant: scores} of the scoring ablations and of the method's ``score_variants``, (seconds of training
    + scoring, seconds of scoring per test image)). Without ``need_maps`` maps are None (methods whose maps cost
    an extra pass, the Patch-GAN and the AE, skip it; the others' are dropped, not kept in the job cache). A method
    that trains checkpoints its training in the folder ``partial`` (when given) and continues from a checkpoint
    there; the seconds then count the earlier runs of the job that were stopped (:class:`_Clock`). Top-level, so
    that a process pool can run it."""
    with _Clock(partial) as clock:
        scores, maps, extra, per_image = _fit_and_score(job, partial)
    return scores, maps, extra, (clock.seconds(), per_image)


def _fit_and_score(job: tuple, partial: Optional[str]) -> tuple:
    """:func:`_train_and_score` but for the seconds: (scores, maps, extra, seconds of scoring per test image)."""
    name, config, options, train_x, test_x, threads, scoring_ablations, need_maps, pool, groups = job
    if threads:
        torch.set_num_threads(threads)
    if isinstance(options.get("perceptual"), str):
        options = {**options, "perceptual": _load_perceptual(options["perceptual"])}
    m = get_method(name, config, **options)
    extra_fit = {} if pool is None else {"unlabelled": pool}
    takes = inspect.signature(m.fit).parameters
    if groups is not None and "groups" in takes:  # whole subjects validate
        extra_fit["groups"] = groups
    if partial is not None and "checkpoint_dir" in takes:
        extra_fit["checkpoint_dir"] = partial
    m = m.fit(train_x, **extra_fit)
    skip_maps = not need_maps and "maps" in inspect.signature(m.score).parameters
    t1 = time.perf_counter()
    scores, maps = m.score(test_x, **({"maps": False} if skip_maps else {}))
    per_image = (time.perf_counter() - t1) / max(1, len(test_x))
    maps = maps if need_maps else None
    extra = {}
    if scoring_ablations:  # the same model scored other ways (eq. 5 alone when it has a feature bank)
        if m.model.feature_bank is not None:
            extra[_EQ5_ALONE] = eq5 = m.score(test_x, neighbours=False, maps=False)[0]
            u, v = m.model.neighbour_weights
            if (u, v) != (1.0, 1.0) and v > 0:
                extra[f"patchgan, eq. 5 and the nearest-neighbour term summed evenly (the weights it chose: {u:g}, "
                      f"{v:g})"] = summed_evenly(scores, eq5, m.model.neighbour_scales, (u, v))
        extra[_RANKING_OFF] = m.score(test_x, ranking="none", maps=False)[0]
        extra["patchgan, no position weights"] = m.score(test_x, position_weights=False, maps=False)[0]
        # the other error measures, unweighted (the model's position weights were made for its own measure)
        for other in ERRORS:
            if other != config.error:
                extra[f"patchgan, {other} error, no position weights"] = m.score(
                    test_x, position_weights=False, maps=False, error=other)[0]
        if m.held_out is not None and len(m.held_out) >= 2:  # these normalize by the held-out images' spread
            sizes = _multiscale_sizes(config)
            if len(sizes) > 1:
                extra[f"patchgan, multi-scale scoring (patches {'+'.join(map(str, sizes))})"] = m.score_multiscale(
                    test_x, sizes)
            for space in FEATURE_SPACES:
                bank, own = m.model.feature_bank, m.model.config
                same = bank is not None and (own.neighbours, own.neighbour_k) == (space, bank_k(space, None, len(bank)))
                extra[f"patchgan + nearest-neighbour {space} features (k = {default_k(space)})"] = (
                    scores if same else m.score_neighbours(test_x, None, space))  # the model's own: its scores
    if hasattr(m, "score_variants"):  # a method's other ways to score (SAGAN's test-time dropout)
        extra.update(m.score_variants(test_x))
    return scores, maps, extra, per_image


def _worker_start() -> None:
    """A pool worker's start: SIGTERM (the pool's terminate) interrupts it as Ctrl-C does, so that a training loop
    without a handler of its own (SAGAN's) also writes its checkpoint as it stops."""
    signal.signal(signal.SIGTERM, interrupt)


def _indexed(item: tuple[int, tuple, Optional[str]]) -> tuple[int, tuple]:
    """A pool worker's job ``(index, job, partial)``. Stopped by Ctrl-C or by the pool's terminate (SIGTERM,
    which training turns into an interrupt after checkpointing), the worker exits quietly: the main process says
    what was kept."""
    try:
        return item[0], _train_and_score(item[1], item[2])
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _digest(*tensors: Optional[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        h.update(repr((t.dtype, tuple(t.shape))).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _settings(method) -> dict:
    """What a method set up by :func:`get_method` will train and score with: its own config (the benchmark's
    ``TrainConfig`` as the method changed it, e.g. the AE's without masks or a feature bank) and its plain
    hyperparameters. Fields of the benchmark's config that a method does not use are not in it, so that changing
    them (say the Patch-GAN's ``neighbours``) does not train that method again."""
    out = {}
    for k, v in sorted(vars(method).items()):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out[k] = dataclasses.asdict(v)
        elif v is None or isinstance(v, (bool, int, float, str, tuple)):
            out[k] = v
    return out


def _job_key(job: tuple, data: str) -> Optional[str]:
    """What a job's result depends on: the method, the settings it takes from the config and its options
    (:func:`_settings`), the data (``data``, a digest of the group's tensors), the device kind and the versions.
    None where that cannot be told (a feature network passed as a module): such a job is never reused."""
    name, config, options, _, _, _, scoring_ablations, need_maps, pool, groups = job
    perceptual = options.get("perceptual")
    if perceptual is not None and not isinstance(perceptual, str):
        return None
    if isinstance(perceptual, str):  # the file's identity: path, size and modification time
        st = Path(perceptual).stat()
        perceptual = (str(Path(perceptual).resolve()), st.st_size, st.st_mtime_ns)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = _settings(get_method(name, config, **{k: v for k, v in options.items() if k != "perceptual"}))
    key = (__version__, torch.__version__, device, name, settings, perceptual,
           scoring_ablations and _SCORING_REVISION, need_maps, pool is not None, groups is not None, data)
    return hashlib.sha256(repr(key).encode()).hexdigest()[:32]


def _run_methods(
    groups, methods, config, quick: bool, options: dict, jobs: int, seconds: dict, need_maps: bool, cache: Path,
    per_image: Optional[dict] = None
) -> tuple[list[tuple[dict, dict]], int]:
    """Trains and scores every method (and, outside --quick, the Patch-GAN's ablations) on every
    ``(train_x, test_x)`` group, in ``jobs`` processes at once (models this small leave a GPU mostly
    idle, so several train side by side). Returns per group ``({method: (scores, maps)},
    {variant: scores})`` (maps None where they cost an extra pass and ``need_maps`` is off), and how
    many jobs were reused; adds each method's training + scoring time to ``seconds`` and its scoring seconds per
    test image to the list ``per_image[method]``.

    Every finished job's result is written to the folder ``cache`` as soon as it is done, and
    a job whose result is already there (same method, settings it uses, data, device and versions) is not run
    again; a job's training checkpoints in ``cache/KEY.partial/`` until it is done, and a job that finds a
    checkpoint there continues its training from it: an interrupted benchmark, rerun with --resume, goes on
    where it stopped, within a model too."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    work, index = [], []  # index: (group, row label, Table 2 variant or None)
    for g, group in enumerate(groups):
        train_x, test_x, pool, subjects = (*group, None, None)[:4]
        for name in methods:
            work.append((name, config, options.get(name, {}), train_x, test_x, threads, name == "patchgan", need_maps,
                         None, subjects))
            index.append((g, name, None))
            if pool is not None and uses_pool(REGISTRY[name]):
                work.append((name, config, options.get(name, {}), train_x, test_x, threads, False, need_maps, pool,
                             subjects))
                index.append((g, f"{name} {POOL_SUFFIX}", None))
        if "patchgan" in methods and not quick:
            for variant, cfg in _ablations(config).items():
                work.append(("patchgan", cfg, {}, train_x, test_x, threads, False, False, None, subjects))
                index.append((g, "patchgan", variant))
    digests = [_digest(*group) for group in groups]
    keys = [_job_key(w, digests[g]) for w, (g, _, _) in zip(work, index)]
    partials = [None if key is None else str(cache / f"{key}{_PARTIAL}") for key in keys]
    outputs: list = [None] * len(work)
    for i, key in enumerate(keys):
        if key is not None and (cache / f"{key}.pt").is_file():
            saved = torch.load(cache / f"{key}.pt", weights_only=True)
            outputs[i] = (saved["scores"], saved["maps"], saved["extra"], saved["seconds"])
    reused = sum(o is not None for o in outputs)

    def finish(i: int, result: tuple) -> None:
        outputs[i] = result
        if keys[i] is not None:
            cache.mkdir(parents=True, exist_ok=True)
            scores, maps, extra, sec = result
            tmp = cache / f"{keys[i]}.pt.tmp"
            torch.save({"scores": scores, "maps": maps, "extra": extra, "seconds": sec}, tmp)
            os.replace(tmp, cache / f"{keys[i]}.pt")  # whole or absent, even when killed mid-write
            shutil.rmtree(partials[i], ignore_errors=True)  # its training's checkpoint: no longer needed

    pending = [i for i, o in enumerate(outputs) if o is None]
    if jobs > 1 and len(pending) > 1:
        pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_worker_start)
        try:
            for i, result in pool.imap_unordered(_indexed, [(i, work[i], partials[i]) for i in pending]):
                finish(i, result)
            pool.close()
        except BaseException:  # an error or an interrupt: stop the other jobs now (the finished ones are saved)
            pool.terminate()
            raise
        finally:
            pool.join()
    else:
        for i in pending:
            finish(i, _train_and_score(work[i], partials[i]))
    out = [({}, {}) for _ in groups]
    for (g, label, variant), (scores, maps, extra, (sec, cost)) in zip(index, outputs):
        results, ablations = out[g]
        if variant is not None:
            ablations[variant] = scores
            continue
        results[label] = (scores, maps)
        seconds[label] = seconds.get(label, 0.0) + sec
        if per_image is not None:
            per_image.setdefault(label, []).append(cost)
        if label == "patchgan" and extra:  # the Patch-GAN's scoring ablations: Table 2
            ablations[_default_variant(config)] = scores
            ablations.update(extra)
        elif label == f"patchgan {POOL_SUFFIX}":
            ablations[f"patchgan {POOL_SUFFIX} (adversarial term on its reconstructions, weight "
                      f"{config.unlabelled_weight})"] = scores
        else:  # another method's other ways to score: rows of their own
            results.update({f"{label}, {v}": (s, None) for v, s in extra.items()})
    for _, ablations in out:  # the default and its scoring ablations first, then those of ABLATIONS in order
        order = [k for k in ablations if k not in ABLATIONS] + [k for k in ABLATIONS if k in ablations]
        ablations.update({k: ablations.pop(k) for k in order})
    return out, reused


def run(dataset: str, methods: Sequence[str], out: str | Path, *, quick: bool = False, steps: Optional[int] = None,
        classes: Optional[Sequence[int]] = None, seed: int = 0, size: Optional[int] = None, data: Optional[str] = None,
        perceptual: Optional[str | torch.nn.Module] = None, jobs: int = 1, resume: bool = False, command: str = "",
        setting: str = "one-class", anomaly_ratio: float = 0.6) -> dict:
    """Runs the benchmark and writes table.md, results.json, roc.png and scores.png to ``out``.

    Each trained model's scores go to ``out/jobs/`` as soon as it is done, and its training checkpoints there
    until then; with ``resume`` a rerun with the same arguments and ``out`` reuses the finished models and
    continues the training of an unfinished one from its checkpoint, so an interrupted run loses no finished model
    and little of an unfinished one (without it they are deleted first and everything trains again).

    ``perceptual`` is the feature network of the deep perceptual AE, or the path of a .pt2 file
    (default: a random-init stand-in); ``jobs`` models train at once, in separate processes.

    ``setting='semi-supervised'``: every method also gets an unlabelled pool with an ``anomaly_ratio`` share of
    abnormal images (Fashion-MNIST: as many training images as the labelled set, from the other classes and
    the class's images the labelled set does not hold; brain MRI: new augmented copies of the training slice
    positions, with lesions); each method is trained one-class, and those that can learn from a pool
    (:func:`~patchgan_fast.evaluation.methods.uses_pool`) once more with it (rows ``NAME + unlabelled pool``).
    The one-class rows then use the semi-supervised protocol's labelled set."""
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"expected jobs a positive int, got {jobs!r}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; expected one of {', '.join(SETTINGS)}")
    if not 0 <= anomaly_ratio < 1:
        raise ValueError(f"expected anomaly_ratio in [0, 1), got {anomaly_ratio!r}")
    for name in methods:
        if name not in REGISTRY:
            raise ValueError(f"unknown method {name!r}; expected one of {', '.join(REGISTRY)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = _config(dataset, quick, steps, seed, size or default_size(dataset, quick))
    cache = out / "jobs"  # every finished model's scores, so that an interrupted run resumes
    if not resume:
        for f in [*cache.glob("*.pt"), *cache.glob("*.pt.tmp")]:
            f.unlink()
        for d in cache.glob(f"*{_PARTIAL}"):
            shutil.rmtree(d)
    ratio = anomaly_ratio if setting == "semi-supervised" else None
    t = _Tables(methods, config, quick, {"command": command, "seed": seed, "steps": config.steps, "quick": quick,
                                         "setting": setting, **({"anomaly_ratio": ratio} if ratio is not None else {})},
                {"perceptual_ae": {"perceptual": perceptual}}, jobs, cache, ratio)
    t0 = time.perf_counter()
    lines = [f"# Benchmark: {dataset}{' (--quick)' if quick else ''}, {setting}", "", f"Command: `{command}`  ",
             f"Steps {config.steps}, seed {seed}, device {'cuda' if torch.cuda.is_available() else 'cpu'}", ""]
    if "perceptual_ae" in methods:
        lines += ["perceptual_ae features: " + ("the network given with --perceptual-net" if perceptual is not None else
                  "a random-init VGG-style stand-in (the published method uses ImageNet VGG19 weights; pass them with "
                  "--perceptual-net)"), ""]
    if dataset == "fashion-mnist":
        lines += t.fashion_mnist(classes, data, seed)
    else:
        lines += t.brain_mri(data, seed, dataset)
    if t.reused:
        lines += ["", f"{t.reused} trained model(s) reused from {cache} (finished by the interrupted run that --resume "
                  "continued)."]
    lines += ["", "Training + scoring time per method (s): " + ", ".join(f"{m} {s:.0f}" for m, s in t.seconds.items())]
    for m, s in t.seconds.items():
        _record(t.records, "train_and_score_seconds", s, "s", {"dataset": dataset, "method": m}, t.run_info)
    cost = {m: sum(v) / len(v) for m, v in t.per_image.items()}
    lines += ["", "Scoring time per test image (ms), the cost of screening with each method: "
              + ", ".join(f"{m} {1000 * c:.3g}" for m, c in cost.items())]
    for m, c in cost.items():
        _record(t.records, "score_seconds_per_image", c, "s", {"dataset": dataset, "method": m}, t.run_info)
    plot_roc(t.curves, out / "roc.png", t.title)
    # Fig. 3: every method's normal and abnormal scores, and the Patch-GAN's without ranking beside them
    panels = {**t.curves, **({_RANKING_OFF: t.variants[_RANKING_OFF]} if _RANKING_OFF in t.variants else {})}
    plot_distribution_panels(panels, out / "scores.png", f"{t.title}: score distributions")
    lines += ["", f"Wall time {time.perf_counter() - t0:.0f} s. Plots: roc.png, scores.png. Every figure: results.json."]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(t.records, indent=1) + "\n")
    print("\n".join(lines))
    return {"records": t.records, "table": "\n".join(lines)}


class _Tables:
    """The two tables of one dataset: trains and scores every method (:func:`_run_methods`), records every
    figure (``records``) and keeps what the plots show (``curves``, ``variants``, ``title``)."""

    def __init__(self, methods, config: TrainConfig, quick: bool, run_info: dict, options: dict, jobs: int, cache: Path,
                 anomaly_ratio: Optional[float] = None):
        self.methods, self.config, self.quick, self.run_info = methods, config, quick, run_info
        self.options, self.jobs, self.cache, self.anomaly_ratio = options, jobs, cache, anomaly_ratio
        self.records: list[dict] = []
        self.seconds: dict[str, float] = {}
        self.per_image: dict[str, list[float]] = {}
        self.reused = 0
        self.curves: dict = {}
        self.variants: dict = {}
        self.title = ""

    def _run(self, groups, need_maps: bool):
        outputs, self.reused = _run_methods(groups, self.methods, self.config, self.quick, self.options, self.jobs,
                                            self.seconds, need_maps=need_maps, cache=self.cache,
                                            per_image=self.per_image)
        return outputs

    def _record(self, metric: str, value: float, config: dict) -> None:
        _record(self.records, metric, value, "ratio", config, self.run_info)

    def _pool_lines(self, pools: list[tuple[int, float]], labelled: list[int]) -> list[str]:
        """What the semi-supervised setting trained on: the labelled set and the pool (size, abnormal share)."""
        if not pools:
            return []
        return [f"Labelled normal images: {', '.join(map(str, labelled))}; unlabelled pool: "
                + ", ".join(f"{n} images ({100 * r:.0f} % abnormal)" for n, r in pools)
                + f". Rows `NAME {POOL_SUFFIX}` trained with the pool as well; the others on the labelled images only.",
                ""]

    def fashion_mnist(self, classes: Optional[Sequence[int]], data: Optional[str], seed: int) -> list[str]:
        """Table 1 per class of the one-class protocol and the mean; Table 2's means."""
        from ..data.datasets import FASHION_MNIST_CLASSES, one_class_split, semi_supervised_split

        dataset = "fashion-mnist"
        classes = list(classes if classes is not None else ((0, 1) if self.quick else range(10)))
        groups, labels_of, pools = [], [], []
        for c in classes:
            if self.anomaly_ratio is None:
                train_x, test_x, labels = one_class_split(c, data)
                if self.quick:
                    train_x = train_x[_subset(len(train_x), 500, seed)]
            else:
                train_x, pool, pool_labels, test_x, labels = semi_supervised_split(
                    c, 500 if self.quick else None, self.anomaly_ratio, seed, data)
                pools.append((len(pool), float(pool_labels.float().mean())))
            if self.quick:
                keep = _subset(len(test_x), 1000, seed + 1)
                test_x, labels = test_x[keep], labels[keep]
            groups.append((train_x, test_x) if self.anomaly_ratio is None else (train_x, test_x, pool))
            labels_of.append(labels.tolist())
        table: dict[str, list[float]] = {}
        abl_table: dict[str, list[float]] = {}
        first = None
        for c, y, (results, ablations) in zip(classes, labels_of, self._run(groups, need_maps=False)):
            for m, (scores, _) in results.items():
                auroc = image_metrics(scores.tolist(), y)["auroc"]
                table.setdefault(m, []).append(auroc)
                self._record("image_auroc", auroc, {"dataset": dataset, "class": c, "method": m})
            for v, scores in ablations.items():
                auroc = image_metrics(scores.tolist(), y)["auroc"]
                abl_table.setdefault(v, []).append(auroc)
                self._record("image_auroc", auroc, {"dataset": dataset, "class": c, "method": "patchgan", "variant": v})
            if first is None:
                first = (c, {m: (s.tolist(), y) for m, (s, _) in results.items()},
                         {v: (s.tolist(), y) for v, s in ablations.items()})
        header = "| method | " + " | ".join(FASHION_MNIST_CLASSES[c] for c in classes) + " | mean |"
        lines = [f"## Table 1: image AUROC (%), {'one-class' if self.anomaly_ratio is None else 'semi-supervised'} "
                 "protocol", "", *self._pool_lines(pools, [len(g[0]) for g in groups]), header,
                 "|" + "---|" * (len(classes) + 2)]
        for m, vals in table.items():
            mean = sum(vals) / len(vals)
            self._record("mean_image_auroc", mean, {"dataset": dataset, "classes": classes, "method": m})
            lines.append(f"| {m} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + f" | {100 * mean:.1f} |")
        lines += ["", "## Table 2: Patch-GAN ablations, mean image AUROC (%)", "", "| variant | mean |", "|---|---|"]
        for v, vals in abl_table.items():
            mean = sum(vals) / len(vals)
            self._record("mean_image_auroc", mean,
                         {"dataset": dataset, "classes": classes, "method": "patchgan", "variant": v})
            lines.append(f"| {v} | {100 * mean:.1f} |")
        self.curves, self.variants = first[1], first[2]
        self.title = f"Fashion-MNIST, normal class {FASHION_MNIST_CLASSES[first[0]]}"
        return lines

    def brain_mri(self, data: Optional[str], seed: int, dataset: str = "brain-mri") -> list[str]:
        """Table 1: image and pixel metrics, image AUROC per lesion kind and size bin, and pixel AUPRC and best
        Dice per kind; two difficulty bounds that train nothing (an intensity threshold, and the residual from the
        mean training slice at the test slice's position); Table 2: image AUROC of the Patch-GAN's ablations."""
        size = self.config.image_size
        if dataset == "brain-mri":
            from ..data.datasets.brain_subjects import QUICK, brain_subjects_pool, load_brain_subjects

            counts = (QUICK["train_subjects"], QUICK["test_subjects"]) if self.quick else (24, 16)
            train, test = load_brain_subjects(size, seed, *counts, path=data, mni_path=data)
            make_pool = lambda: brain_subjects_pool(size, seed, counts[0] // 2, self.anomaly_ratio,  # noqa: E731
                                                    path=data, mni_path=data)
            title = "brain MRI, registered subjects with lesions modelled on pathology"
        else:
            from ..data.datasets import brain_mri_pool, load_brain_mri

            copies = 2 if self.quick else 4
            train, test = load_brain_mri(size=size, path=data, seed=seed, train_copies=copies,
                                         test_copies=4 if self.quick else 16)
            make_pool = lambda: brain_mri_pool(size, data, seed, copies, self.anomaly_ratio)  # noqa: E731
            title = "brain MRI (unregistered), synthetic lesions"
        # whole subjects validate the methods that hold images out (train.subjects: None in the unregistered variant)
        group, pools = (train.images, test.images, None, train.subjects), []
        if self.anomaly_ratio is not None:
            pool = make_pool()
            group, pools = (train.images, test.images, pool.images, train.subjects), [
                (len(pool.images), float(pool.labels.float().mean()))]
        [(results, ablations)] = self._run([group], need_maps=True)
        y = test.labels.tolist()
        kinds = sorted(set(test.kinds) - {""}) if test.kinds else []
        columns = ["image_auroc", "pixel_auroc", "pixel_auroc_brain", "pixel_auprc", "pixel_best_dice",
                   *[f"image_auroc_{k}" for k in kinds], *[f"image_auroc_{b}" for b in test.bins]]
        names = ["image AUROC", "pixel AUROC", "pixel AUROC in the brain", "pixel AUPRC", "best Dice",
                 *[f"AUROC {k}" for k in kinds], *[f"AUROC {b}" for b in test.bins]]
        lines = [f"## Table 1: {title}, {'one-class' if self.anomaly_ratio is None else 'semi-supervised'}", "",
                 f"{len(train.images)} normal training slices; {len(test.images)} test slices, {sum(y)} with a lesion"
                 + (f" ({', '.join(f'{test.kinds.count(k)} {k}' for k in kinds)})" if kinds else "") + ".", "",
                 *self._pool_lines(pools, [len(train.images)]),
                 "| method | " + " | ".join(names) + " |", "|" + "---|" * (1 + len(names))]
        per_kind = []
        rows = dict(results)
        if "threshold" not in rows:  # difficulty bounds: nothing is trained
            from .methods import ThresholdMethod

            rows["bound: intensity threshold"] = ThresholdMethod(self.config).fit(train.images).score(test.images)
        rows["bound: atlas residual (position known)"] = _atlas_residual(train, test)
        rows["bound: nearest training patch (position known)"] = _nearest_patch(train, test)
        for m, (scores, maps) in rows.items():
            row = brain_figures(scores, maps, test)
            for k, v in row.items():
                if not k.startswith("kind_"):
                    self._record(k, v, {"dataset": dataset, "method": m})
            lines.append(f"| {m} | " + " | ".join("-" if row.get(k) is None else f"{row[k]:.3f}" for k in columns) + " |")
            for kind in kinds:
                cells = [row.get(f"kind_{kind}_{k}") for k in ("pixel_auprc", "pixel_best_dice")]
                for k, v in zip(("pixel_auprc", "pixel_best_dice"), cells):
                    if v is not None:
                        self._record(k, v, {"dataset": dataset, "method": m, "kind": kind})
                per_kind.append(f"| {m} | {kind} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
        if per_kind:
            lines += ["", "Pixel AUPRC and best Dice per lesion kind (the maps of that kind's test slices):", "",
                      "| method | kind | pixel AUPRC | best Dice |", "|---|---|---|---|", *per_kind]
        lines += ["", "## Table 2: Patch-GAN ablations, image AUROC", "", "| variant | image AUROC |", "|---|---|"]
        for v, scores in ablations.items():
            auroc = image_metrics(scores.tolist(), y)["auroc"]
            self._record("image_auroc", auroc, {"dataset": dataset, "method": "patchgan", "variant": v})
            lines.append(f"| {v} | {auroc:.3f} |")
        self.curves = {m: (s.tolist(), y) for m, (s, _) in rows.items()}
        self.variants = {v: (s.tolist(), y) for v, s in ablations.items()}
        self.title = title
        return lines


def _atlas_residual(train, test) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and maps of the residual from the mean training slice at each test slice's position (the slice
    positions, which no method is given, make it a bound on how far the normal variation hides a lesion)."""
    atlas = {int(z): train.images[train.slices == z].mean(0) for z in train.slices.unique().tolist()}
    positions = sorted(atlas)
    maps = []
    for x, z in zip(test.images, test.slices.tolist()):
        nearest = min(positions, key=lambda p: abs(p - z))  # test positions are held out: the nearest trained one
        maps.append((x - atlas[nearest]).abs()[0])
    maps = torch.stack(maps)
    return (maps**2).flatten(1).mean(1), maps


@torch.inference_mode()
def _nearest_patch(train, test, z_mm: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and maps of the distance from each test pixel's patch (about 15 mm across) to the nearest patch
    of any training slice within ``z_mm`` of its position, centred up to about 6 mm away (registration is not
    exact): a bound that, like the atlas residual, is told the slice positions. The map is the mean squared
    pixel difference to that patch inside the brain; the score its maximum after a 3 x 3 mean."""
    size = train.images.shape[-1]
    p, r = size // 16 + 1, max(1, size // 32)  # 64x64: 5-pixel patches, 2 pixels of search; 128x128: 9 and 4

    maps = []
    for x, z in zip(test.images, test.slices.tolist()):
        bank = F.pad(train.images[(train.slices - z).abs() <= z_mm], (r,) * 4)
        best = torch.full((size, size), float("inf"))
        for dy in range(2 * r + 1):
            for dx in range(2 * r + 1):
                d = box_mean((bank[:, :, dy:dy + size, dx:dx + size] - x).pow_(2), p)[:, 0].amin(0)
                best = torch.minimum(best, d)
        maps.append(best)
    maps = torch.stack(maps) * test.brain[:, 0]
    return F.avg_pool2d(maps[:, None], 3, 1, 1).flatten(1).amax(1), maps


def brain_figures(scores: torch.Tensor, maps: Optional[torch.Tensor], test) -> dict:
    """One method's brain MRI figures: image AUROC, pixel metrics of its maps (all pixels, and brain pixels
    only), image AUROC per lesion-size bin and, where the split names them, per lesion kind with that kind's
    pixel AUPRC and best Dice (keys ``kind_KIND_...``)."""
    y, sick, bins = test.labels.tolist(), test.labels == 1, test.size_bins
    row = {"image_auroc": image_metrics(scores.tolist(), y)["auroc"]}

    def pixels(select):
        heat, truth, inside = maps[select].numpy(), test.lesions[select, 0].numpy(), test.brain[select, 0].numpy()
        out = pixel_metrics(list(heat), list(truth))
        # without the easy background: how well the map separates lesion from normal tissue
        out["pixel_auroc_brain"] = pixel_metrics([h[b] for h, b in zip(heat, inside)],
                                                 [t[b] for t, b in zip(truth, inside)])["pixel_auroc"]
        return out

    if maps is not None:
        row.update(pixels(sick))
    groups = [(b, bins) for b in test.bins] + [(k, test.kinds) for k in sorted(set(test.kinds or []) - {""})]
    for name, labels in groups:
        sel = [i for i, v in enumerate(labels) if v in ("", name)]
        if any(labels[i] == name for i in sel):
            row[f"image_auroc_{name}"] = image_metrics([scores[i].item() for i in sel], [y[i] for i in sel])["auroc"]
    for kind in sorted(set(test.kinds or []) - {""}):
        if maps is not None:
            select = torch.tensor([k == kind for k in test.kinds])
            for k, v in pixels(select).items():
                row[f"kind_{kind}_{k}"] = v
    return row


class _Exported(torch.nn.Module):
    """An exported program's module, which refuses ``train``/``eval`` (its mode was fixed at export)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> "_Exported":
        self.training = mode
        return self

    def forward(self, x):
        return self.module(x)


def _load_perceptual(path: Optional[str]) -> Optional[torch.nn.Module]:
    """A feature network saved with ``torch.export.save`` (a .pt2 file; batch, height and width
    exported as dynamic dimensions)."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"--perceptual-net: {path!r} does not exist")
    if not str(path).endswith(".pt2"):
        raise ValueError(f"--perceptual-net: expected a .pt2 file written by torch.export.save, got {path!r}")
    try:
        return _Exported(torch.export.load(path).module())
    except Exception as exc:  # zip and deserialization errors: not an exported program
        raise ValueError(f"--perceptual-net: {path!r} is not a readable torch.export program ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from exc


def main(args) -> int:
    try:
        if args.perceptual_net is not None:
            _load_perceptual(args.perceptual_net)  # fail early; each job loads its own copy
        run(args.dataset, [m.strip() for m in args.methods.split(",") if m.strip()], args.out, quick=args.quick,
            steps=args.steps, classes=[int(c) for c in args.classes.split(",")] if args.classes else None,
            seed=args.seed, size=args.size, data=args.data, perceptual=args.perceptual_net, jobs=args.jobs,
            resume=args.resume, command=" ".join(["patchgan-fast", *sys.argv[1:]]), setting=args.setting,
            anomaly_ratio=args.anomaly_ratio)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
