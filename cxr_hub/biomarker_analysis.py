"""Biomarker statistics by class: ``python -m cxr_hub biomarkers`` (the paper's section III-B, Tables VI-IX, Fig. 4).

For every manifest row with a label for the task, the segmentation model (through :class:`cxr_hub.CXRPipeline` in
segmentation-only mode) gives the label map, and :func:`cxr_hub.biomarkers.compute_biomarkers` the lung mean
intensity, lung intensity SD (on the paper's preprocessed image, gray levels [0, 255]), cardiothoracic ratio and lung
area. Per class: mean ± SD, the same without AP supine films, Kolmogorov–Smirnov normality and Wilcoxon rank-sum
tests between every pair of classes (:mod:`cxr_hub.stats`).

Outputs in ``--out``:

* ``biomarkers.csv`` — one row per analysed image: id, source, view, label and the biomarkers (no patient data).
  Written row by row while the images are processed, so ``--resume`` continues an interrupted run.
* ``stats.json`` — every number of the tables, the selection, definitions and the images that failed.
* ``tables.md`` — the tables as markdown, ready to paste into a report.
* ``scatter_intensity.png`` and ``mean_sd_by_class.png`` — plots like the paper's Fig. 4.
* ``run_config.json`` — what the CSV was made with; ``--resume`` refuses a CSV made with other settings.
* with ``--reference-json PATH``: the app's per-class reference file (``cxr_hub/data/biomarker_reference.json``),
  written from the same report as ``stats.json`` (:func:`write_outputs`).

``--rebuild`` segments nothing: it recomputes ``stats.json``, ``tables.md``, the plots and the reference file from a
saved run's ``biomarkers.csv`` (:func:`rebuild_from_csv`).

All masks are the model's predictions, never the manifest's reference masks, so every class is measured the same way
(Cohen images have no reference heart at all): the numbers carry the segmentation model's errors.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .biomarkers import CLASS_BIOMARKERS, CTR_DEFINITION, Biomarkers
from .classification import json_ready
from .presets import default_folder
from .stats import compare_classes, format_mean_sd, normality_markdown, pairwise_markdown, summary_markdown

__all__ = [
    "BIOMARKER_COLUMNS",
    "CSV_COLUMNS",
    "DEFAULT_SEGMENTATION",
    "add_parser",
    "biomarker_report",
    "is_ap_supine",
    "rebuild_from_csv",
    "reference_description",
    "reference_from_report",
    "render_tables",
    "run_biomarkers",
    "write_outputs",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEGMENTATION = default_folder("segmentation")
TASKS = ("label4", "label3")

#: Every numeric field of :class:`cxr_hub.biomarkers.Biomarkers`, in its order (the CSV's biomarker columns).
BIOMARKER_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Biomarkers) if f.name != "warnings")
_INT_COLUMNS = frozenset(c for c in BIOMARKER_COLUMNS if c.endswith("_px"))
#: Columns of ``biomarkers.csv``: no patient id, name or other header field, only what the statistics need.
CSV_COLUMNS: tuple[str, ...] = ("id", "source", "view", "label", *BIOMARKER_COLUMNS, "warnings")

SUBSETS = {
    "all_views": "all views",
    "excluding_ap_supine": "AP supine films excluded",
}


def is_ap_supine(view: str) -> bool:
    """True for an AP supine film: the ``view`` text contains "supine" (any case), e.g. ``"AP Supine"``."""
    return "supine" in (view or "").lower()


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
# Statistics and tables
# ----------------------------------------------------------------------------------------------------------------


def _subset_stats(records: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    n_by_class = Counter(r["label"] for r in records)
    biomarkers = {}
    for b in CLASS_BIOMARKERS:
        values = {c: [r[b] for r in records if r["label"] == c] for c in classes if n_by_class[c]}
        biomarkers[b] = compare_classes(values, classes)
    return {
        "n": len(records),
        "n_by_class": {c: int(n_by_class[c]) for c in classes},
        "biomarkers": biomarkers,
    }


def biomarker_report(records: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """Statistics of all images and of the images without AP supine films.

    Args:
        records: per-image dicts with ``label``, ``view`` and the :data:`cxr_hub.biomarkers.CLASS_BIOMARKERS` fields.
        classes: every class of the task in report order (classes without images are reported as absent).

    Returns:
        ``{"classes", "absent_classes", "all_views": subset, "excluding_ap_supine": subset, "ap_supine_by_class"}``
        with each subset ``{"n", "n_by_class", "biomarkers": {name: compare_classes(...)}}``.

    Raises:
        ValueError: a record's label is not in ``classes``.
    """
    unknown = sorted({r["label"] for r in records} - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the classes {list(classes)}.")
    kept = [r for r in records if not is_ap_supine(r["view"])]
    supine = Counter(r["label"] for r in records if is_ap_supine(r["view"]))
    present = {r["label"] for r in records}
    return {
        "classes": list(classes),
        "absent_classes": [c for c in classes if c not in present],
        "all_views": _subset_stats(records, classes),
        "excluding_ap_supine": _subset_stats(kept, classes),
        "ap_supine_by_class": {c: int(supine[c]) for c in classes},
    }


def render_tables(report: Mapping[str, Any]) -> str:
    """``tables.md``: the report's tables as markdown, with the notes a reader needs to interpret them."""
    titles = {b: t for b, (t, _) in CLASS_BIOMARKERS.items()}
    digits = {b: d for b, (_, d) in CLASS_BIOMARKERS.items()}
    classes = report["classes"]
    sel = report["selection"]
    lines = [
        f"### Biomarkers by class ({report['task']})",
        "",
        "<!-- written by `python -m cxr_hub biomarkers`; stats.json holds every number with more digits -->",
        "",
        f"{report['n_images']} images with a {report['task']} label from `{sel['manifest']}`"
        + (f", split {sel['split']}" if sel.get("split") else "")
        + (f", sources {', '.join(sel['sources'])}" if sel.get("sources") else "")
        + (f", first {sel['limit']} only" if sel.get("limit") else "")
        + f"; segmentation model `{report['model']}`.",
    ]
    if report["failures"]:
        lines.append(f"{len(report['failures'])} image(s) could not be analysed and are not counted (stats.json).")
    absent = report["absent_classes"]
    if absent:
        lines.append(f"Absent (no images in the selection, so no numbers): {', '.join(absent)}.")
    lines += [
        "",
        "Masks are the segmentation model's predictions for every image (reference masks are not used; Cohen images "
        "have none for the heart), so the cardiothoracic ratio and the lung statistics carry the model's errors. "
        "Intensities are gray levels in [0, 255] of the paper's preprocessed image (histogram equalisation, gamma "
        "0.5) inside the predicted lungs. Mean ± SD with the population SD; a column's n is shown where it is below "
        "the class's image count (the ratio is undefined without a segmented heart).",
    ]
    for key, label, table_ref in (
        ("all_views", "all views", "cf. the paper's Tables VI, VII and IX"),
        ("excluding_ap_supine", "AP supine films excluded", "cf. the paper's Table VIII"),
    ):
        sub = report[key]
        res = sub["biomarkers"]
        lines += ["", f"#### Mean ± SD per class, {label} ({table_ref})", ""]
        if key == "excluding_ap_supine":
            dropped = {c: n for c, n in report["ap_supine_by_class"].items() if n}
            text = ", ".join(f"{c} {n}" for c, n in dropped.items()) if dropped else "none"
            lines += [f'AP supine films removed (`view` contains "supine"): {text}.', ""]
        lines.append(summary_markdown(res, classes, titles, digits, sub["n_by_class"]))
        lines += ["", f"#### Kolmogorov–Smirnov normality per class, {label}", ""]
        lines.append(normality_markdown(res, classes, titles))
        lines += [
            "",
            'Standardised values (own mean and sample SD) against N(0, 1); "not normal": p < 0.05. With estimated '
            "parameters the plain KS p-value is conservative.",
            "",
            f"#### Wilcoxon rank-sum p-values between classes, {label}",
            "",
        ]
        if any(r["pairwise"] for r in res.values()):
            lines.append(pairwise_markdown(res, titles))
            lines += [
                "",
                "Two-sided, normal approximation, not corrected for multiple comparisons; * p < 0.05, ** p < 0.01, "
                "*** p < 0.001.",
            ]
        else:
            lines.append("No pair of classes with images: nothing to compare.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------


def _colours(classes: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {c: cmap(i % 10) for i, c in enumerate(classes)}


def plot_scatter(records: Sequence[Mapping[str, Any]], classes: Sequence[str], path: Path) -> None:
    """Lung mean intensity vs lung intensity SD per image, coloured by class; AP supine films as open markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = _colours(classes)
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for c in classes:
        recs = [r for r in records if r["label"] == c]
        if not recs:
            ax.scatter([], [], color=colours[c], label=f"{c} (absent)", s=10)
            continue
        for supine in (False, True):
            pts = [r for r in recs if is_ap_supine(r["view"]) == supine]
            if not pts:
                continue
            x = [r["lung_mean_intensity"] for r in pts]
            y = [r["lung_std_intensity"] for r in pts]
            style = {"facecolors": "none", "edgecolors": colours[c]} if supine else {"color": colours[c]}
            name = f"{c}, AP supine (n={len(pts)})" if supine else f"{c} (n={len(pts)})"
            ax.scatter(x, y, s=9, alpha=0.6, linewidths=0.7, label=name, **style)
    ax.set_xlabel("lung mean intensity (preprocessed gray level)")
    ax.set_ylabel("lung intensity SD")
    ax.set_title("Lung intensity by class", fontsize=9)
    ax.legend(fontsize=6, loc="best", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_mean_sd(report: Mapping[str, Any], path: Path) -> None:
    """Mean ± SD per class for each biomarker: all views (filled) and AP supine excluded (open), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = report["classes"]
    colours = _colours(classes)
    names = list(CLASS_BIOMARKERS)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.3), squeeze=False)
    x = np.arange(len(classes))
    for ax, b in zip(axes[0], names, strict=True):
        for offset, key, filled in ((-0.15, "all_views", True), (0.15, "excluding_ap_supine", False)):
            per_class = report[key]["biomarkers"][b]["per_class"]
            for i, c in enumerate(classes):
                s = per_class[c]
                if "mean" not in s:
                    continue  # absent or no values: no point is drawn, the tick label says why
                ax.errorbar(
                    x[i] + offset,
                    s["mean"],
                    yerr=s["sd"],
                    fmt="o" if filled else "s",
                    color=colours[c],
                    mfc=colours[c] if filled else "white",
                    ms=4,
                    capsize=3,
                    lw=1,
                )
        ticks = [f"{c}\n(absent)" if c in report["absent_classes"] else c for c in classes]
        ax.set_xticks(x, ticks, rotation=30, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(classes) - 0.4)
        ax.set_title(CLASS_BIOMARKERS[b][0], fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("Mean ± SD by class: all views (filled) and AP supine excluded (open)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------


def _task_classes(task: str, labels: Iterable[str]) -> list[str]:
    """The task's classes in model order, then any other label the manifest uses (sorted)."""
    from .models import LABEL_SETS

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

    Args:
        manifest: manifest CSV or its folder; image paths are relative to it (any folder in the cxr-hub format).
        out_dir: destination of ``biomarkers.csv``, ``stats.json``, ``tables.md``, the PNGs and ``run_config.json``.
        task: "label4" or "label3": the class column.
        segmentation: segmentation model folder or repo id (default ``models/cxr-lung-seg-fcdensenet103``), or a
            loaded model (tests).
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
    from tqdm import tqdm

    from .evaluation import load_segmentation_model, select_rows
    from .io import CXRInputError
    from .manifest import read_manifest, resolve_manifest
    from .pipeline import CXRPipeline

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    rows = [r for r in select_rows(read_manifest(manifest), split_file, split, sources) if r.label(task)]
    if limit:
        rows = rows[: int(limit)]
    if not rows:
        raise ValueError(f"No rows to analyse: the selection has no images with a {task} label.")
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
    config = {
        "manifest": str(resolve_manifest(manifest).resolve()),
        "task": task,
        "segmentation": model_name,
        "preprocessing": {"equalize": pipe.frame_processor.do_equalize, "gamma": pipe.frame_processor.gamma},
        "segmentation_arithmetic": pipe.settings()["segmentation_arithmetic"],
        # resuming a CSV measured with another definition would mix two CTRs in one table
        "cardiothoracic_ratio": CTR_DEFINITION,
    }
    done: dict[str, dict[str, Any]] = {}
    if resume and csv_path.is_file():
        _check_resume(config_path, config)
        done = _read_csv(csv_path)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    wanted = {r.id for r in rows}
    kept = [rec for i, rec in done.items() if i in wanted]
    _write_csv(csv_path, kept)  # header + the resumed rows; new rows are appended one by one below

    failures: list[dict[str, str]] = []
    todo = [r for r in rows if r.id not in done]
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

    # the labels and views of the current manifest, whatever the CSV says (a resumed row may predate an edit)
    records = []
    for row in rows:
        if row.id in done:
            rec = dict(done[row.id])
            rec.update(source=row.source, view=row.view, label=row.label(task))
            records.append(rec)
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
            "definitions": {
                "lung_mean_intensity": "mean gray level of the preprocessed image (histogram equalisation, gamma "
                f"{pipe.frame_processor.gamma}) inside the predicted lungs, in [0, 255]",
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
            },
            "failures": failures,
        }
    )
    return write_outputs(report, out, records=records, reference_json=reference_json)


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
    report["rebuilt_from_csv"] = (
        "statistics recomputed from biomarkers.csv (values rounded to 6 digits) by "
        "cxr_hub.biomarker_analysis.rebuild_from_csv"
    )
    return write_outputs(report, folder, records=records, reference_json=reference_json, plots=plots)


