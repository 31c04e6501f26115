"""Image commands of the CLI: ``preprocess`` (the paper's section II-A on one image) and ``predict`` (the pipeline).

``predict`` runs on one image (result.json + overlay PNGs in a folder) or, when IMAGE is a folder or ``--out`` ends
in ``.csv``, on every image of a folder as a batch: one CSV row per image, appended and fsync'ed as a whole line the
moment the image is done, so a killed run loses at most the image in progress and ``--resume`` continues it.

Privacy of batch results: a row names its image by the file name only (no directory, no DICOM header field), since
the file name is the only link from a result back to its image; file names that carry patient names must be
pseudonymised before the run (documented in the README).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .io import SUPPORTED_EXTENSIONS, CXRInputError, load_image
from .patches import DEFAULT_SAMPLING, SAMPLING_MODES
from .preprocessing import preprocess_cxr, resize_image
from .visualize import heat_overlay, segmentation_overlay
from .visualize import to_uint8 as _to_uint8

if TYPE_CHECKING:
    from .pipeline import CXRPipeline

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


def _name_only(exc: CXRInputError, path: str | Path) -> CXRInputError:
    """The error with the input's path cut to its file name: directory names can carry patient names too, and
    stderr often ends up in a log."""
    full = Path(path).expanduser()
    return CXRInputError(str(exc).replace(str(full), full.name))


def is_batch(image: str | Path, out: str | Path) -> bool:
    """``predict`` runs as a batch when IMAGE is a folder or the output is a CSV file."""
    return Path(image).is_dir() or str(out).lower().endswith(".csv")


def run_predict(args: argparse.Namespace) -> int:
    """Runs the pipeline on one image (result.json + overlay PNGs) or a folder (a CSV). Returns the exit code."""
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
            segmentation_precision=args.segmentation_precision,
            sampling=args.sampling,
            chunk_size=args.chunk_size,
            allow_pickle=args.allow_pickle,
        )
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: could not build the pipeline: {exc}", file=sys.stderr)
        return 2
    if is_batch(args.image, args.out):
        return run_predict_batch(pipe, args)
    try:
        prepared = pipe.prepare(args.image)
    except CXRInputError as exc:
        raise _name_only(exc, args.image) from None
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
    print(f"label: {result.label}  votes: {result.votes}  (k={result.k}, patch {result.patch_size}, seed {args.seed})")
    if result.global_label is not None:
        print(f"global classifier: {result.global_label}")
    print("cardiothoracic ratio: n/a (no heart segmented)" if math.isnan(ctr) else f"cardiothoracic ratio: {ctr:.3f}")
    for w in result.warnings:
        print(f"warning: {w}")
    print(f"wrote {out / 'result.json'} and {len(files)} PNG(s) in {result.timings['total'] / 1e3:.1f} s")
    return 0


# ------------------------------------------------------------------------------------------------------- batch

BATCH_CSV_NAME = "results.csv"
_BIOMARKER_COLUMNS = ("cardiothoracic_ratio", "lung_mean_intensity", "lung_std_intensity", "lung_area_fraction")
_STATUS = ("ok", "error")


def batch_inputs(source: str | Path) -> list[Path]:
    """The images a batch run visits, in the order it visits them (sorted by file name).

    A folder contributes its regular, non-hidden files with a supported extension or none at all (DICOM exports
    often have no extension; a file that turns out not to be an image becomes an error row, not a crash).
    Sub-folders are not entered, so a result never needs more than a file name to name its image.

    Raises:
        CXRInputError: ``source`` does not exist.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CXRInputError(f"'{path}' was not found: pass an image file or a folder of images.")
    return sorted(
        (
            p
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and (p.suffix.lower() in SUPPORTED_EXTENSIONS or not p.suffix)
        ),
        key=lambda p: p.name,
    )


def batch_columns(class_names: Sequence[str]) -> list[str]:
    """CSV header of a batch run for a classifier's classes."""
    return [
        "file",
        "status",
        "label",
        *(f"votes_{c}" for c in class_names),
        *(f"probability_{c}" for c in class_names),
        "global_label",
        *_BIOMARKER_COLUMNS,
        "k",
        "patch_size",
        "seed",
        "warnings",
        "error",
    ]


