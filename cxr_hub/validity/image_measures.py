"""What the image checks measure, before the segmentation: the input's colour, size, shape, flatness and structure.

:func:`source_colour_share` (and :func:`colour_share`) reads the colour of the input as the user gave it (
:func:`cxr_hub.load_image` turns colour into gray); :func:`measure_image` measures the loaded gray image. Neither
depends on the segmentation model; :class:`~cxr_hub.validity.InputValidator` applies the thresholds.

Imports numpy, OpenCV, PIL and :mod:`~cxr_hub.validity.report`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .report import THUMB_SIDE

#: Gray modes of PIL: no colour to measure.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
#: Longer side an RGB input is reduced to before its colour is measured (the share needs no detail).
_COLOUR_SIDE = 256


def colour_share(rgb: np.ndarray, chroma: float = 40.0) -> float:
    """Share of pixels whose R, G and B differ by more than ``chroma`` (0-255 scale), in [0, 1].

    Args:
        rgb: (H, W, 3) or (H, W, 4) RGB(A) array (alpha ignored) in 0-255 (uint16 is scaled down), or a 2-D gray
            array (share 0).
        chroma: the pixel threshold (:attr:`ImageThresholds.colour_chroma`).
    """
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[-1] < 3:
        return 0.0
    step = max(1, math.ceil(max(a.shape[:2]) / _COLOUR_SIDE))
    c = a[::step, ::step, :3].astype(np.float32)
    if a.dtype == np.uint16 or (a.dtype.kind == "f" and float(c.max(initial=0.0)) > 255.0):
        c = c / 257.0
    spread = c.max(axis=-1) - c.min(axis=-1)
    return float((spread > chroma).mean())


def _pil_colour_share(img: Image.Image, chroma: float) -> float:
    if img.mode in _GRAY_MODES:
        return 0.0
    img.draft("RGB", (_COLOUR_SIDE, _COLOUR_SIDE))  # JPEG: decoded at 1/2 … 1/8 scale, a few ms
    small = img.convert("RGB")
    small.thumbnail((_COLOUR_SIDE, _COLOUR_SIDE))
    return colour_share(np.asarray(small), chroma)


def source_colour_share(source: Any, chroma: float = 40.0) -> float | None:
    """:func:`colour_share` of an input as the user gave it (``load_image`` turns colour into gray).

    Reads as little as it can: a gray file is recognised from its header, without decoding; a colour JPEG is decoded
    at a reduced scale; other colour files are decoded once more. Call it after :func:`cxr_hub.load_image` accepted
    the input (which checks its size and format): a file object is read again from the position it had before, when
    it can seek.

    Args:
        source: a path, bytes, a binary file object (with the position ``load_image`` started from), a PIL image
            or a numpy array.
        chroma: the pixel threshold.

    Returns:
        The share; 0.0 for gray data; None when there is no colour signal to read (DICOM, a file object that cannot
        seek, anything PIL cannot open).
    """
    if isinstance(source, np.ndarray):
        return colour_share(source, chroma)
    if isinstance(source, Image.Image):
        try:
            return _pil_colour_share(source.copy(), chroma)
        except (OSError, ValueError):
            return None
    opened: Any
    if isinstance(source, (bytes, bytearray, memoryview)):
        opened = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)) or hasattr(source, "__fspath__"):
        opened = source
    elif callable(getattr(source, "read", None)):
        opened = source  # positioned by the caller
    else:
        return None
    try:
        with Image.open(opened) as img:
            return _pil_colour_share(img, chroma)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # not a raster PIL reads (DICOM), or the file went away: no colour signal


def measure_image(image: np.ndarray, colour: float | None) -> dict[str, float]:
    """The image checks' measurements of a loaded gray image (a few ms for a 1024² film).

    Args:
        image: (H, W) float32 from :func:`cxr_hub.load_image`.
        colour: :func:`source_colour_share` of the input, or None when unknown.

    Returns:
        ``height``, ``width``, ``min_side``, ``aspect``, ``colour`` (NaN when unknown), ``blank`` (share of the
        most common of 64 gray-level bins between the image's minimum and maximum), ``structure`` (std of the
        32 × 32 area-reduced image / std of the image), ``dark_share`` and ``bright_share`` (shares in the lowest and
        highest 3 of those bins: the black surround and the saturated soft tissue of a CT slice), ``histogram_entropy``
        (entropy of the 64 bins / log 64) and ``flat_share`` (share of 8 × 8 blocks of point samples whose spread is
        below 1 % of the gray-level range).
    """
    h, w = image.shape
    step = max(1, min(h, w) // 256)
    sample = np.asarray(image[::step, ::step], np.float32)  # point samples keep the pixel noise; only fewer of them
    lo, hi = float(sample.min()), float(sample.max())
    if hi > lo:
        bins = ((sample - lo) * (63.999 / (hi - lo))).astype(np.intp)
        counts = np.bincount(bins.ravel(), minlength=64) / sample.size
        blank = float(counts.max())
        full_std = float(sample.std())
        # reduced from the point samples (256 to 511 a side): fast, and still averages noise 8-fold or more
        small = cv2.resize(sample, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
        structure = float(small.std()) / full_std if full_std > 0 else 0.0
        nz = counts[counts > 0]
        entropy = float(-(nz * np.log(nz)).sum() / math.log(64))
        bh, bw = sample.shape[0] // 8 * 8, sample.shape[1] // 8 * 8
        blocks = sample[:bh, :bw].reshape(bh // 8, 8, bw // 8, 8)
        flat = float((blocks.std(axis=(1, 3)) < 0.01 * (hi - lo)).mean())
        dark, bright = float(counts[:3].sum()), float(counts[-3:].sum())
    else:
        blank, structure, entropy, flat, dark, bright = 1.0, 0.0, 0.0, 1.0, 1.0, 0.0
    return {
        "height": float(h),
        "width": float(w),
        "min_side": float(min(h, w)),
        "aspect": float(max(h, w) / min(h, w)),
        "colour": math.nan if colour is None else float(colour),
        "blank": blank,
        "structure": structure,
        "dark_share": dark,
        "bright_share": bright,
        "histogram_entropy": entropy,
        "flat_share": flat,
    }
