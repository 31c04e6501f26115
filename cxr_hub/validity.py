"""Input-validity check: refuse what is not a frontal (PA/AP) chest X-ray before any patch is classified.

The method (segmentation → lung patches → vote) returns a confident class for anything it is given: a photograph, a
lateral film, a CT slice. :class:`InputValidator` decides, inside :meth:`cxr_hub.CXRPipeline.prepare`, whether an
input may be analysed at all, from what the pipeline computes anyway (the loaded image, the 256 × 256 segmentation
input and the segmentation's class probabilities), so every entry point (the CLI, ``predict FOLDER``, ``evaluate``,
the Python API and the app) gets the same decision, and a refusal is a :class:`NotAFrontalCXRError` (a
:class:`cxr_hub.CXRInputError`) whose message says what was seen and what to upload instead.

Checks, in the order they are tried; each returns a score (:class:`CheckScore`), and every score goes into
:class:`ValidityReport` (``PreparedImage.input_check``, ``PipelineResult.input_check``, the JSON result and the CSV
row):

* **Image** (before the segmentation, so a refusal costs no network pass; independent of the segmentation model):
  ``colour`` (share of strongly coloured pixels of an RGB input: radiographs are gray), ``size`` (shorter side in
  pixels), ``aspect`` (longer / shorter side), ``blank`` (share of the image in its most common gray level) and
  ``structure`` (gray-level spread left after a 32 × 32 area reduction, relative to the full image's: noise and
  flat images lose almost all of it, a radiograph keeps most).
* **Anatomy** (from the segmentation's class probabilities, reduced from 256 × 256 to 128 × 128): ``lung_share``
  (segmented lung, within the range of real frontal films), ``lung_balance`` (smaller lung / larger lung),
  ``lung_sides`` (the right lung on the image's left, the left lung on its right), ``heart_between`` and
  ``heart_low`` (where the heart sits relative to the lungs; passes when no heart is segmented, which happens on
  real films).
* **Polarity** (``polarity``: the lungs darker than the mediastinum between them, read as the sign of the input's
  correlation with the mean frontal film). An inverted film (a negative) is **refused**, not inverted for the user:
  the classifier never saw one, and inverting silently would analyse pixels the user did not send. The message says
  how to fix it.
* **Orientation** (``orientation``: how much better the 32 × 32 image matches the mean upright frontal film turned by
  90°, 180° or 270° than upright). A rotated film is refused with the angle, not rotated for the user.
* **Learned** (``frontal_model``: a multinomial logistic model on segmentation-derived features, trained on our
  frontal films against lateral films, CT slices, rotations, inversions, crops, photographs, drawings and noise):
  the probability that the input is a frontal film; a refusal names the most likely kind ("this looks like a
  lateral view: upload a frontal (PA or AP) film").

The thresholds (:class:`ImageThresholds`, :class:`AnatomyThresholds`: every field documented there), the two mean
images the orientation and label features compare against, and the learned model's weights live in **one file**,
``cxr_hub/data/validity.json`` (:data:`VALIDITY_FILE`), written by ``python -m training.calibrate_validity``. The
anatomy, polarity, orientation and learned checks depend on the segmentation network (they read its output), so the
file holds one calibration per segmentation model, found by a fingerprint of its weights (:func:`model_fingerprint`).
A pipeline whose segmentation model has no calibration runs the image checks only, and its reports say so
(``calibration: null`` and a note); calibrate it with ``python -m training.calibrate_validity --segmentation M``.

Override, for research: ``CXRPipeline(check_input=False)`` (``--no-input-check``) still measures every check but
refuses nothing; every result it lets through carries a warning, and says what the check would have decided.

Decision logic is plain functions on arrays (no network), shared by the pipeline and the calibration script.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .biomarkers import HEART, LEFT_LUNG, RIGHT_LUNG
from .models.image_processing_cxr import CXRInputError

__all__ = [
    "CHECKS",
    "CSV_COLUMNS",
    "KINDS",
    "THUMB_SIDE",
    "VALIDITY_FILE",
    "AnatomyThresholds",
    "Calibration",
    "CheckScore",
    "ImageThresholds",
    "InputValidator",
    "Measurements",
    "NotAFrontalCXRError",
    "ValidityReport",
    "colour_share",
    "decision_features",
    "load_validity_file",
    "measure_image",
    "measure_segmentation",
    "model_fingerprint",
    "source_colour_share",
    "threshold_fields",
]

#: The one file with every threshold, the mean images and the learned model (see the module docstring).
VALIDITY_FILE = Path(__file__).resolve().parent / "data" / "validity.json"
#: Format of :data:`VALIDITY_FILE` this code reads.
FILE_FORMAT = 1

#: What the learned check tells apart; "frontal" is the only kind that is accepted.
KINDS = ("frontal", "lateral", "ct", "rotated", "inverted", "crop", "photo", "graphic", "noise")
#: Every check, in the order they are tried (the first failing one in :data:`_MESSAGE_ORDER` words the refusal).
CHECKS = (
    "colour",
    "size",
    "aspect",
    "blank",
    "structure",
    "lung_share",
    "lung_balance",
    "lung_sides",
    "heart_between",
    "heart_low",
    "polarity",
    "orientation",
    "frontal_model",
)
IMAGE_CHECKS = CHECKS[:5]
#: Side of the thumbnails the orientation and label-map features compare with the calibration's mean images.
THUMB_SIDE = 32
#: Side the segmentation measurements are taken at (area-reduced from the network's 256: a quarter of the cost, and
#: plenty for areas, centroids and shapes).
WORK_SIDE = 128
#: Columns a batch CSV row gets from :meth:`ValidityReport.csv_values` (the same names, the same order).
CSV_COLUMNS = (
    "input_check",
    "input_kind",
    "input_failed",
    *(f"input_{name}" for name in CHECKS),
)

#: Gray modes of PIL: no colour to measure.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
#: Longer side an RGB input is reduced to before its colour is measured (the share needs no detail).
_COLOUR_SIDE = 256


class NotAFrontalCXRError(CXRInputError):
    """An input the validity check refused: not a frontal chest X-ray (or not usable as one).

    Attributes:
        report: the :class:`ValidityReport` with every score measured before the refusal.
        kind: what the input looks like (``report.kind``: "lateral", "ct", "colour", "rotated", ...).
    """

    def __init__(self, message: str, report: ValidityReport) -> None:
        super().__init__(message)
        self.report = report
        self.kind = report.kind


# ----------------------------------------------------------------------------------------------- thresholds


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
    centroids of :func:`_soft_regions`, which move smoothly with the segmentation; the lung share uses its labels.

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


# ------------------------------------------------------------------------------------------------ colour


def colour_share(rgb: np.ndarray, chroma: float = 40.0) -> float:
    """Share of pixels whose R, G and B differ by more than ``chroma`` (0-255 scale), in [0, 1].

    Args:
        rgb: (H, W, 3) or (H, W, 4) RGB(A) array (alpha ignored) in 0-255 (uint16 is scaled down), or a 2-D gray
            array (share 0).
        chroma: the pixel threshold (:attr:`ImageThresholds.colour_chroma`).
    """
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[-1] < 3:
        return 0.0
    step = max(1, math.ceil(max(a.shape[:2]) / _COLOUR_SIDE))
    c = a[::step, ::step, :3].astype(np.float32)
    if a.dtype == np.uint16 or (a.dtype.kind == "f" and float(c.max(initial=0.0)) > 255.0):
        c = c / 257.0
    spread = c.max(axis=-1) - c.min(axis=-1)
    return float((spread > chroma).mean())


def _pil_colour_share(img: Image.Image, chroma: float) -> float:
    if img.mode in _GRAY_MODES:
        return 0.0
    img.draft("RGB", (_COLOUR_SIDE, _COLOUR_SIDE))  # JPEG: decoded at 1/2 … 1/8 scale, a few ms
    small = img.convert("RGB")
    small.thumbnail((_COLOUR_SIDE, _COLOUR_SIDE))
    return colour_share(np.asarray(small), chroma)


def source_colour_share(source: Any, chroma: float = 40.0) -> float | None:
    """:func:`colour_share` of an input as the user gave it (``load_image`` turns colour into gray).

    Reads as little as it can: a gray file is recognised from its header, without decoding; a colour JPEG is decoded
    at a reduced scale; other colour files are decoded once more. Call it after :func:`cxr_hub.load_image` accepted
    the input (which checks its size and format): a file object is read again from the position it had before, when
    it can seek.

    Args:
        source: a path, bytes, a binary file object (with the position ``load_image`` started from), a PIL image
            or a numpy array.
        chroma: the pixel threshold.

    Returns:
        The share; 0.0 for gray data; None when there is no colour signal to read (DICOM, a file object that cannot
        seek, anything PIL cannot open).
    """
    if isinstance(source, np.ndarray):
        return colour_share(source, chroma)
    if isinstance(source, Image.Image):
        try:
            return _pil_colour_share(source.copy(), chroma)
        except (OSError, ValueError):
            return None
    opened: Any
    if isinstance(source, (bytes, bytearray, memoryview)):
        opened = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)) or hasattr(source, "__fspath__"):
        opened = source
    elif callable(getattr(source, "read", None)):
        opened = source  # positioned by the caller
    else:
        return None
    try:
        with Image.open(opened) as img:
            return _pil_colour_share(img, chroma)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # not a raster PIL reads (DICOM), or the file went away: no colour signal


# ------------------------------------------------------------------------------------------------ measures


@dataclass
class Measurements:
    """What the check measured on one input, before any threshold (the calibration script fits on these).

    Attributes:
        scalars: named measurements (image: ``height``, ``width``, ``min_side``, ``aspect``, ``colour``,
            ``blank``, ``structure``; segmentation: see :func:`measure_segmentation`).
        thumb: (32, 32) float32 z-scored segmentation input, or None before the segmentation.
        labels: (4, 32, 32) float32 area-mean class probabilities, or None before the segmentation.
        gray: (128, 128) float32 segmentation input in [0, 1], as measured (None before the segmentation).
        probs: (4, 128, 128) float32 class probabilities, as measured: ``measure_segmentation(255 * gray, probs)``
            gives these measurements again (how the calibration re-derives features without the network).
    """

    scalars: dict[str, float]
    thumb: np.ndarray | None = None
    labels: np.ndarray | None = None
    gray: np.ndarray | None = field(default=None, repr=False)
    probs: np.ndarray | None = field(default=None, repr=False)


def measure_image(image: np.ndarray, colour: float | None) -> dict[str, float]:
    """The image checks' measurements of a loaded gray image (a few ms for a 1024² film).

    Args:
        image: (H, W) float32 from :func:`cxr_hub.load_image`.
        colour: :func:`source_colour_share` of the input, or None when unknown.

    Returns:
        ``height``, ``width``, ``min_side``, ``aspect``, ``colour`` (NaN when unknown), ``blank`` (share of the
        most common of 64 gray-level bins between the image's minimum and maximum), ``structure`` (std of the
        32 × 32 area-reduced image / std of the image), ``dark_share`` and ``bright_share`` (shares in the lowest and
        highest 3 of those bins: the black surround and the saturated soft tissue of a CT slice), ``histogram_entropy``
        (entropy of the 64 bins / log 64) and ``flat_share`` (share of 8 × 8 blocks of point samples whose spread is
        below 1 % of the gray-level range).
    """
    h, w = image.shape
    step = max(1, min(h, w) // 256)
    sample = np.asarray(image[::step, ::step], np.float32)  # point samples keep the pixel noise; only fewer of them
    lo, hi = float(sample.min()), float(sample.max())
    if hi > lo:
        bins = ((sample - lo) * (63.999 / (hi - lo))).astype(np.intp)
        counts = np.bincount(bins.ravel(), minlength=64) / sample.size
        blank = float(counts.max())
        full_std = float(sample.std())
        # reduced from the point samples (256 to 511 a side): fast, and still averages noise 8-fold or more
        small = cv2.resize(sample, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
        structure = float(small.std()) / full_std if full_std > 0 else 0.0
        nz = counts[counts > 0]
        entropy = float(-(nz * np.log(nz)).sum() / math.log(64))
        bh, bw = sample.shape[0] // 8 * 8, sample.shape[1] // 8 * 8
        blocks = sample[:bh, :bw].reshape(bh // 8, 8, bw // 8, 8)
        flat = float((blocks.std(axis=(1, 3)) < 0.01 * (hi - lo)).mean())
        dark, bright = float(counts[:3].sum()), float(counts[-3:].sum())
    else:
        blank, structure, entropy, flat, dark, bright = 1.0, 0.0, 0.0, 1.0, 1.0, 0.0
    return {
        "height": float(h),
        "width": float(w),
        "min_side": float(min(h, w)),
        "aspect": float(max(h, w) / min(h, w)),
        "colour": math.nan if colour is None else float(colour),
        "blank": blank,
        "structure": structure,
        "dark_share": dark,
        "bright_share": bright,
        "histogram_entropy": entropy,
        "flat_share": flat,
    }


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else 0.0


def _zscore(a: np.ndarray) -> np.ndarray:
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
    side = WORK_SIDE
    lab = p.argmax(axis=0)
    s: dict[str, float] = {}
    regions = {"rl": lab == RIGHT_LUNG, "ll": lab == LEFT_LUNG, "h": lab == HEART}
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
    s.update(_soft_regions(p))
    top = p.max(axis=0)
    lung = regions["rl"] | regions["ll"]
    s["lung_conf"] = float(top[lung].mean()) if lung.any() else 0.0
    ent = -(p * np.log(np.clip(p, 1e-6, 1.0))).sum(axis=0) / math.log(4.0)
    s["entropy"] = float(ent.mean())
    s["uncertain"] = float((top < 0.6).mean())
    if lung.any():
        s["lung_mean"] = float(g[lung].mean())
        s["lung_std"] = float(g[lung].std())
        # the mediastinum: heart pixels, and the non-lung band between the lungs' centroids over their rows
        med = regions["h"].copy()
        if both:
            x0, x1 = sorted((s["rl_cx"], s["ll_cx"]))
            c0, c1 = int(side * (x0 + 0.25 * (x1 - x0))), math.ceil(side * (x1 - 0.25 * (x1 - x0)))
            r0 = int(side * min(s["rl_top"], s["ll_top"]))
            r1 = math.ceil(side * max(s["rl_bottom"], s["ll_bottom"]))
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


# ------------------------------------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class CheckScore:
    """One check's outcome.

    Attributes:
        name: one of :data:`CHECKS`.
        score: what was measured (None: nothing to measure, e.g. no colour channel or no heart segmented).
        passed: within the limit (a check with no score passes).
        limit: the accepted range, in words ("<= 0.05", "0.08 .. 0.55").
    """

    name: str
    score: float | None
    passed: bool
    limit: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"score", "passed", "limit"}``."""
        score = None if self.score is None or not math.isfinite(self.score) else round(float(self.score), 6)
        return {"score": score, "passed": self.passed, "limit": self.limit}


