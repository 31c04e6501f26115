"""Patch sampling, box placement, cropping and majority voting (cxr_hub.patches): plain arrays, no network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr_hub import CXRInputError
from cxr_hub.patches import (
    boxes_from_centers,
    crop_patches,
    majority_vote,
    patch_center_region,
    sample_patch_boxes,
    sample_patch_centers,
)


def _two_lungs(h: int = 128, w: int = 128) -> np.ndarray:
    """Two diagonal blobs: rows of one and columns of the other do not intersect in lung."""
    mask = np.zeros((h, w), dtype=bool)
    mask[10:40, 10:40] = True
    mask[80:120, 85:120] = True
    return mask


def test_joint_centres_lie_in_the_lung():
    mask = _two_lungs()
    centers = sample_patch_centers(mask, 2000, np.random.default_rng(1))
    assert centers.shape == (2000, 2) and centers.dtype == np.int64
    assert mask[centers[:, 1], centers[:, 0]].all()
    # both lungs are sampled, roughly in proportion to their area
    in_first = (centers[:, 1] < 60).mean()
    assert in_first == pytest.approx(900 / (900 + 1400), abs=0.05)


@pytest.mark.parametrize("mode", ["joint", "stable"])
def test_uniform_modes_sample_both_lungs_in_proportion(mode):
    mask = _two_lungs()
    centers = sample_patch_centers(mask, 4000, np.random.default_rng(3), mode=mode)
    assert mask[centers[:, 1], centers[:, 0]].all()
    assert (centers[:, 1] < 60).mean() == pytest.approx(900 / (900 + 1400), abs=0.04)
    # uniform within a lung too: each quarter of the first lung gets about a quarter of its centres
    first = centers[centers[:, 1] < 60]
    quarters = np.bincount(((first[:, 1] - 10) // 15) * 2 + (first[:, 0] - 10) // 15, minlength=4) / len(first)
    np.testing.assert_allclose(quarters, 0.25, atol=0.05)


def test_stable_sampling_keeps_the_centres_when_the_mask_changes_slightly():
    """The point of mode="stable": a few boundary pixels more or less move only a few centres; "joint" moves all."""
    mask = _two_lungs()
    changed = mask.copy()
    changed[40, 10:40] = True  # one more row under the first lung (30 pixels of 2300)
    changed[80, 85:100] = False  # 15 pixels fewer on the second
    for mode, min_same in (("stable", 0.9), ("joint", None)):
        a = sample_patch_centers(mask, 200, 5, mode=mode)
        b = sample_patch_centers(changed, 200, 5, mode=mode)
        same = (a == b).all(axis=1).mean()
        if min_same is not None:
            # as sets: a centre dropped or added shifts the later ones by one position in the list
            kept = len({tuple(c) for c in a} & {tuple(c) for c in b}) / len({tuple(c) for c in a})
            assert kept >= min_same, (mode, kept)
        else:
            assert same < 0.1, (mode, same)


def test_stable_sampling_prefix_and_determinism():
    mask = _two_lungs()
    a = sample_patch_centers(mask, 50, 11, mode="stable")
    np.testing.assert_array_equal(a[:20], sample_patch_centers(mask, 20, 11, mode="stable"))
    np.testing.assert_array_equal(a, sample_patch_centers(mask, 50, np.random.default_rng(11), mode="stable"))
    assert not np.array_equal(a, sample_patch_centers(mask, 50, 12, mode="stable"))
    # more centres than one block of the stream yields
    many = sample_patch_centers(mask, 5000, 1, mode="stable")
    assert many.shape == (5000, 2) and mask[many[:, 1], many[:, 0]].all()


def test_stable_sampling_on_a_tiny_lung_falls_back_to_indexing():
    from cxr_hub.patches import STABLE_MIN_FRACTION

    mask = np.zeros((1024, 1024), dtype=bool)
    mask[500, 600] = True  # one pixel: far below STABLE_MIN_FRACTION of the frame
    assert mask.sum() < STABLE_MIN_FRACTION * mask.size
    centers = sample_patch_centers(mask, 7, 0, mode="stable")
    assert (centers == [600, 500]).all()


def test_independent_sampling_can_leave_the_lung():
    """The authors' row/column scheme puts centres outside the lung: the reason for joint sampling."""
    mask = _two_lungs()
    centers = sample_patch_centers(mask, 2000, np.random.default_rng(1), mode="independent")
    assert not mask[centers[:, 1], centers[:, 0]].all()
    with pytest.raises(ValueError, match="mode"):
        sample_patch_centers(mask, 5, 0, mode="rows")


