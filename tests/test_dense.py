"""Dense voting (cxr_hub.dense): the window arithmetic, the grid snapping, and the pipeline's opt-in mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_cxr
from test_pipeline import PatternSegmenter, chest_labels

from cxr_hub import CXRPipeline, PatchClassifierConfig, PatchClassifierForImageClassification
from cxr_hub.dense import dense_geometry, snap_boxes, window_scores
from cxr_hub.saliency import gradcam_from_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_geometry_for_the_slider_sizes():
    assert dense_geometry(1024, 224, 224) == (1024, 32.0, 7)
    assert dense_geometry(1024, 448, 224) == (512, 64.0, 7)
    assert dense_geometry(1024, 112, 224) == (2048, 16.0, 7)
    side, cell, window = dense_geometry(1024, 256, 224)
    assert (side, window) == (896, 7) and cell * 7 == pytest.approx(256)
    with pytest.raises(ValueError, match="multiple of the stride"):
        dense_geometry(1024, 224, 200)
    with pytest.raises(ValueError, match="patch_size"):
        dense_geometry(1024, 2000, 224)


def test_snapping_moves_boxes_to_the_nearest_grid_node_inside_the_frame():
    boxes = np.array([[0, 0, 224, 224], [47, 17, 271, 241], [800, 800, 1024, 1024], [790, 5, 1014, 229]])
    snapped, origins = snap_boxes(boxes, 32.0, 32, 7, 224)
    assert origins.tolist() == [[0, 0], [1, 1], [25, 25], [25, 0]]
    assert snapped.tolist() == [[0, 0, 224, 224], [32, 32, 256, 256], [800, 800, 1024, 1024], [800, 0, 1024, 224]]
    assert (np.abs(snapped[:, :2] - boxes[:, :2]) <= 16).all()  # at most half a cell away


def test_window_scores_are_the_head_and_grad_cam_of_each_window():
    g = torch.Generator().manual_seed(0)
    features = torch.relu(torch.randn(1, 16, 10, 10, generator=g))
    weight, bias = torch.randn(4, 16, generator=g), torch.randn(4, generator=g)
    origins = np.array([[0, 0], [3, 5], [7, 7], [2, 6]])
    logits, cams = window_scores(features, weight, bias, origins, 3)
    assert logits.shape == (4, 4) and cams.shape == (4, 4, 3, 3)
    for i, (gx, gy) in enumerate(origins):
        window = features[:, :, gy : gy + 3, gx : gx + 3]
        torch.testing.assert_close(logits[i], window.mean(dim=(2, 3))[0] @ weight.T + bias)
        torch.testing.assert_close(cams[i], gradcam_from_features(window, weight, [0, 1, 2, 3], normalize=False)[0])


class _LocalClassifier(PatchClassifierForImageClassification):
    """A classifier whose features only see their own 32-pixel cell: dense voting is then exact on grid boxes."""

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(pixel_values, 32)
        return torch.relu(pooled * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1))


def _local_classifier(config: PatchClassifierConfig) -> _LocalClassifier:
    torch.manual_seed(0)
    model = _LocalClassifier(config)
    model.register_buffer("scale", torch.randn(model.num_features))
    model.register_buffer("shift", torch.randn(model.num_features))
    model.classifier.weight.data.normal_(0, 0.5)
    return model.eval()


@pytest.fixture
def config() -> PatchClassifierConfig:
    return PatchClassifierConfig(image_size=256, patch_size=64, input_size=64, num_patches=8)


def test_dense_equals_exact_for_a_local_network_on_grid_boxes(tiny_fcdensenet_config, config):
    model = _local_classifier(config)
    seg = PatternSegmenter(tiny_fcdensenet_config, chest_labels)
    image = synthetic_cxr(np.random.default_rng(0), 200, 180)
    dense = CXRPipeline(seg, model, device="cpu", precision="fp32", voting="dense", reuse_patches=False)
    prepared = dense.prepare(image)
    d = dense.analyze(prepared, k=12, seed=3, saliency_classes="all")
    assert (d.patch_boxes_1024[:, :2] % 32 == 0).all()  # snapped to the feature grid
    # exact voting of the very same (snapped) boxes
    probs, cams = dense.classify_patches(prepared.frame, d.patch_boxes_1024)
    np.testing.assert_allclose(d.patch_probabilities, probs.numpy(), atol=1e-5)
    dense_probs, dense_cams = dense._classify_dense(prepared, d.patch_boxes_1024, 64)
    torch.testing.assert_close(dense_cams, cams, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(dense_probs.numpy(), probs.numpy(), atol=1e-5)
    assert sum(d.votes.values()) == 12
    for m in d.saliency.values():
        assert m.shape == (200, 180) and m.min() >= 0.0 and m.max() <= 1.0 + 1e-6


def test_dense_mode_is_k_independent_and_cached(tiny_fcdensenet_config, config):
    model = _local_classifier(config)
    seg = PatternSegmenter(tiny_fcdensenet_config, chest_labels)
    pipe = CXRPipeline(seg, model, device="cpu", voting="dense")
    prepared = pipe.prepare(synthetic_cxr(np.random.default_rng(1), 160, 150))
    small = pipe.analyze(prepared, k=5, seed=0)
    calls = []
    original = model.forward_features
    model.forward_features = lambda x: calls.append(x.shape) or original(x)
    large = pipe.analyze(prepared, k=400, seed=0)
    assert calls == []  # the whole-frame features were cached by the first call
    assert sum(large.votes.values()) == 400
    np.testing.assert_array_equal(large.patch_boxes_1024[:5], small.patch_boxes_1024)  # prefix-stable draws
    np.testing.assert_allclose(large.patch_probabilities[:5], small.patch_probabilities, atol=1e-6)
    sample = pipe.sample_patches(prepared, k=5, seed=0)
    np.testing.assert_array_equal(sample.boxes_1024, small.patch_boxes_1024)
    with pytest.raises(ValueError, match="voting must be one of"):
        CXRPipeline(seg, model, device="cpu", voting="sparse")
