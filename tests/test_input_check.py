"""The app's input check is the pipeline's (``cxr_hub.validity`` inside ``CXRPipeline.prepare``), without Gradio.

The app decides nothing itself: an upload the pipeline refuses raises :class:`cxr_hub.NotAFrontalCXRError` from
:meth:`cxr_hub.demo.CXRApp.analyze`, whose message the UI shows; the colour of an upload is read from the uploaded
file (``load_image`` makes it gray); a refusal is remembered per image, so a slider change does not redo it; the real
example films pass with the shipped segmentation model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, synthetic_cxr
from PIL import Image

from cxr_hub import NotAFrontalCXRError, demo, load_image, validity

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.jpg"))
SEGMENTATION = REPO_ROOT / "models" / "cxr-lung-seg-fcdensenet103"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def colour_photo(h: int = 240, w: int = 200, seed: int = 0) -> np.ndarray:
    """A portrait-like RGB image: a bluish background, a skin-toned face, dark hair, a red shirt, sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.float64)
    img[:] = (90, 140, 200)  # sky / studio blue
    face = ((xx - w / 2) / (0.22 * w)) ** 2 + ((yy - 0.42 * h) / (0.28 * h)) ** 2 < 1
    img[face] = (224, 172, 140)
    img[face & (yy < 0.22 * h)] = (40, 28, 20)  # hair
    img[yy > 0.75 * h] = (180, 30, 40)  # shirt
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_the_stop_gap_is_gone() -> None:
    """One decision, in the pipeline: the app has no check of its own any more."""
    for name in ("check_input", "InputCheck", "colour_share", "upload_colour_share"):
        assert not hasattr(demo, name), name


def test_colour_share_separates_photographs_from_films(tmp_path: Path) -> None:
    limit = validity.load_validity_file()[0].colour_share_max
    photo = colour_photo()
    assert validity.colour_share(photo) > 0.5
    film = synthetic_cxr(np.random.default_rng(0), 240, 200)
    # a gray film saved as an RGB JPEG: compression leaves only faint chroma
    Image.fromarray(np.stack([film] * 3, axis=-1)).save(tmp_path / "film_rgb.jpg", quality=75)
    assert validity.source_colour_share(tmp_path / "film_rgb.jpg") < 0.01
    # a film with a coloured annotation (a red marker box, ~2 % of the pixels) is still a film
    marked = np.stack([film] * 3, axis=-1)
    marked[10:30, 10:60] = (255, 0, 0)
    assert 0 < validity.colour_share(marked) < limit
    assert validity.colour_share(film) == 0.0  # a 2-D gray array has no colour at all
    Image.fromarray(photo).save(tmp_path / "portrait.jpg", quality=90)
    assert load_image(tmp_path / "portrait.jpg").ndim == 2  # the pipeline's pixels are gray ...
    assert validity.source_colour_share(tmp_path / "portrait.jpg") > limit  # ... the file is not
    for example in EXAMPLES:
        assert validity.source_colour_share(example) == 0.0  # gray JPEGs


def _tiny_engine(tmp_path: Path) -> demo.CXRApp:
    from test_app import env_for, save_tiny_models

    models = save_tiny_models(tmp_path / "models")
    empty = tmp_path / "empty"
    empty.mkdir()
    return demo.CXRApp(env_for(models, "seg", "clf4"), empty, device="cpu")


def test_a_colour_upload_is_refused_by_the_pipeline_and_remembered(tmp_path: Path, monkeypatch) -> None:
    engine = _tiny_engine(tmp_path)
    photo = tmp_path / "portrait.jpg"
    Image.fromarray(colour_photo(480, 400)).save(photo, quality=90)
    with pytest.raises(NotAFrontalCXRError) as err:
        engine.analyze(str(photo), demo.PAPER_MODEL, k=10)
    message = str(err.value)
    assert message.startswith(f"{demo.UPLOAD_NAME} does not look like a frontal chest X-ray: it is a colour image")
    assert str(tmp_path) not in message and "portrait" not in message  # no server path, no file name
    assert err.value.report.checks["colour"].passed is False
    # a slider change on the same upload: the same refusal, without preparing the image again
    pipe = engine.models(demo.PAPER_MODEL).pipeline
    monkeypatch.setattr(pipe, "prepare", lambda *a, **k: pytest.fail("a refused image was prepared again"))
    with pytest.raises(NotAFrontalCXRError) as again:
        engine.analyze(str(photo), demo.PAPER_MODEL, k=20)
    assert str(again.value) == message
    monkeypatch.undo()
    # a gray film through the same engine is analysed, and its check's scores are in the summary
    film = tmp_path / "film.png"
    Image.fromarray(synthetic_cxr(np.random.default_rng(1), 240, 200)).save(film)
    a = engine.analyze(str(film), demo.PAPER_MODEL, k=10)
    assert a.result is not None and a.input_check is a.prepared.input_check and a.input_check.accepted
    summary = demo.summary_dict(a)
    assert summary["input_check"]["accepted"] is True and summary["input_check"]["checks"]["colour"]["score"] == 0


@pytest.mark.skipif(not (SEGMENTATION / "model.safetensors").is_file(), reason="shipped segmentation model absent")
def test_real_example_films_pass_with_the_shipped_segmentation() -> None:
    from cxr_hub import CXRPipeline

    pipe = CXRPipeline.from_pretrained(SEGMENTATION, device="cpu", segmentation_precision="fp32")
    assert pipe.validator.calibration is not None
    assert len(EXAMPLES) >= 4
    for example in EXAMPLES:
        prepared = pipe.prepare(example)
        assert prepared.input_check.accepted, (example.name, prepared.input_check.reason)
        assert not any("input check" in w for w in prepared.warnings)
