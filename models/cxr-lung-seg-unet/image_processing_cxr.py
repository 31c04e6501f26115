"""The paper's chest X-ray preprocessing (Oh, Park, Ye 2020, section II-A), once, for training and inference.

This module ships next to the weights (``trust_remote_code``), so it imports nothing from ``cxr_hub``: only numpy,
OpenCV and transformers.

Steps, in the paper's order:
    1. cast to float32;
    2. histogram equalisation with output gray levels in [0, 255];
    3. gamma correction with gamma = 0.5 (``255 * (x / 255) ** gamma``, MATLAB ``imadjust`` convention);
    4. resize (256 x 256 for segmentation, 1024 x 1024 for the classifiers' frame).

Coordinates: boxes are ``(x0, y0, x1, y1)`` pixel *edges* (half-open, ``x1 - x0`` is the width), points are pixel
*centres*. ``map_boxes`` / ``map_points`` convert between any two frames of the same image (original, 256, 1024).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

MIN_SIDE = 64
MAX_PIXELS = 60_000_000


class CXRInputError(ValueError):
    """An input image that cxr-hub cannot analyse; the message says why and what to do."""


def validate_image_array(image: Any) -> np.ndarray:
    """Checks that ``image`` is a usable 2-D gray image and returns it as float32.

    Args:
        image: array-like of shape (H, W), any real dtype.

    Returns:
        float32 array (H, W), a copy when a cast was needed.

    Raises:
        CXRInputError: wrong dimensionality, too small/large, non-finite or constant values.
    """
    try:
        arr = np.asarray(image)
    except Exception as exc:  # arbitrary objects: anything np.asarray rejects is bad input
        raise CXRInputError(f"Could not read the input as an array ({type(image).__name__}).") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise CXRInputError(f"Expected a numeric image array, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise CXRInputError("Expected a real-valued image, got complex numbers.")
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        raise CXRInputError(
            f"Expected a 2-D gray image, got shape {arr.shape}. Convert colour images with cxr_hub.load_image(), "
            "which turns RGB/RGBA into gray."
        )
    if arr.ndim != 2:
        raise CXRInputError(f"Expected a 2-D gray image (height, width), got an array with shape {arr.shape}.")
    h, w = arr.shape
    if min(h, w) < MIN_SIDE:
        raise CXRInputError(
            f"Image is {w}x{h} pixels; a chest X-ray needs at least {MIN_SIDE} pixels on each side. "
            "Upload the full-resolution film, not a thumbnail."
        )
    if h * w > MAX_PIXELS:
        raise CXRInputError(
            f"Image is {w}x{h} = {h * w / 1e6:.1f} megapixels, above the {MAX_PIXELS / 1e6:.0f} MP limit "
            "(a guard against decompression bombs). Downscale it first."
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise CXRInputError("Image contains NaN or infinite values; fix or re-export the image.")
    if float(arr.max()) == float(arr.min()):
        raise CXRInputError("Image is constant (every pixel has the same value): there is nothing to analyse.")
    return arr


def histogram_equalize(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of a gray image of any bit depth, output in [0, 255].

    Each distinct input value ``v`` maps to ``255 * (cdf(v) - cdf_min) / (N - cdf_min)`` (the classic formula, as in
    OpenCV's ``equalizeHist``), computed on the exact values rather than 256 bins so 16-bit and float images lose
    nothing. The result is not rounded: the paper casts to float32 first.

    Args:
        image: (H, W) real array, not constant.

    Returns:
        float32 (H, W) in [0, 255]; the darkest value maps to 0, the brightest to 255.
    """
    arr = validate_image_array(image)
    _, inverse, counts = np.unique(arr.ravel(), return_inverse=True, return_counts=True)
    cdf = np.cumsum(counts, dtype=np.float64)
    cdf_min, n = cdf[0], cdf[-1]
    lut = (cdf - cdf_min) * (255.0 / (n - cdf_min))
    return lut[inverse].reshape(arr.shape).astype(np.float32)


