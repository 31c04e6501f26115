"""The biomarker study (the paper's section III-B, Tables VI-IX, Fig. 4) as a library; the command is ``biomarkers``.

For every manifest row with a label for the task, the segmentation model (through :class:`cxr_hub.CXRPipeline` in
segmentation-only mode) gives the label map, and :func:`cxr_hub.biomarkers.compute_biomarkers` the lung mean
intensity, lung intensity SD (on the paper's preprocessed image, gray levels [0, 255]), cardiothoracic ratio and lung
area. Per class: mean ± SD, the same without AP supine films, Kolmogorov–Smirnov normality and Wilcoxon rank-sum
tests between every pair of classes (:mod:`cxr_hub.evaluation.biomarker_statistics`, :mod:`cxr_hub.evaluation.stats`).

Outputs in ``out_dir`` (``--out``):

* ``biomarkers.csv`` — one row per analysed image: id, source, view, label and the biomarkers (no patient data).
  Written row by row while the images are processed, so ``resume`` (``--resume``) continues an interrupted run.
* ``stats.json`` — every number of the tables, the selection, definitions and the images that failed.
* ``tables.md`` — the tables as markdown, ready to paste into a report.
* ``scatter_intensity.png`` and ``mean_sd_by_class.png`` — plots like the paper's Fig. 4.
* ``run_config.json`` — what the CSV was made with; ``resume`` refuses a CSV made with other settings.
* with ``reference_json`` (``--reference-json PATH``): the app's per-class reference file
  (``cxr_hub/data/biomarker_reference.json``), written from the same report as ``stats.json`` (:func:`write_outputs`).

:func:`rebuild_from_csv` (``--rebuild``) segments nothing: it recomputes ``stats.json``, ``tables.md``, the plots and
the reference file from a saved run's ``biomarkers.csv``.

All masks are the model's predictions, never the manifest's reference masks, so every class is measured the same way
(Cohen images have no reference heart at all): the numbers carry the segmentation model's errors. No argument
parsing and no printing here (the command is :mod:`cxr_hub.cli.biomarkers`).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..biomarkers import CTR_DEFINITION, Biomarkers
from ..presets import default_folder
from .biomarker_statistics import biomarker_report, plot_mean_sd, plot_scatter, reference_from_report, render_tables
from .classification_metrics import json_ready

if TYPE_CHECKING:
    from ..pipeline import CXRPipeline

__all__ = [
    "BIOMARKER_COLUMNS",
    "CSV_COLUMNS",
    "DEFAULT_SEGMENTATION",
    "TASKS",
    "rebuild_from_csv",
    "run_biomarkers",
    "write_outputs",
]

DEFAULT_SEGMENTATION = default_folder("segmentation")
TASKS = ("label4", "label3")

#: Every numeric field of :class:`cxr_hub.biomarkers.Biomarkers`, in its order (the CSV's biomarker columns).
BIOMARKER_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Biomarkers) if f.name != "warnings")
_INT_COLUMNS = frozenset(c for c in BIOMARKER_COLUMNS if c.endswith("_px"))
#: Columns of ``biomarkers.csv``: no patient id, name or other header field, only what the statistics need.
CSV_COLUMNS: tuple[str, ...] = ("id", "source", "view", "label", *BIOMARKER_COLUMNS, "warnings")


# ----------------------------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------------------------


def _csv_value(value: Any) -> Any:
    # NaN is written as an empty cell: unambiguous for spreadsheets and pandas alike
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(round(value, 6))
    return value


def _record(row: Any, task: str, markers: Biomarkers, warnings: Sequence[str]) -> dict[str, Any]:
    values = {c: getattr(markers, c) for c in BIOMARKER_COLUMNS}
    return {
        "id": row.id,
        "source": row.source,
        "view": row.view,
        "label": row.label(task),
        **values,
        "warnings": "; ".join(warnings),
    }


def _read_csv(path: Path) -> dict[str, dict[str, Any]]:
    """Records of an existing ``biomarkers.csv`` by id (numbers parsed, empty cells → NaN)."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(
                f"{path} does not have the columns of a biomarkers.csv ({', '.join(CSV_COLUMNS)}); use another "
                "--out or run without --resume to start over."
            )
        out: dict[str, dict[str, Any]] = {}
        for r in reader:
            rec: dict[str, Any] = dict(r)
            for c in BIOMARKER_COLUMNS:
                text = (r[c] or "").strip()
                rec[c] = (int(text) if c in _INT_COLUMNS else float(text)) if text else math.nan
            out[r["id"]] = rec
    return out


