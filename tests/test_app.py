"""The demo: its library code (``cxr_hub.demo``: model discovery, honest modes, caching, errors, the outputs of an
analysis) and its Gradio UI (``app.py``: the wiring, ``gr.Error``, and a gradio_client end-to-end run).

Tiny random models are saved with ``save_pretrained`` into temporary folders and handed to the app through the
same environment variables a deployment uses; the UI then shows their (meaningless) outputs, which is what these
tests check the plumbing of. Nothing here needs the network or a GPU.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from test_io import make_dicom

from cxr_hub import demo
from cxr_hub.demo.names import PAPER_LABEL
from cxr_hub.demo.outputs import CLEARED_SUMMARY, OUTPUT_NAMES, UNTRAINED, cleared_outputs, render
from cxr_hub.demo.presenters import models_status
from cxr_hub.pipeline import NoClassifierError

gr = pytest.importorskip("gradio")
app = pytest.importorskip("app")

EXAMPLE = REPO_ROOT / "examples" / "covid19_cohen_2168a917.jpg"
NORMAL_EXAMPLE = REPO_ROOT / "examples" / "normal_nih_00001299_000.jpg"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models gain nothing from threads, and a shared CPU must not be slowed down
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def save_tiny_models(root: Path) -> dict[str, Path]:
    """Tiny random segmentation, 4-class (tuberculosis untrained), 3-class and global models, saved as Hub folders.

    The segmentation's 1x1 head bias is tilted towards the lung labels so a random network still finds "lung".
    """
    from cxr_hub import (
        FCDenseNetConfig,
        FCDenseNetForSemanticSegmentation,
        PatchClassifierConfig,
        PatchClassifierForImageClassification,
    )

    torch.manual_seed(0)
    seg = FCDenseNetForSemanticSegmentation(
        FCDenseNetConfig(
            preset="fcdensenet56",
            down_blocks=[2, 2],
            bottleneck_layers=2,
            growth_rate=4,
            first_conv_channels=8,
            image_size=64,
        )
    ).eval()
    with torch.no_grad():
        seg.classifier.bias.copy_(torch.tensor([0.0, 0.0, 0.5, 0.5]))
    common = {"image_size": 512, "patch_size": 224, "input_size": 32, "num_patches": 10}
    label4 = ["normal", "bacterial", "viral_covid"]  # like our data: no tuberculosis images
    models = {
        "seg": seg,
        "clf4": PatchClassifierForImageClassification(PatchClassifierConfig(**common, trained_classes=label4)),
        "clf3": PatchClassifierForImageClassification(PatchClassifierConfig(**common, label_set="label3")),
        "glob4": PatchClassifierForImageClassification(
            PatchClassifierConfig(**{**common, "input_size": 64}, mode="global", trained_classes=label4)
        ),
    }
    out = {}
    for name, model in models.items():
        if name != "seg":  # distinct class probabilities and non-empty Grad-CAM maps
            model.classifier.weight.data.normal_(0, 0.5)
        out[name] = root / name
        model.eval().save_pretrained(out[name])
    return out


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_tiny_models(tmp_path_factory.mktemp("tiny_models"))


def env_for(models: dict[str, Path], *names: str) -> dict[str, str]:
    keys = {
        "seg": "CXR_HUB_SEGMENTATION",
        "clf4": "CXR_HUB_CLASSIFIER",
        "clf3": "CXR_HUB_CLASSIFIER_LABEL3",
        "glob4": "CXR_HUB_GLOBAL_CLASSIFIER",
    }
    return {keys[n]: str(models[n]) for n in names}


@pytest.fixture
def empty_models_dir(tmp_path: Path) -> Path:
    d = tmp_path / "no_models"
    d.mkdir()
    return d


@pytest.fixture
def full_app(tiny_models, empty_models_dir) -> demo.CXRApp:
    return demo.CXRApp(env_for(tiny_models, "seg", "clf4", "clf3", "glob4"), empty_models_dir, device="cpu")


def named(outputs: tuple) -> dict:
    """UI outputs by name (the session state, when present, is dropped)."""
    return dict(zip(OUTPUT_NAMES, outputs[: len(OUTPUT_NAMES)], strict=True))


def handler(blocks: gr.Blocks, api_name: str = "analyze"):
    """The Python function behind a named endpoint of a built demo."""
    return next(f.fn for f in blocks.fns.values() if f.api_name == api_name)


# ------------------------------------------------------------------------------------------------ model discovery


def test_discover_models_defaults_env_and_repo_ids(tmp_path: Path, tiny_models) -> None:
    models_dir = tmp_path / "models"
    s = demo.discover_models(demo.PAPER_MODEL, {}, models_dir)
    assert (s.segmentation, s.classifier, s.global_classifier, s.notes) == (None, None, None, ())
    # default folders under models/
    (models_dir / "cxr-lung-seg-fcdensenet103").mkdir(parents=True)
    (models_dir / "cxr-lung-seg-fcdensenet103" / "config.json").write_text("{}")
    s = demo.discover_models(demo.COVIDX_MODEL, {}, models_dir)
    assert s.segmentation == str(models_dir / "cxr-lung-seg-fcdensenet103") and s.label_set == "label3"
    assert s.global_classifier is None  # the COVIDx choice has no global model
    # env overrides: a folder, a Hub repo id, and a value that is neither
    env = {"CXR_HUB_CLASSIFIER": str(tiny_models["clf4"]), "CXR_HUB_GLOBAL_CLASSIFIER": "someone/cxr-global"}
    s = demo.discover_models(demo.PAPER_MODEL, env, models_dir)
    assert s.classifier == str(tiny_models["clf4"]) and s.global_classifier == "someone/cxr-global"
    s = demo.discover_models(demo.PAPER_MODEL, {"CXR_HUB_SEGMENTATION": str(tmp_path)}, models_dir)
    assert s.segmentation is None and "CXR_HUB_SEGMENTATION" in s.notes[0]
    with pytest.raises(ValueError, match="Unknown model"):
        demo.discover_models("GPT", {}, models_dir)


#: ``__all__`` of ``cxr_hub/demo.py`` when the demo's library code was one module: the package keeps every name.
OLD_DEMO_ALL = (
    "COVIDX_MODEL",
    "MODEL_CHOICES",
    "MODEL_SPECS",
    "PAPER_MODEL",
    "PREDICTED",
    "Analysis",
    "AppInputError",
    "CXRApp",
    "LRUCache",
    "LoadedModels",
    "ModelSources",
    "ModelSpec",
    "biomarker_panel",
    "discover_models",
    "display_name",
    "format_number",
    "pixel_hash",
    "request_timings",
    "saliency_images",
    "steps",
    "summary_dict",
    "triage_text",
    "write_report",
)


def test_engine_needs_no_gradio_and_old_names_still_import() -> None:
    """``cxr_hub.demo`` is library code: it imports without gradio and pandas (the ``app`` extra), every name of the
    old single module is still importable from it, and ``app.py`` (only the UI) re-exports none of them."""
    code = (
        "import sys; sys.modules['gradio'] = None; sys.modules['pandas'] = None\n"
        "import cxr_hub.demo as d; e = d.CXRApp({}, d.MODELS_DIR / 'does-not-exist', device='cpu')\n"
        "assert e.models(d.PAPER_MODEL).mode == 'no_models'\n"
        "from cxr_hub.demo import *  # noqa\n"
        "from cxr_hub.demo import biomarker_reference, discovery, engine, names, outputs, presenters"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert set(OLD_DEMO_ALL) <= set(demo.__all__)
    for name in demo.__all__:
        assert getattr(demo, name) is not None, name
    assert callable(demo.biomarker_panel)  # the function, not its module
    assert set(app.__all__) == {"SessionUploads", "build_demo", "launch_kwargs", "main"}


def test_the_engine_knows_models_by_id_and_the_ui_by_label(full_app: demo.CXRApp) -> None:
    """The engine's keys are the label-set ids; labels are only what the UI, the API, the summary and report show."""
    assert demo.MODEL_CHOICES == ("label4", "label3") == tuple(demo.MODEL_SPECS)
    assert demo.LABEL_CHOICES == ("Paper 4-class model", "COVIDx 3-class model")
    assert not set(demo.LABEL_CHOICES) & set(demo.MODEL_SPECS)
    assert [demo.model_id(demo.model_label(c)) for c in demo.MODEL_CHOICES] == list(demo.MODEL_CHOICES)
    assert demo.model_id("label4") is None and demo.model_id(["Paper 4-class model"]) is None
    with pytest.raises(demo.UnknownModelError, match="Unknown model 'Paper 4-class model'; choose one of: label4"):
        full_app.analyze(str(EXAMPLE), PAPER_LABEL, k=5)
    a = full_app.analyze(str(EXAMPLE), demo.COVIDX_MODEL, k=5)
    assert a.models.sources.choice == "label3" and demo.summary_dict(a)["model_choice"] == "COVIDx 3-class model"
    assert "(model: COVIDx 3-class model," in demo.steps(a)[1]
    blocks = app.build_demo(full_app)
    radio = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "model")
    assert [value for _, value in radio.choices] == list(demo.LABEL_CHOICES) and radio.value == PAPER_LABEL
    assert "**Paper 4-class model:**" in models_status(full_app)


