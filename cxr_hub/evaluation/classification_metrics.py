"""Classification metrics: plain functions on label sequences and confusion matrices, with no sklearn dependency.

* :func:`confusion_matrix` — rows are the true class, columns the predicted class.
* :func:`per_class_metrics` — n, sensitivity (recall), precision, specificity and F1 per class.
* :func:`macro_metrics` — accuracy and macro precision / recall / F1 / specificity.
* :func:`accuracy_by_group` — accuracy within each group (image source, to expose source shortcuts).
* :func:`bootstrap_replicates` / :func:`bootstrap_ci` — percentile confidence intervals from resampling *patients*
  (all images of a drawn patient come along), deterministic for a seed.
* :func:`classification_report` — everything above as one JSON-ready dict, with notes on the conventions used.
* :func:`json_ready` — NaN/inf → None and numpy scalars → Python numbers, for ``json.dumps(allow_nan=False)``.

Conventions (stated in every report's ``notes``):

* **Macro averages run over the classes present in the ground truth** (n > 0). A class with no true image — e.g.
  tuberculosis, which has no images in the project's data — is listed in ``per_class`` and in the confusion matrix
  (so predictions of it stay visible as errors) but is excluded from the macro means, where its recall would be 0/0.
* **0/0 is 0 for precision and F1** of a present class (a class never predicted has precision 0, and a note says
  so), as sklearn's ``zero_division=0``; a quantity that cannot be defined at all (sensitivity of an absent class)
  is ``None`` in JSON, never NaN.
* Bootstrap replicates apply the same rules to each resample (macro over the classes present in that resample).

Imports numpy only; used by ``evaluate`` (:mod:`cxr_hub.evaluation.classification`), the biomarker study and
``training/``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MACRO_METRICS",
    "MACRO_NOTE",
    "accuracy_by_group",
    "bootstrap_ci",
    "bootstrap_replicates",
    "classification_report",
    "confusion_matrix",
    "json_ready",
    "macro_metrics",
    "per_class_metrics",
]

#: The macro metrics of :func:`macro_metrics` (and of the bootstrap CIs), in report order.
MACRO_METRICS = ("accuracy", "precision", "recall", "f1", "specificity")

MACRO_NOTE = (
    "macro precision/recall/F1/specificity average over the classes present in the ground truth (n > 0); classes "
    "with n = 0 are listed in per_class and the confusion matrix but excluded from the means; precision and F1 of a "
    "class that is never predicted count as 0 (0/0 := 0)"
)


def _indices(values: Sequence[str], labels: Sequence[str], what: str) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(v) for v in values if v not in index})
    if unknown:
        raise ValueError(f"{what} contains label(s) {unknown} that are not in labels {list(labels)}.")
    return np.array([index[v] for v in values], dtype=np.int64)


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts of (true, predicted) class pairs.

    Args:
        y_true: true class names, length N.
        y_pred: predicted class names, length N.
        labels: the class names in matrix order (every name in ``y_true``/``y_pred`` must be among them).

    Returns:
        int64 (C, C) matrix; ``m[i, j]`` = images of true class ``labels[i]`` predicted as ``labels[j]``.

    Raises:
        ValueError: different lengths or an unknown label.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} vs {len(y_pred)}.")
    t = _indices(y_true, labels, "y_true")
    p = _indices(y_pred, labels, "y_pred")
    c = len(labels)
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def _ratio(num: float, den: float, zero: float | None) -> float | None:
    return float(num / den) if den > 0 else zero


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def per_class_metrics(matrix: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One-vs-rest metrics of each class from a confusion matrix.

    Args:
        matrix: (C, C) counts, rows true, columns predicted (see :func:`confusion_matrix`); weights are allowed.
        labels: the C class names.

    Returns:
        ``{label: {"n", "sensitivity", "precision", "specificity", "f1"}}``; values in [0, 1]. ``n`` = true images of
        the class. Sensitivity and F1 are None when ``n == 0``; precision is 0 when a present class is never
        predicted (0/0 := 0) and None when an absent class is never predicted; specificity is None when there is no
        image of another class.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
        raise ValueError(f"matrix must be ({len(labels)}, {len(labels)}), got {m.shape}.")
    total = m.sum()
    out: dict[str, dict[str, Any]] = {}
    for i, label in enumerate(labels):
        tp = m[i, i]
        n = m[i].sum()
        predicted = m[:, i].sum()
        fp, fn = predicted - tp, n - tp
        tn = total - tp - fp - fn
        sensitivity = _ratio(tp, n, None)
        # 0/0 precision: 0 for a present class never predicted (it failed); undefined for an absent one
        precision = _ratio(tp, predicted, 0.0 if n > 0 else None)
        n_out = int(n) if float(n).is_integer() else float(n)
        out[label] = {
            "n": n_out,
            "sensitivity": sensitivity,
            "precision": precision,
            "specificity": _ratio(tn, tn + fp, None),
            "f1": _f1(precision, sensitivity),
        }
    return out


def macro_metrics(matrix: np.ndarray, labels: Sequence[str]) -> dict[str, float | None]:
    """Accuracy and macro precision / recall / F1 / specificity over the classes present in the ground truth.

    Args:
        matrix: (C, C) counts, rows true, columns predicted.
        labels: the C class names.

    Returns:
        ``{"accuracy", "precision", "recall", "f1", "specificity"}`` in [0, 1]; all None for an empty matrix.
        Specificity of a present class with no other class present is skipped in the mean.
    """
    m = np.asarray(matrix, dtype=np.float64)
    per = per_class_metrics(m, labels)
    present = [label for label in labels if per[label]["n"] > 0]
    if not present:
        return dict.fromkeys(MACRO_METRICS)

    def mean(key: str) -> float | None:
        vals = [per[c][key] for c in present if per[c][key] is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "accuracy": float(np.trace(m) / m.sum()),
        "precision": mean("precision"),
        "recall": mean("sensitivity"),
        "f1": mean("f1"),
        "specificity": mean("specificity"),
    }


def accuracy_by_group(y_true: Sequence[str], y_pred: Sequence[str], groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Accuracy within each group (e.g. per image source, to expose source shortcuts).

    Args:
        y_true: true class names, length N.
        y_pred: predicted class names, length N.
        groups: the group of each image (e.g. its source), length N.

    Returns:
        ``{group: {"n", "accuracy"}}`` sorted by group name.
    """
    if not len(y_true) == len(y_pred) == len(groups):
        raise ValueError("y_true, y_pred and groups must have one entry per image.")
    hits: dict[str, list[bool]] = defaultdict(list)
    for t, p, g in zip(y_true, y_pred, groups, strict=True):
        hits[str(g)].append(t == p)
    return {g: {"n": len(v), "accuracy": float(np.mean(v))} for g, v in sorted(hits.items())}


