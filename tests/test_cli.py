"""Readers, the patchgan-fast CLI (train, screen, evaluate), resumable screening, report safety,
distributed screening, and the built-in dataset loaders, on files the tests make."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL, blobs, torchrun_cpu_env, write_fashion_mnist
from PIL import Image

from patchgan_fast import PatchGAN, TrainConfig
from patchgan_fast.cli import main
from patchgan_fast.data.datasets import insert_lesions, load_brain_mri, one_class_split, read_idx
from patchgan_fast.data import fit_to_size, read_images
from patchgan_fast.app.report import safe_name

nib = pytest.importorskip("nibabel")  # installed by scripts/setup.sh; carried as a wheel to a GPU machine

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "patchgan_fast.cli"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.pgf"
    PatchGAN.fit(blobs(96), TrainConfig(steps=40, val_every=20, **SMALL)).save(path)
    return str(path)


def _png(path, array):
    Image.fromarray(array).save(path)


def _dicom(path, frames=1, photometric="MONOCHROME2"):
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 40, 40, 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    if frames > 1:
        ds.NumberOfFrames = frames
    ramp = (np.arange(frames * 40 * 40) % 4000).reshape(frames, 40, 40).astype(np.uint16)
    ds.PixelData = ramp.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ramp


def _collection(folder: Path) -> tuple[int, set]:
    """Writes every supported kind of file plus three bad ones; returns (images expected, bad names)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    _png(folder / "gray8.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    _png(folder / "gray16.png", rng.integers(0, 65535, (48, 40), dtype=np.uint16))
    _png(folder / "rgb.jpg", rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    _png(folder / "rgb.bmp", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)).save(folder / "gray16.tif")
    np.save(folder / "array.npy", rng.random((32, 32), dtype=np.float32))
    nib.save(nib.Nifti1Image(rng.random((24, 24, 5), dtype=np.float32) * 900, np.eye(4)), folder / "volume.nii.gz")
    _dicom(folder / "multi.dcm", frames=3)
    (folder / "empty.png").write_bytes(b"")
    data = (folder / "gray8.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.png").write_text("this is a text file, not an image")
    return 6 + 5 + 3, {"empty.png", "truncated.png", "notes.png"}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_readers_keep_values_and_channels(tmp_path):
    n, _ = _collection(tmp_path)
    g8 = read_images(tmp_path / "gray8.png")[0]
    assert g8.pixels.shape == (1, 32, 32) and torch.equal(
        (g8.pixels * 255).round().to(torch.uint8)[0], torch.from_numpy(np.array(Image.open(tmp_path / "gray8.png"))))
    g16 = read_images(tmp_path / "gray16.png")[0]
    assert g16.pixels.shape == (1, 48, 40) and g16.notes == ["uint16 / 65535"]
    assert read_images(tmp_path / "rgb.jpg")[0].pixels.shape == (3, 30, 50)
    vol = read_images(tmp_path / "volume.nii.gz")
    assert [im.slice for im in vol] == [0, 1, 2, 3, 4] and vol[0].pixels.shape == (1, 24, 24)
    frames = read_images(tmp_path / "multi.dcm")
    assert [im.slice for im in frames] == [0, 1, 2]
    assert all(0 <= float(im.pixels.min()) and float(im.pixels.max()) <= 1 for im in vol + frames)
    # MONOCHROME1 is inverted: the same stored values read as the complement
    _dicom(tmp_path / "mono1.dcm", photometric="MONOCHROME1")
    _dicom(tmp_path / "mono2.dcm")
    a, b = read_images(tmp_path / "mono1.dcm")[0].pixels, read_images(tmp_path / "mono2.dcm")[0].pixels
    torch.testing.assert_close(a, 1 - b)
    y, how = fit_to_size(g16.pixels, 32, 1, "pad")
    assert y.shape == (1, 32, 32) and "padded" in how


def test_train_screen_evaluate_end_to_end(tmp_path, model_file):
    expected, bad = _collection(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["screen", model_file, str(tmp_path / "data"), "--out", str(out), "--workers", "2", "--top", "5"]) == 0
    rows = _rows(out / "scores.csv")
    assert len(rows) == expected and [int(r["rank"]) for r in rows] == list(range(1, expected + 1))
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    assert {Path(r["path"]).name for r in rows} == {"gray8.png", "gray16.png", "rgb.jpg", "rgb.bmp", "gray16.tif",
                                                     "array.npy", "volume.nii.gz", "multi.dcm"}
    assert sorted(r["slice"] for r in rows if r["path"].endswith(".nii.gz")) == ["0", "1", "2", "3", "4"]
    errors = _rows(out / "errors.csv")
    assert {Path(r["path"]).name for r in errors} == bad and all(r["error"] for r in errors)
    assert len(list((out / "heatmaps").iterdir())) == 5
    report = (out / "report.html").read_text()
    assert "Top 5 images" in report and "truncated.png" in report
    # evaluate: blobs are normal, bright squares abnormal
    for name, abnormal in (("normal", False), ("abnormal", True)):
        (tmp_path / name).mkdir()
        for i, im in enumerate(blobs(20, seed=40 + abnormal, abnormal=abnormal)):
            _png(tmp_path / name / f"{i}.png", im[0].numpy())
    (tmp_path / "masks").mkdir()
    for i, im in enumerate(blobs(20, seed=41, abnormal=True)):  # the bright square is the lesion
        _png(tmp_path / "masks" / f"{i}.png", ((im[0] == 255).numpy() * 255).astype(np.uint8))
    ev = tmp_path / "ev"
    assert main(["evaluate", model_file, "--normal", str(tmp_path / "normal"), "--abnormal", str(tmp_path / "abnormal"),
                 "--masks", str(tmp_path / "masks"), "--out", str(ev), "--workers", "0"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["normal"] == metrics["abnormal"] == 20 and metrics["auroc"] > 0.9
    assert metrics["masks_found"] == 20 and metrics["pixel_auroc"] > 0.8
    assert (ev / "roc.png").stat().st_size > 0 and (ev / "scores.png").stat().st_size > 0


def test_train_command_writes_a_loadable_model(tmp_path):
    (tmp_path / "normal").mkdir()
    for i, im in enumerate(blobs(24)):
        _png(tmp_path / "normal" / f"{i}.png", im[0].numpy())
    out = tmp_path / "m.pgf"
    assert main(["train", str(tmp_path / "normal"), "--out", str(out), "--size", "32", "--steps", "4",
                 "--width", "8", "--depth", "2", "--batch-size", "8", "--workers", "0"]) == 0
    model = PatchGAN.load(out)
    assert model.config.image_size == 32 and model.config.patch_size == 4 and model.channels == 1
    assert (tmp_path / "m.pgf.checkpoints" / "checkpoint.pt").exists()  # so an interrupted run can --resume
    assert model.config.position_weights and len(model.score_config.patch_weights) == 8
    assert model.score_config.error == "mse"
    assert main(["train", str(tmp_path / "normal"), "--out", str(out), "--size", "32", "--steps", "2", "--width", "8",
                 "--depth", "2", "--batch-size", "8", "--workers", "0", "--no-position-weights", "--error", "msgms",
                 "--checkpoint-dir", str(tmp_path / "ck2")]) == 0
    loaded = PatchGAN.load(out)
    assert loaded.score_config.patch_weights is None and loaded.score_config.error == "msgms"


def test_train_group_by_holds_out_whole_subjects(tmp_path, capsys):
    (tmp_path / "normal").mkdir()
    for i, im in enumerate(blobs(24)):  # four subjects of six slices
        _png(tmp_path / "normal" / f"sub-{i % 4}_slice{i}.png", im[0].numpy())
    args = ["train", str(tmp_path / "normal"), "--size", "32", "--steps", "2", "--width", "8", "--depth", "2",
            "--batch-size", "8", "--workers", "0"]
    assert main([*args, "--out", str(tmp_path / "a.pgf"), "--group-by", "(sub-[0-9]+)_"]) == 0
    assert PatchGAN.load(tmp_path / "a.pgf").score_stats["count"] == 6  # one whole subject validates
    assert main([*args, "--out", str(tmp_path / "b.pgf")]) == 0
    assert PatchGAN.load(tmp_path / "b.pgf").score_stats["count"] == 2  # 10 % of the slices at random
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "c.pgf"), "--group-by", "patient([0-9]+)"]) == 2
    assert "--group-by 'patient([0-9]+)' matches no part of 24 file path(s)" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "c.pgf"), "--group-by", "(sub"]) == 2
    assert "is not a regular expression" in capsys.readouterr().err