# -------------------------------------------------------------------------------------------------- honest modes


def test_no_models_app_starts_and_explains(empty_models_dir: Path) -> None:
    engine = demo.CXRApp({}, empty_models_dir, device="cpu")
    blocks = app.build_demo(engine)
    assert "No segmentation model found" in models_status(engine)
    o = named(handler(blocks)(str(EXAMPLE), PAPER_LABEL, 100, 224, 0, demo.PREDICTED))
    assert "No segmentation model could be loaded" in o["summary"]
    for key in ("votes_plot", "vote_fractions", "probabilistic_gradcam", "global_gradcam", "report"):
        assert o[key] is None
    assert o["segmentation"][0].ndim == 3 and o["segmentation"][1] == []  # the image as loaded, nothing drawn
    assert o["result"]["mode"] == "no_models" and o["result"]["label"] is None
    # says what is missing (the segmentation model, which does ship in models/), not that nothing ships
    assert o["biomarkers"] == demo.presenters.BIOMARKERS_NEED_SEGMENTATION
    assert "no segmentation model could be loaded" in o["biomarkers"] and "shipped" not in o["biomarkers"]


def test_segmentation_only_never_classifies(tiny_models, empty_models_dir: Path) -> None:
    engine = demo.CXRApp(env_for(tiny_models, "seg"), empty_models_dir, device="cpu")
    a = engine.analyze(str(EXAMPLE), demo.PAPER_MODEL, k=30, patch_size=224, seed=3)
    assert a.models.mode == "segmentation_only" and a.result is None
    assert a.boxes is not None and len(a.boxes) == 30 and a.prepared is not None
    o = named(render(a, engine))
    assert "No classifier loaded" in o["summary"]
    for key in ("votes_plot", "vote_fractions", "probabilistic_gradcam", "global_gradcam"):
        assert o[key] is None
    assert [name for _, name in o["segmentation"][1]] == ["heart", "left lung", "right lung", "sampled patches"]
    result = o["result"]
    assert result["label"] is None and result["votes"] is None and result["num_patch_boxes"] == 30
    assert result["mode"] == "segmentation_only" and result["models"]["classifier"] is None
    assert "No classification" in o["triage"] and "cardiothoracic ratio" in o["biomarkers"]
    ref = demo.BIOMARKER_REFERENCE  # measured on the project data, never invented
    assert (ref["description"] if ref else demo.REFERENCE_PENDING) in o["biomarkers"]
    report_json = json.loads(Path(o["report"][0]).read_text())
    assert len(report_json["patch_boxes"]) == 30 and report_json["label"] is None
    # a segmentation-only pipeline: no classifier at all, so random weights can never produce a vote
    pipe = a.models.pipeline
    assert pipe.classifier_model is None and not pipe.has_classifier
    with pytest.raises(NoClassifierError, match="no classifier loaded"):
        pipe.analyze(a.prepared, k=2)
    # the boxes are the ones the pipeline's sampler gives (what a classifier would classify), the paper's frame
    np.testing.assert_array_equal(a.boxes_1024, pipe.sample_patches(a.prepared, 30, 224, 3).boxes_1024)
    assert a.prepared.frame.shape == (1024, 1024)


