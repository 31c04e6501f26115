"""``CXRPipeline``: load → preprocess → segment → sample patches → vote → probabilistic Grad-CAM (Oh, Park, Ye 2020).

Two halves, so an interactive app can cache the expensive, parameter-free part:

* :meth:`CXRPipeline.prepare` (per image): load, the input-validity check (:mod:`cxr_hub.validity`: is this a
  frontal chest X-ray? a refusal raises before anything is classified; ``check_input=False`` turns it into a
  warning), the paper's preprocessing, lung/heart segmentation at the segmentation model's size (256), the label
  map and lung mask at the original size, the lung-masked, normalised classifier frame (1024) and the biomarkers →
  :class:`PreparedImage`. :meth:`CXRPipeline.check` runs the check alone.
* :meth:`CXRPipeline.analyze` (per K / patch size / seed / classes): patch sampling, batched classification, majority
  vote, probabilistic Grad-CAM, and the optional global classifier → :class:`PipelineResult`.

Every preprocessing parameter (frame size, gamma, equalisation, mean/std, network input size, default patch size
and K) comes from the models' configs through :func:`cxr_hub.image_processor_for`; nothing is hard-coded here.

Segmentation-only mode: ``classifier_model=None``. :meth:`CXRPipeline.prepare` still segments and builds the frame
(its parameters then come from ``frame_config``, by default ``PatchClassifierConfig()``: the paper's 1024 frame,
gamma 0.5, equalisation, 224 patches, K = 100), and :meth:`CXRPipeline.sample_patches` places the patches exactly as
:meth:`CXRPipeline.analyze` would; ``analyze`` itself raises :class:`NoClassifierError`. Nothing is ever classified
with weights that were not loaded.

Rules (see :mod:`cxr_hub.patches` and :mod:`cxr_hub.saliency` for the functions):

* Patch centres are drawn jointly and uniformly from the lung pixels of the lung mask resized (nearest) to the
  classifier frame, by default from a stream of frame positions fixed by the seed (``sampling="stable"``), so a
  slightly different mask keeps almost every patch; a patch near the border is shifted inside the frame, never
  zero-padded.
* A ``patch_size`` other than the classifier's trained ``config.patch_size`` is cropped at that size, resized to
  ``config.input_size`` and flagged in ``warnings``.
* Majority vote; ties → highest mean probability → lowest class index. Same seed → identical result; ``seed=None``
  draws a seed (:func:`resolve_seed`) and ``PipelineResult.seed`` records it, so every result can be replayed.
* Speed: all K patches go through the network in chunks of ``chunk_size`` under ``torch.inference_mode``,
  channels_last throughout. ``precision="auto"`` picks, per classifier: int8 (the backbone quantised,
  :mod:`cxr_hub.quantization`) on x86 CPUs with int8 dot products (VNNI, AMX) for a classifier whose config carries
  an int8 calibration, once validated on real films (:data:`cxr_hub.quantization.INT8_VALIDATED`); else bf16
  autocast on CUDA (used when present) and on CPUs with native bf16 (AMX or AVX512-BF16); else fp32. On the bf16
  path the classifiers run with their batch norms folded into the convolutions (:mod:`cxr_hub.fusion`); the fp32
  path runs them exactly as loaded. Both reduced precisions were validated against fp32 on real test films with the
  shipped classifier (``benchmarks/precision_agreement.py``). The segmentation runs in bf16 under "auto" only where
  that was validated end to end (see ``segmentation_precision`` in :class:`CXRPipeline`), else in fp32.
* Saliency costs no backward pass: for the GAP + linear head, Grad-CAM maps follow from the voting pass's layer4
  features (:func:`cxr_hub.saliency.gradcam_from_features`); the un-normalised maps of every class are kept from
  that pass (K x C x 7 x 7 floats), so no second forward pass is needed for any requested class. An empty saliency
  selection (``saliency_classes=[]`` or ``""``) computes no map at all.
* Eq. (5): per-patch maps normalised to [0, 1] (``normalize_cams``), times the patch's class probability, pasted,
  summed and divided by the per-pixel patch count; computed in the 1024 frame and resized to the original size.
* Too little lung (below ``min_lung_fraction`` of the image, default 5 %) gives a warning, no lung at all a
  :class:`cxr_hub.CXRInputError`.

Pipeline-level problems go into ``PipelineResult.warnings`` (never ``warnings.warn``), for reports and the app.
Only pixel arrays from :func:`cxr_hub.load_image` enter the pipeline, so no DICOM header field can reach a result.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .biomarkers import LEFT_LUNG, RIGHT_LUNG, Biomarkers, compute_biomarkers
from .dense import dense_geometry, snap_boxes, window_scores
from .fusion import fold_batchnorm
from .hardware import cpuinfo
from .io import ImageSource, load_image
from .models import (
    SEGMENTATION_LABELS,
    CXRImageProcessor,
    CXRInputError,
    PatchClassifierConfig,
    image_processor_for,
)
from .patches import (
    DEFAULT_SAMPLING,
    SAMPLING_MODES,
    crop_patches,
    majority_vote,
    patch_center_region,
    sample_patch_boxes,
)
from .postprocessing import clean_label_map, uses_postprocessing
from .preprocessing import map_boxes, preprocess_cxr, resize_image, resize_label_map
from .quantization import INT8_VALIDATED, Int8CalibrationError, cpu_has_int8, quantize_int8
from .saliency import gradcam_from_features, normalize_cams, probabilistic_gradcam
from .validity import Calibration, InputValidator, ValidityReport, source_colour_share

__all__ = [
    "PRECISIONS",
    "VOTING_MODES",
    "CXRPipeline",
    "NoClassifierError",
    "PatchSample",
    "PipelineResult",
    "PreparedImage",
    "resolve_seed",
]

#: Segmentation precisions (and the classifier's, which may also be "int8": :data:`CLASSIFIER_PRECISIONS`).
PRECISIONS = ("auto", "fp32", "bf16")
#: Classifier precisions: "int8" runs the backbone quantised (CPU, :mod:`cxr_hub.quantization`).
CLASSIFIER_PRECISIONS = (*PRECISIONS, "int8")
#: "exact": every patch cropped and classified (the paper); "dense": one fully convolutional pass over the frame,
#: each patch read from its feature window (:mod:`cxr_hub.dense`; experimental: it failed the agreement bar).
VOTING_MODES = ("exact", "dense")
#: Whether ``segmentation_precision="auto"`` may use bf16: set only after the end-to-end check on real films
#: (``benchmarks/precision_agreement.py --segmentation-bf16``) met the project's rule. It failed with the index-based
#: sampler (30 films: 1 label changed, mean |Δp| 0.0072) and passed with the stable sampler, the default
#: (100 test films: 99 same labels, the other a 48:47 vote that became 47:48; mean |Δp| 0.0010;
#: ``docs/results/segmentation_bf16_agreement_label4.json``). That check covers the patch classifier; the global
#: classifier changed 4 of 172 test labels with bf16 masks, so "auto" keeps fp32 when one is loaded.
SEGMENTATION_BF16_VALIDATED = True
#: Whether "auto" segmentation may use bf16 in front of an int8 patch classifier: set only after the end-to-end check
#: of that combination against all-fp32 met the same rule (``benchmarks/precision_agreement.py --segmentation-bf16
#: --fast int8``, ``docs/results/int8_end_to_end_label4.json``).
INT8_WITH_BF16_SEGMENTATION_VALIDATED = True

#: Below this share of the image segmented as lung, a result is flagged as unreliable.
DEFAULT_MIN_LUNG_FRACTION = 0.05

#: ``seed=None`` draws a seed in ``[0, SEED_LIMIT)`` from fresh OS entropy and records it in the result. The range is
#: the app's seed box (0 … 2**32 - 1) and exact in any JSON reader, so every result can be replayed anywhere.
SEED_LIMIT = 2**32


def _integer(name: str, value: Any) -> int:
    """``value`` as a Python int: ints and numpy integers pass; bools, floats (even 3.0) and strings raise."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ValueError(f"{name} must be an integer (a Python or numpy int), got {value!r} ({type(value).__name__}).")


