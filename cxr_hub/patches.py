"""Random lung-centred patches and majority voting (Oh, Park, Ye 2020, section II-C), as plain array functions.

One code path for training and inference: the training script draws its patches with the same sampler function and
cropper the pipeline uses, so a patch seen at test time is distributed exactly like a training patch (training draws
with ``mode="joint"``, the pipeline with ``mode="stable"``: the same distribution from two different streams).

Rules (each deliberate, each a difference from or a pinning-down of the authors' code):

* **Joint sampling.** Patch centres are drawn jointly and uniformly (with replacement) from the lung pixels of the
  mask in the classifier's frame (1024 x 1024). The authors' code drew the row and the column independently, which
  can put a centre outside the lung (e.g. between the lungs); ``mode="independent"`` reproduces that for ablations.
* **Stable draws** (``mode="stable"``, the pipeline's default). The same joint uniform distribution, drawn by
  rejection from a stream of frame positions fixed by the seed: a centre is the next position of the stream that lies
  in the lung. A mask that differs from another by a few boundary pixels then keeps almost every centre (only the
  positions the change touches move), whereas ``mode="joint"`` indexes the list of lung pixels, so one added pixel
  shifts the index of every later pixel and the whole draw changes, like a new seed. This makes the vote stable
  under tiny segmentation changes (reduced-precision segmentation, a re-encoded upload). Training uses ``"joint"``
  (same distribution; the shipped models were trained with it).
* **Centre margin** (``PatchClassifierConfig.patch_center_margin``, default 0: the paper). A classifier trained with
  a margin gets its centres from :func:`patch_center_region`, the lung pixels deeper than that share of the patch
  side, so its patches show lung tissue more than the lung's outline against the masked background.
* **Border shift, no padding.** A patch whose centred box would leave the frame is shifted back inside it, so every
  patch has exactly ``patch_size`` pixels of real image on each side and no zero padding.
* **Resize to the network input.** A patch cut at a size other than the network's input is resized (bilinear,
  anti-aliased when shrinking) to it.
* **Deterministic vote.** The majority class wins; ties go to the highest mean probability, then the lowest index.

Coordinates: centres are integer pixel *centres* ``(x, y)``; boxes are ``(x0, y0, x1, y1)`` pixel *edges*
(half-open, ``x1 - x0 == patch_size``), as in :func:`cxr_hub.map_boxes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .models.image_processing_cxr import CXRInputError

SAMPLING_MODES = ("stable", "joint", "independent")
#: The pipeline's and the command line's sampler (training draws with "joint", see the module docstring).
DEFAULT_SAMPLING = "stable"

#: Frame positions drawn per step of the stable sampler. Fixed, so the stream a seed produces never depends on the
#: mask (a block size chosen from the lung area would make the draw mask-dependent again).
STABLE_BLOCK = 8192

#: Below this lung share of the frame, the stable sampler's rejection would need too many draws (about k / share);
#: it then indexes the lung pixels like ``mode="joint"``. A real segmentation's lungs are far larger (the pipeline
#: warns below 5 % of the image), so only hand-made masks reach it.
STABLE_MIN_FRACTION = 1e-5

__all__ = [
    "DEFAULT_SAMPLING",
    "SAMPLING_MODES",
    "boxes_from_centers",
    "crop_patches",
    "majority_vote",
    "patch_center_region",
    "sample_patch_boxes",
    "sample_patch_centers",
]


def patch_center_region(mask: np.ndarray, margin: int) -> np.ndarray:
    """The lung pixels at least ``margin`` pixels (Euclidean) from the nearest non-lung pixel: where centres may lie.

    A patch centred on the lung's edge is half background (gray level 0 in a lung-masked frame), and the outline it
    shows, sharp against the zeros, differs between collections (AP versus PA films, one segmentation's style): a
    cue of where a film comes from rather than of the tissue. Drawing centres deeper in the lung keeps patches
    mostly on lung tissue. The frame border counts as lung-free too.

    Args:
        mask: (H, W) boolean or integer array; nonzero = lung.
        margin: distance in pixels of the mask's frame, >= 0; 0 returns the lung mask itself.

    Returns:
        bool (H, W). When no lung pixel is that deep (a small or thin lung), the whole lung mask, so that every film
        with lungs still gets patches; empty only when the mask is.

    Raises:
        ValueError: a negative margin or a mask that is not 2-D.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}.")
    if int(margin) < 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}.")
    lung = m.astype(bool, copy=False)
    if int(margin) == 0:
        return lung
    # pad with background so that the frame's edge is an edge of the lung as well
    padded = np.pad(lung, 1).astype(np.uint8)
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    region = depth > int(margin)
    return region if region.any() else lung


