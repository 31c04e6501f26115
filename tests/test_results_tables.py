"""RESULTS.md table rendering (training/results_tables.py) from evaluate-style metrics."""

from __future__ import annotations

import json

from cxr_hub.classification import accuracy_by_group, classification_report
from training import results_tables as rt

LABELS = ["normal", "bacterial", "tuberculosis", "viral_covid"]


def _metrics() -> dict:
    truth = ["normal", "normal", "viral_covid", "viral_covid", "bacterial"]
    pred = ["normal", "viral_covid", "viral_covid", "viral_covid", "viral_covid"]
    rep = classification_report(truth, pred, LABELS, ["p1", "p2", "p3", "p4", "p5"], n_boot=50)
    rep["accuracy_by_source"] = accuracy_by_group(truth, pred, ["jsrt", "nih", "cohen", "cohen", "cohen"])
    rep["saliency_in_lung_mean"] = 0.8
    rep["global"] = classification_report(truth, ["normal"] * 5, LABELS, ["p1", "p2", "p3", "p4", "p5"], n_boot=50)
    return rep


def test_tables_show_measured_values_and_absent_classes(tmp_path, capsys):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(_metrics()))
    assert rt.main(["--label4", str(path), "--label3", str(path)]) == 0
    text = capsys.readouterr().out
    assert "| **ours**, patch | 5 | 60.0 [" in text  # accuracy 3/5 with its bootstrap CI
    assert "| paper, patch | – | – | – | – | 84.4 | – |" in text
    assert "| tuberculosis | absent (n = 0) |" in text
    assert "cohen" in text and "66.7 (n = 3)" in text  # 2 of 3 Cohen images right
    assert "Mean share of the patch model's saliency inside the lungs: 80.0 %" in text
    assert "Table XII" in text


def test_pct_handles_undefined():
    assert rt.pct(None) == "–" and rt.pct(0.925) == "92.5"
