"""DICOM: recognising a Part 10 file (:func:`is_dicom`), reading its pixels through the display pipeline (Modality
LUT, then VOI LUT or window; MONOCHROME1 inverted), and naming a missing decoder.

Privacy: DICOM headers carry patient data. Exceptions raised by pydicom may quote element values, so DICOM errors are
re-raised ``from None`` with only the exception type: a traceback logged by a server must not carry patient data
either. pydicom's validation warnings and log records quote values too, hence ``_quiet_pydicom`` around every pydicom
call.

Imports numpy, pydicom (on demand), :mod:`cxr_hub.models` and :mod:`~cxr_hub.io.pixels`.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..models.image_processing_cxr import CXRInputError
from .pixels import _check_header_size, _rgb_to_gray

# the package's logger, as before the split: logging set up for "cxr_hub.io" sees the same records, by the same name
logger = logging.getLogger(__package__)

# DICOM photometric interpretations that become gray here; colour ones go through RGB -> luma.
_DICOM_GRAY = ("MONOCHROME1", "MONOCHROME2")
_DICOM_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
# Defined terms we may name in messages; anything else in the header is not echoed.
_DICOM_KNOWN_PHOTOMETRIC = (*_DICOM_GRAY, *_DICOM_COLOUR, "YBR_PARTIAL_422", "YBR_PARTIAL_420", "HSV", "ARGB", "CMYK")


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
