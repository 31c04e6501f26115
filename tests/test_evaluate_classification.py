"""``python -m cxr_hub evaluate`` on a synthetic manifest with tiny saved models: files, keys, failures, errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import write_synthetic_manifest

from cxr_hub import FCDenseNetForSemanticSegmentation, PatchClassifierConfig, PatchClassifierForImageClassification
from cxr_hub.cli import main
from cxr_hub.evaluation import classification as clf_module
from cxr_hub.manifest import read_manifest
from training.data import manifest_fingerprint

REQUIRED = {"n", "accuracy", "precision", "recall", "f1", "specificity", "per_class", "confusion_matrix", "ci95"}
LABEL4 = ["normal", "bacterial", "tuberculosis", "viral_covid"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def models(tmp_path, tiny_fcdensenet_config):
    """Saved tiny segmentation (lung favoured), patch and global classifiers (tuberculosis untrained)."""
    torch.manual_seed(0)
    seg = FCDenseNetForSemanticSegmentation(tiny_fcdensenet_config)
    with torch.no_grad():
        seg.classifier.weight.mul_(0.1)
        seg.classifier.bias.copy_(torch.tensor([0.0, 0.0, 4.0, 4.0]))
    seg.save_pretrained(tmp_path / "seg")
    trained = ["normal", "bacterial", "viral_covid"]
    patch = PatchClassifierConfig(image_size=256, patch_size=64, input_size=64, num_patches=4, trained_classes=trained)
    PatchClassifierForImageClassification(patch).save_pretrained(tmp_path / "clf")
    glob = PatchClassifierConfig(mode="global", input_size=64, trained_classes=trained)
    PatchClassifierForImageClassification(glob).save_pretrained(tmp_path / "glob")
    label3 = PatchClassifierConfig(label_set="label3", image_size=256, patch_size=64, input_size=64)
    PatchClassifierForImageClassification(label3).save_pretrained(tmp_path / "clf3")
    return {k: str(tmp_path / k) for k in ("seg", "clf", "glob", "clf3")}


def _run(manifest, models, out, *extra):
    return main(
        [
            "evaluate", "--manifest", str(manifest), "--task", "label4", "--segmentation", models["seg"],
            "--classifier", models["clf"], "--k", "4", "--n-boot", "30", "--device", "cpu", "--out", str(out), *extra,
        ]
    )  # fmt: skip


@pytest.mark.slow
def test_evaluate_writes_metrics_predictions_and_plot(tmp_path, models, capsys):
    manifest = write_synthetic_manifest(tmp_path / "data", n=6)
    (tmp_path / "data" / "images" / "img5.png").write_bytes(b"not an image")  # one unreadable film
    out = tmp_path / "out"
    assert _run(manifest, models, out, "--global-classifier", models["glob"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= REQUIRED
    assert metrics["n"] == 5 and [f["id"] for f in metrics["failures"]] == ["img5"]  # listed, not fatal
    for key in ("accuracy", "precision", "recall", "f1", "specificity"):
        assert 0 <= metrics[key] <= 1
        low, high = metrics["ci95"][key]
        assert 0 <= low <= high <= 1
    assert set(metrics["per_class"]) == set(LABEL4)
    for stats in metrics["per_class"].values():
        assert set(stats) == {"n", "sensitivity", "precision", "specificity", "f1"}
    assert (
        metrics["per_class"]["tuberculosis"]["n"] == 0 and metrics["per_class"]["tuberculosis"]["sensitivity"] is None
    )
    cm = metrics["confusion_matrix"]
    assert cm["labels"] == LABEL4 and sum(map(sum, cm["matrix"])) == 5
    notes = " ".join(metrics["notes"])
    assert "tuberculosis: untrained" in notes and "excluded from macro averages: tuberculosis" in notes
    assert set(metrics["accuracy_by_source"]) == {"alpha", "beta"}
    assert 0 <= metrics["saliency_in_lung_mean"] <= 1
    assert metrics["trained_classes"] == ["normal", "bacterial", "viral_covid"] and metrics["k"] == 4
    # the settings that change results are saved with them
    assert metrics["pipeline"]["sampling"] == "stable" and metrics["pipeline"]["device"] == "cpu"
    assert metrics["pipeline"]["segmentation_arithmetic"] in ("fp32", "bf16")
    assert REQUIRED - {"ci95"} <= set(metrics["global"])
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and {r["prediction"] for r in rows} <= set(LABEL4)
    assert {"id", "patient_id", "source", "label", "prediction", "correct", "saliency_in_lung"} <= set(rows[0])
    assert all(r["global_prediction"] in LABEL4 for r in rows)
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_split_filter(tmp_path, models):
    manifest = write_synthetic_manifest(tmp_path / "data", n=6)
    rows = read_manifest(manifest)
    split = {r.id: "test" if r.patient_id == "p1" else "train" for r in rows}
    payload = {"seed": 0, "manifest_fingerprint": manifest_fingerprint(rows), "splits": {"classification": split}}
    (tmp_path / "split.json").write_text(json.dumps(payload))
    out = tmp_path / "out"
    assert (
        _run(manifest, models, out, "--split-file", str(tmp_path / "split.json"), "--split", "classification:test") == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["n_patients"] == 1 and metrics["selection"]["split"] == "classification:test"


def test_missing_models_exit_2(tmp_path, models, capsys, monkeypatch):
    manifest = write_synthetic_manifest(tmp_path / "data", n=2)
    out = tmp_path / "out"
    code = main(["evaluate", "--manifest", str(manifest), "--task", "label4", "--segmentation", models["seg"],
                 "--classifier", str(tmp_path / "nope"), "--out", str(out)])  # fmt: skip
    assert code == 2 and "--classifier" in capsys.readouterr().err and not out.exists()
    # no default folders: a clear message naming both flags, never random weights
    monkeypatch.setattr(clf_module, "DEFAULT_SEGMENTATION", tmp_path / "models" / "seg")
    monkeypatch.setattr(clf_module, "DEFAULT_CLASSIFIERS", {"label4": tmp_path / "models" / "clf"})
    code = main(["evaluate", "--manifest", str(manifest), "--task", "label4", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--segmentation" in err and "--classifier" in err and "Train one" in err
    assert not out.exists()


@pytest.mark.slow
def test_classifier_of_another_task_exits_2(tmp_path, models, capsys):
    manifest = write_synthetic_manifest(tmp_path / "data", n=2)
    code = main(["evaluate", "--manifest", str(manifest), "--task", "label4", "--segmentation", models["seg"],
                 "--classifier", models["clf3"], "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and "label3" in capsys.readouterr().err
