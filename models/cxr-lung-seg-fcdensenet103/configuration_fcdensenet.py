"""Configuration of FC-DenseNet (the "Tiramisu", Jégou et al. 2017) for lung and heart segmentation."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from .configuration_common import checked_class_weights, fill_label_maps

#: The segmentation label map's values, the one place they are written (the configs' id2label, biomarkers, clean-up
#: and overlays all read them from here).
SEGMENTATION_LABELS = {0: "background", 1: "heart", 2: "left_lung", 3: "right_lung"}
#: name → label value (the inverse of SEGMENTATION_LABELS).
SEGMENTATION_IDS = {name: value for value, name in SEGMENTATION_LABELS.items()}

# (down-path layers per block, bottleneck layers, growth rate), from Jégou et al. 2017, Table 2.
FCDENSENET_PRESETS: dict[str, tuple[tuple[int, ...], int, int]] = {
    "fcdensenet56": ((4, 4, 4, 4, 4), 4, 12),
    "fcdensenet67": ((5, 5, 5, 5, 5), 5, 16),
    "fcdensenet103": ((4, 5, 7, 10, 12), 15, 16),
}


class FCDenseNetConfig(PretrainedConfig):
    """FC-DenseNet semantic segmentation config; the default is the paper's FC-DenseNet103.

    Args:
        preset: "fcdensenet103" (default), "fcdensenet67" or "fcdensenet56"; fills the three fields below unless
            they are given explicitly.
        down_blocks: dense layers in each down-path block (the up path mirrors it).
        bottleneck_layers: dense layers in the bottleneck block.
        growth_rate: feature maps added by each dense layer.
        first_conv_channels: filters of the first 3x3 convolution.
        dropout: dropout after each convolution.
        num_channels: input channels (1: gray X-ray).
        image_size: side of the (square) training input; inputs of other sizes are padded to a multiple of 32.
        class_weights: per-class weights of the cross-entropy loss (background, heart, left lung, right lung).
        semantic_loss_ignore_index: label value ignored by the loss.
        id2label: class names; defaults to background / heart / left_lung / right_lung.
    """

    model_type = "cxr_fcdensenet"

    def __init__(
        self,
        preset: str = "fcdensenet103",
        down_blocks: list[int] | None = None,
        bottleneck_layers: int | None = None,
        growth_rate: int | None = None,
        first_conv_channels: int = 48,
        dropout: float = 0.2,
        num_channels: int = 1,
        image_size: int = 256,
        class_weights: list[float] | None = None,
        semantic_loss_ignore_index: int = 255,
        **kwargs: Any,
    ) -> None:
        if preset not in FCDENSENET_PRESETS:
            raise ValueError(f"Unknown FC-DenseNet preset {preset!r}; choose one of {sorted(FCDENSENET_PRESETS)}.")
        p_down, p_bottleneck, p_growth = FCDENSENET_PRESETS[preset]
        self.preset = preset
        self.down_blocks = list(down_blocks if down_blocks is not None else p_down)
        self.bottleneck_layers = int(bottleneck_layers if bottleneck_layers is not None else p_bottleneck)
        self.growth_rate = int(growth_rate if growth_rate is not None else p_growth)
        self.first_conv_channels = int(first_conv_channels)
        self.dropout = float(dropout)
        self.num_channels = int(num_channels)
        self.image_size = int(image_size)
        self.semantic_loss_ignore_index = int(semantic_loss_ignore_index)
        super().__init__(**fill_label_maps(kwargs, SEGMENTATION_LABELS))
        self.class_weights = checked_class_weights(class_weights, len(self.id2label))
        if not self.down_blocks or min(self.down_blocks) < 1 or self.bottleneck_layers < 1:
            raise ValueError("down_blocks and bottleneck_layers must be positive.")
