"""What a Ray run is given and what it shares: :class:`PipelineSpec` (what every worker builds and runs),
:class:`RayOptions` (how the run uses Ray), :class:`RayPredictError` (a refusal), the constants of the engine (input
and output suffixes, the batch size, the columns the workers add for the driver, the Parquet metadata key) and
``_batch``, the single-process batch ``predict``'s row code that both engines share.

Imports only the standard library at module level (the pipeline and :mod:`cxr_hub.cli` on call); every other module
of :mod:`cxr_hub.ray_batch` imports this one.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..pipeline import CXRPipeline

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

    Imported on call rather than at module level: :mod:`cxr_hub.cli.predict` registers this package's CLI options
    (:mod:`~cxr_hub.ray_batch.command`), and a module-level import here would be circular.
    """
    from ..cli import batch, names, options, predict

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
        """The spec of parsed ``predict`` options, with the model folders already resolved.

        Args:
            args: the parsed ``predict`` options.
            folders: ``"segmentation"``, ``"classifier"`` and optionally ``"global"``, as
                :func:`cxr_hub.cli.predict.model_folder` resolved them.
        """
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
        from ..pipeline import CXRPipeline

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
