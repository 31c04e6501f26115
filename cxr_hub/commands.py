"""Image commands of the CLI: ``preprocess`` (the paper's section II-A on one image) and ``predict`` (the pipeline).

``predict`` runs on one image (result.json + overlay PNGs in a folder) or, when IMAGE is a folder or ``--out`` ends
in ``.csv``, on every image of a folder as a batch: one CSV row per image, appended and fsync'ed as a whole line the
moment the image is done, so a killed run loses at most the image in progress and ``--resume`` continues it (and
refuses a CSV made with another K, patch size or seed, whose rows would not be comparable).

Privacy of batch results: a row names its image by the file name only (no directory, no DICOM header field), since
the file name is the only link from a result back to its image; file names that carry patient names must be
pseudonymised before the run (documented in the README). A file name that is not valid UTF-8 (Linux allows any
bytes in a name) is written with each undecodable byte as a ``\\xNN`` escape (``bad\\xffname.jpg``), as Python's
``backslashreplace`` writes it; ``--resume`` matches that escaped form.

Every option is checked and the input is found (and, for one image, read) before a model is loaded or a file is
written: a typo costs a one-line error, not a model load, and never leaves a half-made output behind. torch,
transformers and the pipeline are imported inside the functions that need them, so the CLI starts fast.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .presets import default_folder

if TYPE_CHECKING:
    import numpy as np

    from .io import CXRInputError
    from .pipeline import CXRPipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEGMENTATION = default_folder("segmentation")
DEFAULT_CLASSIFIER = default_folder("label4/patch")

#: ``preprocess --size`` bounds: below 32 px nothing of a lung is left; above 4096 px the segmentation input would be
#: larger than any film (and 100000 asks for 40 GB).
PREPROCESS_SIZES = (32, 4096)
#: ``preprocess --gamma`` upper bound (the paper uses 0.5; 1 = none); 0 and negative exponents are undefined on black.
MAX_GAMMA = 10.0


def sampling_mode(value: str) -> str:
    """argparse ``type`` of ``--sampling``: a patch sampler name of :data:`cxr_hub.patches.SAMPLING_MODES`.

    A type rather than ``choices``: the list lives with torch in :mod:`cxr_hub.patches`, which is imported only when
    the option is given, so parsing a command line stays fast.
    """
    from .patches import SAMPLING_MODES

    if value not in SAMPLING_MODES:
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(SAMPLING_MODES)})")
    return value


def default_sampling() -> str:
    """The pipeline's default patch sampler (``--sampling`` left out)."""
    from .patches import DEFAULT_SAMPLING

    return DEFAULT_SAMPLING


def _escape(text: str) -> str:
    """``text`` as valid UTF-8: a file name's undecodable bytes (lone surrogates on Linux) become ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte: Python's own \\udXXX escape
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _row_name(path: Path) -> str:
    """A file's name as rows and messages write it: undecodable bytes become ``\\xNN`` (see the module docstring)."""
    return _escape(path.name)


def _source_name(path: str | Path) -> str:
    """How messages name an input file: by its name only (directory names can carry patient names too); a folder
    given where a file is wanted is not named at all (its own name can be a patient's)."""
    return "IMAGE" if Path(path).is_dir() else f"File '{_row_name(Path(path))}'"


def _preprocess_problem(args: argparse.Namespace) -> str | None:
    """A one-line message naming the first invalid ``preprocess`` option, else None."""
    low, high = PREPROCESS_SIZES
    if not low <= args.size <= high:
        return f"--size {args.size}: must be from {low} to {high} pixels (the segmentation input side; paper: 256)."
    if not (math.isfinite(args.gamma) and 0 < args.gamma <= MAX_GAMMA):
        return f"--gamma {args.gamma:g}: must be above 0 and at most {MAX_GAMMA:g} (paper: 0.5; 1 = no correction)."
    return None


def run_preprocess(args: argparse.Namespace) -> int:
    """Writes the loaded image, its preprocessed version and the 256x256 segmentation input as PNGs + a JSON."""
    problem = _preprocess_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import numpy as np
    from PIL import Image

    from .io import load_image
    from .preprocessing import preprocess_cxr, resize_image
    from .visualize import to_uint8 as _to_uint8

    image = load_image(args.image, source_name=_source_name(args.image))
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
    from .io import CXRInputError

    full = Path(path).expanduser()
    return CXRInputError(str(exc).replace(str(full), _row_name(full)))