def gamma_correct(image: np.ndarray, gamma: float = 0.5) -> np.ndarray:
    """Gamma correction on [0, 255] gray levels: ``255 * (x / 255) ** gamma``.

    Args:
        image: (H, W) float array in [0, 255].
        gamma: exponent; the paper uses 0.5 (brightens dark lung fields).

    Returns:
        float32 (H, W) in [0, 255].
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}.")
    x = np.clip(np.asarray(image, dtype=np.float32), 0.0, 255.0) / 255.0
    return (np.power(x, np.float32(gamma)) * 255.0).astype(np.float32)


def preprocess_cxr(image: np.ndarray, *, equalize: bool = True, gamma: float | None = 0.5) -> np.ndarray:
    """The paper's intensity preprocessing at the original resolution (float32 → histeq → gamma).

    Args:
        image: (H, W) gray image, any real dtype.
        equalize: apply histogram equalisation (False: min-max scale to [0, 255] instead, for ablations).
        gamma: gamma exponent, or None to skip gamma correction.

    Returns:
        float32 (H, W) in [0, 255].
    """
    arr = validate_image_array(image)
    if equalize:
        out = histogram_equalize(arr)
    else:
        lo, hi = float(arr.min()), float(arr.max())
        out = ((arr - lo) * (255.0 / (hi - lo))).astype(np.float32)
    if gamma is not None and gamma != 1.0:
        out = gamma_correct(out, gamma)
    return out


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def resize_image(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Resizes an intensity image: area averaging when shrinking (no aliasing), bilinear when enlarging.

    Args:
        image: (H, W) float array.
        size: target side (square) or (height, width).

    Returns:
        float32 (h, w).
    """
    h, w = _size_hw(size)
    src = np.asarray(image, dtype=np.float32)
    if src.shape == (h, w):
        return src.copy()
    shrinking = h * w < src.shape[0] * src.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(src, (w, h), interpolation=interp).astype(np.float32)


