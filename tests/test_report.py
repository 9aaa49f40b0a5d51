"""The end of a screen: a calibrated flag per image in scores.csv, and report pictures with the input, the
reconstruction, the error map and, where a truth folder has a mask, the ground truth."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL, blobs
from PIL import Image

from patchgan_fast import PatchGAN, TrainConfig
from patchgan_fast.app.screening import screen
from patchgan_fast.evaluation import image_metrics
from patchgan_fast.models.files import reconstruction


def _model():
    torch.manual_seed(0)
    return PatchGAN.fit(blobs(96, seed=1), TrainConfig(**SMALL, steps=30))


def test_scores_flag_images_above_the_99th_percentile_and_the_report_shows_the_truth(tmp_path):
    model = _model()
    images, masks = tmp_path / "images", tmp_path / "truth"
    images.mkdir()
    masks.mkdir()
    normal, odd = blobs(6, seed=5), blobs(6, seed=6, abnormal=True)
    for i, x in enumerate(torch.cat([normal, odd])):
        Image.fromarray((x[0].numpy() * 255).astype(np.uint8)).save(images / f"{i:02d}.png")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:16, 8:16] = 255
    Image.fromarray(mask).save(masks / "07.tif")  # the same name, another image suffix
    out = tmp_path / "out"
    screen(model, [images], out, top=12, progress=False, num_workers=0, truth=masks)
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["rank", "path", "slice", "score", "flagged", "top_y", "top_x", "prepared"]
    p99 = model.score_stats["p99"]
    assert all(r["flagged"] == str(int(float(r["score"]) > p99)) for r in rows)
    report = (out / "report.html").read_text()
    flagged = sum(r["flagged"] == "1" for r in rows)
    assert f"{flagged} of 12 images flagged" in report and "input | reconstruction | error | truth" in report
    pictures = {p.name.split("-", 1)[1]: Image.open(p).size for p in (out / "heatmaps").iterdir()}
    assert pictures["07.png"] == (4 * 256 + 3 * 4, 256)  # input | reconstruction | error | truth
    assert pictures["00.png"] == (3 * 256 + 2 * 4, 256)  # no mask for it


def test_a_model_without_validation_scores_flags_nothing(tmp_path):
    model = _model()
    model.score_stats = {}
    images = tmp_path / "images"
    images.mkdir()
    for i, x in enumerate(blobs(3, seed=5)):
        Image.fromarray((x[0].numpy() * 255).astype(np.uint8)).save(images / f"{i}.png")
    screen(model, [images], tmp_path / "out", top=1, progress=False, num_workers=0)
    with open(tmp_path / "out" / "scores.csv", newline="") as f:
        assert {r["flagged"] for r in csv.DictReader(f)} == {""}
    assert "no image is flagged" in (tmp_path / "out" / "report.html").read_text()


def test_reconstruction_is_the_infilled_image_in_the_images_range():
    model = _model()
    x = blobs(4, seed=7)
    r = reconstruction(model, x)
    assert r.shape == x.shape and float(r.min()) >= 0 and float(r.max()) <= 1
    # a normal image's in-filled reconstruction is closer to it than to another image
    assert float((r - x).abs().mean()) < float((r - x.roll(1, 0)).abs().mean())


def test_a_truth_folder_that_is_not_a_folder_is_refused(tmp_path):
    from patchgan_fast.app.errors import UsageError

    model = _model()
    (tmp_path / "images").mkdir()
    with pytest.raises(UsageError, match="the truth folder .* is not a folder"):
        screen(model, [tmp_path / "images"], tmp_path / "out", truth=tmp_path / "nothing", progress=False)


def test_the_demo_runs_end_to_end_on_the_brain_data(tmp_path, capsys):
    from helpers import write_brain_templates

    from patchgan_fast.cli import main

    data = write_brain_templates(tmp_path / "data")
    out = tmp_path / "demo"
    assert main(["demo", "--data", str(data), "--size", "32", "--patch-size", "8", "--steps", "3",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "of 12 subjects" in printed and "of 6 other subjects" in printed
    assert "image AUROC by lesion kind" in printed and "flagged (score above the 99th percentile" in printed
    masks = sorted(p.name for p in (out / "test-masks").iterdir())
    assert masks and all("normal" not in m for m in masks)
    with open(out / "screening" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["flagged"] for r in rows} <= {"0", "1"}
    on_lesion = 0  # the top patches that hold a pixel of their slice's lesion mask, as the demo counts them
    for r in rows:
        mask = out / "test-masks" / Path(r["path"]).name
        if mask.exists():
            y, x = int(r["top_y"]), int(r["top_x"])
            on_lesion += bool((np.array(Image.open(mask))[y:y + 8, x:x + 8] > 0).any())
    assert f"scores.csv's top patch lies on the lesion in {on_lesion} of the {len(masks)} slices with one" in printed
    # the AUROC the demo prints for the shipped score is that of the scores the screening wrote
    auroc = image_metrics([float(r["score"]) for r in rows], ["normal" not in r["path"] for r in rows])["auroc"]
    assert f"image AUROC, eq. 5 + nearest patches (shipped):   {auroc:.3f}" in printed
    assert "| truth" in (out / "screening" / "report.html").read_text()
