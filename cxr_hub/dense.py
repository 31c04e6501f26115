"""Dense patch voting: every patch's logits and Grad-CAM read from one fully convolutional pass over the frame.

The patch classifier ends in global average pooling + a linear layer, so a patch's logits are
``W · mean(A over its h x w feature window) + b``, where A is the last convolutional stage. Run the network once over
the whole (lung-masked, normalised) classifier frame and the feature map holds every window at once: a patch whose
box starts on the feature grid reads its logits from an ``h x w`` average pool, and its Grad-CAM (``ReLU(W_c · A)``
over the window, the same backward-free formula as :func:`cxr_hub.saliency.gradcam_from_features`) from the same
map. K then costs nothing: one pass serves any number of patches.

It is an approximation of exact patch voting, not a re-implementation: in the whole-frame pass each window's features
also see the image just outside the patch (the network's receptive field) where a cropped patch sees zero padding,
and patch boxes are snapped to the feature grid (``cell`` frame pixels, 32 for 224 patches in a 1024 frame).
``CXRPipeline(voting="dense")`` exposes it as an experimental research hook only: with the shipped label4
classifier it gave the exact-voting label on 90.1 % of the 172 test films (155 / 172, every disagreement a Cohen film,
mostly viral/COVID-19 → normal), below the 95 % the project asks before shipping it as an option
(``benchmarks/dense_agreement.py``, ``docs/results/dense_agreement_label4.json``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["dense_geometry", "snap_boxes", "window_scores"]


def dense_geometry(frame_side: int, patch_size: int, input_size: int, stride: int = 32) -> tuple[int, float, int]:
    """Sizes of the dense pass for square patches of ``patch_size`` frame pixels seen at ``input_size``.

    Args:
        frame_side: side of the classifier frame (1024).
        patch_size: patch side in frame pixels.
        input_size: the network's input side (224); patches are resized by ``input_size / patch_size``.
        stride: the network's output stride (32 for ResNet-18).

    Returns:
        ``(side, cell, window)``: the side the frame is resized to (a multiple of ``stride``), the frame pixels per
        feature cell, and the feature window of one patch (``input_size / stride``, 7).

    Raises:
        ValueError: ``input_size`` not a multiple of ``stride``, or a patch larger than the frame.
    """
    if input_size % stride:
        raise ValueError(f"Dense voting needs input_size ({input_size}) to be a multiple of the stride ({stride}).")
    if not 1 <= patch_size <= frame_side:
        raise ValueError(f"patch_size must be between 1 and the frame side {frame_side}, got {patch_size}.")
    window = input_size // stride
    side = max(stride * window, stride * round(frame_side * input_size / (patch_size * stride)))
    cell = frame_side / (side // stride)
    return side, cell, window


def snap_boxes(
    boxes: np.ndarray, cell: float, grid: int, window: int, patch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Moves each box's top-left corner to the nearest feature-grid node that keeps its window inside the grid.

    Args:
        boxes: (K, 4) int ``(x0, y0, x1, y1)`` in the frame.
        cell: frame pixels per feature cell.
        grid: feature map side.
        window: patch window in feature cells.
        patch_size: patch side in frame pixels (the snapped boxes keep it).

    Returns:
        ``(snapped, origins)``: int64 (K, 4) boxes and int64 (K, 2) window origins ``(gx, gy)`` on the grid.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    origins = np.clip(np.rint(b[:, :2] / cell), 0, grid - window).astype(np.int64)
    frame_side = math.ceil(grid * cell - 1e-6)
    x0y0 = np.clip(np.rint(origins * cell), 0, frame_side - patch_size).astype(np.int64)
    return np.concatenate([x0y0, x0y0 + patch_size], axis=1), origins


def window_scores(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, origins: np.ndarray, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and un-normalised Grad-CAM maps of every patch window from one feature map.

    Args:
        features: (F, G, G) or (1, F, G, G) last convolutional stage of the whole frame.
        weight: (C, F) linear head weight.
        bias: (C,) linear head bias, or None.
        origins: (K, 2) int window origins ``(gx, gy)`` (see :func:`snap_boxes`).
        window: window side in feature cells.

    Returns:
        ``(logits, cams)``: float32 (K, C) logits, ``W · mean(window) + b``; float32 (K, C, window, window) maps
        ``ReLU(W_c · A) / window²``, the values :func:`cxr_hub.saliency.gradcam_from_features` gives a patch whose
        feature map is that window.
    """
    a = features.float()
    if a.ndim == 4:
        a = a[0]
    w = weight.detach().float().to(a.device)
    o = torch.as_tensor(np.asarray(origins, dtype=np.int64).reshape(-1, 2), device=a.device)
    pooled = F.avg_pool2d(a[None], window, stride=1)[0]  # (F, P, P): every window's mean
    logits_grid = torch.einsum("cf,fpq->cpq", w, pooled)
    logits = logits_grid[:, o[:, 1], o[:, 0]].T
    if bias is not None:
        logits = logits + bias.detach().float().to(a.device)
    cam_grid = torch.relu(torch.einsum("cf,fhw->chw", w, a)) / (window * window)
    steps = torch.arange(window, device=a.device)
    rows = (o[:, 1, None] + steps)[:, :, None]  # (K, w, 1)
    cols = (o[:, 0, None] + steps)[:, None, :]  # (K, 1, w)
    cams = cam_grid[:, rows, cols].permute(1, 0, 2, 3)  # (C, K, w, w) → (K, C, w, w)
    return logits.contiguous(), cams.contiguous()
