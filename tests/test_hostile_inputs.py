"""Hostile inputs: random bytes, truncated and corrupted PNG/JPEG/TIFF/BMP/DICOM files, lying size headers
(decompression bombs), extreme sizes and aspect ratios, NaN/inf, 0-D to 4-D arrays and constant images.

The contract under test, at every layer a user's file reaches:

* :func:`cxr_hub.load_image` returns a finite, non-constant 2-D float32 image within the size limits, or raises
  :class:`cxr_hub.CXRInputError` with a message; no other exception ever escapes.
* :class:`cxr_hub.CXRPipeline` (tiny random models) returns a result or raises ``CXRInputError``.
* The app's ``/analyze`` handler returns its outputs or raises ``gr.Error`` (whatever the parameters).

Property-based with hypothesis (derandomized, no example database: the same examples every run, a few seconds in
all), plus a parametrised run over the committed corpus in ``tests/data/bad_inputs/`` (see ``make_corpus.py``).
"""

from __future__ import annotations

import importlib.util
import io
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cxr_hub import CXRInputError, CXRPipeline, load_image
from cxr_hub.demo import K_MAX, PREDICTED, CXRApp
from cxr_hub.demo import LABEL_CHOICES as MODEL_CHOICES  # the models as the UI and the API name them
from cxr_hub.demo import PAPER_LABEL as PAPER_MODEL
from cxr_hub.models.image_processing_cxr import MAX_PIXELS, MIN_SIDE

gr = pytest.importorskip("gradio")
app = pytest.importorskip("app")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CORPUS = Path(__file__).parent / "data" / "bad_inputs"
_spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
assert _spec is not None and _spec.loader is not None
make_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_corpus)


def fuzz(max_examples: int) -> Any:
    """Hypothesis settings: bounded, reproducible (derandomized, no database in the repository), no deadline (a
    busy CI machine must not turn slowness into failure)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------------------------------------------ helpers


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _seed_files() -> dict[str, bytes]:
    """Small valid files of every supported kind; mutations of these are the fuzzers' raw material."""
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 256, size=(72, 96), dtype=np.uint8)
    gray16 = (gray8.astype(np.uint16) * 257) ^ 0x5A5A
    return {
        "png": _encode(Image.fromarray(gray8), "PNG"),
        "png16": _encode(Image.fromarray(gray16), "PNG"),
        "rgb.png": _encode(Image.fromarray(np.stack([gray8, gray8[::-1], gray8[:, ::-1]], -1)), "PNG"),
        "jpeg": _encode(Image.fromarray(gray8), "JPEG"),
        "tiff": _encode(Image.fromarray(gray16), "TIFF"),
        "bmp": _encode(Image.fromarray(gray8), "BMP"),
        "dicom": make_corpus._dicom(gray16 >> 4),
    }


SEEDS = _seed_files()


def check_image(arr: np.ndarray) -> None:
    """What load_image promises for anything it accepts."""
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.ndim == 2
    assert min(arr.shape) >= MIN_SIDE and arr.size <= MAX_PIXELS
    assert np.isfinite(arr).all() and arr.max() > arr.min()


def load_or_refuse(src: Any) -> np.ndarray | None:
    """load_image's result (checked), or None when it refused with a non-empty CXRInputError; anything else fails."""
    try:
        arr = load_image(src)
    except CXRInputError as exc:
        assert str(exc).strip(), "a CXRInputError must say what is wrong"
        return None
    check_image(arr)
    return arr


def png_claiming(width: int, height: int, payload: bytes) -> bytes:
    return make_corpus._png(width, height, payload)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A valid seed file truncated, with flipped or overwritten bytes, or with random bytes spliced in."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "splice", "chop_middle"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        for pos in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=16)):
            data[pos] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "overwrite":
        start = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=64))
        data[start : start + len(chunk)] = chunk
        return bytes(data)
    if kind == "splice":
        pos = draw(st.integers(0, len(data)))
        return bytes(data[:pos] + draw(st.binary(min_size=1, max_size=256)) + data[pos:])
    start = draw(st.integers(0, len(data) - 1))
    return bytes(data[:start] + data[start + draw(st.integers(1, 512)) :])