def sample_patch_centers(
    mask: np.ndarray,
    k: int,
    rng: np.random.Generator | int | None = None,
    mode: str = "joint",
) -> np.ndarray:
    """Draws ``k`` patch centres uniformly from the foreground (lung) pixels of a mask.

    Args:
        mask: (H, W) boolean or integer array; nonzero = lung. Normally the lung mask in the classifier's frame.
        k: number of centres (>= 1); drawn with replacement, so ``k`` may exceed the number of lung pixels.
        rng: a numpy Generator, or a seed for ``np.random.default_rng``. Same generator state → same centres.
        mode: "joint" (default): a uniformly random lung *pixel*, drawn by index into the list of lung pixels, so
            every centre lies in the lung. "stable": the same distribution, drawn by rejection from a
            mask-independent stream of frame positions (blocks of :data:`STABLE_BLOCK`), so masks that differ in a
            few pixels give almost the same centres; the first ``k`` centres of a seed do not depend on ``k``
            (as with "joint").
            "independent": the authors' scheme, row and column drawn independently from the lung pixels' rows and
            columns; a centre can then fall outside the lung. Only for reproducing the original code.

    Returns:
        int64 (k, 2) array of ``(x, y)`` pixel centres in the mask's frame.

    Raises:
        CXRInputError: the mask has no foreground pixel (nothing to sample from).
        ValueError: ``k < 1``, a mask that is not 2-D, or an unknown mode.
    """
    if int(k) < 1:
        raise ValueError(f"k (number of patches) must be at least 1, got {k}.")
    if mode not in SAMPLING_MODES:
        raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}.")
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}.")
    n_lung = int(np.count_nonzero(m))
    if n_lung == 0:
        raise CXRInputError(
            "No lung found in the mask: there is nowhere to place a patch. Is this a frontal chest X-ray?"
        )
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if mode == "stable" and n_lung >= STABLE_MIN_FRACTION * m.size:
        # needs no list of lung pixels: this is the pipeline's per-analysis path
        return _stable_centers(m.astype(bool, copy=False), int(k), gen)
    ys, xs = np.nonzero(m)
    if mode in ("joint", "stable"):
        idx = gen.integers(0, ys.size, size=int(k))
        return np.stack([xs[idx], ys[idx]], axis=1).astype(np.int64)
    # independent marginals: the row of one lung pixel and the column of another
    iy = gen.integers(0, ys.size, size=int(k))
    ix = gen.integers(0, xs.size, size=int(k))
    return np.stack([xs[ix], ys[iy]], axis=1).astype(np.int64)


