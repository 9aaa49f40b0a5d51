"""Screening never loses, corrupts or mixes a result, and every user error is one clear line: each case a
hostile new user found (bad files, interrupted runs, a full disk, wrong models, odd names)."""

import builtins
import csv
import errno
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL, blobs
from PIL import Image

from patchgan_fast import PatchGAN, ScoreConfig, TrainConfig, error_maps, ops, score_batch
from patchgan_fast.app import records
from patchgan_fast.app.errors import UsageError
from patchgan_fast.app.files import load_collection
from patchgan_fast.app.screening import screen
from patchgan_fast.cli import main
from patchgan_fast.data import MAX_PIXELS, list_images, read_images

nib = pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return PatchGAN.fit(blobs(64), TrainConfig(steps=10, val_every=10, **SMALL))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model") / "m.pgf"
    model.save(path)
    return str(path)


def _pngs(folder: Path, n: int, seed: int = 3, prefix: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(blobs(n, seed=seed)):
        paths.append(folder / f"{prefix}{i:02d}.png")
        Image.fromarray(im[0].numpy()).save(paths[-1])
    return paths


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG that states a huge size in its header (and holds almost no data): a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _scores(out: Path) -> list[tuple[str, str, str]]:
    return [(r["path"], r["slice"], r["score"]) for r in _rows(out / "scores.csv")]


def _screen(model, data, out, **kw):
    return screen(model, [str(data)], out, num_workers=0, progress=False, device="cpu", top=2, **kw)


# 1. any reader error is one file's; images above the pixel limit are refused before they are decoded


def test_huge_images_are_refused_by_name_and_the_run_goes_on(tmp_path, model, model_file, capsys):
    data = tmp_path / "data"
    _pngs(data, 3)
    _png_header(data / "bomb.png", 30000, 30000)  # past twice the limit: Pillow's own check in open()
    _png_header(data / "big.png", 17000, 17000)  # past the limit, below twice it: ours, from the header
    assert MAX_PIXELS < 17000 * 17000 < 2 * MAX_PIXELS
    out = tmp_path / "out"
    s = _screen(model, data, out)
    assert (s.scored, s.errors) == (3, 2)
    errors = {Path(r["path"]).name: r["error"] for r in _rows(out / "errors.csv")}
    assert set(errors) == {"bomb.png", "big.png"}
    assert "17000 x 17000 = 289,000,000 pixels, more than the limit" in errors["big.png"]
    assert "more pixels than the limit" in errors["bomb.png"]
    assert len(_rows(out / "scores.csv")) == 3
    s = _screen(model, data, out, resume=True)  # a resumed run does not stumble on them either
    assert (s.scored, s.skipped, s.errors, s.earlier_errors) == (0, 3, 0, 2)
    # training and evaluation read files the same way
    images, ids, skipped = load_collection([str(data)], 32, 1, "resize", 0)
    assert len(images) == 3 and {Path(p).name for p, _ in skipped} == {"bomb.png", "big.png"}
    assert "skipped" in capsys.readouterr().err


def test_any_exception_of_a_reader_is_the_files_error(tmp_path, model, monkeypatch):
    data = tmp_path / "data"
    paths = _pngs(data, 3)
    real = read_images

    def flaky(path):
        if str(path) == str(paths[1]):
            raise MemoryError("the decoder ran out of memory")
        return real(path)

    monkeypatch.setattr("patchgan_fast.data.io.read_images", flaky)
    s = _screen(model, data, tmp_path / "out")
    assert (s.scored, s.errors) == (2, 1)
    [row] = _rows(tmp_path / "out" / "errors.csv")
    assert row["path"] == str(paths[1]) and "MemoryError: the decoder ran out of memory" in row["error"]


# 2. rows are checked; a torn tail is dropped and rescored; a write error stops the run clearly


class _FillingDisk:
    """A file on a disk that fills up after ``budget`` writes: the next write puts half its text on the disk
    (cut inside a row) and fails with ENOSPC, as a full disk does."""

    def __init__(self, f, budget: int):
        self.f, self.budget = f, budget

    def write(self, text):
        if self.budget <= 0:
            self.f.write(text[: len(text) // 2 + 3])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= 1
        return self.f.write(text)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _disk_fills_after(monkeypatch, budget: int, name: str = "scores.partial.csv") -> None:
    def fake_open(path, mode="r", *args, **kw):
        f = builtins.open(path, mode, *args, **kw)
        return _FillingDisk(f, budget) if Path(path).name == name and "a" in mode else f

    monkeypatch.setattr(records, "open", fake_open, raising=False)


def test_a_full_disk_stops_the_run_and_resume_repairs_the_torn_row(tmp_path, model, monkeypatch):
    data = tmp_path / "data"
    _pngs(data, 9)
    ref = tmp_path / "ref"
    _screen(model, data, ref, batch_size=2)
    out = tmp_path / "out"
    _disk_fills_after(monkeypatch, 3)  # the header and two batches of rows, then the disk is full
    with pytest.raises(records.WriteError, match="No space left on device .*make room and rerun with --resume"):
        _screen(model, data, out, batch_size=2)
    monkeypatch.undo()
    partial = (out / "scores.partial.csv").read_text()
    assert not partial.endswith("\n")  # torn
    kept = records.read_checked(out / "scores.partial.csv")
    assert 4 <= len(kept) <= 5  # the rows before the failed write, and whole rows of it that reached the disk
    s = _screen(model, data, out, batch_size=2, resume=True)
    assert s.skipped == len(kept) and s.scored == 9 - len(kept)
    assert _scores(out) == _scores(ref)  # every image once, none corrupted
    assert len(records.read_checked(out / "scores.partial.csv")) == 9


def test_a_row_cut_inside_its_score_is_not_taken_as_done(tmp_path, model):
    data = tmp_path / "data"
    _pngs(data, 4)
    out = tmp_path / "out"
    _screen(model, data, out)
    partial = out / "scores.partial.csv"
    lines = partial.read_text().splitlines(keepends=True)
    cells = lines[-1].split(",")
    cells[2] = cells[2][:4]  # the score cut short, the line otherwise whole
    partial.write_text("".join(lines[:-1]) + ",".join(cells))
    s = _screen(model, data, out, resume=True)
    assert (s.scored, s.skipped) == (1, 3)
    assert len(_rows(out / "scores.csv")) == 4


def test_the_cli_exits_non_zero_on_a_write_error(tmp_path, model_file, monkeypatch, capsys):
    _pngs(tmp_path / "data", 2)
    _disk_fills_after(monkeypatch, 0)
    assert main(["screen", model_file, str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err, err


# 3. resume refuses scores of another model or other settings


def test_resume_refuses_another_model_or_other_settings(tmp_path, model, model_file):
    data = tmp_path / "data"
    _pngs(data, 3)
    out = tmp_path / "out"
    _screen(model_file, data, out)
    other = PatchGAN.fit(blobs(64, seed=5), TrainConfig(steps=2, val_every=2, **{**SMALL, "seed": 9}))
    with pytest.raises(UsageError, match=r"cannot resume in .*another model or with other settings: model \('"):
        _screen(other, data, out, resume=True)
    with pytest.raises(UsageError, match=r"resize \('resize' -> 'pad'\)"):
        _screen(model_file, data, out, resume=True, resize="pad")
    s = _screen(model, data, out, resume=True)  # the same model as a file or an object: the same digest
    assert (s.scored, s.skipped) == (0, 3)


# 4. never delete or overwrite a file the tool did not write; never read its own outputs


def test_force_deletes_only_what_the_tool_wrote(tmp_path, model):
    data = tmp_path / "data"
    _pngs(data, 3)
    (data / "heatmaps").mkdir()
    mine = data / "heatmaps" / "my-figure.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mine)
    with pytest.raises(UsageError, match=r"holds heatmaps, which patchgan-fast did not write there"):
        _screen(model, data, data, force=True)  # --out is the input folder
    assert mine.exists() and not (data / "scores.csv").exists()
    out = tmp_path / "out"
    _screen(model, data, out)
    (out / "notes.txt").write_text("mine")
    s = _screen(model, data, out, force=True)
    assert s.scored == 4 and (out / "notes.txt").read_text() == "mine"  # 3 images + my-figure.png
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(out / "heatmaps" / "added-by-me.png")
    with pytest.raises(UsageError, match="holds heatmaps"):
        _screen(model, data, out, force=True)
    assert (out / "heatmaps" / "added-by-me.png").exists() and (out / "notes.txt").exists()


def test_outputs_inside_an_input_folder_are_never_screened(tmp_path, model):
    data = tmp_path / "data"
    _pngs(data, 3)
    out = data / "results"
    s = _screen(model, data, out)
    assert s.scored == 3 and len(list((out / "heatmaps").iterdir())) == 2
    s = _screen(model, data, out, resume=True)
    assert (s.scored, s.skipped, s.errors) == (0, 3, 0)
    assert all("results" not in r["path"] for r in _rows(out / "scores.csv"))


# 5. names that a spreadsheet would run as formulas


@pytest.mark.parametrize("name", ["=cmd|' \\C calc'!A0.png", "=HYPERLINK(x).png", "+1.png", "-1.png", "@SUM(A1).png",
                                  "'quoted.png"])
def test_names_are_spreadsheet_safe_and_still_lead_to_the_file(tmp_path, model, name):
    name = name.replace("\\", "-")  # no path separators in a file name
    data = tmp_path / "data"
    _pngs(data, 1)
    Image.fromarray(blobs(1, seed=9)[0, 0].numpy()).save(data / name)
    (data / ("=" + name + ".bad.png")).write_text("not an image")
    out = tmp_path / "out"
    _screen(model, data, out)
    for table in ("scores.csv", "errors.csv"):
        for row in _rows(out / table):
            for cell in row.values():
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (table, cell)
            assert Path(records.csv_value(row["path"])).exists()  # the documented escape: drop one leading '
    paths = {records.csv_value(r["path"]) for r in _rows(out / "scores.csv")}
    assert str(data / name) in paths


def test_the_escape_can_always_be_undone():
    for text in ["=a", "'=a", "''", "plain", "-", "", "\tx", "'"]:
        assert records.csv_value(records.csv_cell(text)) == text


# 6. user errors: one line, exit status 2, before any image is read or any folder made


def _one_line_error(capsys, argv, expect):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expect in err, err
    return err


def test_user_errors_are_one_line_with_status_2_and_leave_nothing(tmp_path, model_file, capsys):
    data = tmp_path / "data"
    _pngs(data, 2)
    out = tmp_path / "out"
    corrupt = tmp_path / "corrupt.pgf"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a model")
    state = torch.load(model_file, weights_only=True)
    no_key = tmp_path / "no-key.pgf"
    torch.save({k: v for k, v in state.items() if k != "reconstructor"}, no_key)
    text_version = tmp_path / "text-version.pgf"
    torch.save({**state, "format_version": "2"}, text_version)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    screen_args = [str(data), "--out", str(out), "--workers", "0"]
    cases = [
        (["screen", str(tmp_path / "missing.pgf"), *screen_args], "missing.pgf' does not exist"),
        (["screen", str(corrupt), *screen_args], "is not a readable patchgan_fast model file"),
        (["screen", str(no_key), *screen_args], "lacks 'reconstructor': the file is damaged or incomplete"),
        (["screen", str(text_version), *screen_args], "has model format '2', expected a positive int"),
        (["screen", model_file, str(tmp_path / "nowhere"), "--out", str(out)], "input '"),
        (["screen", model_file, str(data), "--out", str(a_file)], "is a file; expected a folder"),
        (["screen", model_file, *screen_args, "--top", "-1"], "argument --top: expected an int >= 0, got -1"),
        (["screen", model_file, *screen_args, "--batch-size", "0"], "argument --batch-size: expected an int >= 1, got 0"),
        (["screen", model_file, *screen_args, "--retry-errors"], "goes with resume"),
        (["train", str(data), "--out", str(tmp_path / "m.pgf"), "--steps", "0"], "argument --steps: expected an int >= 1"),
        (["train", str(data), "--out", str(tmp_path / "m.pgf"), "--size", "0"], "argument --size: expected an int >= 1"),
        (["train", str(data), "--out", str(tmp_path / "m.pgf"), "--patch-size", "0"], "expected an int >= 1, got 0"),
        (["train", str(data), "--out", str(tmp_path / "m.pgf"), "--patch-size", "5", "--size", "32"],
         "image_size 32 must be a multiple of patch_size 5"),
        (["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pgf"), "--size", "32"], "does not exist"),
        (["train", str(data), "--out", str(tmp_path), "--size", "32"], "is a folder; expected the model file"),
        (["evaluate", str(corrupt), "--normal", str(data), "--abnormal", str(data), "--out", str(out)],
         "is not a readable patchgan_fast model file"),
        (["evaluate", model_file, "--normal", str(data), "--abnormal", str(tmp_path / "nowhere"), "--out", str(out)],
         "does not exist"),
    ]
    for argv, expect in cases:
        _one_line_error(capsys, argv, expect)
        assert not out.exists(), argv  # a failed start leaves no folder behind
        assert not (tmp_path / "m.pgf").exists()


# 7. nothing skipped without a word; failures can be retried


def test_what_a_reader_leaves_out_is_said(tmp_path, model, capsys):
    data = tmp_path / "data"
    data.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 2, 3), dtype=np.float32), np.eye(4)),
             data / "series.nii.gz")
    np.savez(data / "two.npz", first=np.zeros((32, 32), np.float32), second=np.ones((2, 32, 32), np.float32))
    out = tmp_path / "out"
    s = _screen(model, data, out)
    assert s.scored == 2 + 3  # 2 slices of the first volume; all 3 images of both arrays
    rows = _rows(out / "scores.csv")
    series = [r for r in rows if r["path"].endswith("series.nii.gz")]
    assert all("volume 0 of 3 used, the other 2 skipped" in r["prepared"] for r in series)
    assert "volume 0 of 3 used" in capsys.readouterr().err
    assert sorted(r["slice"] for r in rows if r["path"].endswith("two.npz")) == ["0", "1", "2"]


