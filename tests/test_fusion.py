"""Batch-norm folding (cxr_hub.runtime.fusion) and the pipeline's fast path that uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_cxr
from test_pipeline import PatternSegmenter, _classifier, chest_labels
from torch import nn

from cxr_hub import CXRPipeline, PatchClassifierConfig, PatchClassifierForImageClassification
from cxr_hub.runtime.fusion import conv_bn_pairs, fold_batchnorm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)


@pytest.fixture
def resnet() -> PatchClassifierForImageClassification:
    torch.manual_seed(0)
    model = PatchClassifierForImageClassification(PatchClassifierConfig(input_size=64)).eval()
    _randomise_bn(model)
    return model


def test_resnet18_folds_every_batch_norm_and_computes_the_same_function(resnet):
    # stem + 8 basic blocks x 2 + 3 downsample branches
    assert len(conv_bn_pairs(resnet)) == 20
    x = torch.randn(3, 1, 64, 64)
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    folded, n = fold_batchnorm(resnet, x, forward="forward_features")
    assert n == 20 and folded is not resnet
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # the original is untouched
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())
    with torch.no_grad():
        ref, got = resnet(x).logits, folded(x).logits
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(folded.forward_features(x), resnet.forward_features(x), atol=1e-4, rtol=1e-4)


class _Liar(nn.Module):
    """Registers conv before bn but applies bn first: a structural pair that must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def test_a_fold_that_changes_the_output_is_refused():
    torch.manual_seed(0)
    liar = _Liar().eval()
    _randomise_bn(liar)
    assert conv_bn_pairs(liar) == [("conv", "bn")]
    model, n = fold_batchnorm(liar, torch.randn(2, 3, 8, 8))
    assert n == 0 and model is liar


def test_nothing_to_fold():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    out, n = fold_batchnorm(model, torch.randn(1, 1, 8, 8))
    assert n == 0 and out is model


def _pipe(tiny_fcdensenet_config, classifier, **kw) -> CXRPipeline:
    return CXRPipeline(PatternSegmenter(tiny_fcdensenet_config, chest_labels), classifier, device="cpu", **kw)


def test_the_fp32_path_runs_the_model_as_loaded(tiny_fcdensenet_config, tiny_classifier_config):
    classifier = _classifier(tiny_classifier_config)
    _randomise_bn(classifier)
    image = synthetic_cxr(np.random.default_rng(0), 200, 180)
    a = _pipe(tiny_fcdensenet_config, classifier, precision="fp32", fuse_batchnorm=True)(image, k=8, seed=0)
    b = _pipe(tiny_fcdensenet_config, classifier, precision="fp32", fuse_batchnorm=False)(image, k=8, seed=0)
    np.testing.assert_array_equal(a.patch_probabilities, b.patch_probabilities)


def test_the_bf16_path_uses_the_folded_copy(tiny_fcdensenet_config, tiny_classifier_config):
    classifier = _classifier(tiny_classifier_config)
    _randomise_bn(classifier)
    image = synthetic_cxr(np.random.default_rng(0), 200, 180)
    pipe = _pipe(tiny_fcdensenet_config, classifier, precision="bf16")
    fast = pipe(image, k=8, seed=0)
    folded, numerics = pipe.numerics_policy.network(pipe.classifier_model, tiny_classifier_config.input_size)
    assert folded is not pipe.classifier_model and numerics.bf16
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    built_once = pipe.numerics_policy.network(pipe.classifier_model, tiny_classifier_config.input_size)[0]
    assert built_once is folded
    plain = _pipe(tiny_fcdensenet_config, classifier, precision="bf16", fuse_batchnorm=False)(image, k=8, seed=0)
    # same patches, bf16 rounding apart
    np.testing.assert_allclose(fast.patch_probabilities, plain.patch_probabilities, atol=0.05)
    np.testing.assert_array_equal(fast.patch_boxes_1024, plain.patch_boxes_1024)
    pipe.precision = "fp32"
    model, numerics = pipe.numerics_policy.network(pipe.classifier_model, 64)
    assert model is pipe.classifier_model and numerics.arithmetic == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        pipe.precision = "fp16"


def test_segmentation_precision_is_checked_and_applied(tiny_fcdensenet_config, tiny_classifier_config):
    classifier = _classifier(tiny_classifier_config)
    with pytest.raises(ValueError, match="segmentation_precision must be one of"):
        _pipe(tiny_fcdensenet_config, classifier, segmentation_precision="fp16")
    seen = []

    class Recorder(PatternSegmenter):
        def forward(self, pixel_values):
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().forward(pixel_values)

    image = synthetic_cxr(np.random.default_rng(0), 120, 100)
    for precision, expected in (("bf16", True), ("fp32", False)):
        seen.clear()
        pipe = CXRPipeline(
            Recorder(tiny_fcdensenet_config, chest_labels), classifier, device="cpu", segmentation_precision=precision
        )
        prepared = pipe.prepare(image)
        assert seen == [expected] and prepared.label_map.dtype == np.uint8


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_segmentation_precision_follows_the_validation(
    tiny_fcdensenet_config, tiny_classifier_config, monkeypatch, native_bf16
):
    """ "auto" segmentation is bf16 only where the classifier's "auto" is, and only with the stable sampler."""
    import cxr_hub.runtime.numerics as numerics_module

    monkeypatch.setattr(numerics_module, "cpu_has_bf16", lambda: native_bf16)
    classifier = _classifier(tiny_classifier_config)
    seg = PatternSegmenter(tiny_fcdensenet_config, chest_labels)
    expected = "bf16" if native_bf16 and numerics_module.SEGMENTATION_BF16_VALIDATED else "fp32"
    assert CXRPipeline(seg, classifier, device="cpu").settings()["segmentation_arithmetic"] == expected
    for sampling in ("joint", "independent"):
        settings = CXRPipeline(seg, classifier, device="cpu", sampling=sampling).settings()
        assert settings["segmentation_arithmetic"] == "fp32", sampling
    # a global classifier sees the mask's outline: "auto" keeps its segmentation in fp32
    glob_config = PatchClassifierConfig(image_size=256, input_size=64, mode="global")
    with_global = CXRPipeline(seg, classifier, _classifier(glob_config), device="cpu").settings()
    assert with_global["segmentation_arithmetic"] == "fp32"
    pinned = CXRPipeline(seg, classifier, device="cpu", segmentation_precision="fp32").settings()
    assert pinned["segmentation_arithmetic"] == "fp32"
    assert pinned["classifier_arithmetic"] == ("bf16" if native_bf16 else "fp32")
