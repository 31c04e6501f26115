"""Loading chest X-rays from files, bytes, file objects, PIL images and arrays as one float32 gray image.

:func:`load_image` is the single entry point for every user-supplied image. It returns the image at its original
resolution and bit depth (16-bit values stay 16-bit), turns colour into gray, applies EXIF orientation and the DICOM
display pipeline, and raises :class:`CXRInputError` with an actionable message for anything it cannot use.

Privacy: DICOM headers carry patient data. Nothing here logs, prints or puts a DICOM tag value that could identify
a person into an exception message; messages only state technical facts (frame count, image size, transfer syntax).
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .models.image_processing_cxr import MAX_PIXELS, MIN_SIDE, CXRInputError, validate_image_array

__all__ = ["REDUCE_ABOVE_PIXELS", "SUPPORTED_EXTENSIONS", "CXRInputError", "is_dicom", "load_image"]

logger = logging.getLogger(__name__)

#: What :func:`load_image` accepts (anything else raises CXRInputError).
ImageSource: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray

#: File extensions (lower case, with the dot) that :func:`load_image` reads. Files are recognised by content, so an
#: unusual or missing extension still loads; this list is for finding images in folders.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".pgm",
    ".ppm",
    ".dcm",
    ".dicom",
)

_DICOM_EXTENSIONS = (".dcm", ".dicom")

#: Images with more pixels than this (20 MP) are reduced by :func:`load_image`, by the smallest integer factor that
#: brings them under it (an exact box average of f x f blocks; JPEG is decoded at the reduced scale directly). No
#: chest X-ray detector produces that many (43 x 43 cm at 100 um is 18.5 MP), and the method never looks at more than
#: its 1024 x 1024 classifier frame, so a reduced image still gives the same frames to the networks, while a 49 MP
#: upload no longer costs 20 s and 3 GB of memory at its full size in every later step.
REDUCE_ABOVE_PIXELS = 20_000_000

# Only the formats cxr-hub supports: PIL's other plugins (TGA, PCX, ...) have weak magic numbers and would happily
# "identify" random bytes, and every extra parser is extra attack surface for uploaded files.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "PPM")
_FORMATS_TEXT = "PNG, JPEG, BMP, TIFF, PGM/PPM or DICOM"
# Leading bytes of common formats, to name the format of a file PIL could not open (strong magic numbers only).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"RIFF", "RIFF (WebP/AVI/WAV)"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP"),
)

# ITU-R BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)

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

# DICOM photometric interpretations that become gray here; colour ones go through RGB -> luma.
_DICOM_GRAY = ("MONOCHROME1", "MONOCHROME2")
_DICOM_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
# Defined terms we may name in messages; anything else in the header is not echoed.
_DICOM_KNOWN_PHOTOMETRIC = (*_DICOM_GRAY, *_DICOM_COLOUR, "YBR_PARTIAL_422", "YBR_PARTIAL_420", "HSV", "ARGB", "CMYK")

_truncated_warning_done = False


def is_dicom(data: bytes) -> bool:
    """Tells whether ``data`` starts like a DICOM Part 10 file ("DICM" after the 128-byte preamble).

    Args:
        data: the first bytes of a file (at least 132 for a positive answer); any bytes-like object.

    Returns:
        True when bytes 128..131 are ``b"DICM"``. Raw DICOM datasets without the preamble return False;
        :func:`load_image` still reads those when pydicom can parse them.
    """
    try:
        view = memoryview(data)
    except TypeError:
        return False
    return len(view) >= 132 and bytes(view[128:132]) == b"DICM"


def load_image(src: ImageSource, *, source_name: str | None = None) -> np.ndarray:
    """Loads a chest X-ray as a 2-D float32 gray image at its original resolution.

    Values keep the source's scale: 0..255 for 8-bit images, 0..65535 for 16-bit PNG/TIFF, and for DICOM the
    output of the Modality LUT (rescale slope/intercept) followed by the VOI LUT or window, when the file has one.
    The model's preprocessing equalises the histogram, so the absolute scale does not matter downstream.

    Conversions:
        * Colour (RGB, palette, CMYK, YCbCr, RGB DICOM) becomes gray with the ITU-R BT.601 luma weights
          ``0.299 R + 0.587 G + 0.114 B`` computed on the original bit depth (gray stored as RGB stays exact).
        * Alpha channels are dropped: the stored gray/colour values are used as they are, never composited onto a
          background, so a transparent region keeps whatever values it has underneath.
        * Mode "1" (bilevel) maps to 0 and 255.
        * EXIF orientation is applied, so the result is upright as a viewer would show it.
        * DICOM MONOCHROME1 is inverted (mirrored within its value range) so bone is bright as in MONOCHROME2.

    Args:
        src: a path (str or ``os.PathLike``); encoded file contents as ``bytes``/``bytearray``/``memoryview``;
            a binary file object opened with ``"rb"`` (read from its current position); a ``PIL.Image.Image``;
            or a numpy array of shape (H, W), (H, W, 1), or (H, W, 3)/(H, W, 4) RGB/RGBA in uint8/uint16.
            Encoded data may be PNG, JPEG, BMP, TIFF, PGM/PPM or DICOM (recognised by content).
        source_name: how error messages name a path source, as the subject of a sentence (e.g. "The uploaded
            file", "File 'scan.dcm'"); default ``File '<the path>'``. Pass it when messages are shown to someone
            else or written to a report: directory and file names can carry patient names.

    Size:
        Images above :data:`REDUCE_ABOVE_PIXELS` (20 MP) are reduced by the smallest integer factor f that brings
        them under it: each output pixel is the mean of an f x f block (trailing rows/columns that do not fill a block
        are dropped); JPEG is decoded at 1/2, 1/4 or 1/8 scale directly. Pixel-valued results computed from the
        image (areas and widths in pixels) then refer to the reduced image; ratios and fractions do not change.
        Images above 60 MP are refused (a guard against decompression bombs), before any pixel is decoded.

    Returns:
        float32 array of shape (H, W), finite, not constant, with 64 <= H, W and H * W <= 20 megapixels (up to
        60 for an aspect ratio so extreme that reducing it would leave a side under 64).
        Always a new array, never a view of ``src``.

    Raises:
        CXRInputError: the input is not a readable single image (missing file, unsupported or corrupt data,
            truncated file, multi-frame image, missing DICOM decoder), has the wrong shape, is too small or too large,
            contains NaN/inf, or is constant. Messages say what to do and never contain DICOM header values.
    """
    if isinstance(src, np.ndarray):
        arr = _from_array(src)
        out = _reduce_if_huge(validate_image_array(arr))
        # validate_image_array returns its input unchanged when it is already float32; callers must be free to
        # modify the result without touching their own array.
        return out.copy() if np.may_share_memory(out, src) else _finish(out)
    if isinstance(src, Image.Image):
        what = "The PIL image"
        return _finish(validate_image_array(_reduce_if_huge(_decode(_from_pil, src, None, what=what))))
    if isinstance(src, (bytes, bytearray, memoryview)):
        what = "The input data"
        return _finish(validate_image_array(_reduce_if_huge(_decode(_from_bytes, bytes(src), "", what=what))))
    if isinstance(src, (str, os.PathLike)):
        data, path = _read_path(src, source_name)
        what = source_name or f"File '{path}'"
        arr = _decode(_from_bytes, data, path.suffix.lower(), what=what)
        return _finish(validate_image_array(_reduce_if_huge(arr)))
    if callable(getattr(src, "read", None)):
        data = _read_file_object(src)
        name = getattr(src, "name", "")
        suffix = Path(name).suffix.lower() if isinstance(name, str) else ""
        arr = _decode(_from_bytes, data, suffix, what="The file object's data")
        return _finish(validate_image_array(_reduce_if_huge(arr)))
    raise CXRInputError(
        f"Unsupported input type {type(src).__name__}: pass a file path, the file's bytes, a binary file object, "
        "a PIL image or a numpy array."
    )


def _decode(decoder: Any, source: Any, extra: Any, what: str) -> np.ndarray:
    """``decoder(source, extra, what=what)`` with every decoder failure turned into a CXRInputError.

    The specific handlers below name what went wrong; this is the net under them. A decoder can fail in ways no
    handler foresaw (PIL's TIFF plugin raises ``TypeError: Missing dimensions`` for one wrong header byte, and only
    when the frame count is asked for), and a broken file must never surface as a traceback that aborts a batch.
    Only the exception's type is quoted: a DICOM decoder's message can carry header values.
    """
    try:
        return decoder(source, extra, what=what)
    except (CXRInputError, MemoryError):
        raise
    except Exception as exc:
        raise CXRInputError(
            f"{what} could not be decoded ({type(exc).__name__}); it is truncated, corrupt or not a supported "
            "image. Re-export or re-download the image."
        ) from None


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


# --------------------------------------------------------------------------------------------------------- sources


def _read_path(src: str | os.PathLike[str], source_name: str | None) -> tuple[bytes, Path]:
    if isinstance(src, str) and not src.strip():
        raise CXRInputError("Empty file path: pass the path of an image file.")
    name = os.fspath(src)
    if not isinstance(name, str) or "\x00" in name:  # the OS refuses NUL with ValueError, not OSError
        raise CXRInputError("The file path is not a valid path (bytes, or a NUL character); pass a str path.")
    path = Path(src).expanduser()
    subject = source_name or f"File '{path}'"
    try:
        if not path.exists():
            raise CXRInputError(f"{subject} was not found. Check the path and that the file exists.")
        if path.is_dir():
            raise CXRInputError(f"{subject} is a directory, not an image file.")
        return path.read_bytes(), path
    except OSError as exc:
        raise CXRInputError(f"{subject} could not be read: {exc.strerror or type(exc).__name__}.") from exc


def _read_file_object(src: Any) -> bytes:
    try:
        data = src.read()
    except (OSError, ValueError) as exc:  # ValueError: read on a closed file
        raise CXRInputError(f"Could not read from the file object ({type(exc).__name__}); is it open?") from exc
    if isinstance(data, str):
        raise CXRInputError("The file object is open in text mode; open image files in binary mode ('rb').")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CXRInputError(f"The file object's read() returned {type(data).__name__}, expected bytes.")
    return bytes(data)


def _from_array(src: np.ndarray) -> np.ndarray:
    """Squeezes (H, W, 1) and turns uint8/uint16 (H, W, 3|4) into gray; other shapes go to validation as they are."""
    if src.ndim == 3 and src.shape[-1] == 1:
        return src[..., 0]
    if src.ndim == 3 and src.shape[-1] in (3, 4):
        if src.dtype not in (np.uint8, np.uint16):
            raise CXRInputError(
                f"Got a {src.shape} array of dtype {src.dtype}; colour arrays are read as RGB/RGBA only as uint8 or "
                "uint16. Pass a 2-D gray array (H, W) or an integer RGB/RGBA image."
            )
        return _rgb_to_gray(src[..., :3])
    return src


def _from_bytes(data: bytes, suffix: str, what: str) -> np.ndarray:
    if not data:
        raise CXRInputError(f"{what} is empty (0 bytes); the file is not an image or was not saved completely.")
    if is_dicom(data):
        return _from_dicom(data, force=False, what=what)
    if suffix in _DICOM_EXTENSIONS:
        # Files named .dcm without the Part 10 preamble are raw datasets; real images mislabelled .dcm fall through.
        ds_array = _try_forced_dicom(data, what)
        if ds_array is not None:
            return ds_array
    try:
        return _from_encoded_pil(data, what)
    except _NotPILImageError:
        pass
    ds_array = _try_forced_dicom(data, what)
    if ds_array is not None:
        return ds_array
    fmt = next((name for magic, name in _MAGIC if data.startswith(magic)), None)
    if fmt in _PIL_FORMATS:
        # PIL gives up on a header it cannot parse as if the format were unknown; "not supported" would mislead
        raise CXRInputError(
            f"{what} starts like a {fmt} file, but its header is corrupt or the file is truncated ({len(data)} "
            "bytes). Re-export or re-download the image."
        )
    if fmt is not None:
        raise CXRInputError(f"{what} is a {fmt} file, which is not supported: cxr-hub reads {_FORMATS_TEXT} files.")
    raise CXRInputError(f"{what} is not a supported image: cxr-hub reads {_FORMATS_TEXT} files.")


# ------------------------------------------------------------------------------------------------------------- PIL


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


# ----------------------------------------------------------------------------------------------------------- DICOM
#
# Exceptions raised by pydicom may quote element values, so DICOM errors are re-raised ``from None`` with only the
# exception type: a traceback logged by a server must not carry patient data either. pydicom's validation warnings
# and log records quote values too, hence _quiet_pydicom around every pydicom call.


class _DropThisThread(logging.Filter):
    """Drops log records emitted by one thread (ours), leaving other threads' pydicom logging alone."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silences pydicom's warnings and log records (which can quote tag values) for this call only."""
    loggers = [
        logger_
        for name, logger_ in list(logging.Logger.manager.loggerDict.items())
        if (name == "pydicom" or name.startswith("pydicom.")) and isinstance(logger_, logging.Logger)
    ]
    loggers.append(logging.getLogger("pydicom"))
    drop = _DropThisThread()
    for logger_ in loggers:
        logger_.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger_ in loggers:
            logger_.removeFilter(drop)


def _try_forced_dicom(data: bytes, what: str) -> np.ndarray | None:
    """Reads data without the DICM preamble as DICOM; None when it is not a dataset with pixel data."""
    from pydicom import dcmread

    with _quiet_pydicom():
        try:
            ds = dcmread(io.BytesIO(data), force=True)
            has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        except MemoryError:
            raise
        except Exception:  # not DICOM at all: the caller reports "not a supported image"
            return None
    if not has_pixels:
        return None
    return _dicom_to_array(ds, what)


def _from_dicom(data: bytes, force: bool, what: str) -> np.ndarray:
    from pydicom import dcmread

    with _quiet_pydicom():
        try:
            ds = dcmread(io.BytesIO(data), force=force)
        except MemoryError:
            raise
        except Exception as exc:
            raise CXRInputError(
                f"{what} looks like DICOM but could not be parsed ({type(exc).__name__}); it is truncated or corrupt."
            ) from None
    return _dicom_to_array(ds, what)


def _dicom_to_array(ds: Any, what: str) -> np.ndarray:
    with _quiet_pydicom():
        try:
            return _dicom_pixels(ds, what)
        except CXRInputError:
            raise
        except MemoryError:
            raise
        except Exception as exc:
            raise CXRInputError(
                f"{what}: the DICOM pixel data could not be decoded ({type(exc).__name__}); the file is truncated, "
                "corrupt or uses an unusual encoding."
            ) from None


def _dicom_pixels(ds: Any, what: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise CXRInputError(
            f"{what} is a DICOM file without an image (no Pixel Data); it may be a report or a structured document."
        )
    frames = _dicom_int(ds, "NumberOfFrames", default=1, what=what)
    if frames > 1:
        raise CXRInputError(
            f"{what}: DICOM file has {frames} frames; cxr-hub reads single-frame images only. Export one frame."
        )
    rows = _dicom_int(ds, "Rows", default=None, what=what)
    columns = _dicom_int(ds, "Columns", default=None, what=what)
    _check_header_size(columns, rows, f"{what} (DICOM)")  # before PixelData is decoded

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in (*_DICOM_GRAY, *_DICOM_COLOUR):
        shown = f"'{photometric}'" if photometric in _DICOM_KNOWN_PHOTOMETRIC else "this"
        raise CXRInputError(
            f"{what}: DICOM photometric interpretation {shown} is not supported; cxr-hub reads MONOCHROME1/2 and "
            "RGB/YBR/palette colour images. Convert the image to MONOCHROME2."
        )

    _ensure_transfer_syntax(ds)
    _check_decoder(ds, what)
    arr = ds.pixel_array  # pydicom converts YBR to RGB by default

    if photometric in _DICOM_GRAY:
        if arr.ndim != 2:
            raise CXRInputError(f"{what}: a gray DICOM image must have one sample per pixel; got shape {arr.shape}.")
        arr = apply_modality_lut(arr, ds)
        try:
            arr = apply_voi_lut(arr, ds, index=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            # A broken window is no reason to refuse the image: the model equalises the histogram anyway.
            logger.warning("DICOM VOI LUT/window is invalid and was ignored.")
        arr = np.asarray(arr, dtype=np.float32)
        if photometric == "MONOCHROME1":
            # MONOCHROME1 shows low values as white. Mirror within the data range so bone is bright and the range is
            # unchanged. Presentation LUT Shape is deliberately ignored: DX files set INVERSE exactly when they are
            # MONOCHROME1, so honouring it as well would invert twice.
            arr = (arr.max() + arr.min()) - arr
        return arr

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise CXRInputError(f"{what}: expected a colour DICOM image with 3 samples per pixel; got shape {arr.shape}.")
    return _rgb_to_gray(arr)


def _dicom_int(ds: Any, keyword: str, default: int | None, what: str) -> int:
    value = ds.get(keyword, None)
    if value is None or value == "":
        if default is None:
            raise CXRInputError(f"{what}: the DICOM file lacks {keyword}, so its image size is unknown.")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CXRInputError(f"{what}: the DICOM {keyword} element is not a valid number.") from None


def _ensure_transfer_syntax(ds: Any) -> None:
    """Raw datasets (no file meta) need a transfer syntax for pydicom's decoder; take it from how they were read."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif little is False:
        meta.TransferSyntaxUID = ExplicitVRBigEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _check_decoder(ds: Any, what: str) -> None:
    """Turns 'no plugin for this compression' into a message that names the package to install."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(ds.file_meta.TransferSyntaxUID))
    # Only a registered transfer syntax is named: an unknown UID string is file content and is not echoed.
    name = uid.name if uid.is_transfer_syntax else "an unrecognised transfer syntax"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise CXRInputError(
            f"{what}: DICOM pixel data uses {name}, which pydicom cannot decode. "
            "Convert the file to an uncompressed transfer syntax (e.g. with dcmdjpeg/gdcmconv)."
        ) from None
    if decoder.is_available:
        return
    hint = "pip install pylibjpeg pylibjpeg-libjpeg"
    if "2000" in name or "HTJ2K" in name:
        hint = "pip install pylibjpeg pylibjpeg-openjpeg"
    elif "RLE" in name:
        hint = "pip install pylibjpeg pylibjpeg-rle"
    options = "; ".join(decoder.missing_dependencies) or "none listed"
    raise CXRInputError(
        f"{what}: DICOM pixel data is compressed with {name} and no decoder for it is installed. Install one, "
        f"e.g. `{hint}` (pydicom's options: {options})."
    )
