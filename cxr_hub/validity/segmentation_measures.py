"""What the anatomy, polarity, orientation and learned checks measure, from the segmentation's input and output.

:func:`measure_segmentation` measures the lungs and the heart in the segmentation's class probabilities (areas,
centroids, shapes, the probability-weighted :func:`_soft_regions`) and the gray levels of the input around them;
:func:`decision_features` adds what compares the input with a calibration's mean frontal film (orientation, polarity,
label fit). :class:`~cxr_hub.validity.InputValidator` applies the thresholds.

Imports numpy, OpenCV, :mod:`cxr_hub.biomarkers` (the label indices), :mod:`~cxr_hub.validity.report` and
:mod:`~cxr_hub.validity.calibration`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..biomarkers import HEART, LEFT_LUNG, RIGHT_LUNG
from .calibration import Calibration
from .report import THUMB_SIDE, Measurements

#: Side the segmentation measurements are taken at (area-reduced from the network's 256: a quarter of the cost, and
#: plenty for areas, centroids and shapes).
WORK_SIDE = 128


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two same-shape arrays, in [-1, 1]; 0 when either is constant."""
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else 0.0


def _zscore(a: np.ndarray) -> np.ndarray:
    """``a`` minus its mean, over its standard deviation (not divided when constant), as float32."""
    s = float(a.std())
    return ((a - a.mean()) / s if s > 0 else a - a.mean()).astype(np.float32)


