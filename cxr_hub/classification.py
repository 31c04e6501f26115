"""Classification metrics and evaluation: ``python -m cxr_hub evaluate``.

The metric functions are plain functions on label sequences and confusion matrices, with no sklearn dependency:

* :func:`confusion_matrix` — rows are the true class, columns the predicted class.
* :func:`per_class_metrics` — n, sensitivity (recall), precision, specificity and F1 per class.
* :func:`macro_metrics` — accuracy and macro precision / recall / F1 / specificity.
* :func:`bootstrap_replicates` / :func:`bootstrap_ci` — percentile confidence intervals from resampling *patients*
  (all images of a drawn patient come along), deterministic for a seed.
* :func:`classification_report` — everything above as one JSON-ready dict, with notes on the conventions used.

Conventions (stated in every report's ``notes``):

* **Macro averages run over the classes present in the ground truth** (n > 0). A class with no true image — e.g.
  tuberculosis, which has no images in the project's data — is listed in ``per_class`` and in the confusion matrix
  (so predictions of it stay visible as errors) but is excluded from the macro means, where its recall would be 0/0.
* **0/0 is 0 for precision and F1** of a present class (a class never predicted has precision 0, and a note says
  so), as sklearn's ``zero_division=0``; a quantity that cannot be defined at all (sensitivity of an absent class)
  is ``None`` in JSON, never NaN.
* Bootstrap replicates apply the same rules to each resample (macro over the classes present in that resample).

``evaluate`` runs the full :class:`cxr_hub.CXRPipeline` (segmentation → K lung patches → majority vote) on every
selected manifest row with a label for the task and writes ``metrics.json``, ``predictions.csv`` and
``confusion_matrix.png``. Selection, by default: the test split (``classification:test``) of the project's split file
(:data:`DEFAULT_SPLIT_FILE`, the one the shipped classifiers were trained with) when that file covers the manifest,
else every row; ``split="all"`` scores every row. Whenever films of the split's train or val part are scored, a
note says so (in ``metrics.json`` and on stderr): the classifier has seen them. ``limit`` takes a stratified,
deterministic subset (:func:`stratified_subset`), never the first rows of the manifest.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .presets import default_folder

__all__ = [
    "MACRO_METRICS",
    "MACRO_NOTE",
    "accuracy_by_group",
    "add_parser",
    "bootstrap_ci",
    "bootstrap_replicates",
    "classification_report",
    "confusion_matrix",
    "evaluate_classification",
    "macro_metrics",
    "per_class_metrics",
    "run_evaluate",
    "stratified_subset",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEGMENTATION = default_folder("segmentation")
#: Default patch classifier per task (the folders ``training/train_classifier.py`` exports to).
DEFAULT_CLASSIFIERS: dict[str, Path] = {
    "label4": default_folder("label4/patch"),
    "label3": default_folder("label3/patch"),
}
TASKS = ("label4", "label3")
#: The patient-level split ``training/data.py`` makes once and every training script uses (its ``DEFAULT_SPLIT_FILE``).
DEFAULT_SPLIT_FILE = REPO_ROOT / "training" / "splits" / "splits_seed0.json"
#: What ``evaluate`` scores when no split is named and :data:`DEFAULT_SPLIT_FILE` covers the manifest.
DEFAULT_SPLIT = "classification:test"
#: ``split`` value that scores every selected row (training films included, with a note).
ALL_ROWS = "all"

#: The macro metrics of :func:`macro_metrics` (and of the bootstrap CIs), in report order.
MACRO_METRICS = ("accuracy", "precision", "recall", "f1", "specificity")

MACRO_NOTE = (
    "macro precision/recall/F1/specificity average over the classes present in the ground truth (n > 0); classes "
    "with n = 0 are listed in per_class and the confusion matrix but excluded from the means; precision and F1 of a "
    "class that is never predicted count as 0 (0/0 := 0)"
)


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


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
    """NaN/inf → None and numpy scalars → Python numbers, recursively, for ``json.dumps(allow_nan=False)``."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------------------------