def _number(value: float | None) -> str:
    # fixed precision: the same image gives the same text, so a resumed CSV equals an uninterrupted one
    return "" if value is None or not math.isfinite(value) else f"{value:.6f}"


def _csv_line(values: Sequence[Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue().encode("utf-8")


def _append_line(fd: int, line: bytes) -> None:
    """Appends one whole line and makes it durable before the next image starts (O_APPEND + fsync)."""
    view = memoryview(line)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _read_done(path: Path, header: list[str]) -> set[str]:
    """File names already in a batch CSV; drops a torn last row (a run killed mid-write) by rewriting the file.

    Raises:
        ValueError: the CSV has other columns (another classifier or an unrelated file).
    """
    text = path.read_bytes().decode("utf-8", errors="replace")
    if not text:
        return set()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or rows[0] != header:
        raise ValueError(
            f"{path} does not have the columns of this run (other classifier classes, or not a cxr-hub batch CSV). "
            "Pass another --out, or delete the file to start over."
        )
    complete = [r for r in rows[1:] if len(r) == len(header) and r[1] in _STATUS]
    if not text.endswith("\n") or len(complete) != len(rows) - 1:
        # Only the last row can be torn (each row is one append); keep what is whole, atomically.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_csv_line(header) + b"".join(_csv_line(r) for r in complete))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return {r[0] for r in complete}


def _result_row(pipe: CXRPipeline, path: Path, args: argparse.Namespace) -> list[Any]:
    names = pipe.class_names
    prepared = pipe.prepare(str(path))
    r = pipe.analyze(
        prepared, k=args.k, patch_size=args.patch_size, seed=args.seed, saliency_classes=args.saliency_classes
    )
    b = r.biomarkers
    return [
        path.name,
        "ok",
        r.label,
        *(r.votes[c] for c in names),
        *(_number(r.probabilities[c]) for c in names),
        r.global_label or "",
        *(_number(getattr(b, c)) for c in _BIOMARKER_COLUMNS),
        r.k,
        r.patch_size,
        args.seed,
        " | ".join(r.warnings),
        "",
    ]


def run_predict_batch(pipe: CXRPipeline, args: argparse.Namespace) -> int:
    """``predict`` over a folder (or one image) into a CSV, one fsync'ed row per image; see the module docstring.

    Images the pipeline refuses (any :class:`CXRInputError`: corrupt, not an image, no lung found) become rows with
    status ``error`` and the message, which names the file by its name only. With ``--resume`` images already in the
    CSV are skipped; without it an existing non-empty CSV is refused rather than overwritten (exit code 2).
    """
    from tqdm import tqdm

    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        out = out / BATCH_CSV_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    images = batch_inputs(args.image)
    header = batch_columns(pipe.class_names)
    if out.exists() and out.stat().st_size and not args.resume:
        print(f"error: {out} already exists: pass --resume to continue that run, or another --out.", file=sys.stderr)
        return 2
    try:
        done = _read_done(out, header) if out.exists() else set()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    todo = [p for p in images if p.name not in done]
    counts = {"ok": 0, "error": 0}
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            _append_line(fd, _csv_line(header))
        # no file names in the bar: a terminal log is an output too
        for path in tqdm(todo, total=len(images), initial=len(images) - len(todo), unit="image", file=sys.stderr):
            try:
                row = _result_row(pipe, path, args)
            except CXRInputError as exc:
                row = [path.name, "error", *[""] * (len(header) - 3), str(_name_only(exc, path))]
            counts[row[1]] += 1
            _append_line(fd, _csv_line(row))
    finally:
        os.close(fd)
    print(
        f"wrote {out}: {counts['ok']} analysed, {counts['error']} refused (status 'error' rows), "
        f"{len(images) - len(todo)} already there"
    )
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
        "--sampling",
        choices=SAMPLING_MODES,
        default=DEFAULT_SAMPLING,
        help="patch sampler (default: %(default)s): stable, joint (as in training) or independent (the authors' code)",
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
    p.add_argument("--resume", action="store_true", help="batch: continue an interrupted run's CSV")
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
    p.set_defaults(func=run_predict)
