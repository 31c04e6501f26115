"""Model cards, Hub-ready export folders and uploads for cxr-hub models: library functions, no argparse, no printing.

What lives here, three steps each usable alone:

* :mod:`~cxr_hub.hub.cards` — :func:`render_model_card` fills a markdown template from ``model_cards/`` (or the
  built-in fallback) with the model's config and *measured* metrics, and prepends Hugging Face YAML front matter
  generated with ``yaml.safe_dump`` (so it always parses); :mod:`~cxr_hub.hub.card_metrics` (the metrics a card
  accepts, :func:`card_metrics_from_report`) and :mod:`~cxr_hub.hub.paper_comparison` (the "Compared with the paper"
  section) are its parts;
* :mod:`~cxr_hub.hub.export` — :func:`export_hub_folder` writes ``save_pretrained`` output (safetensors only), the
  image processor and the card; :func:`validate_hub_folder` checks such a folder;
* :func:`push_to_hub` checks such a folder and uploads it (or, with ``dry_run=True``, only lists what it would send).

What it may import: :mod:`cxr_hub.loading`, :mod:`cxr_hub.paper`, :mod:`cxr_hub.presets`, ``yaml`` and
``huggingface_hub``; never :mod:`cxr_hub.cli` (the commands ``push`` and ``model-card`` are :mod:`cxr_hub.cli.hub`,
which calls these functions and prints) nor :mod:`cxr_hub.evaluation` (a card takes an evaluation's ``metrics.json``
as data).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from .card_metrics import CLASSIFICATION_MODEL_TYPES, SEGMENTATION_MODEL_TYPES, card_metrics_from_report
from .cards import (
    BASE_TAGS,
    BUILTIN_TEMPLATE,
    CITATION_BIBTEX,
    CLINICAL_NOTICE,
    DEFAULT_TEMPLATE_NAME,
    MODEL_CARDS_DIR,
    SUMMARY_FIELDS,
    evaluation_section,
    pipeline_tag_for,
    render_model_card,
)
from .export import (
    CREDENTIAL_PATTERNS,
    IGNORE_PATTERNS,
    PICKLE_SUFFIXES,
    SAFETENSORS_INDEX_NAME,
    SAFETENSORS_NAME,
    export_hub_folder,
    list_upload_files,
    push_to_hub,
    skipped_upload_files,
    validate_hub_folder,
)
from .paper_comparison import PAPER_SECTION, PAPER_SECTION_HINT, paper_comparison_section, refresh_paper_comparison

__all__ = [
    "BASE_TAGS",
    "BUILTIN_TEMPLATE",
    "CITATION_BIBTEX",
    "CLASSIFICATION_MODEL_TYPES",
    "CLINICAL_NOTICE",
    "CREDENTIAL_PATTERNS",
    "DEFAULT_TEMPLATE_NAME",
    "IGNORE_PATTERNS",
    "MODEL_CARDS_DIR",
    "PAPER_SECTION",
    "PAPER_SECTION_HINT",
    "PICKLE_SUFFIXES",
    "SAFETENSORS_INDEX_NAME",
    "SAFETENSORS_NAME",
    "SEGMENTATION_MODEL_TYPES",
    "SUMMARY_FIELDS",
    "card_metrics_from_report",
    "evaluation_section",
    "export_hub_folder",
    "list_upload_files",
    "paper_comparison_section",
    "pipeline_tag_for",
    "push_to_hub",
    "refresh_paper_comparison",
    "render_model_card",
    "skipped_upload_files",
    "validate_hub_folder",
]

#: The former module's command-line name, now in :mod:`cxr_hub.cli.hub` (deprecated here).
_MOVED_TO_CLI = {"add_parser": "cxr_hub.cli.hub"}


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_CLI:
        # the commands moved to the CLI layer, which this package must not import: looked up by name, with a
        # warning, for one release (as the shims of the other moved modules)
        warnings.warn(
            f"cxr_hub.hub.{name} moved to {_MOVED_TO_CLI[name]}.{name}; the old name will be removed.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED_TO_CLI[name]), name)
    raise AttributeError(f"module 'cxr_hub.hub' has no attribute {name!r}")
