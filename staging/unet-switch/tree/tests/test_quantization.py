"""int8 classifiers: calibration stored in the config, the rebuilt network, and the pipeline's precision rule."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, synthetic_cxr
from test_pipeline import PatternSegmenter, _classifier, chest_labels

import cxr_hub.runtime.numerics as numerics_module
from cxr_hub import CXRPipeline, PatchClassifierForImageClassification
from cxr_hub.runtime.hardware import int8_available
from cxr_hub.runtime.int8 import (
    Int8CalibrationError,
    _prepared,
    _torch_ao_deprecations_handled,
    calibrate_int8,
    quantize_int8,
)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not int8_available(), reason="this PyTorch build has no x86 quantised engine"),
]


def _batches(config, n: int = 3, batch: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, config.input_size, config.input_size, generator=g) for _ in range(n)]


@pytest.fixture
def calibrated(tiny_classifier_config):
    """A tiny random classifier whose config carries an int8 calibration from seeded random inputs."""
    model = _classifier(copy.deepcopy(tiny_classifier_config))  # its own config: the calibration must not leak
    model.config.int8_calibration = calibrate_int8(model, _batches(model.config), "seeded random inputs")
    return model


def test_stored_calibration_rebuilds_the_calibrated_network_exactly(tiny_classifier_config):
    """Scales and zero points in the config give bit for bit the network FX converts from its live observers."""
    from torch.ao.quantization.quantize_fx import convert_fx

    model = _classifier(tiny_classifier_config)
    batches = _batches(model.config)
    calibration = calibrate_int8(model, batches)
    reference = _prepared(model)
    with torch.inference_mode():
        for x in batches:
            reference(x)
        with _torch_ao_deprecations_handled():
            reference = convert_fx(reference)
        x = torch.randn(5, 1, 64, 64, generator=torch.Generator().manual_seed(1))
        rebuilt = quantize_int8(model, calibration)
        np.testing.assert_array_equal(rebuilt.forward_features(x).numpy(), reference(x).numpy())


def test_int8_network_tracks_fp32_and_keeps_the_fp32_head(calibrated):
    x = _batches(calibrated.config, n=1, batch=6, seed=2)[0]
    int8 = quantize_int8(calibrated)
    with torch.inference_mode():
        f32, f8 = calibrated.forward_features(x), int8.forward_features(x)
        assert f8.dtype == torch.float32 and f8.shape == f32.shape
        # int8 activations: errors of a few quantisation steps, not a different network
        assert (f8 - f32).abs().mean() < 0.1 * f32.abs().mean()
        np.testing.assert_array_equal(int8.forward_head(f8).numpy(), calibrated.forward_head(f8).numpy())
    assert int8.classifier is calibrated.classifier


def test_calibration_is_json_and_survives_save_pretrained(calibrated, tmp_path):
    json.dumps(calibrated.config.int8_calibration)  # plain JSON: no tensors, no pickle
    calibrated.save_pretrained(tmp_path)
    loaded = PatchClassifierForImageClassification.from_pretrained(tmp_path)
    assert loaded.config.int8_calibration == calibrated.config.int8_calibration
    x = _batches(calibrated.config, n=1, batch=2, seed=3)[0]
    with torch.inference_mode():
        a = quantize_int8(calibrated).forward_features(x)
        b = quantize_int8(loaded).forward_features(x)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_calibration_needs_inputs(tiny_classifier_config):
    with pytest.raises(ValueError, match="no input batches"):
        calibrate_int8(_classifier(tiny_classifier_config), [])


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda c: None, "no int8 calibration"),
        (lambda c: {**c, "format": 99}, "format 99"),
        (lambda c: {**c, "activations": dict(list(c["activations"].items())[:-1])}, "does not match this network"),
        (
            lambda c: {**c, "activations": {**c["activations"], next(iter(c["activations"])): [0.0, 3]}},
            "invalid entry",
        ),
    ],
)
def test_bad_calibration_is_refused_with_the_remedy(calibrated, damage, match):
    with pytest.raises(Int8CalibrationError, match=match) as info:
        quantize_int8(calibrated, damage(calibrated.config.int8_calibration) or {}, name="classifier")
    assert "calibrate_int8" in str(info.value)


def _seg(tiny_fcdensenet_config):
    return PatternSegmenter(tiny_fcdensenet_config, chest_labels)


def test_pipeline_int8_votes_and_maps_like_fp32(tiny_fcdensenet_config, tiny_classifier_config):
    """Calibrated as ``training/calibrate_int8.py`` does it (patches the pipeline's sampler cuts from films), the int8
    pipeline draws the same patches and keeps probabilities and saliency maps close to fp32."""
    from training.calibrate_int8 import calibration_batches

    image = synthetic_cxr(np.random.default_rng(0), 200, 180)
    films = [
        SimpleNamespace(id=f"film{i}", image=synthetic_cxr(np.random.default_rng(10 + i), 200, 180)) for i in range(3)
    ]
    calibrated = _classifier(copy.deepcopy(tiny_classifier_config))
    helper = CXRPipeline(_seg(tiny_fcdensenet_config), None, device="cpu", frame_config=calibrated.config)
    batches = list(calibration_batches(helper, calibrated, films, patches=16, seed=1))
    assert [tuple(x.shape) for x in batches] == [(16, 1, 64, 64)] * 3
    calibrated.config.int8_calibration = calibrate_int8(calibrated, batches)
    int8 = CXRPipeline(_seg(tiny_fcdensenet_config), calibrated, device="cpu", precision="int8", chunk_size=5)
    fp32 = CXRPipeline(_seg(tiny_fcdensenet_config), calibrated, device="cpu", precision="fp32", chunk_size=5)
    a, b = int8(image, k=12, seed=1, saliency_classes="all"), fp32(image, k=12, seed=1, saliency_classes="all")
    assert int8.settings()["classifier_arithmetic"] == "int8"
    np.testing.assert_array_equal(a.patch_boxes_1024, b.patch_boxes_1024)  # same patches
    # a random network with an inflated head magnifies int8 rounding; a trained one moves far less (real films:
    # docs/results/int8_agreement_label4.json)
    dp = np.abs(a.patch_probabilities - b.patch_probabilities)
    assert dp.mean() < 0.02 and dp.max() < 0.15, (dp.mean(), dp.max())
    assert a.label == b.label
    for name, sal in a.saliency.items():
        assert sal.shape == b.saliency[name].shape and sal.min() >= 0.0 and sal.max() <= 1.0
    # the predicted class's map (what the app shows); classes at p ~ 1e-5 have maps made of rounding noise
    assert np.corrcoef(a.saliency[a.label].ravel(), b.saliency[a.label].ravel())[0, 1] > 0.95
    # deterministic like every other path
    c = int8(image, k=12, seed=1, saliency_classes="all")
    np.testing.assert_array_equal(a.patch_probabilities, c.patch_probabilities)


def test_explicit_int8_fails_at_load_with_a_remedy(tiny_fcdensenet_config, tiny_classifier_config, calibrated):
    seg = _seg(tiny_fcdensenet_config)
    with pytest.raises(Int8CalibrationError, match=r"training\.calibrate_int8"):
        CXRPipeline(seg, _classifier(tiny_classifier_config), device="cpu", precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        CXRPipeline(seg, calibrated, device="cpu", precision="int4")
    with pytest.raises(ValueError, match="segmentation_precision must be one of"):
        CXRPipeline(seg, calibrated, device="cpu", segmentation_precision="int8")


@pytest.mark.parametrize("validated, has_int8", [(True, True), (True, False), (False, True)])
def test_auto_uses_int8_only_where_validated_supported_and_calibrated(
    monkeypatch, tiny_fcdensenet_config, tiny_classifier_config, calibrated, validated, has_int8
):
    monkeypatch.setattr(numerics_module, "INT8_VALIDATED", validated)
    monkeypatch.setattr(numerics_module, "cpu_has_int8", lambda: has_int8)
    monkeypatch.setattr(numerics_module, "cpu_has_bf16", lambda: False)
    seg = _seg(tiny_fcdensenet_config)
    auto = CXRPipeline(seg, calibrated, device="cpu")
    assert auto.settings()["classifier_arithmetic"] == ("int8" if validated and has_int8 else "fp32")
    uncalibrated = CXRPipeline(seg, _classifier(tiny_classifier_config), device="cpu")
    assert uncalibrated.settings()["classifier_arithmetic"] == "fp32"
    if validated and has_int8:
        assert "no int8 calibration" in uncalibrated.settings()["int8_unavailable"]["classifier"]
        assert auto.settings()["arithmetic_reasons"]["classifier"] == "auto: validated int8"
    else:
        assert auto.settings()["arithmetic_reasons"]["classifier"] == "auto: no native bf16 on this cpu"


def test_segmentation_auto_bf16_waits_for_the_int8_end_to_end_check(monkeypatch, tiny_fcdensenet_config, calibrated):
    monkeypatch.setattr(numerics_module, "INT8_VALIDATED", True)
    monkeypatch.setattr(numerics_module, "cpu_has_int8", lambda: True)
    monkeypatch.setattr(numerics_module, "cpu_has_bf16", lambda: True)
    for checked in (False, True):
        monkeypatch.setattr(numerics_module, "INT8_WITH_BF16_SEGMENTATION_VALIDATED", checked)
        settings = CXRPipeline(_seg(tiny_fcdensenet_config), calibrated, device="cpu").settings()
        assert settings["classifier_arithmetic"] == "int8"
        assert settings["segmentation_arithmetic"] == ("bf16" if checked else "fp32")
        reason = settings["arithmetic_reasons"]["segmentation"]
        assert ("int8" in reason) is not checked, reason


def test_shipped_calibrations_follow_their_checks_and_match_this_torch():
    """A shipped classifier carries an int8 calibration (which opts it into int8 under precision "auto") exactly when
    its committed int8 checks on the test split passed, and a calibration it carries turns into an int8 network under
    this torch (FX traces the backbone under the activation names the calibration was stored with). The global model
    ships without one (an earlier global model kept fp32's label on 169 of 172 test films in int8, below the 99 %
    rule, and no later one was checked)."""
    glob = REPO_ROOT / "models" / "cxr-global-resnet18" / "config.json"
    if glob.is_file():
        assert json.loads(glob.read_text()).get("int8_calibration") is None
    folder = REPO_ROOT / "models" / "cxr-patch-resnet18"
    if not (folder / "model.safetensors").is_file():
        pytest.skip("shipped model absent")
    checks = [
        REPO_ROOT / "docs" / "results" / f for f in ("int8_agreement_label4.json", "int8_agreement_label4_rest72.json")
    ]
    summaries = [json.loads(c.read_text())["summary"] for c in checks]
    passed = all(s["passes"] for s in summaries)
    n = sum(s["n"] for s in summaries)
    same = sum(round(s["label_agreement"] * s["n"]) for s in summaries)
    model = PatchClassifierForImageClassification.from_pretrained(folder).eval()
    calibration = model.config.int8_calibration
    assert (calibration is not None) is passed, (
        f"int8 checks {'passed' if passed else 'failed'} ({same} / {n} same labels) but the shipped config "
        f"{'has no' if passed else 'carries a'} calibration"
    )
    if calibration is None:
        return
    assert calibration["inputs"] > 0 and "training-split" in calibration["description"]
    int8 = quantize_int8(model)
    x = torch.zeros(1, 1, model.config.input_size, model.config.input_size)
    with torch.inference_mode():
        assert int8(x).shape == (1, model.config.num_labels)


def test_predict_cli_refuses_int8_for_an_uncalibrated_classifier(tmp_path, tiny_model_folders, capsys):
    from PIL import Image

    from cxr_hub.cli import main as cli_main

    seg, clf = tiny_model_folders
    image = tmp_path / "film.png"
    Image.fromarray(synthetic_cxr(np.random.default_rng(0), 200, 180)).save(image)
    args = ["predict", str(image), "--out", str(tmp_path / "out"), "--segmentation", str(seg), "--classifier", str(clf)]
    assert cli_main([*args, "--device", "cpu", "--k", "4", "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "no int8 calibration" in err and "training.calibrate_int8" in err
    assert not (tmp_path / "out").exists()
