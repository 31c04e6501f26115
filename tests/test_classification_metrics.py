"""Classification statistics against hand-computed examples (no sklearn): confusion matrix, per-class and macro
metrics, edge cases, and the patient-level bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_hub.evaluation.classification_metrics import (
    MACRO_METRICS,
    accuracy_by_group,
    bootstrap_ci,
    bootstrap_replicates,
    classification_report,
    confusion_matrix,
    macro_metrics,
    per_class_metrics,
)

ABC = ["a", "b", "c"]
# true a a a b b c / predicted a a b b c c
TRUE_1 = ["a", "a", "a", "b", "b", "c"]
PRED_1 = ["a", "a", "b", "b", "c", "c"]

LABEL4 = ["normal", "bacterial", "tuberculosis", "viral_covid"]


def test_confusion_matrix_rows_true_columns_predicted():
    m = confusion_matrix(TRUE_1, PRED_1, ABC)
    assert m.dtype == np.int64
    np.testing.assert_array_equal(m, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="not in labels"):
        confusion_matrix(["a", "z"], ["a", "a"], ABC)
    with pytest.raises(ValueError, match="length"):
        confusion_matrix(["a"], ["a", "b"], ABC)


def test_per_class_by_hand():
    per = per_class_metrics(confusion_matrix(TRUE_1, PRED_1, ABC), ABC)
    # a: TP 2, FN 1, FP 0, TN 3
    assert per["a"] == pytest.approx({"n": 3, "sensitivity": 2 / 3, "precision": 1.0, "specificity": 1.0, "f1": 0.8})
    # b: TP 1, FN 1, FP 1 (an a), TN 3
    assert per["b"] == pytest.approx({"n": 2, "sensitivity": 0.5, "precision": 0.5, "specificity": 0.75, "f1": 0.5})
    # c: TP 1, FN 0, FP 1 (a b), TN 4
    assert per["c"] == pytest.approx({"n": 1, "sensitivity": 1.0, "precision": 0.5, "specificity": 0.8, "f1": 2 / 3})


def test_macro_by_hand():
    macro = macro_metrics(confusion_matrix(TRUE_1, PRED_1, ABC), ABC)
    assert set(macro) == set(MACRO_METRICS)
    assert macro["accuracy"] == pytest.approx(4 / 6)
    assert macro["precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert macro["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert macro["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert macro["specificity"] == pytest.approx((1 + 0.75 + 0.8) / 3)
    perfect = macro_metrics(confusion_matrix(ABC, ABC, ABC), ABC)
    assert all(v == 1.0 for v in perfect.values())


def test_absent_class_and_never_predicted_class():
    """Tuberculosis has no true image (excluded from the means) but is predicted once; bacterial is never
    predicted (precision 0 with a note, not NaN)."""
    y_true = ["normal", "normal", "bacterial", "viral_covid", "viral_covid"]
    y_pred = ["normal", "viral_covid", "viral_covid", "viral_covid", "tuberculosis"]
    report = classification_report(y_true, y_pred, LABEL4, untrained=["tuberculosis"])
    per = report["per_class"]
    assert per["tuberculosis"] == {"n": 0, "sensitivity": None, "precision": 0.0, "specificity": 0.8, "f1": None}
    assert per["bacterial"] == pytest.approx(
        {"n": 1, "sensitivity": 0.0, "precision": 0.0, "specificity": 1.0, "f1": 0.0}
    )
    assert per["normal"] == pytest.approx(
        {"n": 2, "sensitivity": 0.5, "precision": 1.0, "specificity": 1.0, "f1": 2 / 3}
    )
    # viral: TP 1, FN 1, FP 2, TN 1
    assert per["viral_covid"] == pytest.approx(
        {"n": 2, "sensitivity": 0.5, "precision": 1 / 3, "specificity": 1 / 3, "f1": 0.4}
    )
    # macro over normal, bacterial, viral_covid only
    assert report["accuracy"] == pytest.approx(2 / 5)
    assert report["precision"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert report["recall"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert report["f1"] == pytest.approx((2 / 3 + 0 + 0.4) / 3)
    assert report["specificity"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert report["confusion_matrix"]["labels"] == LABEL4
    assert report["confusion_matrix"]["matrix"][1] == [0, 0, 0, 1]
    notes = " | ".join(report["notes"])
    assert "tuberculosis: untrained" in notes
    assert "excluded from macro averages: tuberculosis" in notes
    assert "never predicted (precision counted as 0): bacterial" in notes
    assert "ci95" not in report  # no patients given
    json.dumps(report, allow_nan=False)
    # an absent class that is never predicted has no defined precision either
    quiet = per_class_metrics(confusion_matrix(["normal"], ["normal"], LABEL4), LABEL4)
    assert quiet["tuberculosis"]["precision"] is None and quiet["tuberculosis"]["specificity"] == 1.0


def test_empty_and_weighted_matrices():
    assert macro_metrics(np.zeros((3, 3)), ABC) == dict.fromkeys(MACRO_METRICS)
    # weights (bootstrap multiplicities) behave like repeated rows
    m = confusion_matrix(TRUE_1, PRED_1, ABC)
    assert macro_metrics(2.0 * m, ABC) == pytest.approx(macro_metrics(m, ABC))
    with pytest.raises(ValueError, match="matrix must be"):
        per_class_metrics(np.zeros((2, 2)), ABC)


def test_accuracy_by_group():
    out = accuracy_by_group(TRUE_1, PRED_1, ["x", "x", "y", "y", "y", "x"])
    assert out == {"x": {"n": 3, "accuracy": 1.0}, "y": {"n": 3, "accuracy": pytest.approx(1 / 3)}}


def _realistic(seed: int = 0, patients: int = 40):
    rng = np.random.default_rng(seed)
    y_true, y_pred, groups = [], [], []
    for p in range(patients):
        cls = ABC[p % 3]
        for _ in range(1 + p % 3):  # one to three images per patient
            y_true.append(cls)
            y_pred.append(cls if rng.random() < 0.75 else ABC[(ABC.index(cls) + 1) % 3])
            groups.append(f"p{p}")
    return y_true, y_pred, groups


def test_bootstrap_ci_contains_the_estimate_and_is_deterministic():
    y_true, y_pred, groups = _realistic()
    point = macro_metrics(confusion_matrix(y_true, y_pred, ABC), ABC)
    ci = bootstrap_ci(y_true, y_pred, groups, ABC, n_boot=300, seed=1)
    assert set(ci) == set(MACRO_METRICS)
    for k, (lo, hi) in ci.items():
        assert 0 <= lo <= point[k] <= hi <= 1, k
        assert hi > lo
    assert bootstrap_ci(y_true, y_pred, groups, ABC, n_boot=300, seed=1) == ci
    assert bootstrap_ci(y_true, y_pred, groups, ABC, n_boot=300, seed=2) != ci


def test_bootstrap_resamples_patients_not_images():
    # patient A: nine correct images; patient B: one wrong image. Resampling the two patients can only give
    # accuracy 1 (A, A), 0.9 (A, B) or 0 (B, B); resampling images would give many other values.
    y_true = ["a"] * 10
    y_pred = ["a"] * 9 + ["b"]
    groups = ["A"] * 9 + ["B"]
    reps = bootstrap_replicates(y_true, y_pred, groups, ABC, n_boot=200, seed=0)
    values = set(np.round(reps["accuracy"], 9))
    assert values <= {0.0, 0.9, 1.0} and len(values) >= 2
    assert all(len(v) == 200 for v in reps.values())


def test_report_with_patients_has_ci():
    y_true, y_pred, groups = _realistic(patients=12)
    report = classification_report(y_true, y_pred, ABC, groups, n_boot=50, seed=0)
    assert set(report["ci95"]) == set(MACRO_METRICS)
    assert "patients" in report["ci95_method"]
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_replicates(y_true, y_pred, groups, ABC, n_boot=0)