def _write_csv(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in r.items()} for r in records)
    tmp.replace(path)  # atomic: an interrupted rewrite never leaves half a CSV


# ----------------------------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------------------------


def _task_classes(task: str, labels: Iterable[str]) -> list[str]:
    """The task's classes in model order, then any other label the manifest uses (sorted)."""
    from ..models import LABEL_SETS

    base = list(LABEL_SETS[task])
    return base + sorted(set(labels) - set(base))


def _check_resume(config_path: Path, config: Mapping[str, Any]) -> None:
    if not config_path.is_file():
        raise ValueError(
            f"--resume: {config_path} is missing, so the existing biomarkers.csv cannot be checked against this "
            "run's settings; run without --resume to start over."
        )
    old = json.loads(config_path.read_text())
    differ = [f"{k}: {old.get(k)!r} then, {v!r} now" for k, v in config.items() if old.get(k) != v]
    if differ:
        raise ValueError(
            f"--resume: the biomarkers.csv in {config_path.parent} was made with other settings ({'; '.join(differ)}). "
            "Use another --out, or run without --resume to start over."
        )


def run_biomarkers(
    manifest: str | Path,
    out_dir: str | Path,
    *,
    task: str = "label4",
    segmentation: str | Path | torch.nn.Module = DEFAULT_SEGMENTATION,
    split_file: str | Path | None = None,
    split: str | None = None,
    sources: Iterable[str] | None = None,
    limit: int | None = None,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
    reference_json: str | Path | None = None,
) -> dict[str, Any]:
    """Computes the biomarkers of every selected image with a ``task`` label and writes the report files.

    Over 80 lines only for documenting its twelve arguments; the steps are in the helpers below (selection,
    measurement, definitions) and in :func:`write_outputs`.

    Args:
        manifest: manifest CSV or its folder; image paths are relative to it (any folder in the cxr-hub format).
        out_dir: destination of ``biomarkers.csv``, ``stats.json``, ``tables.md``, the PNGs and ``run_config.json``.
        task: "label4" or "label3": the class column.
        segmentation: segmentation model folder or repo id (default: ``SHIPPED["segmentation"]`` of
            :mod:`cxr_hub.presets`), or a loaded model (tests).
        split_file: split JSON (``training/splits/...``) for ``split``.
        split: ``GROUP:NAME`` such as ``classification:test``.
        sources: only rows of these sources.
        limit: at most this many labelled rows, in manifest order (quick checks).
        device: "cpu" / "cuda" (default: CUDA when available).
        resume: keep the images already in ``out_dir/biomarkers.csv`` (same manifest, task and model only) and do
            the rest; the CSV ends up with exactly this run's selection.
        progress: show a tqdm bar.
        reference_json: also write the app's per-class reference file there, from the same report
            (:func:`write_outputs`).

    Returns:
        The dict written to ``stats.json``.

    Raises:
        FileNotFoundError: no manifest or no model there.
        ValueError: unknown task, nothing selected, every image failed, or ``--resume`` on a CSV made otherwise.
    """
    from ..manifest import resolve_manifest
    from ..pipeline import CXRPipeline
    from .segmentation import load_segmentation_model

    rows = _labelled_rows(manifest, task, split_file, split, sources, limit)
    classes = _task_classes(task, (r.label(task) for r in rows))

    if isinstance(segmentation, torch.nn.Module):
        model, model_name = segmentation, type(segmentation).__name__
    else:
        model, model_name = load_segmentation_model(segmentation, device), str(segmentation)
    # statistics from the network exactly as trained, whatever the pipeline's speed-oriented default
    pipe = CXRPipeline(model, None, device=device, segmentation_precision="fp32")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, config_path = out / "biomarkers.csv", out / "run_config.json"
    config = _run_config(resolve_manifest(manifest), task, model_name, pipe)
    done: dict[str, dict[str, Any]] = {}
    if resume and csv_path.is_file():
        _check_resume(config_path, config)
        done = _read_csv(csv_path)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    wanted = {r.id for r in rows}
    kept = [rec for i, rec in done.items() if i in wanted]
    _write_csv(csv_path, kept)  # header + the resumed rows; new rows are appended one by one below
    failures = _measure(pipe, [r for r in rows if r.id not in done], task, csv_path, done, progress)

    # the labels and views of the current manifest, whatever the CSV says (a resumed row may predate an edit)
    records = [dict(done[r.id], source=r.source, view=r.view, label=r.label(task)) for r in rows if r.id in done]
    if not records:
        raise ValueError(f"Every selected image failed; first error: {failures[0]['error'] if failures else '?'}")
    _write_csv(csv_path, records)  # final CSV: exactly the analysed images, in manifest order

    report = biomarker_report(records, classes)
    report.update(
        {
            "task": task,
            "n_images": len(records),
            "n_resumed": len(kept),
            "model": model_name,
            "selection": {
                "manifest": str(manifest),
                "split": split,
                "sources": sorted(sources) if sources else None,
                "limit": limit,
            },
            "views": dict(sorted(Counter(r["view"] or "(empty)" for r in records).items())),
            "sources": dict(sorted(Counter(r["source"] or "(empty)" for r in records).items())),
            "definitions": _definitions(pipe.frame_processor.gamma),
            "failures": failures,
        }
    )
    return write_outputs(report, out, records=records, reference_json=reference_json)