MAGIC_PREFIXES = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"P5\n",
    b"\x00" * 128 + b"DICM",
    b"GIF89a",
]


# ------------------------------------------------------------------------------------------------- load_image


@fuzz(200)
@given(prefix=st.sampled_from(MAGIC_PREFIXES), body=st.binary(max_size=4096))
def test_random_bytes_never_crash_the_loader(prefix: bytes, body: bytes) -> None:
    data = prefix + body
    load_or_refuse(data)
    load_or_refuse(io.BytesIO(data))


@fuzz(250)
@given(data=mutated_files())
def test_corrupted_files_never_crash_the_loader(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a decoder's warning must not reach the user's terminal either
        load_or_refuse(data)


@fuzz(60)
@given(
    width=st.one_of(st.integers(0, 70), st.integers(0, 2**31 - 1)),
    height=st.one_of(st.integers(0, 70), st.integers(0, 2**31 - 1)),
    payload=st.binary(max_size=512),
)
def test_lying_png_headers_are_refused_before_decoding(width: int, height: int, payload: bytes) -> None:
    arr = load_or_refuse(png_claiming(width, height, payload))
    if width * height > MAX_PIXELS:
        assert arr is None  # a bomb never gets a pixel decoded (test_io checks that no decoder even runs)


@fuzz(60)
@given(rows=st.integers(0, 65535), columns=st.integers(0, 65535), length=st.integers(0, 20_000))
def test_lying_dicom_headers_are_refused(rows: int, columns: int, length: int) -> None:
    pixels = np.random.default_rng(length).bytes(length)
    arr = load_or_refuse(make_corpus._dicom(rows=rows, columns=columns, pixel_data=pixels))
    if arr is not None:
        assert arr.shape == (rows, columns)


@fuzz(40)
@given(width=st.integers(0, 65535), height=st.integers(0, 65535))
def test_lying_jpeg_headers_are_refused(width: int, height: int) -> None:
    arr = load_or_refuse(make_corpus._jpeg_claiming(width, height))
    if width * height > MAX_PIXELS:
        assert arr is None


SPECIALS = [np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0, 1e-45]
DTYPES = ["float16", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint64", "bool", "complex64"]


@fuzz(150)
@given(
    shape=st.lists(st.sampled_from([0, 1, 2, 3, 4, 63, 64, 70]), max_size=4),
    dtype=st.sampled_from(DTYPES),
    content=st.sampled_from(["noise", "constant", "one_pixel"]),
    specials=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(SPECIALS)), max_size=4),
)
def test_arrays_of_any_shape_dtype_and_value(shape: list[int], dtype: str, content: str, specials: list) -> None:
    rng = np.random.default_rng(len(shape))
    arr = rng.normal(100, 30, size=tuple(shape)) if content == "noise" else np.full(tuple(shape), 7.0)
    if content == "one_pixel" and arr.size:
        arr.flat[arr.size // 2] = 9.0
    for pos, value in specials:
        if arr.size:
            arr.flat[pos % arr.size] = value
    with np.errstate(all="ignore"):  # casting inf/NaN/1e300 to integers is exactly the hostile part
        cast = arr.astype(dtype)
    out = load_or_refuse(cast)
    if out is not None:
        assert out.shape == cast.shape[:2]


def test_odd_paths_are_refused() -> None:
    class BytesPath:
        def __fspath__(self) -> bytes:
            return b"/tmp/x.png"

    for src in ("\x00bad.png", "dir/\x00", BytesPath(), " ", "/nonexistent/\u202escan.png"):
        assert load_or_refuse(src) is None


def test_extreme_aspect_ratio_and_nan_arrays_have_clear_messages() -> None:
    cases = [
        (np.zeros((1, 4000)), "at least 64"),
        (np.arange(4000.0).reshape(4000, 1), "at least 64"),
        (np.where(np.eye(80) > 0, np.nan, 1.0), "NaN or infinite"),
        (np.full((80, 80), np.inf), "NaN or infinite"),
        (np.full((80, 80), 3, np.uint8), "constant"),
        (np.zeros((5, 80, 80)), "2-D"),
        (np.zeros((2, 80, 80, 3), np.uint8), "2-D"),
        (np.ones(()), "2-D"),
        (np.float64(3.0), "Unsupported input type"),
    ]
    for arr, message in cases:
        with pytest.raises(CXRInputError, match=message):
            load_image(arr)


# ----------------------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def pipelines(tiny_model_folders) -> dict[str, CXRPipeline]:
    """The tiny random pipeline, and one whose segmentation finds no lung anywhere (the no-lung refusal)."""
    seg, clf = tiny_model_folders
    pipe = CXRPipeline.from_pretrained(seg, clf, device="cpu")
    blind = CXRPipeline.from_pretrained(seg, clf, device="cpu")
    with torch.no_grad():
        blind.segmentation_model.classifier.bias.copy_(torch.tensor([50.0, 0.0, 0.0, 0.0]))
    return {"lungs": pipe, "no_lung": blind}


def _synthetic(h: int, w: int, content: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if content == "noise":
        return rng.normal(0, 1, size=(h, w)).astype(np.float32)
    if content == "gradient":
        return np.add.outer(np.arange(h), np.arange(w)).astype(np.float32)
    if content == "one_pixel":
        img = np.zeros((h, w), np.float32)
        img[rng.integers(h), rng.integers(w)] = 1.0
        return img
    if content == "checker":
        return (np.indices((h, w)).sum(0) % 2).astype(np.uint8)
    return np.full((h, w), 5.0, np.float32)  # constant


@fuzz(30)
@given(
    h=st.sampled_from([64, 65, 97, 333, 1000, 4000]),
    w=st.sampled_from([64, 65, 97, 333, 1000, 4000]),
    content=st.sampled_from(["noise", "gradient", "one_pixel", "checker", "constant"]),
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 40),
    patch_size=st.sampled_from([1, 16, 64, 200, 256]),
    which=st.sampled_from(["lungs", "no_lung"]),
)
def test_pipeline_only_raises_input_errors(pipelines, h, w, content, seed, k, patch_size, which) -> None:
    if h * w > 400_000:  # 64 x 4000 stays in; keeps each example fast
        h = 64
    pipe = pipelines[which]
    try:
        result = pipe(_synthetic(h, w, content, seed), k=k, patch_size=patch_size, seed=seed)
    except CXRInputError as exc:
        assert str(exc).strip()
        return
    assert which == "lungs" and content != "constant"
    assert result.image_size == (h, w) and sum(result.votes.values()) == k
    for m in result.saliency.values():
        assert m.shape == (h, w) and np.isfinite(m).all()


@fuzz(30)
@given(data=mutated_files())
def test_pipeline_on_corrupted_files(pipelines, data: bytes) -> None:
    try:
        pipelines["lungs"](data, k=4)
    except CXRInputError as exc:
        assert str(exc).strip()


# -------------------------------------------------------------------------------------------------------- app


@pytest.fixture(scope="module")
def analyze(tiny_model_folders, tmp_path_factory):
    """The app's /analyze handler on the tiny models."""
    seg, clf = tiny_model_folders
    engine = CXRApp(
        {"CXR_HUB_SEGMENTATION": str(seg), "CXR_HUB_CLASSIFIER": str(clf)},
        tmp_path_factory.mktemp("no_models"),
        device="cpu",
    )
    blocks = app.build_demo(engine)
    return next(f.fn for f in blocks.fns.values() if f.api_name == "analyze")


def call_app(analyze, *args: Any) -> tuple | None:
    """The handler's outputs, or None when it answered with gr.Error (checked); any other exception fails."""
    try:
        outputs = analyze(*args)
    except gr.Error as err:
        assert err.message.strip() and "Traceback" not in err.message
        return None
    assert len(outputs) == len(app.OUTPUT_NAMES) + 1
    return outputs


ODD_VALUES = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.booleans(),
)


