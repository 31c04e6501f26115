"""The worker: :class:`PipelineActor`, the Ray Data callable class that loads a pipeline once per actor and turns
each film into the row the single-process batch ``predict`` writes, and ``_failure_message``, the row message of an
unexpected failure on one film (the film's directories cut out).

Imports :mod:`~cxr_hub.ray_batch.spec`; torch, pyarrow, :mod:`cxr_hub.io` and the pipeline on call (in the actor).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .spec import (
    CPU_SECONDS_COLUMN,
    SECONDS_COLUMN,
    SETTINGS_COLUMN,
    STARTED_COLUMN,
    WORKER_COLUMN,
    PipelineSpec,
    _batch,
)

if TYPE_CHECKING:
    import pyarrow as pa


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
        from ..io import CXRInputError

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