def test_sampling_is_deterministic_per_seed():
    mask = _two_lungs()
    a = sample_patch_centers(mask, 50, np.random.default_rng(7))
    b = sample_patch_centers(mask, 50, 7)  # a seed works like a generator seeded with it
    c = sample_patch_centers(mask, 50, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_empty_mask_and_bad_k():
    with pytest.raises(CXRInputError, match="No lung"):
        sample_patch_centers(np.zeros((32, 32), bool), 5, 0)
    with pytest.raises(ValueError, match="k"):
        sample_patch_centers(_two_lungs(), 0, 0)
    with pytest.raises(ValueError, match="2-D"):
        sample_patch_centers(np.ones((2, 8, 8), bool), 3, 0)


@pytest.mark.parametrize("patch_size", [1, 31, 32, 64, 100])
def test_boxes_inside_frame_with_exact_size_for_border_lungs(patch_size):
    h, w = 100, 120
    mask = np.zeros((h, w), dtype=bool)
    # lung touching every border and corner
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    centers, boxes = sample_patch_boxes(mask, 500, patch_size, np.random.default_rng(3))
    assert boxes.shape == (500, 4) and boxes.dtype == np.int64
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] - boxes[:, 0] == patch_size).all() and (boxes[:, 3] - boxes[:, 1] == patch_size).all()
    # an interior centre keeps the patch centred; a border centre is shifted (never padded) but stays covered
    inside = (boxes[:, 0] <= centers[:, 0]) & (centers[:, 0] < boxes[:, 2])
    assert inside.all()


def test_box_placement_rules():
    boxes = boxes_from_centers(np.array([[50, 40], [0, 0], [99, 79], [5, 78]]), 20, (80, 100))
    np.testing.assert_array_equal(
        boxes,
        [[40, 30, 60, 50], [0, 0, 20, 20], [80, 60, 100, 80], [0, 60, 20, 80]],
    )
    with pytest.raises(ValueError, match="patch_size"):
        boxes_from_centers(np.array([[5, 5]]), 81, (80, 100))


def test_crop_patches_cuts_the_boxes():
    frame = torch.arange(64 * 80, dtype=torch.float32).reshape(64, 80)
    boxes = np.array([[0, 0, 16, 16], [64, 48, 80, 64], [10, 20, 26, 36]])
    patches = crop_patches(frame, boxes, 16)
    assert patches.shape == (3, 1, 16, 16)
    for p, (x0, y0, x1, y1) in zip(patches, boxes, strict=True):
        torch.testing.assert_close(p[0], frame[y0:y1, x0:x1])
    # numpy frames and (C, H, W) frames work too
    np_patches = crop_patches(frame.numpy(), boxes, 16)
    torch.testing.assert_close(np_patches, patches)
    assert crop_patches(torch.stack([frame, frame]), boxes, 16).shape == (3, 2, 16, 16)


def test_crop_patches_resizes_to_the_network_input():
    frame = torch.rand(64, 64)
    boxes = np.array([[0, 0, 32, 32], [8, 8, 40, 40]])
    out = crop_patches(frame, boxes, 16)
    assert out.shape == (2, 1, 16, 16)
    expected = F.interpolate(frame[None, None, 8:40, 8:40], size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(out[1:2], expected)
    # upsampling (a patch smaller than the input) and mixed box sizes
    mixed = crop_patches(frame, np.array([[0, 0, 8, 8], [0, 0, 32, 32]]), 16)
    assert mixed.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="inside"):
        crop_patches(frame, np.array([[50, 50, 70, 70]]), 16)


def test_majority_vote_counts_and_winner():
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    idx, counts = majority_vote(probs)
    assert idx == 0
    np.testing.assert_array_equal(counts, [2, 1, 0])
    assert counts.dtype == np.int64 and counts.sum() == 3


def test_vote_tie_break_by_mean_probability_then_lowest_index():
    # two votes each for class 0 and 1: class 1 has the higher mean probability
    probs = np.array([[0.51, 0.49, 0.0], [0.51, 0.49, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert majority_vote(probs)[0] == 1
    # equal votes and equal mean probabilities: the lowest index wins
    probs = np.array([[0.6, 0.4], [0.4, 0.6]])
    assert majority_vote(probs)[0] == 0
    # torch input, and a class with zero votes never wins a tie on mean probability
    probs = torch.tensor([[0.4, 0.0, 0.6], [0.4, 0.6, 0.0], [0.45, 0.0, 0.55]])
    idx, counts = majority_vote(probs)
    assert idx == 2 and counts.tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        majority_vote(np.zeros((0, 3)))


def test_patch_center_region_keeps_centres_deep_in_the_lung():
    mask = np.zeros((100, 120), dtype=bool)
    mask[10:90, 20:60] = True  # a 40 px wide lung
    assert patch_center_region(mask, 0) is not None and (patch_center_region(mask, 0) == mask).all()
    region = patch_center_region(mask, 10)
    assert region.any() and not (region & ~mask).any()
    ys, xs = np.nonzero(region)
    # more than 10 px (centre to centre) from the nearest background pixel (columns 19 and 60, rows 9 and 90)
    assert xs.min() == 30 and xs.max() == 49 and ys.min() == 20 and ys.max() == 79
    edge = np.zeros((50, 50), dtype=bool)
    edge[:, :30] = True  # touches the frame's edge: the edge counts as background
    assert np.nonzero(patch_center_region(edge, 5))[1].min() == 5  # 6 px from the column beyond the edge


def test_patch_center_region_falls_back_to_the_lung_when_nothing_is_that_deep():
    thin = np.zeros((60, 60), dtype=bool)
    thin[10:50, 28:32] = True  # 4 px wide: no pixel is 10 px deep
    np.testing.assert_array_equal(patch_center_region(thin, 10), thin)
    assert not patch_center_region(np.zeros((8, 8), dtype=bool), 3).any()
    with pytest.raises(ValueError, match="margin"):
        patch_center_region(thin, -1)
    with pytest.raises(ValueError, match="2-D"):
        patch_center_region(thin[None], 2)
