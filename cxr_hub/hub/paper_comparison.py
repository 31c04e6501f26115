"""A model card's "Compared with the paper" section: its first measured result beside the paper's numbers.

:func:`paper_comparison_section` renders the section from the card's metrics (the paper's numbers are read from
``cxr_hub/data/paper_tables.json`` through :mod:`cxr_hub.paper`, never typed here) between generated-section markers;
:func:`refresh_paper_comparison` recomputes it in a rendered card from the card's own front matter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from ..paper import format_mean_sd, format_number, paper_row, paper_table, replace_generated
from .card_metrics import _MISSING, CLASSIFICATION_MODEL_TYPES, _config_get, _md_cell, _model_type, _normalize_metrics

__all__ = ["PAPER_SECTION", "PAPER_SECTION_HINT", "paper_comparison_section", "refresh_paper_comparison"]

PAPER_SECTION = "paper-comparison"
PAPER_SECTION_HINT = "rendered by cxr_hub.hub from cxr_hub/data/paper_tables.json and this card's first result"
_LABEL3_TO_PAPER = {"normal": "sens_normal", "pneumonia": "sens_pneumonia", "covid": "sens_covid19"}


def _paper_counterpart(config: Any, values: Mapping[str, Any]) -> tuple[str, list[tuple[str, Any, Any]], str] | None:
    """``(source, [(metric, ours, paper)], unit)`` for a card's first result, or None when the paper has none.

    Classifiers compare in percent (Tables X, XI for label4 by mode, XII for label3); segmentation networks compare
    Jaccard indices (Table V for FC-DenseNet103, Table XIII for U-Net).
    """
    model_type = _model_type(config)
    if model_type in CLASSIFICATION_MODEL_TYPES:
        label_set, mode = _config_get(config, "label_set"), _config_get(config, "mode")
        id2label = _config_get(config, "id2label")
        classes = [str(v) for v in id2label.values()] if isinstance(id2label, Mapping) else []

        def ours(key: str) -> float | None:
            return 100 * values[key] if isinstance(values.get(key), int | float) else None

        if label_set == "label4" and mode in ("patch", "global"):
            x = paper_row("table_x_macro_metrics_percent", mode)
            xi = paper_row("table_xi_sensitivity_percent", mode)
            rows = [("accuracy", ours("accuracy"), x["accuracy"])]
            macro = {"precision": "precision", "recall": "recall", "f1": "F1", "specificity": "specificity"}
            rows += [(f"macro {t}", ours(f"macro_{k}"), x[k]) for k, t in macro.items()]
            rows += [(f"sensitivity ({c})", ours(f"sensitivity_{c}"), xi.get(c)) for c in classes if c in xi]
            return f"the paper's {mode} model, Tables X and XI", rows, "points"
        if label_set == "label3" and mode == "patch":
            xii = paper_row("table_xii_vs_covidnet_percent", "patch")
            rows = [(f"sensitivity ({c})", ours(f"sensitivity_{c}"), xii[k]) for c, k in _LABEL3_TO_PAPER.items()]
            return "the paper's patch model on COVIDx, Table XII", rows, "points"
        return None
    if model_type == "cxr_fcdensenet" and _config_get(config, "preset") in ("fcdensenet103", _MISSING):
        v = paper_table("table_v_segmentation_jaccard")["jsrt_preprocessed"]
        rows = [
            ("Jaccard, lung", values.get("jaccard_lung"), v["lung"]),
            ("Jaccard, heart", values.get("jaccard_heart"), v["heart"]),
        ]
        return "the paper's FC-DenseNet103 on JSRT, Table V", rows, ""
    if model_type == "cxr_unet":
        v = paper_table("table_xiii_lung_jaccard_by_network")["unet"]
        return "the paper's U-Net on JSRT, Table XIII", [("Jaccard, lung", values.get("jaccard_lung"), v["jsrt"])], ""
    return None


def paper_comparison_section(config: Any, metrics: Any) -> str:
    """The card's "Compared with the paper" section: this model's first measured result beside the paper's numbers
    (read from ``cxr_hub/data/paper_tables.json``), with each difference in words, between generated-section markers.

    Args:
        config: the model's config (``model_type``, ``label_set``, ``mode``, ``id2label``, ``preset``).
        metrics: the card's metrics in any shape :func:`render_model_card` accepts; the first result is compared.

    Returns:
        Markdown; says so plainly when the model is not evaluated yet or the paper has no counterpart.
    """
    results = _normalize_metrics(metrics)
    body = _paper_comparison_body(config, results)
    return f"<!-- generated:{PAPER_SECTION} {PAPER_SECTION_HINT} -->\n{body}\n<!-- /generated:{PAPER_SECTION} -->"


def _paper_comparison_body(config: Any, results: list[dict[str, Any]]) -> str:
    if not results:
        return "Not evaluated yet, so there is nothing to compare with the paper's numbers."
    first = results[0]
    found = _paper_counterpart(config, first["values"])
    if found is None:
        return "The paper reports no number for this kind of model."
    source, rows, unit = found
    table = ["| metric | this model | paper | difference |", "|---|---|---|---|"]
    lower, higher, missing = [], [], []
    for name, ours, paper in rows:
        pair = isinstance(paper, list | tuple)
        paper_mean = paper[0] if pair else paper
        paper_text = format_mean_sd(paper) if pair else format_number(paper)
        if ours is None:
            missing.append(name)
            table.append(f"| {name} | no value (untrained: no images) | {paper_text} | not comparable |")
            continue
        diff = ours - paper_mean
        ours_text = f"{ours:.1f}" if unit else f"{ours:.3f}"
        size = f"{abs(diff):.1f} points" if unit else f"{abs(diff):.3f}"
        same = abs(diff) < (1.0 if unit else 0.005)
        word = "about the same" if same else f"**{size} {'lower' if diff < 0 else 'higher'}**"
        if not same:
            (lower if diff < 0 else higher).append(name)
        table.append(f"| {name} | {ours_text} | {paper_text} | {word} |")
    compared = len(rows) - len(missing)
    if compared and len(lower) == compared:
        verdict = f"**This model is below the paper on every metric compared** ({compared})."
    elif lower:
        verdict = f"**Below the paper** on {'; '.join(lower)}" + (
            f". Above it on {'; '.join(higher)}." if higher else "."
        )
    else:
        verdict = "Not below the paper on any metric compared."
    units = "percent" if unit else "Jaccard index, mean ± SD for the paper"
    lines = [
        f"This model's first result above ({_md_cell(first['dataset']['name'])}) beside {source} ({units}; the "
        "paper's numbers from `cxr_hub/data/paper_tables.json`). The paper measured its own model on its own data, "
        "so this shows how far these weights are from the published result, not a like-for-like test.",
        "",
        *table,
        "",
        verdict,
    ]
    if missing:
        lines.append(f"No value of this model for {'; '.join(missing)}: no such images in its data.")
    return "\n".join(lines)


def refresh_paper_comparison(card_text: str, config: Any) -> str:
    """A rendered card with its "Compared with the paper" section recomputed from its own front matter.

    The section is replaced between its markers, or added (with its heading) before "## Limitations and biases"
    when the card predates it. Run it after the card's metrics change (``training/refresh_card_metrics.py``).

    Raises:
        ValueError: the card has no YAML front matter, or no place for the section.
    """
    parts = card_text.split("---\n", 2)
    if len(parts) != 3 or parts[0]:
        raise ValueError("The card has no YAML front matter between '---' lines; render it with render_model_card.")
    meta = yaml.safe_load(parts[1]) or {}
    index = (meta.get("model-index") or [{}])[0].get("results") or []
    results = [{"dataset": r["dataset"], "values": {m["type"]: m["value"] for m in r["metrics"]}} for r in index]
    section = paper_comparison_section(config, results)
    marker = f"<!-- generated:{PAPER_SECTION}"
    if marker in card_text:
        body = section.split("\n", 1)[1].rsplit("\n", 1)[0]
        return replace_generated(card_text, PAPER_SECTION, body, PAPER_SECTION_HINT)
    anchor = "\n## Limitations and biases"
    if anchor not in card_text:
        raise ValueError("The card has no '## Limitations and biases' section to put the paper comparison before.")
    return card_text.replace(anchor, f"\n## Compared with the paper\n\n{section}\n{anchor}", 1)