def resolve_seed(seed: int | np.integer | None) -> int:
    """The patch sampler's seed as it is used and recorded: a Python int, freshly drawn for None.

    Args:
        seed: a non-negative integer (Python or numpy), or None to draw one from fresh OS entropy
            (``np.random.SeedSequence().entropy`` reduced to ``[0, SEED_LIMIT)``).

    Returns:
        The seed as a Python int (what ``PipelineResult.seed`` records, so ``seed=result.seed`` replays a result).

    Raises:
        ValueError: a bool, a negative number, a float or anything else that is not an integer.
    """
    if seed is None:
        return int(np.random.SeedSequence().entropy % SEED_LIMIT)
    value = _integer("seed", seed)
    if value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value}.")
    return value


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays off; Linux only.

    Elsewhere (no ``/proc/cpuinfo``, or a CPU that would emulate bf16) False: "auto" precision then stays fp32.
    """
    flags = cpuinfo()
    return torch.backends.mkldnn.is_available() and ("avx512_bf16" in flags or "amx_bf16" in flags)


#: (patch size, seed, ...) combinations whose patch results a PreparedImage keeps for re-use (a few MB at most).
PATCH_CACHE_ENTRIES = 8

#: The config fields the classifier frame and the patch defaults depend on; a ``frame_config`` given together with a
#: classifier must agree with the classifier's config on all of them.
FRAME_FIELDS = (
    "image_size",
    "do_equalize",
    "gamma",
    "image_mean",
    "image_std",
    "patch_size",
    "num_patches",
    "patch_center_margin",
    "lung_masked",
)


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
            change re-use the patches it shares with an earlier call; with dense voting, the whole-frame feature
            map per (classifier, precision, patch size). Filled by the pipeline (:meth:`remember`); never compared.
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


class _Timer:
    """Wall-clock stages in milliseconds; synchronises CUDA first so asynchronous kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3


def _frame_config(
    classifier_config: PatchClassifierConfig | None, frame_config: PatchClassifierConfig | None
) -> PatchClassifierConfig:
    """The config the classifier frame follows: the classifier's, else ``frame_config``, else the paper's default."""
    if frame_config is not None and not (
        isinstance(frame_config, PatchClassifierConfig) and frame_config.mode == "patch"
    ):
        mode = getattr(frame_config, "mode", None)
        raise TypeError(
            "frame_config must be a PatchClassifierConfig with mode='patch' (it defines the 1024 classifier frame), "
            f"got {type(frame_config).__name__}" + (f" with mode={mode!r}." if mode is not None else ".")
        )
    if classifier_config is None:
        return frame_config if frame_config is not None else PatchClassifierConfig()
    if frame_config is not None:
        differ = [
            f"{name}: classifier {getattr(classifier_config, name)!r} vs frame_config {getattr(frame_config, name)!r}"
            for name in FRAME_FIELDS
            if getattr(classifier_config, name) != getattr(frame_config, name)
        ]
        if differ:
            raise ValueError(
                "frame_config disagrees with the classifier's config, which defines the frame the classifier was "
                f"trained on ({'; '.join(differ)}). Drop frame_config (the classifier's config is used) or make them "
                "agree."
            )
    return classifier_config


def _check_classifier(model: nn.Module, role: str, mode: str) -> PatchClassifierConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, PatchClassifierConfig):
        raise TypeError(f"The {role} must be a cxr_hub PatchClassifier model, got {type(model).__name__}.")
    if config.mode != mode:
        raise ValueError(f"The {role} must have config.mode == {mode!r}, got {config.mode!r}.")
    for attr in ("forward_features", "forward_head", "classifier"):
        if not hasattr(model, attr):
            raise TypeError(f"The {role} lacks {attr!r} (needed for batched voting and backward-free Grad-CAM).")
    return config


