"""Configuration of the U-Net segmentation baseline (the paper's Table XIII comparison)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from .configuration_common import checked_class_weights, fill_label_maps
from .configuration_fcdensenet import SEGMENTATION_LABELS


class UNetConfig(PretrainedConfig):
    """U-Net (Ronneberger et al. 2015) with batch norm and same-padding convolutions.

    Args:
        base_channels: channels of the first level; doubled at each of the ``depth`` downsamplings.
        depth: number of 2x downsamplings.
        dropout: dropout in the bottleneck.
        num_channels: input channels (1: gray).
        image_size: training input side; other sizes are padded to a multiple of 2**depth.
        class_weights: per-class cross-entropy weights.
        semantic_loss_ignore_index: label value ignored by the loss.
    """

    model_type = "cxr_unet"

    def __init__(
        self,
        base_channels: int = 64,
        depth: int = 4,
        dropout: float = 0.2,
        num_channels: int = 1,
        image_size: int = 256,
        class_weights: list[float] | None = None,
        semantic_loss_ignore_index: int = 255,
        **kwargs: Any,
    ) -> None:
        self.base_channels = int(base_channels)
        self.depth = int(depth)
        self.dropout = float(dropout)
        self.num_channels = int(num_channels)
        self.image_size = int(image_size)
        self.semantic_loss_ignore_index = int(semantic_loss_ignore_index)
        super().__init__(**fill_label_maps(kwargs, SEGMENTATION_LABELS))
        self.class_weights = checked_class_weights(class_weights, len(self.id2label))
        if self.depth < 1 or self.base_channels < 1:
            raise ValueError("depth and base_channels must be positive.")
