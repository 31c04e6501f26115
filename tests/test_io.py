"""Tests for cxr_hub.io.load_image: every format, mode and input kind, DICOM handling, and the bad-input table.

Everything is generated in tmp_path with seeded numpy; no network, no data set.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

import cxr_hub.io as cxr_io
import cxr_hub.io.load as io_load
import cxr_hub.io.pixels as io_pixels
from cxr_hub.io import SUPPORTED_EXTENSIONS, CXRInputError, is_dicom, load_image
from cxr_hub.models import image_processing_cxr

H, W = 72, 96  # non-square so that transposes and rotations show in the shape
PHI = ("Doe^Jane", "Doe", "Jane", "SECRET-123", "19700101")


# ----------------------------------------------------------------------------------------------------------- helpers


def gray(dtype: Any = np.uint8, shape: tuple[int, ...] = (H, W), seed: int = 0) -> np.ndarray:
    """Random non-constant image spanning the dtype's full range (min and max both present)."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    arr = rng.integers(0, top, size=shape, endpoint=True).astype(dtype)
    arr.flat[0], arr.flat[1] = 0, top
    return arr


def encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_16bit(samples: np.ndarray, colour_type: int) -> bytes:
    """Hand-made 16-bit PNG (PIL cannot write 16-bit colour); samples is (H, W, channels)."""
    h, w = samples.shape[:2]
    big = samples.astype(">u2")
    raw = b"".join(b"\x00" + big[i].tobytes() for i in range(h))  # filter type 0 on every row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def with_exif_orientation(png: bytes, orientation: int) -> bytes:
    """Inserts an eXIf chunk carrying only the Orientation tag right after IHDR."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return png[:33] + png_chunk(b"eXIf", exif.tobytes()[6:]) + png[33:]  # tobytes() starts with b"Exif\0\0"


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrites the IHDR width/height (and its CRC) of a valid PNG: a tiny file that claims a huge image."""
    ihdr = bytearray(png[12:29])  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    return png[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + png[33:]


def make_dicom(
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    bits_stored: int = 12,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rows: int | None = None,
    columns: int | None = None,
    pixel_data: bytes | None = None,
    file_meta: bool = True,
    **elements: Any,
) -> bytes:
    """A minimal single- or multi-frame DICOM (Part 10 unless file_meta=False) as bytes."""
    if pixels is None:
        pixels = gray(np.uint16, seed=1) % (1 << bits_stored)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.Modality = "DX"
    ds.Rows = rows if rows is not None else pixels.shape[0]
    ds.Columns = columns if columns is not None else pixels.shape[1]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored if pixels.dtype.itemsize == 2 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    little = pixels.astype(pixels.dtype.newbyteorder("<"))
    ds.PixelData = pixel_data if pixel_data is not None else little.tobytes() * frames
    buf = io.BytesIO()
    if file_meta:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = transfer_syntax
        ds.file_meta = meta
        ds.save_as(buf, enforce_file_format=True)
    else:
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def messages(exc: BaseException) -> str:
    """Every message a traceback of exc would print (the cause/context chain as Python shows it)."""
    out = []
    seen: BaseException | None = exc
    while seen is not None:
        out.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- module surface


def test_public_surface() -> None:
    assert set(cxr_io.__all__) == {
        "CXRInputError",
        "load_image",
        "SUPPORTED_EXTENSIONS",
        "REDUCE_ABOVE_PIXELS",
        "is_dicom",
    }
    assert CXRInputError is image_processing_cxr.CXRInputError
    assert all(ext.startswith(".") and ext == ext.lower() for ext in SUPPORTED_EXTENSIONS)
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"} <= set(SUPPORTED_EXTENSIONS)


def test_is_dicom() -> None:
    assert is_dicom(make_dicom())
    assert is_dicom(bytearray(b"\0" * 128 + b"DICM"))
    assert not is_dicom(b"\0" * 128 + b"DICX")
    assert not is_dicom(b"DICM")
    assert not is_dicom(encode(Image.fromarray(gray()), "PNG"))
    assert not is_dicom(b"")


def test_global_pil_state_untouched(tmp_path: Path) -> None:
    filters_before = list(warnings.filters)
    max_pixels = Image.MAX_IMAGE_PIXELS
    load_image(write(tmp_path, "a.png", encode(Image.fromarray(gray()), "PNG")))
    with pytest.raises(CXRInputError):
        load_image(patch_png_size(encode(Image.fromarray(gray()), "PNG"), 10_000, 9_500))
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    assert max_pixels == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters_before


# ------------------------------------------------------------------------------------------------ formats, modes


def test_png_8bit_gray_exact(tmp_path: Path) -> None:
    pixels = gray()
    path = write(tmp_path, "a.png", encode(Image.fromarray(pixels), "PNG"))
    for src in (path, str(path)):
        out = load_image(src)
        assert out.dtype == np.float32 and out.shape == (H, W)
        np.testing.assert_array_equal(out, pixels)


def test_png_16bit_values_preserved(tmp_path: Path) -> None:
    pixels = gray(np.uint16)
    img = Image.fromarray(pixels)
    assert img.mode == "I;16"
    out = load_image(write(tmp_path, "a.png", encode(img, "PNG")))
    assert out.max() == 65535.0
    np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["8bit", "16bit"])
