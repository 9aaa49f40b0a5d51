"""Reading medical images from files: PNG/JPEG/BMP/TIFF (8/16-bit, gray/RGB), NIfTI, DICOM, npy/npz.

Every reader returns a list of :class:`Image` (a volume or a multi-frame file gives one per slice or
frame), as float32 ``[C, H, W]`` in [0, 1] (8-bit files keep exact k/255 values). 1-channel data
stays 1-channel. A file that cannot be read raises :class:`ReadError` naming the file and why.
Resizing to a model's size is explicit (:func:`fit_to_size`) and says what it did. An image of more
than :data:`MAX_PIXELS` pixels is refused by name from its header, before it is decoded (a small file
can hold a huge image: a decompression bomb).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

RASTER = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
NIFTI = (".nii", ".nii.gz")
DICOM = {".dcm", ".dicom"}
ARRAY = {".npy", ".npz"}

#: The most pixels a reader decodes: 2**28 (e.g. 16384 x 16384) for an image, or for a whole NIfTI volume or
#: multi-frame DICOM; more is refused from the header with a ReadError.
MAX_PIXELS = 2**28


class ReadError(Exception):
    """A file that could not be read as an image; the message names the file and the reason."""


@dataclass
class Image:
    """One 2-D image from a file.

    Attributes:
        pixels: float32 [C, H, W] in [0, 1].
        path: the file it came from.
        slice: index of the axial slice, frame or array entry within the file, or None.
        notes: what was done to it (normalization, resizing).
    """

    pixels: Tensor
    path: str
    slice: Optional[int] = None
    notes: list[str] = field(default_factory=list)


def image_key(path: str, slice_: Optional[int]) -> int:
    """Stable int64 mask key of an image: a hash of its path and slice, never its batch position."""
    digest = hashlib.blake2b(f"{path}#{'' if slice_ is None else slice_}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def suffix(path: str | os.PathLike) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_supported(path: str | os.PathLike) -> bool:
    s = suffix(path)
    return s in RASTER or s in NIFTI or s in DICOM or s in ARRAY


def list_images(root: str | os.PathLike, problems: Optional[list[tuple[str, str]]] = None) -> list[str]:
    """Supported files under ``root`` (a file or a folder, searched recursively, following symbolic links
    once), sorted. What cannot be searched (an unreadable folder, a symbolic link that loops back or
    leads nowhere) is appended to ``problems`` as ``(path, reason)`` instead of being skipped silently.

    Raises:
        FileNotFoundError: ``root`` is neither a file nor a folder.
    """
    root = Path(root)
    if root.is_file():
        return [str(root)]
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is neither a file nor a folder")
    found, seen = [], set()
    problems = [] if problems is None else problems

    def unreadable(exc: OSError) -> None:
        problems.append((str(exc.filename), f"folder not searched: {exc.strerror or exc}"))

    for folder, dirs, names in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symbolic link back into a folder already searched
            problems.append((folder, f"folder not searched: a symbolic link loop (it is {real})"))
            dirs.clear()
            continue
        seen.add(real)
        for name in names:
            path = os.path.join(folder, name)
            if not is_supported(path):
                continue
            if os.path.isfile(path):
                found.append(path)
            elif os.path.islink(path):
                problems.append((path, "a symbolic link to nothing (or to itself)"))
    return sorted(found)


def _check_pixels(path: str, shape) -> None:
    """Refuses an image of more than MAX_PIXELS pixels, from its header (``shape``), before decoding it."""
    n = 1
    for v in shape:
        n *= int(v)
    if n > MAX_PIXELS:
        raise ReadError(f"{path}: {' x '.join(str(int(v)) for v in shape)} = {n:,} pixels, more than the limit of "
                        f"{MAX_PIXELS:,} (patchgan_fast.data.io.MAX_PIXELS); not decoded")


def _percentile_unit(a: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> np.ndarray:
    """Maps the [lo, hi] percentiles of the nonzero values to [0, 1] (clipped)."""
    a = a.astype(np.float32)
    nz = a[a != 0]
    ref = nz if nz.size else a.ravel()
    p_lo, p_hi = np.percentile(ref, [lo, hi]) if ref.size else (0.0, 1.0)
    if p_hi <= p_lo:
        p_hi = p_lo + 1.0
    return np.clip((a - p_lo) / (p_hi - p_lo), 0, 1)


def _to_chw(a: np.ndarray, path: str) -> np.ndarray:
    """[H, W] -> [1, H, W]; [H, W, C] or [C, H, W] with C in (1, 3, 4) -> [C, H, W] (alpha dropped)."""
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        if a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3):
            a = np.moveaxis(a, -1, 0)
        if a.shape[0] == 4:
            a = a[:3]
        if a.shape[0] in (1, 3):
            return a
    raise ReadError(f"{path}: expected a 2-D image or [C, H, W]/[H, W, C] with 1 or 3 channels, got shape {a.shape}")


def _unit(a: np.ndarray, path: str) -> tuple[np.ndarray, str]:
    """Integer data scaled by its type's range; floats in [0, 1] kept, other floats percentile-normalized."""
    if a.dtype == np.bool_:
        return a.astype(np.float32), "bool"
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        if info.min < 0:
            return _percentile_unit(a), f"{a.dtype} percentile-normalized"
        return a.astype(np.float32) / np.float32(info.max), f"{a.dtype} / {info.max}"
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ReadError(f"{path}: contains NaN or inf")
    if a.min() >= 0 and a.max() <= 1:
        return a, "float in [0, 1]"
    return _percentile_unit(a), "float percentile-normalized (1st-99th)"


