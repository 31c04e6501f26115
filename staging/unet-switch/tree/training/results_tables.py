"""RESULTS.md's tables and the README's shipped-models table, rendered from measured files and the paper's tables.

Every number of ours comes from a file a command wrote: ``metrics.json`` of ``python -m cxr_hub evaluate``
(``docs/results/label4_test``, ``label3_test``), ``stats.json`` of ``python -m cxr_hub biomarkers``
(``docs/figures/biomarkers_label4``), ``ablations.json`` of ``python -m training.ablations collect``,
``table_v.json`` of ``python -m training.segmentation_report`` and each model's ``training_config.json``. Every
number of the paper comes from ``cxr_hub/data/paper_tables.json`` through :mod:`cxr_hub.paper`; none is typed here.

The rendered parts of ``RESULTS.md`` and ``README.md`` sit between marker lines::

    <!-- generated:NAME python -m training.results_tables --write -->
    ...
    <!-- /generated:NAME -->

``--write`` rewrites them in place; ``--check`` exits 1 when one is out of date (``tests/test_results_tables.py``
checks the committed files the same way). Where our number and the paper's differ, the rendered text says so.

Usage::

    python -m training.results_tables --write
    python -m training.results_tables --check
    python -m training.results_tables --label4 docs/results/label4_test/metrics.json \\
        --label3 docs/results/label3_test/metrics.json > /tmp/tables.md      # the classification tables only
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_hub.paper import (
    BIOMARKER_TABLES,
    BIOMARKER_TABLES_NO_AP_SUPINE,
    LABEL4_TO_PAPER,
    PAPER_CLASS_NAMES,
    format_mean_sd,
    format_number,
    generated_blocks,
    paper_mean_sd,
    paper_row,
    paper_table,
    paper_value,
    replace_generated,
    to_paper_units,
)

__all__ = [
    "MACRO",
    "README_SECTIONS",
    "RESULTS_SECTIONS",
    "ResultFiles",
    "check_files",
    "compare",
    "confusion",
    "macro_table",
    "main",
    "pct",
    "per_class_table",
    "render_sections",
    "source_table",
    "update_text",
    "with_ci",
    "wrap_markdown",
    "write_files",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
HINT = "python -m training.results_tables --write (do not edit by hand)"

MACRO = ("accuracy", "precision", "recall", "f1", "specificity")
MACRO_TITLES = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "specificity": "specificity",
}
#: Our label3 class → the paper's Table XII column suffix.
LABEL3_TO_PAPER = {"normal": "normal", "pneumonia": "pneumonia", "covid": "covid19"}
#: Differences smaller than this (in the table's unit) are reported as "about the same".
SAME_PERCENT = 1.0
SAME_RATIO = 0.005


@dataclass(frozen=True)
class ResultFiles:
    """Where the measured files are (defaults: the committed ones, relative to the repository root)."""

    root: Path = REPO_ROOT
    label4: str = "docs/results/label4_test/metrics.json"
    label3: str = "docs/results/label3_test/metrics.json"
    biomarkers: str = "docs/figures/biomarkers_label4/stats.json"
    ablations: str = "docs/results/ablations/ablations.json"
    segmentation: str = "docs/segmentation/table_v.json"
    shortcuts: str = "docs/results"  # shortcuts_<model>.json of training/shortcut_report.py
    models: str = "models"

    def load(self, name: str) -> Any:
        """The JSON file ``name`` (an attribute above), parsed.

        Raises:
            FileNotFoundError: it is missing; the message names the command that writes it.
        """
        path = self.root / getattr(self, name)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run the command that writes it (see {Path(__file__).name}).")
        return json.loads(path.read_text(encoding="utf-8"))

    def shortcut_reports(self) -> dict[str, Any]:
        """``{model folder name: report}`` of every ``shortcuts_<model>.json`` (empty when none was written)."""
        folder = self.root / self.shortcuts
        return {
            p.stem.removeprefix("shortcuts_"): json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(folder.glob("shortcuts_*.json"))
        }

    def training_config(self, model: str) -> dict[str, Any]:
        """``models/<model>/training_config.json``."""
        path = self.root / self.models / model / "training_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the shipped model {model} is missing.")
        return json.loads(path.read_text(encoding="utf-8"))

    def weights_mb(self, model: str) -> float:
        """Size of ``models/<model>/model.safetensors`` in MB (10**6 bytes)."""
        return (self.root / self.models / model / "model.safetensors").stat().st_size / 1e6


# ----------------------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------------------


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage string; '–' when undefined."""
    return "–" if value is None else f"{100 * value:.{digits}f}"


def with_ci(report: Mapping[str, Any], key: str) -> str:
    """``value [low, high]`` in percent, the CI from the patient bootstrap when present."""
    ci = (report.get("ci95") or {}).get(key)
    text = pct(report.get(key))
    return f"{text} [{pct(ci[0])}, {pct(ci[1])}]" if ci else text


def compare(ours: float | None, paper: float | None, unit: str = "points", digits: int = 1) -> str:
    """Plain words for ours against the paper, e.g. ``"ours 51.7, paper 77.0: ours **25.3 points lower**"``.

    Args:
        ours: our value, in the paper's unit (percent or ratio); None when we have no counterpart.
        paper: the paper's value; None when the paper has none.
        unit: the unit of the difference ("points" for percentages, "" for ratios).
        digits: decimals shown.
    """
    if ours is None:
        return f"no value of ours, paper {format_number(paper, digits)}"
    if paper is None:
        return f"ours {ours:.{digits}f}, no value in the paper"
    diff = ours - paper
    same = SAME_PERCENT if unit == "points" else SAME_RATIO
    head = f"ours {ours:.{digits}f}, paper {format_number(paper, digits)}"
    if abs(diff) < same:
        return f"{head}: about the same"
    size = f"{abs(diff):.{digits}f}" + (f" {unit}" if unit else "")
    return f"{head}: ours **{size} {'lower' if diff < 0 else 'higher'}**"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Classification (Tables X, XI, XII)
# ----------------------------------------------------------------------------------------------------------------


