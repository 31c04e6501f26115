"""Checks on the models shipped in ``models/`` (each test skips while that model is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT

from cxr_hub import load_image
from cxr_hub.evaluation.segmentation import load_segmentation_model, segment, segmentation_processor
from cxr_hub.postprocessing import clean_label_map, uses_postprocessing
from cxr_hub.presets import SHIPPED

#: The pipeline's default segmentation model (cxr_hub.presets) and every shipped segmentation model.
SEG_DIR = SHIPPED["segmentation"].path
SEG_DIRS = [m.path for m in SHIPPED.values() if m.role == "segmentation"]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.jpg"))


@pytest.fixture(scope="module", params=SEG_DIRS, ids=lambda p: p.name)
def seg_folder_and_model(request):
    folder = request.param
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"shipped segmentation model absent ({folder})")
    return folder, load_segmentation_model(folder, device="cpu")


def test_shipped_segmentation_folder_is_complete(seg_folder_and_model):
    folder, seg_model = seg_folder_and_model
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    assert size_mb <= 25, f"{size_mb:.1f} MB"
    config = json.loads((folder / "config.json").read_text())
    for target in config["auto_map"].values():
        assert (folder / f"{target.split('.')[0]}.py").is_file()
    assert all(p.dtype == torch.float32 for p in seg_model.parameters())
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["model-index"][0]["results"], "the card must carry measured metrics"
    assert "not for clinical use" in card.lower()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_shipped_segmentation_finds_two_lungs_and_a_heart_between(seg_folder_and_model, example):
    _, seg_model = seg_folder_and_model
    image = load_image(example)
    label_map = segment(seg_model, segmentation_processor(seg_model), [image])[0]
    if uses_postprocessing(seg_model.config):
        label_map, _ = clean_label_map(label_map)
    h, w = label_map.shape
    centroids = {}
    for label, name in ((1, "heart"), (2, "left_lung"), (3, "right_lung")):
        ys, xs = np.nonzero(label_map == label)
        share = len(xs) / label_map.size
        low = 0.01 if name == "heart" else 0.04
        assert low < share < 0.35, f"{name} covers {share:.1%} of the image"
        centroids[name] = (xs.mean() / w, ys.mean() / h)
    # PA view: the patient's right lung is on the image's left
    assert centroids["right_lung"][0] < 0.5 < centroids["left_lung"][0]
    assert centroids["right_lung"][0] < centroids["heart"][0] < centroids["left_lung"][0]


CLASSIFIERS = {
    "cxr-patch-resnet18": ("label4", "patch", ["normal", "bacterial", "viral_covid"]),
    "cxr-global-resnet18": ("label4", "global", ["normal", "bacterial", "viral_covid"]),
    "cxr-patch-resnet18-covidx": ("label3", "patch", ["normal", "pneumonia", "covid"]),
}


#: end-to-end evaluation of each shipped classifier (``python -m cxr_hub evaluate``), under docs/results/
E2E_METRICS = {
    "cxr-patch-resnet18": "label4_test/metrics.json",
    "cxr-global-resnet18": "label4_test/metrics.json",
    "cxr-patch-resnet18-covidx": "label3_test/metrics.json",
}


def _shipped_classifier(name: str):
    folder = REPO_ROOT / "models" / name
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"shipped classifier absent ({folder})")
    from cxr_hub.loading import load_model

    return folder, load_model(folder).eval()


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_shipped_classifier_folder_config_and_card(name):
    folder, model = _shipped_classifier(name)
    label_set, mode, trained = CLASSIFIERS[name]
    cfg = model.config
    assert (cfg.label_set, cfg.mode) == (label_set, mode)
    assert list(cfg.trained_classes) == trained  # tuberculosis stays untrained: no images
    assert next(model.parameters()).dtype == torch.float32  # fp16 storage loads as float32
    files = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "training_config.json",
    } <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    assert sum(p.stat().st_size for p in folder.iterdir()) / 2**20 <= 25
    # the card's numbers are measured and saved beside it, not typed in: first the end-to-end evaluation of these
    # committed weights (docs/results), then the training script's test score (training_config.json)
    final = json.loads((folder / "training_config.json").read_text())
    e2e = json.loads((REPO_ROOT / "docs" / "results" / E2E_METRICS[name]).read_text())
    e2e = e2e["global"] if mode == "global" else e2e
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    results = front["model-index"][0]["results"]
    for result, measured in zip(results, (e2e, final["test"]), strict=True):
        values = {m["type"]: m["value"] for m in result["metrics"]}
        assert values["accuracy"] == pytest.approx(measured["accuracy"], abs=1e-4)
        assert values["macro_f1"] == pytest.approx(measured["f1"], abs=1e-4)
    assert "from scratch" in card and "NOT for clinical use" in card


def test_shipped_patch_classifier_on_an_example():
    if not (SEG_DIR / "model.safetensors").is_file():
        pytest.skip("shipped segmentation model absent")
    folder, _ = _shipped_classifier("cxr-patch-resnet18")
    from cxr_hub import CXRPipeline

    pipe = CXRPipeline.from_pretrained(SEG_DIR, folder, REPO_ROOT / "models" / "cxr-global-resnet18", device="cpu")
    r = pipe(EXAMPLES[0], k=20, seed=0)
    assert sum(r.votes.values()) == 20 and r.label in r.votes and r.global_label in r.votes
    assert any("tuberculosis" in w for w in r.warnings)  # the untrained class is flagged
    assert 0.0 <= r.saliency_in_lung[r.label] <= 1.0


def test_shipped_remote_code_is_the_package_source():
    """Each shipped folder's Python files (run by ``trust_remote_code`` users) are byte copies of ``cxr_hub/models``:
    a config field added to the package (e.g. ``int8_calibration``) reaches Hub users too."""
    folders = [p for p in sorted((REPO_ROOT / "models").glob("*")) if (p / "config.json").is_file()]
    if not folders:
        pytest.skip("shipped models absent")
    for folder in folders:
        for path in folder.glob("*.py"):
            source = REPO_ROOT / "cxr_hub" / "models" / path.name
            assert path.read_bytes() == source.read_bytes(), f"{path} differs from {source}: re-export or copy it"


@pytest.mark.parametrize("name", [*CLASSIFIERS, *(p.name for p in SEG_DIRS)])
def test_shipped_card_compares_with_the_paper_from_the_data_file(name):
    """Each card's "Compared with the paper" section is what cxr_hub.hub renders now from the card's own first
    result and cxr_hub/data/paper_tables.json (no paper number typed into a card), and it says which way each
    difference goes."""
    from cxr_hub.hub import refresh_paper_comparison
    from cxr_hub.paper import format_number, generated_blocks, paper_row, paper_table

    folder = REPO_ROOT / "models" / name
    if not (folder / "README.md").is_file():
        pytest.skip(f"shipped model absent ({folder})")
    card = (folder / "README.md").read_text(encoding="utf-8")
    config = json.loads((folder / "config.json").read_text())
    assert refresh_paper_comparison(card, config) == card, (
        "stale: card = cxr_hub.hub.refresh_paper_comparison(card, config)"
    )
    section = generated_blocks(card)["paper-comparison"]
    rows = {line.split(" | ")[0].strip("| "): line for line in section.split("\n") if line.startswith("| ")}
    if name in {p.name for p in SEG_DIRS}:
        # a U-Net is compared with the paper's U-Net (Table XIII), an FC-DenseNet103 with Table V
        if config["model_type"] == "cxr_unet":
            paper = paper_table("table_xiii_lung_jaccard_by_network")["unet"]["jsrt"]
        else:
            paper = paper_table("table_v_segmentation_jaccard")["jsrt_preprocessed"]["lung"]
        assert f"{paper[0]:.3f} ± {paper[1]:.3f}" in rows["Jaccard, lung"]
    elif CLASSIFIERS[name][0] == "label4":
        paper = paper_row("table_x_macro_metrics_percent", CLASSIFIERS[name][1])
        assert f"| {format_number(paper['f1'])} |" in rows["macro F1"]
        assert "not comparable" in rows["sensitivity (tuberculosis)"]  # untrained, no images
    else:
        paper = paper_row("table_xii_vs_covidnet_percent", "patch")
        assert f"| {format_number(paper['sens_covid19'])} |" in rows["sensitivity (covid)"]
    for line in rows.values():
        if line.startswith("| metric") or line.startswith("|---"):
            continue
        assert any(w in line for w in ("lower**", "higher**", "about the same", "not comparable")), line
    assert "below the paper" in section.lower()