def _region(mask: np.ndarray, side: int) -> dict[str, float]:
    """Share, centroid, largest 8-connected component (share of the region, bbox, solidity) and component count."""
    n = float(side * side)
    total = int(mask.sum())
    out = {"share": total / n, "cx": 0.5, "cy": 0.5, "cc_share": 0.0, "n_cc": 0.0}
    out.update({"top": 0.5, "bottom": 0.5, "left": 0.5, "right": 0.5, "solidity": 0.0})
    if total == 0:
        return out
    ys, xs = np.nonzero(mask)
    out["cx"] = (float(xs.mean()) + 0.5) / side
    out["cy"] = (float(ys.mean()) + 0.5) / side
    _count, cc, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    big = int(np.argmax(areas)) + 1
    out["cc_share"] = float(areas.max()) / total
    out["n_cc"] = float((areas >= 0.001 * n).sum())
    x, y, bw, bh = (
        int(stats[big, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT)
    )
    out.update({"top": y / side, "bottom": (y + bh) / side, "left": x / side, "right": (x + bw) / side})
    contours, _ = cv2.findContours((cc == big).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    hull_area = float(cv2.contourArea(hull))
    out["solidity"] = min(1.0, float(areas.max()) / hull_area) if hull_area > 0 else 1.0
    return out


#: Prior mass (share of the frame) that pulls a soft centroid towards the middle when a region has almost no
#: probability mass, so the centroid moves smoothly instead of jumping when a region appears.
_SOFT_PRIOR = 0.002


def _soft_regions(p: np.ndarray) -> dict[str, float]:
    """Probability-weighted (soft) region measurements: they change smoothly with the probabilities, unlike the
    argmax ones, so a segmentation that differs by a rounding (bf16 vs fp32, another CPU) moves the learned check's
    features by as little. Prefix ``s_``: ``s_rl``/``s_ll``/``s_h`` mass (mean probability), centroid ``_x``/``_y``,
    5 % and 95 % quantiles of the mass along the rows (``_y05``, ``_y95``) and columns (``_x05``, ``_x95``); and
    ``s_balance``, ``s_sides``, ``s_heart_between`` (clipped to [-1, 2]), ``s_heart_low``."""
    side = p.shape[1]
    axis = (np.arange(side, dtype=np.float64) + 0.5) / side
    out: dict[str, float] = {}
    prior = _SOFT_PRIOR * side * side
    for prefix, label in (("s_rl", RIGHT_LUNG), ("s_ll", LEFT_LUNG), ("s_h", HEART)):
        q = p[label].astype(np.float64)
        rows, cols = q.sum(axis=1), q.sum(axis=0)
        mass = float(rows.sum())
        out[prefix] = mass / (side * side)
        out[f"{prefix}_x"] = float((cols @ axis + prior * 0.5) / (mass + prior))
        out[f"{prefix}_y"] = float((rows @ axis + prior * 0.5) / (mass + prior))
        for name, marginal in (("y", rows), ("x", cols)):
            cdf = np.cumsum(marginal + prior / side)  # the prior spread evenly: defined for an empty region too
            cdf /= cdf[-1]
            out[f"{prefix}_{name}05"] = float(np.interp(0.05, cdf, axis))
            out[f"{prefix}_{name}95"] = float(np.interp(0.95, cdf, axis))
    rl, ll = out["s_rl"], out["s_ll"]
    out["s_balance"] = (min(rl, ll) + _SOFT_PRIOR) / (max(rl, ll) + _SOFT_PRIOR)
    out["s_sides"] = min(0.5 - out["s_rl_x"], out["s_ll_x"] - 0.5)
    span = out["s_ll_x"] - out["s_rl_x"]
    between = (out["s_h_x"] - out["s_rl_x"]) / span if abs(span) > 0.02 else 0.5
    out["s_heart_between"] = float(np.clip(between, -1.0, 2.0))
    out["s_heart_low"] = out["s_h_y"] - 0.5 * (out["s_rl_y"] + out["s_ll_y"])
    return out


def _label_scalars(regions: dict[str, np.ndarray], side: int) -> dict[str, float]:
    """:func:`measure_segmentation`'s measurements of the argmax labels: each region's :func:`_region` (prefixed
    ``rl_``, ``ll_``, ``h_``), then ``lung_share``, ``heart_share``, ``lung_balance``, ``lung_sides``,
    ``heart_present``, ``heart_between`` and ``heart_low`` (NaN without a heart or both lungs).

    Args:
        regions: ``"rl"``, ``"ll"``, ``"h"`` → (side, side) bool mask of the right lung, left lung and heart labels.
        side: the masks' side (:data:`WORK_SIDE`).
    """
    s: dict[str, float] = {}
    for prefix, mask in regions.items():
        for key, value in _region(mask, side).items():
            s[f"{prefix}_{key}"] = value
    rl, ll = s["rl_share"], s["ll_share"]
    s["lung_share"] = rl + ll
    s["heart_share"] = s["h_share"]
    s["lung_balance"] = min(rl, ll) / max(rl, ll) if max(rl, ll) > 0 else 0.0
    both = rl > 0 and ll > 0
    s["lung_sides"] = min(0.5 - s["rl_cx"], s["ll_cx"] - 0.5) if both else -0.5
    s["heart_present"] = float(s["h_share"] >= 0.002)
    span = s["ll_cx"] - s["rl_cx"]
    if s["heart_present"] and both and abs(span) > 1e-3:
        s["heart_between"] = (s["h_cx"] - s["rl_cx"]) / span
        s["heart_low"] = s["h_cy"] - 0.5 * (s["rl_cy"] + s["ll_cy"])
    else:
        s["heart_between"], s["heart_low"] = math.nan, math.nan
    return s


def _confidence_scalars(p: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, float]:
    """How sure the segmentation is: ``lung_conf`` (mean top probability on lung pixels, 0 without lung),
    ``entropy`` (mean entropy / log 4, in [0, 1]) and ``uncertain`` (share of pixels whose top probability is below
    0.6).

    Args:
        p: (4, S, S) float32 class probabilities.
        regions: the label masks of :func:`_label_scalars`.
    """
    s: dict[str, float] = {}
    top = p.max(axis=0)
    lung = regions["rl"] | regions["ll"]
    s["lung_conf"] = float(top[lung].mean()) if lung.any() else 0.0
    ent = -(p * np.log(np.clip(p, 1e-6, 1.0))).sum(axis=0) / math.log(4.0)
    s["entropy"] = float(ent.mean())
    s["uncertain"] = float((top < 0.6).mean())
    return s


def _gray_scalars(g: np.ndarray, regions: dict[str, np.ndarray], labels: dict[str, float]) -> dict[str, float]:
    """The input's gray levels on and around the segmented anatomy: ``lung_mean``, ``lung_std``, ``lung_contrast``
    (0 without lung), ``symmetry``, ``smoothness``, ``edges``, ``border`` and ``top_bottom`` (see
    :func:`measure_segmentation`).

    Args:
        g: (S, S) float32 segmentation input in [0, 1].
        regions: the label masks of :func:`_label_scalars`.
        labels: :func:`_label_scalars`'s measurements (the lungs' centroids and boxes place the mediastinum).
    """
    s: dict[str, float] = {}
    side = g.shape[0]
    lung = regions["rl"] | regions["ll"]
    both = labels["rl_share"] > 0 and labels["ll_share"] > 0
    if lung.any():
        s["lung_mean"] = float(g[lung].mean())
        s["lung_std"] = float(g[lung].std())
        # the mediastinum: heart pixels, and the non-lung band between the lungs' centroids over their rows
        med = regions["h"].copy()
        if both:
            x0, x1 = sorted((labels["rl_cx"], labels["ll_cx"]))
            c0, c1 = int(side * (x0 + 0.25 * (x1 - x0))), math.ceil(side * (x1 - 0.25 * (x1 - x0)))
            r0 = int(side * min(labels["rl_top"], labels["ll_top"]))
            r1 = math.ceil(side * max(labels["rl_bottom"], labels["ll_bottom"]))
            band = np.zeros_like(med)
            band[r0:r1, c0:c1] = True
            med |= band & ~lung
        s["lung_contrast"] = float(g[med].mean()) - s["lung_mean"] if med.any() else 0.0
    else:
        s["lung_mean"], s["lung_std"], s["lung_contrast"] = 0.0, 0.0, 0.0
    g64 = cv2.resize(g, (64, 64), interpolation=cv2.INTER_AREA)
    s["symmetry"] = _corr(g64, g64[:, ::-1])
    s["smoothness"] = _corr(g[:, 1:], g[:, :-1])
    s["edges"] = float(np.abs(np.diff(g, axis=1)).mean() + np.abs(np.diff(g, axis=0)).mean())
    frame = max(1, side // 32)
    ring = np.ones_like(g, bool)
    ring[frame:-frame, frame:-frame] = False
    s["border"] = float(g[ring].mean())
    q = side // 4
    s["top_bottom"] = float(g[-q:].mean() - g[:q].mean())
    return s


def measure_segmentation(gray: np.ndarray, probs: np.ndarray) -> Measurements:
    """The anatomy, polarity and learned checks' measurements, from the segmentation input and its output.

    Args:
        gray: (S, S) float32 segmentation input as gray levels in [0, 255] (the paper's preprocessing, resized).
        probs: (4, S, S) float32 class probabilities (softmax of the network's logits): background, heart, left lung,
            right lung.

    Returns:
        Measurements with scalars ``lung_share``, ``heart_share``, ``lung_balance``, ``lung_sides``, per region
        (prefix ``rl_`` right lung, ``ll_`` left lung, ``h_`` heart: ``share``, ``cx``, ``cy``, ``cc_share``,
        ``n_cc``, ``top``, ``bottom``, ``left``, ``right``, ``solidity``), the soft (probability-weighted) ``s_*``
        measurements of :func:`_soft_regions`, ``heart_present``, ``heart_between``,
        ``heart_low``, ``lung_conf`` (mean top probability on lung pixels), ``entropy`` (mean normalised entropy),
        ``uncertain`` (share of pixels whose top probability is below 0.6), ``lung_mean`` / ``lung_std`` (gray levels
        on the lungs, 0-1), ``lung_contrast`` (mean gray level of the mediastinum between the lungs minus the lungs'),
        ``symmetry`` (correlation of the 64 × 64 input with its mirror image),
        ``smoothness`` (correlation of neighbouring pixels), ``edges`` (mean gradient), ``border`` (mean gray level
        of the outer frame), ``top_bottom`` (bottom quarter's mean minus the top quarter's); the z-scored 32 × 32
        thumbnail and the 32 × 32 class probabilities.
    """
    g = np.asarray(gray, np.float32) / 255.0
    p = np.asarray(probs, np.float32)
    if g.shape[0] != WORK_SIDE or g.shape[1] != WORK_SIDE:
        g = cv2.resize(g, (WORK_SIDE, WORK_SIDE), interpolation=cv2.INTER_AREA)
    if p.shape[1:] != (WORK_SIDE, WORK_SIDE):
        p = np.stack([cv2.resize(c, (WORK_SIDE, WORK_SIDE), interpolation=cv2.INTER_AREA) for c in p])
    lab = p.argmax(axis=0)
    regions = {"rl": lab == RIGHT_LUNG, "ll": lab == LEFT_LUNG, "h": lab == HEART}
    s = _label_scalars(regions, WORK_SIDE)
    s.update(_soft_regions(p))
    s.update(_confidence_scalars(p, regions))
    s.update(_gray_scalars(g, regions, s))
    thumb = _zscore(cv2.resize(g, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA))
    labels = np.stack([cv2.resize(c, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA) for c in p])
    return Measurements(scalars=s, thumb=thumb, labels=labels.astype(np.float32), gray=g, probs=p)


def decision_features(m: Measurements, calibration: Calibration) -> dict[str, float]:
    """The scalars plus the features that compare the input with the calibration's mean frontal film.

    Adds ``image_corr_{0,90,180,270}`` (correlation of the thumbnail with the mean z-scored frontal input turned
    counter-clockwise by that angle), ``label_fit_{0,90,180,270}`` (mean log-probability of the segmentation's
    32 × 32 class probabilities under the mean frontal label map, turned likewise), ``orientation`` (the largest
    absolute turned image correlation minus the absolute upright one: an inverted upright film scores low),
    ``orientation_angle`` (the angle of that largest one), ``label_orientation`` (best turned label fit minus the
    upright one) and ``polarity`` (the upright image correlation, with its sign: the mean frontal film has dark
    lungs beside a bright mediastinum over a bright abdomen, so an inverted film correlates negatively).
    """
    feats = dict(m.scalars)
    if m.thumb is None or m.labels is None:
        return feats
    atlas = np.clip(calibration.atlas_labels, 0.01, None)
    atlas = atlas / atlas.sum(axis=0, keepdims=True)
    for k in range(4):
        feats[f"image_corr_{90 * k}"] = _corr(m.thumb, np.rot90(calibration.atlas_image, k))
        log_atlas = np.log(np.rot90(atlas, k, axes=(1, 2)))
        feats[f"label_fit_{90 * k}"] = float((m.labels * log_atlas).sum(axis=0).mean())
    # absolute correlations: an inverted film matches the upright mean film negatively, and is not rotated
    turned = [abs(feats[f"image_corr_{90 * k}"]) for k in (1, 2, 3)]
    best = int(np.argmax(turned))
    feats["orientation"] = turned[best] - abs(feats["image_corr_0"])
    feats["orientation_angle"] = float(90 * (best + 1))
    # negative when dark and bright are swapped (lungs bright, mediastinum dark); a film that is also turned fails
    # the orientation check first, which is tried before this one
    feats["polarity"] = feats["image_corr_0"]
    feats["label_orientation"] = max(feats[f"label_fit_{90 * k}"] for k in (1, 2, 3)) - feats["label_fit_0"]
    return feats