def macro_table(
    models: Mapping[str, Mapping[str, Any]], paper: Mapping[str, Mapping[str, float | None]] | None = None
) -> str:
    """Table X / XII shape: one row per model (macro metrics, percent, 95 % patient-bootstrap CI), each followed by
    the paper's row for the same model when ``paper`` has one (``{model: {metric: percent}}``)."""
    lines = ["| model | n | accuracy | precision | recall | F1 | specificity |", "|---|---|---|---|---|---|---|"]
    for name, rep in models.items():
        cells = " | ".join(with_ci(rep, k) for k in MACRO)
        lines.append(f"| **ours**, {name} | {rep['n']} | {cells} |")
        ref = (paper or {}).get(name)
        if ref:
            paper_cells = " | ".join(format_number(ref.get(k)) for k in MACRO)
            lines.append(f"| paper, {name} | – | {paper_cells} |")
    return "\n".join(lines)


def per_class_table(
    models: Mapping[str, Mapping[str, Any]], paper: Mapping[str, Mapping[str, float | None]] | None = None
) -> str:
    """Table XI shape: sensitivity / specificity (n) per class and model, with the paper's sensitivity beside each
    model that ``paper`` (``{model: {class: percent}}``) covers; absent classes say so."""
    classes = list(next(iter(models.values()))["per_class"])
    header = ["class"]
    for m in models:
        header.append(f"{m}: sensitivity / specificity (n)")
        if paper and m in paper:
            header.append(f"{m}: paper's sensitivity")
    rows = []
    for c in classes:
        row = [c]
        for m, rep in models.items():
            s = rep["per_class"][c]
            row.append(
                "absent (n = 0)" if not s["n"] else f"{pct(s['sensitivity'])} / {pct(s['specificity'])} ({s['n']})"
            )
            if paper and m in paper:
                row.append(format_number(paper[m].get(c)))
        rows.append(row)
    return _table(header, rows)


def source_table(models: Mapping[str, Mapping[str, Any]]) -> str:
    """Accuracy per image source (the shortcut check)."""
    sources = sorted({s for rep in models.values() for s in rep.get("accuracy_by_source", {})})
    lines = ["| model | " + " | ".join(sources) + " |", "|---" * (1 + len(sources)) + "|"]
    for name, rep in models.items():
        by = rep.get("accuracy_by_source", {})
        cells = [f"{pct(by[s]['accuracy'])} (n = {by[s]['n']})" if s in by else "–" for s in sources]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion(rep: Mapping[str, Any]) -> str:
    """Confusion matrix (rows: truth, columns: prediction) as markdown."""
    labels = rep["confusion_matrix"]["labels"]
    lines = ["| truth \\ predicted | " + " | ".join(labels) + " |", "|---" * (1 + len(labels)) + "|"]
    for lab, row in zip(labels, rep["confusion_matrix"]["matrix"], strict=True):
        lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def predicted_as(rep: Mapping[str, Any], label: str) -> tuple[int, int, int]:
    """``(films predicted as label, of them right, films of that class)`` from the confusion matrix."""
    labels = rep["confusion_matrix"]["labels"]
    matrix = rep["confusion_matrix"]["matrix"]
    j = labels.index(label)
    return sum(row[j] for row in matrix), matrix[j][j], sum(matrix[j])


def _paper_x() -> dict[str, dict[str, float]]:
    return {m: paper_row("table_x_macro_metrics_percent", m) for m in ("patch", "global")}


def _paper_xi() -> dict[str, dict[str, float]]:
    return {m: paper_row("table_xi_sensitivity_percent", m) for m in ("patch", "global")}