def resize_label_map(label_map: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Resizes a label map (or boolean mask) with nearest-neighbour so no new labels appear.

    Args:
        label_map: (H, W) integer or boolean array.
        size: target side (square) or (height, width).

    Returns:
        (h, w) array of the input dtype.
    """
    h, w = _size_hw(size)
    lab = np.asarray(label_map)
    if lab.shape == (h, w):
        return lab.copy()
    src = lab.astype(np.uint8) if lab.dtype == bool else lab
    if src.dtype not in (np.uint8, np.uint16, np.int16, np.int32, np.float32):
        src = src.astype(np.int32)
    out = cv2.resize(src, (w, h), interpolation=cv2.INTER_NEAREST)
    return out.astype(lab.dtype)


def resize_image_and_mask(
    image: np.ndarray, mask: np.ndarray, size: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resizes an image and its label map together (interpolation for the image, nearest for the labels)."""
    if np.asarray(image).shape[:2] != np.asarray(mask).shape[:2]:
        raise ValueError(f"Image {np.asarray(image).shape} and mask {np.asarray(mask).shape} differ in size.")
    return resize_image(image, size), resize_label_map(mask, size)


def map_points(points: np.ndarray, from_shape: Sequence[int], to_shape: Sequence[int]) -> np.ndarray:
    """Maps pixel-centre (x, y) points between two frames of one image (e.g. 1024 → original).

    Args:
        points: (N, 2) array of (x, y).
        from_shape: (H, W) of the frame the points are in.
        to_shape: (H, W) of the target frame.

    Returns:
        float64 (N, 2) points in the target frame.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    sx = to_shape[1] / from_shape[1]
    sy = to_shape[0] / from_shape[0]
    return np.stack([(pts[:, 0] + 0.5) * sx - 0.5, (pts[:, 1] + 0.5) * sy - 0.5], axis=1)


def map_boxes(boxes: np.ndarray, from_shape: Sequence[int], to_shape: Sequence[int]) -> np.ndarray:
    """Maps (x0, y0, x1, y1) edge boxes between two frames of one image.

    Args:
        boxes: (N, 4) array in ``from_shape`` pixels.
        from_shape: (H, W) of the source frame.
        to_shape: (H, W) of the target frame.

    Returns:
        float64 (N, 4) boxes in target-frame pixels (not rounded; round or clip as the caller needs).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx = to_shape[1] / from_shape[1]
    sy = to_shape[0] / from_shape[0]
    return b * np.array([sx, sy, sx, sy])


class CXRImageProcessor(BaseImageProcessor):
    """Image processor for cxr-hub models: the paper's preprocessing plus resizing and normalisation.

    ``preprocess`` returns ``pixel_values`` of shape (N, 1, size, size), float32, equal to
    ``(preprocessed / 255 - image_mean) / image_std``. With ``masks`` given (the lung mask for the classifiers),
    pixels outside the mask are set to 0 gray level *before* normalisation, as in the paper.

    Args:
        size: output side in pixels (256 for segmentation, 1024 for the classifiers' frame, 224 for "global").
        do_equalize: histogram equalisation.
        gamma: gamma exponent (None: none).
        image_mean: mean subtracted after scaling to [0, 1].
        image_std: std divided after that.
    """

    model_input_names = ["pixel_values"]  # noqa: RUF012 (transformers reads this class attribute)

    def __init__(
        self,
        size: int = 256,
        do_equalize: bool = True,
        gamma: float | None = 0.5,
        image_mean: float = 0.5,
        image_std: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        self.do_equalize = bool(do_equalize)
        self.gamma = gamma
        self.image_mean = float(image_mean)
        self.image_std = float(image_std)

    def normalize(self, gray: Any) -> Any:
        """``(gray / 255 - image_mean) / image_std`` for gray levels in [0, 255] (numpy array or torch tensor)."""
        return (gray / 255.0 - self.image_mean) / self.image_std

    def frame_from_preprocessed(self, preprocessed: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The steps after ``preprocess_cxr``: resize to ``size``, zero gray level outside ``mask``, normalise.

        Lets a caller that already holds the preprocessed image (e.g. for several frames of one image) skip the
        histogram step without redefining the rest.

        Args:
            preprocessed: (H, W) float32 in [0, 255], from ``preprocess_cxr`` with this processor's settings.
            mask: optional (H, W) mask; pixels where it is 0 become gray level 0.

        Returns:
            float32 (size, size) normalised frame.

        Raises:
            CXRInputError: the mask's shape differs from the image's.
        """
        out = resize_image(preprocessed, self.size)
        if mask is not None:
            m = np.asarray(mask)
            if m.shape != preprocessed.shape:
                raise CXRInputError(f"Mask shape {m.shape} differs from the image shape {preprocessed.shape}.")
            out = out * (resize_label_map(m > 0, self.size)).astype(np.float32)
        return self.normalize(out).astype(np.float32)

    def preprocess_one(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """One image → (size, size) float32 normalised array (see class docstring)."""
        pre = preprocess_cxr(image, equalize=self.do_equalize, gamma=self.gamma)
        return self.frame_from_preprocessed(pre, mask)

    def preprocess(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        masks: np.ndarray | Sequence[np.ndarray] | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Preprocesses one (H, W) image or a list of them.

        Returns:
            BatchFeature with ``pixel_values`` (N, 1, size, size) and ``original_sizes`` (N, 2) as (H, W).
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments: {sorted(kwargs)}.")
        single = isinstance(images, np.ndarray) and images.ndim == 2
        image_list = [images] if single else list(images)
        if masks is None:
            mask_list: list[np.ndarray | None] = [None] * len(image_list)
        else:
            mask_list = [masks] if single else list(masks)
            if len(mask_list) != len(image_list):
                raise ValueError(f"Got {len(image_list)} images but {len(mask_list)} masks.")
        if not image_list:
            raise CXRInputError("No images given.")
        arrays = [validate_image_array(np.asarray(im)) for im in image_list]
        pixel_values = np.stack([self.preprocess_one(a, m) for a, m in zip(arrays, mask_list, strict=True)])[:, None]
        sizes = np.array([a.shape for a in arrays], dtype=np.int64)
        return BatchFeature({"pixel_values": pixel_values, "original_sizes": sizes}, tensor_type=return_tensors)

    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: Sequence[Sequence[int]] | None = None
    ) -> list[np.ndarray]:
        """Turns segmentation logits (N, C, h, w) into label maps, optionally at each image's original size.

        Logits are upsampled bilinearly before the argmax (smoother borders than resizing the labels).

        Returns:
            list of N int64 (H, W) label maps.
        """
        import torch  # local: the processor itself works without torch

        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        logits = torch.as_tensor(logits).float()
        result = []
        for i in range(logits.shape[0]):
            lg = logits[i : i + 1]
            if target_sizes is not None:
                lg = torch.nn.functional.interpolate(
                    lg, size=tuple(int(s) for s in target_sizes[i]), mode="bilinear", align_corners=False
                )
            result.append(lg.argmax(1)[0].cpu().numpy().astype(np.int64))
        return result