def test_full_analysis_outputs_consistent(full_app: demo.CXRApp) -> None:
    a = full_app.analyze(str(EXAMPLE), demo.PAPER_MODEL, k=40, patch_size=224, seed=0, saliency_class="normal")
    r = a.result
    assert a.models.mode == "full" and r is not None and not a.cache_hit
    assert sum(r.votes.values()) == 40 and r.k == 40
    assert a.models.untrained_classes == ["tuberculosis"]
    o = named(render(a, full_app))
    summary, votes, fractions, result = (o[k] for k in ("summary", "votes_plot", "vote_fractions", "result"))
    cam, gcam, triage, details = (o[k] for k in ("probabilistic_gradcam", "global_gradcam", "triage", "details"))
    report = o["report"]
    assert int(votes["votes"].sum()) == 40
    assert list(votes["class"]) == ["normal", "bacterial", "TB", "viral/COVID"]  # class order, not alphabetical
    assert dict(zip(votes["class"], votes["training"], strict=True))["TB"] == UNTRAINED
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert "untrained" in summary and "Majority vote" in summary
    assert cam is not None and gcam is not None  # patch saliency beside the global model's Grad-CAM (Fig. 7)
    assert result["saliency_class"] == "normal" and list(result["saliency_stats"]) == ["normal"]
    for stats in (*result["saliency_stats"].values(), *result["global_saliency_stats"].values()):
        assert 0.0 <= stats["min"] <= stats["max"] <= 1.0
    assert result["untrained_classes"] == ["tuberculosis"]
    assert any("never trained" in w for w in result["warnings"])
    assert "education, not advice" in triage
    assert "Device:" in details and "cpu" in details
    saved = json.loads(Path(report[0]).read_text())
    assert len(saved["patch_probabilities"]) == 40 and saved["votes"] == result["votes"]
    assert Path(report[1]).suffix == ".png" and Path(report[1]).stat().st_size > 0
    json.dumps(result, allow_nan=False)  # strict JSON for the API


