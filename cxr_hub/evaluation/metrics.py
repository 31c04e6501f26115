"""Segmentation metrics: overlap scores per structure (Jaccard, Dice), the heart's share of the lung, summaries.

Plain functions on label maps (0 bg, 1 heart, 2 left lung, 3 right lung), shared by ``evaluate-segmentation``
(:mod:`cxr_hub.evaluation.segmentation`) and the segmentation training log; imports numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "CONVENTION_AWARE_LUNG",
    "SCORED_NAMES",
    "STRUCTURE_LABELS",
    "heart_share_of_lung",
    "overlap_scores",
    "structure_scores",
    "summarize",
    "summarize_scores",
]

# Structure name → label values it covers in a label map (0 bg, 1 heart, 2 left lung, 3 right lung).
STRUCTURE_LABELS: dict[str, tuple[int, ...]] = {
    "lung": (2, 3),
    "heart": (1,),
    "left_lung": (2,),
    "right_lung": (3,),
}
#: Lung scored against references whose lungs include the lung behind the heart (v7labs polygons, no heart): our lung
#: labels plus our heart labels *inside* the reference lungs, against the reference lungs. Our masks follow the SCR
#: convention, where that region is heart; the strict "lung" score counts it as missed lung.
CONVENTION_AWARE_LUNG = "lung_convention_aware"
SCORED_NAMES: tuple[str, ...] = (*STRUCTURE_LABELS, CONVENTION_AWARE_LUNG)


def overlap_scores(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Jaccard (IoU) and Dice of two boolean masks of one shape.

    Returns:
        (jaccard, dice), each in [0, 1]; NaN for both when both masks are empty (the score is undefined, not 1).
    """
    p, t = np.asarray(pred, bool), np.asarray(target, bool)
    if p.shape != t.shape:
        raise ValueError(f"Masks differ in shape: {p.shape} vs {t.shape}.")
    inter = np.logical_and(p, t).sum(dtype=np.int64)
    union = np.logical_or(p, t).sum(dtype=np.int64)
    total = p.sum(dtype=np.int64) + t.sum(dtype=np.int64)
    if union == 0:
        return float("nan"), float("nan")
    return float(inter / union), float(2 * inter / total)


def heart_share_of_lung(pred_map: np.ndarray, target_map: np.ndarray) -> float:
    """Share of the reference's lung pixels that the prediction labels heart; NaN when the reference has no lung.

    For references whose lungs include the lung behind the heart (v7labs polygons): the convention-aware score counts
    that heart as lung and cannot see it spread over the lung; this can. The right value is small but not zero.
    """
    lungs = np.isin(target_map, STRUCTURE_LABELS["lung"])
    return float(np.isin(pred_map[lungs], STRUCTURE_LABELS["heart"]).mean()) if lungs.any() else float("nan")


def structure_scores(
    pred_map: np.ndarray, target_map: np.ndarray, structures: Iterable[str] = tuple(STRUCTURE_LABELS)
) -> dict[str, dict[str, float]]:
    """Jaccard and Dice per structure for one image's label maps (same shape).

    Args:
        pred_map: (H, W) predicted labels.
        target_map: (H, W) reference labels.
        structures: names from ``STRUCTURE_LABELS`` to score (skip those the reference does not annotate), and
            :data:`CONVENTION_AWARE_LUNG` for references without a heart.

    Returns:
        ``{"jaccard": {structure: value}, "dice": {structure: value}}``.
    """
    out: dict[str, dict[str, float]] = {"jaccard": {}, "dice": {}}
    for name in structures:
        if name == CONVENTION_AWARE_LUNG:
            ref = np.isin(target_map, STRUCTURE_LABELS["lung"])
            ours = np.isin(pred_map, STRUCTURE_LABELS["lung"]) | (np.isin(pred_map, STRUCTURE_LABELS["heart"]) & ref)
            j, d = overlap_scores(ours, ref)
        else:
            labels = STRUCTURE_LABELS[name]
            j, d = overlap_scores(np.isin(pred_map, labels), np.isin(target_map, labels))
        out["jaccard"][name] = j
        out["dice"][name] = d
    return out


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (population, as the paper's ±) and count, ignoring NaN."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def summarize_scores(per_image: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Aggregates ``structure_scores`` outputs: ``{metric: {structure: {"mean", "std", "n"}}}``."""
    result: dict[str, dict[str, dict[str, float]]] = {"jaccard": {}, "dice": {}}
    for metric in result:
        for name in SCORED_NAMES:
            vals = [s[metric][name] for s in per_image if name in s.get(metric, {})]
            if vals:
                result[metric][name] = summarize(vals)
    return result