def _read_raster(path: str) -> list[Image]:
    from PIL import Image as PILImage

    PILImage.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own check (in open) refuses twice that; ours, the rest
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            im = PILImage.open(path)
        with im:
            _check_pixels(path, (im.size[1], im.size[0]))
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                a = np.asarray(im, dtype=np.uint16)
            elif mode == "I":
                a = np.asarray(im, dtype=np.int32)
                a = a.astype(np.uint16) if a.min() >= 0 and a.max() <= 65535 else a
            elif mode == "F":
                a = np.asarray(im, dtype=np.float32)
            elif mode in ("L", "RGB"):
                a = np.asarray(im)
            elif mode in ("1", "P", "LA", "PA"):
                a = np.asarray(im.convert("L" if mode in ("1", "LA") else "RGB"))
            else:
                a = np.asarray(im.convert("RGB"))
    except PILImage.DecompressionBombError as exc:  # over twice Pillow's own limit: refused in open()
        raise ReadError(f"{path}: more pixels than the limit of {MAX_PIXELS:,} (patchgan_fast.data.io.MAX_PIXELS); "
                        f"not decoded ({exc})") from exc
    except ReadError:
        raise
    except Exception as exc:  # any reader error is this file's, never the run's
        raise ReadError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    a, how = _unit(a, path)
    return [Image(torch.from_numpy(np.ascontiguousarray(_to_chw(a, path))), path, None, [how])]


