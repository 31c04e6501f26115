"""Grad-CAM without a backward pass, and the paper's probabilistic Grad-CAM (Oh, Park, Ye 2020, eq. 5).

Why no backward pass: the classifier's head is global average pooling + (dropout) + linear, so the logit of class
``c`` is ``y_c = sum_f W[c, f] * mean_ij A[f, i, j] + b_c`` for the last convolutional stage ``A`` (ResNet layer4,
shape (F, h, w)). Its gradient is ``dy_c / dA[f, i, j] = W[c, f] / (h * w)`` at every position, so Grad-CAM's
channel weights (the spatial mean of that gradient) are ``W[c, f] / (h * w)`` and

    cam_c = ReLU(sum_f W[c, f] * A[f]) / (h * w)

follows from the forward pass's features alone. Dropout is the identity in eval mode, where saliency is computed.
The textbook hooks-and-backward version, the tests' oracle and the speed benchmark's baseline, is
``benchmarks/baselines.py``'s ``reference_gradcam``.

Eq. (5): each patch's (per-patch normalised) Grad-CAM map, upsampled to the patch's crop size, is multiplied by the
patch's softmax probability of the class, pasted at its location in the frame, summed over patches and divided per
pixel by the number of patches covering that pixel. Pixels no patch covers are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "class_indices",
    "gradcam_from_features",
    "normalize_cams",
    "patch_coverage",
    "probabilistic_gradcam",
]

_PASTE_CHUNK = 64


def class_indices(class_idx: int | Sequence[int] | torch.Tensor) -> tuple[list[int], bool]:
    """Class indices as a list, plus whether a single int was given (then the class axis of the maps is dropped)."""
    if isinstance(class_idx, torch.Tensor):
        class_idx = class_idx.tolist()
    if isinstance(class_idx, (int, np.integer)):
        return [int(class_idx)], True
    return [int(c) for c in class_idx], False


def normalize_cams(cams: torch.Tensor) -> torch.Tensor:
    """Per-map max normalisation: ``cam / cam.max()`` over the last two axes, 0 where the max is 0.

    Args:
        cams: (..., h, w) non-negative maps (after ReLU).

    Returns:
        maps of the same shape in [0, 1]; each nonzero map has maximum 1.
    """
    peak = cams.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, cams / peak.clamp_min(torch.finfo(cams.dtype).tiny), torch.zeros_like(cams))


def gradcam_from_features(
    features: torch.Tensor,
    fc_weight: torch.Tensor,
    class_idx: int | Sequence[int] | torch.Tensor,
    normalize: bool = True,
) -> torch.Tensor:
    """Grad-CAM of a global-average-pooling + linear head, from the forward pass's features (no autograd).

    Vectorised over patches and classes: one ``einsum``.

    Args:
        features: (K, F, h, w) last convolutional stage (``model.forward_features``), any float dtype.
        fc_weight: (C, F) weight of the linear head (``model.classifier.weight``).
        class_idx: one class index, or a sequence of n indices.
        normalize: divide each map by its maximum (per patch and class; 0 if the maximum is 0), as the authors did.
            False keeps the raw ``ReLU(sum_f alpha_f A_f)`` values, exactly Grad-CAM's scale.

    Returns:
        (K, h, w) maps for an int ``class_idx``, else (K, n, h, w); non-negative, in [0, 1] when normalised.
        Dtype of ``features`` promoted with ``fc_weight``; device of ``features``.
    """
    classes, single = class_indices(class_idx)
    if features.ndim != 4:
        raise ValueError(f"features must be (K, F, h, w), got shape {tuple(features.shape)}.")
    if fc_weight.ndim != 2 or fc_weight.shape[1] != features.shape[1]:
        raise ValueError(f"fc_weight must be (C, {features.shape[1]}), got shape {tuple(fc_weight.shape)}.")
    dtype = torch.promote_types(features.dtype, fc_weight.dtype)
    w = fc_weight.detach().to(device=features.device, dtype=dtype)[classes]
    h, wd = features.shape[-2:]
    cams = torch.relu(torch.einsum("cf,kfhw->kchw", w, features.to(dtype)) / (h * wd))
    if normalize:
        cams = normalize_cams(cams)
    return cams[:, 0] if single else cams


def patch_coverage(boxes: np.ndarray, frame_shape: Sequence[int]) -> np.ndarray:
    """Number of boxes covering each pixel, by a 2-D difference array (O(K + H*W), no per-box loop over pixels).

    Args:
        boxes: (K, 4) integer ``(x0, y0, x1, y1)`` edges inside the frame.
        frame_shape: (H, W).

    Returns:
        int32 (H, W) counts.
    """
    h, w = int(frame_shape[0]), int(frame_shape[1])
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    diff = np.zeros((h + 1, w + 1), dtype=np.int32)
    np.add.at(diff, (b[:, 1], b[:, 0]), 1)
    np.add.at(diff, (b[:, 1], b[:, 2]), -1)
    np.add.at(diff, (b[:, 3], b[:, 0]), -1)
    np.add.at(diff, (b[:, 3], b[:, 2]), 1)
    return diff.cumsum(0).cumsum(1)[:h, :w]


def probabilistic_gradcam(
    cams: np.ndarray | torch.Tensor,
    probs: np.ndarray | torch.Tensor,
    boxes_1024: np.ndarray,
    frame_shape: Sequence[int],
) -> np.ndarray:
    """The paper's probabilistic Grad-CAM (eq. 5) in the classifier's frame.

    ``out(p) = sum_k prob_k * up_k(cam_k)(p) / n(p)`` over the patches k whose box contains pixel p, where
    ``up_k`` upsamples the (h, w) map bilinearly (``align_corners=False``) to the box's size and ``n(p)`` is the
    number of boxes covering p; ``out(p) = 0`` where ``n(p) = 0``.

    Args:
        cams: (K, h, w) maps of one class, or (K, n, h, w) for n classes (e.g. from :func:`gradcam_from_features`).
        probs: (K,) softmax probability of that class for each patch, or (K, n).
        boxes_1024: (K, 4) integer ``(x0, y0, x1, y1)`` patch edges in the frame (the 1024 frame in the pipeline).
        frame_shape: (H, W) of that frame.

    Returns:
        float32 (H, W), or (n, H, W) for multi-class input (n may be 0: no class, no map). In [0, 1] when the cams are
        normalised.
    """
    c = torch.as_tensor(cams).float()
    device = c.device
    p = torch.as_tensor(probs).float().to(device)
    single = c.ndim == 3
    if single:
        c, p = c[:, None], p[:, None]
    b = np.asarray(boxes_1024, dtype=np.int64).reshape(-1, 4)
    if c.ndim != 4 or p.shape != c.shape[:2] or b.shape[0] != c.shape[0]:
        raise ValueError(
            f"Expected cams (K, [n,] h, w), probs (K, [n]) and boxes (K, 4); got {tuple(c.shape)}, "
            f"{tuple(p.shape)}, {b.shape}."
        )
    h, w = int(frame_shape[0]), int(frame_shape[1])
    if c.shape[1] == 0:  # no class selected: nothing to paste (interpolate refuses zero channels)
        return np.zeros((0, h, w), dtype=np.float32)
    # On the CPU the paste runs in numpy: hundreds of small in-place adds are single-threaded there, while torch
    # would split each over OpenMP threads, whose barriers cost more than the adds (50x on a busy 2-core machine).
    on_cpu = device.type == "cpu"
    acc: np.ndarray | torch.Tensor
    if on_cpu:
        acc = np.zeros((c.shape[1], h, w), dtype=np.float32)
    else:
        acc = torch.zeros((c.shape[1], h, w), dtype=torch.float32, device=device)
    weighted = c * p[:, :, None, None]
    sizes = b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]
    for bh, bw in sorted(set(zip(sizes[0].tolist(), sizes[1].tolist(), strict=True))):
        same = np.flatnonzero((sizes[0] == bh) & (sizes[1] == bw))
        # chunks bound the memory of the upsampled maps (K x n x 224 x 224 floats at once would be ~80 MB/class)
        for start in range(0, same.size, _PASTE_CHUNK):
            idx = same[start : start + _PASTE_CHUNK]
            up = F.interpolate(weighted[idx], size=(bh, bw), mode="bilinear", align_corners=False)
            if on_cpu:
                up = up.numpy()
            for j, i in enumerate(idx.tolist()):
                x0, y0, x1, y1 = b[i].tolist()
                acc[:, y0:y1, x0:x1] += up[j]
    coverage = patch_coverage(b, (h, w))
    if on_cpu:
        out = np.divide(acc, coverage, out=np.zeros_like(acc), where=coverage > 0)
    else:
        cov_t = torch.from_numpy(coverage).to(device)
        out = torch.where(cov_t > 0, acc / cov_t.clamp_min(1), torch.zeros_like(acc)).cpu().numpy()
    out = out.astype(np.float32, copy=False)
    return out[0] if single else out
