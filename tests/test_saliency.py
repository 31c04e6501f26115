"""Backward-free Grad-CAM against autograd, and the probabilistic Grad-CAM of eq. 5 on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from baselines import reference_gradcam  # benchmarks/ (on the path through conftest): the textbook oracle

from cxr_hub import PatchClassifierConfig, PatchClassifierForImageClassification
from cxr_hub.saliency import (
    class_indices,
    gradcam_from_features,
    normalize_cams,
    patch_coverage,
    probabilistic_gradcam,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models gain nothing from threads, and on a shared CPU OpenMP barriers can make them 30x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def random_classifier():
    """A float64 ResNet-18 classifier with random weights and non-trivial BN statistics."""
    torch.manual_seed(0)
    model = PatchClassifierForImageClassification(PatchClassifierConfig(image_size=256, patch_size=64, input_size=96))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.classifier.weight.data.normal_(0, 1.0)
    return model.double().eval()


@pytest.mark.parametrize("normalize", [True, False])
def test_fast_gradcam_equals_autograd_reference(random_classifier, normalize):
    model = random_classifier
    x = torch.randn(3, 1, 96, 96, dtype=torch.float64)
    classes = [0, 1, 2, 3]
    ref = reference_gradcam(model, x, classes, normalize=normalize)
    with torch.inference_mode():
        features = model.forward_features(x)
    fast = gradcam_from_features(features, model.classifier.weight, classes, normalize=normalize)
    assert fast.shape == ref.shape == (3, 4, 3, 3)
    assert fast.dtype == torch.float64
    assert (ref > 0).any()  # the comparison is not between two all-zero maps
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    if normalize:
        assert float(fast.max()) == pytest.approx(1.0) and float(fast.min()) >= 0
    # a single int class drops the class axis
    single = gradcam_from_features(features, model.classifier.weight, 2, normalize=normalize)
    torch.testing.assert_close(single, fast[:, 2])
    torch.testing.assert_close(reference_gradcam(model, x, 2, normalize=normalize), ref[:, 2])


class _NoLayer4(torch.nn.Module):
    """A classifier exposing only forward_features/forward_head (no ``backbone.layer4`` to hook)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.forward_features(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.inner.forward_head(f)


def test_reference_without_hookable_layer_uses_forward_features(random_classifier):
    model = random_classifier
    x = torch.randn(2, 1, 96, 96, dtype=torch.float64)
    hooked = reference_gradcam(model, x, [1, 3])
    torch.testing.assert_close(reference_gradcam(_NoLayer4(model), x, [1, 3]), hooked)


def test_normalize_cams():
    cams = torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = normalize_cams(cams)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert (out[1] == 0).all()


def test_patch_coverage_counts():
    boxes = np.array([[0, 0, 4, 4], [2, 2, 6, 6], [2, 2, 6, 6]])
    cov = patch_coverage(boxes, (8, 8))
    expected = np.zeros((8, 8), int)
    for x0, y0, x1, y1 in boxes:
        expected[y0:y1, x0:x1] += 1
    np.testing.assert_array_equal(cov, expected)


def test_coverage_division_on_hand_made_cams():
    """Eq. 5: sum of prob x cam over covering patches divided by the number of covering patches."""
    boxes = np.array([[0, 0, 4, 4], [2, 2, 6, 6], [2, 2, 6, 6]])
    cams = np.ones((3, 2, 2), dtype=np.float32)  # constant maps stay constant when upsampled
    probs = np.array([0.3, 0.6, 0.9])
    out = probabilistic_gradcam(cams, probs, boxes, (10, 10))
    assert out.shape == (10, 10) and out.dtype == np.float32
    expected = np.zeros((10, 10))
    expected[0:4, 0:4] = 0.3  # one patch
    expected[2:6, 2:6] = (0.6 + 0.9) / 2  # two patches
    expected[2:4, 2:4] = (0.3 + 0.6 + 0.9) / 3  # covered by n = 3 patches
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert (out[6:, :] == 0).all() and (out[:, 6:] == 0).all()  # uncovered pixels are 0


def test_cams_are_upsampled_bilinearly_to_the_crop():
    cam = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]])
    out = probabilistic_gradcam(cam, np.array([0.5]), np.array([[3, 1, 11, 9]]), (12, 12))
    expected = 0.5 * F.interpolate(cam[None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(out[1:9, 3:11], expected.numpy(), atol=1e-6)
    assert out[0].sum() == 0 and out[:, :3].sum() == 0


def test_multi_class_equals_per_class_and_stays_in_unit_range():
    rng = np.random.default_rng(0)
    k, n = 20, 3
    cams = normalize_cams(torch.from_numpy(rng.random((k, n, 7, 7)).astype(np.float32)))
    probs = rng.dirichlet(np.ones(n), size=k).astype(np.float32)
    x0 = rng.integers(0, 64 - 16, size=k)
    y0 = rng.integers(0, 64 - 16, size=k)
    boxes = np.stack([x0, y0, x0 + 16, y0 + 16], axis=1)
    multi = probabilistic_gradcam(cams, probs, boxes, (64, 64))
    assert multi.shape == (n, 64, 64)
    for c in range(n):
        np.testing.assert_allclose(multi[c], probabilistic_gradcam(cams[:, c], probs[:, c], boxes, (64, 64)))
    assert multi.min() >= 0 and multi.max() <= 1 + 1e-6
    with pytest.raises(ValueError):
        probabilistic_gradcam(cams, probs[:, :2], boxes, (64, 64))


def test_no_class_gives_no_maps():
    """An empty class selection (K x 0 maps) is "no saliency", not a crash inside the paste."""
    boxes = np.array([[0, 0, 4, 4], [2, 2, 6, 6]])
    cams, probs = np.ones((2, 0, 2, 2), np.float32), np.ones((2, 0), np.float32)
    out = probabilistic_gradcam(cams, probs, boxes, (10, 8))
    assert out.shape == (0, 10, 8) and out.dtype == np.float32
    features = torch.rand(2, 5, 3, 3)
    assert gradcam_from_features(features, torch.rand(4, 5), []).shape == (2, 0, 3, 3)


def test_class_indices_accepts_ints_sequences_and_tensors():
    assert class_indices(2) == ([2], True)
    assert class_indices(np.int64(1)) == ([1], True)
    assert class_indices([0, 3]) == ([0, 3], False)
    assert class_indices(torch.tensor([1, 2])) == ([1, 2], False)
