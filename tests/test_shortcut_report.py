"""The shortcut report's parts (training/shortcut_report.py) on synthetic inputs, offline."""

from __future__ import annotations

import numpy as np
import pytest

from training.shortcut_report import (
    accuracy_by_source_and_class,
    grouped_folds,
    lung_histogram,
    probe,
    saliency_share,
)


def test_accuracy_by_source_and_class_counts_each_group():
    rows = [
        {"source": "jsrt", "label": "normal", "prediction": "normal", "saliency_in_lung": "0.9"},
        {"source": "cohen", "label": "normal", "prediction": "viral_covid", "saliency_in_lung": "0.5"},
        {"source": "cohen", "label": "normal", "prediction": "normal", "saliency_in_lung": "nan"},
        {"source": "cohen", "label": "viral_covid", "prediction": "viral_covid", "saliency_in_lung": "0.7"},
    ]
    for r in rows:
        r["global_prediction"] = "normal"
    got = accuracy_by_source_and_class(rows)
    assert got["cohen/normal"] == {"n": 2, "accuracy": 0.5}
    assert got["all/normal"] == {"n": 3, "accuracy": pytest.approx(2 / 3)}
    assert got["jsrt/normal"]["accuracy"] == 1.0 and got["cohen/viral_covid"]["n"] == 1
    assert accuracy_by_source_and_class(rows, "global_prediction")["cohen/viral_covid"]["accuracy"] == 0.0
    share = saliency_share(rows)
    assert share["cohen"]["n"] == 2 and share["cohen"]["mean"] == pytest.approx(0.6)
    assert share["all"]["n"] == 3


def test_grouped_folds_keep_a_patient_in_one_fold_and_spread_each_source():
    sources = ["a"] * 40 + ["b"] * 20
    groups = [f"p{i // 2}" for i in range(60)]  # two films per patient
    fold = grouped_folds(sources, groups)
    for g in set(groups):
        assert len({f for f, gg in zip(fold, groups, strict=True) if gg == g}) == 1
    for src, n in (("a", 40), ("b", 20)):
        counts = np.bincount(fold[np.array(sources) == src], minlength=5)
        assert counts.min() >= n // 5 - 2


def test_probe_finds_a_source_that_shows_and_not_one_that_does_not():
    rng = np.random.default_rng(0)
    n = 120
    sources = ["a", "b", "c"] * (n // 3)
    groups = [f"p{i}" for i in range(n)]
    shift = np.array([{"a": 0.0, "b": 3.0, "c": -3.0}[s] for s in sources])
    separable = rng.normal(size=(n, 4)) + shift[:, None]
    result = probe(separable, sources, groups)
    assert result["balanced_accuracy"] > 0.9 and result["chance"] == pytest.approx(1 / 3)
    assert set(result["recall"]) == {"a", "b", "c"} and result["n"] == {"a": 40, "b": 40, "c": 40}
    noise = probe(rng.normal(size=(n, 4)), sources, groups)
    assert noise["balanced_accuracy"] < 0.55
    with pytest.raises(ValueError, match="two sources"):
        probe(separable[:5], ["a"] * 5, groups[:5])


def test_lung_histogram_reads_only_the_lungs():
    image = np.zeros((4, 4), np.float32)
    image[:, 2:] = 250.0
    mask = np.zeros((4, 4), bool)
    mask[:, 2:] = True
    hist = lung_histogram(image, mask, bins=4)
    assert hist.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_results_section_renders_each_report_and_says_when_there_is_none(tmp_path):
    import json

    from training.results_tables import ResultFiles, shortcuts_section

    probe_ = {"balanced_accuracy": 0.8, "chance": 1 / 3, "recall": {}, "n": {"jsrt": 3, "nih": 4}, "folds": 5}
    report = {
        "accuracy_by_source_and_class": {"jsrt/normal": {"n": 3, "accuracy": 1.0}},
        "saliency_in_lung": {"all": {"n": 3, "mean": 0.5, "std": 0.1}},
        "source_probe_normals": {"features": probe_, "lung_histogram_baseline": {**probe_, "balanced_accuracy": 0.4}},
    }
    (tmp_path / "shortcuts_my-model.json").write_text(json.dumps(report))
    files = ResultFiles(root=tmp_path, shortcuts=".")
    text = shortcuts_section(files.shortcut_reports())
    assert "| `my-model` | 100.0% (3) | 50.0% | 0.800 | 0.400 | 0.333 |" in text and "jsrt 3, nih 4" in text
    assert "No shortcut report yet" in shortcuts_section(ResultFiles(root=tmp_path / "none").shortcut_reports())