def test_tiff_exact(tmp_path: Path, dtype: Any) -> None:
    pixels = gray(dtype)
    out = load_image(write(tmp_path, "a.tiff", encode(Image.fromarray(pixels), "TIFF")))
    np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize(("fmt", "name"), [("BMP", "a.bmp"), ("PPM", "a.pgm")])
def test_lossless_8bit_formats(tmp_path: Path, fmt: str, name: str) -> None:
    pixels = gray()
    np.testing.assert_array_equal(load_image(write(tmp_path, name, encode(Image.fromarray(pixels), fmt))), pixels)


def test_jpeg_matches_pil_decode(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jpg", encode(Image.fromarray(gray()), "JPEG", quality=90))
    with Image.open(path) as img:
        expected = np.asarray(img)
    np.testing.assert_array_equal(load_image(path), expected)


def test_rgb_uses_bt601_luma(tmp_path: Path) -> None:
    rgb = gray(shape=(H, W, 3))
    out = load_image(write(tmp_path, "a.png", encode(Image.fromarray(rgb), "PNG")))
    np.testing.assert_allclose(out, luma(rgb), rtol=1e-5, atol=1e-3)


def test_gray_stored_as_rgb_is_exact(tmp_path: Path) -> None:
    pixels = gray()
    rgb = np.repeat(pixels[..., None], 3, axis=-1)
    np.testing.assert_array_equal(load_image(encode(Image.fromarray(rgb), "PNG")), pixels)


def test_rgba_alpha_is_dropped_not_composited() -> None:
    rgb = gray(shape=(H, W, 3))
    alpha = gray(seed=5)
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
    out = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_allclose(out, luma(rgb), rtol=1e-5, atol=1e-3)


def test_la_alpha_is_dropped() -> None:
    pixels, alpha = gray(), gray(seed=3)
    img = Image.merge("LA", [Image.fromarray(pixels), Image.fromarray(alpha)])
    np.testing.assert_array_equal(load_image(encode(img, "PNG")), pixels)


def test_palette_goes_through_the_palette() -> None:
    rng = np.random.default_rng(7)
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    index = gray(seed=4)
    img = Image.fromarray(index, "L").convert("P")  # makes a P image; the palette is replaced next
    img.putpalette(palette.ravel().tolist())
    img.putdata(index.ravel().tolist())
    data = encode(img, "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "P"
    np.testing.assert_allclose(load_image(data), luma(palette[index]), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk(fmt: str) -> None:
    cmyk = Image.fromarray(gray(shape=(H, W, 4)), "CMYK")
    data = encode(cmyk, fmt)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "CMYK"
        expected = luma(np.asarray(img.convert("RGB")))
    np.testing.assert_allclose(load_image(data), expected, rtol=1e-5, atol=1e-3)


def test_bilevel_mode_1() -> None:
    bits = gray() > 127
    img = Image.fromarray(bits)
    assert img.mode == "1"
    np.testing.assert_array_equal(load_image(encode(img, "PNG")), bits * 255.0)


@pytest.mark.parametrize(
    ("pixels", "mode"),
    [
        (gray(np.uint16).astype(">u2"), "I;16B"),
        (gray(np.uint16).astype(np.int32) - 30_000, "I"),
        ((gray(np.uint16) / 7.0).astype(np.float32), "F"),
    ],
    ids=["I;16B", "I", "F"],
)
def test_high_depth_pil_modes(pixels: np.ndarray, mode: str) -> None:
    img = Image.fromarray(pixels)
    assert img.mode == mode
    np.testing.assert_array_equal(load_image(img), pixels.astype(np.float32))
    if mode != "I;16B":  # TIFF round trip for the modes PIL writes directly
        np.testing.assert_array_equal(load_image(encode(img, "TIFF")), pixels.astype(np.float32))


def test_16bit_colour_png_and_tiff_keep_16_bits() -> None:
    rgb = gray(np.uint16, shape=(H, W, 3))
    expected = luma(rgb)
    png = png_16bit(rgb, colour_type=2)
    with Image.open(io.BytesIO(png)) as img:
        assert img.mode == "RGB"  # PIL alone would cut this to 8 bits
    np.testing.assert_allclose(load_image(png), expected, rtol=1e-5, atol=1e-2)
    ok, tiff = cv2.imencode(".tiff", rgb[..., ::-1])  # OpenCV writes BGR
    assert ok
    np.testing.assert_allclose(load_image(tiff.tobytes()), expected, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("colour_type", [4, 6], ids=["gray-alpha", "rgba"])
def test_16bit_with_alpha_keeps_16_bits(colour_type: int) -> None:
    pixels = gray(np.uint16)
    channels = 2 if colour_type == 4 else 4
    samples = np.stack([pixels] * (channels - 1) + [gray(np.uint16, seed=9)], axis=-1)
    np.testing.assert_array_equal(load_image(png_16bit(samples, colour_type)), pixels)


def test_exif_orientation_jpeg_rotates(tmp_path: Path) -> None:
    pixels = np.full((H, W), 40, np.uint8)
    pixels[:16, :16] = 250  # bright top-left corner of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = load_image(write(tmp_path, "a.jpg", encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)))
    assert out.shape == (W, H)
    corners = {"tl": out[:16, :16], "tr": out[:16, -16:], "bl": out[-16:, :16], "br": out[-16:, -16:]}
    assert max(corners, key=lambda k: corners[k].mean()) == "tr"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_16bit_colour_path_matches_pil(orientation: int) -> None:
    pixels = gray(np.uint16)
    via_pil = load_image(with_exif_orientation(encode(Image.fromarray(pixels), "PNG"), orientation))
    rgb16 = with_exif_orientation(png_16bit(np.stack([pixels] * 3, axis=-1), colour_type=2), orientation)
    np.testing.assert_array_equal(load_image(rgb16), via_pil)
    with Image.open(io.BytesIO(encode(Image.fromarray(pixels), "PNG"))) as img:
        img.getexif()[0x0112] = orientation
        expected = np.asarray(ImageOps.exif_transpose(img))
    np.testing.assert_array_equal(via_pil, expected)


# ---------------------------------------------------------------------------------------------------- input kinds


def test_bytes_file_object_and_pil_inputs(tmp_path: Path) -> None:
    pixels = gray(np.uint16)
    data = encode(Image.fromarray(pixels), "PNG")
    path = write(tmp_path, "a.png", data)
    with path.open("rb") as fh:
        from_file = load_image(fh)
    with Image.open(path) as img:
        from_pil = load_image(img)
    for out in (load_image(data), load_image(bytearray(data)), load_image(memoryview(data)), from_file, from_pil):
        np.testing.assert_array_equal(out, pixels)
    np.testing.assert_array_equal(load_image(io.BytesIO(data)), pixels)


@pytest.mark.parametrize(
    "pixels",
    [gray(), gray(np.uint16), gray()[..., None], gray(shape=(H, W)).astype(np.float64), gray() > 100],
    ids=["uint8", "uint16", "HxWx1", "float64", "bool"],
)
def test_gray_array_inputs(pixels: np.ndarray) -> None:
    out = load_image(pixels)
    assert out.dtype == np.float32 and out.shape == (H, W)
    np.testing.assert_array_equal(out, pixels.reshape(H, W).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [3, 4])
def test_colour_array_inputs(dtype: Any, channels: int) -> None:
    arr = gray(dtype, shape=(H, W, channels))
    np.testing.assert_allclose(load_image(arr), luma(arr[..., :3]), rtol=1e-5, atol=1e-2)


def test_result_never_aliases_the_input() -> None:
    pixels = gray().astype(np.float32)
    out = load_image(pixels)
    out[0, 0] = -1
    assert pixels[0, 0] == 0
    from_f = load_image(Image.fromarray(pixels))
    assert from_f.flags.writeable and from_f.flags.c_contiguous


# ---------------------------------------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_exact(tmp_path: Path) -> None:
    pixels = gray(np.uint16, seed=1) % 4096
    data = make_dicom(pixels)
    for src in (write(tmp_path, "a.dcm", data), write(tmp_path, "no_extension", data), data, io.BytesIO(data)):
        np.testing.assert_array_equal(load_image(src), pixels)


def test_dicom_monochrome1_is_inverted() -> None:
    pixels = gray(np.uint16, seed=1) % 4096
    pixels[0, 0], pixels[1, 1] = 100, 3000  # dark and bright stored values
    mono2 = load_image(make_dicom(pixels, photometric="MONOCHROME2"))
    mono1 = load_image(make_dicom(pixels, photometric="MONOCHROME1"))
    assert mono2[1, 1] > mono2[0, 0]
    assert mono1[1, 1] < mono1[0, 0]
    np.testing.assert_array_equal(mono1, mono2.max() + mono2.min() - mono2)


def test_dicom_rescale_slope_intercept() -> None:
    pixels = gray(np.uint16, seed=1) % 4096
    out = load_image(make_dicom(pixels, RescaleSlope="2", RescaleIntercept="-1024"))
    np.testing.assert_array_equal(out, 2.0 * pixels - 1024.0)


def test_dicom_window_center_width() -> None:
    pixels = gray(np.uint16, seed=1) % 4096
    pixels[0, :4] = [0, 800, 1000, 4000]
    out = load_image(make_dicom(pixels, WindowCenter="1000", WindowWidth="500"))
    # DICOM PS3.3 C.11.2.1.2.1 linear window onto the 12-bit output range [0, 4095]
    expected_mid = ((np.array([800, 1000]) - 999.5) / 499 + 0.5) * 4095
    np.testing.assert_allclose(out[0, :4], [0.0, *expected_mid, 4095.0], rtol=1e-6)
    assert out.min() == 0.0 and out.max() == 4095.0


def test_dicom_invalid_window_is_ignored() -> None:
    pixels = gray(np.uint16, seed=1) % 4096
    np.testing.assert_array_equal(load_image(make_dicom(pixels, WindowCenter="1000", WindowWidth="0")), pixels)


def test_dicom_raw_dataset_without_preamble(tmp_path: Path) -> None:
    pixels = gray(np.uint16, seed=1) % 4096
    data = make_dicom(pixels, file_meta=False)
    assert not is_dicom(data)
    np.testing.assert_array_equal(load_image(data), pixels)
    np.testing.assert_array_equal(load_image(write(tmp_path, "raw.dcm", data)), pixels)


def test_dicom_rgb_becomes_gray() -> None:
    rgb = gray(shape=(H, W, 3))
    np.testing.assert_allclose(load_image(make_dicom(rgb, photometric="RGB")), luma(rgb), rtol=1e-5, atol=1e-3)


def test_dicom_palette_colour() -> None:
    rng = np.random.default_rng(11)
    lut = rng.integers(0, 65536, size=(3, 256), dtype=np.uint16)
    index = gray()
    luts = {}
    for colour, table in zip(("Red", "Green", "Blue"), lut, strict=True):
        luts[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        luts[f"{colour}PaletteColorLookupTableData"] = table.astype("<u2").tobytes()
    out = load_image(make_dicom(index, photometric="PALETTE COLOR", **luts))
    np.testing.assert_allclose(out, luma(lut.T[index]), rtol=1e-5, atol=1e-2)


def test_dicom_missing_decoder_names_the_package() -> None:
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    data = make_dicom(transfer_syntax=JPEGLSLossless, pixel_data=encapsulate([b"\xff\xd8" + b"\0" * 64]))
    with pytest.raises(CXRInputError, match="pylibjpeg") as info:
        load_image(data)
    assert "JPEG-LS" in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"frames": 3}, "3 frames"),
        ({"rows": 32, "columns": 32, "pixel_data": b"\0" * 32 * 32 * 2}, "at least 64"),
        ({"rows": 65535, "columns": 65535}, "megapixels"),  # header checked before the (short) pixel data is read
        ({"pixel_data": b"\0" * 100}, "could not be decoded"),
        ({"photometric": "CMYK"}, "not supported"),
        ({"photometric": "Doe^Jane"}, "not supported"),
        ({"transfer_syntax": JPEGLSLossless, "pixel_data": encapsulate([b"Doe^Jane SECRET-123"])}, "DICOM"),
    ],
    ids=["multi-frame", "too-small", "too-large", "short-pixel-data", "cmyk", "junk-photometric", "compressed"],
)
def test_dicom_errors_never_reveal_header_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, overrides: dict[str, Any], match: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # writing the deliberately invalid values warns (with the value) here
        data = make_dicom(PatientName="Doe^Jane", PatientID="SECRET-123", PatientBirthDate="19700101", **overrides)
    path = write(tmp_path, "study.dcm", data)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for src in (path, data):
            with pytest.raises(CXRInputError, match=match) as info:
                load_image(src)
            text = messages(info.value)
            assert not any(secret in text for secret in PHI), text
    logged = caplog.text + "".join(str(w.message) for w in caught)
    assert not any(secret in logged for secret in PHI)


def test_dicom_junk_in_technical_tags_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    pixels = gray(np.uint16, seed=1) % 4096
    valid = make_dicom(pixels, PatientName="Doe^Jane", WindowCenter="1234567890", WindowWidth="400")
    assert valid.count(b"1234567890") == 1
    data = valid.replace(b"1234567890", b"SECRET-123")  # pydicom refuses to write this, so patch the bytes
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load_image(data)
    np.testing.assert_array_equal(out, pixels)  # the unusable window is skipped, the image still loads
    logged = caplog.text + "".join(str(w.message) for w in caught)
    assert not any(secret in logged for secret in PHI), logged


def test_dicom_pydicom_warnings_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    # pydicom warns *and logs* "A value of '0' for (0028,0008) 'Number of Frames' is invalid": a tag value in a log.
    pixels = gray(np.uint16, seed=1) % 4096
    data = make_dicom(pixels, NumberOfFrames="0")
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_array_equal(load_image(data), pixels)
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]
    assert not caught
    assert not any(f.__class__.__name__ == "_DropThisThread" for f in logging.getLogger("pydicom").filters)


