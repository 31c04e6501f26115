""":class:`CXRPipeline`: the models, the options and the numeric policy; the two halves live in their own modules."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import ImageSource
from ..models import SEGMENTATION_LABELS, PatchClassifierConfig, image_processor_for
from ..patches import DEFAULT_SAMPLING, SAMPLING_MODES
from ..runtime.numerics import Numerics, NumericsPolicy
from ..validity import Calibration, InputValidator
from .analyze import _AnalyzeHalf
from .arguments import DEFAULT_MIN_LUNG_FRACTION, _check_classifier, _frame_config
from .prepare import _PrepareHalf
from .results import NoClassifierError, PipelineResult

__all__ = ["CXRPipeline"]


class CXRPipeline(_PrepareHalf, _AnalyzeHalf):
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
        precision: the classifiers' arithmetic: "auto" (default), "fp32", "bf16" (autocast) or "int8" (CPU only,
            a classifier with an int8 calibration). The rules "auto" follows, and what each was validated on, live
            with the numeric policy (:mod:`cxr_hub.runtime.numerics`, :attr:`numerics_policy`); ``settings()`` says
            what each network runs in and why.
        segmentation_precision: the segmentation network's arithmetic, "auto" (default), "fp32" or "bf16". Its label
            map decides where every patch goes, so "auto" uses bf16 only where the end-to-end check on real films
            passed (:data:`cxr_hub.runtime.numerics.SEGMENTATION_BF16_VALIDATED`). "fp32" runs the network exactly
            as trained (about 2x slower on this CPU).
        fuse_batchnorm: on the reduced-precision (bf16) path, run the classifiers with every batch norm folded into
            the convolution before it (:func:`cxr_hub.runtime.fusion.fold_batchnorm`, a verified copy; ~1.5x faster
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
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}.")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
        if not 0.0 <= float(min_lung_fraction) < 1.0:
            raise ValueError(f"min_lung_fraction must be in [0, 1), got {min_lung_fraction}.")
        self.device = torch.device(device) if device is not None else self.default_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but CUDA is not available; use device='cpu'.")
        self.channels_last = bool(channels_last)
        #: which arithmetic each network runs in (fp32 / bf16 / int8) and the networks that needs
        self.numerics_policy = NumericsPolicy(
            self.device, precision, segmentation_precision, fuse_batchnorm, self._place
        )
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
        self.numerics_policy.prepare_int8(self._classifiers())

    def _classifiers(self) -> list[tuple[str, nn.Module]]:
        named = [("classifier", self.classifier_model), ("global classifier", self.global_classifier)]
        return [(name, model) for name, model in named if model is not None]

    @property
    def precision(self) -> str:
        """The classifiers' precision option (see the class docstring); settable, like the other two below."""
        return self.numerics_policy.precision

    @precision.setter
    def precision(self, value: str) -> None:
        self.numerics_policy.precision = value  # the policy checks it

    @property
    def segmentation_precision(self) -> str:
        """The segmentation network's precision option."""
        return self.numerics_policy.segmentation_precision

    @segmentation_precision.setter
    def segmentation_precision(self, value: str) -> None:
        self.numerics_policy.segmentation_precision = value  # the policy checks it

    @property
    def fuse_batchnorm(self) -> bool:
        """Whether bf16 classifiers run with their batch norms folded."""
        return self.numerics_policy.fuse_batchnorm

    @fuse_batchnorm.setter
    def fuse_batchnorm(self, value: bool) -> None:
        self.numerics_policy.fuse_batchnorm = bool(value)

    def segmentation_numerics(self) -> Numerics:
        """What the segmentation network runs in on this pipeline, and why (:class:`NumericsPolicy`)."""
        return self.numerics_policy.for_segmentation(
            sampling=self.sampling,
            global_classifier=self.global_classifier is not None,
            classifier=self.classifier_model,
        )

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
        from ..loading import load_model

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
            JSON-ready dict: device, sampling, chunk size, classifier and segmentation precision (the
            option and what it resolved to here: "int8", "bf16" or "fp32", for the patch and the global classifier),
            batch-norm folding, channels_last, Grad-CAM normalisation, ``int8_unavailable``: why a classifier
            could not run in int8 where the precision asked for it (e.g. no calibration in its config),
            ``check_input`` and ``input_check_calibration`` (the segmentation model the input check's anatomy part
            was calibrated on; None: image checks only), ``arithmetic_reasons``: why the policy chose each network's
            arithmetic.
        """
        policy = self.numerics_policy
        numerics = {name: policy.for_classifier(model) for name, model in self._classifiers()}
        numerics["segmentation"] = self.segmentation_numerics()
        return {
            "device": str(self.device),
            "sampling": self.sampling,
            "chunk_size": self.chunk_size,
            "precision": self.precision,
            "classifier_arithmetic": numerics["classifier"].arithmetic if "classifier" in numerics else None,
            "global_classifier_arithmetic": (
                numerics["global classifier"].arithmetic if "global classifier" in numerics else None
            ),
            "segmentation_precision": self.segmentation_precision,
            "segmentation_arithmetic": numerics["segmentation"].arithmetic,
            "arithmetic_reasons": {name: n.reason for name, n in numerics.items()},
            "fuse_batchnorm": self.fuse_batchnorm,
            "channels_last": self.channels_last,
            "normalize_cams": self.normalize_cams,
            "int8_unavailable": policy.int8_unavailable(self._classifiers()),
            "check_input": self.check_input,
            # which segmentation model the anatomy checks were calibrated on (None: image checks only)
            "input_check_calibration": self.validator.calibration.name if self.validator.calibration else None,
        }

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