def test_output_folder_is_not_overwritten_by_accident(tmp_path, model_file):
    _collection(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["screen", model_file, str(tmp_path / "data"), "--out", str(out), "--workers", "0"]) == 2
    assert main(["screen", model_file, str(tmp_path / "data"), "--out", str(out), "--workers", "0", "--force"]) == 0
    assert (out / "keep.txt").read_text() == "mine"  # --force replaces our outputs only


def test_nothing_readable_is_a_failure(tmp_path, model_file):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_text("no")
    assert main(["screen", model_file, str(tmp_path / "bad"), "--out", str(tmp_path / "out"), "--workers", "0"]) == 1
    assert len(_rows(tmp_path / "out" / "errors.csv")) == 1


def test_report_and_heatmap_names_are_harmless(tmp_path, model_file):
    sub = tmp_path / "data" / "sub"
    sub.mkdir(parents=True)
    _png(sub / "<script>alert(1)<..>.png", blobs(1, abnormal=True)[0, 0].numpy())
    out = tmp_path / "out"
    assert main(["screen", model_file, str(sub / ".." / "sub"), "--out", str(out), "--workers", "0"]) == 0
    report = (out / "report.html").read_text()
    assert "<script>alert" not in report and "&lt;script&gt;alert(1)&lt;..&gt;.png" in report
    heatmaps = list((out / "heatmaps").iterdir())
    assert len(heatmaps) == 1 and heatmaps[0].parent == out / "heatmaps"
    for evil in ("../../etc/passwd", "..", "/abs/<x>.png", "a/../../b.nii.gz"):
        name = safe_name(3, evil, "7")
        assert "/" not in name and not name.startswith(".") and name.endswith(".png")


