"""K ablation and patch-intensity analysis (training/patch_analysis.py) on synthetic probabilities and frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train_classifier import synthetic_data

from cxr_hub import PatchClassifierConfig, PatchClassifierForImageClassification, patches
from training import patch_analysis as pa

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _probs(votes_per_image: list[list[int]], c: int = 4) -> np.ndarray:
    """(N, K, C) one-hot-ish probabilities whose argmax per patch is the given class."""
    out = np.full((len(votes_per_image), len(votes_per_image[0]), c), 0.1 / (c - 1), np.float32)
    for i, row in enumerate(votes_per_image):
        for j, cls in enumerate(row):
            out[i, j, cls] = 0.9
    return out


def test_sampler_draws_are_prefix_stable():
    # the K ablation (and the app's K slider) rely on this: the first K of a larger draw are the K-patch draw
    mask = np.zeros((256, 256), bool)
    mask[40:200, 30:120] = True
    _, small = patches.sample_patch_boxes(mask, 10, 64, np.random.default_rng(7))
    _, large = patches.sample_patch_boxes(mask, 50, 64, np.random.default_rng(7))
    np.testing.assert_array_equal(small, large[:10])


def test_k_ablation_first_k_and_disjoint_sets():
    data = synthetic_data(n=3, labels=[0, 1, 3])
    # image 0 (normal): patches 0,1 say normal, 2,3 say viral -> K=2 sets: [right, wrong]
    probs = _probs([[0, 0, 3, 3], [1, 1, 1, 1], [3, 3, 3, 3]])
    rows = pa.k_ablation(probs, data, [1, 2, 4])
    by_k = {r["k"]: r for r in rows}
    assert by_k[1]["sets"] == 4 and by_k[2]["sets"] == 2 and by_k[4]["sets"] == 1
    assert by_k[2]["accuracy"] == pytest.approx(1.0)  # first set: everything right
    # second K=2 set: image 0 wrong -> 2/3; mean over the two sets 5/6
    assert by_k[2]["accuracy_mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert by_k[2]["accuracy_sd"] == pytest.approx((1 - 2 / 3) / 2)
    # K=4: 2 normal vs 2 viral votes, tie broken by the mean probability (equal) -> lowest index (normal)
    assert by_k[4]["accuracy"] == pytest.approx(1.0)
    assert set(by_k[1]["sensitivity"]) == {"normal", "bacterial", "viral_covid"}  # tuberculosis absent


def test_k_above_k_max_is_refused():
    data = synthetic_data(n=3, labels=[0, 1, 3])
    with pytest.raises(ValueError, match="k_max"):
        pa.k_ablation(_probs([[0, 0], [1, 1], [3, 3]]), data, [5])


def test_correct_patch_stats_keep_only_patches_of_the_true_class():
    data = synthetic_data(n=2, labels=[0, 3])
    probs = _probs([[0, 3, 0], [3, 3, 0]])
    means = np.array([[10, 20, 30], [40, 50, 60]], np.float32)
    sds = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    stats = pa.correct_patch_stats(probs, means, sds, data)
    assert stats["patch_mean"]["normal"] == [10, 30]
    assert stats["patch_mean"]["viral_covid"] == [40, 50]
    assert stats["patch_sd"]["viral_covid"] == [4, 5]
    assert stats["patch_mean"]["tuberculosis"] == []


def test_patch_probabilities_match_the_lung_pixels():
    data = synthetic_data(n=2, size=256, labels=[0, 3])
    cfg = PatchClassifierConfig(image_size=256, patch_size=64, input_size=32, num_patches=8)
    torch.manual_seed(0)
    model = PatchClassifierForImageClassification(cfg).eval()
    probs, means, sds = pa.patch_probabilities(model, data, k=6, seed=3)
    assert probs.shape == (2, 6, 4) and means.shape == (2, 6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # recompute one patch's statistics by hand from the same draw
    _, boxes = patches.sample_patch_boxes(data.masks[1], 6, 64, np.random.default_rng(3))
    x0, y0, x1, y1 = boxes[2]
    lung = data.masks[1, y0:y1, x0:x1]
    values = data.frames[1, y0:y1, x0:x1][lung].astype(np.float64)
    assert means[1, 2] == pytest.approx(values.mean(), rel=1e-5)
    assert sds[1, 2] == pytest.approx(values.std(), rel=1e-5)
    # the class-dependent texture of the synthetic frames shows in the patch means
    assert means[1].mean() > means[0].mean()