#: Keys of a report that :func:`biomarker_report` computes (the rest is the run's metadata).
_STAT_KEYS = frozenset({"classes", "absent_classes", "all_views", "excluding_ap_supine", "ap_supine_by_class"})


def reference_description(report: Mapping[str, Any]) -> str:
    """The sentence the app shows under its reference values: what was measured, on what, by which command."""
    sub = report["all_views"]
    counts = ", ".join(f"{c} {n}" for c, n in sub["n_by_class"].items() if n)
    sources = report.get("sources") or {}
    where = f" from {', '.join(f'{s} {n}' for s, n in sources.items())}" if sources else ""
    model = Path(str(report.get("model", "?"))).name
    return (
        f"{report.get('n_images', sub['n'])} labelled images of this project's data{where} ({counts}); masks from "
        f"the segmentation model `{model}`, all views (`python -m cxr_hub biomarkers`, the run behind RESULTS.md's "
        "tables). Our data, not the paper's."
    )


def reference_from_report(report: Mapping[str, Any], description: str | None = None) -> dict[str, Any]:
    """The app's per-class reference values (``cxr_hub/data/biomarker_reference.json``) from a ``stats.json`` report.

    Args:
        report: :func:`run_biomarkers` output (``stats.json``).
        description: one sentence saying where the numbers come from (shown in the app); default
            :func:`reference_description`.

    Returns:
        ``{"description", "task", "classes", "n", "units", "values": {biomarker: {class: "mean ± SD" or None}},
        "stats": {biomarker: {class: {"n", "mean", "sd"} or None}}}`` over all views; an absent class (no images)
        or a class without values maps to None, never to a number.
    """
    sub = report["all_views"]
    values: dict[str, dict[str, str | None]] = {}
    stats: dict[str, dict[str, dict[str, Any] | None]] = {}
    for b, (_, digits) in CLASS_BIOMARKERS.items():
        per_class = sub["biomarkers"][b]["per_class"]
        values[b], stats[b] = {}, {}
        for c in report["classes"]:
            s = per_class[c]
            known = not s.get("absent") and "mean" in s
            values[b][c] = format_mean_sd(s, digits) if known else None
            stats[b][c] = {"n": int(s["n"]), "mean": float(s["mean"]), "sd": float(s["sd"])} if known else None
    return {
        "description": description if description is not None else reference_description(report),
        "task": report.get("task"),
        "classes": list(report["classes"]),
        "n": dict(sub["n_by_class"]),
        "units": dict(REFERENCE_UNITS),
        "values": values,
        "stats": stats,
    }


