"""The files a screen writes, made safe: spreadsheet-safe CSV cells, rows that prove they are whole, a
manifest of what the tool wrote (and with what), and names printed without terminal escapes.

* CSV cells (:func:`csv_cell`): a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
  return would run as a formula in a spreadsheet; it is written with a ``'`` in front, as
  spreadsheet-safe CSV writers do (a plain number such as ``-0.5`` is not). A cell that starts with
  ``'`` gets one more, so the rule can always be undone: drop one leading ``'`` (:func:`csv_value`) and
  you have the file name as it is on disk.
* Appended rows (:class:`Appender`) end with a ``check`` column, the CRC-32 of the row's other cells,
  and are flushed and fsynced per batch. Reading them back (:func:`read_checked`) keeps only whole rows;
  a row torn by a crash or a full disk is dropped (and its image scored again on ``--resume``). A
  failed write stops the run with :class:`WriteError`.
* The manifest (``.patchgan-fast.json`` in the output folder) lists every file the tool wrote there and
  what produced the scores (the model's digest, the settings, the package version): ``--force``
  deletes only files it lists, and ``--resume`` refuses to mix scores of another model or setting.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import zlib
from pathlib import Path
from typing import Optional

import torch

MANIFEST = ".patchgan-fast.json"
CHECK = "check"
_FORMULA = ("=", "+", "-", "@", "\t", "\r", "'")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class WriteError(OSError):
    """An output file could not be written (a full disk, a lost mount, no permission)."""


def csv_cell(value) -> str:
    """A cell as written to CSV: text that a spreadsheet could run as a formula gets a ``'`` in front (a plain
    number such as ``-0.5`` is left as it is)."""
    text = "" if value is None else str(value)
    if not text.startswith(_FORMULA) or _NUMBER.fullmatch(text):
        return text
    return "'" + text


def csv_value(cell: str) -> str:
    """The value of a cell written by :func:`csv_cell` (one leading ``'`` dropped)."""
    return cell[1:] if cell.startswith("'") else cell


def printable(text: str) -> str:
    """``text`` for a terminal: control characters (escape sequences among them) as ``\\xNN``."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


def _crc(cells: list[str]) -> str:
    return f"{zlib.crc32(json.dumps(cells).encode('utf-8')):08x}"


class Appender:
    """Appends checked CSV rows to ``path`` durably (flush + fsync per call), the header once.

    A torn last line (no newline: a crash or a full disk mid-write) is cut off before anything is
    appended, so a new row never continues it.
    """

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, [*fields, CHECK]
        try:
            _cut_torn_tail(path)
            new = not path.exists() or path.stat().st_size == 0
            self.f = open(path, "a", newline="", encoding="utf-8")
            if new:
                self._write(",".join(self.fields) + "\r\n")
        except WriteError:
            raise
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc

    def write(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        for row in rows:
            cells = [csv_cell(row.get(k)) for k in self.fields[:-1]]
            w.writerow([*cells, _crc(cells)])
        self._write(buf.getvalue())

    def _write(self, text: str) -> None:
        try:
            self.f.write(text)
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot write {self.path}: {exc.strerror or exc} (a full disk?); the rows "
                                        "written before are kept: make room and rerun with --resume") from exc

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:  # the write that failed said why
            pass


def _cut_torn_tail(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def read_checked(path: Path) -> list[dict]:
    """The whole rows of a file written by :class:`Appender`, values unescaped (:func:`csv_value`); rows
    that are torn or fail their check are left out."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        text = f.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not rows[0] or rows[0][-1] != CHECK:
        return []
    fields, out = rows[0][:-1], []
    for row in rows[1:]:
        if len(row) == len(fields) + 1 and row[-1] == _crc(row[:-1]):
            out.append({k: csv_value(v) for k, v in zip(fields, row[:-1])})
    return out


def write_checked(path: Path, fields: list[str], rows: list[dict]) -> None:
    """A whole file of checked rows (as :class:`Appender` writes them), renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    out = Appender(tmp, fields)
    try:
        out.write(rows)
    finally:
        out.close()
    os.replace(tmp, path)


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """A whole CSV file (cells escaped), written to a temporary file and renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(fields)
            w.writerows([csv_cell(r.get(k)) for k in fields] for r in rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp.exists():
            tmp.unlink()
        raise WriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc} (a full disk?)") from exc


def model_digest(model) -> str:
    """SHA-256 of what a model scores with: its config, normalization, statistics and every tensor."""
    h = hashlib.sha256()
    state = model.state()
    for key in sorted(state):
        value = state[key]
        if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            for name in sorted(value):
                h.update(f"{key}.{name}".encode())
                h.update(value[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, torch.Tensor):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif key != "package_version":
            h.update(json.dumps([key, value], sort_keys=True, default=str).encode())
    return h.hexdigest()


class Manifest:
    """``out/.patchgan-fast.json``: the files this tool wrote in ``out`` and what produced its scores."""

    def __init__(self, out: Path, data: Optional[dict] = None):
        self.out, self.data = out, data or {"written": []}

    @classmethod
    def read(cls, out: Path) -> Optional["Manifest"]:
        path = out / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is not readable ({exc}); start a new --out") from exc
        if not isinstance(data, dict) or not isinstance(data.get("written"), list):
            raise ValueError(f"{path} is not a patchgan-fast manifest; start a new --out")
        return cls(out, data)

    @property
    def written(self) -> set[str]:
        return set(self.data["written"])

    def add(self, *relative: str) -> None:
        """Records files (paths relative to ``out``) as written by the tool, before they are written."""
        new = [r for r in relative if r not in self.written]
        if new:
            self.data["written"] = sorted(self.written | set(new))
            self.save()

    def save(self) -> None:
        path = self.out / MANIFEST
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc

    def differences(self, produced_by: dict) -> list[str]:
        """What differs between the recorded ``produced_by`` and this one, as 'name (recorded -> now)'."""
        theirs = self.data.get("produced_by", {})
        return [f"{k} ({theirs.get(k)!r} -> {produced_by.get(k)!r})" for k in sorted(set(theirs) | set(produced_by))
                if theirs.get(k) != produced_by.get(k)]
