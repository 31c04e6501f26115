"""Segmentation loss over sets of allowed classes (partial labels).

A label map with full labels (JSRT/SCR) says one class per pixel. The v7labs polygons of the Cohen films say less:
they outline each lung *including* the lung behind the heart and carry no heart, so a pixel inside the left-lung
polygon may be left lung or heart, and a pixel outside every polygon may be background or heart. Each pixel gets a
bitmask of allowed classes (bit c set: class c allowed) and the loss is ``-log sum_{c allowed} p_c``: the network is
free to split the allowed mass among the allowed classes, and is pushed only away from the classes that are ruled out.
With exactly one allowed class this is the cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "ALL_CLASSES",
    "allowed_from_labels",
    "allowed_from_v7labs",
    "partial_label_loss",
]

NUM_CLASSES = 4
BACKGROUND, HEART, LEFT_LUNG, RIGHT_LUNG = 0, 1, 2, 3
#: Bitmask that allows every class (unknown pixels).
ALL_CLASSES = (1 << NUM_CLASSES) - 1


def allowed_from_labels(labels: np.ndarray) -> np.ndarray:
    """Full labels (class ids 0..3) → one-class bitmasks, (H, W) uint8."""
    return (np.left_shift(1, labels.astype(np.uint8))).astype(np.uint8)


def allowed_from_v7labs(labels: np.ndarray, unknown_band: int = 1) -> np.ndarray:
    """v7labs lung polygons (0 outside, 2 left lung, 3 right lung; no heart) → allowed-class bitmasks.

    Inside a lung polygon: that lung or heart (the polygon includes the lung behind the heart). Outside every polygon:
    background or heart (the mediastinum). Within ``unknown_band`` pixels of a polygon's border: any class, because the
    two annotation conventions (v7labs, SCR) draw the border differently.

    Args:
        labels: (H, W) label map with values in {0, 2, 3}.
        unknown_band: half-width in pixels of the border band left unconstrained (0: none).

    Returns:
        (H, W) uint8 bitmask.
    """
    import cv2

    heart = 1 << HEART
    out = np.full(labels.shape, (1 << BACKGROUND) | heart, np.uint8)
    out[labels == LEFT_LUNG] = (1 << LEFT_LUNG) | heart
    out[labels == RIGHT_LUNG] = (1 << RIGHT_LUNG) | heart
    if unknown_band > 0:
        kernel = np.ones((2 * unknown_band + 1, 2 * unknown_band + 1), np.uint8)
        lungs = np.isin(labels, (LEFT_LUNG, RIGHT_LUNG)).astype(np.uint8)
        # the band around each polygon, and between touching polygons of the two lungs
        band = (cv2.dilate(lungs, kernel) != cv2.erode(lungs, kernel)) | (
            cv2.dilate((labels == LEFT_LUNG).astype(np.uint8), kernel).astype(bool)
            & cv2.dilate((labels == RIGHT_LUNG).astype(np.uint8), kernel).astype(bool)
        )
        out[band] = ALL_CLASSES
    return out


def partial_label_loss(
    logits: torch.Tensor, allowed: torch.Tensor, class_weights: Sequence[float] | torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over pixels of ``-log sum_{c in allowed} softmax(logits)_c``.

    Args:
        logits: (B, C, H, W) raw scores (computed in fp32 by the caller for precision).
        allowed: (B, H, W) integer bitmask of allowed classes; 0 (nothing allowed) marks a pixel ignored.
        class_weights: optional C weights; a pixel with exactly one allowed class is weighted by that class's weight
            (the weighted cross-entropy), a pixel with several allowed classes by 1.

    Returns:
        Scalar loss: the weighted mean over non-ignored pixels (as ``cross_entropy`` with weights).
    """
    c = logits.shape[1]
    bits = torch.arange(c, device=logits.device).view(1, c, 1, 1)
    mask = ((allowed.long().unsqueeze(1) >> bits) & 1).bool()  # (B, C, H, W)
    valid = mask.any(1)
    log_z = torch.logsumexp(logits, 1)
    log_allowed = torch.logsumexp(logits.masked_fill(~mask, float("-inf")), 1)
    per_pixel = torch.where(valid, log_z - log_allowed, torch.zeros_like(log_z))
    if class_weights is None:
        weight = valid.to(logits.dtype)
    else:
        w = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device).view(1, c, 1, 1)
        single = mask.sum(1) == 1
        weight = torch.where(single, (w * mask).sum(1), torch.ones_like(log_z)) * valid
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1e-12)
