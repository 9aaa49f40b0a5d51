"""The brain-mri data set: synthetic subjects from two T1 templates, registered, with lesions modelled on
pathology. Most tests run on small synthetic templates (tests/helpers.py); one uses the real ones where
installed (Colin27 from mricron-data, MNI ICBM152 from nilearn)."""

import numpy as np
import pytest
import torch
from helpers import write_brain_templates

from patchgan_fast.data.datasets import brain_lesions as L
from patchgan_fast.data.datasets.brain_subjects import (FOV_MM, brain_subjects_pool, find_mni_template,
                                                        load_brain_subjects)


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    return write_brain_templates(tmp_path_factory.mktemp("templates"))


def _load(folder, **kw):
    args = dict(size=48, seed=0, train_subjects=3, test_subjects=4, path=folder, mni_path=folder)
    return load_brain_subjects(**{**args, **kw})


def test_the_data_set_is_deterministic(templates):
    train, test = _load(templates)
    again_train, again_test = _load(templates)
    assert torch.equal(train.images, again_train.images) and torch.equal(test.images, again_test.images)
    assert torch.equal(test.lesions, again_test.lesions) and test.kinds == again_test.kinds
    other, _ = _load(templates, seed=1)
    assert not torch.equal(other.images, train.images)


def test_splits_shapes_and_labels(templates):
    train, test = _load(templates)
    assert train.images.shape[1:] == (1, 48, 48) and train.images.dtype == torch.float32
    assert 0 <= float(train.images.min()) and float(train.images.max()) <= 1
    assert bool((train.images[~train.brain] == 0).all()), "outside the brain is 0 (skull-stripped)"
    assert test.labels.float().mean() == 0.5 and set(test.kinds) == {"", *L.KINDS}
    assert [k == "" for k in test.kinds] == (test.labels == 0).tolist()
    assert not test.lesions[test.labels == 0].any() and all(m.any() for m in test.lesions[test.labels == 1])
    assert (test.sizes_mm[test.labels == 0] == 0).all()


def test_training_and_test_subjects_and_positions_are_disjoint(templates):
    train, test = _load(templates)
    assert set(train.subjects.tolist()).isdisjoint(test.subjects.tolist())
    assert set(train.slices.tolist()).isdisjoint(test.slices.tolist()), "test slices come from held-out positions"
    pool = brain_subjects_pool(48, 0, subjects=2, path=templates, mni_path=templates)
    assert set(pool.subjects.tolist()).isdisjoint(train.subjects.tolist() + test.subjects.tolist())


def test_each_kind_stays_in_its_size_range_and_is_at_least_two_pixels(templates):
    for size in (48, 96):
        _, test = _load(templates, size=size, test_subjects=6)
        px = FOV_MM / size
        for kind, s, mask in zip(test.kinds, test.sizes_mm.tolist(), test.lesions[:, 0]):
            if not kind:
                continue
            lo, hi = L.SIZE_RANGES_MM[kind]
            assert max(lo, 2 * px) - 1e-6 <= s <= max(hi, 2 * px) + 1e-6, (kind, s, size)
            assert int(mask.sum()) >= 3, (kind, int(mask.sum()))  # two pixels across at least


