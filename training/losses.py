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
    "HeartAtlas",
    "allowed_from_labels",
    "allowed_from_v7labs",
    "heart_atlas",
    "heart_share_penalty",
    "partial_label_loss",
]

NUM_CLASSES = 4
BACKGROUND, HEART, LEFT_LUNG, RIGHT_LUNG = 0, 1, 2, 3
#: Bitmask that allows every class (unknown pixels).
ALL_CLASSES = (1 << NUM_CLASSES) - 1


def allowed_from_labels(labels: np.ndarray) -> np.ndarray:
    """Full labels (class ids 0..3) → one-class bitmasks, (H, W) uint8."""
    return (np.left_shift(1, labels.astype(np.uint8))).astype(np.uint8)


class HeartAtlas:
    """Where a heart can be, in coordinates of the lungs' bounding box, learned from fully labelled films.

    Without it, the partial labels of the v7labs films allow the heart anywhere inside a lung polygon and anywhere
    outside: a network can then call the whole lower left lung heart at no cost (measured: a U-Net trained so labelled
    a third of the Cohen test polygons heart, and used the heart as its label for anything outside the lungs). The
    atlas is where the hearts of the training films (SCR masks) lie, each mapped into the box that bounds its two
    lungs, then dilated by ``margin`` of the box size for hearts larger or placed otherwise than the training hearts
    (AP films magnify the heart; cardiomegaly). A v7labs film allows the
    heart only inside the atlas mapped into the box of its own polygons.

    Args:
        grid: (G, G) bool, the atlas on a unit grid spanning the lung box (row 0 = the box's top).
    """

    def __init__(self, grid: np.ndarray) -> None:
        if grid.ndim != 2 or grid.shape[0] != grid.shape[1]:
            raise ValueError(f"the heart atlas must be a square (G, G) grid, got shape {grid.shape}")
        self.grid = grid.astype(bool)

    def region(self, lungs: np.ndarray) -> np.ndarray | None:
        """The atlas mapped into the bounding box of ``lungs``.

        Args:
            lungs: (H, W) bool, both lungs (polygons or masks).

        Returns:
            (H, W) bool where a heart is allowed, or None when ``lungs`` is empty (no box to map into).
        """
        import cv2

        rows, cols = np.nonzero(lungs)
        if rows.size == 0:
            return None
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        patch = cv2.resize(self.grid.astype(np.uint8), (right - left, bottom - top), interpolation=cv2.INTER_NEAREST)
        out = np.zeros(lungs.shape, bool)
        out[top:bottom, left:right] = patch.astype(bool)
        return out


def heart_atlas(labels: np.ndarray, grid: int = 64, margin: float = 0.03, min_share: float = 0.0) -> HeartAtlas:
    """The :class:`HeartAtlas` of fully labelled films.

    Args:
        labels: (N, H, W) class ids 0..3 (background, heart, left lung, right lung).
        grid: atlas resolution (grid × grid over each film's lung box).
        margin: dilation of the atlas, as a share of the grid (0.03: 3 % of the box width and height).
        min_share: a grid cell belongs to the atlas when more than this share of the films has heart there (0: the
            union of all hearts); a few outlying hearts otherwise widen the atlas for every film.

    Returns:
        The atlas. Hearts reaching outside their lung box are clipped to it (the box spans the costophrenic angles, so
        this is rare and the margin covers it).
    """
    import cv2

    count = np.zeros((grid, grid), np.float64)
    for lab in labels:
        lungs = np.isin(lab, (LEFT_LUNG, RIGHT_LUNG))
        rows, cols = np.nonzero(lungs)
        if rows.size == 0:
            continue
        box = lab[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == HEART
        count += cv2.resize(box.astype(np.uint8), (grid, grid), interpolation=cv2.INTER_NEAREST)
    union = (count > min_share * max(len(labels), 1)).astype(np.uint8)
    radius = max(0, round(margin * grid))
    if radius:
        union = cv2.dilate(union, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))
    return HeartAtlas(union.astype(bool))


def allowed_from_v7labs(labels: np.ndarray, unknown_band: int = 1, atlas: HeartAtlas | None = None) -> np.ndarray:
    """v7labs lung polygons (0 outside, 2 left lung, 3 right lung; no heart) → allowed-class bitmasks.

    Inside a lung polygon: that lung or heart (the polygon includes the lung behind the heart). Outside every polygon:
    background or heart (the mediastinum). Within ``unknown_band`` pixels of a polygon's border: any class, because the
    two annotation conventions (v7labs, SCR) draw the border differently. With an ``atlas``, the heart is allowed only
    inside the atlas region of this film's polygons, band included.

    Args:
        labels: (H, W) label map with values in {0, 2, 3}.
        unknown_band: half-width in pixels of the border band left unconstrained (0: none).
        atlas: where a heart can be (:func:`heart_atlas`); None allows it everywhere.

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
    if atlas is not None:
        region = atlas.region(np.isin(labels, (LEFT_LUNG, RIGHT_LUNG)))
        if region is not None:
            out[~region] &= np.uint8(ALL_CLASSES & ~heart)
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


def heart_share_penalty(logits: torch.Tensor, allowed: torch.Tensor, limit: float) -> torch.Tensor:
    """A size constraint on the heart inside the lungs: ``mean_b max(0, share_b - limit)``.

    ``share_b`` is the expected share of image b's lung region that the network calls heart: the mean heart
    probability over the pixels that allow a lung but not the background (inside the v7labs polygons; inside the
    lungs of a fully labelled film, where the heart is ruled out anyway and the share is ~0). The partial labels
    leave the split between lung and heart inside a polygon free, and the heart atlas bounds where the heart can be
    but not how much of that region it takes; this bounds how much (a size constraint in the sense of Kervadec et
    al., "Constrained-CNN losses for weakly supervised segmentation", MedIA 2019). Images without such pixels add 0.

    Args:
        logits: (B, C, H, W) raw scores.
        allowed: (B, H, W) allowed-class bitmasks (:func:`allowed_from_v7labs`, :func:`allowed_from_labels`).
        limit: the share of the lung region above which the heart is penalised (0..1).

    Returns:
        Scalar penalty, 0 when every image is within the limit.
    """
    a = allowed.long()
    lung_bits = (1 << LEFT_LUNG) | (1 << RIGHT_LUNG)
    region = ((a & lung_bits) != 0) & ((a & (1 << BACKGROUND)) == 0)
    p_heart = torch.softmax(logits, 1)[:, HEART]
    area = region.sum((1, 2))
    share = (p_heart * region).sum((1, 2)) / area.clamp_min(1)
    excess = torch.relu(share - limit) * (area > 0)
    return excess.mean()
