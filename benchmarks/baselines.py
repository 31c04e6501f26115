"""Baselines the speed benchmark compares the pipeline with, and the tests check it against.

:func:`reference_gradcam` is Grad-CAM written the way common implementations (and the authors' code) compute it:
hooks and a full backward pass per class. The pipeline derives the same maps from the forward pass alone
(:func:`cxr_hub.saliency.gradcam_from_features`); this is the slow oracle it is checked against, and the benchmark's
baseline (b). It is not part of the package: nothing in ``cxr_hub`` needs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cxr_hub.saliency import class_indices, normalize_cams

__all__ = ["reference_gradcam"]


def _default_target_layer(model: nn.Module) -> nn.Module | None:
    backbone = getattr(model, "backbone", None)
    return getattr(backbone, "layer4", None)


def reference_gradcam(
    model: nn.Module,
    pixel_values: torch.Tensor,
    class_idx: int | Sequence[int] | torch.Tensor,
    normalize: bool = True,
    target_layer: nn.Module | None = None,
) -> torch.Tensor:
    """Textbook Grad-CAM (Selvaraju et al. 2017): forward hook, gradient hook, a full backward pass per class.

    The slow reference, written the way common Grad-CAM implementations (and the authors' code) work: a forward pass
    with autograd, the activations of ``target_layer`` captured by a forward hook and their gradient by a tensor
    hook, then ``backward()`` of the summed class logit through the whole network (parameter gradients included).
    Used by the tests (to check :func:`cxr_hub.saliency.gradcam_from_features`) and by the benchmark's baselines. The
    parameters'
    ``.grad`` are reset to None afterwards.

    Args:
        model: a classifier in eval mode whose call returns an object with ``logits`` (B, C), e.g.
            ``PatchClassifierForImageClassification``.
        pixel_values: (B, C_in, S, S) normalised input (one patch or a batch).
        class_idx: one class index, or a sequence of n indices.
        normalize: per-map max normalisation as in :func:`gradcam_from_features`.
        target_layer: module whose output is the last convolutional stage; defaults to ``model.backbone.layer4``
            (timm ResNet), else the output of ``model.forward_features`` is used.

    Returns:
        (B, h, w) maps for an int ``class_idx``, else (B, n, h, w), detached, dtype of the model's activations.
    """
    classes, single = class_indices(class_idx)
    layer = target_layer if target_layer is not None else _default_target_layer(model)
    acts: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> None:
        acts.append(tensor)
        tensor.register_hook(grads.append)

    maps = []
    with torch.enable_grad():
        x = pixel_values.detach()
        if layer is not None:
            handle = layer.register_forward_hook(lambda _m, _i, out: keep(out))
            try:
                logits = model(x).logits
            finally:
                handle.remove()
        else:
            features = model.forward_features(x)
            keep(features)
            logits = model.forward_head(features)
        try:
            for n, c in enumerate(classes):
                grads.clear()
                model.zero_grad(set_to_none=True)
                logits[:, c].sum().backward(retain_graph=n < len(classes) - 1)
                alpha = grads[-1].mean(dim=(2, 3), keepdim=True)
                maps.append(torch.relu((alpha * acts[-1]).sum(dim=1)).detach())
        finally:
            model.zero_grad(set_to_none=True)
    cams = torch.stack(maps, dim=1)
    if normalize:
        cams = normalize_cams(cams)
    return cams[:, 0] if single else cams
