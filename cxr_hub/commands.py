"""Image commands of the CLI: ``preprocess`` (the paper's section II-A on one image)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .io import load_image
from .preprocessing import preprocess_cxr, resize_image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max scales any gray image to uint8 for viewing (not for analysis)."""
    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(image)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


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
