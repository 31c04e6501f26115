"""The pipeline's precision rule: bf16 autocast on CPUs with native bf16, and its agreement with fp32 on real films."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, synthetic_cxr
from test_pipeline import PatternSegmenter, _classifier, chest_labels

import cxr_hub.runtime.numerics as numerics_module
from cxr_hub import CXRPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_cpu(monkeypatch, tiny_fcdensenet_config, tiny_classifier_config, native):
    monkeypatch.setattr(numerics_module, "cpu_has_bf16", lambda: native)
    seg = PatternSegmenter(tiny_fcdensenet_config, chest_labels)
    pipe = CXRPipeline(seg, _classifier(tiny_classifier_config), device="cpu")
    assert pipe.numerics_policy.network(pipe.classifier_model, 32)[1].bf16 is native
    assert pipe.settings()["classifier_arithmetic"] == ("bf16" if native else "fp32")
    fp32 = CXRPipeline(seg, _classifier(tiny_classifier_config), device="cpu", precision="fp32")
    assert fp32.numerics_policy.network(fp32.classifier_model, 32)[1].bf16 is False
    assert fp32.settings()["arithmetic_reasons"]["classifier"] == "fp32 requested"
    assert fp32.settings()["classifier_arithmetic"] == "fp32"
    image = synthetic_cxr(np.random.default_rng(0), 200, 180)
    a, b = pipe(image, k=12, seed=1), fp32(image, k=12, seed=1)
    np.testing.assert_allclose(a.patch_probabilities, b.patch_probabilities, atol=0.05)


def _shipped_pipeline_and_test_films(cxr_data, n: int):
    """The shipped segmentation + label4 patch classifier and the first ``n`` label4 test-split films (skips when the
    models are absent); puts ``benchmarks/`` on the path for ``precision_agreement``."""
    from cxr_hub.presets import SHIPPED

    models = REPO_ROOT / "models"
    seg, clf = models / SHIPPED["segmentation"].folder, models / SHIPPED["label4/patch"].folder
    if not (seg / "model.safetensors").is_file() or not (clf / "model.safetensors").is_file():
        pytest.skip("shipped models absent")
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from cxr_hub.evaluation import select_rows
    from cxr_hub.manifest import read_manifest

    rows = [r for r in read_manifest(cxr_data / "manifest.csv") if r.label4]
    rows = select_rows(rows, REPO_ROOT / "training" / "splits" / "splits_seed0.json", "classification:test")[:n]
    return CXRPipeline.from_pretrained(seg, clf, device="cpu"), rows


@pytest.mark.slow
def test_bf16_agrees_with_fp32_on_real_films(cxr_data):
    """The rule that made bf16 the CPU default, re-checked on 8 test-split films (the full check: 100 films)."""
    pipe, rows = _shipped_pipeline_and_test_films(cxr_data, 8)
    from precision_agreement import MAX_MEAN_ABS_DPROB, compare_precisions

    records = [compare_precisions(pipe, pipe.prepare(r.image), k=100, seed=0) for r in rows]
    assert all(r["same_label"] for r in records)
    assert np.mean([r["mean_abs_dprob_patch"] for r in records]) <= MAX_MEAN_ABS_DPROB


@pytest.mark.slow
def test_int8_agrees_with_fp32_on_real_films(cxr_data):
    """The rule for the int8 classifier, re-checked on 6 test-split films with the same patches (the full check: 100
    films, ``benchmarks/precision_agreement.py --fast int8``)."""
    from cxr_hub.runtime.hardware import int8_available

    if not int8_available():
        pytest.skip("this PyTorch build has no x86 quantised engine")
    pipe, rows = _shipped_pipeline_and_test_films(cxr_data, 6)
    if getattr(pipe.classifier_model.config, "int8_calibration", None) is None:
        # test_quantization checks that this follows the committed int8 checks (they failed for these weights)
        pytest.skip("the shipped patch classifier carries no int8 calibration: nothing of it runs in int8")
    from precision_agreement import MAX_MEAN_ABS_DPROB, compare_precisions

    records = [compare_precisions(pipe, pipe.prepare(r.image), k=100, seed=0, fast="int8") for r in rows]
    assert all(r["same_label"] for r in records)
    assert np.mean([r["mean_abs_dprob_patch"] for r in records]) <= MAX_MEAN_ABS_DPROB
    assert min(r["saliency_correlation"] for r in records) > 0.9


@pytest.mark.slow
def test_bf16_segmentation_agrees_end_to_end_on_real_films(cxr_data):
    """The rule that made bf16 segmentation the default (with the stable sampler), re-checked on 4 test-split films
    end to end (the full check: 100 films, ``benchmarks/precision_agreement.py --segmentation-bf16``)."""
    pipe, rows = _shipped_pipeline_and_test_films(cxr_data, 4)
    from precision_agreement import MAX_MEAN_ABS_DPROB, compare_end_to_end

    assert pipe.sampling == "stable"
    records = [compare_end_to_end(pipe, r.image, k=100, seed=0) for r in rows]
    assert all(r["same_label"] for r in records)
    assert np.mean([r["mean_abs_dprob_image"] for r in records]) <= MAX_MEAN_ABS_DPROB
    assert min(r["lung_dice"] for r in records) >= 0.99
    assert max(r["abs_dctr"] for r in records) <= 0.05
