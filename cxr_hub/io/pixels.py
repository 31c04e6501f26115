"""What every decoder of :mod:`cxr_hub.io` shares: the size limits, the reduction of huge images, colour to gray.

* :data:`REDUCE_ABOVE_PIXELS` and ``_reduce_factor`` / ``_reduce_if_huge``: the integer box reduction of images
  above 20 MP (see :func:`cxr_hub.load_image`'s "Size"). ``_reduce_factor`` reads the limit from this module, so
  a test that lowers it patches ``cxr_hub.io.pixels.REDUCE_ABOVE_PIXELS`` (``cxr_hub.io`` re-exports the value).
* ``_check_header_size``: the refusal of too large or too small images from their declared size, before any pixel
  is decoded.
* ``_rgb_to_gray``: ITU-R BT.601 luma, exact for gray stored as colour; ``_finish``: the plain array the caller owns.

The bottom of :mod:`cxr_hub.io`: it imports numpy and :mod:`cxr_hub.models` (the limits and ``CXRInputError``) only.
"""

from __future__ import annotations

import math

import numpy as np

from ..models.image_processing_cxr import MAX_PIXELS, MIN_SIDE, CXRInputError

#: Images with more pixels than this (20 MP) are reduced by :func:`load_image`, by the smallest integer factor that
#: brings them under it (an exact box average of f x f blocks; JPEG is decoded at the reduced scale directly). No
#: chest X-ray detector produces that many (43 x 43 cm at 100 um is 18.5 MP), and the method never looks at more than
#: its 1024 x 1024 classifier frame, so a reduced image still gives the same frames to the networks, while a 49 MP
#: upload no longer costs 20 s and 3 GB of memory at its full size in every later step.
REDUCE_ABOVE_PIXELS = 20_000_000

# ITU-R BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)


def _reduce_factor(width: int, height: int) -> int:
    """The smallest integer factor that brings an image under REDUCE_ABOVE_PIXELS (1: keep it as it is).

    Never so large that a side drops below MIN_SIDE (extreme aspect ratios): then the image stays larger.
    """
    if width * height <= REDUCE_ABOVE_PIXELS:
        return 1
    f = max(2, math.ceil(math.sqrt(width * height / REDUCE_ABOVE_PIXELS)))
    while (width // f) * (height // f) > REDUCE_ABOVE_PIXELS:
        f += 1
    f = min(f, min(width, height) // MIN_SIDE)
    return f if f >= 2 else 1


def _reduce_if_huge(arr: np.ndarray) -> np.ndarray:
    """Box-averages a 2-D image above REDUCE_ABOVE_PIXELS by an integer factor (see load_image's "Size")."""
    if arr.ndim != 2:
        return arr  # validation refuses it with the right message
    h, w = arr.shape
    f = _reduce_factor(w, h)
    if f == 1:
        return arr
    hh, ww = h // f, w // f
    # splitting both axes of a (possibly cropped) view never copies; float32 accumulation of f * f samples is exact
    # for integer images of up to 16 bits and f <= 16
    return arr[: hh * f, : ww * f].reshape(hh, f, ww, f).mean(axis=(1, 3), dtype=np.float32)


def _finish(arr: np.ndarray) -> np.ndarray:
    # Orientation and channel slicing can leave views or read-only buffers (PIL's array interface); return a plain
    # C-contiguous array the caller owns.
    return np.require(arr, dtype=np.float32, requirements=["C_CONTIGUOUS", "WRITEABLE", "OWNDATA"])


def _check_header_size(width: int, height: int, what: str) -> None:
    """Rejects images by their declared size before any pixel is decoded (decompression bombs, thumbnails)."""
    if width * height > MAX_PIXELS:
        raise CXRInputError(
            f"{what} declares an image of {width}x{height} = {width * height / 1e6:.1f} megapixels, above the "
            f"{MAX_PIXELS / 1e6:.0f} MP limit (a guard against decompression bombs). Downscale it first."
        )
    if min(width, height) < MIN_SIDE:
        raise CXRInputError(
            f"{what} is {width}x{height} pixels; a chest X-ray needs at least {MIN_SIDE} pixels on each side. "
            "Upload the full-resolution film, not a thumbnail."
        )


def _rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB of any real dtype -> float32 (H, W) BT.601 luma; exact when the three channels are equal."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(r, b):
        # Gray saved as RGB is the common case for X-rays; skipping the weights keeps its values bit-exact.
        return r
    # Channel by channel in float32 so a 60 MP image never needs an (H, W, 3) float64 temporary.
    out = r.astype(np.float32) * np.float32(_LUMA[0])
    out += g.astype(np.float32) * np.float32(_LUMA[1])
    out += b.astype(np.float32) * np.float32(_LUMA[2])
    return out
