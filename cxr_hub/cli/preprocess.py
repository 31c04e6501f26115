"""``preprocess``: the paper's section II-A on one image (float32 → histogram equalisation → gamma), as PNGs.

Writes the loaded image, its preprocessed version and the segmentation input, and ``preprocess.json`` with pixel
statistics only (never a header field: a DICOM's patient identifiers must not leave the process). The options are
checked before anything is read or written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .names import source_name

__all__ = ["MAX_GAMMA", "PREPROCESS_SIZES", "add_parser", "run_preprocess"]

#: ``preprocess --size`` bounds: below 32 px nothing of a lung is left; above 4096 px the segmentation input would be
#: larger than any film (and 100000 asks for 40 GB).
PREPROCESS_SIZES = (32, 4096)
#: ``preprocess --gamma`` upper bound (the paper uses 0.5; 1 = none); 0 and negative exponents are undefined on black.
MAX_GAMMA = 10.0


def _preprocess_problem(args: argparse.Namespace) -> str | None:
    """A one-line message naming the first invalid ``preprocess`` option, else None."""
    low, high = PREPROCESS_SIZES
    if not low <= args.size <= high:
        return f"--size {args.size}: must be from {low} to {high} pixels (the segmentation input side; paper: 256)."
    if not (math.isfinite(args.gamma) and 0 < args.gamma <= MAX_GAMMA):
        return f"--gamma {args.gamma:g}: must be above 0 and at most {MAX_GAMMA:g} (paper: 0.5; 1 = no correction)."
    return None


def run_preprocess(args: argparse.Namespace) -> int:
    """Writes the loaded image, its preprocessed version and the 256x256 segmentation input as PNGs + a JSON.

    Args:
        args: the parsed ``preprocess`` options.

    Returns:
        The exit code: 0 written, 2 an invalid option (one line on stderr, nothing written).
    """
    problem = _preprocess_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import numpy as np
    from PIL import Image

    from ..io import load_image
    from ..preprocessing import preprocess_cxr, resize_image
    from ..visualize import to_uint8 as _to_uint8

    image = load_image(args.image, source_name=source_name(args.image))
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


def add_parser(subparsers: Any) -> None:
    """Registers ``preprocess`` on the top-level CLI.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    p = subparsers.add_parser(
        "preprocess",
        help="apply the paper's preprocessing to one image and write PNGs",
        description="Loads IMAGE (PNG/JPEG/BMP/TIFF/DICOM), applies float32 → histogram equalisation → gamma 0.5, "
        "and writes the original, the preprocessed image and the 256x256 segmentation input as PNGs.",
    )
    p.add_argument("image", help="path to a chest X-ray (PNG, JPEG, BMP, TIFF or DICOM)")
    p.add_argument("--out", default="outputs/preprocess", help="output folder (default: %(default)s)")
    p.add_argument(
        "--gamma",
        type=float,
        default=0.5,
        help=f"gamma exponent, above 0 and at most {MAX_GAMMA:g} (default: %(default)s, 1 = none)",
    )
    p.add_argument("--no-equalize", action="store_true", help="skip histogram equalisation (min-max instead)")
    p.add_argument(
        "--size",
        type=int,
        default=256,
        help=f"segmentation input side, {PREPROCESS_SIZES[0]} to {PREPROCESS_SIZES[1]} (default: %(default)s)",
    )
    p.set_defaults(func=run_preprocess)