@fuzz(25)
@given(
    data=st.one_of(mutated_files(), st.binary(max_size=1024)),
    suffix=st.sampled_from([".png", ".jpg", ".dcm", ".tiff", ""]),
)
def test_app_handler_on_corrupted_uploads(analyze, tmp_path_factory, data: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("upload") / f"upload{suffix}"
    path.write_bytes(data)
    call_app(analyze, str(path), PAPER_MODEL, 10, 224, 0, PREDICTED)


VALID_ARGS = {"model": PAPER_MODEL, "k": 10, "patch_size": 224, "seed": 0, "saliency_class": PREDICTED}


@fuzz(60)
@given(
    name=st.sampled_from(sorted(VALID_ARGS)),
    value=st.one_of(
        ODD_VALUES,
        st.sampled_from([*MODEL_CHOICES, "normal", "covid", " ", "all", 0, 1, K_MAX + 1, 111, 449, 2**32]),
        st.lists(st.integers(0, 3), max_size=2),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    ),
)
def test_app_handler_parameters(analyze, tmp_path_factory, name: str, value: Any) -> None:
    """One parameter at a time takes an odd value (what a hand-written API call could send); the rest are valid."""
    image = tmp_path_factory.getbasetemp() / "valid_upload.png"
    if not image.exists():
        image.write_bytes(_encode(Image.fromarray(_synthetic(96, 80, "gradient", 0).astype(np.uint8)), "PNG"))
    args = {**VALID_ARGS, name: value}
    try:
        hash(args["model"])
    except TypeError:
        return  # Gradio's Radio only ever passes one of its string choices (or None)
    call_app(analyze, str(image), args["model"], args["k"], args["patch_size"], args["seed"], args["saliency_class"])


def test_app_handler_with_missing_and_odd_paths(analyze, tmp_path: Path) -> None:
    for image in (None, "", str(tmp_path), str(tmp_path / "gone.png"), "\x00bad"):
        assert call_app(analyze, image, PAPER_MODEL, 10, 224, 0, PREDICTED) is None


# ------------------------------------------------------------------------------------------------------ corpus


def test_corpus_is_complete_and_small() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.name != "make_corpus.py" and not p.name.startswith((".", "__"))}
    assert files == set(make_corpus.CASES), "re-run tests/data/bad_inputs/make_corpus.py"
    assert all((CORPUS / name).stat().st_size < make_corpus.MAX_BYTES for name in files)