def test_interrupted_screening_resumes_to_the_same_result(tmp_path, model_file):
    data = tmp_path / "data"
    data.mkdir()
    for i, im in enumerate(blobs(300, seed=7)):
        _png(data / f"{i:03d}.png", im[0].numpy())
    # on the CPU, where every run gives the same digits (a GPU's may differ in the last place between processes)
    args = ["screen", model_file, str(data), "--workers", "0", "--batch-size", "2", "--top", "3", "--device", "cpu"]
    ref = subprocess.run([*CLI, *args, "--out", str(tmp_path / "ref")], capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run"
    proc = subprocess.Popen([*CLI, *args, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = out / "scores.partial.csv"
    t0 = time.time()
    while not (partial.exists() and len(_rows(partial)) >= 10):
        assert proc.poll() is None, f"screening ended before it could be interrupted: {proc.communicate()}"
        assert time.time() - t0 < 300
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(_rows(partial))
    assert 10 <= kept < 300 and not (out / "scores.csv").exists()
    resumed = subprocess.run([*CLI, *args, "--out", str(out), "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({kept} already done)" in resumed.stdout
    a, b = _rows(tmp_path / "ref" / "scores.csv"), _rows(out / "scores.csv")
    assert len(b) == 300 and len({r["path"] for r in b}) == 300
    assert [(r["path"], r["score"]) for r in a] == [(r["path"], r["score"]) for r in b]


def test_torchrun_screening_equals_single_process(tmp_path, model_file):
    data = tmp_path / "data"
    _collection(data)
    # the two gloo ranks run on the CPU (torchrun_cpu_env), so the single process does too
    assert main(["screen", model_file, str(data), "--out", str(tmp_path / "single"), "--workers", "0", "--device", "cpu"]) == 0
    env = torchrun_cpu_env(tmp_path)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "patchgan_fast.cli", "screen", model_file, str(data), "--out", str(tmp_path / "ddp"),
                          "--workers", "0"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    single, ddp = _rows(tmp_path / "single" / "scores.csv"), _rows(tmp_path / "ddp" / "scores.csv")
    assert [(r["path"], r["slice"], r["score"]) for r in single] == [(r["path"], r["slice"], r["score"]) for r in ddp]
    assert sorted(r["path"] for r in _rows(tmp_path / "single" / "errors.csv")) == sorted(
        r["path"] for r in _rows(tmp_path / "ddp" / "errors.csv"))
    assert not list((tmp_path / "ddp").glob("*rank*"))


def test_fashion_mnist_one_class_protocol_on_small_idx_files(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path, 60, 30)
    train, test, labels = one_class_split(3, tmp_path)
    assert train.shape == (6, 1, 32, 32) and test.shape == (30, 1, 32, 32) and train.dtype == torch.uint8
    assert int((labels == 0).sum()) == 3 and bool((train[:, :, :2] == 0).all())  # zero padding
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert torch.equal(train[0, 0, 2:30, 2:30], torch.from_numpy(raw[3].copy()))
    (tmp_path / "broken-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"\x00" * 10)
    with pytest.raises(ValueError, match=r"expected 125 values for shape \(5, 5, 5\), found 10 \(truncated\?\)"):
        read_idx(tmp_path / "broken-idx3-ubyte")
    monkeypatch.setattr("patchgan_fast.data.datasets.fashion_mnist._SEARCH", ())  # whatever this machine has installed
    monkeypatch.delenv("PATCHGAN_FAST_FASHION_MNIST", raising=False)
    with pytest.raises(FileNotFoundError, match=r"dataset-fashion-mnist"):
        one_class_split(0, tmp_path / "nowhere")


def test_brain_mri_from_a_small_volume(tmp_path):
    z, y, x = np.mgrid[0:40, 0:48, 0:40]
    brain = ((x - 20) / 16) ** 2 + ((y - 24) / 20) ** 2 + ((z - 20) / 18) ** 2 < 1
    rng = np.random.default_rng(1)
    vol = np.where(brain, 60 + 40 * np.sin(x / 3.0) * np.cos(y / 4.0) + rng.normal(0, 3, brain.shape), 0)
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0).astype(np.float32), np.eye(4)), tmp_path / "ch2bet.nii.gz")
    train, test = load_brain_mri(size=32, path=tmp_path, train_copies=2, test_copies=4)
    assert len(train.images) > 0 and len(test.images) > 0 and train.images.shape[1:] == (1, 32, 32)
    assert not set(train.slices.tolist()) & set(test.slices.tolist())
    assert all(abs(a - b) > 1 for a in set(train.slices.tolist()) for b in set(test.slices.tolist()))
    sick = test.labels == 1
    assert bool((test.lesions[~sick] == 0).all()) and bool((test.lesions[sick].flatten(1).sum(1) > 0).all())
    assert bool((test.lesions <= test.brain).all())  # lesions only inside the brain
    assert [b == "" for b in test.size_bins] == [not x for x in sick.tolist()]
    assert set(test.size_bins) <= {"", "small", "medium", "large"}
    # every copy gets its own rotation and scaling: two copies of one slice have different outlines
    first = (train.slices == train.slices[0]).nonzero().flatten()
    assert len(first) == 2 and not torch.equal(train.brain[first[0]], train.brain[first[1]])
    again, _ = load_brain_mri(size=32, path=tmp_path, train_copies=2, test_copies=4)
    assert torch.equal(again.images, train.images)  # seeded
    g = torch.Generator().manual_seed(3)
    lesioned, masks = insert_lesions(test.images[:4], test.brain[:4], g)
    assert torch.equal(masks, lesioned != test.images[:4])  # ground truth = exactly the changed pixels
