"""``biomarkers``: lung intensity, cardiothoracic ratio and lung area by class, with normality and rank-sum tests.

A thin command: parses the options, calls :func:`cxr_hub.evaluation.biomarker_study.run_biomarkers` (or
:func:`~cxr_hub.evaluation.biomarker_study.rebuild_from_csv` with ``--rebuild``) and prints a summary line. The
library is imported with this module, which the CLI imports only for this command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..evaluation.biomarker_study import DEFAULT_SEGMENTATION, TASKS, rebuild_from_csv, run_biomarkers
from ..presets import SHIPPED

__all__ = ["add_parser", "run_biomarkers_command"]


def run_biomarkers_command(args: argparse.Namespace) -> int:
    """CLI handler for ``biomarkers``: the study (:func:`~cxr_hub.evaluation.biomarker_study.run_biomarkers`) or,
    with ``--rebuild``, its statistics recomputed from a saved CSV
    (:func:`~cxr_hub.evaluation.biomarker_study.rebuild_from_csv`).

    Args:
        args: the parsed ``biomarkers`` options.

    Returns:
        The exit code: 0 written, 2 bad input (one line on stderr).
    """
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
    """Registers ``biomarkers`` on the top-level CLI.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    p = subparsers.add_parser(
        "biomarkers",
        help="lung intensity, cardiothoracic ratio and lung area by class, with normality and rank-sum tests",
    )
    p.add_argument("--manifest", help="manifest.csv (or its folder); paths relative to it (required unless --rebuild)")
    p.add_argument("--task", default="label4", choices=TASKS, help="class column (default: %(default)s)")
    p.add_argument(
        "--segmentation",
        default=str(DEFAULT_SEGMENTATION),
        help=f"segmentation Hub folder or repo id (default: models/{SHIPPED['segmentation'].folder} in the repository)",
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
