"""Pieces shared by every cxr-hub model (ships with the weights for ``trust_remote_code``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init


class AutoMapMixin:
    """Adds an ``AutoModel`` entry to ``auto_map`` beside the task-specific one on save.

    ``register_for_auto_class`` records one Auto class; users also reach for plain ``AutoModel``, which must load the
    same class. The key is only written when the class is registered for remote code (``_auto_class`` set).
    """

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_auto_class", None) is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map["AutoModel"] = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)


def init_module_weights(module: nn.Module, conv_init: str = "kaiming_uniform") -> None:
    """Initialises conv / batch-norm / linear layers.

    Uses ``transformers.initialization``, whose helpers skip tensors already loaded from a checkpoint (torch.nn.init
    would overwrite them during ``from_pretrained``).

    Args:
        module: one module (called by ``PreTrainedModel`` for each).
        conv_init: "kaiming_uniform" (segmentation nets) or "kaiming_normal_fan_out" (ResNet, as torchvision).
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        if conv_init == "kaiming_normal_fan_out":
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        else:
            init.kaiming_uniform_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        init.ones_(module.weight)
        init.zeros_(module.bias)
        init.zeros_(module.running_mean)
        init.ones_(module.running_var)
    elif isinstance(module, nn.Linear):
        init.normal_(module.weight, std=0.01)
        if module.bias is not None:
            init.zeros_(module.bias)


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int) -> None:
    """Raises a ValueError naming the expected layout unless ``pixel_values`` is (B, num_channels, H, W)."""
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(f"pixel_values must be (B, {num_channels}, H, W), got {tuple(pixel_values.shape)}.")


def pad_to_multiple(pixel_values: torch.Tensor, divisor: int) -> torch.Tensor:
    """Pads H and W (bottom/right, replicate) up to multiples of ``divisor``; crop outputs back to the input size."""
    h, w = pixel_values.shape[-2:]
    pad_h, pad_w = (-h) % divisor, (-w) % divisor
    return F.pad(pixel_values, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else pixel_values


def weighted_segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: list[float] | torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """Class-weighted cross-entropy over pixels.

    Args:
        logits: (B, C, H, W) raw scores.
        labels: (B, H, W) int64 class indices (``ignore_index`` pixels excluded).
        class_weights: C weights.
        ignore_index: label value to ignore.

    Returns:
        Scalar loss (weighted mean over non-ignored pixels, as ``torch.nn.functional.cross_entropy``).
    """
    if labels.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"labels {tuple(labels.shape)} and logits {tuple(logits.shape)} differ in size.")
    weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits, labels.long(), weight=weight, ignore_index=ignore_index)
