"""``evaluate``: the full pipeline on a labelled manifest, scored as a classifier (metrics.json, predictions.csv).

A thin command: parses the options, calls :func:`cxr_hub.evaluation.classification.evaluate_classification` and
prints its headline numbers. The library imports torch and the pipeline only when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..evaluation.classification import ALL_ROWS, DEFAULT_SPLIT, TASKS, evaluate_classification
from ..evaluation.classification_metrics import MACRO_METRICS
from ..presets import SHIPPED
from .options import sampling_mode

__all__ = ["add_parser", "run_evaluate"]


def run_evaluate(args: argparse.Namespace) -> int:
    """CLI handler for ``evaluate``: runs :func:`cxr_hub.evaluation.classification.evaluate_classification`, prints.

    Prints the headline metrics as JSON and the report's notes on stdout, and on stderr a warning when training or
    validation films were scored.

    Args:
        args: the parsed ``evaluate`` options.

    Returns:
        The exit code: 0 written, 2 missing models or bad input (one line on stderr).
    """
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
    """Registers ``evaluate`` on the top-level CLI.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    p = subparsers.add_parser(
        "evaluate",
        help="run the full pipeline on a labelled manifest and score the classifier (metrics.json, predictions.csv)",
        description="Segmentation → K lung patches → majority vote on every manifest row with a label for --task; "
        "writes metrics.json (accuracy, macro precision/recall/F1/specificity, per class, confusion matrix, bootstrap "
        "CIs over patients), predictions.csv and confusion_matrix.png. Works on any folder in the manifest format.",
    )
    p.add_argument("--manifest", required=True, help="manifest.csv (or its folder); image paths relative to it")
    p.add_argument("--task", required=True, choices=TASKS, help="which label column is the truth")
    p.add_argument(
        "--segmentation", help=f"segmentation model folder (default: models/{SHIPPED['segmentation'].folder})"
    )
    p.add_argument(
        "--classifier",
        help=f"patch classifier folder (default: models/{SHIPPED['label4/patch'].folder} for label4, "
        f"models/{SHIPPED['label3/patch'].folder} for label3)",
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
