"""cxr-hub: the patch-based COVID-19 chest X-ray method of Oh, Park & Ye (IEEE TMI 2020) as Hub-loadable models.

Importing ``cxr_hub`` registers every config, model and the image processor with the ``transformers`` Auto classes
(importing :mod:`cxr_hub.models` does, so any use of a model class registers them too).

One exception keeps the command line fast: ``python -m cxr_hub`` imports this package only to find its
``__main__``, while ``sys.argv[0]`` is ``"-m"`` (documented Python behaviour for ``-m``). Then nothing heavy is
imported here: ``--help`` and option errors need no torch, and each command imports what it uses (a command that
loads a model imports :mod:`cxr_hub.models`, which registers). The public names below resolve on first access in
either case (PEP 562), so ``cxr_hub.CXRPipeline`` always works.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name → the submodule that defines it (imported on first access).
_EXPORTS = {
    "SUPPORTED_EXTENSIONS": "io",
    "load_image": "io",
    "LABEL_SETS": "models",
    "SEGMENTATION_LABELS": "models",
    "CXRImageProcessor": "models",
    "CXRInputError": "models",
    "FCDenseNetConfig": "models",
    "FCDenseNetForSemanticSegmentation": "models",
    "PatchClassifierConfig": "models",
    "PatchClassifierForImageClassification": "models",
    "UNetConfig": "models",
    "UNetForSemanticSegmentation": "models",
    "image_processor_for": "models",
    "register_auto_classes": "models",
    "CXRPipeline": "pipeline",
    "PipelineResult": "pipeline",
    "PreparedImage": "pipeline",
    "gamma_correct": "preprocessing",
    "histogram_equalize": "preprocessing",
    "map_boxes": "preprocessing",
    "map_points": "preprocessing",
    "preprocess_cxr": "preprocessing",
    "resize_image": "preprocessing",
    "resize_image_and_mask": "preprocessing",
    "resize_label_map": "preprocessing",
    "NotAFrontalCXRError": "validity",
}

__all__ = [  # a literal list, for linters and readers; a test keeps it equal to _EXPORTS
    "LABEL_SETS",
    "SEGMENTATION_LABELS",
    "SUPPORTED_EXTENSIONS",
    "CXRImageProcessor",
    "CXRInputError",
    "CXRPipeline",
    "FCDenseNetConfig",
    "FCDenseNetForSemanticSegmentation",
    "NotAFrontalCXRError",
    "PatchClassifierConfig",
    "PatchClassifierForImageClassification",
    "PipelineResult",
    "PreparedImage",
    "UNetConfig",
    "UNetForSemanticSegmentation",
    "__version__",
    "gamma_correct",
    "histogram_equalize",
    "image_processor_for",
    "load_image",
    "map_boxes",
    "map_points",
    "preprocess_cxr",
    "register_auto_classes",
    "resize_image",
    "resize_image_and_mask",
    "resize_label_map",
]

if TYPE_CHECKING:
    from .io import SUPPORTED_EXTENSIONS, load_image
    from .models import (
        LABEL_SETS,
        SEGMENTATION_LABELS,
        CXRImageProcessor,
        CXRInputError,
        FCDenseNetConfig,
        FCDenseNetForSemanticSegmentation,
        PatchClassifierConfig,
        PatchClassifierForImageClassification,
        UNetConfig,
        UNetForSemanticSegmentation,
        image_processor_for,
        register_auto_classes,
    )
    from .pipeline import CXRPipeline, PipelineResult, PreparedImage
    from .preprocessing import (
        gamma_correct,
        histogram_equalize,
        map_boxes,
        map_points,
        preprocess_cxr,
        resize_image,
        resize_image_and_mask,
        resize_label_map,
    )
    from .validity import NotAFrontalCXRError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cxr_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if sys.argv[:1] != ["-m"]:
    # an import by a program or a notebook: register with the Auto classes now, as documented
    from . import models as _models  # noqa: F401  (its import registers)