def _read_nifti(path: str) -> list[Image]:
    import nibabel as nib

    notes = ["NIfTI percentile (1st-99th) normalized"]
    try:
        img = nib.load(path)
        _check_pixels(path, img.shape[:3])
        img = nib.as_closest_canonical(img)
        if len(img.shape) == 4 and img.shape[3] > 1:  # a time series or several volumes: the first is screened
            notes.append(f"4-D NIfTI: volume 0 of {img.shape[3]} used, the other {img.shape[3] - 1} skipped")
        vol = np.asarray(img.dataobj[..., 0] if len(img.shape) == 4 else img.dataobj, dtype=np.float32)
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(f"{path}: not a readable NIfTI volume ({type(exc).__name__}: {exc})") from exc
    if vol.ndim == 2:
        vol = vol[..., None]
    if vol.ndim != 3:
        raise ReadError(f"{path}: expected a 3-D NIfTI volume, got shape {vol.shape}")
    if not np.isfinite(vol).all():
        raise ReadError(f"{path}: contains NaN or inf")
    unit = _percentile_unit(vol)  # one normalization for the whole volume, so slices stay comparable
    out = []
    for z in range(unit.shape[2]):  # RAS: axis 2 is inferior -> superior; rows anterior-up
        sl = np.flip(unit[:, :, z].T, axis=0)
        out.append(Image(torch.from_numpy(np.ascontiguousarray(sl))[None], path, z, list(notes)))
    return out


def _read_dicom(path: str) -> list[Image]:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        _check_pixels(path, (ds.get("Rows", 0), ds.get("Columns", 0), ds.get("NumberOfFrames", 1) or 1))
        a = ds.pixel_array.astype(np.float32)
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(f"{path}: not a readable DICOM image ({type(exc).__name__}: {exc})") from exc
    slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
    a = a * slope + intercept
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    rgb = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") or (a.ndim >= 3 and a.shape[-1] == 3)
    if frames == 1:
        a = a[None]
    out = []
    unit = _percentile_unit(a) if not rgb else a / max(float(a.max()), 1.0)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    notes = [f"DICOM rescale {slope}*v+{intercept}", "percentile (1st-99th) normalized"]
    if photometric == "MONOCHROME1":
        notes.append("MONOCHROME1 inverted")
    for i, frame in enumerate(unit):
        chw = np.moveaxis(frame, -1, 0) if rgb else frame[None]
        out.append(Image(torch.from_numpy(np.ascontiguousarray(chw.astype(np.float32))), path, i if frames > 1 else None,
                         list(notes)))
    return out


def _read_array(path: str) -> list[Image]:
    """Every array of a .npy or .npz file (an .npz's arrays in their stored order), each a 2-D image or a stack."""
    try:
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise ReadError(f"{path}: empty .npz")
                for name in z.files:  # the size the zip directory states, before the array is decompressed
                    size = z.zip.getinfo(f"{name}.npy").file_size
                    if size > 8 * MAX_PIXELS:
                        raise ReadError(f"{path}: array {name!r} decompresses to {size:,} bytes, more than 8 bytes for each "
                                        f"of {MAX_PIXELS:,} pixels (patchgan_fast.data.io.MAX_PIXELS); not decoded")
                arrays = [z[name] for name in z.files]
        else:
            arrays = [np.load(path, allow_pickle=False)]
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(f"{path}: not a readable numpy array ({type(exc).__name__}: {exc})") from exc
    stack = []
    for a in arrays:
        if a.ndim == 4 or (a.ndim == 3 and a.shape[0] not in (1, 3) and a.shape[-1] not in (1, 3, 4)):
            stack.extend(a)  # [N, H, W] or [N, C, H, W] / [N, H, W, C]
        else:
            stack.append(a)
    out = []
    for i, item in enumerate(stack):
        _check_pixels(path, np.shape(item))
        unit, how = _unit(np.asarray(item), path)
        out.append(Image(torch.from_numpy(np.ascontiguousarray(_to_chw(unit, path))), path, i if len(stack) > 1 else None, [how]))
    return out


def read_images(path: str | os.PathLike) -> list[Image]:
    """Reads every image in one file (slices of a volume, frames of a DICOM, entries of an array stack).

    Raises:
        ReadError: the file is empty, truncated, of another format than its name says, or holds no image.
    """
    path = str(path)
    try:
        if os.path.getsize(path) == 0:
            raise ReadError(f"{path}: empty file (0 bytes)")
    except OSError as exc:
        raise ReadError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    s = suffix(path)
    if s in RASTER:
        images = _read_raster(path)
    elif s in NIFTI:
        images = _read_nifti(path)
    elif s in DICOM:
        images = _read_dicom(path)
    elif s in ARRAY:
        images = _read_array(path)
    else:
        raise ReadError(f"{path}: unsupported file type {s!r}; expected one of png, jpg, bmp, tif, nii, nii.gz, dcm, npy, npz")
    if not images:
        raise ReadError(f"{path}: holds no image")
    return images


