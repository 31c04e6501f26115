"""The batch CSV of ``predict``: one row per image, appended durably, resumable; shared with the Ray engine.

``predict`` runs as a batch when IMAGE is a folder or ``--out`` ends in ``.csv`` (:func:`is_batch`): every image of the
folder (:func:`batch_inputs`) gets one CSV row (:func:`batch_columns`), appended and fsync'ed as a whole line the
moment the image is done, so a killed run loses at most the image in progress and ``--resume`` continues it (and
refuses a CSV made with another K, patch size or seed, whose rows would not be comparable: :func:`settings_problem`).

Privacy of batch results: a row names its image by the file name only (no directory, no DICOM header field), with
undecodable bytes escaped (:mod:`cxr_hub.cli.names`). The row code (:func:`result_row`, :func:`error_cells`), the CSV
reading (:func:`read_rows`) and the atomic writers (:func:`atomic_write`, :func:`rewrite_csv`) are public because
:mod:`cxr_hub.ray_batch` writes the same rows, byte for byte, on a Ray cluster. torch and the pipeline are imported
only inside the functions that need them.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .names import escape, row_name, source_name

if TYPE_CHECKING:
    import numpy as np

    from ..io import CXRInputError
    from ..pipeline import CXRPipeline

__all__ = [
    "BATCH_CSV_NAME",
    "BIOMARKER_COLUMNS",
    "SETTINGS_COLUMNS",
    "STATUS",
    "atomic_write",
    "batch_columns",
    "batch_csv_path",
    "batch_inputs",
    "error_cells",
    "is_batch",
    "read_rows",
    "result_row",
    "rewrite_csv",
    "run_predict_batch",
    "settings_problem",
]

#: The CSV a batch writes in an ``--out`` folder (an ``--out`` ending in ``.csv`` is the file itself).
BATCH_CSV_NAME = "results.csv"
#: The biomarker columns of a row (:class:`cxr_hub.biomarkers.Biomarkers` fields), in CSV order.
BIOMARKER_COLUMNS = ("cardiothoracic_ratio", "lung_mean_intensity", "lung_std_intensity", "lung_area_fraction")
#: The values of a row's ``status`` column: analysed, or refused with its message in ``error``.
STATUS = ("ok", "error")
#: Columns that record how a row was made; a resumed CSV must have been made with the same values.
SETTINGS_COLUMNS = ("k", "patch_size", "seed")


def is_batch(image: str | Path, out: str | Path) -> bool:
    """``predict`` runs as a batch when IMAGE is a folder or the output is a CSV file.

    Args:
        image: ``predict``'s IMAGE argument.
        out: its ``--out``.

    Returns:
        True for a batch run (one CSV row per image), False for one image (result.json + PNGs).
    """
    return Path(image).is_dir() or str(out).lower().endswith(".csv")


def batch_csv_path(out: str | Path) -> Path:
    """The CSV a batch writes: ``--out`` itself when it ends in .csv, else :data:`BATCH_CSV_NAME` in that folder.

    Args:
        out: ``predict``'s ``--out``.

    Returns:
        The CSV's path (not created).
    """
    path = Path(out)
    return path if path.suffix.lower() == ".csv" else path / BATCH_CSV_NAME


def batch_inputs(source: str | Path) -> list[Path]:
    """The images a batch run visits, in the order it visits them (sorted by file name).

    A folder contributes its regular, non-hidden files with a supported extension or none at all (DICOM exports
    often have no extension; a file that turns out not to be an image becomes an error row, not a crash).
    Sub-folders are not entered, so a result never needs more than a file name to name its image.

    Args:
        source: an image file (a batch of one) or a folder of images.

    Returns:
        The image paths, sorted by file name.

    Raises:
        CXRInputError: ``source`` does not exist (the message does not name it: a folder's name can be a patient's).
    """
    from ..io import SUPPORTED_EXTENSIONS, CXRInputError

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
    """CSV header of a batch run for a classifier's classes (with the input check's scores, before the warnings).

    Args:
        class_names: the classifier's classes, in its order (``CXRPipeline.class_names``).

    Returns:
        The column names: file, status, label, votes and probabilities per class, the global label, the biomarkers,
        the settings, the input check's scores (:data:`cxr_hub.validity.CSV_COLUMNS`), warnings and error.
    """
    from ..validity import CSV_COLUMNS as VALIDITY_COLUMNS  # the check's module loads numpy and cv2: import on call

    return [
        "file",
        "status",
        "label",
        *(f"votes_{c}" for c in class_names),
        *(f"probability_{c}" for c in class_names),
        "global_label",
        *BIOMARKER_COLUMNS,
        *SETTINGS_COLUMNS,
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
    csv.writer(buf, lineterminator="\n").writerow([escape(v) if isinstance(v, str) else v for v in values])
    return buf.getvalue().encode("utf-8")


def _append_line(fd: int, line: bytes) -> None:
    """Appends one whole line and makes it durable before the next image starts (O_APPEND + fsync)."""
    view = memoryview(line)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def read_rows(path: Path, header: list[str]) -> tuple[list[list[str]], bool]:
    """The whole rows of a batch CSV, and whether its last row is torn (a run killed mid-write). Writes nothing.

    Args:
        path: an existing batch CSV.
        header: the columns this run writes (:func:`batch_columns`).

    Returns:
        ``(rows, torn)``: the complete data rows (cells as text, a known :data:`STATUS`), and whether the file holds
        anything else (a torn last line) that :func:`rewrite_csv` must drop before rows are appended.

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
    complete = [r for r in rows[1:] if len(r) == len(header) and r[1] in STATUS]
    return complete, not text.endswith("\n") or len(complete) != len(rows) - 1


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Writes ``path`` through a temporary file in its folder, fsync'ed and renamed: whole or absent, never torn.

    The folder is fsync'ed after the rename too, so the new file survives a power cut. Used for the batch CSV's
    rewrite and for every output file of the Ray engine.

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


