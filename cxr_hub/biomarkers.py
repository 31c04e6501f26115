"""Simple radiological biomarkers from the segmentation: cardiothoracic ratio, lung intensity and lung areas.

The paper (section III-B) compares lung-area morphology and intensity statistics between classes; these are the
per-image quantities. All of them are in pixels of the original image, which assumes square pixels (true for
ordinary radiographs; the pixel spacing is not used, so areas are not in mm²).

Definitions:

* **Cardiothoracic ratio (CTR)** = max transverse heart width / max internal thoracic width, both from the label
  map. Heart width = max over rows of (rightmost - leftmost heart pixel + 1). Thoracic width = max over rows of
  (rightmost - leftmost pixel belonging to *either* lung + 1), i.e. from the outer edge of one lung to the outer edge
  of the other on the same row; the two maxima may lie on different rows, as in the radiological definition. The
  internal thoracic width is approximated by the lung fields (the segmentation has no rib cage). Only the largest
  connected region (8-connectivity) of the heart and of each lung counts: a width is an extent, so one stray
  segmented speck beside the heart would otherwise stretch it (on a real film a 95-pixel speck moved the CTR from
  0.54 to 0.79 when a few pixels of the segmentation changed). NaN, with a warning, when there is no heart or no
  lung.
* **Lung intensity**: mean and standard deviation of the preprocessed image (:func:`cxr_hub.preprocess_cxr`,
  gray levels in [0, 255], original size) over the lung mask (left | right lung).
* **Lung areas**: pixel counts of the left and right lung labels and their fractions of the image area.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .models import SEGMENTATION_IDS

# label values of cxr_hub.SEGMENTATION_LABELS
HEART, LEFT_LUNG, RIGHT_LUNG = SEGMENTATION_IDS["heart"], SEGMENTATION_IDS["left_lung"], SEGMENTATION_IDS["right_lung"]

#: The biomarkers compared between classes (the paper's section III-B and Fig. 4): :class:`Biomarkers` field →
#: (title for tables and plots, decimals to report). Intensities are gray levels of the preprocessed image, in
#: [0, 255]; the lung area is a share of the image so films of different sizes compare.
CLASS_BIOMARKERS: dict[str, tuple[str, int]] = {
    "lung_mean_intensity": ("lung mean intensity", 1),
    "lung_std_intensity": ("lung intensity SD", 1),
    "cardiothoracic_ratio": ("cardiothoracic ratio", 3),
    "lung_area_fraction": ("lung area (share of image)", 3),
}

#: Which cardiothoracic-ratio definition :func:`cardiothoracic_ratio` computes (recorded with every biomarker run).
CTR_DEFINITION = "widths of the largest 8-connected region of the heart and of each lung (since 2026-12-01)"

__all__ = [
    "CLASS_BIOMARKERS",
    "CTR_DEFINITION",
    "HEART",
    "LEFT_LUNG",
    "RIGHT_LUNG",
    "Biomarkers",
    "cardiothoracic_ratio",
    "compute_biomarkers",
    "largest_component",
    "max_row_width",
]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a mask (ties: the first in raster order); empty stays empty.

    Args:
        mask: (H, W) boolean array.

    Returns:
        (H, W) boolean array, a subset of ``mask``.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}.")
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return m.copy()
    # label only the bounding box: the organ is a fraction of the film, and this runs on every analysis
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    labels, n = ndimage.label(m[box], structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return m.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    out = np.zeros_like(m)
    out[box] = labels == int(sizes.argmax())
    return out


def max_row_width(mask: np.ndarray) -> int:
    """Widest horizontal extent of a mask: max over rows of (rightmost - leftmost foreground pixel + 1).

    Gaps inside a row count as width (the extent, not the pixel count), which is what a transverse diameter is.

    Args:
        mask: (H, W) boolean array.

    Returns:
        width in pixels; 0 for an empty mask.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}.")
    rows = m.any(axis=1)
    if not rows.any():
        return 0
    sub = m[rows]
    left = sub.argmax(axis=1)
    right = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    return int((right - left + 1).max())


