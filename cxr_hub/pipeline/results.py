"""What the pipeline returns: the prepared image (cacheable), the patch sample and the result of one analysis."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..biomarkers import Biomarkers
from ..validity import ValidityReport

__all__ = ["PATCH_CACHE_ENTRIES", "NoClassifierError", "PatchSample", "PipelineResult", "PreparedImage"]

#: (patch size, seed, ...) combinations whose patch results a PreparedImage keeps for re-use (a few MB at most).
PATCH_CACHE_ENTRIES = 8


class NoClassifierError(RuntimeError):
    """Classification was asked of a segmentation-only :class:`CXRPipeline` (built with ``classifier_model=None``)."""


def _finite_or_none(value: Any) -> Any:
    """Recursively turns NaN/inf floats into None so ``json.dumps(..., allow_nan=False)`` works."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


@dataclass
class PreparedImage:
    """Everything about one image that does not depend on K, patch size, seed or classes (cacheable).

    Attributes:
        image: (H, W) float32 original gray image from :func:`cxr_hub.load_image`.
        preprocessed: (H, W) float32 in [0, 255], :func:`cxr_hub.preprocess_cxr` with the frame config's gamma and
            equalisation.
        preprocess_params: ``(do_equalize, gamma)`` used for ``preprocessed``.
        label_map: (H, W) uint8, 0 background / 1 heart / 2 left lung / 3 right lung.
        lung_mask: (H, W) bool, left | right lung.
        frame: (S, S) float32 classifier frame (S = the frame config's ``image_size``, 1024): preprocessed,
            resized, zero gray level outside the lungs, then normalised with the frame config's mean/std.
        frame_mask: (S, S) bool lung mask in that frame (nearest resize of ``lung_mask``); patch centres come from it.
        biomarkers: cardiothoracic ratio, lung intensity, lung areas.
        timings: ms per stage (load, preprocess, segment, biomarkers, total).
        warnings: image-level warnings (too little lung, no heart, the input check turned off).
        input_check: the input-validity check's scores and decision (:class:`cxr_hub.validity.ValidityReport`).
        patch_cache: patch probabilities and Grad-CAM maps already computed for this image, per (classifier,
            precision, sampling, patch size, seed), in whole chunks (see :meth:`CXRPipeline.analyze`); lets a K
            change re-use the patches it shares with an earlier call. Filled by the pipeline (:meth:`remember`);
            never compared.
    """

    image: np.ndarray
    preprocessed: np.ndarray
    preprocess_params: tuple[bool, float | None]
    label_map: np.ndarray
    lung_mask: np.ndarray
    frame: np.ndarray
    frame_mask: np.ndarray
    biomarkers: Biomarkers
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    input_check: ValidityReport | None = field(default=None, repr=False, compare=False)
    patch_cache: dict[tuple, Any] = field(default_factory=dict, repr=False, compare=False)

    def remember(self, key: tuple, value: Any) -> None:
        """Stores ``value`` under ``key`` in :attr:`patch_cache`; a new key past the limit evicts the oldest entry."""
        if len(self.patch_cache) >= PATCH_CACHE_ENTRIES and key not in self.patch_cache:
            self.patch_cache.pop(next(iter(self.patch_cache)))  # oldest first (insertion order)
        self.patch_cache[key] = value

    @property
    def original_size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def lung_fraction(self) -> float:
        """Share of the image's pixels segmented as lung, in [0, 1]."""
        return float(self.lung_mask.mean())


@dataclass
class PatchSample:
    """The patches :meth:`CXRPipeline.analyze` classifies for a (prepared image, K, patch size, seed).

    Attributes:
        centers_1024: (k, 2) int64 ``(x, y)`` sampled centres in the classifier frame (1024).
        boxes_1024: (k, 4) int64 ``(x0, y0, x1, y1)`` patch edges in the classifier frame.
        boxes: (k, 4) float64 the same edges in original-image pixels (not rounded).
        k: number of patches.
        patch_size: patch side as cut from the classifier frame.
        seed: seed of the sampler, as a Python int (the one drawn when None was asked for).
    """

    centers_1024: np.ndarray
    boxes_1024: np.ndarray
    boxes: np.ndarray
    k: int
    patch_size: int
    seed: int