def _model_problem(folder: Path, flag: str, what: str, given: bool) -> str | None:
    """An error message when ``folder`` is not a saved model, else None."""
    if (folder / "config.json").is_file():
        return None
    if not given:
        return (
            f"no {what} model given and the default folder {folder} does not exist. Train one (see training/) or "
            f"pass {flag} DIR, a folder written by save_pretrained (config.json + model.safetensors). Untrained "
            "(random) weights are never used silently."
        )
    return f"{flag} {folder}: not a model folder (no config.json there). Pass a folder written by save_pretrained."


def stratified_subset(rows: Sequence[Any], limit: int, task: str) -> list[Any]:
    """At most ``limit`` rows, the classes in the proportions of ``rows``; deterministic; in the input order.

    Each class gets its share of ``limit`` (largest remainders first, every class at least one row when ``limit``
    allows), and takes its rows in a fixed pseudo-random order: by the SHA-256 of the row id, so the subset depends
    neither on the manifest's order (often sorted by source) nor on a seed, and adding rows changes it little.

    Args:
        rows: manifest rows (with ``id`` and ``label(task)``).
        limit: the number of rows wanted (>= 1).
        task: the label column ("label4" / "label3").

    Returns:
        The chosen rows, in the order of ``rows``; all of them when there are at most ``limit``.
    """
    if limit >= len(rows):
        return list(rows)
    by_class: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_class[row.label(task)].append(row)
    classes = sorted(by_class)
    exact = {c: limit * len(by_class[c]) / len(rows) for c in classes}
    quota = {c: math.floor(exact[c]) for c in classes}
    for c in sorted(classes, key=lambda c: (quota[c] > 0, -(exact[c] - quota[c]), c)):
        if sum(quota.values()) >= limit:
            break
        quota[c] += 1  # classes left empty first, then the largest remainders
    chosen: set[int] = set()
    for c in classes:
        ranked = sorted(by_class[c], key=lambda r: hashlib.sha256(str(r.id).encode()).hexdigest())
        chosen.update(id(r) for r in ranked[: quota[c]])
    return [r for r in rows if id(r) in chosen]


