"""``evaluate-segmentation``: a segmentation model against a manifest's masks (Jaccard/Dice, worst cases).

A thin command: parses the options, calls :func:`cxr_hub.evaluation.segmentation.evaluate_segmentation` and prints
its headline numbers. The library (and with it torch) is imported with this module, which the CLI imports only for
this command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..evaluation.segmentation import DEFAULT_SEGMENTATION, evaluate_segmentation
from ..loading import UnsafeCheckpointError

__all__ = ["add_parser", "run_evaluate_segmentation"]


def run_evaluate_segmentation(args: argparse.Namespace) -> int:
    """CLI handler for ``evaluate-segmentation``: runs :func:`cxr_hub.evaluation.segmentation.evaluate_segmentation`.

    Prints the mean Jaccard and Dice per structure as JSON and the path of ``metrics.json``.

    Args:
        args: the parsed ``evaluate-segmentation`` options.

    Returns:
        The exit code: 0 written, 2 missing model or manifest, bad split (one line on stderr).
    """
    try:
        metrics = evaluate_segmentation(
            args.manifest,
            args.out,
            segmentation=args.segmentation,
            preprocessing=args.preprocessing,
            split_file=args.split_file,
            split=args.split,
            sources=args.source,
            task=args.task,
            undersegmentation=args.undersegmentation,
            limit=args.limit,
            device=args.device,
        )
    except (FileNotFoundError, UnsafeCheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    brief = {k: metrics[k] for k in ("n", "jaccard", "dice")}
    print(json.dumps(brief, indent=2))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers ``evaluate-segmentation`` on the top-level CLI.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    p = subparsers.add_parser(
        "evaluate-segmentation",
        help="score a segmentation model against a manifest's masks (Jaccard/Dice, worst cases, under-segmentation)",
    )
    p.add_argument("--manifest", required=True, help="manifest.csv (or its folder); paths relative to it")
    p.add_argument("--segmentation", default=DEFAULT_SEGMENTATION, help="Hub folder or repo id (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder for metrics.json, per_image.csv, worst_cases.png")
    p.add_argument(
        "--preprocessing",
        choices=("model", "none"),
        default="model",
        help="'model': the paper's preprocessing (default); 'none': min-max scaling only (ablation)",
    )
    p.add_argument("--split-file", help="split JSON from training/data.py")
    p.add_argument("--split", help="GROUP:NAME from the split file, e.g. segmentation:val")
    p.add_argument("--source", action="append", help="only rows of this source (repeatable)")
    p.add_argument("--task", default="label4", choices=("label4", "label3"), help="classes for under-segmentation")
    p.add_argument(
        "--undersegmentation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also segment labelled rows without masks for the under-segmentation report",
    )
    p.add_argument("--limit", type=int, help="evaluate at most this many images (quick checks)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run_evaluate_segmentation)