def test_lesion_masks_are_exactly_the_pixels_the_lesion_tissue_changed(templates):
    _, test = _load(templates)
    rng = np.random.default_rng(0)
    # a noise-free slice with its tissue maps, from the loader's own subject renderer
    from patchgan_fast.data.datasets.brain_subjects import _Data, _Subject, _seed

    data = _Data(48, templates, templates, 0.2)
    subject = _Subject(_seed(0, 2, 0), data.templates[0])
    values, _ = subject.slices(data.z_test[:2], 48)
    x, gm, wm, brain = values[0, 1], values[1, 1], values[2, 1], values[3, 1] > 0.5
    for kind in L.KINDS:
        out, lesion = L.draw(kind, x, gm, wm, brain, 4.0, rng)
        changed = np.abs(out.astype(np.float64) - lesion.anatomy) > L.TOLERANCE
        assert lesion.kind == kind and lesion.mask.any()
        assert np.array_equal(lesion.mask, changed)
        assert not lesion.mask[~brain].any(), "lesions stay in the brain"
        if kind == "tumour":  # the anatomy its mass effect pushed aside: moved, outside the brain untouched
            moved = np.abs(lesion.anatomy.astype(np.float64) - x) > L.TOLERANCE
            assert moved.any() and not moved[~brain].any()
            assert np.abs(out - lesion.anatomy)[~lesion.mask].max() <= L.TOLERANCE
        else:
            assert np.array_equal(lesion.anatomy, x) and np.array_equal(changed, np.abs(out - x) > L.TOLERANCE)
    with pytest.raises(ValueError, match="unknown lesion kind 'cyst'"):
        L.draw("cyst", x, gm, wm, brain, 4.0, rng)
    with pytest.raises(ValueError, match="holds 0 brain pixels"):
        L.draw("small", x, gm, wm, np.zeros_like(brain), 4.0, rng)


def test_lesions_are_darker_or_brighter_as_their_pathology(templates):
    """On T1, MS black holes, infarcts and tumour cores are darker than the white matter they replace."""
    from patchgan_fast.data.datasets.brain_subjects import _Data, _Subject, _seed

    data = _Data(96, templates, templates, 0.2)
    values, _ = _Subject(_seed(0, 2, 1), data.templates[0]).slices(data.z_test[1:2], 96)
    x, gm, wm, brain = values[0, 0], values[1, 0], values[2, 0], values[3, 0] > 0.5
    level = L.white_matter_level(x, wm, brain)
    for kind in ("ms", "infarct"):
        out, lesion = L.draw(kind, x, gm, wm, brain, 2.0, np.random.default_rng(3))
        assert float(np.median(out[lesion.mask])) < 0.8 * level, kind


def test_the_pool_has_the_asked_share_of_lesions(templates):
    pool = brain_subjects_pool(48, 0, subjects=2, anomaly_ratio=0.5, path=templates, mni_path=templates)
    assert int(pool.labels.sum()) == round(0.5 * len(pool.labels))
    assert [k != "" for k in pool.kinds] == pool.labels.bool().tolist()
    with pytest.raises(ValueError, match="anomaly_ratio in \\[0, 1\\]"):
        brain_subjects_pool(48, 0, anomaly_ratio=1.5, path=templates, mni_path=templates)


def test_missing_templates_and_bad_arguments_are_named(tmp_path, templates, monkeypatch):
    monkeypatch.delenv("PATCHGAN_FAST_MNI", raising=False)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install nilearn"):
        find_mni_template(tmp_path)
    with pytest.raises(ValueError, match="at least 32 pixels, got 16"):
        _load(templates, size=16)
    with pytest.raises(ValueError, match="at least one subject per split"):
        _load(templates, test_subjects=0)


def test_the_real_templates_make_a_plausible_data_set():
    try:
        find_mni_template()
        from patchgan_fast.data.datasets import find_brain_volume

        find_brain_volume()
    except FileNotFoundError as exc:
        pytest.skip(f"real templates not installed: {exc}")
    train, test = load_brain_subjects(size=64, train_subjects=2, test_subjects=2)
    assert len(train.images) > 40 and len(test.images) > 20
    brain_share = train.brain.float().mean(dim=(1, 2, 3))
    assert float(brain_share.min()) > 0.1 and float(brain_share.max()) < 0.9
    # intensity-standardized per subject: the two templates' subjects have the same brain 99th percentile
    for s in train.subjects.unique():
        x = train.images[train.subjects == s][train.brain[train.subjects == s]]
        assert abs(float(torch.quantile(x[:200_000], 0.99)) - 0.95) < 0.03
