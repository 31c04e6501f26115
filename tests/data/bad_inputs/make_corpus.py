"""Writes the hostile-input corpus next to this script: small files that cxr-hub must refuse with CXRInputError.

Each case is built deterministically from fixed seeds and hand-made headers, so re-running the script reproduces
the corpus (byte for byte with the pinned Pillow, pydicom and zlib). ``CASES`` maps each file name to a builder and
a fragment of the message :func:`cxr_hub.load_image` must give; ``tests/test_hostile_inputs.py`` runs every file
through ``load_image``, the pipeline and the app's handler. Every file stays below 50 KB.

Usage::

    python tests/data/bad_inputs/make_corpus.py          # rewrites the files in this folder
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

HERE = Path(__file__).resolve().parent
MAX_BYTES = 50_000


def _gray(h: int = 96, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w), dtype=np.uint8)


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, rows: bytes, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A PNG with a hand-written IHDR (any claimed size) over ``rows`` (raw scanlines, filter bytes included)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


def _dicom(
    pixels: np.ndarray | None = None,
    rows: int | None = None,
    columns: int | None = None,
    pixel_data: bytes | None = None,
    frames: int = 1,
    with_pixels: bool = True,
) -> bytes:
    """A DX DICOM (Part 10); ``rows``/``columns``/``pixel_data`` override what ``pixels`` would give."""
    pixels = (_gray().astype(np.uint16) * 16) if pixels is None else pixels
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    ds.Modality = "DX"
    ds.PatientName = "Corpus^Hostile"  # never to be echoed by any error message
    ds.Rows = pixels.shape[0] if rows is None else rows
    ds.Columns = pixels.shape[1] if columns is None else columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if with_pixels:
        ds.PixelData = pixels.astype("<u2").tobytes() * frames if pixel_data is None else pixel_data
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _flip_bytes(data: bytes, start: int, seed: int, count: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for pos in rng.integers(start, len(out), size=count):
        out[pos] ^= 0xFF
    return bytes(out)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A valid small JPEG whose SOF0 frame header is rewritten to claim ``width`` x ``height``."""
    data = bytearray(_encode(Image.fromarray(_gray()), "JPEG", quality=50))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.fromarray(_gray()), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def _tiff_float(value: float) -> bytes:
    arr = _gray().astype(np.float32)
    arr[10:20, 10:20] = value
    return _encode(Image.fromarray(arr, mode="F"), "TIFF")


def _multipage_tiff() -> bytes:
    first, second = Image.fromarray(_gray(seed=1)), Image.fromarray(_gray(seed=2))
    return _encode(first, "TIFF", save_all=True, append_images=[second])


def _truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


#: file name -> (builder, a fragment of load_image's message, case-insensitive)
CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty.png": (lambda: b"", "empty"),
    "random_bytes.png": (lambda: np.random.default_rng(1).bytes(4096), "not a supported image"),
    "random_bytes.dcm": (lambda: np.random.default_rng(2).bytes(4096), "not a supported image"),
    "text_report.jpg": (lambda: b"CHEST X-RAY REPORT\nNo acute findings.\n" * 30, "not a supported image"),
    "gif_disguised.png": (lambda: _encode(Image.fromarray(_gray()), "GIF"), "GIF file, which is not supported"),
    "png_magic_only.png": (lambda: b"\x89PNG\r\n\x1a\n", "starts like a PNG file"),
    "truncated.png": (lambda: _truncated(_encode(Image.fromarray(_gray()), "PNG")), "truncated or corrupt"),
    "truncated.jpg": (lambda: _truncated(_encode(Image.fromarray(_gray()), "JPEG")), "truncated or corrupt"),
    "truncated.dcm": (lambda: _truncated(_dicom(), 0.3), "DICOM"),
    "corrupt_idat.png": (lambda: _flip_bytes(_encode(Image.fromarray(_gray()), "PNG"), 41, seed=3), "corrupt"),
    "corrupt_scan.jpg": (lambda: _flip_bytes(_encode(Image.fromarray(_gray()), "JPEG"), 700, seed=4), "corrupt"),
    "png_bomb_20000x20000.png": (
        lambda: _png(20_000, 20_000, b"\x00" + bytes(20_000)),  # header claims 400 MP, payload is one row
        "limit",
    ),
    "png_bomb_9000x7000.png": (lambda: _png(9_000, 7_000, b"\x00" + bytes(9_000)), "limit"),
    "jpeg_bomb_65000x65000.jpg": (lambda: _jpeg_claiming(65_000, 65_000), "limit"),
    "bmp_bomb.bmp": (lambda: _bmp_claiming(30_000, 30_000), "limit"),
    "dicom_bomb_60000x60000.dcm": (lambda: _dicom(rows=60_000, columns=60_000, pixel_data=bytes(64)), "limit"),
    "png_1x4000.png": (lambda: _png(1, 4000, b"\x00\x80" * 4000), "at least 64"),
    "png_4000x1.png": (lambda: _png(4000, 1, b"\x00" + bytes(range(256)) * 15 + bytes(160)), "at least 64"),
    "png_zero_width.png": (lambda: _png(0, 100, b""), "starts like a PNG file"),
    "constant.png": (lambda: _encode(Image.fromarray(np.full((96, 80), 128, np.uint8)), "PNG"), "constant"),
    "constant.dcm": (lambda: _dicom(np.full((96, 80), 700, np.uint16)), "constant"),
    "thumbnail_32x32.jpg": (lambda: _encode(Image.fromarray(_gray(32, 32)), "JPEG"), "at least 64"),
    "nan.tiff": (lambda: _tiff_float(float("nan")), "NaN or infinite"),
    "inf.tiff": (lambda: _tiff_float(float("inf")), "NaN or infinite"),
    "multipage.tiff": (_multipage_tiff, "single-frame"),
    "multiframe.dcm": (lambda: _dicom(frames=3), "frames"),
    "dicom_no_pixels.dcm": (lambda: _dicom(with_pixels=False), "without an image"),
    "dicom_short_pixels.dcm": (lambda: _dicom(pixel_data=bytes(100)), "could not be decoded"),
    "dicom_zero_rows.dcm": (lambda: _dicom(rows=0, pixel_data=bytes(100)), "at least 64"),
}


def main(folder: Path = HERE) -> list[Path]:
    """Writes every case into ``folder``; returns the paths. Raises if a case grew past :data:`MAX_BYTES`."""
    written = []
    for name, (build, _) in CASES.items():
        data = build()
        if len(data) > MAX_BYTES:
            raise ValueError(f"{name} is {len(data)} bytes; corpus files must stay below {MAX_BYTES}.")
        path = folder / name
        path.write_bytes(data)
        written.append(path)
    return written


if __name__ == "__main__":
    paths = main()
    sys.stdout.write(f"wrote {len(paths)} files to {HERE}\n")