@dataclass
class PipelineResult:
    """Result of :class:`CXRPipeline` on one image. Maps are at the original image size (H, W).

    Attributes:
        label: majority-vote class name.
        votes: class → number of patches voting for it (sums to k).
        vote_fraction: class → votes / k, in [0, 1].
        probabilities: class → mean patch softmax probability, in [0, 1] (sums to 1).
        patch_probabilities: (k, C) float32 per-patch softmax probabilities.
        class_names: the classifier's classes in index order.
        label_map: (H, W) uint8 segmentation (0 background, 1 heart, 2 left lung, 3 right lung).
        lung_mask: (H, W) bool.
        patch_boxes: (k, 4) float64 ``(x0, y0, x1, y1)`` patch edges in original-image pixels (not rounded).
        patch_boxes_1024: (k, 4) int64 patch edges in the classifier frame (1024).
        patch_centers_1024: (k, 2) int64 ``(x, y)`` sampled centres in the classifier frame.
        saliency: class → (H, W) float32 probabilistic Grad-CAM (eq. 5), in [0, 1] with normalised cams; {} when
            an empty saliency selection was asked for.
        saliency_in_lung: class → share of the map's mass inside the lung mask, in [0, 1]; NaN for an all-zero map.
        global_label: the global classifier's argmax class (None without a global classifier).
        global_probabilities: class → its softmax probability.
        global_saliency: class → (H, W) float32 Grad-CAM of the whole masked image, in [0, 1] when normalised;
            None without a global classifier, {} with an empty saliency selection.
        biomarkers: cardiothoracic ratio, lung intensity, lung areas (see :mod:`cxr_hub.biomarkers`).
        k: number of patches.
        patch_size: patch side as cut from the classifier frame.
        seed: seed of the patch sampler as a Python int: the one given, or the one drawn for ``seed=None``, so
            ``seed=result.seed`` reproduces the result.
        image_size: (H, W) of the original image.
        timings: ms per stage: load, preprocess, segment, biomarkers, sample, classify, saliency, global, analyze
            (all analysis stages) and total (prepare + analyze; for a cached PreparedImage the prepare part is what it
            cost when prepared).
        device: torch device the networks ran on, e.g. "cpu" or "cuda:0".
        warnings: everything that makes the result less trustworthy, in words.
        input_check: the input-validity check's scores and decision (:class:`cxr_hub.validity.ValidityReport`; in
            ``to_dict()`` as ``input_check``), the same object as the prepared image's.
    """

    label: str
    votes: dict[str, int]
    vote_fraction: dict[str, float]
    probabilities: dict[str, float]
    patch_probabilities: np.ndarray
    class_names: list[str]
    label_map: np.ndarray
    lung_mask: np.ndarray
    patch_boxes: np.ndarray
    patch_boxes_1024: np.ndarray
    patch_centers_1024: np.ndarray
    saliency: dict[str, np.ndarray]
    saliency_in_lung: dict[str, float]
    biomarkers: Biomarkers
    k: int
    patch_size: int
    seed: int
    image_size: tuple[int, int]
    timings: dict[str, float]
    device: str
    warnings: list[str]
    global_label: str | None = None
    global_probabilities: dict[str, float] | None = None
    global_saliency: dict[str, np.ndarray] | None = None
    input_check: ValidityReport | None = field(default=None, repr=False, compare=False)

    def to_dict(self, include_maps: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary (plain lists and numbers; NaN becomes None).

        Args:
            include_maps: also include the (H, W) maps (label map, lung mask, saliency) as nested lists; large
                (millions of numbers for a full-size film), so off by default.

        Returns:
            dict accepted by ``json.dumps(..., allow_nan=False)``.
        """
        out: dict[str, Any] = {
            "label": self.label,
            "votes": dict(self.votes),
            "vote_fraction": dict(self.vote_fraction),
            "probabilities": dict(self.probabilities),
            "class_names": list(self.class_names),
            "k": self.k,
            "patch_size": self.patch_size,
            "seed": self.seed,
            "image_size": list(self.image_size),
            "patch_probabilities": self.patch_probabilities.astype(float).tolist(),
            "patch_boxes": self.patch_boxes.astype(float).tolist(),
            "patch_boxes_1024": self.patch_boxes_1024.astype(int).tolist(),
            "patch_centers_1024": self.patch_centers_1024.astype(int).tolist(),
            "saliency_classes": list(self.saliency),
            "saliency_in_lung": dict(self.saliency_in_lung),
            "global_label": self.global_label,
            "global_probabilities": dict(self.global_probabilities) if self.global_probabilities else None,
            "global_saliency_classes": list(self.global_saliency) if self.global_saliency else None,
            "biomarkers": self.biomarkers.to_dict(),
            "timings": dict(self.timings),
            "device": self.device,
            "warnings": list(self.warnings),
            "input_check": self.input_check.to_dict() if self.input_check is not None else None,
        }
        if include_maps:
            out["label_map"] = self.label_map.astype(int).tolist()
            out["lung_mask"] = self.lung_mask.astype(bool).tolist()
            out["saliency"] = {c: m.astype(float).tolist() for c, m in self.saliency.items()}
            if self.global_saliency:
                out["global_saliency"] = {c: m.astype(float).tolist() for c, m in self.global_saliency.items()}
        return _finite_or_none(out)
