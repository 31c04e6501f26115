"""Determinism: the same image, K and seed give bit-identical votes and the same saliency maps (to 1e-6).

Two pipelines are loaded separately from the same saved tiny random models (as two runs of the CLI or two app
processes would), so model loading, eval mode (dropout off), patch sampling, batching and eq. 5 are all covered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_cxr
from PIL import Image

from cxr_hub import CXRPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def image_path(tmp_path: Path) -> Path:
    path = tmp_path / "cxr.png"
    Image.fromarray(synthetic_cxr(np.random.default_rng(11), 200, 170)).save(path)
    return path


def test_same_image_k_and_seed_give_identical_results(tiny_model_folders, image_path: Path) -> None:
    seg, clf = tiny_model_folders
    runs = []
    for _ in range(2):  # two separately loaded pipelines, as in two processes
        pipe = CXRPipeline.from_pretrained(seg, clf, device="cpu")
        runs.append(pipe(image_path, k=24, seed=7, saliency_classes="all"))
    runs.append(pipe(image_path, k=24, seed=7, saliency_classes="all"))  # the same pipeline again
    # (chunk_size is part of "the same settings": oneDNN picks kernels by batch size, so another chunking may differ
    # in the last bits of a probability)
    first = runs[0]
    assert sum(first.votes.values()) == 24 and first.saliency
    for other in runs[1:]:
        assert other.votes == first.votes and other.label == first.label
        np.testing.assert_array_equal(other.patch_probabilities, first.patch_probabilities)
        np.testing.assert_array_equal(other.patch_boxes_1024, first.patch_boxes_1024)
        np.testing.assert_array_equal(other.label_map, first.label_map)
        assert set(other.saliency) == set(first.saliency) == set(first.class_names)
        for name, sal in first.saliency.items():
            np.testing.assert_allclose(other.saliency[name], sal, rtol=0, atol=1e-6)
        assert other.biomarkers.to_dict() == first.biomarkers.to_dict()

    # the comparison can fail: another seed samples other patches
    different = pipe(image_path, k=24, seed=8, saliency_classes="all")
    assert not np.array_equal(different.patch_boxes_1024, first.patch_boxes_1024)


def test_a_drawn_seed_is_recorded_and_replays_in_another_process(tiny_model_folders, image_path: Path) -> None:
    """seed=None draws a seed, and ``result.seed`` is that seed: a separately loaded pipeline reproduces the result."""
    seg, clf = tiny_model_folders
    first = CXRPipeline.from_pretrained(seg, clf, device="cpu")(image_path, k=16, seed=None)
    assert type(first.seed) is int
    replay = CXRPipeline.from_pretrained(seg, clf, device="cpu")(image_path, k=16, seed=first.seed)
    assert replay.seed == first.seed and replay.votes == first.votes
    np.testing.assert_array_equal(replay.patch_boxes_1024, first.patch_boxes_1024)
    np.testing.assert_array_equal(replay.patch_probabilities, first.patch_probabilities)
    np.testing.assert_allclose(replay.saliency[replay.label], first.saliency[first.label], rtol=0, atol=1e-6)
