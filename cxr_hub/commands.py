"""Deprecated alias of the ``preprocess`` and ``predict`` commands, which moved to :mod:`cxr_hub.cli` (issue #17):
:mod:`cxr_hub.cli.preprocess`, :mod:`cxr_hub.cli.predict`, the batch CSV in :mod:`cxr_hub.cli.batch` and the
``--sampling`` option in :mod:`cxr_hub.cli.options`. Removed in a later release.
"""

import warnings
from typing import Any

from .cli import predict as _predict
from .cli import preprocess as _preprocess
from .cli.batch import (
    BATCH_CSV_NAME,
    atomic_write,
    batch_columns,
    batch_csv_path,
    batch_inputs,
    error_cells,
    is_batch,
    run_predict_batch,
)
from .cli.options import default_sampling, sampling_mode
from .cli.predict import DEFAULT_CLASSIFIER, DEFAULT_SEGMENTATION, predict_option_problem, run_predict
from .cli.preprocess import MAX_GAMMA, PREPROCESS_SIZES, run_preprocess
from .presets import REPO_ROOT


def add_parser(subparsers: Any) -> None:
    """Registers ``preprocess`` and ``predict``, as this module did."""
    _preprocess.add_parser(subparsers)
    _predict.add_parser(subparsers)


__all__ = [
    "BATCH_CSV_NAME",
    "DEFAULT_CLASSIFIER",
    "DEFAULT_SEGMENTATION",
    "MAX_GAMMA",
    "PREPROCESS_SIZES",
    "REPO_ROOT",
    "add_parser",
    "atomic_write",
    "batch_columns",
    "batch_csv_path",
    "batch_inputs",
    "default_sampling",
    "error_cells",
    "is_batch",
    "predict_option_problem",
    "run_predict",
    "run_predict_batch",
    "run_preprocess",
    "sampling_mode",
]

warnings.warn(
    "cxr_hub.commands is deprecated: import from cxr_hub.cli.predict (and its siblings) instead.",
    DeprecationWarning,
    stacklevel=2,
)