def cardiothoracic_ratio(
    label_map: np.ndarray,
    heart_label: int = HEART,
    lung_labels: Sequence[int] = (LEFT_LUNG, RIGHT_LUNG),
    largest_only: bool = True,
) -> tuple[float, int, int]:
    """Cardiothoracic ratio from a label map (see the module docstring for the definition).

    Args:
        label_map: (H, W) integer labels (0 background, 1 heart, 2 left lung, 3 right lung).
        heart_label: label of the heart.
        lung_labels: labels of the lungs.
        largest_only: measure only the largest connected region of the heart and of each lung (default); False
            measures every labelled pixel (sensitive to stray specks; the earlier definition, see CHANGELOG.md).

    Returns:
        ``(ratio, heart_width, thoracic_width)``: ratio in (0, inf) (normally 0.3-0.7), NaN when either width is 0;
        the widths in pixels.
    """
    lab = np.asarray(label_map)
    heart = lab == heart_label
    if largest_only:
        heart = largest_component(heart)
        thorax = np.zeros_like(heart)
        for label in lung_labels:
            thorax |= largest_component(lab == label)
    else:
        thorax = np.isin(lab, list(lung_labels))
    heart_w = max_row_width(heart)
    thorax_w = max_row_width(thorax)
    ratio = heart_w / thorax_w if heart_w > 0 and thorax_w > 0 else math.nan
    return ratio, heart_w, thorax_w


@dataclass
class Biomarkers:
    """Per-image biomarkers (pixels of the original image; intensities in preprocessed gray levels [0, 255]).

    Attributes:
        cardiothoracic_ratio: heart width / thoracic width, NaN without heart or lung.
        heart_width_px: max transverse heart width.
        thoracic_width_px: max width across both lungs.
        lung_mean_intensity: mean preprocessed gray level in the lungs (NaN without lung).
        lung_std_intensity: its standard deviation (population, ddof=0).
        left_lung_area_px: pixels labelled left lung.
        right_lung_area_px: pixels labelled right lung.
        left_lung_area_fraction: left lung pixels / image pixels, in [0, 1].
        right_lung_area_fraction: right lung pixels / image pixels, in [0, 1].
        lung_area_fraction: both lungs / image pixels, in [0, 1].
        warnings: why a value is NaN, in words.
    """

    cardiothoracic_ratio: float
    heart_width_px: int
    thoracic_width_px: int
    lung_mean_intensity: float
    lung_std_intensity: float
    left_lung_area_px: int
    right_lung_area_px: int
    left_lung_area_fraction: float
    right_lung_area_fraction: float
    lung_area_fraction: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; NaN becomes None (strict JSON has no NaN)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def compute_biomarkers(label_map: np.ndarray, preprocessed: np.ndarray) -> Biomarkers:
    """All biomarkers of one image.

    Args:
        label_map: (H, W) integer labels at the original size (0 background, 1 heart, 2 left lung, 3 right lung).
        preprocessed: (H, W) float image from :func:`cxr_hub.preprocess_cxr`, gray levels in [0, 255].

    Returns:
        Biomarkers; ``warnings`` explains NaN values (no heart, no lung).
    """
    lab = np.asarray(label_map)
    img = np.asarray(preprocessed)
    if lab.ndim != 2 or lab.shape != img.shape:
        raise ValueError(f"label_map {lab.shape} and preprocessed image {img.shape} must be equal 2-D shapes.")
    notes: list[str] = []
    ratio, heart_w, thorax_w = cardiothoracic_ratio(lab)
    if heart_w == 0:
        notes.append("no heart segmented: cardiothoracic ratio is undefined (NaN)")
    elif thorax_w == 0:
        notes.append("no lung segmented: cardiothoracic ratio is undefined (NaN)")
    left = lab == LEFT_LUNG
    right = lab == RIGHT_LUNG
    lung = left | right
    n_left, n_right, n_lung = int(left.sum()), int(right.sum()), int(lung.sum())
    if n_lung:
        values = img[lung].astype(np.float64)
        mean, std = float(values.mean()), float(values.std())
    else:
        mean = std = math.nan
        notes.append("no lung segmented: lung intensity statistics are undefined (NaN)")
    total = float(lab.size)
    return Biomarkers(
        cardiothoracic_ratio=float(ratio),
        heart_width_px=heart_w,
        thoracic_width_px=thorax_w,
        lung_mean_intensity=mean,
        lung_std_intensity=std,
        left_lung_area_px=n_left,
        right_lung_area_px=n_right,
        left_lung_area_fraction=n_left / total,
        right_lung_area_fraction=n_right / total,
        lung_area_fraction=n_lung / total,
        warnings=notes,
    )
