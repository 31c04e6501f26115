"""U-Net segmentation baseline as a transformers model (self-contained for ``trust_remote_code``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SemanticSegmenterOutput

from .configuration_unet import UNetConfig
from .modeling_common import (
    AutoMapMixin,
    check_pixel_values,
    init_module_weights,
    pad_to_multiple,
    weighted_segmentation_loss,
)


class DoubleConv(nn.Sequential):
    """(3x3 conv → BN → ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNetPreTrainedModel(AutoMapMixin, PreTrainedModel):
    """Weight initialisation and loading shared by U-Net models."""

    config_class = UNetConfig
    base_model_prefix = "unet"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        init_module_weights(module)


class UNetForSemanticSegmentation(UNetPreTrainedModel):
    """U-Net for 4-class chest X-ray segmentation, same interface as ``FCDenseNetForSemanticSegmentation``.

    Input ``pixel_values`` (B, num_channels, H, W); output ``logits`` (B, num_labels, H, W).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        widths = [config.base_channels * 2**i for i in range(config.depth + 1)]
        self.encoders = nn.ModuleList()
        in_ch = config.num_channels
        for w in widths[:-1]:
            self.encoders.append(DoubleConv(in_ch, w))
            in_ch = w
        self.bottleneck = nn.Sequential(DoubleConv(widths[-2], widths[-1]), nn.Dropout2d(config.dropout))
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(config.depth, 0, -1):
            self.upsamplers.append(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2))
            self.decoders.append(DoubleConv(2 * widths[i - 1], widths[i - 1]))
        self.classifier = nn.Conv2d(widths[0], config.num_labels, 1)
        self.post_init()

    @property
    def size_divisor(self) -> int:
        """Input sides must be multiples of this (handled by padding in ``forward``)."""
        return 2**self.config.depth

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None
    ) -> SemanticSegmenterOutput:
        """Segments a batch; see ``FCDenseNetForSemanticSegmentation.forward`` for shapes and the loss."""
        check_pixel_values(pixel_values, self.config.num_channels)
        h, w = pixel_values.shape[-2:]
        x = pad_to_multiple(pixel_values, self.size_divisor)
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, dec in zip(self.upsamplers, self.decoders, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        logits = self.classifier(x)[..., :h, :w]
        loss = None
        if labels is not None:
            loss = weighted_segmentation_loss(
                logits, labels, self.config.class_weights, self.config.semantic_loss_ignore_index
            )
        return SemanticSegmenterOutput(loss=loss, logits=logits)
