"""Model shapes, losses, config presets, Auto-class registration and save → load round trips (in process)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
)

import cxr_hub
from cxr_hub import (
    FCDenseNetConfig,
    FCDenseNetForSemanticSegmentation,
    PatchClassifierConfig,
    PatchClassifierForImageClassification,
    UNetForSemanticSegmentation,
    image_processor_for,
)


def _seeded(model_cls, config):
    torch.manual_seed(0)
    return model_cls(config).eval()


@pytest.mark.parametrize(
    ("preset", "blocks", "bottleneck", "growth", "params_millions"),
    [
        ("fcdensenet103", [4, 5, 7, 10, 12], 15, 16, 9.3),
        ("fcdensenet67", [5, 5, 5, 5, 5], 5, 16, 3.5),
        ("fcdensenet56", [4, 4, 4, 4, 4], 4, 12, 1.4),
    ],
)
def test_fcdensenet_presets(preset, blocks, bottleneck, growth, params_millions):
    config = FCDenseNetConfig(preset=preset)
    assert (config.down_blocks, config.bottleneck_layers, config.growth_rate) == (blocks, bottleneck, growth)
    assert config.first_conv_channels == 48 and config.dropout == 0.2 and config.num_channels == 1
    assert config.id2label == {0: "background", 1: "heart", 2: "left_lung", 3: "right_lung"}
    model = FCDenseNetForSemanticSegmentation(config)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    # Jégou et al. report 9.4M / 3.5M / 1.5M parameters
    assert n == pytest.approx(params_millions, rel=0.08)


def test_default_is_fcdensenet103():
    assert FCDenseNetConfig().preset == "fcdensenet103"
    with pytest.raises(ValueError, match="preset"):
        FCDenseNetConfig(preset="fcdensenet42")
    with pytest.raises(ValueError, match="class_weights"):
        FCDenseNetConfig(class_weights=[1.0, 2.0])


@pytest.mark.parametrize("arch", ["fcdensenet", "unet"])
@pytest.mark.parametrize(("h", "w"), [(64, 64), (70, 90)])
def test_segmentation_shapes_and_loss(arch, h, w, tiny_fcdensenet_config, tiny_unet_config):
    config = tiny_fcdensenet_config if arch == "fcdensenet" else tiny_unet_config
    cls = FCDenseNetForSemanticSegmentation if arch == "fcdensenet" else UNetForSemanticSegmentation
    model = _seeded(cls, config)
    x = torch.randn(2, 1, h, w)
    out = model(x)
    assert out.logits.shape == (2, 4, h, w) and out.loss is None
    labels = torch.randint(0, 4, (2, h, w))
    labels[0, 0, 0] = 255  # ignored pixel
    out = model(x, labels=labels)
    weights = torch.tensor(config.class_weights)
    expected = F.cross_entropy(out.logits, labels, weight=weights, ignore_index=255)
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.randn(2, 3, h, w))


def test_class_weights_change_the_loss(tiny_fcdensenet_config):
    model = _seeded(FCDenseNetForSemanticSegmentation, tiny_fcdensenet_config)
    x, labels = torch.randn(1, 1, 64, 64), torch.randint(0, 4, (1, 64, 64))
    loss_a = model(x, labels=labels).loss
    model.config.class_weights = [1.0, 10.0, 1.0, 1.0]
    assert not torch.isclose(model(x, labels=labels).loss, loss_a)


def test_classifier_shapes_features_and_head(tiny_classifier_config):
    model = _seeded(PatchClassifierForImageClassification, tiny_classifier_config)
    x = torch.randn(3, 1, 64, 64)
    out = model(x, labels=torch.tensor([0, 1, 3]), output_hidden_states=True)
    assert out.logits.shape == (3, 4)
    assert out.hidden_states[0].shape == (3, 512, 2, 2)
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), out.logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([0, 1, 3])))
    assert model.config.id2label == {0: "normal", 1: "bacterial", 2: "tuberculosis", 3: "viral_covid"}


def test_classifier_config_label_sets_and_validation():
    c3 = PatchClassifierConfig(label_set="label3")
    assert c3.id2label == {0: "normal", 1: "pneumonia", 2: "covid"} and c3.num_labels == 3
    defaults = PatchClassifierConfig()
    assert (defaults.patch_size, defaults.image_size, defaults.num_patches, defaults.mode) == (224, 1024, 100, "patch")
    assert PatchClassifierConfig(trained_classes=["normal", "viral_covid"]).trained_classes == ["normal", "viral_covid"]
    for bad in ({"mode": "dense"}, {"label_set": "label9"}, {"patch_size": 2048}, {"num_patches": 0}):
        with pytest.raises(ValueError):
            PatchClassifierConfig(**bad)
    with pytest.raises(ValueError, match="trained_classes"):
        PatchClassifierConfig(trained_classes=["cat"])


def test_classifier_construction_never_downloads(monkeypatch, tiny_classifier_config):
    import timm

    calls = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: calls.append(k) or real(*a, **k))
    PatchClassifierForImageClassification(tiny_classifier_config)
    assert calls and all(k.get("pretrained") is False for k in calls)


@pytest.mark.network
def test_load_imagenet_weights(tiny_classifier_config):
    pytest.importorskip("timm")
    import os

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        pytest.skip("offline: ImageNet weights need the Hugging Face Hub (run with HF_HUB_OFFLINE=0 online)")
    model = PatchClassifierForImageClassification(tiny_classifier_config).load_imagenet_weights()
    assert model.backbone.conv1.weight.shape[1] == 1


@pytest.mark.parametrize(
    ("config_fixture", "model_cls", "auto_task"),
    [
        ("tiny_fcdensenet_config", FCDenseNetForSemanticSegmentation, AutoModelForSemanticSegmentation),
        ("tiny_unet_config", UNetForSemanticSegmentation, AutoModelForSemanticSegmentation),
        ("tiny_classifier_config", PatchClassifierForImageClassification, AutoModelForImageClassification),
    ],
)
def test_save_load_round_trip(request, tmp_path, config_fixture, model_cls, auto_task):
    config = request.getfixturevalue(config_fixture)
    model = _seeded(model_cls, config)
    # non-default BN statistics so a load that re-initialised buffers would be caught
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == config.model_type
    assert saved["auto_map"]["AutoModel"] == saved["auto_map"][auto_task.__name__]
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref = model(x).logits
        for auto in (AutoModel, auto_task):
            loaded = auto.from_pretrained(tmp_path).eval()
            assert type(loaded) is model_cls
            torch.testing.assert_close(loaded(x).logits, ref, rtol=0, atol=0)
    loaded_config = AutoConfig.from_pretrained(tmp_path)
    assert loaded_config.to_dict()["id2label"] == config.to_dict()["id2label"]
    assert loaded_config.class_weights == config.class_weights if hasattr(config, "class_weights") else True


def test_image_processor_follows_config():
    seg = image_processor_for(FCDenseNetConfig())
    assert seg.size == 256 and seg.gamma == 0.5 and seg.do_equalize
    clf = image_processor_for(PatchClassifierConfig(image_mean=0.4, image_std=0.3, gamma=0.6))
    assert (clf.size, clf.image_mean, clf.image_std, clf.gamma) == (1024, 0.4, 0.3, 0.6)
    glob = image_processor_for(PatchClassifierConfig(mode="global"))
    assert glob.size == 224


def test_package_exports():
    for name in cxr_hub.__all__:
        assert hasattr(cxr_hub, name), name
    assert np.float32(1)  # numpy importable beside torch in the same process
