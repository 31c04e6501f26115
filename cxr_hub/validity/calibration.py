"""The input-validity check's calibration: every threshold, the mean images and the learned model, in one file.

The thresholds' one documented place: :class:`ImageThresholds` (the image checks, the same for every segmentation
model) and :class:`AnatomyThresholds` (the segmentation-based checks, learned per segmentation model) document every
field; their values, the two mean images and the learned model's weights (:class:`LearnedModel`) live in
:data:`VALIDITY_FILE` (``cxr_hub/data/validity.json``), written by ``python -m training.calibrate_validity``.
:func:`load_validity_file` reads it; each segmentation model's :class:`Calibration` is found by the fingerprint of its
weights (:func:`model_fingerprint`).

Imports numpy (and torch inside :func:`model_fingerprint`) and :mod:`~cxr_hub.validity.report`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .report import KINDS, THUMB_SIDE

#: The one file with every threshold, the mean images and the learned model (see :mod:`cxr_hub.validity`).
VALIDITY_FILE = Path(__file__).resolve().parent.parent / "data" / "validity.json"
#: Format of :data:`VALIDITY_FILE` this code reads.
FILE_FORMAT = 1


@dataclass(frozen=True)
class ImageThresholds:
    """Limits of the image checks (the same for every segmentation model). Values: :data:`VALIDITY_FILE` ``"image"``.

    Attributes:
        colour_chroma: a pixel counts as coloured when its R, G and B (0-255) differ by more than this; a gray film
            saved as colour, JPEG noise included, stays within a few levels.
        colour_share_max: an RGB input with more than this share of coloured pixels is refused (a film with a
            coloured marker or ruler stays well below).
        min_side: a shorter side below this many pixels is refused (too small to show the anatomy).
        aspect_max: longer side / shorter side above this is refused (strips, collages, panoramas).
        blank_share_max: refused when more than this share of the image lies in its most common of 64 gray-level
            bins (a blank page, an empty image with a small mark).
        structure_min: refused when the standard deviation of the 32 × 32 area-reduced image over that of the full
            image is below this (white noise keeps about 1/reduction factor of its spread, a film most of it).
    """

    colour_chroma: float
    colour_share_max: float
    min_side: int
    aspect_max: float
    blank_share_max: float
    structure_min: float


@dataclass(frozen=True)
class AnatomyThresholds:
    """Limits of the segmentation-based checks, learned per segmentation model from real frontal films (training
    part) by ``python -m training.calibrate_validity``. Values: :data:`VALIDITY_FILE` ``"calibrations"[i]
    ["thresholds"]``. Fractions are of the segmentation frame; positions are in [0, 1] image widths or heights from
    the top left. Lung balance, sides and the heart's position use the probability-weighted (soft) areas and
    centroids of :func:`~cxr_hub.validity.segmentation_measures._soft_regions`, which move smoothly with the
    segmentation; the lung share uses its labels.

    Attributes:
        lung_share_min: least share of the frame segmented as lung (either lung).
        lung_share_max: largest such share.
        lung_balance_min: least (smaller lung area / larger lung area).
        lung_sides_min: least ``min(0.5 - x(right lung), x(left lung) - 0.5)``, x the centroid's column: the right
            lung lies on the image's left, the left lung on its right.
        heart_between_min: least heart centroid column, as a fraction of the way from the right lung's centroid to
            the left lung's (0: at the right lung, 1: at the left lung).
        heart_between_max: largest such fraction.
        heart_low_min: least (heart centroid row - mean lung centroid row), in image heights (the heart sits low).
        polarity_min: least signed correlation of the 32 × 32 input with the upright mean frontal film (dark lungs
            beside a bright mediastinum, over a bright abdomen); below it the film looks inverted (lungs bright,
            mediastinum dark).
        orientation_max: largest (best absolute correlation of the 32 × 32 input with the mean frontal film turned by
            90°, 180° or 270° - its absolute correlation with the upright one); above it the film looks rotated.
        frontal_probability_min: least probability of "frontal" from the learned model.
    """

    lung_share_min: float
    lung_share_max: float
    lung_balance_min: float
    lung_sides_min: float
    heart_between_min: float
    heart_between_max: float
    heart_low_min: float
    polarity_min: float
    orientation_max: float
    frontal_probability_min: float


@dataclass(frozen=True)
class LearnedModel:
    """Multinomial logistic model: ``softmax(weights @ ((x - mean) / scale) + bias)`` over :data:`KINDS`.

    Attributes:
        features: names of the :func:`decision_features` it reads, in order.
        classes: the kinds, in output order (a subset of :data:`KINDS`, "frontal" among them).
        mean: per-feature mean of the training features.
        scale: per-feature standard deviation of the training features.
        weights: (classes, features).
        bias: (classes,).
    """

    features: tuple[str, ...]
    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    def probabilities(self, feats: Mapping[str, float]) -> dict[str, float]:
        """Class probabilities for one input's features (missing or non-finite features count as the mean)."""
        x = np.array([float(feats.get(name, math.nan)) for name in self.features], np.float64)
        z = (x - self.mean) / self.scale
        z = np.where(np.isfinite(z), np.clip(z, -8.0, 8.0), 0.0)  # far outside training: saturate, never overflow
        logits = self.weights @ z + self.bias
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return {c: float(v) for c, v in zip(self.classes, p, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (as stored in :data:`VALIDITY_FILE`)."""
        return {
            "features": list(self.features),
            "classes": list(self.classes),
            "mean": _rounded(self.mean),
            "scale": _rounded(self.scale),
            "weights": _rounded(self.weights),
            "bias": _rounded(self.bias),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LearnedModel:
        """Inverse of :meth:`to_dict`."""
        model = cls(
            features=tuple(d["features"]),
            classes=tuple(d["classes"]),
            mean=np.asarray(d["mean"], np.float64),
            scale=np.asarray(d["scale"], np.float64),
            weights=np.asarray(d["weights"], np.float64),
            bias=np.asarray(d["bias"], np.float64),
        )
        n_c, n_f = len(model.classes), len(model.features)
        if model.weights.shape != (n_c, n_f) or model.bias.shape != (n_c,) or model.mean.shape != (n_f,):
            raise ValueError("validity model: weights, bias and mean do not match its classes and features.")
        if "frontal" not in model.classes or not set(model.classes) <= set(KINDS):
            raise ValueError(f"validity model classes must include 'frontal' and come from {KINDS}.")
        return model


@dataclass(frozen=True)
class Calibration:
    """The segmentation-dependent part of the check, for one segmentation model.

    Attributes:
        segmentation: what it was calibrated on: ``{"name", "fingerprint", "architecture", "arithmetic"}``.
        thresholds: the anatomy, polarity, orientation and learned-model limits.
        atlas_image: (32, 32) mean of the z-scored 32 × 32 segmentation inputs of the training frontal films.
        atlas_labels: (4, 32, 32) mean class probabilities of the segmentation on those films.
        model: the learned check, or None (then ``frontal_model`` passes with no score).
        info: anything else recorded (data counts, measured rates, date).
    """

    segmentation: Mapping[str, Any]
    thresholds: AnatomyThresholds
    atlas_image: np.ndarray
    atlas_labels: np.ndarray
    model: LearnedModel | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The segmentation model's name as recorded (its folder name)."""
        return str(self.segmentation.get("name", "?"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (one entry of :data:`VALIDITY_FILE` ``"calibrations"``)."""
        return {
            "segmentation": dict(self.segmentation),
            "thresholds": {k: round(float(v), 6) for k, v in asdict(self.thresholds).items()},
            "atlas_image": _rounded(self.atlas_image),
            "atlas_labels": _rounded(self.atlas_labels),
            "model": self.model.to_dict() if self.model is not None else None,
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        atlas_image = np.asarray(d["atlas_image"], np.float64)
        atlas_labels = np.asarray(d["atlas_labels"], np.float64)
        if atlas_image.shape != (THUMB_SIDE, THUMB_SIDE) or atlas_labels.shape != (4, THUMB_SIDE, THUMB_SIDE):
            raise ValueError(f"validity calibration: mean images must be {THUMB_SIDE} x {THUMB_SIDE}.")
        return cls(
            segmentation=dict(d["segmentation"]),
            thresholds=AnatomyThresholds(**d["thresholds"]),
            atlas_image=atlas_image,
            atlas_labels=atlas_labels,
            model=LearnedModel.from_dict(d["model"]) if d.get("model") else None,
            info=dict(d.get("info", {})),
        )


def _rounded(a: np.ndarray, digits: int = 5) -> Any:
    return np.round(np.asarray(a, np.float64), digits).tolist()


@cache
def _read_file(path: str, mtime_ns: int) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_validity_file(path: str | Path | None = None) -> tuple[ImageThresholds, list[Calibration]]:
    """Reads :data:`VALIDITY_FILE` (or ``path``): the image thresholds and every segmentation model's calibration.

    Raises:
        FileNotFoundError: the file is missing (a broken install: reinstall cxr-hub, or run
            ``python -m training.calibrate_validity``).
        ValueError: the file has another format or is inconsistent.
    """
    p = Path(path) if path is not None else VALIDITY_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"The input-validity file {p} is missing: reinstall cxr-hub, or write it with "
            "`python -m training.calibrate_validity`."
        )
    data = _read_file(str(p), p.stat().st_mtime_ns)
    if data.get("format") != FILE_FORMAT:
        raise ValueError(f"{p} has format {data.get('format')!r}; this cxr-hub reads format {FILE_FORMAT}.")
    image = ImageThresholds(**data["image"])
    return image, [Calibration.from_dict(c) for c in data.get("calibrations", [])]


def model_fingerprint(model: Any) -> str:
    """A short fingerprint of a network's weights: its parameter names, shapes and first values.

    Identifies the segmentation model a calibration belongs to whatever its device, memory format or file (a
    retrained network differs in every value). Reads at most 64 values of each tensor, so it costs milliseconds.
    """
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            if not torch.is_floating_point(tensor):
                continue  # batch-norm counters change with training steps, not with what the network computes
            h.update(f"{name}|{tuple(tensor.shape)}|".encode())
            first = tensor.detach().reshape(-1)[:64].to("cpu", torch.float32).numpy()
            h.update(np.round(first.astype(np.float64), 5).tobytes())  # fp16 storage → fp32 load: same digits
    return h.hexdigest()[:16]


def threshold_fields() -> dict[str, tuple[str, ...]]:
    """The names of every threshold, per group (what :data:`VALIDITY_FILE` must hold and the docs describe)."""
    return {
        "image": tuple(f.name for f in fields(ImageThresholds)),
        "anatomy": tuple(f.name for f in fields(AnatomyThresholds)),
    }
