"""The command-line glue of ``predict --engine ray``: :func:`add_ray_arguments` registers ``--engine`` and the Ray
options on the ``predict`` parser, and :func:`run_ray_predict` checks the parsed options, runs
:func:`~cxr_hub.ray_batch.run.predict_on_ray` and prints one summary line.

Imports :mod:`~cxr_hub.ray_batch.spec`, :mod:`~cxr_hub.ray_batch.inputs`, :mod:`~cxr_hub.ray_batch.results` and
:mod:`~cxr_hub.ray_batch.run`; nothing of Ray (:func:`run_ray_predict` only asks whether it is installed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .inputs import list_inputs
from .results import parts_folder
from .run import RaySummary, predict_on_ray
from .spec import DEFAULT_BATCH_SIZE, PipelineSpec, RayOptions, RayPredictError, _batch


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """Registers ``--engine`` and the Ray options on the ``predict`` parser (imports nothing of Ray)."""
    group = parser.add_argument_group(
        "distributed batch (--engine ray)",
        "Score SOURCE (a folder, a manifest .csv or a text file of paths, .txt) on Ray Data into --out "
        "results.parquet or results.csv. Needs Ray: pip install 'cxr-hub[ray]'. Inputs and model folders must be at "
        "the same path on every node.",
    )
    group.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: an actor pool on a Ray cluster",
    )
    group.add_argument(
        "--address",
        default=None,
        help="ray: 'auto' (the cluster this machine is in), 'ray://HOST:10001' (Ray Client) or 'local' (default: "
        "RAY_ADDRESS when set, else a new Ray instance on this machine, bound to loopback)",
    )
    group.add_argument(
        "--workers", type=int, default=None, help="ray: actors (default: autoscale from 1 to what the cluster fits)"
    )
    group.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="ray: CPUs (and torch threads) per actor (default: 1)"
    )
    group.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="ray: GPUs per actor; above 0 the models run on it (0)"
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"ray: films per Ray task, what a dead worker's retry repeats (default: {DEFAULT_BATCH_SIZE})",
    )


def run_ray_predict(args: argparse.Namespace) -> int:
    """``predict SOURCE --engine ray``: checks, runs :func:`predict_on_ray`, prints one summary line.

    Over 50 lines because each refusal prints its own one-line error and exits, in the order the checks run.

    Returns:
        The exit code: 0 done, 1 films left without a row or Ray failed the run (``--resume`` continues), 2 refused
        (a one-line error; nothing written).
    """
    import importlib.util

    b = _batch()
    problem = b.predict_option_problem(args) or RayOptions.from_args(args).problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        inputs = list_inputs(args.image)
    except RayPredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folders = _model_folders(args, b)
    problems = [v for v in folders.values() if isinstance(v, str)]
    if problems:
        for message in problems:
            print(f"error: {message}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("ray") is None:
        print(
            "error: --engine ray needs Ray Data: pip install 'cxr-hub[ray]' (or the ray[data] line of "
            "requirements.txt), or leave out --engine for the single-process run.",
            file=sys.stderr,
        )
        return 2
    try:
        summary = predict_on_ray(
            inputs,
            args.out,
            PipelineSpec.from_args(args, folders),
            RayOptions.from_args(args),
            resume=args.resume,
        )
    except RayPredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not type(exc).__module__.startswith("ray"):
            raise
        print(
            f"error: Ray failed the run ({type(exc).__name__}; Ray's log above says why). The rows made so far are "
            f"kept in {parts_folder(args.out)}: run the same command with --resume to continue.",
            file=sys.stderr,
        )
        return 1
    return _report(summary)


def _model_folders(args: argparse.Namespace, b: SimpleNamespace) -> dict[str, Any]:
    """The model folders of ``--segmentation``, ``--classifier`` and ``--global-classifier`` (when given), resolved
    as the single-process ``predict`` resolves them: each a path, or a message (a str) saying why it is not one."""
    folders: dict[str, Any] = {
        "segmentation": b.model_folder(args.segmentation, b.default_segmentation, "--segmentation", "segmentation"),
        "classifier": b.model_folder(args.classifier, b.default_classifier, "--classifier", "patch classifier"),
    }
    if args.global_classifier is not None:
        folders["global"] = b.model_folder(args.global_classifier, Path(), "--global-classifier", "global")
    return folders


def _report(summary: RaySummary) -> int:
    """Prints what a finished run did (a note when the workers computed differently, an error for films left
    without a row) and returns the exit code: 1 when films are missing, else 0."""
    print(
        f"wrote {summary.output}: {summary.ok} analysed, {summary.errors} refused (status 'error' rows), "
        f"{summary.skipped} already there; {len(summary.workers)} Ray worker process(es), {summary.seconds:.1f} s"
    )
    if len(summary.worker_settings) > 1:
        print(
            "note: the workers did not all compute the same way (device or arithmetic): "
            + " / ".join(json.dumps(s, sort_keys=True) for s in summary.worker_settings)
            + ". For identical rows across machines pass --precision fp32 --segmentation-precision fp32."
        )
    if summary.missing:
        print(
            f"error: {summary.missing} film(s) got no row (Ray ended the stream early): run the same command with "
            "--resume to make them.",
            file=sys.stderr,
        )
        return 1
    return 0
