"""Shared fixtures: tiny model configs, seeded synthetic images, and the optional real data set."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Tests never reach a model hub: they run on what they build or what the repository ships.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# benchmarks/ holds the slow reference implementations the tests check against (baselines.reference_gradcam)
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))


def data_root() -> Path:
    """Location of the curated data set: env ``CXR_DATA``, else ``../shared/data/cxr`` beside the repository."""
    return Path(os.environ.get("CXR_DATA", REPO_ROOT.parent / "shared" / "data" / "cxr"))


@pytest.fixture
def cxr_data() -> Path:
    """The real data folder; skips the test where it is absent (e.g. a fresh clone without ../shared)."""
    root = data_root()
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"curated data not found at {root} (set CXR_DATA)")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Runs a module's tests with one torch thread (use via ``pytestmark = pytest.mark.usefixtures(...)``).

    Tiny models gain nothing from threads, and on a shared CPU OpenMP barriers can make them 30x slower.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def synthetic_cxr(rng: np.random.Generator, h: int = 128, w: int = 112, dtype=np.uint8) -> np.ndarray:
    """A gray image with two dark 'lungs' on a brighter body, plus noise; shape (h, w)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.6 + 0.1 * rng.standard_normal((h, w))
    for cx in (0.3 * w, 0.7 * w):
        img -= 0.4 * (((xx - cx) / (0.15 * w)) ** 2 + ((yy - 0.5 * h) / (0.3 * h)) ** 2 < 1)
    img = np.clip(img, 0, 1)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    return (img * top).astype(dtype)


@pytest.fixture
def cxr_image(rng: np.random.Generator) -> np.ndarray:
    return synthetic_cxr(rng)


@pytest.fixture
def tiny_fcdensenet_config():
    from cxr_hub import FCDenseNetConfig

    return FCDenseNetConfig(
        preset="fcdensenet56",
        down_blocks=[2, 2],
        bottleneck_layers=2,
        growth_rate=4,
        first_conv_channels=8,
        image_size=64,
        class_weights=[0.5, 1.0, 1.0, 1.0],
    )


@pytest.fixture
def tiny_unet_config():
    from cxr_hub import UNetConfig

    return UNetConfig(base_channels=4, depth=2, image_size=64)


@pytest.fixture
def tiny_classifier_config():
    from cxr_hub import PatchClassifierConfig

    return PatchClassifierConfig(image_size=256, patch_size=64, input_size=64, num_patches=8)


def synthetic_label_map(h: int = 128, w: int = 112) -> np.ndarray:
    """Label map matching ``synthetic_cxr``: right lung (3) on the image's left, left lung (2) on its right, heart
    (1) between them; uint8 (h, w)."""
    yy, xx = np.mgrid[0:h, 0:w]
    lab = np.zeros((h, w), np.uint8)
    lab[((xx - 0.3 * w) / (0.15 * w)) ** 2 + ((yy - 0.5 * h) / (0.3 * h)) ** 2 < 1] = 3
    lab[((xx - 0.7 * w) / (0.15 * w)) ** 2 + ((yy - 0.5 * h) / (0.3 * h)) ** 2 < 1] = 2
    lab[((xx - 0.5 * w) / (0.07 * w)) ** 2 + ((yy - 0.65 * h) / (0.12 * h)) ** 2 < 1] = 1
    return lab


def write_synthetic_manifest(root: Path, n: int = 6, seed: int = 0) -> Path:
    """A small manifest folder (images/, masks/, manifest.csv) of synthetic X-rays; returns the CSV path.

    Two sources: "alpha" (SCR-style masks with heart) and "beta" (v7labs-style, lungs only); labels alternate.
    """
    import csv

    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    labels = ["normal", "viral_covid", "bacterial"]
    rows = []
    for i in range(n):
        img = synthetic_cxr(rng, 128, 112)
        lab = synthetic_label_map(128, 112)
        source, mask_source = ("alpha", "scr") if i % 2 == 0 else ("beta", "v7labs")
        if mask_source == "v7labs":
            lab[lab == 1] = 0
        Image.fromarray(img).save(root / "images" / f"img{i}.png")
        Image.fromarray(lab).save(root / "masks" / f"img{i}.png")
        rows.append(
            {
                "id": f"img{i}",
                "image": f"images/img{i}.png",
                "mask": f"masks/img{i}.png",
                "mask_source": mask_source,
                "source": source,
                "patient_id": f"p{i // 2}",
                "label4": labels[i % 3],
                "label3": "",
                "view": "PA",
            }
        )
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_tiny_model_folders(root: Path, num_patches: int = 16) -> tuple[Path, Path]:
    """A tiny random segmentation model and 4-class patch classifier saved with ``save_pretrained``.

    The segmentation head's bias leans towards the lung labels, so a random network still finds "lung" and the
    whole pipeline runs (its outputs are meaningless; tests check plumbing, not medicine). Returns the two folders.
    """
    import torch

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
    clf = PatchClassifierForImageClassification(
        PatchClassifierConfig(image_size=256, patch_size=64, input_size=32, num_patches=num_patches)
    )
    with torch.no_grad():  # larger head weights than the init: distinct probabilities, non-empty Grad-CAM maps
        clf.classifier.weight.normal_(0, 0.5)
    seg_dir, clf_dir = root / "seg", root / "clf"
    seg.save_pretrained(seg_dir)
    clf.eval().save_pretrained(clf_dir)
    return seg_dir, clf_dir


@pytest.fixture(scope="session")
def tiny_model_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(segmentation folder, classifier folder) of :func:`save_tiny_model_folders`, made once per test session."""
    return save_tiny_model_folders(tmp_path_factory.mktemp("tiny_model_folders"))
