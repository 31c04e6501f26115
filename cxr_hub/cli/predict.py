"""``predict``: the pipeline on one image (result.json + overlay PNGs in a folder) or on a folder (a CSV).

``predict`` runs on one image (result.json + overlay PNGs in a folder) or, when IMAGE is a folder or ``--out`` ends
in ``.csv``, on every image of a folder as a batch (:mod:`cxr_hub.cli.batch`): one CSV row per image, appended and
fsync'ed as a whole line the moment the image is done, so a killed run loses at most the image in progress and
``--resume`` continues it. ``--engine ray`` hands the run to :mod:`cxr_hub.ray_batch`.

Privacy: results and messages name an input by its file name only (:mod:`cxr_hub.cli.names`); file names that carry
patient names must be pseudonymised before the run (documented in the README).

Every option is checked and the input is found (and, for one image, read) before a model is loaded or a file is
written: a typo costs a one-line error, not a model load, and never leaves a half-made output behind. torch,
transformers and the pipeline are imported inside the functions that need them, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..presets import SHIPPED, default_folder
from .batch import batch_csv_path, batch_inputs, is_batch, run_predict_batch
from .names import source_name
from .options import default_sampling, sampling_mode

if TYPE_CHECKING:
    import numpy as np

    from ..pipeline import CXRPipeline

__all__ = [
    "DEFAULT_CLASSIFIER",
    "DEFAULT_SEGMENTATION",
    "add_parser",
    "model_folder",
    "pipeline_option_problem",
    "predict_option_problem",
    "run_predict",
]

DEFAULT_SEGMENTATION = default_folder("segmentation")
DEFAULT_CLASSIFIER = default_folder("label4/patch")


def model_folder(value: str | None, default: Path, flag: str, what: str) -> Path | str:
    """The model folder for ``flag``, or an error message (str) when it is missing.

    Only looked at (``config.json`` exists), never loaded, so a wrong folder costs a one-line error and no time.

    Args:
        value: the option's value; None when it was left out.
        default: the folder used when ``value`` is None (a shipped model's, :func:`cxr_hub.presets.default_folder`).
        flag: the option, for the message (``--segmentation``).
        what: the model's kind, for the message (``"segmentation"``).

    Returns:
        The folder, or a one-line message saying what to pass instead.
    """
    folder = Path(value) if value is not None else default
    if (folder / "config.json").is_file():
        return folder
    if value is None:
        return (
            f"no {what} model given and the default folder {default} does not exist (the shipped models live in "
            f"models/ of a repository checkout; an installed package has none). Pass {flag} DIR, a folder written "
            "by save_pretrained (config.json + model.safetensors), or a checkout's models/ folder. Untrained "
            "(random) weights are never used silently."
        )
    return f"{flag} {value}: not a model folder (no config.json there). Pass a folder written by save_pretrained."


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "class"


def predict_option_problem(args: argparse.Namespace) -> str | None:
    """A one-line message naming the first invalid ``predict`` option that needs no model to check, else None.

    Args:
        args: the parsed ``predict`` options (``k``, ``patch_size``, ``seed``, ``chunk_size``).
    """
    checks = (
        ("--k", args.k, 1, "the number of patches"),
        ("--patch-size", args.patch_size, 1, "a patch side in pixels"),
        ("--seed", args.seed, 0, "the patch sampler's seed"),
        ("--chunk-size", args.chunk_size, 1, "patches per forward pass"),
    )
    for flag, value, low, what in checks:
        if value is not None and value < low:
            return f"{flag} {value}: must be at least {low} ({what})."
    return None


def pipeline_option_problem(pipe: CXRPipeline, args: argparse.Namespace) -> str | None:
    """A one-line message for an option that only the loaded classifier can check (patch size, saliency class).

    Args:
        pipe: the loaded pipeline.
        args: the parsed ``predict`` options (``patch_size``, ``saliency_classes``).

    Returns:
        The message, or None when both are valid for this classifier.
    """
    side = int(pipe.classifier_config.image_size)
    if args.patch_size is not None and args.patch_size > side:
        return f"--patch-size {args.patch_size}: must be at most the classifier frame side, {side}."
    try:
        pipe.resolve_classes(args.saliency_classes, 0)
    except ValueError as exc:
        return f"--saliency-classes {args.saliency_classes}: {exc}"
    return None


def _model_folders(args: argparse.Namespace) -> tuple[dict[str, Path | str], list[str]]:
    """The model folders of the options, and the one-line problems with them (looked at, not loaded)."""
    folders = {
        "segmentation": model_folder(args.segmentation, DEFAULT_SEGMENTATION, "--segmentation", "segmentation"),
        "classifier": model_folder(args.classifier, DEFAULT_CLASSIFIER, "--classifier", "patch classifier"),
    }
    if args.global_classifier is not None:
        folders["global"] = model_folder(args.global_classifier, Path(), "--global-classifier", "global")
    problems = [v for v in folders.values() if isinstance(v, str)]
    if not problems and not args.allow_pickle:
        # the folders are only looked at (no weights read): a pickle checkpoint is refused before anything else
        from ..loading import UnsafeCheckpointError, check_no_pickles

        try:
            for folder in folders.values():
                check_no_pickles(folder)
        except UnsafeCheckpointError as exc:
            problems.append(f"could not build the pipeline: {exc}")
    return folders, problems


def run_predict(args: argparse.Namespace) -> int:
    """Runs the pipeline on one image (result.json + overlay PNGs) or a folder (a CSV). Returns the exit code.

    Checked in this order, each with a one-line error (exit code 2) and before any file is written: the options,
    that the input exists, the model folders (looked at, not loaded: config.json, no pickle checkpoint), the input
    (read, when it is one image), an existing batch CSV without ``--resume``; only then are the models loaded, and
    the options that need them (patch size, saliency classes, the settings of a resumed CSV) checked.
    ``--engine ray`` hands the whole run to :func:`cxr_hub.ray_batch.run_ray_predict` (SOURCE may then also be a
    manifest or a text file of paths).

    Args:
        args: the parsed ``predict`` options.

    Returns:
        The exit code: 0 done, 2 refused (a one-line error on stderr).
    """
    if getattr(args, "engine", "local") == "ray":
        from ..ray_batch import run_ray_predict  # Ray itself is imported only there, and only for this engine

        return run_ray_predict(args)
    problem = predict_option_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not Path(args.image).expanduser().exists():
        # before the image code is even imported. The input is not named: a folder's own name can be a patient's.
        print("error: IMAGE was not found: pass an existing image file or a folder of images.", file=sys.stderr)
        return 2
    batch = is_batch(args.image, args.out)
    folders, problems = _model_folders(args)
    if problems:
        for msg in problems:
            print(f"error: {msg}", file=sys.stderr)
        return 2
    from ..io import load_image

    image = None if batch else load_image(args.image, source_name=source_name(args.image))
    images = batch_inputs(args.image) if batch else []
    out_csv = batch_csv_path(args.out)
    if batch and out_csv.exists() and out_csv.stat().st_size and not args.resume:
        print(
            f"error: {out_csv} already exists: pass --resume to continue that run, or another --out.", file=sys.stderr
        )
        return 2
    from ..pipeline import CXRPipeline

    try:
        pipe = CXRPipeline.from_pretrained(
            folders["segmentation"],
            folders["classifier"],
            folders.get("global"),
            device=args.device,
            precision=args.precision,
            segmentation_precision=args.segmentation_precision,
            sampling=args.sampling or default_sampling(),
            chunk_size=args.chunk_size,
            allow_pickle=args.allow_pickle,
            check_input=not getattr(args, "no_input_check", False),
        )
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: could not build the pipeline: {exc}", file=sys.stderr)
        return 2
    problem = pipeline_option_problem(pipe, args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if batch:
        return run_predict_batch(pipe, args, images)
    return _predict_one(pipe, args, image, folders)


def _predict_one(pipe: CXRPipeline, args: argparse.Namespace, image: np.ndarray, folders: dict[str, Path | str]) -> int:
    """``predict`` on one loaded image: writes result.json and the overlay PNGs, prints the summary lines."""
    from ..visualize import heat_overlay, segmentation_overlay

    # a CXRInputError (the input check refused it, no lung found) becomes one line and exit code 2 in cli.main;
    # source: the colour check reads the colour that load_image turned into gray
    prepared = pipe.prepare(image, source_name=source_name(args.image), source=args.image)
    try:
        result = pipe.analyze(
            prepared, k=args.k, patch_size=args.patch_size, seed=args.seed, saliency_classes=args.saliency_classes
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"segmentation": "segmentation.png"}
    segmentation_overlay(result, prepared.image).save(out / files["segmentation"])
    for name, sal in result.saliency.items():
        files[f"saliency/{name}"] = f"saliency_{_safe_name(name)}.png"
        heat_overlay(sal, prepared.image).save(out / files[f"saliency/{name}"])
    for name, sal in (result.global_saliency or {}).items():
        files[f"global_saliency/{name}"] = f"global_saliency_{_safe_name(name)}.png"
        heat_overlay(sal, prepared.image).save(out / files[f"global_saliency/{name}"])
    summary = result.to_dict()
    # model folders and output names only: never the input path (file names can carry patient names) or DICOM tags
    summary["models"] = {k: str(v) for k, v in folders.items()}
    summary["pipeline"] = pipe.settings()  # sampler and arithmetic: what a re-run must match to reproduce this
    summary["files"] = files
    (out / "result.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    ctr = result.biomarkers.cardiothoracic_ratio
    if result.input_check is not None and not result.input_check.enforced:
        print(f"input check: {result.input_check.csv_values()['input_check']} (--no-input-check)")
    print(f"label: {result.label}  votes: {result.votes}  (k={result.k}, patch {result.patch_size}, seed {args.seed})")
    if result.global_label is not None:
        print(f"global classifier: {result.global_label}")
    print("cardiothoracic ratio: n/a (no heart segmented)" if math.isnan(ctr) else f"cardiothoracic ratio: {ctr:.3f}")
    for w in result.warnings:
        print(f"warning: {w}")
    print(f"wrote {out / 'result.json'} and {len(files)} PNG(s) in {result.timings['total'] / 1e3:.1f} s")
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers ``predict`` on the top-level CLI.

    A declaration of every option, one after the other: long (about 100 lines), but splitting a list of options
    would only scatter it.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    p = subparsers.add_parser(
        "predict",
        help="classify a chest X-ray (result.json + overlay PNGs) or a folder of them (one CSV row per image)",
        description="Segments IMAGE, classifies K random lung patches with majority voting, computes the "
        "probabilistic Grad-CAM (Oh, Park, Ye 2020, eq. 5) and the biomarkers, and writes result.json plus overlay "
        "PNGs. When IMAGE is a folder or --out ends in .csv, every image of the folder (not its sub-folders) gets "
        "one CSV row, written as soon as it is done; unreadable files get a row with their error; --resume skips "
        "images already in the CSV. Rows name images by file name only. Research use only, not a medical device.",
    )
    p.add_argument("image", help="a chest X-ray (PNG, JPEG, BMP, TIFF or DICOM), or a folder of them (batch)")
    p.add_argument(
        "--segmentation",
        default=None,
        help=f"segmentation model folder (default: models/{SHIPPED['segmentation'].folder} in the repository, if it "
        "exists)",
    )
    p.add_argument(
        "--classifier",
        default=None,
        help=f"patch classifier model folder (default: models/{SHIPPED['label4/patch'].folder} in the repository, if "
        "it exists)",
    )
    p.add_argument("--global-classifier", default=None, help="optional global (whole-image) classifier folder")
    p.add_argument(
        "--k", type=int, default=None, help="number of patches, at least 1 (default: the classifier's, paper: 100)"
    )
    p.add_argument(
        "--patch-size", type=int, default=None, help="patch side in the 1024 frame (default: the classifier's, 224)"
    )
    p.add_argument("--seed", type=int, default=0, help="patch sampling seed, 0 or more (default: %(default)s)")
    p.add_argument(
        "--sampling",
        type=sampling_mode,
        default=None,
        help="patch sampler (default: the pipeline's, stable): stable, joint (as in training) or independent (the "
        "authors' code)",
    )
    p.add_argument(
        "--saliency-classes",
        default=None,
        help="'all' or comma-separated class names (default: the predicted class)",
    )
    p.add_argument(
        "--out",
        default="outputs/predict",
        help="output folder, or a .csv file for a batch (default: %(default)s; a batch writes results.csv there)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="batch: continue an interrupted run's CSV (refused when it was made with another --k, --patch-size or "
        "--seed)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load pickle checkpoints (pytorch_model.bin), which can run code when loaded: trusted files only",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default="auto",
        help="classifier precision (default: auto = int8 on x86 CPUs with int8 dot products for calibrated "
        "classifiers, else bf16 where the CPU or GPU has it, else fp32; int8: CPU only, needs a calibrated config)",
    )
    p.add_argument(
        "--segmentation-precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="segmentation precision (default: auto = bf16 where the classifier uses it, with --sampling stable and "
        "without --global-classifier, as validated on real films; fp32 for the network exactly as trained)",
    )
    p.add_argument("--chunk-size", type=int, default=32, help="patches per forward pass (default: %(default)s)")
    p.add_argument(
        "--no-input-check",
        action="store_true",
        help="research override: analyse inputs the input-validity check refuses (a lateral film, a CT slice...); "
        "every result it lets through carries a warning and the check's decision",
    )
    from ..ray_batch import add_ray_arguments  # registers --engine and the Ray options; imports nothing of Ray

    add_ray_arguments(p)
    p.set_defaults(func=run_predict)
