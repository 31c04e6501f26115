"""What a run checks before Ray is touched or a file written, and what those checks hand the run: ``_check_run``
returns a ``_CheckedRun`` (the output and its parts folder, the named inputs, the rows already made and the films
still to make, the output's columns, the settings cells, the workers' spec and the options), or raises
:class:`~cxr_hub.ray_batch.spec.RayPredictError`.

Imports :mod:`~cxr_hub.ray_batch.spec`, :mod:`~cxr_hub.ray_batch.inputs` and :mod:`~cxr_hub.ray_batch.results`;
the pipeline (to load the models once, on the CPU) and the single-process batch code on call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .inputs import _named_inputs
from .results import _read_previous, output_format, parts_folder
from .spec import PipelineSpec, RayOptions, RayPredictError, _batch


@dataclass(frozen=True)
class _CheckedRun:
    """What a run needs once its checks passed.

    Attributes:
        output: the output file (``~`` expanded).
        parts: its parts folder (:func:`~cxr_hub.ray_batch.results.parts_folder`).
        named: ``(absolute path, row name)`` of every input, in input order.
        done: the rows already made (the output's, then the parts'), by row name; empty without ``resume``.
        todo: the inputs without a row yet, in input order.
        header: the output's columns (``batch_columns`` of the classifier's classes).
        settings: the settings cells every row records (:meth:`PipelineSpec.row_settings`).
        spec: what the workers run: local model folders by their absolute paths, the device resolved.
        options: how the run uses Ray.
    """

    output: Path
    parts: Path
    named: list[tuple[Path, str]]
    done: dict[str, list[str]]
    todo: list[tuple[Path, str]]
    header: list[str]
    settings: dict[str, str]
    spec: PipelineSpec
    options: RayOptions


def _check_run(
    inputs: Sequence[str | Path], output: str | Path, spec: PipelineSpec, options: RayOptions, resume: bool
) -> _CheckedRun:
    """The checks of :func:`~cxr_hub.ray_batch.predict_on_ray`, in the order it lists them; nothing is written.

    Raises:
        RayPredictError: the first check that fails, with its message.
    """
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
    spec = _absolute_model_folders(spec)
    try:
        pipe = spec.load("cpu")  # once here, so a bad model folder fails in a second rather than on every worker
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
    return _CheckedRun(
        output=output,
        parts=parts,
        named=named,
        done=done,
        todo=[(p, n) for p, n in named if n not in done],
        header=header,
        settings=settings,
        spec=replace(spec, device=device),
        options=options,
    )


def _absolute_model_folders(spec: PipelineSpec) -> PipelineSpec:
    """``spec`` with each local model folder by its absolute path (workers do not run in this directory); a Hub
    repo id stays as it is."""
    return replace(
        spec,
        **{
            name: str(Path(value).expanduser().absolute())
            for name in ("segmentation", "classifier", "global_classifier")
            if (value := getattr(spec, name)) is not None and Path(value).expanduser().exists()
        },
    )
