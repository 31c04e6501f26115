"""Batch ``predict`` on a Ray cluster: a Ray Data stream of file paths through an actor pool of pipelines.

``python -m cxr_hub predict SOURCE --engine ray --out results.parquet`` (or ``.csv``) scores a folder of films, a
cxr-hub manifest (``.csv``) or a text file of paths (``.txt``, one per line) on Ray Data: a dataset of paths →
``map_batches`` with :class:`PipelineActor`, an actor that loads a :class:`~cxr_hub.pipeline.CXRPipeline` once (on
its GPU when Ray gave it one) and turns each film into the row the single-process batch ``predict`` writes → rows
streamed back to the driver, which writes them. The rows are made by the single-process code itself
(``cxr_hub.cli.batch``: the same columns, the same seed rule, the same number formatting), so the same options give
the same rows, byte for byte in a CSV.

Why the driver writes the output (rather than ``Dataset.write_parquet`` on the workers): with ``ray://`` the CLI
runs on a client machine, and a results file should land where the command was typed, not on a cluster node; and
the driver can make every write atomic. While a run goes, finished rows are flushed every ``flush_rows`` rows or
``flush_seconds`` seconds to Parquet part files in a hidden folder next to the output (``.results.parquet.parts/``,
each written to a temporary name and renamed, so a part is whole or absent); at the end the previous rows and the
parts are merged, in input order, into the output (again via a temporary file and a rename) and the parts folder is
removed. A killed driver loses at most the rows since the last flush; ``--resume`` reads the output and the parts
and skips every film that already has a row.

Through Ray Client (``--address ray://HOST:10001``) the dataset runs in a small actor on the cluster
(:class:`_ClusterStream`), which hands the rows' tables to the client one call at a time: Ray Data's executor needs
a real Ray worker process, which a client is not (Ray 2.60 fails with ``'Worker' object has no attribute
'core_worker'``).

Faults: a film the pipeline refuses (any :class:`~cxr_hub.io.CXRInputError`) becomes a row with status ``error`` and
its message, as in the single-process run; any other exception on one film becomes such a row too (a cluster run
of tens of thousands of films must not end on one film). A worker process that dies is restarted by Ray and its
unfinished batches are retried: Ray Data's actor pools run with ``max_restarts=-1`` and ``max_task_retries=-1`` by
default (Ray 2.60), which this module keeps. A row that arrives twice (a retried batch whose first result also got
through) is kept once and counted in :attr:`RaySummary.duplicates`.

Privacy: as in the single-process run, a row names its film by the file name only. Full paths travel inside the
Ray dataset (the workers must open the files) but are never written to the output or to a message. Film names
must therefore be unique across the inputs (a manifest may list two ``image.png`` in different folders): a run
with duplicate names is refused before it starts.

Ray is imported only inside the functions that run on it, so ``import cxr_hub.ray_batch`` (and the CLI options it
registers) costs nothing where Ray is not installed, and the default single-process ``predict`` never imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from .pipeline import CXRPipeline

#: Output formats, by the suffix of ``--out``.
OUTPUT_SUFFIXES = (".parquet", ".csv")
#: Suffixes of a SOURCE that is a text file of paths (one per line); ``.csv`` is a cxr-hub manifest.
LIST_SUFFIXES = (".txt", ".lst")
MANIFEST_SUFFIX = ".csv"
#: Films per ``map_batches`` call: small, because one film takes about a second on a CPU; a batch is also what a
#: dead worker's retry repeats.
DEFAULT_BATCH_SIZE = 4
#: Columns the workers add to each row for the driver (never written): the worker process, its pipeline settings,
#: when the film's work began (Unix time), how long it took on the worker (seconds) and the worker process's CPU time
#: meanwhile (seconds: the cost of a film whatever else the node runs).
WORKER_COLUMN = "_worker"
SETTINGS_COLUMN = "_settings"
STARTED_COLUMN = "_started"
SECONDS_COLUMN = "_seconds"
CPU_SECONDS_COLUMN = "_cpu_seconds"
#: Parquet file metadata key: the distinct ``CXRPipeline.settings()`` of the workers that made the rows (JSON list).
WORKER_SETTINGS_KEY = "cxr_hub.worker_settings"


class RayPredictError(ValueError):
    """A Ray batch run refused before it started (bad option, input or output); the message says what to do."""


def _batch() -> SimpleNamespace:
    """The single-process batch ``predict``'s row code, shared so both engines write identical rows.

    Imported on call rather than at module level: :mod:`cxr_hub.cli.predict` registers this module's CLI options,
    and a module-level import here would be circular.
    """
    from .cli import batch, names, options, predict

    return SimpleNamespace(
        biomarker_columns=batch.BIOMARKER_COLUMNS,
        settings_columns=batch.SETTINGS_COLUMNS,
        status=batch.STATUS,
        default_classifier=predict.DEFAULT_CLASSIFIER,
        default_segmentation=predict.DEFAULT_SEGMENTATION,
        escape=names.escape,
        model_folder=predict.model_folder,
        pipeline_option_problem=predict.pipeline_option_problem,
        read_rows=batch.read_rows,
        result_row=batch.result_row,
        rewrite_csv=batch.rewrite_csv,
        row_name=names.row_name,
        settings_problem=batch.settings_problem,
        source_name=names.source_name,
        batch_columns=batch.batch_columns,
        atomic_write=batch.atomic_write,
        batch_inputs=batch.batch_inputs,
        default_sampling=options.default_sampling,
        error_cells=batch.error_cells,
        predict_option_problem=predict.predict_option_problem,
    )


# ------------------------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class PipelineSpec:
    """What every worker builds and runs: the models, the pipeline's options and the per-film analysis options.

    Field names and defaults are those of ``predict``'s options. Folders are paths (the same path on every node: a
    shared file system) or Hub repo ids.
    """

    segmentation: str
    classifier: str
    global_classifier: str | None = None
    k: int | None = None
    patch_size: int | None = None
    seed: int = 0
    saliency_classes: str | None = None
    device: str | None = None
    precision: str = "auto"
    segmentation_precision: str = "auto"
    sampling: str | None = None
    chunk_size: int = 32
    allow_pickle: bool = False
    check_input: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace, folders: Mapping[str, str | Path | None]) -> PipelineSpec:
        """The spec of parsed ``predict`` options, with the model folders already resolved (see ``_model_folder``)."""
        global_classifier = folders.get("global")
        return cls(
            segmentation=str(folders["segmentation"]),
            classifier=str(folders["classifier"]),
            global_classifier=None if global_classifier is None else str(global_classifier),
            k=args.k,
            patch_size=args.patch_size,
            seed=args.seed,
            saliency_classes=args.saliency_classes,
            device=args.device,
            precision=args.precision,
            segmentation_precision=args.segmentation_precision,
            sampling=args.sampling,
            chunk_size=args.chunk_size,
            allow_pickle=args.allow_pickle,
            check_input=not getattr(args, "no_input_check", False),
        )

    def load(self, device: str | None = None) -> CXRPipeline:
        """Builds the pipeline, on ``device`` when given (else this spec's device, else the pipeline's default)."""
        from .pipeline import CXRPipeline

        return CXRPipeline.from_pretrained(
            self.segmentation,
            self.classifier,
            self.global_classifier,
            device=device or self.device,
            precision=self.precision,
            segmentation_precision=self.segmentation_precision,
            sampling=self.sampling or _batch().default_sampling(),
            chunk_size=self.chunk_size,
            allow_pickle=self.allow_pickle,
            check_input=self.check_input,
        )

    def analysis_args(self) -> SimpleNamespace:
        """The per-film options in the shape the single-process row code reads them (``args.k``, ``args.seed``...)."""
        return SimpleNamespace(
            k=self.k, patch_size=self.patch_size, seed=self.seed, saliency_classes=self.saliency_classes
        )

    def row_settings(self, pipe: CXRPipeline) -> dict[str, str]:
        """The settings columns every row records (an error row too), as the single-process run fills them."""
        cfg = pipe.classifier_config
        return {
            "k": str(self.k if self.k is not None else cfg.num_patches),
            "patch_size": str(self.patch_size if self.patch_size is not None else cfg.patch_size),
            "seed": str(self.seed),
        }


@dataclass(frozen=True)
class RayOptions:
    """How a run uses Ray.

    Attributes:
        address: the cluster: ``"auto"`` (the one this machine belongs to, e.g. a ``ray up`` head or a KubeRay pod),
            ``"ray://HOST:10001"`` (Ray Client), ``"local"`` (a new instance on this machine, bound to loopback) or
            None (``RAY_ADDRESS`` when set, else ``"local"``). Ignored when Ray is already initialised in this
            process (that connection is used and left open).
        workers: a fixed pool of this many actors; None: an autoscaling pool from 1 to as many as the cluster fits.
        cpus_per_worker: CPUs Ray reserves per actor; the actor's torch uses that many threads (at least 1).
        gpus_per_worker: GPUs Ray reserves per actor (0: CPU workers). With a GPU the models run on it.
        batch_size: films per ``map_batches`` call (what a retry after a dead worker repeats).
        local_cpus: CPUs of a new local instance (None: all of this machine's).
        flush_rows: the driver writes a part file once this many new rows are waiting...
        flush_seconds: ...or once this long has passed since the last part file, whichever comes first.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = DEFAULT_BATCH_SIZE
    local_cpus: int | None = None
    flush_rows: int = 256
    flush_seconds: float = 30.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RayOptions:
        """The options of parsed ``predict --engine ray`` arguments (see :func:`add_ray_arguments`)."""
        return cls(
            address=args.address,
            workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker,
            batch_size=args.batch_size,
        )

    def problem(self) -> str | None:
        """A one-line message naming the first invalid option, else None."""
        if self.workers is not None and self.workers < 1:
            return f"--workers {self.workers}: must be at least 1 (leave it out for an autoscaling pool)."
        if not (math.isfinite(self.cpus_per_worker) and self.cpus_per_worker > 0):
            return f"--cpus-per-worker {self.cpus_per_worker}: must be above 0."
        if not (math.isfinite(self.gpus_per_worker) and self.gpus_per_worker >= 0):
            return f"--gpus-per-worker {self.gpus_per_worker}: must be 0 (CPU workers) or more."
        if self.batch_size < 1:
            return f"--batch-size {self.batch_size}: must be at least 1 (films per Ray task)."
        if self.flush_rows < 1 or not self.flush_seconds > 0:
            return "flush_rows must be at least 1 and flush_seconds above 0."
        return None

    @property
    def threads(self) -> int:
        """torch threads per actor: the CPUs Ray reserved for it, at least one."""
        return max(1, int(self.cpus_per_worker))


@dataclass(frozen=True)
class BatchProgress:
    """What the driver has received so far; passed to the ``progress`` callback after each batch of rows.

    Attributes:
        done: rows received in this run so far (duplicates not counted).
        todo: rows this run makes (inputs without a row in the output yet).
        skipped: inputs that already had a row (``resume``).
        rows: rows in this batch.
        workers: ``(host, pid)`` of the worker process(es) that made this batch.
    """

    done: int
    todo: int
    skipped: int
    rows: int
    workers: tuple[tuple[str, int], ...]


@dataclass
class RaySummary:
    """What a run did.

    Attributes:
        output: the file written.
        inputs: films given.
        skipped: films that already had a row (``resume``).
        ok: rows with status ``ok`` made by this run.
        errors: rows with status ``error`` made by this run (refused or failed films).
        missing: films still without a row at the end (only if Ray ended the stream early; ``--resume`` retries
            them). 0 in a complete run.
        duplicates: rows that arrived a second time from Ray (kept once).
        workers: the distinct worker processes (``host:pid``) that made rows; a restarted worker is a new process.
        worker_settings: the distinct ``CXRPipeline.settings()`` the workers resolved (device, arithmetic...); more
            than one means the workers did not all compute the same way (mixed CPUs/GPUs).
        seconds: wall time of the whole call.
        first_row_seconds: from the call to the first row received (connection, actor start-up, model loading, the
            first batch and its way back); None when nothing had to be made.
        startup_seconds: from the call to the moment a worker began its first film (connection, actor start-up,
            model loading): the fixed cost of a run. None when nothing had to be made.
        compute_seconds: the workers' time on this run's films (reading, the pipeline, the row), summed.
        cpu_seconds: the worker processes' CPU time meanwhile, summed: what the films cost, whatever else ran.
        films_seconds: from the first film's start to the last film's end on the workers: the span in which films
            were made, so ``rows made / films_seconds`` is the pool's throughput once it runs.
    """

    output: Path
    inputs: int = 0
    skipped: int = 0
    ok: int = 0
    errors: int = 0
    missing: int = 0
    duplicates: int = 0
    workers: list[str] = field(default_factory=list)
    worker_settings: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    first_row_seconds: float | None = None
    startup_seconds: float | None = None
    compute_seconds: float = 0.0
    cpu_seconds: float = 0.0
    films_seconds: float | None = None


# ---------------------------------------------------------------------------------------------------- inputs


def list_inputs(source: str | Path) -> list[Path]:
    """The films of SOURCE, in the order their rows are written.

    Args:
        source: a folder (its images, exactly as the single-process batch ``predict`` picks them: sorted by name,
            no sub-folders, no hidden files); a cxr-hub manifest (``.csv`` with ``id`` and ``image`` columns, paths
            relative to its folder; manifest order); a text file of paths (``.txt`` or ``.lst``: one path per line,
            relative paths against the file's folder, blank lines and ``#`` comments skipped; file order); or one
            image file.

    Returns:
        The paths. A path that does not exist is kept: its film gets an error row, like a corrupt one.

    Raises:
        RayPredictError: SOURCE does not exist, or a manifest lacks its columns (the message never names a folder).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _batch().batch_inputs(path)
    if not path.is_file():
        raise RayPredictError(
            "SOURCE was not found: pass a folder of images, a manifest (.csv) or a text file of paths (.txt)."
        )
    suffix = path.suffix.lower()
    if suffix == MANIFEST_SUFFIX:
        from .manifest import read_manifest

        try:
            return [row.image for row in read_manifest(path)]
        except (ValueError, FileNotFoundError) as exc:
            raise RayPredictError(
                f"SOURCE is not a cxr-hub manifest: {str(exc).replace(str(path), path.name)}"
            ) from None
    if suffix in LIST_SUFFIXES:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        entries = [line.strip() for line in lines]
        return [path.parent / Path(e).expanduser() for e in entries if e and not e.startswith("#")]
    return [path]


def _named_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """``(absolute path, row name)`` of each input; refuses two films with one name (rows are keyed by the name).

    Absolute, because a worker does not run in the driver's working directory.
    """
    row_name = _batch().row_name
    named = [(Path(p).expanduser().absolute(), row_name(Path(p))) for p in inputs]
    seen: dict[str, int] = {}
    for _, name in named:
        seen[name] = seen.get(name, 0) + 1
    clashes = sorted(n for n, c in seen.items() if c > 1)
    if clashes:
        shown = ", ".join(clashes[:3]) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
        raise RayPredictError(
            f"{len(clashes)} file name(s) occur more than once among the inputs ({shown}): a row names its film by "
            "the file name alone, so names must be unique. Rename the files (pseudonyms) or run each folder apart."
        )
    return named


# ----------------------------------------------------------------------------------------------- the worker


class PipelineActor:
    """A Ray Data callable class: one pipeline per actor, one row per film.

    Input batches (``batch_format="pyarrow"``) have the columns ``path`` (binary: ``os.fsencode`` of the film's
    path, so names that are not UTF-8 survive) and ``file`` (the row name). Output: one string column per column
    of :func:`cxr_hub.cli.batch.batch_columns`, holding exactly the cells the single-process CSV holds, plus
    :data:`WORKER_COLUMN`, :data:`SETTINGS_COLUMN`, :data:`STARTED_COLUMN`, :data:`SECONDS_COLUMN` and
    :data:`CPU_SECONDS_COLUMN` for the driver.

    Args:
        spec: the models and options.
        header: the output columns (``batch_columns(pipe.class_names)``).
        settings: the settings cells of an error row (:meth:`PipelineSpec.row_settings`).
        device: where the models run ("cpu" or "cuda").
        threads: torch threads (None: leave torch's default).
    """

    def __init__(
        self,
        spec: PipelineSpec,
        header: Sequence[str],
        settings: Mapping[str, str],
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        import torch

        if threads is not None:
            # Ray sets OMP_NUM_THREADS from the reserved CPUs; torch may have read another value at import.
            torch.set_num_threads(threads)
        self._b = _batch()
        self.header = list(header)
        self.settings = dict(settings)
        self.args = spec.analysis_args()
        self.pipe = spec.load(device)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.worker_settings = json.dumps(self.pipe.settings(), sort_keys=True)

    def row(self, path: Path, name: str) -> list[str]:
        """The cells of one film's row (an error row when the film cannot be analysed)."""
        from .io import CXRInputError

        b = self._b
        try:
            values = b.result_row(self.pipe, path, name, self.args)
        except CXRInputError as exc:
            return self.error_row(name, str(exc), b.error_cells(exc))
        except Exception as exc:  # one film must not end a run over a whole archive
            return self.error_row(name, _failure_message(exc, path, name))
        return [b.escape(v) if isinstance(v, str) else ("" if v is None else str(v)) for v in values]

    def error_row(self, name: str, message: str, extra: Mapping[str, str] | None = None) -> list[str]:
        """An error row, filled as the single-process run fills it: the settings, the name, the message and the
        ``extra`` cells of :func:`cxr_hub.cli.batch.error_cells` (an input-check refusal's scores)."""
        cells = dict.fromkeys(self.header, "") | self.settings | dict(extra or {})
        cells |= {"file": name, "status": "error", "error": self._b.escape(message)}
        return [cells[c] for c in self.header]

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Rows for a batch of films."""
        import pyarrow as pa

        rows, started, seconds, cpu = [], [], [], []
        for raw, name in zip(batch.column("path").to_pylist(), batch.column("file").to_pylist(), strict=True):
            started.append(time.time())
            tick, cpu_tick = time.perf_counter(), time.process_time()
            rows.append(self.row(Path(os.fsdecode(raw)), name))
            seconds.append(time.perf_counter() - tick)
            cpu.append(time.process_time() - cpu_tick)
        columns = {c: pa.array([r[j] for r in rows], pa.string()) for j, c in enumerate(self.header)}
        columns[WORKER_COLUMN] = pa.array([self.worker] * len(rows), pa.string())
        columns[SETTINGS_COLUMN] = pa.array([self.worker_settings] * len(rows), pa.string())
        columns[STARTED_COLUMN] = pa.array(started, pa.float64())
        columns[SECONDS_COLUMN] = pa.array(seconds, pa.float64())
        columns[CPU_SECONDS_COLUMN] = pa.array(cpu, pa.float64())
        return pa.table(columns)


def _failure_message(exc: BaseException, path: Path, name: str) -> str:
    """An unexpected failure on one film, as a row's message: the exception, with the film's directories cut out."""
    text = f"{type(exc).__name__}: {exc}"
    for spelling in sorted({str(path), os.path.abspath(path)}, key=len, reverse=True):
        text = text.replace(spelling, name)
    for folder in sorted({str(path.parent), os.path.abspath(path.parent)}, key=len, reverse=True):
        if folder not in ("", ".", os.sep):
            text = text.replace(folder, "<input folder>")
    return (
        f"File '{name}': the pipeline failed ({text}). This is a fault of the software or of the worker (memory, "
        "GPU), not a verdict on the film: report it, and delete this row and run again with --resume to retry it."
    )


# ------------------------------------------------------------------------------------------------ the output


def output_format(output: str | Path) -> str:
    """``"parquet"`` or ``"csv"``, from the suffix of ``output``.

    Raises:
        RayPredictError: another suffix.
    """
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise RayPredictError(
            f"--out {Path(output).name}: with --engine ray the output is one file ending in .parquet or .csv."
        )
    return suffix[1:]


def parts_folder(output: str | Path) -> Path:
    """The hidden folder beside ``output`` where a run keeps its flushed rows until it completes."""
    output = Path(output)
    return output.with_name(f".{output.name}.parts")


def _arrow_type(column: str, b: SimpleNamespace) -> pa.DataType:
    """The Parquet type of a batch column: votes and settings are integers, probabilities and biomarkers floats."""
    import pyarrow as pa

    if column.startswith("votes_") or column in b.settings_columns:
        return pa.int64()
    if column.startswith("probability_") or column in b.biomarker_columns:
        return pa.float64()
    return pa.string()


def cells_to_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> pa.Table:
    """Rows of CSV cells as a typed Arrow table (empty cells become nulls).

    Raises:
        RayPredictError: a cell that does not parse as its column's type.
    """
    import pyarrow as pa

    b = _batch()
    arrays = []
    for j, column in enumerate(header):
        kind = _arrow_type(column, b)
        cells = [r[j] for r in rows]
        try:
            if pa.types.is_int64(kind):
                values: list[Any] = [None if c == "" else int(c) for c in cells]
            elif pa.types.is_float64(kind):
                values = [None if c == "" else float(c) for c in cells]
            else:
                values = list(cells)
        except ValueError:
            raise RayPredictError(
                f"column {column!r} holds a value that is not a {kind}: not a cxr-hub batch output."
            ) from None
        arrays.append(pa.array(values, kind))
    return pa.Table.from_arrays(arrays, schema=pa.schema([pa.field(c, _arrow_type(c, b)) for c in header]))


def table_to_cells(table: pa.Table, header: Sequence[str]) -> list[list[str]]:
    """The inverse of :func:`cells_to_table`: floats with the single-process CSV's six decimals, nulls as ``""``.

    Exact for every value a batch writes (they were parsed from six-decimal text).
    """
    import pyarrow as pa

    columns = []
    for column in header:
        kind = table.schema.field(column).type
        values = table.column(column).to_pylist()
        if pa.types.is_floating(kind):
            cells = ["" if v is None or not math.isfinite(v) else f"{v:.6f}" for v in values]
        else:
            cells = ["" if v is None else str(v) for v in values]
        columns.append(cells)
    return [list(r) for r in zip(*columns, strict=True)] if columns else []


def read_results(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """The header and rows (as CSV cells) of a batch output, Parquet or CSV; for resuming and for comparing runs."""
    path = Path(path)
    if output_format(path) == "csv":
        import csv

        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        return (rows[0], rows[1:]) if rows else ([], [])
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.column_names, table_to_cells(table, table.column_names)


def _read_previous(
    output: Path, header: list[str], settings: dict[str, str], b: SimpleNamespace
) -> dict[str, list[str]]:
    """The rows already made (output, then parts), by row name, first seen kept; refuses another run's files."""
    import pyarrow.parquet as pq

    done: dict[str, list[str]] = {}
    sources: list[tuple[Path, list[list[str]]]] = []
    if output.exists() and output.stat().st_size:
        if output_format(output) == "csv":
            try:
                rows, _torn = b.read_rows(output, header)  # a torn last row is dropped; the final write removes it
            except ValueError as exc:
                raise RayPredictError(str(exc)) from None
        else:
            try:
                table = pq.read_table(output)
            except Exception as exc:  # pyarrow raises several types for a non-Parquet file
                raise RayPredictError(
                    f"{output} is not a readable Parquet file ({type(exc).__name__}): pass another --out, or delete it."
                ) from None
            if table.column_names != header:
                raise RayPredictError(
                    f"{output} does not have the columns of this run (other classifier classes, or not a cxr-hub "
                    "batch output). Pass another --out, or delete the file to start over."
                )
            rows = [r for r in table_to_cells(table, header) if r[1] in b.status]
        sources.append((output, rows))
    parts = parts_folder(output)
    for part in sorted(parts.glob("part-*.parquet")) if parts.is_dir() else []:
        try:
            table = pq.read_table(part)
        except Exception as exc:  # as above
            raise RayPredictError(
                f"{part.name} in {parts} is not readable ({type(exc).__name__}): delete it; its films run again."
            ) from None
        if table.column_names != header:
            raise RayPredictError(
                f"{parts} holds rows of another run (other columns): delete the folder, or pass another --out."
            )
        sources.append((parts, table_to_cells(table, header)))
    for where, rows in sources:
        problem = b.settings_problem(where, header, rows, settings)
        if problem:
            raise RayPredictError(problem)
        for row in rows:
            done.setdefault(row[0], row)
    return done


def _previous_settings(output: Path) -> list[dict[str, Any]]:
    """The worker settings recorded in an existing Parquet output (none for a CSV or a new file)."""
    if output_format(output) != "parquet" or not output.is_file():
        return []
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(output).metadata or {}
        return list(json.loads(metadata.get(WORKER_SETTINGS_KEY.encode(), b"[]")))
    except (OSError, ValueError):  # an unreadable file was refused or replaced before this point
        return []


def _write_output(path: Path, header: list[str], rows: list[list[str]], metadata: Mapping[str, str]) -> None:
    b = _batch()
    if output_format(path) == "csv":
        b.rewrite_csv(path, header, rows)
        return
    import pyarrow.parquet as pq

    table = cells_to_table(header, rows)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    b.atomic_write(path, lambda f: pq.write_table(table, f))


def _write_part(parts: Path, header: list[str], rows: list[list[str]]) -> None:
    import pyarrow.parquet as pq

    parts.mkdir(parents=True, exist_ok=True)
    table = cells_to_table(header, rows)
    _batch().atomic_write(
        parts / f"part-{time.time_ns():020d}-{os.getpid()}.parquet", lambda f: pq.write_table(table, f)
    )


# ------------------------------------------------------------------------------------------------------- run


def predict_on_ray(
    inputs: Sequence[str | Path],
    output: str | Path,
    spec: PipelineSpec,
    options: RayOptions | None = None,
    *,
    resume: bool = False,
    progress: Callable[[BatchProgress], None] | None = None,
) -> RaySummary:
    """Runs the batch ``predict`` over ``inputs`` on Ray and writes one row per film to ``output``.

    Checks first, before Ray is touched or a file written: the options, the output's suffix, unique file names,
    the models (loaded once here, on the CPU, so a bad folder fails in a second rather than on every worker) and
    the options that need them, an existing output or parts folder without ``resume``, and with ``resume`` that
    both were made with this run's columns and settings. Then the films without a row stream through the actor
    pool; see the module docstring for how rows reach the disk.

    Args:
        inputs: the films (e.g. from :func:`list_inputs`); the output lists them in this order.
        output: a ``.parquet`` or ``.csv`` file.
        spec: models and options.
        options: how to use Ray (default :class:`RayOptions`).
        resume: continue an output (and the parts of an interrupted run), skipping films that have a row.
        progress: called after each batch of rows arrives.

    Returns:
        What the run did.

    Raises:
        RayPredictError: a refusal (nothing written).
        ray.exceptions.RayError: Ray failed the run (rows received so far are kept in the parts folder).
    """
    start = time.perf_counter()
    options = options or RayOptions()
    b = _batch()
    problem = options.problem()
    if problem:
        raise RayPredictError(problem)
    output = Path(output).expanduser()
    output_format(output)
    device = spec.device or ("cuda" if options.gpus_per_worker > 0 else "cpu")
    if device == "cuda" and options.gpus_per_worker <= 0:
        raise RayPredictError(
            "--device cuda with --engine ray needs --gpus-per-worker above 0: Ray gives a GPU only to a worker that "
            "asks for one."
        )
    named = _named_inputs(inputs)
    # a local model folder by its absolute path (workers do not run in this directory); a Hub repo id as it is
    spec = replace(
        spec,
        **{
            name: str(Path(value).expanduser().absolute())
            for name in ("segmentation", "classifier", "global_classifier")
            if (value := getattr(spec, name)) is not None and Path(value).expanduser().exists()
        },
    )
    try:
        pipe = spec.load("cpu")
    except (ValueError, TypeError, OSError) as exc:
        raise RayPredictError(f"could not build the pipeline: {exc}") from None
    problem = b.pipeline_option_problem(pipe, spec.analysis_args())
    if problem:
        raise RayPredictError(problem)
    header = b.batch_columns(pipe.class_names)
    settings = spec.row_settings(pipe)
    del pipe
    parts = parts_folder(output)
    if not resume and ((output.exists() and output.stat().st_size) or parts.exists()):
        what = output if output.exists() else f"{parts} (an interrupted run's rows)"
        raise RayPredictError(f"{what} already exists: pass --resume to continue that run, or another --out.")
    done = _read_previous(output, header, settings, b)
    todo = [(p, n) for p, n in named if n not in done]
    summary = RaySummary(output=output, inputs=len(named), skipped=len(named) - len(todo))
    output.parent.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {}
    if todo:
        _stream(todo, header, settings, replace(spec, device=device), options, summary, made, parts, progress, start)
    summary.missing = sum(1 for _, n in todo if n not in made)
    rows = {**done, **made}
    order = {n: i for i, (_, n) in enumerate(named)}
    # rows of films this run was not given (a resumed output of a larger run) first, in their order, then ours
    final = sorted(rows.values(), key=lambda r: order.get(r[0], -1))
    # how the rows were computed (device, arithmetic), for whoever reads the file later; a resumed run adds its own
    resolved = _previous_settings(output)
    resolved += [s for s in summary.worker_settings if s not in resolved]
    _write_output(output, header, final, {WORKER_SETTINGS_KEY: json.dumps(resolved, sort_keys=True)})
    shutil.rmtree(parts, ignore_errors=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _stream(
    todo: list[tuple[Path, str]],
    header: list[str],
    settings: dict[str, str],
    spec: PipelineSpec,
    options: RayOptions,
    summary: RaySummary,
    made: dict[str, list[str]],
    parts: Path,
    progress: Callable[[BatchProgress], None] | None,
    start: float,
) -> None:
    """Streams ``todo`` through the actor pool into ``made``, flushing part files as it goes (and on the way out)."""
    pending: list[list[str]] = []
    last_flush = time.monotonic()
    workers: dict[str, None] = {}
    worker_settings: dict[str, None] = {}

    def flush() -> None:
        nonlocal last_flush
        if pending:
            _write_part(parts, header, pending)
            pending.clear()
        last_flush = time.monotonic()

    wanted = {n for _, n in todo}
    width = len(header)
    called_at = time.time() - (time.perf_counter() - start)  # the call's start on the workers' (Unix) clock
    first_began: float | None = None
    last_ended: float | None = None
    try:
        for table in _rows_from_ray(todo, header, settings, spec, options):
            batch_rows = [r for r in zip(*(table.column(c).to_pylist() for c in header), strict=True)]
            batch_workers = table.column(WORKER_COLUMN).to_pylist()
            extra = (SETTINGS_COLUMN, STARTED_COLUMN, SECONDS_COLUMN, CPU_SECONDS_COLUMN)
            for cells, worker, resolved, began, took, cpu in zip(
                batch_rows, batch_workers, *(table.column(c).to_pylist() for c in extra), strict=True
            ):
                row = ["" if c is None else c for c in cells]
                if len(row) != width or row[0] not in wanted or row[0] in made:
                    summary.duplicates += 1
                    continue
                made[row[0]] = row
                pending.append(row)
                summary.ok += row[1] == "ok"
                summary.errors += row[1] != "ok"
                workers[worker] = None
                worker_settings[resolved] = None
                summary.compute_seconds += took
                summary.cpu_seconds += cpu
                first_began = began if first_began is None else min(first_began, began)
                last_ended = began + took if last_ended is None else max(last_ended, began + took)
            if summary.first_row_seconds is None and made:
                summary.first_row_seconds = time.perf_counter() - start
            if len(pending) >= options.flush_rows or time.monotonic() - last_flush >= options.flush_seconds:
                flush()
            if progress is not None:
                hosts = tuple(dict.fromkeys(w.rpartition(":")[::2] for w in batch_workers))
                progress(
                    BatchProgress(
                        done=len(made),
                        todo=len(todo),
                        skipped=summary.skipped,
                        rows=len(batch_rows),
                        workers=tuple((h, int(p)) for h, p in hosts),
                    )
                )
    finally:
        flush()  # also on Ctrl-C or a Ray failure: every row received is kept for --resume
        summary.workers = list(workers)
        summary.worker_settings = [json.loads(s) for s in worker_settings]
        if first_began is not None and last_ended is not None:
            # Unix clocks of other nodes may be off by a little; these two are for throughput, not for ordering
            summary.startup_seconds = max(0.0, first_began - called_at)
            summary.films_seconds = max(0.0, last_ended - first_began)


def _rows_from_ray(
    todo: list[tuple[Path, str]],
    header: list[str],
    settings: dict[str, str],
    spec: PipelineSpec,
    options: RayOptions,
) -> Iterator[pa.Table]:
    """The Ray Data part: a dataset of paths → actor-pool ``map_batches`` → the rows' tables, streamed here.

    Through Ray Client (``ray://``) the dataset runs in a :class:`_ClusterStream` actor on the cluster, which hands
    the tables over one call at a time: Ray Data's executor needs a real Ray worker process, which a client is not.
    """
    started = _connect(options)
    import ray

    try:
        items = [{"path": os.fsencode(p), "file": n} for p, n in todo]
        args = (items, header, settings, spec, options)
        if ray.util.client.ray.is_connected():
            stream = ray.remote(num_cpus=0)(_ClusterStream).remote(*args)
            try:
                while (table := ray.get(stream.next.remote())) is not None:
                    yield table
            finally:
                ray.kill(stream)
        else:
            yield from _dataset(*args).iter_batches(batch_size=None, batch_format="pyarrow")
    finally:
        if started:
            ray.shutdown()


def _dataset(
    items: list[dict[str, Any]],
    header: list[str],
    settings: dict[str, str],
    spec: PipelineSpec,
    options: RayOptions,
) -> Any:
    """The Ray dataset of a run: the paths, mapped in batches by a pool of :class:`PipelineActor`."""
    import ray.data

    if options.workers is not None:
        compute = ray.data.ActorPoolStrategy(size=options.workers)
    else:
        compute = ray.data.ActorPoolStrategy(min_size=1, max_size=None)
    return ray.data.from_items(items).map_batches(
        PipelineActor,
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=compute,
        fn_constructor_kwargs={
            "spec": spec,
            "header": header,
            "settings": settings,
            "device": spec.device,
            "threads": options.threads,
        },
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker or None,
        udf_modifying_row_count=False,
    )


class _ClusterStream:
    """Runs a run's dataset inside the cluster and returns its tables one :meth:`next` call at a time (Ray Client)."""

    def __init__(self, *args: Any) -> None:
        self._tables = iter(_dataset(*args).iter_batches(batch_size=None, batch_format="pyarrow"))

    def next(self) -> pa.Table | None:
        """The next table of rows, or None at the end."""
        return next(self._tables, None)


def _connect(options: RayOptions) -> bool:
    """Connects to (or starts) Ray unless this process already is connected; True when this call connected."""
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local" and "ray" not in sys.modules:
        # A private instance for one command must not listen on the network: with clusters "disabled" Ray takes
        # 127.0.0.1 as the node address and binds its servers there. Read by Ray at import, hence before it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(address="local", num_cpus=options.local_cpus, include_dashboard=False)
    else:
        ray.init(address=address)
    return True


# ---------------------------------------------------------------------------------------------------- the CLI


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
    folders: dict[str, Any] = {
        "segmentation": b.model_folder(args.segmentation, b.default_segmentation, "--segmentation", "segmentation"),
        "classifier": b.model_folder(args.classifier, b.default_classifier, "--classifier", "patch classifier"),
    }
    if args.global_classifier is not None:
        folders["global"] = b.model_folder(args.global_classifier, Path(), "--global-classifier", "global")
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
