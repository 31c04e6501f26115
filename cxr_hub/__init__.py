"""cxr-hub: the patch-based COVID-19 chest X-ray method of Oh, Park & Ye (IEEE TMI 2020) as Hub-loadable models.

Importing ``cxr_hub`` registers every config, model and the image processor with the ``transformers`` Auto classes.
"""

from __future__ import annotations

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

__version__ = "0.1.0"

register_auto_classes()

__all__ = [
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
