""":func:`load_image`, the one entry point for every user-supplied image: the sources it reads (a path, bytes, a
binary file object, a PIL image, a numpy array) and the dispatch by content to the raster or the DICOM decoder.

Imports numpy, PIL, :mod:`cxr_hub.models` and the other modules of :mod:`cxr_hub.io` (pixels, raster, dicom).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import numpy as np
from PIL import Image

from ..models.image_processing_cxr import CXRInputError, validate_image_array
from .dicom import _from_dicom, _try_forced_dicom, is_dicom
from .pixels import _finish, _reduce_if_huge, _rgb_to_gray
from .raster import _PIL_FORMATS, _from_encoded_pil, _from_pil, _NotPILImageError

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
