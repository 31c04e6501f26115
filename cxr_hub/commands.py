"""Image commands of the CLI: ``preprocess`` (the paper's section II-A on one image) and ``predict`` (the pipeline)."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .io import load_image
from .preprocessing import preprocess_cxr, resize_image
from .visualize import heat_overlay, segmentation_overlay
from .visualize import to_uint8 as _to_uint8

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEGMENTATION = REPO_ROOT / "models" / "cxr-lung-seg-fcdensenet103"
DEFAULT_CLASSIFIER = REPO_ROOT / "models" / "cxr-patch-resnet18"


def run_preprocess(args: argparse.Namespace) -> int:
    """Writes the loaded image, its preprocessed version and the 256x256 segmentation input as PNGs + a JSON."""
    image = load_image(args.image)
    pre = preprocess_cxr(image, equalize=not args.no_equalize, gamma=None if args.gamma == 1 else args.gamma)
    seg_input = resize_image(pre, args.size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "original": out / "original.png",
        "preprocessed": out / "preprocessed.png",
        "segmentation_input": out / f"segmentation_input_{args.size}.png",
    }
    Image.fromarray(_to_uint8(image)).save(files["original"])
    Image.fromarray(np.clip(np.rint(pre), 0, 255).astype(np.uint8)).save(files["preprocessed"])
    Image.fromarray(np.clip(np.rint(seg_input), 0, 255).astype(np.uint8)).save(files["segmentation_input"])
    # only pixel statistics: never header fields (a DICOM's patient identifiers must not leave the process)
    summary: dict[str, Any] = {
        "original_size": {"height": int(image.shape[0]), "width": int(image.shape[1])},
        "original_range": [float(image.min()), float(image.max())],
        "preprocessed_mean": float(pre.mean()),
        "preprocessed_std": float(pre.std()),
        "steps": ["float32", "histogram_equalisation" if not args.no_equalize else "min_max", f"gamma={args.gamma}"],
        "segmentation_input_size": args.size,
        "files": {k: v.name for k, v in files.items()},
    }
    (out / "preprocess.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def _model_folder(value: str | None, default: Path, flag: str, what: str) -> Path | str:
    """The model folder for ``flag``, or an error message (str) when it is missing."""
    folder = Path(value) if value is not None else default
    if (folder / "config.json").is_file():
        return folder
    if value is None:
        return (
            f"no {what} model given and the default folder {default} does not exist: cxr-hub ships no trained models "
            f"yet. Train one (see training/) or pass {flag} DIR, a folder written by save_pretrained "
            "(config.json + model.safetensors). Untrained (random) weights are never used silently."
        )
    return f"{flag} {value}: not a model folder (no config.json there). Pass a folder written by save_pretrained."


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "class"


def run_predict(args: argparse.Namespace) -> int:
    """Runs the pipeline on one image; writes result.json and overlay PNGs. Returns the exit code."""
    folders = {
        "segmentation": _model_folder(args.segmentation, DEFAULT_SEGMENTATION, "--segmentation", "segmentation"),
        "classifier": _model_folder(args.classifier, DEFAULT_CLASSIFIER, "--classifier", "patch classifier"),
    }
    if args.global_classifier is not None:
        folders["global"] = _model_folder(args.global_classifier, Path(), "--global-classifier", "global")
    problems = [v for v in folders.values() if isinstance(v, str)]
    if problems:
        for msg in problems:
            print(f"error: {msg}", file=sys.stderr)
        return 2
    from .pipeline import CXRPipeline

    try:
        pipe = CXRPipeline.from_pretrained(
            folders["segmentation"],
            folders["classifier"],
            folders.get("global"),
            device=args.device,
            precision=args.precision,
            chunk_size=args.chunk_size,
        )
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: could not build the pipeline: {exc}", file=sys.stderr)
        return 2
    prepared = pipe.prepare(args.image)
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
    summary["files"] = files
    (out / "result.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    ctr = result.biomarkers.cardiothoracic_ratio
    print(f"label: {result.label}  votes: {result.votes}  (k={result.k}, patch {result.patch_size}, seed {args.seed})")
    if result.global_label is not None:
        print(f"global classifier: {result.global_label}")
    print("cardiothoracic ratio: n/a (no heart segmented)" if math.isnan(ctr) else f"cardiothoracic ratio: {ctr:.3f}")
    for w in result.warnings:
        print(f"warning: {w}")
    print(f"wrote {out / 'result.json'} and {len(files)} PNG(s) in {result.timings['total'] / 1e3:.1f} s")
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers the image commands on the top-level CLI."""
    p = subparsers.add_parser(
        "preprocess",
        help="apply the paper's preprocessing to one image and write PNGs",
        description="Loads IMAGE (PNG/JPEG/BMP/TIFF/DICOM), applies float32 → histogram equalisation → gamma 0.5, "
        "and writes the original, the preprocessed image and the 256x256 segmentation input as PNGs.",
    )
    p.add_argument("image", help="path to a chest X-ray (PNG, JPEG, BMP, TIFF or DICOM)")
    p.add_argument("--out", default="outputs/preprocess", help="output folder (default: %(default)s)")
    p.add_argument("--gamma", type=float, default=0.5, help="gamma exponent (default: %(default)s, 1 = none)")
    p.add_argument("--no-equalize", action="store_true", help="skip histogram equalisation (min-max instead)")
    p.add_argument("--size", type=int, default=256, help="segmentation input side (default: %(default)s)")
    p.set_defaults(func=run_preprocess)

    p = subparsers.add_parser(
        "predict",
        help="classify one chest X-ray with the patch pipeline and write result.json + overlay PNGs",
        description="Segments IMAGE, classifies K random lung patches with majority voting, computes the "
        "probabilistic Grad-CAM (Oh, Park, Ye 2020, eq. 5) and the biomarkers, and writes result.json plus overlay "
        "PNGs. Research use only, not a medical device.",
    )
    p.add_argument("image", help="path to a chest X-ray (PNG, JPEG, BMP, TIFF or DICOM)")
    p.add_argument(
        "--segmentation",
        default=None,
        help="segmentation model folder (default: models/cxr-lung-seg-fcdensenet103 in the repository, if it exists)",
    )
    p.add_argument(
        "--classifier",
        default=None,
        help="patch classifier model folder (default: models/cxr-patch-resnet18 in the repository, if it exists)",
    )
    p.add_argument("--global-classifier", default=None, help="optional global (whole-image) classifier folder")
    p.add_argument("--k", type=int, default=None, help="number of patches (default: the classifier's, paper: 100)")
    p.add_argument(
        "--patch-size", type=int, default=None, help="patch side in the 1024 frame (default: the classifier's, 224)"
    )
    p.add_argument("--seed", type=int, default=0, help="patch sampling seed (default: %(default)s)")
    p.add_argument(
        "--saliency-classes",
        default=None,
        help="'all' or comma-separated class names (default: the predicted class)",
    )
    p.add_argument("--out", default="outputs/predict", help="output folder (default: %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="classifier precision (default: auto)"
    )
    p.add_argument("--chunk-size", type=int, default=32, help="patches per forward pass (default: %(default)s)")
    p.set_defaults(func=run_predict)