def rewrite_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Replaces the CSV by its header and ``rows``, atomically (drops a torn last row; each row is one append).

    Args:
        path: the batch CSV.
        header: its columns.
        rows: the rows to keep, cells as text (from :func:`read_rows`).
    """
    atomic_write(path, lambda f: f.write(_csv_line(header) + b"".join(_csv_line(r) for r in rows)))


def settings_problem(path: Path, header: list[str], rows: list[list[str]], wanted: dict[str, str]) -> str | None:
    """A message when a row of the CSV was made with other settings than ``wanted`` (column → value), else None.

    Args:
        path: the CSV (named in the message).
        header: its columns.
        rows: its rows (from :func:`read_rows`).
        wanted: this run's value of each :data:`SETTINGS_COLUMNS` column, as text.

    Returns:
        A one-line message for ``--resume`` naming both settings, or None when every row matches (or is empty there).
    """

    def show(values: dict[str, str]) -> str:
        return f"--k {values['k']} --patch-size {values['patch_size']} --seed {values['seed']}"

    index = {c: header.index(c) for c in SETTINGS_COLUMNS}
    for row in rows:
        made = {c: row[i] for c, i in index.items()}
        if any(made[c] and made[c] != wanted[c] for c in SETTINGS_COLUMNS):
            return (
                f"--resume: {path} was made with {show(made)}, this run asks for {show(wanted)}: its rows would not be "
                "comparable. Pass the same options to continue it, or another --out to start a new CSV."
            )
    return None


def result_row(pipe: CXRPipeline, image: str | Path | np.ndarray, name: str, args: argparse.Namespace) -> list[Any]:
    """The cells of one analysed image's row (raises the pipeline's CXRInputError for a refused one).

    Args:
        pipe: the loaded pipeline.
        image: the image file (or a decoded array); a path lets the input check read an RGB file's colour.
        name: the row's name (:func:`cxr_hub.cli.names.row_name`).
        args: the ``predict`` options the row uses (``k``, ``patch_size``, ``seed``, ``saliency_classes``).

    Returns:
        One cell per :func:`batch_columns` column, numbers with fixed precision (a re-run gives the same text).

    Raises:
        CXRInputError: the pipeline refused the image.
    """
    names = pipe.class_names
    subject = source_name(image) if isinstance(image, str | Path) else None
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
        *(_number(getattr(b, c)) for c in BIOMARKER_COLUMNS),
        r.k,
        r.patch_size,
        args.seed,
        *_validity_cells(r.input_check).values(),
        " | ".join(r.warnings),
        "",
    ]


def _validity_cells(report: Any) -> dict[str, str]:
    """The ``cxr_hub.validity.CSV_COLUMNS`` cells of a validity report (all empty without one)."""
    from ..validity import CSV_COLUMNS

    return dict.fromkeys(CSV_COLUMNS, "") if report is None else report.csv_values()


def error_cells(exc: CXRInputError) -> dict[str, str]:
    """The cells a refused image's row adds to its name, status, settings and message.

    A refusal of the input-validity check records every score measured before it (which check failed and by how
    much is what a batch user sorts on); other errors (unreadable file, no lung) record nothing more.

    Args:
        exc: the refusal.

    Returns:
        Column → cell text for the :data:`cxr_hub.validity.CSV_COLUMNS` columns, or an empty dict.
    """
    from ..validity import NotAFrontalCXRError

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

    from ..io import CXRInputError

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
        done_rows, torn = read_rows(out, header) if out.exists() else ([], False)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = settings_problem(out, header, done_rows, settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    if torn:
        rewrite_csv(out, header, done_rows)
    done = {r[0] for r in done_rows}
    todo = [p for p in images if row_name(p) not in done]
    counts = {"ok": 0, "error": 0}
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            _append_line(fd, _csv_line(header))
        # no file names in the bar: a terminal log is an output too
        for path in tqdm(todo, total=len(images), initial=len(images) - len(todo), unit="image", file=sys.stderr):
            name = row_name(path)
            try:
                row = result_row(pipe, path, name, args)
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