def _labelled_rows(
    manifest: str | Path,
    task: str,
    split_file: str | Path | None,
    split: str | None,
    sources: Iterable[str] | None,
    limit: int | None,
) -> list[Any]:
    """The selected manifest rows with a ``task`` label, the first ``limit`` of them.

    Raises:
        ValueError: an unknown task, or no row selected.
    """
    from ..manifest import read_manifest
    from .selection import select_rows

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    rows = [r for r in select_rows(read_manifest(manifest), split_file, split, sources) if r.label(task)]
    if limit:
        rows = rows[: int(limit)]
    if not rows:
        raise ValueError(f"No rows to analyse: the selection has no images with a {task} label.")
    return rows


def _run_config(manifest: Path, task: str, model_name: str, pipe: CXRPipeline) -> dict[str, Any]:
    """``run_config.json``: what the CSV is made with (``resume`` refuses a CSV made otherwise)."""
    return {
        "manifest": str(manifest.resolve()),
        "task": task,
        "segmentation": model_name,
        "preprocessing": {"equalize": pipe.frame_processor.do_equalize, "gamma": pipe.frame_processor.gamma},
        "segmentation_arithmetic": pipe.settings()["segmentation_arithmetic"],
        # resuming a CSV measured with another definition would mix two CTRs in one table
        "cardiothoracic_ratio": CTR_DEFINITION,
    }


def _measure(
    pipe: CXRPipeline,
    todo: Sequence[Any],
    task: str,
    csv_path: Path,
    done: dict[str, dict[str, Any]],
    progress: bool,
) -> list[dict[str, str]]:
    """Segments the ``todo`` rows, appending each record to the CSV and to ``done``; returns the rows that failed."""
    from tqdm import tqdm

    from ..io import CXRInputError

    failures: list[dict[str, str]] = []
    with csv_path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        for row in tqdm(todo, desc="biomarkers", unit="img", disable=not progress):
            try:
                prepared = pipe.prepare(row.image)
            except (CXRInputError, OSError, ValueError) as exc:
                # one unreadable film, or one without a segmented lung, must not lose the whole run
                failures.append({"id": row.id, "error": str(exc)})
                continue
            rec = _record(row, task, prepared.biomarkers, prepared.warnings)
            done[row.id] = rec
            writer.writerow({k: _csv_value(v) for k, v in rec.items()})
            f.flush()  # so an interrupted run keeps every finished image for --resume
    return failures


def _definitions(gamma: float | None) -> dict[str, str]:
    """``stats.json``'s definitions of every reported quantity (``gamma``: the preprocessing's exponent)."""
    return {
        "lung_mean_intensity": "mean gray level of the preprocessed image (histogram equalisation, gamma "
        f"{gamma}) inside the predicted lungs, in [0, 255]",
        "lung_std_intensity": "population standard deviation of the same gray levels",
        "cardiothoracic_ratio": "max transverse width of the predicted heart / max width across both "
        f"predicted lungs (cxr_hub.biomarkers: {CTR_DEFINITION}); undefined (missing) without a segmented "
        "heart",
        "lung_area_fraction": "predicted lung pixels / image pixels",
        "mean_sd": "mean ± population SD over the class's images with a finite value",
        "normality": "scipy.stats.kstest of (x - mean) / sample SD against N(0, 1); normal: p >= 0.05; "
        "needs at least 3 values",
        "pairwise": "scipy.stats.ranksums (two-sided Wilcoxon rank-sum, normal approximation), uncorrected; "
        "* p < 0.05, ** p < 0.01, *** p < 0.001",
        "ap_supine": "view contains 'supine' (any case)",
        "masks": "the segmentation model's predictions for every image; reference masks are not used",
    }