def test_the_result_says_how_far_to_trust_the_vote(full_app: demo.CXRApp, tiny_models, tmp_path: Path) -> None:
    from cxr_hub.demo.presenters import limits_text

    # tiny random models have no card: the panel says there are no measured numbers, and claims none
    a = full_app.analyze(str(EXAMPLE), demo.PAPER_MODEL, k=10, patch_size=224, seed=0)
    assert a.models.card_metrics == {}
    o = named(render(a, full_app))
    assert "How far to trust this vote" in o["summary"] and "no measured test numbers" in o["summary"]
    assert o["result"]["measured"] == {} and "no measured test numbers" in o["result"]["limits"]
    # a card with numbers: each collection's accuracy and each trained class's sensitivity, from the card only
    card = tmp_path / "clf4"
    shutil.copytree(tiny_models["clf4"], card)
    (card / "README.md").write_text(
        "---\nmodel-index:\n- name: x\n  results:\n  - task: {type: image-classification}\n"
        "    dataset: {type: d, name: d}\n    metrics:\n"
        "    - {type: accuracy_source_jsrt, value: 1.0}\n    - {type: accuracy_source_cohen, value: 0.57}\n"
        "    - {type: sensitivity_normal, value: 0.9867}\n    - {type: sensitivity_tuberculosis, value: 0.5}\n"
        "---\n# card\n"
    )
    engine = demo.CXRApp(
        {**env_for(tiny_models, "seg"), "CXR_HUB_CLASSIFIER": str(card)}, tmp_path / "none", device="cpu"
    )
    m = engine.models(demo.PAPER_MODEL)
    assert m.card_metrics["accuracy_source_cohen"] == 0.57
    text = limits_text(m, markdown=False)
    assert "57% of the COVID-19 image data collection (Cohen et al.) films" in text and "100% of the JSRT" in text
    assert "normal 99% found" in text
    assert "tuberculosis" not in text  # an untrained class is never described as measured
    assert not text.startswith("**") and limits_text(m).startswith("**How far to trust this vote.**")


def test_shipped_models_state_their_cards_numbers(empty_models_dir: Path) -> None:
    from cxr_hub.demo.presenters import limits_text
    from cxr_hub.hub.card_metrics import read_card_metrics

    engine = demo.CXRApp({}, REPO_ROOT / "models", device="cpu")
    for choice in (demo.PAPER_MODEL, demo.COVIDX_MODEL):
        m = engine.models(choice)
        assert m.mode == "full", m.errors
        card = read_card_metrics(m.sources.classifier)
        assert m.card_metrics == card and any(k.startswith("accuracy_source_") for k in card)
        text = limits_text(m)
        for key, value in card.items():
            if key.startswith("accuracy_source_") or key.startswith("sensitivity_"):
                assert f"{value:.0%}" in text, key