@pytest.mark.parametrize("name", sorted(make_corpus.CASES))
def test_corpus_file_is_refused_everywhere_with_a_useful_message(name: str, pipelines, analyze) -> None:
    path = CORPUS / name
    expected = make_corpus.CASES[name][1]
    for src in (path, str(path), path.read_bytes()):
        with pytest.raises(CXRInputError, match=re.compile(expected, re.I)):
            load_image(src)
    with pytest.raises(CXRInputError, match=re.compile(expected, re.I)):
        pipelines["lungs"].prepare(path)
    with pytest.raises(gr.Error) as err:
        analyze(str(path), PAPER_MODEL, 10, 224, 0, PREDICTED)
    assert re.search(expected, err.value.message, re.I)
    assert str(CORPUS) not in err.value.message  # the app never shows server paths


def test_decompression_bomb_png_is_tiny_and_never_allocated() -> None:
    """The corpus' 20000 x 20000 PNG is ~100 bytes; refusing it must not allocate its 400 MP."""
    import tracemalloc

    data = (CORPUS / "png_bomb_20000x20000.png").read_bytes()
    assert len(data) < 200 and struct.unpack(">II", data[16:24]) == (20_000, 20_000)
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]  # a well-formed header, not a broken one
    tracemalloc.start()
    try:
        with pytest.raises(CXRInputError, match="limit"):
            load_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000