def test_dicom_without_pixel_data() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = "1.2.3"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(CXRInputError, match="without an image") as info:
        load_image(buf.getvalue())
    assert "Doe" not in messages(info.value)


# ------------------------------------------------------------------------------------------------------ bad input


def _png(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels), "PNG")


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _text_mode_file(tmp_path: Path) -> Any:
    path = write(tmp_path, "notes.txt", b"hello")
    return path.open("r")  # closed by pytest's tmp_path cleanup at worst; read() returns str


def _multipage_tiff() -> bytes:
    first, second = Image.fromarray(gray()), Image.fromarray(gray(seed=2))
    return encode(first, "TIFF", save_all=True, append_images=[second])


BAD_INPUTS: list[tuple[str, Callable[[Path], Any], str]] = [
    ("random-bytes", lambda p: np.random.default_rng(0).bytes(4096), "not a supported image"),
    ("text-file", lambda p: write(p, "notes.txt", b"Chest X-ray report:\nno findings.\n" * 20), "not a supported"),
    ("empty-bytes", lambda p: b"", "empty"),
    ("empty-file", lambda p: write(p, "empty.png", b""), "empty"),
    ("missing-path", lambda p: p / "nope.png", "not found"),
    ("missing-str-path", lambda p: str(p / "nope.dcm"), "not found"),
    ("directory", lambda p: p, "directory"),
    ("truncated-png", lambda p: _half(_png(gray())), "truncated or corrupt"),
    ("truncated-jpeg", lambda p: _half(encode(Image.fromarray(gray()), "JPEG")), "truncated or corrupt"),
    ("truncated-dicom", lambda p: _half(make_dicom()), "DICOM"),
    ("constant-image", lambda p: _png(np.full((H, W), 7, np.uint8)), "constant"),
    ("32x32-image", lambda p: _png(gray(shape=(32, 32))), "at least 64"),
    ("multi-page-tiff", lambda p: _multipage_tiff(), "single-frame"),
    ("3d-volume", lambda p: gray(shape=(5, H, W)), "2-D"),
    ("4d-array", lambda p: gray(shape=(2, H, W, 3)), "2-D"),
    ("float-rgb-array", lambda p: gray(shape=(H, W, 3)).astype(np.float32), "uint8 or uint16"),
    ("nan-array", lambda p: np.where(gray() > 100, np.nan, 1.0), "NaN"),
    ("inf-array", lambda p: np.where(gray() > 100, np.inf, 1.0), "infinite"),
    ("constant-array", lambda p: np.zeros((H, W)), "constant"),
    ("string-array", lambda p: np.full((H, W), "a"), "numeric"),
    ("none", lambda p: None, "Unsupported input type NoneType"),
    ("int", lambda p: 42, "Unsupported input type int"),
    ("dict", lambda p: {"image": 1}, "Unsupported input type dict"),
    ("list", lambda p: [[1, 2], [3, 4]], "Unsupported input type list"),
    ("text-mode-file", _text_mode_file, "binary mode"),
]