def test_slider_change_reuses_segmentation(full_app: demo.CXRApp, tmp_path: Path, monkeypatch) -> None:
    first = full_app.analyze(str(EXAMPLE), demo.PAPER_MODEL, k=20, seed=0)
    seg_model = first.models.pipeline.segmentation_model
    calls = []
    monkeypatch.setattr(seg_model, "forward", lambda *a, **k: calls.append(1) or pytest.fail("segmented again"))
    for k, patch, seed in ((25, 224, 0), (25, 256, 0), (25, 224, 7)):
        again = full_app.analyze(str(EXAMPLE), demo.PAPER_MODEL, k=k, patch_size=patch, seed=seed)
        assert again.cache_hit and again.prepared is first.prepared and sum(again.result.votes.values()) == k
    # keyed by the pixels, not the file name: a renamed copy hits the cache, a different image does not
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(EXAMPLE.read_bytes())
    assert full_app.analyze(str(copy), demo.PAPER_MODEL, k=5).cache_hit
    monkeypatch.undo()
    assert not full_app.analyze(str(NORMAL_EXAMPLE), demo.PAPER_MODEL, k=5).cache_hit
    assert not calls
    # same seed → identical patches and votes
    a1 = full_app.analyze(str(EXAMPLE), demo.PAPER_MODEL, k=15, seed=4)
    a2 = full_app.analyze(str(EXAMPLE), demo.PAPER_MODEL, k=15, seed=4)
    np.testing.assert_array_equal(a1.boxes, a2.boxes)
    assert a1.result.votes == a2.result.votes


def test_covidx_model_and_how_it_works(full_app: demo.CXRApp) -> None:
    a = full_app.analyze(str(EXAMPLE), demo.COVIDX_MODEL, k=10, saliency_class="covid")
    assert a.result.class_names == ["normal", "pneumonia", "covid"] and a.result.global_label is None
    assert a.cache_hit is False or a.prepared is not None
    gallery, note = demo.steps(full_app.results.get(a.id))
    captions = [c for _, c in gallery]
    assert captions[0].startswith("1.") and any("Probabilistic Grad-CAM" in c for c in captions)
    assert "K = 10" in note
    assert demo.steps(None)[0] == []


# ------------------------------------------------------------------------------------------------ biomarker panel


