"""The biomarker study's statistics and their presentation: pure functions of its records and its report.

* :func:`biomarker_report` — per class and per subset (all views; AP supine films excluded, :func:`is_ap_supine`):
  mean ± SD, Kolmogorov–Smirnov normality and pairwise Wilcoxon rank-sum tests (:mod:`cxr_hub.evaluation.stats`).
* :func:`render_tables` — ``tables.md``, the report's tables as markdown (the source of RESULTS.md's tables).
* :func:`plot_scatter`, :func:`plot_mean_sd` — the plots like the paper's Fig. 4.
* :func:`reference_from_report` — the app's per-class reference values (``cxr_hub/data/biomarker_reference.json``).

The study that measures the records and writes these outputs is :mod:`cxr_hub.evaluation.biomarker_study`. Nothing
here reads an image or a model; matplotlib is imported only by the plots.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..biomarkers import CLASS_BIOMARKERS
from .stats import compare_classes, format_mean_sd, normality_markdown, pairwise_markdown, summary_markdown

__all__ = [
    "REFERENCE_UNITS",
    "SUBSETS",
    "biomarker_report",
    "is_ap_supine",
    "plot_mean_sd",
    "plot_scatter",
    "reference_description",
    "reference_from_report",
    "render_tables",
]

SUBSETS = {
    "all_views": "all views",
    "excluding_ap_supine": "AP supine films excluded",
}


def is_ap_supine(view: str) -> bool:
    """True for an AP supine film: the ``view`` text contains "supine" (any case), e.g. ``"AP Supine"``."""
    return "supine" in (view or "").lower()


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
    """``tables.md``: the report's tables as markdown, with the notes a reader needs to interpret them.

    Args:
        report: a JSON-ready ``stats.json`` report (:func:`biomarker_report` output with the run's ``task``,
            ``n_images``, ``model``, ``selection``, ``failures``).

    Returns:
        Markdown ending with a newline.
    """
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


def _colours(classes: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {c: cmap(i % 10) for i, c in enumerate(classes)}


def plot_scatter(records: Sequence[Mapping[str, Any]], classes: Sequence[str], path: Path) -> None:
    """Lung mean intensity vs lung intensity SD per image, coloured by class; AP supine films as open markers.

    Args:
        records: per-image dicts with ``label``, ``view``, ``lung_mean_intensity`` and ``lung_std_intensity`` (gray
            levels in [0, 255]).
        classes: every class of the task, in legend order (absent ones are listed as such).
        path: the PNG to write.
    """
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
    """Mean ± SD per class for each biomarker: all views (filled) and AP supine excluded (open), side by side.

    Args:
        report: a :func:`biomarker_report` output (JSON-ready).
        path: the PNG to write.
    """
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


def reference_description(report: Mapping[str, Any]) -> str:
    """The sentence the app shows under its reference values: what was measured, on what, by which command.

    Args:
        report: a ``stats.json`` report (``all_views``, ``sources``, ``model``, ``n_images``).
    """
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
        report: :func:`cxr_hub.evaluation.biomarker_study.run_biomarkers` output (``stats.json``).
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