@pytest.mark.parametrize(("make", "match"), [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_raises_cxr_input_error(tmp_path: Path, make: Callable[[Path], Any], match: str) -> None:
    src = make(tmp_path)
    try:
        with pytest.raises(CXRInputError, match=match):
            load_image(src)
    finally:
        if hasattr(src, "close"):
            src.close()


@pytest.mark.parametrize(
    ("width", "height"),
    [(20_000, 20_000), (10_000, 9_500), (8_000, 8_000)],
    ids=["400MP-pil-error", "95MP-pil-warning", "64MP-below-pil-limit"],
)
def test_huge_png_header_fails_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int, height: int
) -> None:
    decoded = []
    original_load = ImageFile.ImageFile.load

    def spy_load(self: ImageFile.ImageFile) -> Any:
        decoded.append(self.size)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    load_image(_png(gray()))
    assert decoded and decoded[0] == (W, H)  # the spy sees real decodes
    decoded.clear()
    data = patch_png_size(_png(gray()), width, height)
    for src in (data, write(tmp_path, "bomb.png", data)):
        with pytest.raises(CXRInputError, match="limit"):
            load_image(src)
    assert decoded == []


# ------------------------------------------------------------------------------------- decoder failures, huge images


def _tiff_without_dimensions() -> bytes:
    """A TIFF with one header byte changed: PIL opens it, then raises TypeError("Missing dimensions") on n_frames."""
    data = bytearray(encode(Image.fromarray(gray()), "TIFF"))
    data[8] = 0xFF  # the first IFD's entry count: the width/height tags are no longer found
    return bytes(data)


def test_tiff_with_a_broken_ifd_is_an_input_error(tmp_path: Path) -> None:
    for src in (_tiff_without_dimensions(), write(tmp_path, "broken.tif", _tiff_without_dimensions())):
        with pytest.raises(CXRInputError, match="could not be decoded"):
            load_image(src)


def test_any_decoder_failure_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def unforeseen(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a decoder bug nobody anticipated")

    monkeypatch.setattr(io_load, "_from_encoded_pil", unforeseen)
    with pytest.raises(CXRInputError, match=r"could not be decoded \(ZeroDivisionError\)") as err:
        load_image(_png(gray()))
    assert "anticipated" not in messages(err.value)  # the type only: a DICOM decoder's text could quote its header


@pytest.mark.parametrize(
    ("width", "height", "factor"),
    [
        (4472, 4472, 1),
        (7000, 7000, 2),
        (7746, 7746, 2),
        (10_000, 5_000, 2),
        (9000, 9000, 3),
        (300_000, 66, 1),
        (200_000, 200, 2),
        (400_000, 100, 1),  # a factor of 2 would leave a 50-pixel side: kept as it is
    ],
)
def test_reduce_factor(width: int, height: int, factor: int) -> None:
    assert io_pixels._reduce_factor(width, height) == factor
    if factor > 1:
        assert (width // factor) * (height // factor) <= cxr_io.REDUCE_ABOVE_PIXELS
        assert (width // (factor - 1)) * (height // (factor - 1)) > cxr_io.REDUCE_ABOVE_PIXELS or factor == 2
        assert min(width, height) // factor >= image_processing_cxr.MIN_SIDE


def test_huge_images_are_box_reduced_the_same_from_every_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io_pixels, "REDUCE_ABOVE_PIXELS", 5000)  # so a 145 x 131 image is "huge": factor 2
    pixels = gray(np.uint16, shape=(145, 131), seed=3)  # odd sides: the last row and column are dropped
    expected = pixels[:144, :130].astype(np.float64).reshape(72, 2, 65, 2).mean(axis=(1, 3))
    png = _png(pixels)
    for src in (pixels, png, write(tmp_path, "big.png", png), io.BytesIO(png), Image.fromarray(pixels)):
        out = load_image(src)
        assert out.shape == (72, 65) and out.dtype == np.float32
        np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_huge_jpeg_is_decoded_at_a_reduced_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (256, 320)).astype(np.uint8), (0, 0), 6)
    jpeg = encode(Image.fromarray(smooth), "JPEG", quality=95)
    full = load_image(jpeg)
    monkeypatch.setattr(io_pixels, "REDUCE_ABOVE_PIXELS", 256 * 320 // 4)
    drafts: list[tuple[Any, ...]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: Image.Image, mode: Any, size: Any) -> Any:
        drafts.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    half = load_image(jpeg)
    assert drafts == [(160, 128)] and half.shape == (128, 160)  # DCT scaling: the full size is never decoded
    box = full.reshape(128, 2, 160, 2).mean(axis=(1, 3))
    assert np.abs(half - box).mean() < 2.0  # the same picture, up to the decoder's own rounding


def test_images_under_the_limit_keep_their_resolution() -> None:
    pixels = gray(np.uint16, shape=(300, 200), seed=5)
    np.testing.assert_array_equal(load_image(_png(pixels)), pixels.astype(np.float32))