def _label4_models(m: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    models: dict[str, Mapping[str, Any]] = {"patch": m}
    if "global" in m:
        models["global"] = m["global"]
    return models


def _bacterial_sentence(rep: Mapping[str, Any], name: str) -> str:
    called, right, n = predicted_as(rep, "bacterial")
    if not called:
        return f"the {name} model never predicts bacterial ({n} bacterial test films)"
    return (
        f"the {name} model calls {called} films bacterial, {right} of them correctly ({right} of {n} bacterial films)"
    )


def label4_section(m: Mapping[str, Any]) -> str:
    """Tables X and XI (label4): ours beside the paper's, per source, saliency, confusion matrices, and the
    differences in words."""
    models = _label4_models(m)
    x, xi = _paper_x(), _paper_xi()
    out = [
        "### Table X: macro metrics, label4 (percent, 95 % CI over patients)",
        "",
        macro_table(models, x),
        "",
        "### Table XI: per-class sensitivity / specificity, label4 (the paper's sensitivity beside ours)",
        "",
        per_class_table(models, xi),
        "",
        "Accuracy per source:",
        "",
        source_table(models),
        "",
        f"Mean share of the patch model's saliency inside the lungs: {pct(m.get('saliency_in_lung_mean'))} %",
        "",
        "Confusion matrix, patch model:",
        "",
        confusion(m),
    ]
    if "global" in m:
        out += ["", "Confusion matrix, global model:", "", confusion(m["global"])]
    out += [
        "",
        "**Ours against the paper** (ours on our test split end to end; the paper's on its own test films):",
        "",
    ]
    for name, rep in models.items():
        for k in ("accuracy", "f1"):
            title = "accuracy" if k == "accuracy" else f"macro {MACRO_TITLES[k]}"
            out.append(f"- {name}, {title}: {compare(100 * rep[k], x[name][k])}")
    if "global" in models:
        ours_gap = 100 * (m["f1"] - m["global"]["f1"])
        paper_gap = x["patch"]["f1"] - x["global"]["f1"]
        out.append(
            f"- patch minus global, macro F1: ours {ours_gap:+.1f} points, paper {paper_gap:+.1f}: "
            + ("the patch model's advantage is **much smaller** here" if ours_gap < paper_gap - 1 else "comparable")
        )
    for name, rep in models.items():
        for c, s in rep["per_class"].items():
            paper_sens = xi[name].get(c)
            if not s["n"]:
                out.append(
                    f"- {name}, {c} sensitivity: no {c} images in our data (paper {format_number(paper_sens)}), "
                    "not comparable"
                )
            else:
                out.append(f"- {name}, {c} sensitivity: {compare(100 * s['sensitivity'], paper_sens)}")
    sentences = [_bacterial_sentence(rep, name) for name, rep in models.items()]
    out += ["", "Bacterial pneumonia: " + "; ".join(sentences) + "."]
    return "\n".join(out)


def label3_section(m: Mapping[str, Any]) -> str:
    """Table XII (COVIDx-style label3): ours, and the paper's per-class sensitivity and precision of its patch model
    and of COVID-Net (on COVIDx, which we do not have)."""
    xii = paper_table("table_xii_vs_covidnet_percent")
    cols = xii["columns"]
    paper = {who: dict(zip(cols, xii[who], strict=True)) for who in ("patch", "covidnet")}
    rows = []
    for c, s in m["per_class"].items():
        key = LABEL3_TO_PAPER.get(c)
        p = {who: (v.get(f"sens_{key}"), v.get(f"prec_{key}")) for who, v in paper.items()} if key else {}
        rows.append(
            [
                c,
                s["n"],
                pct(s["sensitivity"]),
                format_number(p.get("patch", (None, None))[0]),
                format_number(p.get("covidnet", (None, None))[0]),
                pct(s["precision"]),
                format_number(p.get("patch", (None, None))[1]),
                format_number(p.get("covidnet", (None, None))[1]),
            ]
        )
    header = [
        "class",
        "n (ours)",
        "sensitivity: ours",
        "paper, patch",
        "paper, COVID-Net",
        "precision: ours",
        "paper, patch",
        "paper, COVID-Net",
    ]
    test = paper_table("table_iv_covidnet_data")
    test_counts = ", ".join(
        f"{PAPER_CLASS_NAMES.get(c, c)} {n}" for c, n in zip(test["columns"], test["test"], strict=True) if c != "total"
    )
    out = [
        "### Table XII: COVIDx-style label3 (percent, 95 % CI over patients)",
        "",
        macro_table({"patch": m}),
        "",
        f"Per class, ours beside the paper's Table XII (the paper on the COVIDx test set: {test_counts} films):",
        "",
        _table(header, rows),
        "",
        source_table({"patch": m}),
        "",
        f"Mean share of saliency inside the lungs: {pct(m.get('saliency_in_lung_mean'))} %",
        "",
        confusion(m),
        "",
        "**Ours against the paper's patch model** (Table XII):",
        "",
    ]
    for c, s in m["per_class"].items():
        key = LABEL3_TO_PAPER.get(c)
        if key:
            out.append(f"- {c} sensitivity: {compare(100 * s['sensitivity'], paper['patch'][f'sens_{key}'])}")
            out.append(f"- {c} precision: {compare(100 * s['precision'], paper['patch'][f'prec_{key}'])}")
    return "\n".join(out)


def headline_section(m4: Mapping[str, Any], m3: Mapping[str, Any]) -> str:
    """The intro's one-line comparison: macro F1 and viral/COVID-19 (COVID-19) sensitivity, ours against the paper."""
    x, xi = _paper_x(), _paper_xi()
    xii = paper_row("table_xii_vs_covidnet_percent", "patch")
    parts = [f"patch model macro F1 {compare(100 * m4['f1'], x['patch']['f1'])}"]
    if "global" in m4:
        parts.append(f"global model macro F1 {compare(100 * m4['global']['f1'], x['global']['f1'])}")
    vc = m4["per_class"]["viral_covid"]["sensitivity"]
    parts.append(f"viral/COVID-19 sensitivity of the patch model {compare(100 * vc, xi['patch']['viral_covid'])}")
    covid = m3["per_class"]["covid"]["sensitivity"]
    parts.append(f"COVID-19 sensitivity of the label3 model {compare(100 * covid, xii['sens_covid19'])}")
    return "Against the paper (Tables X, XI, XII; percent): " + "; ".join(parts) + "."


# ----------------------------------------------------------------------------------------------------------------
# Data (Tables III, IV)
# ----------------------------------------------------------------------------------------------------------------


def paper_data_section(m4: Mapping[str, Any], m3: Mapping[str, Any]) -> str:
    """The paper's data tables (III, IV) and the size of our test splits beside theirs."""
    iii = paper_table("table_iii_data")
    iv = paper_table("table_iv_covidnet_data")
    names = [PAPER_CLASS_NAMES.get(c, c) for c in iii["columns"]]
    rows = [[split, *iii[split]] for split in ("train", "val", "test", "total")]
    rows_iv = [[split, *iv[split]] for split in ("train", "val", "test")]
    return "\n".join(
        [
            "The paper's data (its Table III; viral and COVID-19 are separate classes there, tuberculosis comes from "
            "the Montgomery set) and the COVIDx split of its comparison with COVID-Net (Table IV):",
            "",
            _table(["paper, Table III", *names], rows),
            "",
            _table(["paper, Table IV (COVIDx)", *[PAPER_CLASS_NAMES.get(c, c) for c in iv["columns"]]], rows_iv),
            "",
            f"Test films: ours {m4['n']} (label4) and {m3['n']} (label3), the paper's {iii['test'][-1]} (Table III) "
            f"and {iv['test'][-1]} (COVIDx).",
        ]
    )


# ----------------------------------------------------------------------------------------------------------------
# Biomarkers (Tables VI-IX)
# ----------------------------------------------------------------------------------------------------------------


def biomarker_tables_section(stats: Mapping[str, Any]) -> str:
    """Our biomarker tables as ``python -m cxr_hub biomarkers`` renders them (``tables.md``), from ``stats.json``."""
    from cxr_hub.evaluation.biomarker_statistics import render_tables

    text = render_tables(stats)
    start = text.index("#### ")  # the tables, without tables.md's own title and run description
    return text[start:].replace("#### ", "### ").rstrip("\n")


def _ours(stats: Mapping[str, Any], subset: str, biomarker: str, cls: str) -> Mapping[str, Any] | None:
    s = stats[subset]["biomarkers"][biomarker]["per_class"].get(cls) or {}
    return s if "mean" in s else None


def _pair(biomarker: str, s: Mapping[str, Any]) -> tuple[float, float]:
    return to_paper_units(biomarker, s["mean"]), to_paper_units(biomarker, s["sd"])


def _pairwise_p(stats: Mapping[str, Any], subset: str, biomarker: str, a: str, b: str) -> float | None:
    for r in stats[subset]["biomarkers"][biomarker].get("pairwise", []):
        if {r.get("a"), r.get("b")} == {a, b}:
            return r.get("p")
    return None


def biomarkers_vs_paper_section(stats: Mapping[str, Any]) -> str:
    """Ours beside the paper's Tables VI-IX in the paper's units (intensities / 255), with the differences in words."""
    from cxr_hub.biomarkers import CLASS_BIOMARKERS
    from cxr_hub.evaluation.stats import format_p

    rows = []
    specs = [(b, t, "all_views", "all views") for b, t in BIOMARKER_TABLES.items()]
    specs += [(b, t, "excluding_ap_supine", "AP supine excluded") for b, t in BIOMARKER_TABLES_NO_AP_SUPINE.items()]
    for biomarker, table, subset, label in specs:
        roman = table.split("_")[1].upper()
        for cls, paper_classes in LABEL4_TO_PAPER.items():
            s = _ours(stats, subset, biomarker, cls)
            ours = f"{format_mean_sd(_pair(biomarker, s))} (n = {s['n']})" if s else "no images in our data"
            for pc in paper_classes:
                p = paper_mean_sd(table, pc)
                diff = _signed(_pair(biomarker, s)[0] - p[0]) if s else "–"
                rows.append(
                    [
                        f"{CLASS_BIOMARKERS[biomarker][0]} ({label}), Table {roman}",
                        cls,
                        ours,
                        PAPER_CLASS_NAMES[pc],
                        format_mean_sd(p),
                        diff,
                    ]
                )
    header = ["biomarker", "our class", "ours, mean ± SD", "paper's class", "paper, mean ± SD", "ours − paper (mean)"]
    out = [
        "### Ours against the paper's Tables VI–IX (the paper's units)",
        "",
        f"Intensities divided by 255 (the paper's gray levels scaled to [0, 1]); the ratio unchanged. {_units_note()}",
        "",
        _table(header, rows),
        "",
        "Differences between classes, ours (viral/COVID-19 minus normal, rank-sum p) against the paper's (COVID-19 "
        "minus normal):",
        "",
    ]
    for biomarker, table in BIOMARKER_TABLES.items():
        title = CLASS_BIOMARKERS[biomarker][0]
        normal, vc = (_ours(stats, "all_views", biomarker, c) for c in ("normal", "viral_covid"))
        p_normal, p_covid = paper_mean_sd(table, "normal")[0], paper_mean_sd(table, "covid19")[0]
        paper_gap = p_covid - p_normal
        if normal is None or vc is None:
            out.append(f"- {title}: no values of ours for both classes")
            continue
        ours_gap = _pair(biomarker, vc)[0] - _pair(biomarker, normal)[0]
        same = (ours_gap > 0) == (paper_gap > 0)
        verdict = "same direction" if same else "**opposite direction**"
        if same and abs(ours_gap) < abs(paper_gap) / 2:
            verdict += ", **less than half the paper's gap**"
        elif same and abs(ours_gap) > 2 * abs(paper_gap):
            verdict += ", **more than twice the paper's gap**"
        p = format_p(_pairwise_p(stats, "all_views", biomarker, "normal", "viral_covid"))
        level = compare(_pair(biomarker, normal)[0], p_normal, unit="", digits=3)
        text = paper_value(table, "text") if "text" in paper_table(table) else ""
        out.append(
            f"- {title}: ours {_signed(ours_gap)} (p = {p}), paper {_signed(paper_gap)}: {verdict}. Normal films: "
            f"{level}." + (f" The paper: {text}." if text else "")
        )
    return "\n".join(out)


def _signed(value: float, digits: int = 3) -> str:
    """``+0.012`` / ``-0.020``, and ``0.000`` rather than ``-0.000``."""
    text = f"{value:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


def _units_note() -> str:
    return (
        "The paper's values come from its own films and masks (with viral and COVID-19 apart); ours from this "
        "project's films with our segmentation model's masks, viral and COVID-19 merged in one label4 class, and no "
        "tuberculosis images."
    )


# ----------------------------------------------------------------------------------------------------------------
# Segmentation (Tables V, XIII) and the training ablations (Tables XIV, XVI, XVII)
# ----------------------------------------------------------------------------------------------------------------


def _jaccard(run: Mapping[str, Any], part: str) -> tuple[float, float] | None:
    s = run["jaccard"].get(part)
    return (s["mean"], s["std"]) if s else None


def _seg_models(seg: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(folder name, report)`` of each segmentation model in ``table_v.json``, the pipeline's default first."""
    from cxr_hub.presets import SHIPPED

    default = SHIPPED["segmentation"].folder
    return sorted(seg["models"].items(), key=lambda item: item[0] != default)


def table_v_section(seg: Mapping[str, Any]) -> str:
    """Table V: our segmentation Jaccard beside the paper's (JSRT; their second database is NLM-MC, ours Cohen)."""
    from cxr_hub.evaluation.metrics import CONVENTION_AWARE_LUNG
    from cxr_hub.evaluation.stats import format_p
    from cxr_hub.presets import SHIPPED

    v = paper_table("table_v_segmentation_jaccard")
    pair = format_mean_sd
    rows, words = [], []
    for name, m in _seg_models(seg):
        runs = m["runs"]
        jsrt, jsrt_raw = runs["jsrt_val_with_preprocessing"], runs["jsrt_val_without_preprocessing"]
        cohen, cohen_raw = runs["cohen_test_with_preprocessing"], runs["cohen_test_without_preprocessing"]
        label = f"`{name}`" + (" (default)" if name == SHIPPED["segmentation"].folder else "")
        rows += [
            [
                label,
                "JSRT/SCR validation, preprocessed",
                str(jsrt["n"]),
                pair(_jaccard(jsrt, "lung")),
                "–",
                pair(_jaccard(jsrt, "heart")),
                pair(v["jsrt_preprocessed"]["lung"]),
                pair(v["jsrt_preprocessed"]["heart"]),
            ],
            [
                label,
                "JSRT/SCR validation, no preprocessing",
                str(jsrt_raw["n"]),
                pair(_jaccard(jsrt_raw, "lung")),
                "–",
                pair(_jaccard(jsrt_raw, "heart")),
                "not reported",
                "not reported",
            ],
            [
                label,
                "second database, preprocessed (ours: Cohen/v7labs test split; paper: NLM-MC)",
                str(cohen["n"]),
                pair(_jaccard(cohen, "lung")),
                pair(_jaccard(cohen, CONVENTION_AWARE_LUNG)),
                "no masks",
                pair(v["nlm_mc_preprocessed"]["lung"]),
                "–",
            ],
            [
                label,
                "second database, original",
                str(cohen_raw["n"]),
                pair(_jaccard(cohen_raw, "lung")),
                pair(_jaccard(cohen_raw, CONVENTION_AWARE_LUNG)),
                "no masks",
                pair(v["nlm_mc_original"]["lung"]),
                "–",
            ],
        ]
        w = m["wilcoxon_lung_jaccard"]
        conv = cohen["jaccard"][CONVENTION_AWARE_LUNG]["mean"]
        gain_cohen = conv - cohen_raw["jaccard"][CONVENTION_AWARE_LUNG]["mean"]
        gain_jsrt = jsrt["jaccard"]["lung"]["mean"] - jsrt_raw["jaccard"]["lung"]["mean"]
        gain_paper = v["nlm_mc_preprocessed"]["lung"][0] - v["nlm_mc_original"]["lung"][0]
        jsrt_paper = v["jsrt_preprocessed"]
        words += [
            f"- `{name}`, JSRT lung: {compare(jsrt['jaccard']['lung']['mean'], jsrt_paper['lung'][0], '', 3)}; "
            f"heart: {compare(jsrt['jaccard']['heart']['mean'], jsrt_paper['heart'][0], '', 3)}.",
            f"- `{name}`, second database (a different one: our Cohen test films are COVID-19 and other "
            "pneumonia, PA, AP and AP supine, with another delineation convention; the paper's NLM-MC are "
            "tuberculosis and normal PA films), convention-aware lung: "
            f"{compare(conv, v['nlm_mc_preprocessed']['lung'][0], '', 3)}.",
            f"- `{name}`, what the preprocessing does to the lung Jaccard: paper (NLM-MC) {gain_paper:+.3f} "
            f"({v['note'].split('; ', 1)[-1]}); ours on JSRT {gain_jsrt:+.3f} (Wilcoxon p = "
            f"{format_p(w['jsrt_val']['p_value'], stars=False)}), on Cohen {gain_cohen:+.3f} convention-aware "
            f"(strict lung: p = {format_p(w['cohen_test']['p_value'], stars=False)})"
            + (
                ": **on Cohen films the preprocessing lowers our Jaccard, the opposite of the paper**."
                if gain_cohen < 0
                else "."
            ),
            f"- `{name}`, cardiothoracic ratio from predicted masks against the SCR masks (JSRT validation, "
            f"n = {m['ctr']['n']}): mean absolute error {m['ctr']['mae']:.3f}, mean difference "
            f"{m['ctr']['mean_difference']:+.3f}.",
        ]
        heart = m.get("heart_share_of_polygon_lung", {}).get("with")
        if heart and heart.get("n"):
            words.append(
                f"- `{name}`, share of the Cohen polygons' lung labelled heart: {heart['mean']:.1%} ± "
                f"{heart['std']:.1%} (the lung behind the heart is part of it, so a small share is right; the "
                "convention-aware score counts this heart as lung and cannot see it spread)."
            )
    header = [
        "model",
        "data",
        "films",
        "lung, ours",
        "lung, convention-aware",
        "heart, ours",
        "lung, paper",
        "heart, paper",
    ]
    out = [
        _table(header, rows),
        "",
        "All ours post-processed (`cxr_hub.postprocessing.clean_label_map`), at each mask's original resolution. "
        "Convention-aware: our lung plus our heart inside the v7labs polygons (they include the lung behind the heart; "
        "SCR masks and ours call it heart).",
        "",
        "**Ours against the paper:**",
        "",
        *words,
    ]
    under = paper_table("under_segmentation")
    paper_cells = ", ".join(f"{c} {v[0]} of {v[1]}" for c, v in under.items() if c != "definition")
    for name, m in _seg_models(seg):
        ours_under = m.get("undersegmentation", {})
        if not ours_under:
            continue
        ours_cells = ", ".join(f"{c} {s['undersegmented']} of {s['n']}" for c, s in ours_under["per_class"].items())
        text = (
            f"- `{name}`, under-segmentation, by two different definitions: paper ({under['definition']}) "
            f"{paper_cells}; ours ({ours_under['definition']}, {ours_under['images']}) {ours_cells}"
        )
        if _mostly_abnormal(under) and not _mostly_abnormal_ours(ours_under):
            text += (
                ". The paper finds it mostly in abnormal films; ours does not, so the two counts are not comparable."
            )
        out.append(text + ("" if text.endswith(".") else "."))
    return "\n".join(out)


def _mostly_abnormal(under: Mapping[str, Any]) -> bool:
    """True when every abnormal class of the paper's count has a larger under-segmented share than the normals."""
    share = {c: v[0] / v[1] for c, v in under.items() if c != "definition"}
    return all(v > share["normal"] for c, v in share.items() if c != "normal")


def _mostly_abnormal_ours(under: Mapping[str, Any]) -> bool:
    share = {c: s["share"] for c, s in under["per_class"].items()}
    return all(v > share.get("normal", 0.0) for c, v in share.items() if c != "normal")


def _ablation(results: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((r for r in results if r["name"] == name), None)


def _ablation_table(
    results: Sequence[Mapping[str, Any]], rows: Sequence[tuple[str, str, str]], table: str, title: str
) -> str:
    """``rows``: (our run name, the paper's row key, label). Accuracy and macro F1, ours beside the paper's."""
    lines_rows, words = [], []
    for run, key, label in rows:
        r = _ablation(results, run)
        p = paper_row(table, key)
        if r is None:
            lines_rows.append([label, "not run", format_number(p["accuracy"]), "not run", format_number(p["f1"])])
            continue
        lines_rows.append(
            [label, pct(r["accuracy"]), format_number(p["accuracy"]), pct(r["f1"]), format_number(p["f1"])]
        )
        words.append(
            f"- {label}: accuracy {compare(100 * r['accuracy'], p['accuracy'])}; macro F1 "
            f"{compare(100 * r['f1'], p['f1'])}"
        )
    header = ["setting", "accuracy, ours", "accuracy, paper", "macro F1, ours", "macro F1, paper"]
    ours_best = max((r for r in (_ablation(results, run) for run, _, _ in rows) if r), key=lambda r: r["f1"])
    paper_best = max(rows, key=lambda row: paper_row(table, row[1])["f1"])
    ours_best_label = next(label for run, _, label in rows if run == ours_best["name"])
    order = f"Best macro F1: ours **{ours_best_label}**, the paper's **{paper_best[2]}**" + (
        " (the same setting)." if ours_best_label == paper_best[2] else " — **not the same setting**."
    )
    return "\n".join([f"{title}:", "", _table(header, lines_rows), "", *words, "", order])


def ablation_sections(ablations: Mapping[str, Any]) -> dict[str, str]:
    """The paper-comparison tables after each ablation table: XVII (patch size), XVI (mask), XIII and XIV."""
    results = ablations["results"]
    budget = "ours at the ablation budget — one seed, K = 50, from scratch, see above — the paper's with its recipe"
    out = {
        "table-xvii-vs-paper": _ablation_table(
            results,
            [
                ("patch112", "112", "112-pixel patches"),
                ("patch224", "224", "224-pixel"),
                ("patch448", "448", "448-pixel"),
            ],
            "table_xvii_patch_size_percent",
            f"Against the paper's Table XVII ({budget})",
        ),
        "table-xvi-vs-paper": _ablation_table(
            results,
            [("patch224", "with_mask", "lung-masked"), ("nomask", "without_mask", "no lung mask")],
            "table_xvi_mask_percent",
            f"Against the paper's Table XVI ({budget})",
        ),
    }
    xiv = _ablation_table(
        results,
        [
            ("seg_unet", "unet", "U-Net masks"),
            ("seg_fcdn67", "fcdensenet67", "FC-DenseNet67 masks"),
            ("patch224", "fcdensenet103", "FC-DenseNet103 masks"),
        ],
        "table_xiv_classification_by_segmentation_percent",
        f"Against the paper's Table XIV ({budget})",
    )
    xiii = paper_table("table_xiii_lung_jaccard_by_network")
    jac_rows, jac_words = [], []
    for run, key, label in (("seg_unet", "unet", "U-Net"), ("patch224", "fcdensenet103", "FC-DenseNet103")):
        r = _ablation(results, run)
        ours = (r or {}).get("segmentation_summary", {}).get("val_jaccard_lung")
        paper_pair = xiii[key]["jsrt"]
        jac_rows.append([label, "–" if ours is None else f"{ours:.3f}", format_mean_sd(paper_pair)])
        jac_words.append(f"- {label}: {compare(ours, paper_pair[0], '', 3)}")
    r67 = _ablation(results, "seg_fcdn67")
    if r67:
        jac_rows.append(
            ["FC-DenseNet67", f"{r67['segmentation_summary']['val_jaccard_lung']:.3f}", "not in the paper's Table XIII"]
        )
    ours_jac = {
        key: (_ablation(results, run) or {}).get("segmentation_summary", {}).get("val_jaccard_lung")
        for run, key in (("seg_unet", "unet"), ("patch224", "fcdensenet103"))
    }
    if None not in ours_jac.values():
        gap_ours = ours_jac["unet"] - ours_jac["fcdensenet103"]
        gap_paper = xiii["unet"]["jsrt"][0] - xiii["fcdensenet103"]["jsrt"][0]
        jac_words.append(
            f"- U-Net minus FC-DenseNet103: ours {_signed(gap_ours)}, paper {_signed(gap_paper)}"
            + (
                ": **here U-Net segments better**, the paper found no difference"
                if gap_ours > SAME_RATIO and abs(gap_paper) <= SAME_RATIO
                else ""
            )
        )
    xiii_text = "\n".join(
        [
            "Against the paper's Table XIII (JSRT lung Jaccard by segmentation network; ours on the JSRT/SCR "
            f"validation films at the reduced budget above; the paper between its networks: {xiii['note']}):",
            "",
            _table(["network", "JSRT lung Jaccard, ours", "paper"], jac_rows),
            "",
            *jac_words,
        ]
    )
    out["table-xiii-xiv-vs-paper"] = xiv + "\n\n" + xiii_text
    return out


# ----------------------------------------------------------------------------------------------------------------
# README: the shipped-models table
# ----------------------------------------------------------------------------------------------------------------


def _minutes(cfg: Mapping[str, Any]) -> str:
    return f"{cfg['summary']['minutes']:.0f} min"


def _autocast(cfg: Mapping[str, Any]) -> str:
    return {"bfloat16": "bf16", "float16": "fp16"}.get(cfg["summary"].get("autocast"), "fp32")


def readme_shipped_models(files: ResultFiles) -> str:
    """The README's shipped-models tables and the shortcut paragraph, from the measured files."""
    from cxr_hub.evaluation.metrics import CONVENTION_AWARE_LUNG
    from cxr_hub.presets import SHIPPED

    seg = files.load("segmentation")
    m4, m3 = files.load("label4"), files.load("label3")
    v = paper_table("table_v_segmentation_jaccard")["jsrt_preprocessed"]
    x, xi = _paper_x(), _paper_xi()
    xii = paper_row("table_xii_vs_covidnet_percent", "patch")

    def bold(pair: tuple[float, float] | None) -> str:
        return f"**{format_mean_sd(pair)}**"

    seg_rows = []
    for name, m in _seg_models(seg):
        cfg = files.training_config(name)
        arch = {"unet": "U-Net", "fcdensenet103": "FC-DenseNet103"}.get(cfg["config"]["arch"], cfg["config"]["arch"])
        summary = cfg["summary"]
        budget = summary.get("total_budget") or {
            "epochs": summary["epochs_run"],
            "runs": 1,
            "minutes": summary["minutes"],
        }
        runs = f" over {budget['runs']} warm-started runs" if budget["runs"] > 1 else ""
        role = "the pipeline's default" if name == SHIPPED["segmentation"].folder else "documented alternative"
        recipe = (
            "JSRT/SCR films plus partial labels from Cohen/v7labs training films, cross-hospital augmentation"
            if cfg["config"].get("partial_labels")
            else "JSRT/SCR training films only"
        )
        seg_what = (
            f"{arch} lung and heart segmentation ({role}), trained from scratch on {recipe}, on this 2-core CPU "
            f"({budget['epochs']} epochs{runs}, {budget['minutes']:.0f} min, "
            f"{_autocast(cfg)} autocast); fp16 storage "
            f"({files.weights_mb(name):.0f} MB), loads as float32"
        )
        jsrt, cohen = m["runs"]["jsrt_val_with_preprocessing"], m["runs"]["cohen_test_with_preprocessing"]
        words = {"lower" if jsrt["jaccard"][part]["mean"] < v[part][0] else "higher" for part in ("lung", "heart")}
        both = f"ours {words.pop()} on both" if len(words) == 1 else "ours lower on one, higher on the other"
        seg_rows.append(
            [
                _link(name),
                seg_what,
                f"JSRT/SCR validation ({jsrt['n']} films, other patients): lung Jaccard "
                f"{bold(_jaccard(jsrt, 'lung'))}, heart {bold(_jaccard(jsrt, 'heart'))} (paper, Table V: "
                f"{format_mean_sd(v['lung'])} and {format_mean_sd(v['heart'])}; {both}); CTR mean absolute error "
                f"{m['ctr']['mae']:.3f}. Cohen/v7labs test-split films ({cohen['n']}, another database and "
                f"delineation convention): lung {bold(_jaccard(cohen, 'lung'))}, convention-aware "
                f"{bold(_jaccard(cohen, CONVENTION_AWARE_LUNG))}",
            ]
        )
    seg_table = _table(["folder", "what", "measured (held-out data, original mask resolution)"], seg_rows)

    def verdict(ours: float, paper: float) -> str:
        return compare(ours, paper).split(": ", 1)[1].replace("ours ", "")

    patch, glob = m4, m4.get("global")
    vc = patch["per_class"]["viral_covid"]["sensitivity"]
    called, right, n_bact = predicted_as(patch, "bacterial")
    rows = [
        [
            _link("cxr-patch-resnet18"),
            "ResNet-18 patch classifier, label4 (normal, bacterial, tuberculosis (untrained: no images), "
            f"viral/COVID-19), trained from scratch, {_minutes(files.training_config('cxr-patch-resnet18'))} on this "
            "CPU",
            f"accuracy **{pct(patch['accuracy'])} %**, macro F1 **{pct(patch['f1'])}** (paper "
            f"{format_number(x['patch']['f1'])}: {verdict(100 * patch['f1'], x['patch']['f1'])}); viral/COVID-19 "
            f"sensitivity {pct(vc)} % (paper {format_number(xi['patch']['viral_covid'])} %: "
            f"{verdict(100 * vc, xi['patch']['viral_covid'])}); bacterial: {called} films called bacterial, "
            f"{right} correctly ({right} of {n_bact} bacterial films)",
        ]
    ]
    if glob:
        rows.append(
            [
                _link("cxr-global-resnet18"),
                "the paper's global baseline (whole masked film at 224), same data, "
                f"{_minutes(files.training_config('cxr-global-resnet18'))}",
                f"accuracy {pct(glob['accuracy'])} %, macro F1 {pct(glob['f1'])} (paper "
                f"{format_number(x['global']['f1'])}: {verdict(100 * glob['f1'], x['global']['f1'])})",
            ]
        )
    covid = m3["per_class"]["covid"]["sensitivity"]
    rows.append(
        [
            _link("cxr-patch-resnet18-covidx"),
            "patch classifier, label3 (normal, pneumonia, COVID-19), "
            f"{_minutes(files.training_config('cxr-patch-resnet18-covidx'))}",
            f"accuracy {pct(m3['accuracy'])} %, macro F1 {pct(m3['f1'])}, COVID-19 sensitivity {pct(covid)} % "
            f"(paper, Table XII on COVIDx: {format_number(xii['sens_covid19'])} %: "
            f"{verdict(100 * covid, xii['sens_covid19'])})",
        ]
    )
    clf_table = _table(
        ["classifier", "what", "measured end to end on the patient-level test split (full pipeline, K = 100)"], rows
    )
    by = patch["accuracy_by_source"]
    perfect = [s.upper() if s != "cohen" else "Cohen" for s, r in by.items() if r["accuracy"] == 1.0]
    rest = [
        f"{pct(r['accuracy'], 0)} % of the {s.capitalize()} films right" for s, r in by.items() if r["accuracy"] < 1
    ]
    pattern = (f"every {' and '.join(perfect)} film right, " if perfect else "") + ", ".join(rest)
    shortcut = (
        "**These classifiers are weak baselines, not a reproduction.** Trained from scratch in about an hour on two "
        "CPU cores, the patch model had barely started to learn, and its errors follow the image collection "
        f"({pattern}), the signature of a source shortcut in data where class and collection are confounded. "
        "[RESULTS.md](RESULTS.md) has every table beside the paper's, the biomarker statistics and what would close "
        "the gap (ImageNet weights, a GPU and many more epochs)."
    )
    return "\n\n".join([seg_table, _seg_note(seg), clf_table, shortcut])


def _seg_note(seg: Mapping[str, Any]) -> str:
    """Which segmentation model is the default, how its measured lung Jaccard compares with the others', and where the
    full table is."""
    from cxr_hub.evaluation.metrics import CONVENTION_AWARE_LUNG

    models = _seg_models(seg)
    default, dm = models[0]
    where = (
        ("on the JSRT films", "jsrt_val_with_preprocessing", "lung"),
        ("on other hospitals' films", "cohen_test_with_preprocessing", "lung"),
        ("on those films convention-aware", "cohen_test_with_preprocessing", CONVENTION_AWARE_LUNG),
    )

    def listed(items: list[str]) -> str:
        return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1]

    comparisons = []
    for name, m in models[1:]:
        higher, lower = [], []
        for words, run, part in where:
            ours, theirs = _jaccard(dm["runs"][run], part), _jaccard(m["runs"][run], part)
            if ours and theirs:
                (higher if ours[0] > theirs[0] else lower).append(f"{words} ({ours[0]:.3f} against {theirs[0]:.3f})")
        said = [f"{side} {listed(items)}" for side, items in (("higher", higher), ("lower", lower)) if items]
        comparisons.append(f"against `{name}` its mean lung Jaccard is {'; '.join(said)}")
    return (
        f'The pipeline\'s default segmentation is `{default}` (`SHIPPED["segmentation"]` in cxr_hub/presets.py; '
        f"{'; '.join(comparisons)}), and everything that depends on the masks (the classifiers, trained on its masks, "
        "the biomarker tables, the agreement checks, the benchmarks) is measured with it. The full cross-database "
        "table (both models, with and without the preprocessing and the post-processing, Wilcoxon signed-rank tests, "
        "the CTR against the SCR masks, the under-segmentation report per class) is in "
        "[docs/segmentation/table_v.md](docs/segmentation/table_v.md)."
    )


def _link(model: str) -> str:
    return f"[`models/{model}`](models/{model})"


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------

#: Generated sections of RESULTS.md, in document order, and of README.md.
RESULTS_SECTIONS = (
    "headline",
    "paper-data",
    "label4-classification",
    "label3-classification",
    "biomarkers",
    "biomarkers-vs-paper",
    "table-xvii-vs-paper",
    "table-xvi-vs-paper",
    "table-xiii-xiv-vs-paper",
    "table-v",
    "shortcuts",
)
README_SECTIONS = ("shipped-models",)


def render_sections(files: ResultFiles | None = None) -> dict[str, str]:
    """Every generated section of RESULTS.md and README.md, ``{name: markdown}``, from the measured files.

    Raises:
        FileNotFoundError: a measured file is missing (the message names it).
    """
    files = files or ResultFiles()
    m4, m3 = files.load("label4"), files.load("label3")
    stats = files.load("biomarkers")
    builders: dict[str, Callable[[], str]] = {
        "headline": lambda: headline_section(m4, m3),
        "paper-data": lambda: paper_data_section(m4, m3),
        "label4-classification": lambda: label4_section(m4),
        "label3-classification": lambda: label3_section(m3),
        "biomarkers": lambda: biomarker_tables_section(stats),
        "biomarkers-vs-paper": lambda: biomarkers_vs_paper_section(stats),
        "table-v": lambda: table_v_section(files.load("segmentation")),
        "shortcuts": lambda: shortcuts_section(files.shortcut_reports()),
        "shipped-models": lambda: readme_shipped_models(files),
    }
    out = {name: build() for name, build in builders.items()}
    out.update(ablation_sections(files.load("ablations")))
    return {name: wrap_markdown(text) for name, text in out.items()}


def shortcuts_section(reports: Mapping[str, Any]) -> str:
    """The shortcut report of each classifier (training/shortcut_report.py): accuracy per collection, saliency in the
    lungs, the source probe on normal films."""
    if not reports:
        return "No shortcut report yet: run `python -m training.shortcut_report` (see its docstring)."
    # every collection/class pair some report has, normals first (the pooled "all/..." rows are left out)
    keys = {k for r in reports.values() for k in r.get("accuracy_by_source_and_class", {}) if not k.startswith("all/")}
    present = sorted(keys, key=lambda k: (not k.endswith("/normal"), k))
    header = [
        "classifier",
        *(f"{g} accuracy" for g in present),
        "saliency in lungs",
        "source probe (features)",
        "probe on the lung histogram",
        "chance",
    ]
    rows = []
    for name, r in reports.items():
        acc = r.get("accuracy_by_source_and_class", {})
        sal = r.get("saliency_in_lung", {}).get("all")
        probe = r["source_probe_normals"]
        rows.append(
            [
                f"`{name}`",
                *(f"{acc[g]['accuracy']:.1%} ({acc[g]['n']})" if g in acc else "–" for g in present),
                f"{sal['mean']:.1%}" if sal else "–",
                f"{probe['features']['balanced_accuracy']:.3f}",
                f"{probe['lung_histogram_baseline']['balanced_accuracy']:.3f}",
                f"{probe['features']['chance']:.3f}",
            ]
        )
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]
    )
    n = next(iter(reports.values()))["source_probe_normals"]["features"]["n"]
    return (
        table
        + "\n\nAccuracy on the classification test split, per collection and class (films in brackets). Saliency: the "
        "mean share of the predicted class's saliency inside the segmented lungs (patch models). Source probe: "
        "balanced accuracy of a logistic model telling the collections apart from the classifier's pooled features, "
        f"among the normal films of every split ({', '.join(f'{k} {v}' for k, v in n.items())}), 5-fold "
        "cross-validation by patient; the same probe on the lungs' gray-level histogram is the baseline. Lower is "
        "better: a probe well above the histogram baseline means the features encode the collection beyond what the "
        "pixels show."
    )