def test_folders_that_cannot_be_searched_are_reported(tmp_path, model, monkeypatch):
    data = tmp_path / "data"
    _pngs(data / "ok", 2)
    (data / "loop").symlink_to(data)  # a symbolic link back up: searched once, the loop named
    (data / "gone.png").symlink_to(tmp_path / "nothing.png")
    problems = []
    files = list_images(data, problems)
    assert len(files) == 2
    reasons = dict(problems)
    assert "symbolic link loop" in reasons[str(data / "loop")]
    assert "symbolic link to nothing" in reasons[str(data / "gone.png")]
    real_walk = os.walk

    def walk(top, onerror=None, followlinks=False):  # an unreadable folder (root reads every folder, so simulated)
        onerror(PermissionError(errno.EACCES, "Permission denied", str(data / "locked")))
        yield from real_walk(top, onerror=onerror, followlinks=followlinks)

    monkeypatch.setattr("patchgan_fast.data.io.os.walk", walk)
    out = tmp_path / "out"
    s = _screen(model, data, out)
    assert s.scored == 2 and s.errors == 3
    errors = {r["path"]: r["error"] for r in _rows(out / "errors.csv")}
    assert errors[str(data / "locked")] == "folder not searched: Permission denied"
    s = _screen(model, data, out, resume=True)  # recorded once
    assert s.errors == 0 and len(_rows(out / "errors.csv")) == 3


