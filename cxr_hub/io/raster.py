"""Raster images through PIL (PNG, JPEG, BMP, TIFF, PGM/PPM), and 16-bit colour PNG/TIFF through OpenCV.

Only the formats cxr-hub supports are opened (:data:`_PIL_FORMATS`); the declared size is checked before any pixel is
decoded; EXIF orientation is applied; 16-bit samples keep their 16 bits; every decoder failure becomes a
:class:`cxr_hub.CXRInputError`. PIL's own warnings about corrupt metadata are silenced for the call only.

Imports numpy, PIL (OpenCV on demand), :mod:`cxr_hub.models` and :mod:`~cxr_hub.io.pixels`.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..models.image_processing_cxr import MAX_PIXELS, CXRInputError
from .pixels import _check_header_size, _reduce_factor, _rgb_to_gray

# the package's logger, as before the split: logging set up for "cxr_hub.io" sees the same records, by the same name
logger = logging.getLogger(__package__)

# Only the formats cxr-hub supports: PIL's other plugins (TGA, PCX, ...) have weak magic numbers and would happily
# "identify" random bytes, and every extra parser is extra attack surface for uploaded files.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "PPM")

# Errors PIL decoders raise for corrupt or truncated data (struct.error and IndexError come from header parsers).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError)

# EXIF orientation -> numpy operation; mirrors PIL.ImageOps.exif_transpose (PIL rotates counter-clockwise).
_ORIENTATION_OPS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].T,
    8: lambda a: np.rot90(a, 1),
}

# set once the LOAD_TRUNCATED_IMAGES warning below was logged: once per process, not once per image
_truncated_warning_done = False


class _NotPILImageError(Exception):
    """PIL does not recognise the data (it may still be a raw DICOM dataset)."""


def _from_encoded_pil(data: bytes, what: str) -> np.ndarray:
    _warn_if_truncated_loading_enabled()
    with warnings.catch_warnings():
        # PIL warns about corrupt metadata it then skips (EXIF, TIFF tags); what matters becomes a CXRInputError,
        # the rest must not reach a user's terminal or a server log.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; turn the warning into an error for this call only.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
        except UnidentifiedImageError as exc:
            raise _NotPILImageError from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise CXRInputError(
                f"{what} declares an image far above the {MAX_PIXELS / 1e6:.0f} MP limit (a guard against "
                "decompression bombs). Downscale it first."
            ) from exc
        except MemoryError:
            raise
        except Exception as exc:
            raise CXRInputError(f"{what} has a corrupt image header ({type(exc).__name__}: {exc}).") from exc
        with img:
            return _from_pil(img, source_bytes=data, what=what)


def _from_pil(img: Image.Image, source_bytes: bytes | None, what: str) -> np.ndarray:
    """Decodes a PIL image (size-checked first) to a 2-D array at its original bit depth, upright.

    A JPEG above REDUCE_ABOVE_PIXELS is decoded at a reduced DCT scale (``draft``), which never decodes the full size.
    """
    try:
        # inside the try: reading the frame count parses more of the header (TIFF: every IFD), which can fail too
        width, height = img.size
        _check_header_size(width, height, what)
        n_frames = getattr(img, "n_frames", 1)
        if n_frames > 1 and img.format != "MPO":  # MPO: camera JPEG with extra previews; frame 0 is the image
            raise CXRInputError(
                f"{what} has {n_frames} frames/pages; cxr-hub reads single-frame images only. Export one frame."
            )
        factor = _reduce_factor(width, height)
        if factor > 1 and img.format == "JPEG" and source_bytes is not None:  # our own image object, not the caller's
            img.draft(None, (width // factor, height // factor))
        img.load()
        orientation = _exif_orientation(img)
        if source_bytes is not None and _pil_truncates_bit_depth(img, source_bytes):
            return _from_opencv(source_bytes, (height, width), orientation, what)
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        return _pil_to_gray(img)
    except CXRInputError:
        raise
    except MemoryError:
        raise
    except _DECODE_ERRORS as exc:
        raise CXRInputError(
            f"{what} could not be decoded; it is truncated or corrupt ({type(exc).__name__}: {exc}). "
            "Re-export or re-download the image."
        ) from exc
    except Exception as exc:  # unknown decoder failure: still the input's fault, not the caller's code
        raise CXRInputError(f"{what} could not be decoded ({type(exc).__name__}: {exc}).") from exc


def _exif_orientation(img: Image.Image) -> int:
    orientation = img.getexif().get(0x0112, 1)
    return orientation if orientation in _ORIENTATION_OPS else 1


def _pil_truncates_bit_depth(img: Image.Image, data: bytes) -> bool:
    """True when PIL would reduce 16-bit colour/gray+alpha samples to 8 bits (it has no 48/64-bit modes)."""
    if img.mode not in ("RGB", "RGBA", "RGBX", "LA"):
        return False
    if img.format == "PNG" and len(data) >= 26 and data[12:16] == b"IHDR":
        bit_depth, colour_type = data[24], data[25]
        return bit_depth == 16 and colour_type in (2, 4, 6)
    if img.format == "TIFF":
        bits = img.tag_v2.get(258, (8,))  # BitsPerSample
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits, default=8) > 8
    return False


def _from_opencv(data: bytes, shape: tuple[int, int], orientation: int, what: str) -> np.ndarray:
    """Decodes 16-bit colour PNG/TIFF with OpenCV, which keeps all 16 bits (size already checked from the header)."""
    import cv2  # only needed for this rare case; keeps the common path free of OpenCV's start-up cost

    logger.debug("Decoding 16-bit colour image with OpenCV to keep its bit depth.")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # UNCHANGED ignores EXIF
    if decoded is None or decoded.shape[:2] != shape:
        raise CXRInputError(f"{what} could not be decoded as a 16-bit colour image; re-export it.")
    if decoded.ndim == 3:
        # OpenCV orders channels BGR(A); gray+alpha PNGs arrive as BGRA with B = G = R.
        decoded = _rgb_to_gray(decoded[..., 2::-1])
    op = _ORIENTATION_OPS.get(orientation)
    return op(decoded) if op else decoded


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.uint8) * np.uint8(255)
    if mode in ("L", "I", "F") or mode.startswith("I;16"):
        return np.asarray(img)  # I;16 variants come back as (big/little-endian) uint16, values untouched
    if mode in ("LA", "La"):
        return np.asarray(img)[..., 0]  # alpha dropped (La is premultiplied; treated the same, documented as dropped)
    if mode in ("RGB", "RGBA", "RGBX"):
        return _rgb_to_gray(np.asarray(img)[..., :3])
    if mode in ("P", "PA"):
        # Through the palette; RGBA rather than RGB so PIL handles palette transparency without warning.
        return _rgb_to_gray(np.asarray(img.convert("RGBA"))[..., :3])
    # CMYK, YCbCr, LAB, HSV, RGBa, ...: PIL's own conversion to RGB, then luma.
    return _rgb_to_gray(np.asarray(img.convert("RGB")))


def _warn_if_truncated_loading_enabled() -> None:
    # cxr-hub never sets this flag; another library in the process might, and then PIL pads truncated files with
    # gray instead of failing. Say so once rather than change global state behind the caller's back.
    global _truncated_warning_done
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _truncated_warning_done:
        _truncated_warning_done = True
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set by some module; truncated images may load partially "
            "instead of raising CXRInputError."
        )
