"""Calibrate a trained classifier for int8 inference on x86 CPUs, and store the calibration in its config.

Static int8 quantisation needs every activation's range, measured once on real inputs
(:func:`cxr_hub.runtime.int8.calibrate_int8`). This script feeds the classifier what it sees at inference, from
**training-split** films only (the test split stays unseen):

* a patch classifier: ``--patches`` patches of each of ``--films`` films, drawn by the pipeline's own sampler from the
  shipped segmentation's lung mask, cropped and resized exactly as the pipeline does;
* a global classifier: the whole lung-masked image of each of ``--films`` films, at the network's input size.

The calibration (a few dozen scales and zero points) is written into the model folder's ``config.json`` as
``int8_calibration`` with ``save_pretrained``: the weights are not touched, and loading stays pickle-free. The
pipeline's "auto" precision then runs that classifier in int8 on CPUs with int8 dot products
(:func:`cxr_hub.runtime.hardware.cpu_has_int8`).

Usage:
    python -m training.calibrate_int8 --classifier models/cxr-patch-resnet18 [--films 24 --patches 32 --seed 1]
    python -m training.calibrate_int8 --classifier models/cxr-global-resnet18 --films 128
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    from cxr_hub.evaluation.classification import DEFAULT_SEGMENTATION

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", required=True, help="classifier folder (its config.json gains the calibration)")
    parser.add_argument("--segmentation", default=str(DEFAULT_SEGMENTATION))
    parser.add_argument("--manifest", default=str(REPO_ROOT.parent / "shared" / "data" / "cxr" / "manifest.csv"))
    parser.add_argument("--split-file", default=str(REPO_ROOT / "training" / "splits" / "splits_seed0.json"))
    parser.add_argument("--films", type=int, default=None, help="training films (default: 24 patch, 128 global)")
    parser.add_argument("--patches", type=int, default=32, help="patches per film (patch classifiers)")
    parser.add_argument("--seed", type=int, default=1, help="film choice and patch draw")
    parser.add_argument("--dry-run", action="store_true", help="measure and print, do not write config.json")
    args = parser.parse_args(argv)
    for name in ("films", "patches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    return args


def training_films(manifest: str, split_file: str, task: str, n: int, seed: int) -> list[Any]:
    """``n`` labelled films of the classification training split, chosen at random with ``seed``."""
    from cxr_hub.evaluation.selection import select_rows
    from cxr_hub.manifest import read_manifest, resolve_manifest

    rows = [r for r in read_manifest(resolve_manifest(manifest)) if r.label(task)]
    rows = select_rows(rows, split_file, "classification:train")
    if not rows:
        raise SystemExit(f"no labelled {task} films in the training split of {split_file}")
    pick = np.random.default_rng(seed).choice(len(rows), min(n, len(rows)), replace=False)
    return [rows[i] for i in sorted(pick)]


def calibration_batches(pipe: Any, model: Any, films: list[Any], patches: int, seed: int) -> Iterator[torch.Tensor]:
    """What ``model`` sees at inference, one film at a time: (patches, 1, S, S) or (1, 1, S, S) normalised input."""
    from cxr_hub.io import CXRInputError
    from cxr_hub.patches import crop_patches

    cfg = model.config
    for row in tqdm(films, desc="calibration films", unit="film"):
        try:
            prepared = pipe.prepare(row.image)
        except CXRInputError as exc:
            tqdm.write(f"skipped {row.id}: {exc}")
            continue
        if cfg.mode == "patch":
            sample = pipe.sample_patches(prepared, k=patches, seed=seed)
            frame = torch.as_tensor(prepared.frame, dtype=torch.float32)
            yield crop_patches(frame, sample.boxes_1024, cfg.input_size)
        else:
            yield torch.from_numpy(pipe.global_frame(prepared, cfg))[None, None]


def main(argv: list[str] | None = None) -> int:
    """CLI entry; 0 on success."""
    from cxr_hub.loading import load_model
    from cxr_hub.pipeline import CXRPipeline
    from cxr_hub.runtime.int8 import calibrate_int8

    args = parse_args(argv)
    model = load_model(args.classifier)
    cfg = model.config
    if getattr(cfg, "model_type", None) != "cxr_patch_classifier":
        raise SystemExit(f"{args.classifier} is not a cxr-hub classifier (model_type {cfg.model_type!r})")
    films = args.films or (24 if cfg.mode == "patch" else 128)
    rows = training_films(args.manifest, args.split_file, cfg.label_set, films, args.seed)
    # the shipped segmentation in fp32, as for training caches: calibration must not depend on the CPU it ran on
    seg = load_model(args.segmentation)
    frame_config = cfg if cfg.mode == "patch" else None
    pipe = CXRPipeline(seg, None, device="cpu", segmentation_precision="fp32", frame_config=frame_config)
    described = (
        f"{len(rows)} {cfg.label_set} training-split films (seed {args.seed})"
        + (f", {args.patches} patches each from the pipeline's sampler" if cfg.mode == "patch" else ", whole images")
        + f", segmentation {Path(args.segmentation).name}"
    )
    calibration = calibrate_int8(model, calibration_batches(pipe, model, rows, args.patches, args.seed), described)
    print(f"{args.classifier}: {len(calibration['activations'])} activations from {calibration['inputs']} inputs")
    if args.dry_run:
        return 0
    cfg.int8_calibration = calibration
    cfg.save_pretrained(args.classifier)
    print(f"wrote int8_calibration into {Path(args.classifier) / 'config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