def is_batch(image: str | Path, out: str | Path) -> bool:
    """``predict`` runs as a batch when IMAGE is a folder or the output is a CSV file."""
    return Path(image).is_dir() or str(out).lower().endswith(".csv")


def batch_csv_path(out: str | Path) -> Path:
    """The CSV a batch writes: ``--out`` itself when it ends in .csv, else ``results.csv`` in that folder."""
    path = Path(out)
    return path if path.suffix.lower() == ".csv" else path / BATCH_CSV_NAME


def predict_option_problem(args: argparse.Namespace) -> str | None:
    """A one-line message naming the first invalid ``predict`` option that needs no model to check, else None."""
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


def _pipeline_option_problem(pipe: CXRPipeline, args: argparse.Namespace) -> str | None:
    """A one-line message for an option that only the loaded classifier can check (patch size, saliency class)."""
    side = int(pipe.classifier_config.image_size)
    if args.patch_size is not None and args.patch_size > side:
        return f"--patch-size {args.patch_size}: must be at most the classifier frame side, {side}."
    try:
        pipe.resolve_classes(args.saliency_classes, 0)
    except ValueError as exc:
        return f"--saliency-classes {args.saliency_classes}: {exc}"
    return None


def run_predict(args: argparse.Namespace) -> int:
    """Runs the pipeline on one image (result.json + overlay PNGs) or a folder (a CSV). Returns the exit code.

    Checked in this order, each with a one-line error (exit code 2) and before any file is written: the options,
    that the input exists, the model folders (looked at, not loaded: config.json, no pickle checkpoint), the input
    (read, when it is one image), an existing batch CSV without ``--resume``; only then are the models loaded, and
    the options that need them (patch size, saliency classes, the settings of a resumed CSV) checked.
    ``--engine ray`` hands the whole run to :func:`cxr_hub.ray_batch.run_ray_predict` (SOURCE may then also be a
    manifest or a text file of paths).
    """
    if getattr(args, "engine", "local") == "ray":
        from .ray_batch import run_ray_predict  # Ray itself is imported only there, and only for this engine

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
    folders = {
        "segmentation": _model_folder(args.segmentation, DEFAULT_SEGMENTATION, "--segmentation", "segmentation"),
        "classifier": _model_folder(args.classifier, DEFAULT_CLASSIFIER, "--classifier", "patch classifier"),
    }
    if args.global_classifier is not None:
        folders["global"] = _model_folder(args.global_classifier, Path(), "--global-classifier", "global")
    problems = [v for v in folders.values() if isinstance(v, str)]
    if not problems and not args.allow_pickle:
        # the folders are only looked at (no weights read): a pickle checkpoint is refused before anything else
        from .loading import UnsafeCheckpointError, check_no_pickles

        try:
            for folder in folders.values():
                check_no_pickles(folder)
        except UnsafeCheckpointError as exc:
            problems.append(f"could not build the pipeline: {exc}")
    if problems:
        for msg in problems:
            print(f"error: {msg}", file=sys.stderr)
        return 2
    from .io import load_image

    image = None if batch else load_image(args.image, source_name=_source_name(args.image))
    images = batch_inputs(args.image) if batch else []
    out_csv = batch_csv_path(args.out)
    if batch and out_csv.exists() and out_csv.stat().st_size and not args.resume:
        print(
            f"error: {out_csv} already exists: pass --resume to continue that run, or another --out.", file=sys.stderr
        )
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
            sampling=args.sampling or default_sampling(),
            chunk_size=args.chunk_size,
            allow_pickle=args.allow_pickle,
            check_input=not getattr(args, "no_input_check", False),
        )
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: could not build the pipeline: {exc}", file=sys.stderr)
        return 2
    problem = _pipeline_option_problem(pipe, args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if batch:
        return run_predict_batch(pipe, args, images)
    from .visualize import heat_overlay, segmentation_overlay

    # a CXRInputError (the input check refused it, no lung found) becomes one line and exit code 2 in cli.main;
    # source: the colour check reads the colour that load_image turned into gray
    prepared = pipe.prepare(image, source_name=_source_name(args.image), source=args.image)
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


# ------------------------------------------------------------------------------------------------------- batch

BATCH_CSV_NAME = "results.csv"
_BIOMARKER_COLUMNS = ("cardiothoracic_ratio", "lung_mean_intensity", "lung_std_intensity", "lung_area_fraction")
_STATUS = ("ok", "error")
#: Columns that record how a row was made; a resumed CSV must have been made with the same values.
_SETTINGS_COLUMNS = ("k", "patch_size", "seed")


def batch_inputs(source: str | Path) -> list[Path]:
    """The images a batch run visits, in the order it visits them (sorted by file name).

    A folder contributes its regular, non-hidden files with a supported extension or none at all (DICOM exports
    often have no extension; a file that turns out not to be an image becomes an error row, not a crash).
    Sub-folders are not entered, so a result never needs more than a file name to name its image.

    Raises:
        CXRInputError: ``source`` does not exist (the message does not name it: a folder's name can be a patient's).
    """
    from .io import SUPPORTED_EXTENSIONS, CXRInputError

    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CXRInputError("The input was not found: pass an image file or a folder of images.")
    return sorted(
        (
            p
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and (p.suffix.lower() in SUPPORTED_EXTENSIONS or not p.suffix)
        ),
        key=lambda p: p.name,
    )


def batch_columns(class_names: Sequence[str]) -> list[str]:
    """CSV header of a batch run for a classifier's classes (with the input check's scores, before the warnings)."""
    from .validity import CSV_COLUMNS as VALIDITY_COLUMNS  # the check's module loads numpy and cv2: import on call

    return [
        "file",
        "status",
        "label",
        *(f"votes_{c}" for c in class_names),
        *(f"probability_{c}" for c in class_names),
        "global_label",
        *_BIOMARKER_COLUMNS,
        *_SETTINGS_COLUMNS,
        *VALIDITY_COLUMNS,
        "warnings",
        "error",
    ]


def _number(value: float | None) -> str:
    # fixed precision: the same image gives the same text, so a resumed CSV equals an uninterrupted one
    return "" if value is None or not math.isfinite(value) else f"{value:.6f}"


def _csv_line(values: Sequence[Any]) -> bytes:
    buf = io.StringIO()
    # every text cell escaped: a file name (or a message quoting it) may hold bytes that are not UTF-8
    csv.writer(buf, lineterminator="\n").writerow([_escape(v) if isinstance(v, str) else v for v in values])
    return buf.getvalue().encode("utf-8")


def _append_line(fd: int, line: bytes) -> None:
    """Appends one whole line and makes it durable before the next image starts (O_APPEND + fsync)."""
    view = memoryview(line)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _read_rows(path: Path, header: list[str]) -> tuple[list[list[str]], bool]:
    """The whole rows of a batch CSV, and whether its last row is torn (a run killed mid-write). Writes nothing.

    Raises:
        ValueError: the CSV has other columns (another classifier or an unrelated file).
    """
    text = path.read_bytes().decode("utf-8", errors="replace")
    if not text:
        return [], False
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or rows[0] != header:
        raise ValueError(
            f"{path} does not have the columns of this run (other classifier classes, or not a cxr-hub batch CSV). "
            "Pass another --out, or delete the file to start over."
        )
    complete = [r for r in rows[1:] if len(r) == len(header) and r[1] in _STATUS]
    return complete, not text.endswith("\n") or len(complete) != len(rows) - 1


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Writes ``path`` through a temporary file in its folder, fsync'ed and renamed: whole or absent, never torn.

    Args:
        path: the file to (re)place.
        write: called with the temporary file, opened for binary writing.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power cut
    finally:
        os.close(dir_fd)


def _rewrite(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Replaces the CSV by its header and ``rows``, atomically (drops a torn last row; each row is one append)."""
    atomic_write(path, lambda f: f.write(_csv_line(header) + b"".join(_csv_line(r) for r in rows)))


def _settings_problem(path: Path, header: list[str], rows: list[list[str]], wanted: dict[str, str]) -> str | None:
    """A message when a row of the CSV was made with other settings than ``wanted`` (column → value), else None."""

    def show(values: dict[str, str]) -> str:
        return f"--k {values['k']} --patch-size {values['patch_size']} --seed {values['seed']}"

    index = {c: header.index(c) for c in _SETTINGS_COLUMNS}
    for row in rows:
        made = {c: row[i] for c, i in index.items()}
        if any(made[c] and made[c] != wanted[c] for c in _SETTINGS_COLUMNS):
            return (
                f"--resume: {path} was made with {show(made)}, this run asks for {show(wanted)}: its rows would not be "
                "comparable. Pass the same options to continue it, or another --out to start a new CSV."
            )
    return None


def _result_row(pipe: CXRPipeline, image: str | Path | np.ndarray, name: str, args: argparse.Namespace) -> list[Any]:
    """The cells of one analysed image's row (raises the pipeline's CXRInputError for a refused one).

    Args:
        image: the image file (or a decoded array); a path lets the input check read an RGB file's colour.
        name: the row's name (:func:`_row_name`).
    """
    names = pipe.class_names
    subject = _source_name(image) if isinstance(image, str | Path) else None
    prepared = pipe.prepare(image, source_name=subject)
    r = pipe.analyze(
        prepared, k=args.k, patch_size=args.patch_size, seed=args.seed, saliency_classes=args.saliency_classes
    )
    b = r.biomarkers
    return [
        name,
        "ok",
        r.label,
        *(r.votes[c] for c in names),
        *(_number(r.probabilities[c]) for c in names),
        r.global_label or "",
        *(_number(getattr(b, c)) for c in _BIOMARKER_COLUMNS),
        r.k,
        r.patch_size,
        args.seed,
        *_validity_cells(r.input_check).values(),
        " | ".join(r.warnings),
        "",
    ]


def _validity_cells(report: Any) -> dict[str, str]:
    """The ``cxr_hub.validity.CSV_COLUMNS`` cells of a validity report (all empty without one)."""
    from .validity import CSV_COLUMNS

    return dict.fromkeys(CSV_COLUMNS, "") if report is None else report.csv_values()


def error_cells(exc: CXRInputError) -> dict[str, str]:
    """The cells a refused image's row adds to its name, status, settings and message.

    A refusal of the input-validity check records every score measured before it (which check failed and by how
    much is what a batch user sorts on); other errors (unreadable file, no lung) record nothing more.
    """
    from .validity import NotAFrontalCXRError

    return _validity_cells(exc.report) if isinstance(exc, NotAFrontalCXRError) else {}


def run_predict_batch(pipe: CXRPipeline, args: argparse.Namespace, images: Sequence[Path] | None = None) -> int:
    """``predict`` over a folder (or one image) into a CSV, one fsync'ed row per image; see the module docstring.

    Images the pipeline refuses (any :class:`CXRInputError`: corrupt, not an image, no lung found) become rows with
    status ``error`` and the message, which names the file by its name only; they record the run's settings too.
    With ``--resume`` images already in the CSV are skipped, once the CSV is found to have this run's columns and
    to have been made with the same ``--k``, ``--patch-size`` and ``--seed``; without ``--resume`` an existing
    non-empty CSV is refused rather than overwritten. Refusals exit with code 2 and write nothing.

    Args:
        pipe: the loaded pipeline.
        args: the parsed ``predict`` options.
        images: the inputs, from :func:`batch_inputs` (computed from ``args.image`` when None).

    Returns:
        The exit code.
    """
    from tqdm import tqdm

    from .io import CXRInputError

    out = batch_csv_path(args.out)
    images = batch_inputs(args.image) if images is None else list(images)
    header = batch_columns(pipe.class_names)
    if out.exists() and out.stat().st_size and not args.resume:
        print(f"error: {out} already exists: pass --resume to continue that run, or another --out.", file=sys.stderr)
        return 2
    cfg = pipe.classifier_config
    settings = {
        "k": str(args.k if args.k is not None else cfg.num_patches),
        "patch_size": str(args.patch_size if args.patch_size is not None else cfg.patch_size),
        "seed": str(args.seed),
    }
    try:
        done_rows, torn = _read_rows(out, header) if out.exists() else ([], False)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = _settings_problem(out, header, done_rows, settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    if torn:
        _rewrite(out, header, done_rows)
    done = {r[0] for r in done_rows}
    todo = [p for p in images if _row_name(p) not in done]
    counts = {"ok": 0, "error": 0}
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            _append_line(fd, _csv_line(header))
        # no file names in the bar: a terminal log is an output too
        for path in tqdm(todo, total=len(images), initial=len(images) - len(todo), unit="image", file=sys.stderr):
            name = _row_name(path)
            try:
                row = _result_row(pipe, path, name, args)
            except CXRInputError as exc:
                cells = dict.fromkeys(header, "") | settings | error_cells(exc)
                cells |= {"file": name, "status": "error", "error": str(exc)}
                row = [cells[c] for c in header]
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
    from .ray_batch import add_ray_arguments  # registers --engine and the Ray options; imports nothing of Ray

    add_ray_arguments(p)
    p.set_defaults(func=run_predict)
