"""``evaluate-segmentation`` on a synthetic manifest: metrics.json structure, skipped structures, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_synthetic_manifest

from cxr_hub import FCDenseNetForSemanticSegmentation
from cxr_hub.cli import main
from cxr_hub.evaluation.metrics import overlap_scores, structure_scores
from cxr_hub.evaluation.segmentation import evaluate_segmentation, undersegmentation_report


def test_overlap_scores_known_values():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 px
    b[1:3] = True  # 8 px, 4 shared
    j, d = overlap_scores(a, b)
    assert j == pytest.approx(4 / 12) and d == pytest.approx(8 / 16)
    assert all(np.isnan(overlap_scores(np.zeros((2, 2)), np.zeros((2, 2)))))
    s = structure_scores(np.array([[2, 3], [1, 0]]), np.array([[2, 2], [1, 0]]), ["lung", "left_lung", "heart"])
    assert s["jaccard"]["lung"] == 1.0 and s["jaccard"]["left_lung"] == 0.5 and s["jaccard"]["heart"] == 1.0


def test_undersegmentation_report():
    fractions = {"a": 0.30, "b": 0.32, "c": 0.28, "d": 0.10, "e": 0.31}
    labels = {"a": "normal", "b": "normal", "c": "normal", "d": "viral_covid", "e": "viral_covid"}
    report = undersegmentation_report(fractions, labels)
    assert report["reference_median"] == pytest.approx(0.30)
    assert report["per_class"]["viral_covid"] == {"n": 2, "undersegmented": 1, "share": 0.5}
    assert report["per_class"]["normal"]["undersegmented"] == 0


@pytest.fixture
def tiny_seg_folder(tmp_path, tiny_fcdensenet_config):
    torch.manual_seed(0)
    model = FCDenseNetForSemanticSegmentation(tiny_fcdensenet_config).eval()
    model.save_pretrained(tmp_path / "seg")
    return tmp_path / "seg"


def test_metrics_json_structure(tmp_path, tiny_seg_folder):
    manifest = write_synthetic_manifest(tmp_path / "data", n=6)
    metrics = evaluate_segmentation(manifest, tmp_path / "out", segmentation=tiny_seg_folder)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["n"] == metrics["n"] == 6
    for metric in ("jaccard", "dice"):
        # the convention-aware lung is scored on the v7labs-style films (no heart in their masks)
        assert set(saved[metric]) == {"lung", "heart", "left_lung", "right_lung", "lung_convention_aware"}
        for stats in saved[metric].values():
            assert {"mean", "std"} <= set(stats)
    assert set(saved["by_source"]) == {"alpha", "beta"}
    # v7labs-style masks have no heart: those images are skipped for the heart, not scored as misses
    assert saved["by_source"]["beta"]["jaccard"].get("heart") is None
    assert saved["jaccard"]["heart"]["n"] == 3 and saved["jaccard"]["lung"]["n"] == 6
    assert "undersegmentation" in saved and set(saved["undersegmentation"]["per_class"]) == {
        "normal",
        "viral_covid",
        "bacterial",
    }
    assert (tmp_path / "out" / "worst_cases.png").is_file()
    assert (tmp_path / "out" / "per_image.csv").read_text().count("\n") == 7


def test_cli_evaluate_segmentation(tmp_path, tiny_seg_folder, capsys):
    manifest = write_synthetic_manifest(tmp_path / "data", n=2)
    code = main(
        [
            "evaluate-segmentation",
            "--manifest",
            str(manifest),
            "--segmentation",
            str(tiny_seg_folder),
            "--out",
            str(tmp_path / "o"),
            "--no-undersegmentation",
            "--source",
            "alpha",
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["n"] == 1
    code = main(
        [
            "evaluate-segmentation",
            "--manifest",
            str(manifest),
            "--segmentation",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "o2"),
        ]
    )
    assert code == 2 and "No segmentation model" in capsys.readouterr().err


def test_heart_share_of_a_heartless_reference_and_ctr_groups(tmp_path, tiny_seg_folder, monkeypatch):
    """A prediction that calls each polygon film's left lung heart: the share is exactly that lung's part."""
    from cxr_hub.evaluation import segmentation as evaluation
    from cxr_hub.manifest import load_label_map, read_manifest

    manifest = write_synthetic_manifest(tmp_path / "data", n=6)
    rows = {r.image: r for r in read_manifest(manifest)}
    expected = []

    def fake_segment(model, processor, images):
        # evaluate_segmentation visits the rows in manifest order (a wrong pairing would show as a shape failure)
        row = queue.pop(0)
        target = load_label_map(row.mask)
        pred = target.copy()
        if 1 not in target:  # a heartless (v7labs-style) reference
            pred[target == 2] = 1
            expected.append((target == 2).sum() / np.isin(target, (2, 3)).sum())
        return [pred]

    queue = list(rows.values())
    monkeypatch.setattr(evaluation, "segment", fake_segment)
    metrics = evaluate_segmentation(manifest, tmp_path / "out", segmentation=tiny_seg_folder, postprocess=False)
    share = metrics["heart_share_of_reference_lung"]
    assert share["n"] == len(expected) == 3
    assert share["mean"] == pytest.approx(float(np.mean(expected)))
    groups = metrics["ctr_predicted_by_source_and_label"]
    assert {k.split("/")[0] for k in groups} == {"alpha", "beta", "all"}
    assert sum(v["n"] for k, v in groups.items() if k.startswith("all/")) == 6 and not metrics["failures"]
