"""The driver's run: :func:`predict_on_ray` (check → stream → merge and write), ``_stream`` (the rows as they
arrive: kept once, counted, flushed to part files), ``_write_results`` (the previous rows and this run's, in input
order, into the output) and what a run reports: :class:`BatchProgress` after each batch, :class:`RaySummary` at
the end.

Imports :mod:`~cxr_hub.ray_batch.spec`, :mod:`~cxr_hub.ray_batch.checks`, :mod:`~cxr_hub.ray_batch.results` and
:mod:`~cxr_hub.ray_batch.cluster` (where Ray is imported, on call).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import _check_run, _CheckedRun
from .cluster import _rows_from_ray
from .results import _previous_settings, _write_output, _write_part
from .spec import (
    CPU_SECONDS_COLUMN,
    SECONDS_COLUMN,
    SETTINGS_COLUMN,
    STARTED_COLUMN,
    WORKER_COLUMN,
    WORKER_SETTINGS_KEY,
    PipelineSpec,
    RayOptions,
)


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

    Checks first (``checks._check_run``), before Ray is touched or a file written: the options, the output's
    suffix, unique file names, the models (loaded once here, on the CPU, so a bad folder fails in a second rather
    than on every worker) and the options that need them, an existing output or parts folder without ``resume``,
    and with ``resume`` that both were made with this run's columns and settings. Then the films without a row
    stream through the actor pool; see :mod:`cxr_hub.ray_batch` for how rows reach the disk.

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
    run = _check_run(inputs, output, spec, options or RayOptions(), resume)
    summary = RaySummary(output=run.output, inputs=len(run.named), skipped=len(run.named) - len(run.todo))
    run.output.parent.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {}
    if run.todo:
        _stream(run, summary, made, progress, start)
    summary.missing = sum(1 for _, n in run.todo if n not in made)
    _write_results(run, made, summary)
    summary.seconds = time.perf_counter() - start
    return summary


def _write_results(run: _CheckedRun, made: dict[str, list[str]], summary: RaySummary) -> None:
    """Merges the previous rows and this run's (``made``) into the output, in input order, and removes the parts."""
    rows = {**run.done, **made}
    order = {n: i for i, (_, n) in enumerate(run.named)}
    # rows of films this run was not given (a resumed output of a larger run) first, in their order, then ours
    final = sorted(rows.values(), key=lambda r: order.get(r[0], -1))
    # how the rows were computed (device, arithmetic), for whoever reads the file later; a resumed run adds its own
    resolved = _previous_settings(run.output)
    resolved += [s for s in summary.worker_settings if s not in resolved]
    _write_output(run.output, run.header, final, {WORKER_SETTINGS_KEY: json.dumps(resolved, sort_keys=True)})
    shutil.rmtree(run.parts, ignore_errors=True)


def _stream(
    run: _CheckedRun,
    summary: RaySummary,
    made: dict[str, list[str]],
    progress: Callable[[BatchProgress], None] | None,
    start: float,
) -> None:
    """Streams ``run.todo`` through the actor pool into ``made``, flushing part files as it goes (and on the way out).

    Over 50 lines because one loop owns the counters, and its ``finally`` must flush and record them on any exit.
    """
    todo, header, options, parts = run.todo, run.header, run.options, run.parts
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
        for table in _rows_from_ray(todo, header, run.settings, run.spec, options):
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
