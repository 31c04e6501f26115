"""cxr-hub models: configs, models and the image processor, plus their Auto-class registration.

Everything in this folder ships next to the weights for ``trust_remote_code``; modules here import each other only
relatively and never import from the rest of ``cxr_hub``.
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
)

from .configuration_fcdensenet import FCDENSENET_PRESETS, SEGMENTATION_IDS, SEGMENTATION_LABELS, FCDenseNetConfig
from .configuration_patch_classifier import LABEL_SETS, MODES, PatchClassifierConfig
from .configuration_unet import UNetConfig
from .image_processing_cxr import CXRImageProcessor, CXRInputError
from .modeling_common import weighted_segmentation_loss
from .modeling_fcdensenet import FCDenseNetForSemanticSegmentation
from .modeling_patch_classifier import PatchClassifierForImageClassification
from .modeling_unet import UNetForSemanticSegmentation

SEGMENTATION_MODELS = {
    FCDenseNetConfig: FCDenseNetForSemanticSegmentation,
    UNetConfig: UNetForSemanticSegmentation,
}
CLASSIFICATION_MODELS = {PatchClassifierConfig: PatchClassifierForImageClassification}


def register_auto_classes() -> None:
    """Registers configs, models and the image processor with the Auto classes (idempotent).

    Two registrations: in-process (``AutoModel.from_pretrained`` works while ``cxr_hub`` is imported) and for
    remote code (``save_pretrained`` writes ``auto_map`` and copies this folder's modules next to the weights).
    """
    for config_cls, model_cls in {**SEGMENTATION_MODELS, **CLASSIFICATION_MODELS}.items():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, model_cls, exist_ok=True)
        AutoImageProcessor.register(config_cls, slow_image_processor_class=CXRImageProcessor, exist_ok=True)
        config_cls.register_for_auto_class("AutoConfig")
    for config_cls, model_cls in SEGMENTATION_MODELS.items():
        AutoModelForSemanticSegmentation.register(config_cls, model_cls, exist_ok=True)
        model_cls.register_for_auto_class("AutoModelForSemanticSegmentation")
    for config_cls, model_cls in CLASSIFICATION_MODELS.items():
        AutoModelForImageClassification.register(config_cls, model_cls, exist_ok=True)
        model_cls.register_for_auto_class("AutoModelForImageClassification")
    CXRImageProcessor.register_for_auto_class("AutoImageProcessor")


def image_processor_for(config: FCDenseNetConfig | UNetConfig | PatchClassifierConfig) -> CXRImageProcessor:
    """The image processor that matches a model config (the config is the single source of truth).

    Segmentation models get the 256 frame normalised to mean 0.5 / std 0.5 gray; classifiers get their
    ``image_size`` frame (1024, patches are cut from it) with the config's gamma, equalisation and normalisation.
    """
    if isinstance(config, PatchClassifierConfig):
        return CXRImageProcessor(
            size=config.image_size if config.mode == "patch" else config.input_size,
            do_equalize=config.do_equalize,
            gamma=config.gamma,
            image_mean=config.image_mean,
            image_std=config.image_std,
        )
    return CXRImageProcessor(size=config.image_size)


__all__ = [
    "CLASSIFICATION_MODELS",
    "FCDENSENET_PRESETS",
    "LABEL_SETS",
    "MODES",
    "SEGMENTATION_IDS",
    "SEGMENTATION_LABELS",
    "SEGMENTATION_MODELS",
    "CXRImageProcessor",
    "CXRInputError",
    "FCDenseNetConfig",
    "FCDenseNetForSemanticSegmentation",
    "PatchClassifierConfig",
    "PatchClassifierForImageClassification",
    "UNetConfig",
    "UNetForSemanticSegmentation",
    "image_processor_for",
    "register_auto_classes",
    "weighted_segmentation_loss",
]

# importing the models registers them (cxr_hub's documented behaviour; idempotent)
register_auto_classes()
