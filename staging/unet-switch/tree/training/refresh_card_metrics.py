"""Put a re-run end-to-end evaluation into a shipped classifier's model card (front matter and Evaluation table).

The classifier cards lead with the end-to-end test metrics of the committed weights (``python -m cxr_hub evaluate``,
saved under ``docs/results/``) and keep the training script's own test score second. When the pipeline changes in a
way that changes those numbers (a new default sampler, say), the evaluation is re-run and this script copies the new
numbers into the card, so the card never shows a number that was not measured. Only the first ``model-index`` result
and the rows of its dataset in the Evaluation table change; ``tests/test_shipped_models.py`` checks the outcome.

Usage::

    python -m training.refresh_card_metrics models/cxr-patch-resnet18 docs/results/label4_test/metrics.json
    python -m training.refresh_card_metrics models/cxr-global-resnet18 docs/results/label4_test/metrics.json --global
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cxr_hub.hub import evaluation_section, refresh_paper_comparison
from training.train_classifier import card_metrics

__all__ = ["E2E_SUFFIX", "TRAINING_SUFFIX", "main", "refresh_card"]

#: What the dataset name of each result says after the collection's name: the end-to-end evaluation of the committed
#: weights, and the training script's own score (a card written by training holds only the latter, unsuffixed).
E2E_SUFFIX = ", full pipeline on the original films (committed weights)"
TRAINING_SUFFIX = ", training script on its cached inputs"


def refresh_card(card_text: str, metrics: Mapping[str, Any], model_name: str | None = None) -> str:
    """The card with its end-to-end model-index result and Evaluation rows replaced by ``metrics``' numbers.

    A card fresh from training holds only the training script's result: the end-to-end result is then inserted
    first, and the training script's keeps its numbers, its dataset name marked with :data:`TRAINING_SUFFIX`.

    Args:
        card_text: a model card written by :func:`cxr_hub.hub.render_model_card` (YAML front matter with a
            ``model-index`` of at least one result, and an ``## Evaluation`` section).
        metrics: an evaluation report (``metrics.json`` of ``python -m cxr_hub evaluate``, or its ``"global"``
            part) with accuracy, macro metrics, ``ci95``, ``per_class`` and ``accuracy_by_source``.
        model_name: the model-index name to put in place of "export", the name a card from training carries (the
            CLI passes the model folder's name).

    Returns:
        The new card text; everything else is unchanged.

    Raises:
        ValueError: the card has no front matter, no model-index result or no Evaluation section.
    """
    parts = card_text.split("---\n", 2)
    if len(parts) != 3 or parts[0]:
        raise ValueError("The card has no YAML front matter between '---' lines.")
    meta = yaml.safe_load(parts[1])
    body = parts[2]
    try:
        results = meta["model-index"][0]["results"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError("The card's front matter has no model-index result to refresh.") from exc
    new = card_metrics(dict(metrics), None)  # type: ignore[arg-type]  # the config is not used for the values
    if new is None:
        raise ValueError("The metrics hold no defined value to put into the card.")
    values = [{"type": k, "value": v, "name": k} for k, v in new["values"].items()]
    e2e = [r for r in results if str(r.get("dataset", {}).get("name", "")).endswith(E2E_SUFFIX)]
    if e2e:
        e2e[0]["metrics"] = values
    else:  # a card fresh from training: every result is the training script's
        for r in results:
            name = str(r["dataset"]["name"])
            if not name.endswith(TRAINING_SUFFIX):
                r["dataset"]["name"] = name + TRAINING_SUFFIX
        first = results[0]
        dataset = {**first["dataset"], "name": str(first["dataset"]["name"]).removesuffix(TRAINING_SUFFIX) + E2E_SUFFIX}
        results.insert(0, {"task": dict(first["task"]), "dataset": dataset, "metrics": values})
    if model_name and meta["model-index"][0].get("name") == "export":  # the training run's export folder
        meta["model-index"][0]["name"] = model_name
    meta["metrics"] = list(dict.fromkeys(m["type"] for r in results for m in r["metrics"]))
    table = evaluation_section(
        [{"dataset": r["dataset"], "values": {m["type"]: m["value"] for m in r["metrics"]}} for r in results]
    )
    # the section's lead sentence and its table, up to the first line that is not a table row
    # table rows are single lines: [^\n] keeps a later table (the paper comparison) out of the match under re.S
    pattern = re.compile(r"(## Evaluation\n\n)Measured by .*?\n\n\| Dataset .*?\n(?:\|[^\n]*\|\n)*", re.S)
    if not pattern.search(body):
        raise ValueError("The card has no '## Evaluation' section with a metrics table.")
    body = pattern.sub(lambda m: m.group(1) + table + "\n", body, count=1)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"---\n{front}---\n{body}"


def main(argv: list[str] | None = None) -> int:
    """CLI entry: rewrites ``FOLDER/README.md`` in place; returns 0, or 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="model folder with README.md")
    parser.add_argument("metrics", help="metrics.json of `python -m cxr_hub evaluate`")
    parser.add_argument("--global", dest="use_global", action="store_true", help="use the metrics' global part")
    args = parser.parse_args(argv)
    card = Path(args.folder) / "README.md"
    try:
        report = json.loads(Path(args.metrics).read_text())
        if args.use_global:
            report = report["global"]
        text = refresh_card(card.read_text(encoding="utf-8"), report, model_name=Path(args.folder).resolve().name)
        config = Path(args.folder) / "config.json"
        if config.is_file():  # the card's "Compared with the paper" section follows its new numbers
            text = refresh_paper_comparison(text, json.loads(config.read_text()))
        card.write_text(text, encoding="utf-8")
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"refreshed {card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
