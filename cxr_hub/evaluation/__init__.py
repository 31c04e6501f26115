"""Evaluation of the method: library functions that score models and study biomarkers; no argparse, no printing.

What lives here:

* :mod:`~cxr_hub.evaluation.classification` — ``evaluate``: the full pipeline on a labelled manifest, scored as a
  classifier (:func:`~cxr_hub.evaluation.classification.evaluate_classification`);
  :mod:`~cxr_hub.evaluation.classification_metrics` — the metrics themselves (confusion matrix, per-class and macro
  metrics, patient bootstrap, :func:`~cxr_hub.evaluation.classification_metrics.classification_report`).
* :mod:`~cxr_hub.evaluation.segmentation` — ``evaluate-segmentation`` (:func:`evaluate_segmentation`) and the model
  loading and inference it shares with the biomarker study (:func:`load_segmentation_model`, :func:`segment`);
  :mod:`~cxr_hub.evaluation.metrics` — Jaccard / Dice per structure and the heart's share of the lung.
* :mod:`~cxr_hub.evaluation.biomarker_study` — the paper's biomarker study (``biomarkers``), with its statistics and
  outputs in :mod:`~cxr_hub.evaluation.biomarker_statistics`; :mod:`~cxr_hub.evaluation.stats` — the class-wise
  statistics (summaries, KS normality, rank-sum and McNemar tests, markdown tables).
* :mod:`~cxr_hub.evaluation.selection` — which manifest rows are scored (:func:`select_rows`).

What it may import: the method's modules and the pipeline (``cxr_hub.pipeline``, ``cxr_hub.models``,
``cxr_hub.biomarkers``, ``cxr_hub.manifest``, ...), never :mod:`cxr_hub.cli` (the commands call these functions and
print) nor :mod:`cxr_hub.hub`.

The names below are those of the former module ``cxr_hub.evaluation`` (segmentation evaluation), which this package
replaces; they resolve on first access (PEP 562), so ``import cxr_hub.evaluation.stats`` loads no torch.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

#: Public name → the submodule that defines it (imported on first access).
_EXPORTS = {
    "DEFAULT_SEGMENTATION": "segmentation",
    "UNDERSEGMENTATION_THRESHOLD": "segmentation",
    "ctr_agreement": "segmentation",
    "evaluate_segmentation": "segmentation",
    "load_segmentation_model": "segmentation",
    "segment": "segmentation",
    "segmentation_processor": "segmentation",
    "undersegmentation_report": "segmentation",
    "select_rows": "selection",
}

#: The former module's command-line names, now in :mod:`cxr_hub.cli.evaluate_segmentation` (deprecated here).
_MOVED_TO_CLI = {
    "add_parser": "cxr_hub.cli.evaluate_segmentation",
    "run_evaluate_segmentation": "cxr_hub.cli.evaluate_segmentation",
}

__all__ = [  # a literal list, for linters and readers; equal to _EXPORTS
    "DEFAULT_SEGMENTATION",
    "UNDERSEGMENTATION_THRESHOLD",
    "ctr_agreement",
    "evaluate_segmentation",
    "load_segmentation_model",
    "segment",
    "segmentation_processor",
    "select_rows",
    "undersegmentation_report",
]

if TYPE_CHECKING:
    from .segmentation import (
        DEFAULT_SEGMENTATION,
        UNDERSEGMENTATION_THRESHOLD,
        ctr_agreement,
        evaluate_segmentation,
        load_segmentation_model,
        segment,
        segmentation_processor,
        undersegmentation_report,
    )
    from .selection import select_rows


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later accesses skip this function
        return value
    if name in _MOVED_TO_CLI:
        # the command moved to the CLI layer, which this package must not import: looked up by name, with a warning,
        # for one release (as the shims of the other moved modules)
        warnings.warn(
            f"cxr_hub.evaluation.{name} moved to {_MOVED_TO_CLI[name]}.{name}; the old name will be removed.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED_TO_CLI[name]), name)
    raise AttributeError(f"module 'cxr_hub.evaluation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
