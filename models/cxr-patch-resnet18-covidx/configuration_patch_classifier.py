"""Configuration of the patch-based (and global) chest X-ray classifier: ResNet-18 built with timm."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from .configuration_common import fill_label_maps

LABEL_SETS: dict[str, tuple[str, ...]] = {
    # the paper's four classes; COVID-19 and other viral pneumonia are merged as in the paper
    "label4": ("normal", "bacterial", "tuberculosis", "viral_covid"),
    # COVIDx-style classes (the paper's COVID-Net comparison, Table XII)
    "label3": ("normal", "pneumonia", "covid"),
}
MODES = ("patch", "global")


class PatchClassifierConfig(PretrainedConfig):
    """Single source of truth for a cxr-hub classifier: architecture, input frame, normalisation, K.

    Args:
        backbone: timm architecture name (the paper: "resnet18").
        num_channels: input channels (1: gray; timm adapts ImageNet weights by summing the RGB filters).
        label_set: "label4" or "label3"; sets ``id2label`` unless it is given.
        mode: "patch" (K random lung-centred patches, majority vote) or "global" (whole masked image).
        image_size: side of the masked, preprocessed frame patches are cut from (the paper: 1024).
        patch_size: side of a patch as cut from that frame (the paper: 224).
        input_size: side the network sees (patches of another size are resized to it).
        num_patches: K, patches per image at inference (the paper: 100).
        patch_center_margin: patch centres lie at least this share of the patch side deep inside the lung
            (``cxr_hub.patches.patch_center_region``), in [0, 0.5]; 0 (the paper): anywhere in the lung. Training and
            inference read it from here, so a model is always fed patches drawn as it was trained.
        image_mean: gray mean subtracted after scaling the preprocessed image to [0, 1].
        image_std: gray std divided after that.
        drop_rate: dropout before the linear head.
        gamma: gamma of the preprocessing (the paper: 0.5).
        do_equalize: histogram equalisation in the preprocessing.
        pretrained_source: timm weights name used by ``load_imagenet_weights``.
        trained_classes: classes that had training images (e.g. no tuberculosis in our data); reports flag the rest.
        lung_masked: the network was trained on lung-masked frames (gray level 0 outside the lungs), as in the paper.
            False (the mask ablation): it sees the whole preprocessed frame; patch centres still lie in the lungs.
        int8_calibration: activation scales and zero points for running the backbone in int8 on x86 CPUs, measured
            on training films (``cxr_hub.runtime.int8.calibrate_int8``; ``python -m training.calibrate_int8``).
            None: no int8 path (the pipeline's "auto" precision then uses bf16 or fp32).
    """

    model_type = "cxr_patch_classifier"

    def __init__(
        self,
        backbone: str = "resnet18",
        num_channels: int = 1,
        label_set: str = "label4",
        mode: str = "patch",
        image_size: int = 1024,
        patch_size: int = 224,
        input_size: int = 224,
        num_patches: int = 100,
        patch_center_margin: float = 0.0,
        image_mean: float = 0.5,
        image_std: float = 0.25,
        drop_rate: float = 0.0,
        gamma: float | None = 0.5,
        do_equalize: bool = True,
        pretrained_source: str = "timm/resnet18.a1_in1k",
        trained_classes: list[str] | None = None,
        lung_masked: bool = True,
        int8_calibration: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if label_set not in LABEL_SETS and kwargs.get("id2label") is None:
            raise ValueError(f"Unknown label_set {label_set!r}; choose one of {sorted(LABEL_SETS)} or pass id2label.")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        for name, value in (("image_size", image_size), ("patch_size", patch_size), ("input_size", input_size)):
            if int(value) < 32:
                raise ValueError(f"{name} must be at least 32 pixels, got {value}.")
        if int(patch_size) > int(image_size):
            raise ValueError(f"patch_size {patch_size} is larger than image_size {image_size}.")
        if int(num_patches) < 1:
            raise ValueError(f"num_patches must be at least 1, got {num_patches}.")
        if not 0.0 <= float(patch_center_margin) <= 0.5:
            raise ValueError(
                f"patch_center_margin must be in [0, 0.5] (a share of the patch side), got {patch_center_margin}."
            )
        self.backbone = backbone
        self.num_channels = int(num_channels)
        self.label_set = label_set
        self.mode = mode
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.input_size = int(input_size)
        self.num_patches = int(num_patches)
        self.patch_center_margin = float(patch_center_margin)
        self.image_mean = float(image_mean)
        self.image_std = float(image_std)
        self.drop_rate = float(drop_rate)
        self.gamma = gamma
        self.do_equalize = bool(do_equalize)
        self.pretrained_source = pretrained_source
        self.lung_masked = bool(lung_masked)
        if int8_calibration is not None and not isinstance(int8_calibration, dict):
            raise ValueError(
                f"int8_calibration must be a dict (from calibrate_int8) or None, got {type(int8_calibration)}."
            )
        self.int8_calibration = int8_calibration
        default_labels = dict(enumerate(LABEL_SETS.get(label_set, ())))
        super().__init__(**fill_label_maps(kwargs, default_labels))
        self.trained_classes = list(trained_classes) if trained_classes is not None else list(self.label2id)
        unknown = set(self.trained_classes) - set(self.label2id)
        if unknown:
            raise ValueError(f"trained_classes {sorted(unknown)} are not in id2label {sorted(self.label2id)}.")

    def center_margin_pixels(self, patch_size: int | None = None) -> int:
        """The centre margin in pixels of the frame for a patch side (default: ``patch_size``)."""
        return round(self.patch_center_margin * int(patch_size or self.patch_size))
