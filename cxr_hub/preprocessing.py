"""The paper's preprocessing (section II-A) and frame mapping, re-exported from the one implementation.

The code lives in ``cxr_hub/models/image_processing_cxr.py`` because it must ship next to the weights for
``trust_remote_code``; this module only gives it a stable import path (``cxr_hub.preprocessing``).
"""

from .models.image_processing_cxr import (
    MAX_PIXELS,
    MIN_SIDE,
    CXRImageProcessor,
    CXRInputError,
    gamma_correct,
    histogram_equalize,
    map_boxes,
    map_points,
    preprocess_cxr,
    resize_image,
    resize_image_and_mask,
    resize_label_map,
    validate_image_array,
)

__all__ = [
    "MAX_PIXELS",
    "MIN_SIDE",
    "CXRImageProcessor",
    "CXRInputError",
    "gamma_correct",
    "histogram_equalize",
    "map_boxes",
    "map_points",
    "preprocess_cxr",
    "resize_image",
    "resize_image_and_mask",
    "resize_label_map",
    "validate_image_array",
]