#: Units of the reference values (the app converts intensities to the paper's [0, 1] scale with cxr_hub.paper).
REFERENCE_UNITS = {
    "lung_mean_intensity": "gray level of the preprocessed image, 0-255",
    "lung_std_intensity": "gray level of the preprocessed image, 0-255",
    "cardiothoracic_ratio": "ratio",
    "lung_area_fraction": "share of the image's pixels",
}


def run_biomarkers_command(args: argparse.Namespace) -> int:
    """CLI handler for ``biomarkers``; returns the exit code (2: bad input)."""
    if args.rebuild:
        try:
            report = rebuild_from_csv(args.out, reference_json=args.reference_json, plots=True)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"recomputed the statistics of {report['n_images']} images from {Path(args.out) / 'biomarkers.csv'}")
        return 0
    if not args.manifest:
        print("error: --manifest is required (or --rebuild to recompute a saved run's statistics)", file=sys.stderr)
        return 2
    try:
        report = run_biomarkers(
            args.manifest,
            args.out,
            task=args.task,
            segmentation=args.segmentation,
            split_file=args.split_file,
            split=args.split,
            sources=args.source,
            limit=args.limit,
            device=args.device,
            resume=args.resume,
            reference_json=args.reference_json,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sub = report["all_views"]
    counts = ", ".join(f"{c} {n}" for c, n in sub["n_by_class"].items())
    print(f"analysed {report['n_images']} images ({counts}); {len(report['failures'])} failed")
    print(f"wrote {Path(args.out) / 'tables.md'}, stats.json, biomarkers.csv and the PNG plots")
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers ``biomarkers`` on the top-level CLI."""
    p = subparsers.add_parser(
        "biomarkers",
        help="lung intensity, cardiothoracic ratio and lung area by class, with normality and rank-sum tests",
    )
    p.add_argument("--manifest", help="manifest.csv (or its folder); paths relative to it (required unless --rebuild)")
    p.add_argument("--task", default="label4", choices=TASKS, help="class column (default: %(default)s)")
    p.add_argument(
        "--segmentation",
        default=str(DEFAULT_SEGMENTATION),
        help="segmentation Hub folder or repo id (default: the shipped FC-DenseNet103)",
    )
    p.add_argument("--out", required=True, help="output folder (biomarkers.csv, stats.json, tables.md, PNGs)")
    p.add_argument("--split-file", help="split JSON from training/data.py")
    p.add_argument("--split", help="GROUP:NAME from the split file, e.g. classification:test")
    p.add_argument("--source", action="append", help="only rows of this source (repeatable)")
    p.add_argument("--limit", type=int, help="analyse at most this many labelled images (quick checks)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the images already in OUT/biomarkers.csv (made with the same manifest, task and model) and do only "
        "the rest; rows outside this run's selection are dropped from the CSV",
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="segment nothing: recompute stats.json, tables.md, the plots (and --reference-json) from "
        "OUT/biomarkers.csv",
    )
    p.add_argument(
        "--reference-json",
        help="also write the per-class mean ± SD as the app's reference file (cxr_hub/data/biomarker_reference.json)",
    )
    p.set_defaults(func=run_biomarkers_command)