def _stable_centers(mask: np.ndarray, k: int, gen: np.random.Generator) -> np.ndarray:
    """The first ``k`` positions of the generator's stream of frame positions that lie in ``mask`` (see above)."""
    flat = mask.reshape(-1)
    width = mask.shape[1]
    accepted: list[np.ndarray] = []
    count = 0
    while count < k:
        candidates = gen.integers(0, flat.size, size=STABLE_BLOCK)
        hits = candidates[flat[candidates]]
        accepted.append(hits)
        count += hits.size
    idx = np.concatenate(accepted)[:k]
    return np.stack([idx % width, idx // width], axis=1).astype(np.int64)


def boxes_from_centers(centers: np.ndarray, patch_size: int, frame_shape: Sequence[int]) -> np.ndarray:
    """Square boxes of side ``patch_size`` around centres, shifted (never padded) to lie inside the frame.

    The box of centre ``c`` starts at ``c - patch_size // 2``, so for an even size the centre pixel is the first of
    the two middle pixels. A box that would leave the frame is moved back inside by the overshoot.

    Args:
        centers: (K, 2) integer ``(x, y)`` pixel centres.
        patch_size: box side in pixels, at most the frame's shorter side.
        frame_shape: (H, W) of the frame.

    Returns:
        int64 (K, 4) ``(x0, y0, x1, y1)`` edges with ``0 <= x0``, ``x1 <= W``, ``x1 - x0 == y1 - y0 == patch_size``.

    Raises:
        ValueError: ``patch_size`` is not positive or exceeds the frame.
    """
    h, w = int(frame_shape[0]), int(frame_shape[1])
    p = int(patch_size)
    if p < 1 or p > min(h, w):
        raise ValueError(f"patch_size must be between 1 and the frame's shorter side {min(h, w)}, got {patch_size}.")
    c = np.asarray(centers, dtype=np.int64).reshape(-1, 2)
    x0 = np.clip(c[:, 0] - p // 2, 0, w - p)
    y0 = np.clip(c[:, 1] - p // 2, 0, h - p)
    return np.stack([x0, y0, x0 + p, y0 + p], axis=1)


def sample_patch_boxes(
    mask: np.ndarray,
    k: int,
    patch_size: int,
    rng: np.random.Generator | int | None = None,
    mode: str = "joint",
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_patch_centers` followed by :func:`boxes_from_centers` in the mask's frame.

    Returns:
        ``(centers, boxes)``: int64 (k, 2) centres and int64 (k, 4) boxes.
    """
    centers = sample_patch_centers(mask, k, rng, mode=mode)
    return centers, boxes_from_centers(centers, patch_size, np.asarray(mask).shape)


def crop_patches(frame: np.ndarray | torch.Tensor, boxes: np.ndarray, out_size: int) -> torch.Tensor:
    """Cuts boxes out of a frame and resizes them to the network's input size.

    Crops whose size differs from ``out_size`` are resized bilinearly (``align_corners=False``, anti-aliased when
    shrinking): the patch keeps its field of view and the network sees its usual input size.

    Args:
        frame: (H, W) or (C, H, W) array or tensor, e.g. the normalised, lung-masked 1024 frame. A tensor stays on
            its device.
        boxes: (K, 4) integer ``(x0, y0, x1, y1)`` edges inside the frame (see :func:`boxes_from_centers`).
        out_size: side of the output patches.

    Returns:
        float tensor (K, C, out_size, out_size) on the frame's device (C = 1 for a 2-D frame), frame dtype.

    Raises:
        ValueError: a box outside the frame or empty.
    """
    t = torch.as_tensor(frame)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"frame must be (H, W) or (C, H, W), got shape {tuple(t.shape)}.")
    if not t.is_floating_point():
        t = t.float()
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    h, w = t.shape[-2:]
    if b.size and (
        (b[:, 0] < 0).any()
        or (b[:, 1] < 0).any()
        or (b[:, 2] > w).any()
        or (b[:, 3] > h).any()
        or (b[:, 2] <= b[:, 0]).any()
        or (b[:, 3] <= b[:, 1]).any()
    ):
        raise ValueError(f"boxes must be non-empty and lie inside the ({h}, {w}) frame.")
    out = int(out_size)
    if b.shape[0] == 0:
        return t.new_zeros((0, t.shape[0], out, out))
    sizes = {(int(y1 - y0), int(x1 - x0)) for x0, y0, x1, y1 in b}
    if len(sizes) == 1:
        crops = torch.stack([t[:, y0:y1, x0:x1] for x0, y0, x1, y1 in b.tolist()])
        return _resize_batch(crops, out)
    return torch.cat([_resize_batch(t[None, :, y0:y1, x0:x1], out) for x0, y0, x1, y1 in b.tolist()])


def _resize_batch(crops: torch.Tensor, out: int) -> torch.Tensor:
    """(N, C, h, w) → (N, C, out, out); a no-op when the size already matches."""
    h, w = crops.shape[-2:]
    if (h, w) == (out, out):
        return crops
    shrinking = h * w > out * out
    return F.interpolate(crops, size=(out, out), mode="bilinear", align_corners=False, antialias=shrinking)


def majority_vote(probs: np.ndarray | torch.Tensor) -> tuple[int, np.ndarray]:
    """The paper's majority vote over patches, with a deterministic tie-break.

    Each patch votes for its argmax class (equal probabilities within a patch: the lowest index). The class with most
    votes wins; among tied classes the one with the highest mean probability over all patches wins; if that ties
    too, the lowest class index.

    Args:
        probs: (K, C) per-patch class probabilities (softmax), K >= 1.

    Returns:
        ``(index, counts)``: the winning class index and int64 (C,) vote counts (summing to K).
    """
    p = probs.detach().cpu().double().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"probs must be (K, C) with K, C >= 1, got shape {p.shape}.")
    counts = np.bincount(p.argmax(axis=1), minlength=p.shape[1]).astype(np.int64)
    mean = p.mean(axis=0)
    tied = np.flatnonzero(counts == counts.max())
    # argmax returns the first maximum, i.e. the lowest index among classes with equal mean probability
    winner = int(tied[np.argmax(mean[tied])])
    return winner, counts