def _split_selection(
    rows: Sequence[Any], split_file: str | Path | None, split: str | None
) -> tuple[list[Any], dict[str, Any], list[str]]:
    """The rows ``evaluate`` scores, a record of how they were chosen, and notes for the report.

    See the module docstring for the rules. The notes say when every row is scored and how many scored films the
    classifier saw in training (the split's train and val parts).

    Raises:
        ValueError: a named split without a readable split file, or a malformed split.
    """
    from .evaluation import select_rows

    file = Path(split_file) if split_file is not None else DEFAULT_SPLIT_FILE
    splits: dict[str, dict[str, str]] | None = None
    if file.is_file():
        try:
            splits = json.loads(file.read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{file.name} is not a split file made by training/data.py ({exc}).") from exc
    elif split_file is not None:
        raise FileNotFoundError(f"--split-file {file.name}: no such file.")
    named = split not in (None, ALL_ROWS)
    if named and splits is None:
        raise ValueError(f"--split {split} needs a split file, and {file.name} does not exist: pass --split-file.")
    group = (split if named else DEFAULT_SPLIT).partition(":")[0]
    assigned = (splits or {}).get(group) or {}
    notes: list[str] = []
    if named:
        used: str | None = split
        chosen = select_rows(rows, file, split)
    elif split == ALL_ROWS:
        used, chosen = ALL_ROWS, list(rows)
    elif any(r.id in assigned for r in rows):
        used, chosen = DEFAULT_SPLIT, select_rows(rows, file, DEFAULT_SPLIT)
    else:
        used, chosen = None, list(rows)
        why = "does not cover this manifest" if splits is not None else "does not exist"
        notes.append(
            f"no split selected: {file.name} {why}, so every labelled row is scored (pass --split-file and --split "
            "to score a held-out part)"
        )
    seen = sum(assigned.get(r.id) in ("train", "val") for r in chosen)
    if seen:
        notes.append(
            f"{seen} of the scored films are in the train or val part of {file.name}, the data the classifier was "
            f"trained and selected on: these numbers overstate accuracy on new films (the default --split "
            f"{DEFAULT_SPLIT} scores held-out patients only)"
        )
    info = {"split": used, "split_file": str(file) if splits is not None else None, "training_films_scored": seen}
    return chosen, info, notes


def _plot_confusion(matrix: np.ndarray, labels: Sequence[str], title: str, path: Path) -> None:
    """Saves an annotated confusion-matrix heat map (rows true, columns predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    side = 1.2 + 0.9 * len(labels)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, float), where=rows > 0)  # colour by row share: class sizes differ
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_classification(
    manifest: str | Path,
    out_dir: str | Path,
    *,
    task: str = "label4",
    segmentation: str | Path | None = None,
    classifier: str | Path | None = None,
    global_classifier: str | Path | None = None,
    k: int = 100,
    seed: int = 0,
    split_file: str | Path | None = None,
    split: str | None = None,
    sources: Iterable[str] | None = None,
    n_boot: int = 1000,
    limit: int | None = None,
    device: str | None = None,
    chunk_size: int = 32,
    sampling: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs the full pipeline on every selected row with a label for ``task`` and writes the evaluation files.

    Args:
        manifest: manifest CSV or its folder (image paths are relative to it); any folder in the cxr-hub format.
        out_dir: destination of ``metrics.json``, ``predictions.csv`` and ``confusion_matrix.png``.
        task: "label4" or "label3": which manifest column holds the truth.
        segmentation: segmentation model folder (default ``models/cxr-lung-seg-fcdensenet103``).
        classifier: patch classifier folder (default per task, see :data:`DEFAULT_CLASSIFIERS`).
        global_classifier: optional global classifier folder; its metrics go under ``"global"``.
        k: patches per image (the paper: 100).
        seed: patch sampler seed (the pipeline's; same seed → same patches per image).
        split_file: split JSON (``training/splits/...``) for ``split``; None: :data:`DEFAULT_SPLIT_FILE`.
        split: ``GROUP:NAME`` such as ``classification:test``; ``"all"``: every row; None: :data:`DEFAULT_SPLIT`
            when the split file covers the manifest, else every row (with a note).
        sources: only rows of these sources.
        n_boot: bootstrap resamples for ``ci95``.
        limit: at most this many rows, a stratified deterministic subset (:func:`stratified_subset`).
        device: "cpu" / "cuda" (default: CUDA when available).
        chunk_size: patches per forward pass.
        sampling: the pipeline's patch sampler (``CXRPipeline(sampling=...)``; None → its default); recorded with
            the other pipeline settings under ``"pipeline"`` in ``metrics.json``.
        progress: show a tqdm bar.

    Returns:
        The metrics dict written to ``metrics.json``.

    Raises:
        FileNotFoundError: a model folder or the manifest is missing.
        ValueError: unknown task, no labelled rows, or truth labels the classifier does not know.
    """
    from tqdm import tqdm

    from .evaluation import select_rows
    from .io import CXRInputError
    from .manifest import read_manifest
    from .patches import DEFAULT_SAMPLING
    from .pipeline import CXRPipeline

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    folders = {
        "segmentation": (Path(segmentation or DEFAULT_SEGMENTATION), "--segmentation", "segmentation", segmentation),
        "classifier": (Path(classifier or DEFAULT_CLASSIFIERS[task]), "--classifier", "patch classifier", classifier),
    }
    if global_classifier is not None:
        folders["global"] = (Path(global_classifier), "--global-classifier", "global classifier", global_classifier)
    problems = [_model_problem(p, flag, what, given is not None) for p, flag, what, given in folders.values()]
    problems = [p for p in problems if p]
    if problems:
        raise FileNotFoundError("; ".join(problems))

    if limit is not None and int(limit) < 1:
        raise ValueError(f"--limit {limit}: must be at least 1 (or left out to score every selected image).")
    labelled = [r for r in select_rows(read_manifest(manifest), sources=sources) if r.label(task)]
    rows, split_info, selection_notes = _split_selection(labelled, split_file, split)
    if limit:
        rows = stratified_subset(rows, int(limit), task)
    if not rows:
        raise ValueError(f"No rows to evaluate: the selection has no images with a {task} label.")
    pipe = CXRPipeline.from_pretrained(
        folders["segmentation"][0],
        folders["classifier"][0],
        folders["global"][0] if "global" in folders else None,
        device=device,
        chunk_size=chunk_size,
        sampling=sampling or DEFAULT_SAMPLING,
    )
    names = pipe.class_names
    unknown = sorted({r.label(task) for r in rows} - set(names))
    if unknown:
        raise ValueError(
            f"The classifier's classes {names} do not include the {task} label(s) {unknown}: was it trained for "
            f"another task (its label_set is {pipe.classifier_config.label_set!r})?"
        )
    untrained = [c for c in names if c not in pipe.classifier_config.trained_classes]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for row in tqdm(rows, desc="classifying", unit="img", disable=not progress):
        try:
            result = pipe.analyze(pipe.prepare(row.image), k=k, seed=seed)
        except (CXRInputError, OSError, ValueError) as exc:
            # one unreadable film or one without lungs must not lose the whole evaluation
            failures.append({"id": row.id, "error": str(exc)})
            continue
        records.append(
            {
                "id": row.id,
                "patient_id": row.patient_id,
                "source": row.source,
                "view": row.view,
                "label": row.label(task),
                "prediction": result.label,
                "correct": int(result.label == row.label(task)),
                **{f"votes_{c}": result.votes[c] for c in names},
                **{f"prob_{c}": round(result.probabilities[c], 6) for c in names},
                "saliency_in_lung": result.saliency_in_lung.get(result.label, math.nan),
                "global_prediction": result.global_label or "",
                "warnings": "; ".join(result.warnings),
            }
        )
    if not records:
        raise ValueError(f"Every selected image failed; first error: {failures[0]['error'] if failures else '?'}")

    y_true = [r["label"] for r in records]
    y_pred = [r["prediction"] for r in records]
    patients = [r["patient_id"] for r in records]
    metrics = classification_report(y_true, y_pred, names, patients, n_boot=n_boot, seed=seed, untrained=untrained)
    saliency = np.array([r["saliency_in_lung"] for r in records], dtype=np.float64)
    metrics["n_patients"] = len(set(patients))
    metrics["accuracy_by_source"] = accuracy_by_group(y_true, y_pred, [r["source"] for r in records])
    metrics["saliency_in_lung_mean"] = float(np.nanmean(saliency)) if np.isfinite(saliency).any() else None
    metrics["notes"].append(
        "saliency_in_lung_mean: mean share of the predicted class's saliency map inside the segmented lungs"
    )
    metrics["notes"].append(
        "accuracy_by_source: classes come from different collections; a large gap between sources hints at a "
        "source shortcut"
    )
    if pipe.global_classifier is not None:
        g_names = [pipe.global_config.id2label[i] for i in range(pipe.global_config.num_labels)]
        g_untrained = [c for c in g_names if c not in pipe.global_config.trained_classes]
        g_pred = [r["global_prediction"] for r in records]
        metrics["global"] = classification_report(
            y_true, g_pred, g_names, patients, n_boot=n_boot, seed=seed, untrained=g_untrained
        )
        metrics["global"]["accuracy_by_source"] = accuracy_by_group(y_true, g_pred, [r["source"] for r in records])
    metrics.update(
        {
            "task": task,
            "k": int(k),
            "seed": int(seed),
            "models": {name: str(v[0]) for name, v in folders.items()},
            "pipeline": pipe.settings(),
            "trained_classes": list(pipe.classifier_config.trained_classes),
            "selection": {
                "manifest": str(manifest),
                **split_info,
                "sources": sorted(sources) if sources else None,
                "limit": limit,
                "limit_method": "stratified by label, rows in SHA-256 order of their id" if limit else None,
            },
            "failures": failures,
        }
    )
    if failures:
        metrics["notes"].append(f"{len(failures)} image(s) could not be analysed and are not counted (see failures)")
    metrics["notes"].extend(selection_notes)
    metrics = json_ready(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    with (out / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    m = np.asarray(metrics["confusion_matrix"]["matrix"])
    acc = metrics["accuracy"]
    title = f"{task}, K={k}, n={len(records)}, accuracy {acc:.3f}" if acc is not None else task
    _plot_confusion(m, names, title, out / "confusion_matrix.png")
    return metrics


def run_evaluate(args: argparse.Namespace) -> int:
    """CLI handler for ``evaluate``; returns the exit code (2: missing models or bad input)."""
    try:
        metrics = evaluate_classification(
            args.manifest,
            args.out,
            task=args.task,
            segmentation=args.segmentation,
            classifier=args.classifier,
            global_classifier=args.global_classifier,
            k=args.k,
            seed=args.seed,
            split_file=args.split_file,
            split=args.split,
            sources=args.source,
            n_boot=args.n_boot,
            limit=args.limit,
            device=args.device,
            chunk_size=args.chunk_size,
            sampling=args.sampling,
        )
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    brief = {k: metrics[k] for k in ("n", *MACRO_METRICS)}
    print(json.dumps(brief, indent=2))
    for note in metrics["notes"]:
        print(f"note: {note}")
    if metrics["selection"]["training_films_scored"]:
        # where the numbers are not held-out, say it where it cannot be missed (stdout may go to a file)
        print(
            f"warning: {metrics['selection']['training_films_scored']} scored film(s) are training or validation "
            "films of the classifier; see the notes in metrics.json",
            file=sys.stderr,
        )
    if metrics["failures"]:
        print(f"warning: {len(metrics['failures'])} image(s) failed (listed in metrics.json)")
    print(f"wrote {Path(args.out) / 'metrics.json'}, predictions.csv and confusion_matrix.png")
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers ``evaluate`` on the top-level CLI."""
    from .commands import sampling_mode

    p = subparsers.add_parser(
        "evaluate",
        help="run the full pipeline on a labelled manifest and score the classifier (metrics.json, predictions.csv)",
        description="Segmentation → K lung patches → majority vote on every manifest row with a label for --task; "
        "writes metrics.json (accuracy, macro precision/recall/F1/specificity, per class, confusion matrix, bootstrap "
        "CIs over patients), predictions.csv and confusion_matrix.png. Works on any folder in the manifest format.",
    )
    p.add_argument("--manifest", required=True, help="manifest.csv (or its folder); image paths relative to it")
    p.add_argument("--task", required=True, choices=TASKS, help="which label column is the truth")
    p.add_argument("--segmentation", help=f"segmentation model folder (default: {DEFAULT_SEGMENTATION})")
    p.add_argument(
        "--classifier",
        help="patch classifier folder (default: models/cxr-patch-resnet18 for label4, "
        "models/cxr-patch-resnet18-covidx for label3)",
    )
    p.add_argument("--global-classifier", help="optional global classifier folder, scored alongside")
    p.add_argument("--k", type=int, default=100, help="patches per image (default: %(default)s, as the paper)")
    p.add_argument("--seed", type=int, default=0, help="patch sampler and bootstrap seed (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--split-file",
        help="split JSON from training/data.py (default: training/splits/splits_seed0.json, the project's split)",
    )
    p.add_argument(
        "--split",
        help=f"GROUP:NAME from the split file (default: {DEFAULT_SPLIT} when the split file covers the manifest, "
        f"else every row); '{ALL_ROWS}': every row, training films included (with a warning)",
    )
    p.add_argument("--source", action="append", help="only rows of this source (repeatable)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for ci95 (default: %(default)s)")
    p.add_argument(
        "--limit",
        type=int,
        help="evaluate at most this many images, a stratified (by label) deterministic subset (quick checks)",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--chunk-size", type=int, default=32, help="patches per forward pass (default: %(default)s)")
    p.add_argument(
        "--sampling",
        type=sampling_mode,
        default=None,
        help="patch sampler (default: the pipeline's, stable): stable, joint (as in training) or independent (the "
        "authors')",
    )
    p.set_defaults(func=run_evaluate)