def write_outputs(
    report: Mapping[str, Any],
    out_dir: str | Path,
    *,
    records: Sequence[Mapping[str, Any]] | None = None,
    reference_json: str | Path | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Writes one report as ``stats.json`` and ``tables.md`` (RESULTS.md's source), the plots, and the app's reference.

    Both files come from the same ``report``, so the per-class numbers the app shows are those of RESULTS.md's tables
    (``tests/test_app.py`` and ``tests/test_results_tables.py`` check the shipped pair).

    Args:
        report: :func:`biomarker_report` output with the run's metadata (``task``, ``n_images``, ``model``,
            ``selection``, ``failures``).
        out_dir: destination folder (created).
        records: the per-image records; needed for the scatter plot (no plots without them).
        reference_json: also write :func:`reference_from_report` there (e.g. ``cxr_hub/data/biomarker_reference.json``).
        plots: draw ``scatter_intensity.png`` and ``mean_sd_by_class.png``.

    Returns:
        The JSON-ready report, as written to ``stats.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ready = json_ready(dict(report))
    (out / "stats.json").write_text(json.dumps(ready, indent=2, allow_nan=False) + "\n")
    (out / "tables.md").write_text(render_tables(ready))
    if plots and records is not None:
        plot_scatter(records, ready["classes"], out / "scatter_intensity.png")
        plot_mean_sd(ready, out / "mean_sd_by_class.png")
    if reference_json is not None:
        path = Path(reference_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        ref = reference_from_report(ready)
        path.write_text(json.dumps(ref, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return ready


def rebuild_from_csv(
    out_dir: str | Path, *, reference_json: str | Path | None = None, plots: bool = False
) -> dict[str, Any]:
    """Recomputes a saved run's statistics from its ``biomarkers.csv`` without segmenting anything again.

    The run's metadata (task, classes, model, selection, failures, definitions) come from its ``stats.json``; every
    statistic is recomputed from the CSV's per-image values (rounded to 6 digits there, so p-values can move in
    their 5th digit) and written with :func:`write_outputs`, the app's reference file included.

    Args:
        out_dir: a ``python -m cxr_hub biomarkers`` output folder with ``biomarkers.csv`` and ``stats.json``.
        reference_json: also write the app's reference file there.
        plots: redraw the PNG plots too (off by default: they show the same values and would only change bytes).

    Returns:
        The new report (as written to ``stats.json``).

    Raises:
        FileNotFoundError: ``biomarkers.csv`` or ``stats.json`` is missing (run ``python -m cxr_hub biomarkers``).
        ValueError: the CSV does not have a biomarkers.csv's columns, or holds a label outside the run's classes.
    """
    folder = Path(out_dir)
    csv_path, stats_path = folder / "biomarkers.csv", folder / "stats.json"
    for path in (csv_path, stats_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `python -m cxr_hub biomarkers --out {folder}` first.")
    old = json.loads(stats_path.read_text())
    records = list(_read_csv(csv_path).values())
    report: dict[str, Any] = {k: v for k, v in old.items() if k not in _STAT_KEYS}
    report.update(biomarker_report(records, old["classes"]))
    report["n_images"] = len(records)
    report["views"] = dict(sorted(Counter(r["view"] or "(empty)" for r in records).items()))
    report["sources"] = dict(sorted(Counter(r["source"] or "(empty)" for r in records).items()))
    config_path = folder / "run_config.json"
    if config_path.is_file():
        # the definition the CSV was measured with, from the run's own record (run_config.json)
        ctr = json.loads(config_path.read_text()).get("cardiothoracic_ratio")
        if ctr:
            report.setdefault("definitions", {})["cardiothoracic_ratio"] = (
                "max transverse width of the predicted heart / max width across both predicted lungs "
                f"(cxr_hub.biomarkers: {ctr}); undefined (missing) without a segmented heart"
            )
    # the old module path on purpose: this text is part of the committed stats.json, which a rebuild must reproduce
    report["rebuilt_from_csv"] = (
        "statistics recomputed from biomarkers.csv (values rounded to 6 digits) by "
        "cxr_hub.biomarker_analysis.rebuild_from_csv"
    )
    return write_outputs(report, folder, records=records, reference_json=reference_json, plots=plots)


#: Keys of a report that :func:`biomarker_report` computes (the rest is the run's metadata).
_STAT_KEYS = frozenset({"classes", "absent_classes", "all_views", "excluding_ap_supine", "ap_supine_by_class"})
