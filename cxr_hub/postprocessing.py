"""Anatomical clean-up of a predicted lung/heart label map (a plain function the pipeline applies after the argmax).

A segmentation network trained on one hospital's films leaves islands on others: lung labels above the clavicles or
in the abdomen, heart specks below the diaphragm, holes in an opacified lung. :func:`clean_label_map` keeps what a
frontal chest film can show:

1. each lung: the largest 8-connected region on its own side of the image (the patient's right lung appears on the
   image's left in a PA or AP view), holes filled;
2. the heart: its largest region whose centre lies between the two lungs (inside their bounding box), holes filled;
   regions are kept or dropped whole, never cut;
3. everything removed becomes background; a filled hole takes the structure that surrounds it.

Whether the pipeline applies it is a property of the segmentation model, stored in its config
(``config.postprocessing = "clean_label_map"``, :func:`uses_postprocessing`): the measured numbers of a model (its card,
the tables) were made with or without it, so a model's masks never change behind its numbers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from .models import SEGMENTATION_IDS

__all__ = ["POSTPROCESSING", "CleanupReport", "clean_label_map", "uses_postprocessing"]

#: The value of ``config.postprocessing`` that asks for :func:`clean_label_map`.
POSTPROCESSING = "clean_label_map"

BACKGROUND, HEART, LEFT_LUNG, RIGHT_LUNG = (
    SEGMENTATION_IDS[n] for n in ("background", "heart", "left_lung", "right_lung")
)
_EIGHT = np.ones((3, 3), bool)


class CleanupReport(NamedTuple):
    """What :func:`clean_label_map` changed: pixel counts (at the label map's resolution)."""

    removed: int  # structure pixels set to background
    filled: int  # background pixels inside a structure given to it
    changed_fraction: float  # (removed + filled) / labelled pixels before the clean-up (0 when none)


def uses_postprocessing(config: Any) -> bool:
    """True when a segmentation model's config asks for :func:`clean_label_map` (``config.postprocessing``).

    Raises:
        ValueError: an unknown post-processing name (a config from a newer cxr-hub, say).
    """
    name = getattr(config, "postprocessing", None)
    if name in (None, "none"):
        return False
    if name != POSTPROCESSING:
        raise ValueError(
            f"Unknown segmentation post-processing {name!r} in the model's config; this cxr-hub knows "
            f"{POSTPROCESSING!r}. Upgrade cxr-hub or set config.postprocessing to 'none'."
        )
    return True


def _regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=_EIGHT)


def _largest_on_side(mask: np.ndarray, side: str) -> np.ndarray:
    """The largest 8-connected region of ``mask`` whose centroid lies on ``side`` ("left"/"right") of the image's
    midline; the largest region anywhere when none lies on that side (an empty mask stays empty)."""
    labels, n = _regions(mask)
    if n <= 1:
        return mask.copy()
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(mask, labels, index)
    order = index[np.argsort(-sizes, kind="stable")]
    mid = mask.shape[1] / 2
    centroids = ndimage.center_of_mass(mask, labels, order)
    on_side = [k for k, (_, x) in zip(order, centroids, strict=True) if (x < mid) == (side == "left")]
    if on_side:
        return labels == on_side[0]
    return labels == order[0]


def _largest_heart(heart: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """The largest heart region whose centroid lies between the lungs (inside their bounding box); the largest region
    when none does or there is no lung. Whole regions are kept or dropped, never cut: a network that labels part of
    an opacified lung as heart keeps that region, and the lung-side rules decide nothing about it."""
    labels, n = _regions(heart)
    if n == 0:
        return heart.copy()
    index = np.arange(1, n + 1)
    order = index[np.argsort(-ndimage.sum_labels(heart, labels, index), kind="stable")]
    if lungs.any():
        ys, xs = np.nonzero(lungs)
        for k, (cy, cx) in zip(order, ndimage.center_of_mass(heart, labels, order), strict=True):
            if ys.min() <= cy <= ys.max() and xs.min() <= cx <= xs.max():
                return labels == k
    return labels == order[0]


def clean_label_map(label_map: np.ndarray) -> tuple[np.ndarray, CleanupReport]:
    """Cleans a predicted label map (0 background, 1 heart, 2 left lung, 3 right lung).

    Args:
        label_map: (H, W) integer label map, any resolution.

    Returns:
        The cleaned map (same shape and dtype) and a :class:`CleanupReport`.

    Raises:
        ValueError: not a 2-D map or values outside 0..3.
    """
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be 2-D (H, W), got shape {label_map.shape}.")
    if label_map.size and (label_map.min() < 0 or label_map.max() > 3):
        raise ValueError("label_map values must be 0 (background), 1 (heart), 2 (left lung) or 3 (right lung).")
    before = label_map
    out = np.zeros_like(label_map)
    # the patient's right lung is on the image's left in a frontal view
    lungs = {}
    for label, side in ((RIGHT_LUNG, "left"), (LEFT_LUNG, "right")):
        keep = _largest_on_side(label_map == label, side)
        lungs[label] = keep
        out[keep] = label
    heart = label_map == HEART
    lung_any = lungs[LEFT_LUNG] | lungs[RIGHT_LUNG]
    if heart.any():
        out[_largest_heart(heart, lung_any) & (out == BACKGROUND)] = HEART
    # fill holes last, so that a structure's hole is filled with the structure that surrounds it
    for label in (RIGHT_LUNG, LEFT_LUNG, HEART):
        region = out == label
        if region.any():
            holes = ndimage.binary_fill_holes(region) & (out == BACKGROUND)
            out[holes] = label
    removed = int(np.count_nonzero((before != BACKGROUND) & (out == BACKGROUND)))
    filled = int(np.count_nonzero((before == BACKGROUND) & (out != BACKGROUND)))
    labelled = int(np.count_nonzero(before != BACKGROUND))
    return out, CleanupReport(removed, filled, (removed + filled) / labelled if labelled else 0.0)
