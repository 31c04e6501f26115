"""Deprecated alias: the biomarker study moved to :mod:`cxr_hub.evaluation.biomarker_study` (and its statistics to
:mod:`cxr_hub.evaluation.biomarker_statistics`), the ``biomarkers`` command to :mod:`cxr_hub.cli.biomarkers`
(issue #17). Removed in a later release.
"""

import warnings

from .cli.biomarkers import add_parser, run_biomarkers_command
from .evaluation.biomarker_statistics import (
    REFERENCE_UNITS,
    SUBSETS,
    biomarker_report,
    is_ap_supine,
    plot_mean_sd,
    plot_scatter,
    reference_description,
    reference_from_report,
    render_tables,
)
from .evaluation.biomarker_study import (
    BIOMARKER_COLUMNS,
    CSV_COLUMNS,
    DEFAULT_SEGMENTATION,
    TASKS,
    rebuild_from_csv,
    run_biomarkers,
    write_outputs,
)
from .presets import REPO_ROOT

__all__ = [
    "BIOMARKER_COLUMNS",
    "CSV_COLUMNS",
    "DEFAULT_SEGMENTATION",
    "REFERENCE_UNITS",
    "REPO_ROOT",
    "SUBSETS",
    "TASKS",
    "add_parser",
    "biomarker_report",
    "is_ap_supine",
    "plot_mean_sd",
    "plot_scatter",
    "rebuild_from_csv",
    "reference_description",
    "reference_from_report",
    "render_tables",
    "run_biomarkers",
    "run_biomarkers_command",
    "write_outputs",
]

warnings.warn(
    "cxr_hub.biomarker_analysis is deprecated: import from cxr_hub.evaluation.biomarker_study (or "
    "cxr_hub.evaluation.biomarker_statistics) instead.",
    DeprecationWarning,
    stacklevel=2,
)