@dataclass
class ValidityReport:
    """Every check's score and the decision, for one input.

    Attributes:
        checks: name → score, in :data:`CHECKS` order (only the checks that ran).
        kind: what the input looks like: "frontal" when accepted; else a kind of :data:`KINDS` or the name of the
            image check that refused it ("colour", "size", "aspect", "blank", "structure") or "anatomy".
        reason: why it was refused, in words ending with what to do ("" when accepted).
        probabilities: the learned model's probability per kind ({} when it did not run).
        calibration: name of the segmentation model the anatomy checks were calibrated on; None: they did not run.
        enforced: whether the pipeline refuses what fails (False: ``check_input=False``).
        notes: remarks (e.g. why the anatomy checks did not run).
        ms: time the check itself took, in milliseconds (the segmentation it reads excluded).
        features: every measured and derived value (for calibration and debugging; not in :meth:`to_dict`).
        measurements: the segmentation measurements with their thumbnails (None before the segmentation), what
            ``training.calibrate_validity`` fits on.
    """

    checks: dict[str, CheckScore] = field(default_factory=dict)
    kind: str = "frontal"
    reason: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    calibration: str | None = None
    enforced: bool = True
    notes: list[str] = field(default_factory=list)
    ms: float = 0.0
    features: dict[str, float] = field(default_factory=dict, repr=False)
    measurements: Measurements | None = field(default=None, repr=False)

    @property
    def accepted(self) -> bool:
        """No check failed."""
        return not self.reason

    @property
    def failed(self) -> list[str]:
        """Names of the checks that failed, in :data:`CHECKS` order."""
        return [name for name, c in self.checks.items() if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: decision, kind, reason, scores, probabilities, calibration, notes, ms."""
        return {
            "accepted": self.accepted,
            "enforced": self.enforced,
            "kind": self.kind,
            "reason": self.reason,
            "failed": self.failed,
            "checks": {name: c.to_dict() for name, c in self.checks.items()},
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "calibration": self.calibration,
            "notes": list(self.notes),
            "ms": round(self.ms, 3),
        }

    def csv_values(self) -> dict[str, str]:
        """The batch CSV cells of :data:`CSV_COLUMNS`: decision ("accepted", "refused", or with the check off
        "accepted (not enforced)" / "refused (not enforced)"), kind, failed checks joined by "|", and each check's
        score with 6 decimals ("" where it has none)."""
        decision = "accepted" if self.accepted else "refused"
        out = {
            "input_check": decision if self.enforced else f"{decision} (not enforced)",
            "input_kind": self.kind,
            "input_failed": "|".join(self.failed),
        }
        for name in CHECKS:
            c = self.checks.get(name)
            ok = c is not None and c.score is not None and math.isfinite(c.score)
            out[f"input_{name}"] = f"{c.score:.6f}" if ok else ""  # type: ignore[union-attr]
        return out

    def error(self, subject: str = "The image") -> NotAFrontalCXRError:
        """The refusal as an exception: "<subject> does not look like a frontal chest X-ray: <reason>"."""
        return NotAFrontalCXRError(f"{subject} does not look like a frontal chest X-ray: {self.reason}", self)

    def warning(self) -> str:
        """The warning a result gets when the check is not enforced (``check_input=False``)."""
        if self.accepted:
            return "input check off (check_input=False): this image was not validated as a frontal chest X-ray"
        return (
            "input check off (check_input=False): the check would have refused this image (it does not look like a "
            f"frontal chest X-ray: {self.reason}); the result is not meaningful"
        )


_KIND_REASONS = {
    "lateral": "it looks like a lateral (side) view; upload a frontal (PA or AP) film",
    "ct": "it looks like a CT or MR slice, not a radiograph; upload a frontal (PA or AP) chest X-ray",
    "rotated": "it looks rotated; turn it upright (neck at the top, as the film is read) and upload it again",
    "inverted": (
        "it looks inverted (a negative: lungs bright, bones dark); save it with normal polarity (air dark, bone "
        "bright) and upload it again"
    ),
    "crop": "it looks like part of a chest film (a crop); upload the whole frontal film, with both lungs in view",
    "photo": "it looks like a photograph, not a radiograph; upload a frontal (PA or AP) chest X-ray",
    "graphic": "it looks like a drawing, chart, text or screenshot, not a radiograph; upload the film itself",
    "noise": "it looks like noise, with no anatomy in it; upload a frontal (PA or AP) chest X-ray",
}


def _fmt(v: float) -> str:
    return f"{v:.3g}"


class InputValidator:
    """Runs the checks with one set of thresholds (and, when calibrated, one segmentation model's calibration).

    Args:
        image_thresholds: the image checks' limits.
        calibration: the segmentation model's calibration, or None: the image checks only.
    """

    def __init__(self, image_thresholds: ImageThresholds, calibration: Calibration | None) -> None:
        self.image_thresholds = image_thresholds
        self.calibration = calibration

    @classmethod
    def for_segmentation(cls, model: Any, calibration: Calibration | str | Path | None = None) -> InputValidator:
        """The validator for a segmentation model: its calibration from :data:`VALIDITY_FILE`, found by
        :func:`model_fingerprint` (none found → image checks only).

        Args:
            model: the segmentation network.
            calibration: a :class:`Calibration` to use as it is (tests, experiments), or another validity file to
                look the model up in; None → :data:`VALIDITY_FILE`.
        """
        path = calibration if isinstance(calibration, (str, Path)) else None
        image, calibrations = load_validity_file(path)
        if isinstance(calibration, Calibration):
            return cls(image, calibration)
        fingerprint = model_fingerprint(model)
        found = next((c for c in calibrations if c.segmentation.get("fingerprint") == fingerprint), None)
        return cls(image, found)

    # -- the two phases the pipeline calls

    def check_image(self, image: np.ndarray, colour: float | None) -> ValidityReport:
        """The image checks (before the segmentation): :func:`measure_image`, then :meth:`decide_image`."""
        start = time.perf_counter()
        report = self.decide_image(measure_image(image, colour))
        report.ms = (time.perf_counter() - start) * 1e3
        return report

    def decide_image(self, s: Mapping[str, float]) -> ValidityReport:
        """The image checks' decision from :func:`measure_image`'s measurements (``colour`` NaN: unknown)."""
        t = self.image_thresholds
        colour = None if not math.isfinite(s["colour"]) else s["colour"]
        checks = {
            "colour": CheckScore(
                "colour",
                colour,
                colour is None or colour <= t.colour_share_max,
                f"<= {_fmt(t.colour_share_max)}",
            ),
            "size": CheckScore("size", s["min_side"], s["min_side"] >= t.min_side, f">= {t.min_side}"),
            "aspect": CheckScore("aspect", s["aspect"], s["aspect"] <= t.aspect_max, f"<= {_fmt(t.aspect_max)}"),
            "blank": CheckScore("blank", s["blank"], s["blank"] <= t.blank_share_max, f"<= {_fmt(t.blank_share_max)}"),
            "structure": CheckScore(
                "structure", s["structure"], s["structure"] >= t.structure_min, f">= {_fmt(t.structure_min)}"
            ),
        }
        report = ValidityReport(checks=checks, features=dict(s))
        h, w = int(s["height"]), int(s["width"])
        reasons = {
            "colour": (
                f"it is a colour image ({s['colour']:.0%} of its pixels are strongly coloured), and X-rays are gray; "
                "upload the radiograph itself as a grayscale PNG, JPEG or DICOM (an X-ray saved in colour: convert "
                "it to grayscale first)"
            ),
            "size": (
                f"it is only {w} x {h} pixels, too small to show the anatomy; upload the film with at least "
                f"{t.min_side} pixels on its shorter side"
            ),
            "aspect": (
                f"its sides are {s['aspect']:.1f} : 1, far from a chest film's shape; upload one whole film, not a "
                "strip, a collage or a screenshot of several images"
            ),
            "blank": (
                f"{s['blank']:.0%} of it is one flat gray level, as on a blank image or a page of text on a plain "
                "background; upload the radiograph itself"
            ),
            # most of a page of fine print is its plain background; noise has none
            "structure": (
                "it shows almost no structure once reduced to 32 x 32 pixels, as fine text or lines on a plain "
                "background do (a document or a screenshot); upload the radiograph itself"
                if s["blank"] > 0.5
                else "it shows almost no structure once reduced to 32 x 32 pixels: it looks like noise, with no "
                "anatomy in it; upload a frontal (PA or AP) chest X-ray"
            ),
        }
        for name in IMAGE_CHECKS:
            if not checks[name].passed:
                report.kind, report.reason = name, reasons[name]
                break
        return report

    def check_segmentation(self, report: ValidityReport, gray: np.ndarray, probs: np.ndarray) -> ValidityReport:
        """Adds the anatomy, polarity, orientation and learned checks to an image report (after the segmentation).

        Args:
            report: from :meth:`check_image` (modified and returned).
            gray: (S, S) segmentation input as gray levels in [0, 255].
            probs: (4, S, S) softmax of the segmentation logits.
        """
        start = time.perf_counter()
        # measured even without a calibration: what a new segmentation model's calibration is fitted on
        report = self.decide_segmentation(report, measure_segmentation(gray, probs))
        report.ms += (time.perf_counter() - start) * 1e3
        return report

    def decide_segmentation(self, report: ValidityReport, m: Measurements) -> ValidityReport:
        """The segmentation checks' decision from :func:`measure_segmentation`'s measurements, added to ``report``."""
        cal = self.calibration
        report.measurements = m
        if cal is None:
            report.features.update(m.scalars)
            report.notes.append(
                "anatomy, polarity, orientation and learned checks not run: no input-validity calibration for this "
                "segmentation model (calibrate it with python -m training.calibrate_validity --segmentation MODEL)"
            )
            return report
        # the image measurements are features of the learned model too
        feats = {**report.features, **decision_features(m, cal)}
        report.features.update(feats)
        report.calibration = cal.name
        t = cal.thresholds
        # the probability-weighted (soft) areas and centroids: they move smoothly with the segmentation
        between, low = feats["s_heart_between"], feats["s_heart_low"]
        heart = bool(feats["heart_present"]) and math.isfinite(feats["heart_between"])
        checks = {
            "lung_share": CheckScore(
                "lung_share",
                feats["lung_share"],
                t.lung_share_min <= feats["lung_share"] <= t.lung_share_max,
                f"{_fmt(t.lung_share_min)} .. {_fmt(t.lung_share_max)}",
            ),
            "lung_balance": CheckScore(
                "lung_balance",
                feats["s_balance"],
                feats["s_balance"] >= t.lung_balance_min,
                f">= {_fmt(t.lung_balance_min)}",
            ),
            "lung_sides": CheckScore(
                "lung_sides",
                feats["s_sides"],
                feats["s_sides"] >= t.lung_sides_min,
                f">= {_fmt(t.lung_sides_min)}",
            ),
            "heart_between": CheckScore(
                "heart_between",
                between if heart else None,
                not heart or t.heart_between_min <= between <= t.heart_between_max,
                f"{_fmt(t.heart_between_min)} .. {_fmt(t.heart_between_max)}",
            ),
            "heart_low": CheckScore(
                "heart_low", low if heart else None, not heart or low >= t.heart_low_min, f">= {_fmt(t.heart_low_min)}"
            ),
            "polarity": CheckScore(
                "polarity", feats["polarity"], feats["polarity"] >= t.polarity_min, f">= {_fmt(t.polarity_min)}"
            ),
            "orientation": CheckScore(
                "orientation",
                feats["orientation"],
                feats["orientation"] <= t.orientation_max,
                f"<= {_fmt(t.orientation_max)}",
            ),
        }
        if not heart:
            report.notes.append("no heart segmented: the heart position checks pass without a score")
        if cal.model is not None:
            report.probabilities = cal.model.probabilities(feats)
            p = report.probabilities["frontal"]
            checks["frontal_model"] = CheckScore(
                "frontal_model", p, p >= t.frontal_probability_min, f">= {_fmt(t.frontal_probability_min)}"
            )
        report.checks.update(checks)
        if report.accepted:  # an image check that already failed keeps its wording
            report.kind, report.reason = self._segmentation_reason(report, feats)
        return report

    def _segmentation_reason(self, report: ValidityReport, feats: Mapping[str, float]) -> tuple[str, str]:
        """(kind, reason) of the first failing segmentation check, worded for the user; ("frontal", "") if none.

        The learned model names what the input looks like, so it words the refusal when it refuses; orientation and
        polarity give the specific fix (with the angle); the anatomy rules come last.
        """
        c = report.checks
        angle = int(feats.get("orientation_angle", 90))  # counter-clockwise, as np.rot90 and PIL's rotate turn
        seen, fix = {
            90: ("by 90° counter-clockwise", "turn it 90° clockwise"),
            180: ("by 180° (upside down)", "turn it by 180°"),
            270: ("by 90° clockwise", "turn it 90° counter-clockwise"),
        }.get(angle, (f"by {angle}°", "turn it upright"))
        rotated = f"it looks rotated {seen}; {fix} so the neck is at the top, and upload it again"
        if "frontal_model" in c and not c["frontal_model"].passed:
            probs = {k: v for k, v in report.probabilities.items() if k != "frontal"}
            kind = max(probs, key=probs.__getitem__)
            if kind == "rotated" and not c["orientation"].passed:
                return kind, rotated
            return kind, _KIND_REASONS[kind]
        if not c["orientation"].passed:  # first: on a rotated film the lung labels, hence polarity, mean little
            return "rotated", rotated
        if not c["polarity"].passed:
            return "inverted", _KIND_REASONS["inverted"]
        share = feats["lung_share"]
        t = self.calibration.thresholds if self.calibration is not None else None
        if not c["lung_share"].passed and t is not None:
            side = "too little" if share < t.lung_share_min else "too much"
            return "anatomy", (
                f"{side} of it was segmented as lung ({share:.0%}; frontal films show {t.lung_share_min:.0%} to "
                f"{t.lung_share_max:.0%}); upload a whole frontal (PA or AP) chest X-ray"
            )
        if not c["lung_balance"].passed:
            return "anatomy", (
                f"it does not show two lungs of similar size (the smaller is {feats['s_balance']:.0%} of the "
                "larger), as a lateral view or a crop would; upload a frontal (PA or AP) film with both lungs in view"
            )
        if not c["lung_sides"].passed:
            return "anatomy", (
                "its lungs are not one on each side of the midline, as on a frontal film; upload a frontal (PA or AP) "
                "chest X-ray, upright and not mirrored"
            )
        if not c["heart_between"].passed or not c["heart_low"].passed:
            return "anatomy", (
                "the heart is not where a frontal film shows it (between the lungs, low); upload a frontal (PA or "
                "AP) chest X-ray"
            )
        return "frontal", ""

    def settings(self) -> dict[str, Any]:
        """What the validator checks with: the image thresholds and the calibration's model and thresholds."""
        cal = self.calibration
        return {
            "image_thresholds": asdict(self.image_thresholds),
            "calibration": None if cal is None else dict(cal.segmentation),
            "anatomy_thresholds": None if cal is None else asdict(cal.thresholds),
            "learned_model": cal is not None and cal.model is not None,
        }


def threshold_fields() -> dict[str, tuple[str, ...]]:
    """The names of every threshold, per group (what :data:`VALIDITY_FILE` must hold and the docs describe)."""
    return {
        "image": tuple(f.name for f in fields(ImageThresholds)),
        "anatomy": tuple(f.name for f in fields(AnatomyThresholds)),
    }