def to_uint8(pixels: Tensor) -> Tensor:
    """Pixels in [0, 1] as uint8 (``round(255 x)``): what screening moves to the device, 4x less than
    float32. Exact for 8-bit files at the model's size; otherwise within 0.5/255 of the float value."""
    return (pixels * 255).round_().clamp_(0, 255).to(torch.uint8)


def fit_to_size(pixels: Tensor, size: int, channels: int, mode: str = "resize") -> tuple[Tensor, str]:
    """Brings ``[C, H, W]`` to ``[channels, size, size]``; returns the image and what was done.

    Modes: ``'resize'`` (area/bilinear resampling, aspect ratio not kept), ``'pad'`` (keep the aspect
    ratio: resize the long side to ``size``, pad the rest with 0), ``'crop'`` (centre crop or pad, no
    resampling). RGB -> 1 channel uses ITU-R 601 luma; 1 -> 3 channels repeats the plane.
    """
    notes = []
    c = pixels.shape[0]
    if c != channels:
        if c == 3 and channels == 1:
            pixels = (0.299 * pixels[0] + 0.587 * pixels[1] + 0.114 * pixels[2])[None]
            notes.append("RGB->gray")
        elif c == 1 and channels == 3:
            pixels = pixels.expand(3, -1, -1)
            notes.append("gray->RGB")
        else:
            raise ValueError(f"cannot convert {c} channels to {channels}")
    h, w = pixels.shape[-2:]
    if (h, w) == (size, size):
        return pixels.contiguous(), "; ".join(notes)
    x = pixels[None].float()
    if mode == "resize":
        x = F.interpolate(x, size=(size, size), mode="area" if min(h, w) >= size else "bilinear", align_corners=None)
        notes.append(f"resized {h}x{w}->{size}x{size}")
    elif mode == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="area" if scale <= 1 else "bilinear")
        x = F.pad(x, ((size - nw) // 2, size - nw - (size - nw) // 2, (size - nh) // 2, size - nh - (size - nh) // 2))
        notes.append(f"resized {h}x{w}->{nh}x{nw}, padded to {size}x{size}")
    elif mode == "crop":
        ph, pw = max(0, size - h), max(0, size - w)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top:top + size, left:left + size]
        notes.append(f"centre-cropped/padded {h}x{w}->{size}x{size}")
    else:
        raise ValueError(f"unknown resize mode {mode!r}; expected resize, pad or crop")
    return x[0].clamp(0, 1).contiguous(), "; ".join(notes)


class DecodedFiles(torch.utils.data.Dataset):
    """Decodes one file per item (in DataLoader workers, ``batch_size=None``): ``(path, [(slice, uint8
    [channels, size, size], what was done)], None)``, or ``(path, None, error)`` for a file that cannot be
    read. What screening, training and evaluation read files with."""

    def __init__(self, files: Sequence[str], size: int, channels: int, resize: str):
        self.files, self.size, self.channels, self.resize = list(files), size, channels, resize

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        try:
            out = []
            for im in read_images(path):
                pixels, how = fit_to_size(im.pixels, self.size, self.channels, self.resize)
                out.append((im.slice, to_uint8(pixels), "; ".join([*im.notes, how] if how else im.notes)))
            return path, out, None
        except Exception as exc:  # any reader's error is this file's, reported by name; the run goes on
            return path, None, str(exc) if isinstance(exc, ReadError) else f"{path}: {type(exc).__name__}: {exc}"