class CXRPipeline:
    """The paper's inference: segmentation → K lung patches → majority vote → probabilistic Grad-CAM.

    Args:
        segmentation_model: FC-DenseNet / U-Net segmentation model (``config.image_size``, 4 labels: background,
            heart, left lung, right lung).
        classifier_model: patch classifier (``PatchClassifierConfig`` with ``mode="patch"``), or None for the
            segmentation-only mode (:meth:`prepare` and :meth:`sample_patches` work, :meth:`analyze` raises
            :class:`NoClassifierError`).
        global_classifier: optional whole-image classifier (``mode="global"``) for comparison; needs a patch
            classifier.
        device: "cpu", "cuda", a torch.device, or None for CUDA when available, else CPU. The models are moved there
            (and converted to channels_last when ``channels_last``), in place.
        chunk_size: patches per forward pass; bounds memory (activations of ``chunk_size`` patches at a time).
        precision: classifier precision: "auto", "fp32", "bf16" (autocast on any device; slow where the CPU
            emulates bf16) or "int8" (CPU only: the backbone quantised from the calibration in the classifier's
            config, :mod:`cxr_hub.quantization`; the head and Grad-CAM stay fp32; exact voting only). "auto": int8
            on CPUs with int8 dot products (:func:`cxr_hub.quantization.cpu_has_int8`) for a classifier with a
            calibration, once :data:`cxr_hub.quantization.INT8_VALIDATED`; else bf16 autocast on CUDA and on CPUs
            with native bf16 (AMX or AVX512-BF16, see :func:`cpu_has_bf16`); else fp32. Decided per classifier
            (``settings()`` says what each runs in, and why int8 was not possible). On the CPU, bf16 (with the
            batch norms folded, see ``fuse_batchnorm``) gave the same label as fp32 on 100 of 100 real test films
            with a mean |Δp| of 0.0003 (``docs/results/precision_agreement_label4.json``); int8: see
            ``docs/results/int8_agreement_label4.json``.
        segmentation_precision: the segmentation network's precision, same choices. Its label map decides where
            every patch goes, so "auto" turns bf16 on only where it was validated end to end on real films (see
            :data:`SEGMENTATION_BF16_VALIDATED`): only on devices with native bf16 (CUDA; CPUs with AMX or
            AVX512-BF16), in front of an int8 classifier only once :data:`INT8_WITH_BF16_SEGMENTATION_VALIDATED`,
            only with ``sampling="stable"`` (with the other samplers a mask that differs by a few pixels moves every
            patch, and bf16 failed the check), and only without a global classifier (the global model sees the mask's
            outline in its whole-image input: bf16 masks changed 4 of its 172 test labels). Set "fp32" for the
            network exactly as trained (about 2x slower on this CPU).
        voting: "exact" (default: K patches cropped and classified, the paper) or "dense" (**experimental**, a
            research hook, not a feature: one fully convolutional pass over the frame, each patch's logits and
            Grad-CAM read from its window of the feature map, boxes snapped to the 32-pixel feature grid; see
            :mod:`cxr_hub.dense`). With the shipped label4 classifier it gave exact voting's label on 90 % of the
            test films, below the project's 95 % bar (``docs/results/dense_agreement_label4.json``); every dense
            result carries a warning saying so. Re-measure with ``benchmarks/dense_agreement.py`` for other weights.
        fuse_batchnorm: on the reduced-precision (bf16) path, run the classifiers with every batch norm folded into
            the convolution before it (:func:`cxr_hub.fusion.fold_batchnorm`, a verified copy; ~1.5x faster
            patches on a 2-core CPU). The fp32 path always runs the models as loaded.
        channels_last: run the networks in channels_last memory format (on a 2-core CPU: ~1.4x faster for
            ResNet-18 patches, ~3x for FC-DenseNet103, whose many concatenations are cheaper in that layout).
        normalize_cams: normalise each patch's Grad-CAM to [0, 1] before eq. 5, as the authors did; False keeps raw
            Grad-CAM values (maps are then not bounded by 1).
        sampling: "stable" (default: centres uniform over lung pixels, drawn from a mask-independent stream of
            frame positions, so a mask that changes by a few pixels keeps almost every patch), "joint" (the same
            distribution drawn by index into the lung pixels, as in training; every patch moves when the mask
            gains or loses a pixel) or "independent" (the authors' row/column scheme). See
            :func:`cxr_hub.patches.sample_patch_centers`.
        min_lung_fraction: below this share of the image segmented as lung, the result carries a warning.
        frame_config: a ``PatchClassifierConfig`` (``mode="patch"``) that defines the classifier frame (size, gamma,
            equalisation, mean/std) and the default patch size and K when there is no classifier. None → the
            classifier's config, or without a classifier ``PatchClassifierConfig()`` (the paper's settings). Given
            together with a classifier, it must agree with the classifier's config on :data:`FRAME_FIELDS`
            (the classifier's config is what the frame must match), else ValueError.
        reuse_patches: keep each prepared image's patch probabilities and Grad-CAM maps per (patch size, seed) so a
            later :meth:`analyze` with another K re-uses the patches the two draws share (results are bit-identical
            to a fresh run; see :meth:`_classify_reusing`). Costs K x C x 7 x 7 floats per entry.
        check_input: refuse, in :meth:`prepare`, what the input-validity check (:mod:`cxr_hub.validity`) says is not
            a frontal chest X-ray, with a :class:`cxr_hub.validity.NotAFrontalCXRError` (default). False, for
            research: every check is still measured and reported, nothing is refused, and every result carries a
            warning (saying what the check would have decided).
        validity: the check's calibration: None → the one in ``cxr_hub/data/validity.json`` for this segmentation
            model, found by the fingerprint of its weights (none there → the image checks only, and each report
            says so); a :class:`cxr_hub.validity.Calibration` to use as it is; or the path of another validity file.
    """

    def __init__(
        self,
        segmentation_model: nn.Module,
        classifier_model: nn.Module | None = None,
        global_classifier: nn.Module | None = None,
        device: str | torch.device | None = None,
        chunk_size: int = 32,
        precision: str = "auto",
        segmentation_precision: str = "auto",
        voting: str = "exact",
        fuse_batchnorm: bool = True,
        channels_last: bool = True,
        normalize_cams: bool = True,
        sampling: str = DEFAULT_SAMPLING,
        min_lung_fraction: float = DEFAULT_MIN_LUNG_FRACTION,
        frame_config: PatchClassifierConfig | None = None,
        reuse_patches: bool = True,
        check_input: bool = True,
        validity: Calibration | str | Path | None = None,
    ) -> None:
        if precision not in CLASSIFIER_PRECISIONS:
            raise ValueError(f"precision must be one of {CLASSIFIER_PRECISIONS}, got {precision!r}.")
        if segmentation_precision not in PRECISIONS:
            raise ValueError(f"segmentation_precision must be one of {PRECISIONS}, got {segmentation_precision!r}.")
        if voting not in VOTING_MODES:
            raise ValueError(f"voting must be one of {VOTING_MODES}, got {voting!r}.")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}.")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
        if not 0.0 <= float(min_lung_fraction) < 1.0:
            raise ValueError(f"min_lung_fraction must be in [0, 1), got {min_lung_fraction}.")
        self.device = torch.device(device) if device is not None else self.default_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but CUDA is not available; use device='cpu'.")
        seg_config = getattr(segmentation_model, "config", None)
        if seg_config is None or not hasattr(seg_config, "image_size"):
            raise TypeError("The segmentation model needs a config with image_size (a cxr_hub segmentation model).")
        seg_labels = {int(k): v for k, v in seg_config.id2label.items()}
        if seg_labels != SEGMENTATION_LABELS:
            raise ValueError(f"The segmentation model's labels must be {SEGMENTATION_LABELS}, got {seg_labels}.")
        if classifier_model is None and global_classifier is not None:
            raise ValueError("A global classifier needs a patch classifier (classifier_model is None).")
        self.classifier_config: PatchClassifierConfig | None = (
            _check_classifier(classifier_model, "classifier", "patch") if classifier_model is not None else None
        )
        self.frame_config: PatchClassifierConfig = _frame_config(self.classifier_config, frame_config)
        self.global_config = (
            _check_classifier(global_classifier, "global classifier", "global") if global_classifier else None
        )
        self.chunk_size = int(chunk_size)
        self.precision = precision
        self.segmentation_precision = segmentation_precision
        self.voting = voting
        self.fuse_batchnorm = bool(fuse_batchnorm)
        #: id(model) → (model, its batch-norm-folded copy or None when nothing could be folded)
        self._folded: dict[int, tuple[nn.Module, nn.Module | None]] = {}
        #: id(model) → (model, its int8 network or None, why not: "" when built)
        self._int8: dict[int, tuple[nn.Module, nn.Module | None, str]] = {}
        self.channels_last = bool(channels_last)
        self.normalize_cams = bool(normalize_cams)
        self.sampling = sampling
        self.min_lung_fraction = float(min_lung_fraction)
        self.reuse_patches = bool(reuse_patches)
        self.check_input = bool(check_input)
        #: the input-validity check (its calibration is looked up before the model is moved: the same weights)
        self.validator = InputValidator.for_segmentation(segmentation_model, validity)
        self.segmentation_model = self._place(segmentation_model)
        self.classifier_model = self._place(classifier_model) if classifier_model is not None else None
        self.global_classifier = self._place(global_classifier) if global_classifier else None
        self.segmentation_processor = image_processor_for(seg_config)
        #: the classifier frame's processor (from :attr:`frame_config`); also in segmentation-only mode
        self.frame_processor = image_processor_for(self.frame_config)
        self.global_processor = image_processor_for(self.global_config) if self.global_config else None
        self._build_int8_networks()

    def _classifiers(self) -> list[tuple[str, nn.Module]]:
        named = [("classifier", self.classifier_model), ("global classifier", self.global_classifier)]
        return [(name, model) for name, model in named if model is not None]

    def _build_int8_networks(self) -> None:
        """Quantises the classifiers now when int8 is requested or "auto" may use it, so the first analysis does not
        pay for it (1-3 s per model on a 2-core CPU) and a bad calibration fails at load, not mid-request."""
        if self.precision == "int8":
            if self.device.type != "cpu":
                raise ValueError(f"precision 'int8' runs on the CPU only; this pipeline's device is {self.device}.")
            if self.voting == "dense":
                raise ValueError(
                    "precision 'int8' is validated for exact patch voting only; use voting='exact' or precision "
                    "'auto'/'bf16'/'fp32' with dense voting."
                )
            for name, model in self._classifiers():
                _, network, reason = self._int8_entry(model, name)
                if network is None:
                    raise Int8CalibrationError(reason)
        elif self.precision == "auto" and self._int8_auto_possible():
            for name, model in self._classifiers():
                self._int8_entry(model, name)

    def _int8_auto_possible(self) -> bool:
        return INT8_VALIDATED and self.device.type == "cpu" and cpu_has_int8()

    def _int8_entry(self, model: nn.Module, name: str = "classifier") -> tuple[nn.Module, nn.Module | None, str]:
        """The model's int8 network (built once), or None and the reason it cannot have one."""
        entry = self._int8.get(id(model))
        if entry is None or entry[0] is not model:
            try:
                if getattr(model.config, "int8_calibration", None) is None:
                    raise Int8CalibrationError(
                        f"The {name}'s config has no int8 calibration (config.int8_calibration). Calibrate it on "
                        "training films with `python -m training.calibrate_int8 --classifier FOLDER`, or use precision "
                        "'bf16' or 'fp32'."
                    )
                entry = (model, quantize_int8(model, name=name), "")
            except (Int8CalibrationError, RuntimeError) as exc:
                entry = (model, None, str(exc))
            self._int8[id(model)] = entry
        return entry

    def _arithmetic(self, model: nn.Module | None, dense: bool = False) -> str:
        """What a classifier runs in on this pipeline: "int8", "bf16" or "fp32".

        "int8" when requested, or under "auto" on CPUs with int8 dot products (:func:`cxr_hub.quantization.
        cpu_has_int8`) for a model whose config carries a calibration; never for dense voting (its agreement was
        measured in bf16). Otherwise bf16 where :meth:`_uses_bf16` says so, else fp32.
        """
        wants_int8 = self.precision == "int8" or (self.precision == "auto" and self._int8_auto_possible())
        if model is not None and not dense and self.device.type == "cpu" and wants_int8:
            if self._int8_entry(model)[1] is not None:
                return "int8"
            if self.precision == "int8":
                raise Int8CalibrationError(self._int8_entry(model)[2])
        precision = "auto" if self.precision == "int8" else self.precision
        return "bf16" if self._uses_bf16(precision) else "fp32"

    @property
    def classifier_processor(self) -> CXRImageProcessor:
        """The classifier frame's processor: same object as :attr:`frame_processor` (kept for existing callers)."""
        return self.frame_processor

    @property
    def has_classifier(self) -> bool:
        """A patch classifier is loaded (False: segmentation-only mode)."""
        return self.classifier_model is not None

    @staticmethod
    def default_device() -> torch.device:
        """CUDA when available, else CPU."""
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @classmethod
    def from_pretrained(
        cls,
        segmentation: str | Path,
        classifier: str | Path | None = None,
        global_classifier: str | Path | None = None,
        device: str | torch.device | None = None,
        allow_pickle: bool = False,
        **kwargs: Any,
    ) -> CXRPipeline:
        """Loads the models with ``transformers.AutoModel`` (Hub repo ids or local folders) and builds a pipeline.

        ``cxr_hub`` registers its model classes on import, so no ``trust_remote_code`` is needed (or passed). Only
        safetensors weights are read (:func:`cxr_hub.loading.load_model`).

        Args:
            segmentation: segmentation model repo id or folder.
            classifier: patch classifier repo id or folder; None → segmentation-only mode.
            global_classifier: optional global classifier repo id or folder.
            device: as in the constructor.
            allow_pickle: also load pickle checkpoints (``pytorch_model.bin``), which can run code when loaded;
                only for folders you trust. False (default): a folder holding one is refused.
            **kwargs: further constructor arguments (chunk_size, precision, ...).

        Raises:
            cxr_hub.loading.UnsafeCheckpointError: a pickle checkpoint and ``allow_pickle`` is False.
        """
        from .loading import load_model

        def load(source: str | Path | None) -> nn.Module | None:
            return None if source is None else load_model(source, allow_pickle=allow_pickle)

        return cls(load(segmentation), load(classifier), load(global_classifier), device=device, **kwargs)

    def _place(self, model: nn.Module) -> nn.Module:
        """Moves a model to the device in eval mode (in place), channels_last when enabled."""
        model = model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def settings(self) -> dict[str, Any]:
        """The choices that change results, as resolved on this machine (for reports next to the numbers).

        Returns:
            JSON-ready dict: device, sampling, voting, chunk size, classifier and segmentation precision (the
            option and what it resolved to here: "int8", "bf16" or "fp32", for the patch and the global classifier),
            batch-norm folding, channels_last, Grad-CAM normalisation, ``int8_unavailable``: why a classifier
            could not run in int8 where the precision asked for it (e.g. no calibration in its config),
            ``check_input`` and ``input_check_calibration`` (the segmentation model the input check's anatomy part
            was calibrated on; None: image checks only).
        """
        return {
            "device": str(self.device),
            "sampling": self.sampling,
            "voting": self.voting,
            "chunk_size": self.chunk_size,
            "precision": self.precision,
            "classifier_arithmetic": self._arithmetic(self.classifier_model) if self.classifier_model else None,
            "global_classifier_arithmetic": (
                self._arithmetic(self.global_classifier) if self.global_classifier is not None else None
            ),
            "segmentation_precision": self.segmentation_precision,
            "segmentation_arithmetic": "bf16" if self._segmentation_uses_bf16() else "fp32",
            "fuse_batchnorm": self.fuse_batchnorm,
            "channels_last": self.channels_last,
            "normalize_cams": self.normalize_cams,
            "int8_unavailable": {
                name: self._int8[id(model)][2]
                for name, model in self._classifiers()
                if id(model) in self._int8 and self._int8[id(model)][1] is None
            },
            "check_input": self.check_input,
            # which segmentation model the anatomy checks were calibrated on (None: image checks only)
            "input_check_calibration": self.validator.calibration.name if self.validator.calibration else None,
        }

    def _uses_bf16(self, precision: str) -> bool:
        """Whether ``precision`` resolves to bf16 autocast on this pipeline's device."""
        native = self.device.type == "cuda" or (self.device.type == "cpu" and cpu_has_bf16())
        return precision == "bf16" or (precision == "auto" and native)

    def _segmentation_uses_bf16(self) -> bool:
        if self.segmentation_precision == "auto":
            return (
                SEGMENTATION_BF16_VALIDATED
                and self.sampling == "stable"
                and self.global_classifier is None
                and self._uses_bf16("auto")
                and (INT8_WITH_BF16_SEGMENTATION_VALIDATED or self._arithmetic(self.classifier_model) != "int8")
            )
        return self._uses_bf16(self.segmentation_precision)

    def _autocast(self, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when ``enabled``, else nothing."""
        if not enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _runtime_model(self, model: nn.Module, input_size: int, dense: bool = False) -> tuple[nn.Module, bool]:
        """The network a classifier call runs, and whether to run it under bf16 autocast.

        int8: the quantised network (:mod:`cxr_hub.quantization`); bf16: the batch-norm-folded copy (when
        ``fuse_batchnorm``); fp32: the model itself.
        """
        arithmetic = self._arithmetic(model, dense=dense)
        if arithmetic == "int8":
            return self._int8_entry(model)[1], False
        bf16 = arithmetic == "bf16"
        if not (self.fuse_batchnorm and bf16):
            return model, bf16
        entry = self._folded.get(id(model))
        if entry is None or entry[0] is not model:
            channels = int(getattr(getattr(model, "config", None), "num_channels", 1))
            generator = torch.Generator().manual_seed(0)
            example = torch.randn(2, channels, input_size, input_size, generator=generator).to(self.device)
            folded, n = fold_batchnorm(model, example, forward="forward_features")
            entry = (model, self._place(folded) if n else None)
            self._folded[id(model)] = entry
        return (entry[1] if entry[1] is not None else model), True

    @property
    def class_names(self) -> list[str]:
        """The patch classifier's classes in index order ([] in segmentation-only mode: nothing is classified)."""
        cfg = self.classifier_config
        return [] if cfg is None else [cfg.id2label[i] for i in range(cfg.num_labels)]

    def _require_classifier(self, what: str) -> tuple[nn.Module, PatchClassifierConfig]:
        if self.classifier_model is None or self.classifier_config is None:
            raise NoClassifierError(
                f"no classifier loaded: this pipeline was built for segmentation only (classifier_model=None), so it "
                f"cannot {what}. prepare() and sample_patches() work; load a patch classifier to classify."
            )
        return self.classifier_model, self.classifier_config

    # ------------------------------------------------------------------ prepare

    def check(
        self, image: ImageSource, *, source_name: str | None = None, source: ImageSource | None = None
    ) -> ValidityReport:
        """The input-validity check alone: every check's score and the decision, nothing refused, nothing prepared.

        Loads, preprocesses and segments the image exactly as :meth:`prepare` does (the segmentation runs even when
        an image check fails, so every score is measured). For "would this be refused?" without the frame and
        biomarkers, and for calibrating the check (``training/calibrate_validity.py``).

        Args:
            image, source_name, source: as in :meth:`prepare`.

        Returns:
            The :class:`cxr_hub.validity.ValidityReport`; ``report.accepted`` is :meth:`prepare`'s decision.

        Raises:
            CXRInputError: the image cannot be read.
        """
        report = self._load_and_check(image, source_name, source, _Timer(self.device), enforce=False)[-1]
        report.enforced = self.check_input
        return report

    def _load_and_check(
        self, image: ImageSource, source_name: str | None, source: ImageSource | None, timer: _Timer, enforce: bool
    ) -> tuple[np.ndarray, np.ndarray, tuple[bool, float | None], torch.Tensor, ValidityReport]:
        """Load → image checks → preprocessing → segmentation network → segmentation checks.

        Returns ``(image, preprocessed, preprocess params, float32 logits, report)``; with ``enforce`` a failing
        check raises its :class:`cxr_hub.validity.NotAFrontalCXRError` as soon as it fails.
        """
        colour_source = image if source is None else source
        position = _position(colour_source)  # a file object: where load_image starts, so the colour check re-reads
        subject = source_name or "The image"
        with timer.stage("load"):
            img = load_image(image, source_name=source_name)
        with timer.stage("input_check"):
            chroma = self.validator.image_thresholds.colour_chroma
            report = self.validator.check_image(img, _colour_share(colour_source, position, chroma))
            report.enforced = enforce
        if enforce and not report.accepted:
            raise report.error(subject)  # before the segmentation: a refused image costs no network pass
        cls_proc, seg_proc = self.frame_processor, self.segmentation_processor
        params = (cls_proc.do_equalize, cls_proc.gamma)
        with timer.stage("preprocess"):
            pre = preprocess_cxr(img, equalize=params[0], gamma=params[1])
            seg_pre = self._preprocessed(img, seg_proc, pre, params)
            seg_input = seg_proc.frame_from_preprocessed(seg_pre)
        with timer.stage("segment"):
            x = torch.from_numpy(seg_input)[None, None].to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                with self._autocast(self._segmentation_uses_bf16()):
                    logits = self.segmentation_model(x).logits
                logits = logits.float()  # the check, upsampling and argmax in fp32 whatever the network ran in
        with timer.stage("input_check"), torch.inference_mode():
            probs = torch.softmax(logits[0], dim=0).cpu().numpy()
            gray = (seg_input * seg_proc.image_std + seg_proc.image_mean) * 255.0  # the input's gray levels, 0-255
            if gray.shape != probs.shape[1:]:
                gray = resize_image(gray, probs.shape[1:])
            report = self.validator.check_segmentation(report, gray, probs)
        report.ms = timer.ms["input_check"]  # the whole check: colour read, softmax and measurements included
        if enforce and not report.accepted:
            raise report.error(subject)
        return img, pre, params, logits, report

    def prepare(
        self, image: ImageSource, *, source_name: str | None = None, source: ImageSource | None = None
    ) -> PreparedImage:
        """Load, check, preprocess, segment and compute the classifier frame and biomarkers of one image.

        The input-validity check (:mod:`cxr_hub.validity`) runs here, before anything is classified: its image
        checks right after loading (a refusal costs no segmentation), the rest on the segmentation's output. With
        ``check_input=True`` (default) a failing check raises; otherwise the result carries a warning.

        Args:
            image: anything :func:`cxr_hub.load_image` accepts (path, bytes, file object, PIL image, array).
            source_name: how messages name the input ("The uploaded file", "File 'a.png'"); default "The image".
                Also passed to :func:`cxr_hub.load_image` for its messages about a path.
            source: where an already-decoded ``image`` array came from (the path, bytes or PIL image), so the colour
                check can read the colour that :func:`cxr_hub.load_image` turned into gray; None → ``image`` itself.

        Returns:
            PreparedImage, reusable for any number of :meth:`analyze` calls; ``input_check`` holds the check's
            scores.

        Raises:
            cxr_hub.validity.NotAFrontalCXRError: the input-validity check refused the input (a colour photograph,
                a lateral film, a CT slice, a rotated or inverted film, ...; ``exc.report`` has the scores).
            CXRInputError: unreadable image, or no lung segmented at all ("is this a frontal chest X-ray?").
        """
        timer = _Timer(self.device)
        start = time.perf_counter()
        img, pre, params, logits, report = self._load_and_check(image, source_name, source, timer, self.check_input)
        cls_proc, seg_proc = self.frame_processor, self.segmentation_processor
        with timer.stage("segment"):
            with torch.inference_mode():
                label_map = seg_proc.post_process_semantic_segmentation(logits, target_sizes=[img.shape])[0]
            label_map = label_map.astype(np.uint8)
            if uses_postprocessing(self.segmentation_model.config):
                label_map, _ = clean_label_map(label_map)
            lung_mask = (label_map == LEFT_LUNG) | (label_map == RIGHT_LUNG)
        if not lung_mask.any():
            raise CXRInputError(
                "No lung found in the segmentation: there is nothing to classify. Is this a frontal (PA/AP) chest "
                "X-ray? Lateral views, other body parts and non-radiographs cannot be analysed."
            )
        with timer.stage("preprocess"):
            # a classifier trained without the lung mask (the mask ablation) must see the unmasked frame too
            frame_mask_source = lung_mask if getattr(self.frame_config, "lung_masked", True) else None
            frame = cls_proc.frame_from_preprocessed(pre, frame_mask_source)
            frame_mask = resize_label_map(lung_mask, cls_proc.size)
        if not frame_mask.any():
            raise CXRInputError(
                "No lung left in the classifier frame after resizing the lung mask (the segmented lung is only a "
                f"few pixels). Is this a frontal chest X-ray? Lung pixels at the original size: {int(lung_mask.sum())}."
            )
        with timer.stage("biomarkers"):
            markers = compute_biomarkers(label_map, pre)
        notes: list[str] = []
        lung_fraction = float(lung_mask.mean())
        if lung_fraction < self.min_lung_fraction:
            notes.append(
                f"too little lung segmented ({lung_fraction:.1%} of the image, below {self.min_lung_fraction:.0%}): "
                "result unreliable"
            )
        notes.extend(markers.warnings)
        if not self.check_input:
            notes.append(report.warning())
        timer.ms["total"] = (time.perf_counter() - start) * 1e3
        return PreparedImage(
            image=img,
            preprocessed=pre,
            preprocess_params=params,
            label_map=label_map,
            lung_mask=lung_mask,
            frame=frame,
            frame_mask=frame_mask,
            biomarkers=markers,
            timings=timer.ms,
            warnings=notes,
            input_check=report,
        )

    @staticmethod
    def _preprocessed(
        image: np.ndarray, processor: CXRImageProcessor, cached: np.ndarray, cached_params: tuple[bool, float | None]
    ) -> np.ndarray:
        """The processor's preprocessing of ``image``, reusing ``cached`` when the parameters agree."""
        params = (processor.do_equalize, processor.gamma)
        if params == cached_params:
            return cached
        return preprocess_cxr(image, equalize=params[0], gamma=params[1])

    # ------------------------------------------------------------------ analyze

    def resolve_classes(self, saliency_classes: str | Sequence[str | int] | None, predicted: int) -> list[int]:
        """Class indices for saliency: None → the predicted class; "all" → every class; names or indices.

        A string may list several names separated by commas ("normal,viral_covid"). An empty sequence, or a string
        with no name in it ("", ","), gives [] (no saliency).
        """
        names = self.class_names
        if saliency_classes is None:
            return [predicted]
        if isinstance(saliency_classes, str):
            if saliency_classes == "all":
                return list(range(len(names)))
            saliency_classes = [s.strip() for s in saliency_classes.split(",") if s.strip()]
        out: list[int] = []
        for c in saliency_classes:
            if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= int(c) < len(names):
                idx = int(c)
            elif isinstance(c, str) and c in names:
                idx = names.index(c)
            else:
                raise ValueError(f"Unknown saliency class {c!r}; choose from {names}, their indices, or 'all'.")
            if idx not in out:
                out.append(idx)
        return out

    def classify_patches(
        self, frame: np.ndarray | torch.Tensor, boxes: np.ndarray, with_cams: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Runs all patches through the classifier in chunks and keeps every class's Grad-CAM from the same pass.

        Args:
            frame: (S, S) normalised, lung-masked classifier frame.
            boxes: (K, 4) int patch edges in that frame.
            with_cams: also compute the Grad-CAM maps; False skips them (the vote alone).

        Returns:
            ``(probs, cams)``: float32 (K, C) softmax probabilities on the CPU and float32 (K, C, h, w) un-normalised
            Grad-CAM maps (after ReLU) of every class, on the pipeline's device (None when ``with_cams`` is False).
        """
        model, cfg = self._require_classifier("classify patches")
        model, bf16 = self._runtime_model(model, cfg.input_size)
        frame_t = torch.as_tensor(frame, dtype=torch.float32).to(self.device)
        weight = model.classifier.weight.detach().float()
        all_classes = list(range(cfg.num_labels))
        probs, cams = [], []
        with torch.inference_mode():
            for start in range(0, len(boxes), self.chunk_size):
                x = crop_patches(frame_t, boxes[start : start + self.chunk_size], cfg.input_size)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with self._autocast(bf16):
                    features = model.forward_features(x)
                    logits = model.forward_head(features)
                probs.append(torch.softmax(logits.float(), dim=-1))
                if with_cams:
                    # fp32 outside autocast: K x C x 7 x 7 maps are cheap, and bf16 would blur the small differences
                    cams.append(gradcam_from_features(features.float(), weight, all_classes, normalize=False))
        return torch.cat(probs).cpu(), (torch.cat(cams) if with_cams else None)

    def _classify_dense(
        self, prepared: PreparedImage, boxes: np.ndarray, patch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense voting: every patch's probabilities and Grad-CAM from one pass over the frame (cached per image).

        Args:
            prepared: from :meth:`prepare`.
            boxes: (K, 4) grid-snapped boxes from :meth:`sample_patches` in dense mode.
            patch_size: their side in frame pixels.

        Returns:
            Like :meth:`classify_patches`: float32 (K, C) probabilities on the CPU and (K, C, 7, 7) raw maps.
        """
        model, cfg = self._require_classifier("classify patches")
        model, bf16 = self._runtime_model(model, cfg.input_size, dense=True)
        frame_side = prepared.frame.shape[0]
        side, cell, window = dense_geometry(frame_side, patch_size, cfg.input_size)
        key = ("dense", id(self.classifier_model), self.precision, self.fuse_batchnorm, int(patch_size))
        features = prepared.patch_cache.get(key)
        if features is None:
            x = torch.as_tensor(prepared.frame, dtype=torch.float32).to(self.device)[None, None]
            if side != frame_side:
                x = torch.nn.functional.interpolate(
                    x, size=(side, side), mode="bilinear", align_corners=False, antialias=side < frame_side
                )
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), self._autocast(bf16):
                features = model.forward_features(x).float()
            prepared.remember(key, features)
        _, origins = snap_boxes(boxes, cell, features.shape[-1], window, patch_size)
        with torch.inference_mode():
            logits, cams = window_scores(features, model.classifier.weight, model.classifier.bias, origins, window)
        return torch.softmax(logits, dim=-1).cpu(), cams

    def _classify_chunk(
        self, frame: np.ndarray, boxes: np.ndarray, with_cams: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # the argument is passed only when it is not the default, so a subclass that overrides
        # classify_patches(frame, boxes) (as before with_cams existed) keeps working
        return self.classify_patches(frame, boxes) if with_cams else self.classify_patches(frame, boxes, False)

    def _classify_reusing(
        self, prepared: PreparedImage, boxes: np.ndarray, patch_size: int, seed: int | None, with_cams: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`classify_patches`, re-using the whole chunks of an earlier call on the same image and seed.

        The sampler's draws are prefix-stable (the first K boxes of a K' > K draw are the K draw of the same seed),
        so after one analysis at K, another at K' shares its first patches. Only whole chunks of ``chunk_size``
        patches are kept, and the partial last chunk is always computed afresh: every chunk then holds exactly the
        patches it holds in a fresh run, so the result is bit-identical to one without the cache. A cached prefix
        whose boxes differ from the new draw (it cannot happen with numpy's generator, but is checked) is dropped,
        and so is one stored without Grad-CAM maps (``with_cams=False``) when maps are wanted now. ``seed=None``
        (the caller asked for a drawn seed, which is rarely asked again) is not cached, so it evicts nothing.
        """
        if not self.reuse_patches or seed is None:
            return self._classify_chunk(prepared.frame, boxes, with_cams)
        cs, k = self.chunk_size, len(boxes)
        full = (k // cs) * cs
        key = (
            id(self.classifier_model),
            self.precision,
            self.fuse_batchnorm,
            self.sampling,
            int(patch_size),
            int(seed),
            cs,
        )
        cached = prepared.patch_cache.get(key)
        if cached is not None and (
            (with_cams and cached[2] is None)
            or not np.array_equal(cached[0][: min(full, len(cached[0]))], boxes[: min(full, len(cached[0]))])
        ):
            cached = None
        have = 0 if cached is None else len(cached[0])
        probs_parts: list[torch.Tensor] = []
        cams_parts: list[torch.Tensor] = []
        if cached is not None:
            probs_parts.append(cached[1][: min(have, full)])
            if with_cams:
                cams_parts.append(cached[2][: min(have, full)])
        if full > have:
            p, c = self._classify_chunk(prepared.frame, boxes[have:full], with_cams)
            probs_parts.append(p)
            if c is not None:
                cams_parts.append(c)
            store_cams = torch.cat(cams_parts) if with_cams else None
            prepared.remember(key, (boxes[:full].copy(), torch.cat(probs_parts), store_cams))
        if k > full:
            p, c = self._classify_chunk(prepared.frame, boxes[full:], with_cams)
            probs_parts.append(p)
            if c is not None:
                cams_parts.append(c)
        return torch.cat(probs_parts), (torch.cat(cams_parts) if with_cams else None)

    def sample_patches(
        self,
        prepared: PreparedImage,
        k: int | None = None,
        patch_size: int | None = None,
        seed: int | None = 0,
    ) -> PatchSample:
        """The patches :meth:`analyze` would classify, without classifying (works in segmentation-only mode).

        Same sampler, same ``sampling`` mode and the same use of ``np.random.default_rng(seed)`` as :meth:`analyze`
        (which calls this), so the same arguments give the same boxes.

        Args:
            prepared: from :meth:`prepare`.
            k: number of patches, an integer; None → the frame config's ``num_patches`` (the paper: 100).
            patch_size: patch side in the classifier frame, an integer; None → the frame config's ``patch_size``
                (224).
            seed: sampler seed, a non-negative integer; None draws one from fresh entropy (see :func:`resolve_seed`),
                recorded in ``PatchSample.seed``.

        Raises:
            ValueError: k or patch_size not an integer (numpy integers are fine), k < 1, a patch size outside
                1 … frame side, or a seed that is not a non-negative integer.
        """
        cfg = self.frame_config
        k = cfg.num_patches if k is None else _integer("k (the number of patches)", k)
        patch_size = cfg.patch_size if patch_size is None else _integer("patch_size", patch_size)
        seed = resolve_seed(seed)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        frame_shape = prepared.frame.shape
        if not 1 <= patch_size <= min(frame_shape):
            raise ValueError(f"patch_size must be between 1 and the classifier frame side {min(frame_shape)}.")
        rng = np.random.default_rng(seed)
        # centres as the classifier was trained: anywhere in the lung, or deeper than its patch_center_margin
        region = patch_center_region(prepared.frame_mask, cfg.center_margin_pixels(patch_size))
        centers, boxes = sample_patch_boxes(region, k, patch_size, rng, mode=self.sampling)
        if self.voting == "dense":
            side, cell, window = dense_geometry(frame_shape[0], patch_size, cfg.input_size)
            boxes, _ = snap_boxes(boxes, cell, side // 32, window, patch_size)
        return PatchSample(
            centers_1024=centers,
            boxes_1024=boxes,
            boxes=map_boxes(boxes, frame_shape, prepared.original_size),
            k=k,
            patch_size=patch_size,
            seed=seed,
        )

    def analyze(
        self,
        prepared: PreparedImage,
        k: int | None = None,
        patch_size: int | None = None,
        seed: int | None = 0,
        saliency_classes: str | Sequence[str | int] | None = None,
    ) -> PipelineResult:
        """Patch sampling, voting and saliency on a prepared image.

        Args:
            prepared: from :meth:`prepare`.
            k: number of patches, an integer; None → the classifier's ``config.num_patches`` (the paper: 100).
            patch_size: patch side in the classifier frame, an integer; None → ``config.patch_size`` (224). Another
                size is cropped at that size, resized to ``config.input_size`` and flagged in ``warnings``.
            seed: seed of the patch sampler, a non-negative integer (same seed → identical result); None draws one
                from fresh entropy (:func:`resolve_seed`). Either way ``result.seed`` is the seed used.
            saliency_classes: None → the predicted class; "all" → every class; a name, comma-separated names, or a
                sequence of names/indices. An empty sequence or an empty string → no saliency at all: no Grad-CAM
                map is computed, patch or global (the fastest path, for batch runs that need only the vote), and
                ``saliency`` / ``global_saliency`` are ``{}``.

        Returns:
            PipelineResult.

        Raises:
            NoClassifierError: segmentation-only pipeline (use :meth:`sample_patches` for the patch positions).
            ValueError: k or patch_size not an integer, k < 1, a patch size outside 1 … frame side, a seed that is not
                a non-negative integer, an unknown saliency class (checked before any patch is classified).
        """
        _, cfg = self._require_classifier("analyze (vote and saliency)")
        names = self.class_names
        # resolved now, so an unknown class fails before the vote and an empty selection skips every Grad-CAM
        requested = None if saliency_classes is None else self.resolve_classes(saliency_classes, 0)
        with_cams = requested is None or bool(requested)
        timer = _Timer(self.device)
        start = time.perf_counter()
        with timer.stage("sample"):
            sample = self.sample_patches(prepared, k, patch_size, seed)
        k, patch_size, centers, boxes = sample.k, sample.patch_size, sample.centers_1024, sample.boxes_1024
        notes = list(prepared.warnings)
        if patch_size != cfg.patch_size:
            notes.append(
                f"patch size {patch_size} differs from the size the classifier was trained at ({cfg.patch_size}): "
                f"patches are cropped at {patch_size} px and resized to the network input ({cfg.input_size} px)"
            )
        if self.voting == "dense":
            notes.append(
                "experimental dense voting: every patch was read from one whole-frame pass of the classifier, an "
                "approximation that has not met the agreement bar with exact patch voting (patch boxes snapped to the "
                "feature grid); use the default exact voting for results"
            )
        untrained = [c for c in names if c not in cfg.trained_classes]
        if untrained:
            notes.append(
                f"classes never trained in this classifier (their probabilities and votes are meaningless): "
                f"{', '.join(untrained)}"
            )

        with timer.stage("classify"):
            cams_all: torch.Tensor | None
            if self.voting == "dense":
                probs_t, cams_all = self._classify_dense(prepared, boxes, patch_size)
            else:
                # a drawn seed (seed=None) is not cached: replaying it is rare, and it would evict useful entries
                reuse_seed = None if seed is None else sample.seed
                probs_t, cams_all = self._classify_reusing(prepared, boxes, patch_size, reuse_seed, with_cams)
            probs = probs_t.numpy()
            winner, counts = majority_vote(probs)
        classes = [winner] if requested is None else requested
        with timer.stage("saliency"):
            saliency: dict[str, np.ndarray] = {}
            in_lung: dict[str, float] = {}
            if classes and cams_all is not None:
                saliency, in_lung = self._patch_saliency(prepared, cams_all, probs_t, boxes, classes)

        global_label = global_probs = global_sal = None
        if self.global_classifier is not None:
            with timer.stage("global"):
                global_label, global_probs, global_sal, gnotes = self._global(
                    prepared, [names[c] for c in classes], with_cams
                )
            notes.extend(gnotes)
        else:
            timer.ms["global"] = 0.0

        analyze_ms = (time.perf_counter() - start) * 1e3
        timings = {key: v for key, v in prepared.timings.items() if key != "total"}
        timings.update(timer.ms)
        timings["analyze"] = analyze_ms
        timings["total"] = prepared.timings.get("total", 0.0) + analyze_ms
        return PipelineResult(
            label=names[winner],
            votes={n: int(c) for n, c in zip(names, counts, strict=True)},
            vote_fraction={n: float(c) / k for n, c in zip(names, counts, strict=True)},
            probabilities={n: float(p) for n, p in zip(names, probs.mean(axis=0), strict=True)},
            patch_probabilities=probs.astype(np.float32),
            class_names=names,
            label_map=prepared.label_map,
            lung_mask=prepared.lung_mask,
            patch_boxes=sample.boxes,
            patch_boxes_1024=boxes,
            patch_centers_1024=centers,
            saliency=saliency,
            saliency_in_lung=in_lung,
            biomarkers=prepared.biomarkers,
            k=k,
            patch_size=patch_size,
            seed=sample.seed,
            image_size=prepared.original_size,
            timings=timings,
            device=str(self.device),
            warnings=notes,
            global_label=global_label,
            global_probabilities=global_probs,
            global_saliency=global_sal,
            input_check=prepared.input_check,
        )

    def _patch_saliency(
        self,
        prepared: PreparedImage,
        cams_all: torch.Tensor,
        probs: torch.Tensor,
        boxes: np.ndarray,
        classes: list[int],
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Eq. 5 for the requested classes, resized to the original size, plus each map's share inside the lung."""
        cams = cams_all[:, classes]
        if self.normalize_cams:
            cams = normalize_cams(cams)
        maps = probabilistic_gradcam(cams, probs[:, classes], boxes, prepared.frame.shape)
        names = self.class_names
        saliency, in_lung = {}, {}
        for i, c in enumerate(classes):
            m = resize_image(maps[i], prepared.original_size)
            saliency[names[c]] = m
            in_lung[names[c]] = _mass_share(m, prepared.lung_mask)
        return saliency, in_lung

    def global_frame(self, prepared: PreparedImage, config: PatchClassifierConfig | None = None) -> np.ndarray:
        """The whole-image input of a global classifier for a prepared image.

        Args:
            prepared: from :meth:`prepare`.
            config: the global classifier's config; None → the loaded global classifier's.

        Returns:
            (S, S) float32 frame normalised by that config's processor, S = ``config.input_size``; lung-masked unless
            ``config.lung_masked`` is False.

        Raises:
            ValueError: no config given and no global classifier loaded.
        """
        cfg = config if config is not None else self.global_config
        if cfg is None:
            raise ValueError("No global classifier is loaded: pass the global classifier's config.")
        proc = self.global_processor if cfg is self.global_config else image_processor_for(cfg)
        pre = self._preprocessed(prepared.image, proc, prepared.preprocessed, prepared.preprocess_params)
        mask = prepared.lung_mask if getattr(cfg, "lung_masked", True) else None
        return proc.frame_from_preprocessed(pre, mask)

    def _global(
        self, prepared: PreparedImage, requested: list[str], with_cams: bool = True
    ) -> tuple[str, dict[str, float], dict[str, np.ndarray], list[str]]:
        """Global classifier on the whole masked image, with ordinary Grad-CAM upsampled to the original size.

        The maps are of its predicted class and the ``requested`` ones it has; none at all (``{}``) without
        ``with_cams``."""
        assert self.global_classifier is not None and self.global_config is not None
        model, cfg = self.global_classifier, self.global_config
        model, bf16 = self._runtime_model(model, cfg.input_size)
        x = torch.from_numpy(self.global_frame(prepared))[None, None].to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            with self._autocast(bf16):
                features = model.forward_features(x)
                logits = model.forward_head(features)
            probs = torch.softmax(logits.float(), dim=-1)[0].cpu().numpy()
            names = [cfg.id2label[i] for i in range(cfg.num_labels)]
            pred = int(np.argmax(probs))
            saliency: dict[str, np.ndarray] = {}
            if with_cams:
                idx = [pred] + [names.index(n) for n in requested if n in names and names.index(n) != pred]
                cams = gradcam_from_features(
                    features.float(), model.classifier.weight.float(), idx, self.normalize_cams
                )
                up = (
                    torch.nn.functional.interpolate(
                        cams, size=prepared.original_size, mode="bilinear", align_corners=False
                    )[0]
                    .cpu()
                    .numpy()
                )
                saliency = {names[c]: up[i].astype(np.float32) for i, c in enumerate(idx)}
        notes = []
        untrained = [c for c in names if c not in cfg.trained_classes]
        if untrained:
            notes.append(
                f"global classifier: classes never trained (meaningless probabilities): {', '.join(untrained)}"
            )
        return names[pred], {n: float(p) for n, p in zip(names, probs, strict=True)}, saliency, notes

    def __call__(
        self,
        image: ImageSource,
        k: int | None = None,
        patch_size: int | None = None,
        seed: int | None = 0,
        saliency_classes: str | Sequence[str | int] | None = None,
    ) -> PipelineResult:
        """:meth:`prepare` then :meth:`analyze` (see there for the arguments)."""
        self._require_classifier("analyze (vote and saliency)")  # before the segmentation, not after
        start = time.perf_counter()
        result = self.analyze(
            self.prepare(image), k=k, patch_size=patch_size, seed=seed, saliency_classes=saliency_classes
        )
        result.timings["total"] = (time.perf_counter() - start) * 1e3
        return result


def _position(source: Any) -> int | None:
    """The read position of a seekable file object (None for anything else, or when it cannot tell)."""
    if isinstance(source, (str, Path, bytes, bytearray, memoryview, np.ndarray)) or not hasattr(source, "read"):
        return None
    try:
        return int(source.tell()) if source.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def _colour_share(source: Any, position: int | None, chroma: float) -> float | None:
    """:func:`cxr_hub.validity.source_colour_share` of the input as given; a file object is first put back at the
    position ``load_image`` started reading from (None → no colour signal for a file object)."""
    if hasattr(source, "read") and not isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        if position is None:
            return None
        try:
            end = source.tell()
            source.seek(position)
            try:
                return source_colour_share(source, chroma)
            finally:
                source.seek(end)  # where load_image left it
        except (AttributeError, OSError, ValueError):
            return None
    return source_colour_share(source, chroma)


def _mass_share(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of a non-negative map's total inside a mask, in [0, 1]; NaN for an all-zero map."""
    total = float(saliency.sum(dtype=np.float64))
    if total <= 0:
        return math.nan
    return min(1.0, max(0.0, float(saliency[mask].sum(dtype=np.float64)) / total))
