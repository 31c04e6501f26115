"""Patch-based chest X-ray classifier (ResNet-18 via timm) as a transformers model.

Self-contained for ``trust_remote_code``: imports only torch, timm, transformers and its sibling config module.
The head is kept outside timm (global average pooling + linear) so saliency can use the last convolutional stage
directly: for GAP + linear, Grad-CAM's channel weights are the linear weights divided by the map area.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from .configuration_patch_classifier import PatchClassifierConfig
from .modeling_common import AutoMapMixin, check_pixel_values, init_module_weights


class PatchClassifierPreTrainedModel(AutoMapMixin, PreTrainedModel):
    """Weight initialisation and loading shared by the classifiers."""

    config_class = PatchClassifierConfig
    base_model_prefix = "patch_classifier"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        init_module_weights(module, conv_init="kaiming_normal_fan_out")


class PatchClassifierForImageClassification(PatchClassifierPreTrainedModel):
    """ResNet-18 classifier of lung-masked chest X-ray patches (or whole masked images in "global" mode).

    Input ``pixel_values``: (B, num_channels, S, S) float, normalised with ``config.image_mean``/``image_std``;
    S is normally ``config.input_size`` (224). Output ``logits``: (B, num_labels).
    """

    def __init__(self, config: PatchClassifierConfig) -> None:
        super().__init__(config)
        # pretrained=False: construction never downloads; see load_imagenet_weights() for ImageNet initialisation
        self.backbone = timm.create_model(
            config.backbone, pretrained=False, num_classes=0, global_pool="", in_chans=config.num_channels
        )
        self.num_features = int(self.backbone.num_features)
        self.dropout = nn.Dropout(config.drop_rate)
        self.classifier = nn.Linear(self.num_features, config.num_labels)
        self.post_init()

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Last convolutional stage (ResNet layer4).

        Args:
            pixel_values: (B, C, S, S) normalised input.

        Returns:
            (B, num_features, S/32, S/32) feature maps (after the final ReLU).
        """
        check_pixel_values(pixel_values, self.config.num_channels)
        return self.backbone.forward_features(pixel_values)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling + dropout + linear: (B, F, h, w) features → (B, num_labels) logits."""
        return self.classifier(self.dropout(features.mean(dim=(2, 3))))

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutputWithNoAttention:
        """Classifies a batch of patches (or global images).

        Args:
            pixel_values: (B, C, S, S) normalised input.
            labels: optional (B,) int64 class indices; gives the cross-entropy ``loss``.
            output_hidden_states: also return the layer4 feature maps as ``hidden_states[0]``.

        Returns:
            ImageClassifierOutputWithNoAttention with ``logits`` (B, num_labels).
        """
        features = self.forward_features(pixel_values)
        logits = self.forward_head(features)
        loss = F.cross_entropy(logits, labels.long()) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(
            loss=loss, logits=logits, hidden_states=(features,) if output_hidden_states else None
        )

    def load_imagenet_weights(self, source: str | None = None) -> PatchClassifierForImageClassification:
        """Initialises the backbone from timm's ImageNet weights (needs internet or a warm Hub cache).

        The first convolution is adapted to ``num_channels`` by timm (summing the RGB filters for gray input);
        the linear head stays as initialised.

        Args:
            source: timm model name with pretrained tag; defaults to ``config.pretrained_source``.

        Returns:
            self, for chaining.
        """
        name = source or self.config.pretrained_source
        pretrained = timm.create_model(
            name, pretrained=True, num_classes=0, global_pool="", in_chans=self.config.num_channels
        )
        missing, unexpected = self.backbone.load_state_dict(pretrained.state_dict(), strict=False)
        if missing or unexpected:
            raise RuntimeError(
                f"ImageNet weights {name!r} do not fit the backbone: missing={missing}, unexpected={unexpected}."
            )
        return self
