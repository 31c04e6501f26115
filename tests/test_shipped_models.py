"""Checks on the models shipped in ``models/`` (each test skips while that model is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT

from cxr_hub import load_image
from cxr_hub.evaluation import load_segmentation_model, segment, segmentation_processor

SEG_DIR = REPO_ROOT / "models" / "cxr-lung-seg-fcdensenet103"
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.jpg"))


@pytest.fixture(scope="module")
def seg_model():
    if not (SEG_DIR / "model.safetensors").is_file():
        pytest.skip(f"shipped segmentation model absent ({SEG_DIR})")
    return load_segmentation_model(SEG_DIR, device="cpu")


def test_shipped_segmentation_folder_is_complete(seg_model):
    files = {p.name for p in SEG_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    size_mb = sum(p.stat().st_size for p in SEG_DIR.iterdir()) / 2**20
    assert size_mb <= 25, f"{size_mb:.1f} MB"
    config = json.loads((SEG_DIR / "config.json").read_text())
    for target in config["auto_map"].values():
        assert (SEG_DIR / f"{target.split('.')[0]}.py").is_file()
    assert all(p.dtype == torch.float32 for p in seg_model.parameters())
    card = (SEG_DIR / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["model-index"][0]["results"], "the card must carry measured metrics"
    assert "not for clinical use" in card.lower()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_shipped_segmentation_finds_two_lungs_and_a_heart_between(seg_model, example):
    image = load_image(example)
    label_map = segment(seg_model, segmentation_processor(seg_model), [image])[0]
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
