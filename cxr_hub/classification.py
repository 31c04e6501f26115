"""Deprecated alias: the classification metrics moved to :mod:`cxr_hub.evaluation.classification_metrics`,
``evaluate`` to :mod:`cxr_hub.evaluation.classification` (the library) and :mod:`cxr_hub.cli.evaluate` (the command)
(issue #17). Removed in a later release.
"""

import warnings

from .cli.evaluate import add_parser, run_evaluate
from .evaluation.classification import (
    ALL_ROWS,
    DEFAULT_CLASSIFIERS,
    DEFAULT_SEGMENTATION,
    DEFAULT_SPLIT,
    DEFAULT_SPLIT_FILE,
    TASKS,
    evaluate_classification,
    stratified_subset,
)
from .evaluation.classification_metrics import (
    MACRO_METRICS,
    MACRO_NOTE,
    accuracy_by_group,
    bootstrap_ci,
    bootstrap_replicates,
    classification_report,
    confusion_matrix,
    json_ready,
    macro_metrics,
    per_class_metrics,
)
from .presets import REPO_ROOT

__all__ = [
    "ALL_ROWS",
    "DEFAULT_CLASSIFIERS",
    "DEFAULT_SEGMENTATION",
    "DEFAULT_SPLIT",
    "DEFAULT_SPLIT_FILE",
    "MACRO_METRICS",
    "MACRO_NOTE",
    "REPO_ROOT",
    "TASKS",
    "accuracy_by_group",
    "add_parser",
    "bootstrap_ci",
    "bootstrap_replicates",
    "classification_report",
    "confusion_matrix",
    "evaluate_classification",
    "json_ready",
    "macro_metrics",
    "per_class_metrics",
    "run_evaluate",
    "stratified_subset",
]

warnings.warn(
    "cxr_hub.classification is deprecated: import from cxr_hub.evaluation.classification_metrics or "
    "cxr_hub.evaluation.classification instead.",
    DeprecationWarning,
    stacklevel=2,
)