def bootstrap_replicates(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    groups: Sequence[str],
    labels: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Macro metrics on ``n_boot`` resamples of *groups* (patients), drawn with replacement.

    Images are not independent — one patient can contribute several films — so the resampling unit is the patient:
    a drawn patient brings all of its images, each drawn patient counted once per draw.

    Args:
        y_true: true class names, length N.
        y_pred: predicted class names, length N.
        groups: patient id of each image, length N.
        labels: class names (matrix order).
        n_boot: number of resamples (>= 1).
        seed: seed of the resampling; same inputs and seed → identical replicates.

    Returns:
        ``{metric: float64 (n_boot,) values}`` for :data:`MACRO_METRICS`; NaN where a replicate's value is undefined.
    """
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}.")
    if not len(y_true) == len(y_pred) == len(groups):
        raise ValueError("y_true, y_pred and groups must have one entry per image.")
    c = len(labels)
    cell = _indices(y_true, labels, "y_true") * c + _indices(y_pred, labels, "y_pred")
    patients, patient_of = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    rng = np.random.default_rng(seed)
    out = {k: np.full(int(n_boot), np.nan) for k in MACRO_METRICS}
    if len(cell) == 0:
        return out
    for b in range(int(n_boot)):
        drawn = np.bincount(rng.integers(0, len(patients), len(patients)), minlength=len(patients))
        weights = drawn[patient_of].astype(np.float64)  # an image counts as often as its patient was drawn
        m = np.bincount(cell, weights=weights, minlength=c * c).reshape(c, c)
        for k, v in macro_metrics(m, labels).items():
            out[k][b] = np.nan if v is None else v
    return out


def bootstrap_ci(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    groups: Sequence[str],
    labels: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap confidence intervals of the macro metrics, resampling patients.

    Args:
        y_true, y_pred, groups, labels, n_boot, seed: as in :func:`bootstrap_replicates`.
        level: confidence level in (0, 1).

    Returns:
        ``{metric: [low, high]}`` (None where no replicate defined the metric).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    reps = bootstrap_replicates(y_true, y_pred, groups, labels, n_boot=n_boot, seed=seed)
    tail = 100 * (1 - level) / 2
    out: dict[str, list[float] | None] = {}
    for k, v in reps.items():
        finite = v[np.isfinite(v)]
        out[k] = [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))] if finite.size else None
    return out


def classification_report(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    untrained: Iterable[str] = (),
) -> dict[str, Any]:
    """All classification metrics of one prediction set as a JSON-ready dict.

    Args:
        y_true: true class names.
        y_pred: predicted class names.
        labels: the classifier's classes (matrix order; include classes that never occur, e.g. tuberculosis).
        groups: patient ids for the bootstrap CI; None → no ``ci95`` (each image would be its own patient).
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        untrained: classes the classifier never saw in training (noted, and excluded like any class with n = 0
            when absent from the ground truth).

    Returns:
        ``{"n", "accuracy", "precision", "recall", "f1", "specificity", "per_class", "confusion_matrix": {"labels",
        "matrix"}, "ci95", "notes"}``; macro values in [0, 1] (None when undefined).
    """
    labels = list(labels)
    m = confusion_matrix(y_true, y_pred, labels)
    per = per_class_metrics(m, labels)
    report: dict[str, Any] = {"n": len(y_true), **macro_metrics(m, labels)}
    report["per_class"] = per
    report["confusion_matrix"] = {"labels": labels, "matrix": m.tolist()}
    if groups is not None:
        report["ci95"] = bootstrap_ci(y_true, y_pred, groups, labels, n_boot=n_boot, seed=seed)
        report["ci95_method"] = f"percentile bootstrap over patients, {n_boot} resamples, seed {seed}"
    notes = [MACRO_NOTE]
    untrained = [c for c in untrained if c in labels]
    for c in untrained:
        notes.append(f"{c}: untrained (no training images); its outputs are meaningless")
    absent = [c for c in labels if per[c]["n"] == 0]
    if absent:
        notes.append(f"absent from the evaluated data (n = 0), excluded from macro averages: {', '.join(absent)}")
    never = [c for c in labels if per[c]["n"] > 0 and not m[:, labels.index(c)].any()]
    if never:
        notes.append(f"never predicted (precision counted as 0): {', '.join(never)}")
    report["notes"] = notes
    return report


def json_ready(value: Any) -> Any:
    """NaN/inf → None and numpy scalars → Python numbers, recursively, for ``json.dumps(allow_nan=False)``.

    Args:
        value: a report: dicts (keys become strings), lists, tuples (become lists), numbers and anything else.

    Returns:
        The same structure, safe for strict JSON.
    """
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
