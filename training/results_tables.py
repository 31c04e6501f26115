"""Markdown tables for RESULTS.md from ``python -m cxr_hub evaluate`` outputs (the paper's Tables X, XI, XII).

Only numbers read from the given ``metrics.json`` files are printed for our models. The paper's values shown beside
them are the few quoted in the project's issues (macro F1 84.4 vs 59.3 for patch vs global, COVID-19 sensitivity
92.5 %); other cells of the paper's tables are left to the paper itself rather than re-typed here unverified.

Usage::

    python -m training.results_tables --label4 docs/results/label4_test/metrics.json \
        --label3 docs/results/label3_test/metrics.json > /tmp/tables.md
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MACRO = ("accuracy", "precision", "recall", "f1", "specificity")
#: The paper's values quoted in the project's issues (percent); None = not quoted, see the paper.
PAPER_LABEL4 = {
    "patch": {"f1": 84.4, "sensitivity_viral_covid": 92.5},
    "global": {"f1": 59.3},
}


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage string; '–' when undefined."""
    return "–" if value is None else f"{100 * value:.{digits}f}"


def with_ci(report: Mapping[str, Any], key: str) -> str:
    """``value [low, high]`` in percent, the CI from the patient bootstrap when present."""
    ci = (report.get("ci95") or {}).get(key)
    text = pct(report.get(key))
    return f"{text} [{pct(ci[0])}, {pct(ci[1])}]" if ci else text


def macro_table(models: Mapping[str, Mapping[str, Any]], paper: Mapping[str, Mapping[str, float]] | None) -> str:
    """Table X / XII shape: one row per model, macro metrics (percent, 95 % patient-bootstrap CI)."""
    lines = ["| model | n | accuracy | precision | recall | F1 | specificity |", "|---|---|---|---|---|---|---|"]
    for name, rep in models.items():
        cells = " | ".join(with_ci(rep, k) for k in MACRO)
        lines.append(f"| **ours**, {name} | {rep['n']} | {cells} |")
        ref = (paper or {}).get(name)
        if ref:
            paper_cells = " | ".join("–" if ref.get(k) is None else f"{ref[k]:.1f}" for k in MACRO)
            lines.append(f"| paper, {name} | – | {paper_cells} |")
    return "\n".join(lines)


def per_class_table(models: Mapping[str, Mapping[str, Any]]) -> str:
    """Table XI shape: sensitivity (and specificity) per class and model; absent classes say so."""
    classes = list(next(iter(models.values()))["per_class"])
    header = "| class | " + " | ".join(f"{m}: sensitivity / specificity (n)" for m in models) + " |"
    lines = [header, "|---" * (1 + len(models)) + "|"]
    for c in classes:
        cells = []
        for rep in models.values():
            m = rep["per_class"][c]
            cells.append(
                "absent (n = 0)" if not m["n"] else f"{pct(m['sensitivity'])} / {pct(m['specificity'])} ({m['n']})"
            )
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def main(argv: list[str] | None = None) -> int:
    """Prints the markdown sections for the metrics files given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label4", help="metrics.json of the label4 evaluation (with the global model)")
    parser.add_argument("--label3", help="metrics.json of the label3 (COVIDx-style) evaluation")
    args = parser.parse_args(argv)
    out: list[str] = []
    if args.label4:
        m = json.loads(Path(args.label4).read_text())
        models = {"patch": m}
        if "global" in m:
            models["global"] = m["global"]
        out += [
            "### Table X: macro metrics, label4 (percent, 95 % CI over patients)",
            "",
            macro_table(models, PAPER_LABEL4),
        ]
        out += ["", "### Table XI: per-class sensitivity / specificity, label4", "", per_class_table(models)]
        out += ["", "Accuracy per source:", "", source_table(models)]
        out += [
            "",
            f"Mean share of the patch model's saliency inside the lungs: {pct(m.get('saliency_in_lung_mean'))} %",
        ]
        out += ["", "Confusion matrix, patch model:", "", confusion(m)]
        if "global" in m:
            out += ["", "Confusion matrix, global model:", "", confusion(m["global"])]
    if args.label3:
        m = json.loads(Path(args.label3).read_text())
        out += ["", "### Table XII: COVIDx-style label3 (percent, 95 % CI over patients)", ""]
        out += [macro_table({"patch": m}, None), "", per_class_table({"patch": m}), "", source_table({"patch": m})]
        out += ["", f"Mean share of saliency inside the lungs: {pct(m.get('saliency_in_lung_mean'))} %"]
        out += ["", confusion(m)]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