def test_resume_can_retry_the_files_that_failed(tmp_path, model):
    data = tmp_path / "data"
    _pngs(data, 2)
    late = data / "late.png"
    late.write_bytes(b"")  # not written yet when the first run read it
    out = tmp_path / "out"
    s = _screen(model, data, out)
    assert (s.scored, s.errors) == (2, 1)
    Image.fromarray(blobs(1, seed=4)[0, 0].numpy()).save(late)
    s = _screen(model, data, out, resume=True)
    assert (s.scored, s.errors, s.earlier_errors) == (0, 0, 1)  # not retried, but counted
    s = _screen(model, data, out, resume=True, retry_errors=True)
    assert (s.scored, s.errors, s.earlier_errors) == (1, 0, 0)
    assert len(_rows(out / "scores.csv")) == 3 and _rows(out / "errors.csv") == []


# 9. API messages that name the real cause


def test_api_messages_name_the_real_cause(model):
    rgb = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"images have 3 channel\(s\) but this config \(a model's\) is for 1-channel"):
        score_batch(model, rgb)
    small = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"expected images of 32x32 \(the size the model was trained at\), got 16x16"):
        score_batch(model, small)
    x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    bad = ScoreConfig(patch_size=8, top_weights=(float("nan"), 1.0))
    with pytest.raises(ValueError, match=r"expected finite ranking weights, got top_weights=\(nan, 1.0\)"):
        score_batch(model, x, bad)
    with pytest.raises(ValueError, match=r"expected a non-empty batch of images"):
        error_maps(model, x[:0])
    with pytest.raises(ValueError, match=r"expected finite mean"):
        ops.mask_images(x, patch_size=8, mean=(float("nan"),), std=(1.0,))
    with pytest.raises(ValueError, match=r"expected a finite fill value, got nan"):
        ops.mask_images(x, patch_size=8, fill=float("nan"))


# 10. names are printed escaped


def test_names_with_terminal_escapes_are_printed_escaped(tmp_path, model_file, capsys):
    data = tmp_path / "data"
    _pngs(data, 2)
    (data / "\x1b[2J\x1b[31mevil.png").write_text("not an image")
    ev = tmp_path / "ev"
    assert main(["evaluate", model_file, "--normal", str(data), "--abnormal", str(data), "--out", str(ev),
                 "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[2J\\x1b[31mevil.png" in err
    assert records.printable("a\x1b[0mb\x07\n") == "a\\x1b[0mb\\x07\\n"


def test_the_demo_replaces_only_its_own_outputs(tmp_path):
    from patchgan_fast.app.demo import _MARKER, _clear

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    with pytest.raises(UsageError, match="is not empty and was not written by the demo"):
        _clear(mine)
    assert (mine / "thesis.tex").exists()
    demo = tmp_path / "demo"
    (demo / "screening").mkdir(parents=True)
    for name in (_MARKER, "roc.png", "notes.txt"):
        (demo / name).write_text("")
    _clear(demo)
    assert [p.name for p in demo.iterdir()] == ["notes.txt"]
