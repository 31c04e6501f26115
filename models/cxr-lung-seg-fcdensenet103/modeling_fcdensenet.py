"""FC-DenseNet (Jégou et al., "The One Hundred Layers Tiramisu", 2017) as a transformers model.

Self-contained for ``trust_remote_code``: imports only torch, transformers and its sibling config module.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SemanticSegmenterOutput

from .configuration_fcdensenet import FCDenseNetConfig
from .modeling_common import (
    AutoMapMixin,
    check_pixel_values,
    init_module_weights,
    pad_to_multiple,
    weighted_segmentation_loss,
)


class DenseLayer(nn.Sequential):
    """BN → ReLU → 3x3 conv (growth_rate maps) → dropout."""

    def __init__(self, in_channels: int, growth_rate: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=True),
            nn.Dropout2d(dropout),
        )


class DenseBlock(nn.Module):
    """Dense block; returns only the new maps when ``upsample`` (the up path must not re-grow the skip maps)."""

    def __init__(self, in_channels: int, growth_rate: int, n_layers: int, dropout: float, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, dropout) for i in range(n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new_features = []
        for layer in self.layers:
            out = layer(x)
            x = torch.cat([x, out], 1)
            new_features.append(out)
        return torch.cat(new_features, 1) if self.upsample else x


class TransitionDown(nn.Sequential):
    """BN → ReLU → 1x1 conv → dropout → 2x2 max pool."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=True),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
        )


class TransitionUp(nn.Module):
    """3x3 transposed conv (stride 2), concatenated with the skip connection."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), skip], 1)


class FCDenseNetPreTrainedModel(AutoMapMixin, PreTrainedModel):
    """Weight initialisation and loading shared by FC-DenseNet models."""

    config_class = FCDenseNetConfig
    base_model_prefix = "fcdensenet"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        init_module_weights(module)


class FCDenseNetForSemanticSegmentation(FCDenseNetPreTrainedModel):
    """FC-DenseNet103/67/56 for 4-class chest X-ray segmentation (background, heart, left lung, right lung).

    Input ``pixel_values``: (B, num_channels, H, W) float, the paper's preprocessing normalised by the image
    processor. Any H, W: the input is padded to a multiple of 2**len(down_blocks) and the logits cropped back.
    Output ``logits``: (B, num_labels, H, W).
    """

    def __init__(self, config: FCDenseNetConfig) -> None:
        super().__init__(config)
        g, p = config.growth_rate, config.dropout
        self.first_conv = nn.Conv2d(config.num_channels, config.first_conv_channels, 3, padding=1, bias=True)
        channels = config.first_conv_channels
        skip_channels = []
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        for n_layers in config.down_blocks:
            self.down_blocks.append(DenseBlock(channels, g, n_layers, p, upsample=False))
            channels += g * n_layers
            skip_channels.append(channels)
            self.transitions_down.append(TransitionDown(channels, p))
        self.bottleneck = DenseBlock(channels, g, config.bottleneck_layers, p, upsample=True)
        prev_new = g * config.bottleneck_layers
        self.transitions_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        up_layers = list(reversed(config.down_blocks))
        for i, n_layers in enumerate(up_layers):
            skip = skip_channels[-(i + 1)]
            self.transitions_up.append(TransitionUp(prev_new, prev_new))
            channels = prev_new + skip
            last = i == len(up_layers) - 1
            # the last up block keeps its input so the classifier sees the full-resolution skip features
            self.up_blocks.append(DenseBlock(channels, g, n_layers, p, upsample=not last))
            prev_new = channels + g * n_layers if last else g * n_layers
        self.classifier = nn.Conv2d(prev_new, config.num_labels, 1)
        self.post_init()

    @property
    def size_divisor(self) -> int:
        """Input sides must be multiples of this (handled by padding in ``forward``)."""
        return 2 ** len(self.config.down_blocks)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None
    ) -> SemanticSegmenterOutput:
        """Segments a batch.

        Args:
            pixel_values: (B, C, H, W) float.
            labels: optional (B, H, W) int64 label map; gives the class-weighted cross-entropy ``loss``.

        Returns:
            SemanticSegmenterOutput with ``logits`` (B, num_labels, H, W) and ``loss`` when labels are given.
        """
        check_pixel_values(pixel_values, self.config.num_channels)
        h, w = pixel_values.shape[-2:]
        x = pad_to_multiple(pixel_values, self.size_divisor)
        x = self.first_conv(x)
        skips = []
        for block, down in zip(self.down_blocks, self.transitions_down, strict=True):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, block in zip(self.transitions_up, self.up_blocks, strict=True):
            x = block(up(x, skips.pop()))
        logits = self.classifier(x)[..., :h, :w]
        loss = None
        if labels is not None:
            loss = weighted_segmentation_loss(
                logits, labels, self.config.class_weights, self.config.semantic_loss_ignore_index
            )
        return SemanticSegmenterOutput(loss=loss, logits=logits)
