"""The paper's preprocessing: hand-computed examples, ranges, image/mask resizing and frame mapping."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_hub import CXRImageProcessor, CXRInputError
from cxr_hub.preprocessing import (
    gamma_correct,
    histogram_equalize,
    map_boxes,
    map_points,
    preprocess_cxr,
    resize_image,
    resize_image_and_mask,
    resize_label_map,
    validate_image_array,
)


def tile(block: np.ndarray, reps: int = 32) -> np.ndarray:
    """Repeats a small pattern so the image passes the 64-pixel minimum without changing its histogram shape."""
    return np.kron(block, np.ones((reps, reps), dtype=block.dtype))


def test_histogram_equalisation_hand_computed():
    # values 10, 20, 30, 40 with counts 1, 1, 1, 1 (each a 32x32 tile): cdf = 1,2,3,4 (x1024), cdf_min = 1
    img = tile(np.array([[10, 20], [30, 40]], dtype=np.uint8))
    out = histogram_equalize(img)
    assert out.dtype == np.float32
    # 255 * (cdf - cdf_min) / (N - cdf_min) with cdf in tiles: (0, 1, 2, 3) / 3 -> 0, 85, 170, 255
    n = 4 * 1024
    expected = {10: 0.0, 20: 255 * (2048 - 1024) / (n - 1024), 30: 255 * (3072 - 1024) / (n - 1024), 40: 255.0}
    for value, eq in expected.items():
        np.testing.assert_allclose(out[img == value], eq, rtol=1e-6)


def test_histogram_equalisation_uneven_counts_and_16_bit():
    block = np.array([[0, 0, 0], [1000, 1000, 65535], [65535, 65535, 65535]], dtype=np.uint16)
    img = tile(block, 24)
    out = histogram_equalize(img)
    t = 24 * 24
    n = 9 * t
    # cdf: 0 -> 3t, 1000 -> 5t, 65535 -> 9t; cdf_min = 3t
    np.testing.assert_allclose(out[img == 0], 0.0)
    np.testing.assert_allclose(out[img == 1000], 255 * (5 * t - 3 * t) / (n - 3 * t), rtol=1e-6)
    np.testing.assert_allclose(out[img == 65535], 255.0)


def test_gamma_hand_computed():
    x = np.array([[0.0, 63.75, 255.0]], dtype=np.float32)
    np.testing.assert_allclose(gamma_correct(x, 0.5), [[0.0, 127.5, 255.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        gamma_correct(x, 0.0)


def test_preprocess_is_equalise_then_gamma(cxr_image):
    out = preprocess_cxr(cxr_image)
    assert out.dtype == np.float32 and out.shape == cxr_image.shape
    assert out.min() == 0.0 and out.max() == pytest.approx(255.0)
    np.testing.assert_allclose(out, gamma_correct(histogram_equalize(cxr_image), 0.5), rtol=1e-6)
    # gamma 0.5 brightens: the mean goes up against equalisation alone
    assert out.mean() > histogram_equalize(cxr_image).mean()


def test_preprocess_is_monotonic(cxr_image):
    out = preprocess_cxr(cxr_image)
    order = np.argsort(cxr_image.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)


def test_preprocess_without_equalisation_scales_min_max(cxr_image):
    out = preprocess_cxr(cxr_image, equalize=False, gamma=None)
    lo, hi = cxr_image.min(), cxr_image.max()
    np.testing.assert_allclose(out, (cxr_image.astype(np.float32) - lo) * 255 / (hi - lo), rtol=1e-5)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((100, 100)), "constant"),
        (np.ones((10, 200)), "at least 64"),
        (np.ones((80, 80, 3)), "2-D gray"),
        (np.ones((2, 80, 80, 1)), "2-D gray"),
        (np.full((80, 80), np.nan), "NaN"),
        (np.array([["a"]]), "numeric"),
    ],
)
def test_bad_arrays_raise_cxr_input_error(bad, match):
    with pytest.raises(CXRInputError, match=match):
        validate_image_array(bad)


def test_resize_image_and_mask_nearest_keeps_labels(rng):
    img = rng.random((300, 200)).astype(np.float32)
    mask = rng.integers(0, 4, (300, 200)).astype(np.uint8)
    small_img, small_mask = resize_image_and_mask(img, mask, 256)
    assert small_img.shape == (256, 256) and small_mask.shape == (256, 256)
    assert set(np.unique(small_mask)) <= {0, 1, 2, 3}
    assert small_mask.dtype == np.uint8
    back = resize_label_map(small_mask, (300, 200))
    assert back.shape == (300, 200)
    boolean = resize_label_map(mask > 1, 64)
    assert boolean.dtype == bool
    with pytest.raises(ValueError, match="differ"):
        resize_image_and_mask(img, mask[:10], 64)


def test_resize_image_range_preserved(rng):
    img = rng.random((512, 400)).astype(np.float32) * 255
    for size in (256, (1024, 1024)):
        out = resize_image(img, size)
        assert out.min() >= img.min() - 1e-3 and out.max() <= img.max() + 1e-3


def test_frame_mapping_round_trip():
    orig = (900, 700)
    boxes_1024 = np.array([[100, 200, 324, 424], [0, 0, 1024, 1024]], dtype=float)
    in_orig = map_boxes(boxes_1024, (1024, 1024), orig)
    np.testing.assert_allclose(in_orig[1], [0, 0, 700, 900])
    np.testing.assert_allclose(map_boxes(in_orig, orig, (1024, 1024)), boxes_1024)
    # pixel centres: the centre of the first pixel maps to the centre of the first block of pixels
    np.testing.assert_allclose(map_points([[0, 0]], (256, 256), (1024, 1024)), [[1.5, 1.5]])
    pts = np.array([[10.0, 20.0], [255.0, 0.0]])
    np.testing.assert_allclose(map_points(map_points(pts, (256, 256), orig), orig, (256, 256)), pts)


def test_image_processor_shapes_and_normalisation(cxr_image):
    proc = CXRImageProcessor(size=64, image_mean=0.5, image_std=0.5)
    out = proc(cxr_image, return_tensors="np")
    assert out["pixel_values"].shape == (1, 1, 64, 64)
    assert out["pixel_values"].dtype == np.float32
    assert out["pixel_values"].min() >= -1.0 - 1e-6 and out["pixel_values"].max() <= 1.0 + 1e-6
    assert out["original_sizes"].tolist() == [list(cxr_image.shape)]
    expected = (resize_image(preprocess_cxr(cxr_image), 64) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(out["pixel_values"][0, 0], expected, atol=1e-6)
    batch = proc([cxr_image, cxr_image.T.copy()], return_tensors="pt")
    assert tuple(batch["pixel_values"].shape) == (2, 1, 64, 64)


def test_image_processor_masks_outside_to_zero_gray(cxr_image):
    mask = np.zeros(cxr_image.shape, dtype=np.uint8)
    mask[:, : cxr_image.shape[1] // 2] = 2
    proc = CXRImageProcessor(size=64, image_mean=0.0, image_std=1.0)
    out = proc(cxr_image, masks=mask, return_tensors="np")["pixel_values"][0, 0]
    assert np.all(out[:, 33:] == 0.0) and out[:, :31].max() > 0
    with pytest.raises(CXRInputError, match="Mask shape"):
        proc.preprocess_one(cxr_image, mask[:5])


def test_image_processor_save_load_round_trip(tmp_path):
    from transformers import AutoImageProcessor

    proc = CXRImageProcessor(size=128, gamma=0.7, image_mean=0.4, image_std=0.2)
    proc.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "CXRImageProcessor"
    assert (loaded.size, loaded.gamma, loaded.image_mean, loaded.image_std) == (128, 0.7, 0.4, 0.2)


def test_post_process_semantic_segmentation_sizes():
    import torch

    proc = CXRImageProcessor(size=64)
    logits = torch.zeros(2, 4, 64, 64)
    logits[:, 2, :, :32] = 5.0
    logits[:, 3, :, 32:] = 5.0
    maps = proc.post_process_semantic_segmentation(logits, target_sizes=[(100, 80), (64, 64)])
    assert maps[0].shape == (100, 80) and maps[1].shape == (64, 64)
    assert set(np.unique(maps[0])) == {2, 3}
