"""``evaluate`` as a library: the full pipeline on a labelled manifest, scored as a classifier.

:func:`evaluate_classification` runs the full :class:`cxr_hub.CXRPipeline` (segmentation → K lung patches → majority
vote) on every selected manifest row with a label for the task and writes ``metrics.json``, ``predictions.csv`` and
``confusion_matrix.png`` (the metrics: :mod:`cxr_hub.evaluation.classification_metrics`). Selection, by default: the
test split (``classification:test``) of the project's split file (:data:`DEFAULT_SPLIT_FILE`, the one the shipped
classifiers were trained with) when that file covers the manifest, else every row; ``split="all"`` scores every row.
Whenever films of the split's train or val part are scored, a note says so (in ``metrics.json``; the command also
says it on stderr): the classifier has seen them. ``limit`` takes a stratified, deterministic subset
(:func:`stratified_subset`), never the first rows of the manifest.

No argument parsing and no printing here (the command is :mod:`cxr_hub.cli.evaluate`); torch and the pipeline are
imported when :func:`evaluate_classification` runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..presets import REPO_ROOT, default_folder
from .classification_metrics import accuracy_by_group, classification_report, json_ready
from .selection import select_rows

if TYPE_CHECKING:
    from ..pipeline import CXRPipeline

__all__ = [
    "ALL_ROWS",
    "DEFAULT_CLASSIFIERS",
    "DEFAULT_SEGMENTATION",
    "DEFAULT_SPLIT",
    "DEFAULT_SPLIT_FILE",
    "TASKS",
    "evaluate_classification",
    "stratified_subset",
]

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

    Args:
        rows: the labelled manifest rows (``id`` and the split file's ids).
        split_file: split JSON made by ``training/data.py``; None: :data:`DEFAULT_SPLIT_FILE`.
        split: ``GROUP:NAME``, :data:`ALL_ROWS`, or None (:data:`DEFAULT_SPLIT` when the file covers the rows).

    Returns:
        ``(chosen rows, {"split", "split_file", "training_films_scored"}, notes)``.

    Raises:
        FileNotFoundError: ``split_file`` was given and does not exist.
        ValueError: a named split without a readable split file, or a malformed split.
    """
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

    Over 80 lines only for documenting its seventeen arguments; the steps (model folders, selection, scoring, the
    report, the files) are the helpers below.

    Args:
        manifest: manifest CSV or its folder (image paths are relative to it); any folder in the cxr-hub format.
        out_dir: destination of ``metrics.json``, ``predictions.csv`` and ``confusion_matrix.png``.
        task: "label4" or "label3": which manifest column holds the truth.
        segmentation: segmentation model folder (default: the shipped default, ``SHIPPED["segmentation"]`` of
            :mod:`cxr_hub.presets`).
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
    from ..patches import DEFAULT_SAMPLING
    from ..pipeline import CXRPipeline

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    folders = _model_folders(task, segmentation, classifier, global_classifier)
    rows, split_info, selection_notes = _select(manifest, task, sources, split_file, split, limit)
    pipe = CXRPipeline.from_pretrained(
        folders["segmentation"],
        folders["classifier"],
        folders.get("global"),
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, failures = _score_rows(pipe, rows, task, k, seed, progress)
    metrics = _metrics(pipe, records, n_boot, seed)
    metrics.update(
        {
            "task": task,
            "k": int(k),
            "seed": int(seed),
            "models": {name: str(v) for name, v in folders.items()},
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
    _write_outputs(out, metrics, records, names, task, k)
    return metrics


def _model_folders(
    task: str, segmentation: str | Path | None, classifier: str | Path | None, global_classifier: str | Path | None
) -> dict[str, Path]:
    """The model folders to load (the defaults where none is given), checked before anything is read.

    Raises:
        FileNotFoundError: a folder that is not a saved model, every problem in one message.
    """
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
    return {name: v[0] for name, v in folders.items()}


def _select(
    manifest: str | Path,
    task: str,
    sources: Iterable[str] | None,
    split_file: str | Path | None,
    split: str | None,
    limit: int | None,
) -> tuple[list[Any], dict[str, Any], list[str]]:
    """The rows to score with :func:`_split_selection`'s record and notes (``limit`` applied last).

    Raises:
        ValueError: ``limit`` below 1, or no row with a ``task`` label is selected.
    """
    from ..manifest import read_manifest

    if limit is not None and int(limit) < 1:
        raise ValueError(f"--limit {limit}: must be at least 1 (or left out to score every selected image).")
    labelled = [r for r in select_rows(read_manifest(manifest), sources=sources) if r.label(task)]
    rows, split_info, selection_notes = _split_selection(labelled, split_file, split)
    if limit:
        rows = stratified_subset(rows, int(limit), task)
    if not rows:
        raise ValueError(f"No rows to evaluate: the selection has no images with a {task} label.")
    return rows, split_info, selection_notes


def _score_rows(
    pipe: CXRPipeline, rows: Sequence[Any], task: str, k: int, seed: int, progress: bool
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One ``predictions.csv`` record per analysed row, and the rows that failed (``{"id", "error"}``).

    Raises:
        ValueError: every row failed.
    """
    from tqdm import tqdm

    from ..io import CXRInputError

    names = pipe.class_names
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
    return records, failures


def _metrics(pipe: CXRPipeline, records: Sequence[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """The classification report of the records (and of the global classifier's predictions, when there is one)."""
    names = pipe.class_names
    untrained = [c for c in names if c not in pipe.classifier_config.trained_classes]
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
    return metrics


def _write_outputs(
    out: Path, metrics: dict[str, Any], records: Sequence[dict[str, Any]], names: Sequence[str], task: str, k: int
) -> None:
    """Writes ``metrics.json``, ``predictions.csv`` and ``confusion_matrix.png``."""
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    with (out / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    m = np.asarray(metrics["confusion_matrix"]["matrix"])
    acc = metrics["accuracy"]
    title = f"{task}, K={k}, n={len(records)}, accuracy {acc:.3f}" if acc is not None else task
    _plot_confusion(m, names, title, out / "confusion_matrix.png")
