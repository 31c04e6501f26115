"""Shared fixtures: tiny model configs, seeded synthetic images, and the optional real data set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Tests never reach a model hub: they run on what they build or what the repository ships.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


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
