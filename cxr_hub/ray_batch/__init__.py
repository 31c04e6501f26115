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
(``cluster._ClusterStream``), which hands the rows' tables to the client one call at a time: Ray Data's executor
needs a real Ray worker process, which a client is not (Ray 2.60 fails with ``'Worker' object has no attribute
'core_worker'``).

Faults: a film the pipeline refuses (any :class:`~cxr_hub.io.CXRInputError`) becomes a row with status ``error`` and
its message, as in the single-process run; any other exception on one film becomes such a row too (a cluster run
of tens of thousands of films must not end on one film). A worker process that dies is restarted by Ray and its
unfinished batches are retried: Ray Data's actor pools run with ``max_restarts=-1`` and ``max_task_retries=-1`` by
default (Ray 2.60), which this package keeps. A row that arrives twice (a retried batch whose first result also got
through) is kept once and counted in :attr:`RaySummary.duplicates`.

Privacy: as in the single-process run, a row names its film by the file name only. Full paths travel inside the
Ray dataset (the workers must open the files) but are never written to the output or to a message. Film names
must therefore be unique across the inputs (a manifest may list two ``image.png`` in different folders): a run
with duplicate names is refused before it starts.

What lives where (each module imports only those listed before it):

* :mod:`~cxr_hub.ray_batch.spec`: what a run is given and what every part shares: :class:`PipelineSpec`,
  :class:`RayOptions`, :class:`RayPredictError`, the constants (suffixes, :data:`DEFAULT_BATCH_SIZE`, the columns
  the workers add, :data:`WORKER_SETTINGS_KEY`) and the single-process row code both engines use.
* :mod:`~cxr_hub.ray_batch.inputs`: :func:`list_inputs` (SOURCE → the films) and the unique row names.
* :mod:`~cxr_hub.ray_batch.actor`: :class:`PipelineActor`, the worker (one pipeline per actor, one row per film).
* :mod:`~cxr_hub.ray_batch.results`: the results files: :func:`output_format`, :func:`parts_folder`,
  :func:`cells_to_table` and :func:`table_to_cells`, :func:`read_results`, the rows and settings an earlier run
  left, the atomic writers of the output and of a part file.
* :mod:`~cxr_hub.ray_batch.cluster`: the part that runs on Ray: connecting, the dataset, the Ray Client stream.
* :mod:`~cxr_hub.ray_batch.checks`: what a run checks before Ray is touched or a file written.
* :mod:`~cxr_hub.ray_batch.run`: :func:`predict_on_ray` (check → stream → merge and write), :class:`BatchProgress`
  and :class:`RaySummary`.
* :mod:`~cxr_hub.ray_batch.command`: the CLI glue: :func:`add_ray_arguments` and :func:`run_ray_predict`.

Ray is imported only inside the functions that run on it (all in ``cluster``), so ``import cxr_hub.ray_batch``
(and the CLI options it registers) costs nothing where Ray is not installed, and the default single-process
``predict`` never imports it; nor does it import pyarrow, torch or transformers. Every name importable from
``cxr_hub.ray_batch`` when it was one module still is.
"""

from __future__ import annotations

from .actor import PipelineActor
from .command import add_ray_arguments, run_ray_predict
from .inputs import list_inputs
from .results import cells_to_table, output_format, parts_folder, read_results, table_to_cells
from .run import BatchProgress, RaySummary, predict_on_ray
from .spec import (
    CPU_SECONDS_COLUMN,
    DEFAULT_BATCH_SIZE,
    LIST_SUFFIXES,
    MANIFEST_SUFFIX,
    OUTPUT_SUFFIXES,
    SECONDS_COLUMN,
    SETTINGS_COLUMN,
    STARTED_COLUMN,
    WORKER_COLUMN,
    WORKER_SETTINGS_KEY,
    PipelineSpec,
    RayOptions,
    RayPredictError,
)

__all__ = [
    "CPU_SECONDS_COLUMN",
    "DEFAULT_BATCH_SIZE",
    "LIST_SUFFIXES",
    "MANIFEST_SUFFIX",
    "OUTPUT_SUFFIXES",
    "SECONDS_COLUMN",
    "SETTINGS_COLUMN",
    "STARTED_COLUMN",
    "WORKER_COLUMN",
    "WORKER_SETTINGS_KEY",
    "BatchProgress",
    "PipelineActor",
    "PipelineSpec",
    "RayOptions",
    "RayPredictError",
    "RaySummary",
    "add_ray_arguments",
    "cells_to_table",
    "list_inputs",
    "output_format",
    "parts_folder",
    "predict_on_ray",
    "read_results",
    "run_ray_predict",
    "table_to_cells",
]