def _panel_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.split("\n"):
        if line.startswith("| ") and not line.startswith("| |"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_biomarker_panel_shows_ours_and_the_papers_values_in_the_same_units() -> None:
    from cxr_hub.biomarkers import Biomarkers
    from cxr_hub.paper import BIOMARKER_TABLES, LABEL4_TO_PAPER, PAPER_CLASS_NAMES, paper_mean_sd

    ref = demo.BIOMARKER_REFERENCE
    assert ref is not None and ref["stats"], "the shipped reference file must hold the measured per-class stats"
    markers = Biomarkers(0.5123, 300, 600, 127.5, 25.5, 1000, 1200, 0.15, 0.16, 0.31, ["a warning"])
    text = demo.biomarker_panel(markers)
    rows = _panel_rows(text)
    columns = [key for key, _, _ in demo.PANEL_BIOMARKERS]
    # this image: intensities divided by 255 (the paper's [0, 1] scale), the ratio as it is
    image = dict(zip(columns, rows["**this image**"], strict=True))
    assert image["cardiothoracic_ratio"] == "0.512" and image["lung_mean_intensity"] == "0.500"
    assert image["lung_std_intensity"] == "0.100" and image["lung_area_fraction"].startswith("0.310")
    for cls, paper_classes in LABEL4_TO_PAPER.items():
        ours = next(cells for name, cells in rows.items() if name.startswith(f"{demo.display_name(cls)}, ours"))
        ours = dict(zip(columns, ours, strict=True))
        for key in columns:
            s = ref["stats"][key][cls]
            if s is None:  # tuberculosis: no images in our data
                assert cls == "tuberculosis" and "no images" in ours["cardiothoracic_ratio"]
                continue
            scale = 255.0 if "intensity" in key else 1.0
            assert ours[key] == f"{s['mean'] / scale:.3f} ± {s['sd'] / scale:.3f}"
        for pc in paper_classes:  # viral and COVID-19 are separate rows of the paper under our merged class
            paper = dict(zip(columns, rows[f"{PAPER_CLASS_NAMES[pc]}, paper"], strict=True))
            for key, table in BIOMARKER_TABLES.items():
                mean, sd = paper_mean_sd(table, pc)
                assert paper[key] == f"{mean:.3f} ± {sd:.3f}"
            assert paper["lung_area_fraction"] == "not in the paper"
    assert ref["description"] in text and "a warning" in text
    assert "viral and COVID-19 apart" in text and "no tuberculosis images" in text


def test_biomarker_panel_without_our_reference_still_shows_the_paper() -> None:
    from cxr_hub.biomarkers import Biomarkers

    markers = Biomarkers(math.nan, 0, 0, 127.5, 25.5, 1000, 1200, 0.15, 0.16, 0.31)
    rows = _panel_rows(demo.biomarker_panel(markers, reference={}))
    assert rows["**this image**"][0] == "n/a"
    assert rows["normal, ours"] == [demo.REFERENCE_PENDING, "—", "—", "—"]
    assert "±" in rows["normal, paper"][0]


def test_shipped_reference_is_the_results_run() -> None:
    """The app's reference file and RESULTS.md's biomarker tables come from one report (docs/figures/...)."""
    from cxr_hub.evaluation.biomarker_statistics import reference_from_report

    stats = REPO_ROOT / "docs" / "figures" / "biomarkers_label4" / "stats.json"
    if not stats.is_file():
        pytest.skip(f"{stats} absent")
    report = json.loads(stats.read_text())
    assert demo.load_biomarker_reference() == json.loads(json.dumps(reference_from_report(report)))
    ctr = report["all_views"]["biomarkers"]["cardiothoracic_ratio"]["per_class"]
    assert demo.BIOMARKER_REFERENCE["values"]["cardiothoracic_ratio"]["normal"] == (
        f"{ctr['normal']['mean']:.3f} ± {ctr['normal']['sd']:.3f}"
    )


# ------------------------------------------------------------------------------------------------- errors in the UI


def test_handler_turns_input_errors_into_gr_error(full_app: demo.CXRApp, tmp_path: Path) -> None:
    blocks = app.build_demo(full_app)
    analyze = handler(blocks)
    corrupt = tmp_path / "scan.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    from cxr_hub import CXRInputError, load_image

    with pytest.raises(CXRInputError) as expected:
        load_image(str(corrupt), source_name=demo.UPLOAD_NAME)
    with pytest.raises(gr.Error) as err:
        analyze(str(corrupt), PAPER_LABEL, 100, 224, 0, demo.PREDICTED)
    # the loader's own message, no traceback, and no server path or file name
    assert err.value.message == str(expected.value) and str(tmp_path) not in err.value.message
    assert "Traceback" not in err.value.message
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    with pytest.raises(gr.Error, match=r"(?i)image|format"):
        analyze(str(not_an_image), PAPER_LABEL, 100, 224, 0, demo.PREDICTED)
    bad_calls = [
        ((None, PAPER_LABEL, 100, 224, 0, demo.PREDICTED), "Upload a chest X-ray"),
        ((str(EXAMPLE), PAPER_LABEL, 0, 224, 0, demo.PREDICTED), "K must be"),
        ((str(EXAMPLE), PAPER_LABEL, 100, 230, 0, demo.PREDICTED), "Patch size must be"),
        ((str(EXAMPLE), PAPER_LABEL, 100, 224, -1, demo.PREDICTED), "Seed must be"),
        ((str(EXAMPLE), PAPER_LABEL, 100, 224, 0, "covid"), "Unknown class 'covid' for the Paper 4-class model; "),
        ((str(EXAMPLE), "Some other model", 100, 224, 0, demo.PREDICTED), "Unknown model"),
        ((str(EXAMPLE), demo.PAPER_MODEL, 100, 224, 0, demo.PREDICTED), "choose one of: Paper 4-class model, COVIDx"),
        ((None, "Some other model", 100, 224, 0, demo.PREDICTED), "Upload a chest X-ray"),  # the engine's order
    ]
    for args, message in bad_calls:
        with pytest.raises(gr.Error, match=message):
            analyze(*args)
    # a control moved before any image was chosen changes nothing (and raises nothing)
    live = next(f.fn for f in blocks.fns.values() if getattr(f.fn, "__name__", "") == "analyze_live")
    assert all(out == gr.skip() for out in live(None, PAPER_LABEL, 50, 224, 0, demo.PREDICTED))


def test_no_lung_is_a_user_error(tmp_path: Path, empty_models_dir: Path) -> None:
    from cxr_hub import FCDenseNetConfig, FCDenseNetForSemanticSegmentation

    seg = FCDenseNetForSemanticSegmentation(
        FCDenseNetConfig(preset="fcdensenet56", down_blocks=[2], bottleneck_layers=1, growth_rate=2, image_size=32)
    )
    with torch.no_grad():
        seg.classifier.bias.copy_(torch.tensor([50.0, 0.0, 0.0, 0.0]))  # everything is background
    seg.save_pretrained(tmp_path / "seg")
    engine = demo.CXRApp({"CXR_HUB_SEGMENTATION": str(tmp_path / "seg")}, empty_models_dir, device="cpu")
    with pytest.raises(gr.Error, match="No lung found"):
        handler(app.build_demo(engine))(str(EXAMPLE), PAPER_LABEL, 10, 224, 0, demo.PREDICTED)


def test_dicom_identifiers_never_reach_outputs(full_app: demo.CXRApp, tmp_path: Path) -> None:
    from PIL import Image

    pixels = (np.asarray(Image.open(EXAMPLE).convert("L").resize((256, 256)), np.uint16) * 16).clip(0, 4095)
    secret = {"PatientName": "Doe^Jane", "PatientID": "ID-937251", "InstitutionName": "St Example Hospital"}
    path = tmp_path / "Doe_Jane_ID-937251.dcm"  # file names can carry identifiers too
    path.write_bytes(make_dicom(pixels, **secret))
    a = full_app.analyze(str(path), demo.PAPER_MODEL, k=10)
    outputs = render(a, full_app)
    texts = [o for o in outputs if isinstance(o, str)]
    texts += [json.dumps(outputs[9]), *(Path(f).read_text() for f in outputs[10] if f.endswith(".json"))]
    for text in texts:
        for needle in ("Doe", "Jane", "937251", "Hospital", "Doe_Jane"):
            assert needle not in text


def test_upload_purged_from_disk_is_still_served_from_cache(full_app: demo.CXRApp, tmp_path: Path) -> None:
    upload = tmp_path / "upload.jpg"
    upload.write_bytes(EXAMPLE.read_bytes())
    full_app.analyze(str(upload), demo.PAPER_MODEL, k=5)
    upload.unlink()  # what Gradio's delete_cache does
    assert full_app.analyze(str(upload), demo.PAPER_MODEL, k=6).cache_hit
    full_app.prepared.clear()
    with pytest.raises(demo.AppInputError, match="upload it again"):
        full_app.analyze(str(upload), demo.PAPER_MODEL, k=6)


# ------------------------------------------------------------------------------------ not a frontal chest X-ray


def test_refused_upload_is_a_gr_error_and_clears_old_outputs(full_app: demo.CXRApp, tmp_path: Path) -> None:
    """The pipeline's input check refuses a colour photograph; the UI shows its message as gr.Error, and clears every
    output first (on the Analyse click and whenever another image is chosen), so no older result stays on screen."""
    from PIL import Image
    from test_input_check import colour_photo

    blocks = app.build_demo(full_app)
    analyze = handler(blocks)
    photo = tmp_path / "portrait.jpg"
    Image.fromarray(colour_photo(480, 400)).save(photo, quality=90)
    assert analyze(str(EXAMPLE), PAPER_LABEL, 20, 224, 0, demo.PREDICTED)[0].startswith("### Majority vote")
    for _ in range(2):  # a fresh refusal, then the remembered one (a slider change)
        with pytest.raises(gr.Error) as err:
            analyze(str(photo), PAPER_LABEL, 20, 224, 0, demo.PREDICTED)
        message = err.value.message
        assert message.startswith("The uploaded file does not look like a frontal chest X-ray: it is a colour image")
        assert str(tmp_path) not in message and "portrait" not in message and "Traceback" not in message
    fns = list(blocks.fns.values())
    by_name = {getattr(f.fn, "__name__", ""): f for f in fns}
    analyse_at = fns.index(by_name["analyze"])
    clear = fns[analyse_at - 1]  # the Analyse click runs the clearing, then (.then) the analysis
    assert clear.fn is cleared_outputs and clear.api_name != "analyze"
    assert [b._id for b in clear.outputs] == [b._id for b in fns[analyse_at].outputs]
    image_change = [f for f in fns if f.fn is cleared_outputs and any(t[1] == "change" for t in f.targets)]
    assert image_change, "choosing another image does not clear the previous outputs"
    cleared = cleared_outputs()
    assert len(cleared) == len(OUTPUT_NAMES) + 1 and cleared[0] == CLEARED_SUMMARY
    assert all(v is None for v in cleared[1:])  # no image, plot, map, JSON, report or state of the old image


def test_accepted_upload_reports_the_input_check(full_app: demo.CXRApp) -> None:
    a = full_app.analyze(str(EXAMPLE), demo.PAPER_MODEL, k=20, patch_size=224, seed=0)
    o = named(render(a, full_app))
    check = o["result"]["input_check"]
    assert check["accepted"] is True and check["enforced"] is True and set(check["checks"]) >= {"colour", "size"}
    assert json.loads(Path(o["report"][0]).read_text())["input_check"] == check


@pytest.mark.skipif(
    not (REPO_ROOT / "models" / "cxr-lung-seg-fcdensenet103" / "model.safetensors").is_file(),
    reason="shipped segmentation model absent",
)
def test_shipped_app_refuses_a_rotated_film(tmp_path: Path, empty_models_dir: Path) -> None:
    from PIL import Image

    seg = REPO_ROOT / "models" / "cxr-lung-seg-fcdensenet103"
    engine = demo.CXRApp({"CXR_HUB_SEGMENTATION": str(seg)}, empty_models_dir, device="cpu")
    rotated = tmp_path / "rotated.png"
    Image.open(EXAMPLE).convert("L").rotate(90, expand=True).save(rotated)
    with pytest.raises(gr.Error, match=r"does not look like a frontal chest X-ray: it looks rotated"):
        handler(app.build_demo(engine))(str(rotated), PAPER_LABEL, 10, 224, 0, demo.PREDICTED)


# ------------------------------------------------------------------------------------------- gradio_client end-to-end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_gradio_client_end_to_end(full_app: demo.CXRApp, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    ui = app.build_demo(full_app)
    port = free_port()
    ui.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_kwargs())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "dl"))
        api = client.view_api(print_info=False, return_format="dict")
        assert list(api["named_endpoints"]) == ["/analyze"]  # the UI's other events are private
        results = []
        for k in (30, 45):  # analyse an example, then "move the K slider"
            out = client.predict(
                image=handle_file(str(EXAMPLE)),
                model=PAPER_LABEL,
                k=k,
                patch_size=224,
                seed=0,
                saliency_class=demo.PREDICTED,
                api_name="/analyze",
            )
            assert len(out) == len(OUTPUT_NAMES)
            summary, seg, votes, fractions, cam, gcam, biomarkers, triage, details, result, report = out
            assert "Majority vote" in summary and "cardiothoracic ratio" in biomarkers and "Device:" in details
            assert Path(seg["image"]["path"] if isinstance(seg["image"], dict) else seg["image"]).is_file()
            assert [a["label"] for a in seg["annotations"]] == ["heart", "left lung", "right lung", "sampled patches"]
            assert votes is not None and fractions["label"] is not None
            assert Path(cam).is_file() and Path(gcam).is_file()
            assert "education, not advice" in triage
            assert result["k"] == k and sum(result["votes"].values()) == k
            assert sum(result["vote_fraction"].values()) == pytest.approx(1.0)
            for stats in result["saliency_stats"].values():
                assert 0.0 <= stats["min"] <= stats["max"] <= 1.0 and not math.isnan(stats["max"])
            assert len(report) == 2 and {Path(p).suffix for p in report} == {".json", ".png"}
            saved = json.loads(Path(next(p for p in report if p.endswith(".json"))).read_text())
            assert len(saved["patch_boxes"]) == k
            results.append(result)
        assert results[1]["cache"] == "hit" and results[0]["label"] in results[0]["class_names"]
        from PIL import Image
        from test_input_check import colour_photo

        photo = tmp_path / "photo.jpg"
        Image.fromarray(colour_photo(480, 400)).save(photo)
        with pytest.raises(AppError, match="does not look like a frontal chest X-ray: it is a colour image"):
            client.predict(handle_file(str(photo)), PAPER_LABEL, 10, 224, 0, demo.PREDICTED, api_name="/analyze")
        with pytest.raises(AppError, match="less than minimum"):  # Gradio checks the slider range itself
            client.predict(handle_file(str(EXAMPLE)), PAPER_LABEL, 0, 224, 0, demo.PREDICTED, api_name="/analyze")
    finally:
        ui.close()