def wrap_markdown(text: str, width: int = 120) -> str:
    """Prose paragraphs and list items wrapped at ``width`` (the repository's markdown style); tables, headings and
    other lines that start with ``|``, ``#``, ``<`` or a space are kept as they are."""
    out = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if lines[0].startswith(("|", "#", "<", " ")):
            out.append(block)
        elif all(line.startswith("- ") for line in lines):
            out.append("\n".join(_fill(line, width, "  ") for line in lines))
        else:
            out.append(_fill(" ".join(lines), width, ""))
    return "\n\n".join(out)


def _fill(text: str, width: int, indent: str) -> str:
    return textwrap.fill(text, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def update_text(text: str, sections: Mapping[str, str], expected: Sequence[str]) -> str:
    """``text`` with each of its ``expected`` generated sections replaced by ``sections[name]``.

    Raises:
        ValueError: an expected section's markers are missing, or the text has a generated section nobody renders.
    """
    unknown = sorted(set(generated_blocks(text)) - set(sections))
    if unknown:
        raise ValueError(
            f"Generated sections {unknown} are not rendered by {Path(__file__).name}; remove their markers."
        )
    for name in expected:
        text = replace_generated(text, name, sections[name], HINT)
    return text


def _targets(root: Path) -> dict[Path, Sequence[str]]:
    return {root / "RESULTS.md": RESULTS_SECTIONS, root / "README.md": README_SECTIONS}


def check_files(files: ResultFiles | None = None) -> list[str]:
    """Names of the files whose generated sections differ from what the measured files give (empty: up to date)."""
    files = files or ResultFiles()
    sections = render_sections(files)
    stale = []
    for path, expected in _targets(files.root).items():
        text = path.read_text(encoding="utf-8")
        if update_text(text, sections, expected) != text:
            stale.append(path.name)
    return stale


def write_files(files: ResultFiles | None = None) -> list[str]:
    """Rewrites the generated sections of RESULTS.md and README.md in place; returns the names of files changed."""
    files = files or ResultFiles()
    sections = render_sections(files)
    new_texts = {}
    for path, expected in _targets(files.root).items():
        text = path.read_text(encoding="utf-8")
        new = update_text(text, sections, expected)  # every file rendered before any is written: all or nothing
        if new != text:
            new_texts[path] = new
    for path, new in new_texts.items():
        path.write_text(new, encoding="utf-8")
    return [path.name for path in new_texts]


def main(argv: list[str] | None = None) -> int:
    """``--write`` / ``--check`` the generated sections, or print the classification tables of given metrics files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the generated sections of RESULTS.md, README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated section is out of date")
    parser.add_argument("--label4", help="print the label4 tables of this metrics.json (with its global model)")
    parser.add_argument("--label3", help="print the label3 (COVIDx-style) tables of this metrics.json")
    args = parser.parse_args(argv)
    try:
        if args.write:
            changed = write_files()
            print(f"rewrote {', '.join(changed)}" if changed else "RESULTS.md and README.md are up to date")
        if args.check:
            stale = check_files()
            if stale:
                print(
                    f"out of date: {', '.join(stale)}; run python -m training.results_tables --write", file=sys.stderr
                )
                return 1
            print("RESULTS.md and README.md are up to date")
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out: list[str] = []
    if args.label4:
        out.append(label4_section(json.loads(Path(args.label4).read_text())))
    if args.label3:
        out += ["", label3_section(json.loads(Path(args.label3).read_text()))]
    if out:
        print("\n".join(out))
    elif not (args.write or args.check):
        parser.print_usage(sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
