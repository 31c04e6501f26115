"""Augmentation that imitates other hospitals: geometry, field of view and scanner/post-processing differences.

Everything runs after the paper's preprocessing, on the 256 x 256 float image in [0, 255], and moves the image and its
label map together (nearest neighbour for the labels). The label map may be a class map or an allowed-class bitmask
(:mod:`training.losses`): the geometric functions only move values, so both work. Pixels that a transform brings in
from outside the image are black in the image and get ``fill_label`` (background) in the labels.

No horizontal flips: they would swap the patient's left and right lungs and move the heart.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["AugmentConfig", "augment_pair", "elastic", "geometric", "photometric"]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges and probabilities of the augmentation (defaults: the shipped segmentation recipe)."""

    max_rotate: float = 10.0  # degrees
    scale: tuple[float, float] = (0.8, 1.15)  # < 1: a wider field of view (shoulders, abdomen) as on other films
    max_shift: float = 0.08  # fraction of the side
    p_crop: float = 0.25  # a thorax crop: zoom in on a random part of the film
    crop_scale: tuple[float, float] = (1.15, 1.45)
    p_elastic: float = 0.3
    elastic_alpha: float = 5.0  # pixels of displacement at 256
    elastic_sigma: float = 18.0  # smoothness of the displacement field, pixels
    max_gamma: float = 0.35  # log-gamma range
    contrast: tuple[float, float] = (0.75, 1.3)
    brightness: float = 20.0  # gray levels
    p_blur: float = 0.25
    p_sharpen: float = 0.25
    p_noise: float = 0.3
    noise_sigma: tuple[float, float] = (2.0, 8.0)
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (20, 70)
    p_resample: float = 0.3
    resample_factor: tuple[float, float] = (0.3, 0.7)


def geometric(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, fill_label: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One random rotation, scale (or thorax crop) and shift.

    Args:
        image: (H, W) float32 in [0, 255].
        labels: (H, W) uint8 class map or bitmask.
        rng: random generator.
        cfg: ranges.
        fill_label: label value of pixels brought in from outside the image.

    Returns:
        (image, labels), same shapes and dtypes.
    """
    h, w = image.shape
    angle = rng.uniform(-cfg.max_rotate, cfg.max_rotate)
    s = rng.uniform(*cfg.crop_scale) if rng.random() < cfg.p_crop else rng.uniform(*cfg.scale)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, s)
    m[:, 2] += rng.uniform(-cfg.max_shift, cfg.max_shift, 2) * (w, h)
    img = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    lab = cv2.warpAffine(
        labels, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=fill_label
    )
    return img.astype(np.float32), lab


def elastic(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, fill_label: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A mild elastic deformation (smooth random displacement field, Simard et al. 2003)."""
    h, w = image.shape
    dx, dy = (
        cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), cfg.elastic_sigma) for _ in range(2)
    )
    # normalise so that the largest displacement is elastic_alpha pixels, whatever the blur left of the noise
    scale = cfg.elastic_alpha / max(float(np.abs(dx).max()), float(np.abs(dy).max()), 1e-6)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = xs + dx * scale, ys + dy * scale
    img = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    lab = cv2.remap(labels, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=fill_label)
    return img.astype(np.float32), lab


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Scanner and post-processing differences: gamma, contrast, brightness, blur or unsharp masking, noise, JPEG
    re-encoding, downsample then upsample.

    Args:
        image: (H, W) float32 in [0, 255].

    Returns:
        (H, W) float32 in [0, 255].
    """
    h, w = image.shape
    img = np.clip(image, 0, 255).astype(np.float32)
    img = 255.0 * np.power(img / 255.0, float(np.exp(rng.uniform(-cfg.max_gamma, cfg.max_gamma))))
    mean = float(img.mean())
    img = (img - mean) * rng.uniform(*cfg.contrast) + mean + rng.uniform(-cfg.brightness, cfg.brightness)
    if rng.random() < cfg.p_blur:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    elif rng.random() < cfg.p_sharpen:  # unsharp masking / edge enhancement, common in vendor post-processing
        soft = cv2.GaussianBlur(img, (0, 0), rng.uniform(1.0, 3.0))
        img = img + rng.uniform(0.5, 1.5) * (img - soft)
    if rng.random() < cfg.p_noise:
        img = img + rng.normal(0.0, rng.uniform(*cfg.noise_sigma), img.shape).astype(np.float32)
    img = np.clip(img, 0, 255)
    if rng.random() < cfg.p_resample:
        f = rng.uniform(*cfg.resample_factor)
        small = cv2.resize(img, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < cfg.p_jpeg:
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", np.rint(img).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.float32)


def augment_pair(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig | None = None,
    fill_label: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole recipe: geometry (rotation, scale or thorax crop, shift), sometimes elastic, then photometric.

    Args:
        image: (H, W) float32 in [0, 255], preprocessed.
        labels: (H, W) uint8 class map or allowed-class bitmask.
        rng: random generator (the only source of randomness: same seed, same result).
        cfg: ranges; default :class:`AugmentConfig`.
        fill_label: label value of pixels brought in from outside the image.

    Returns:
        (image float32 in [0, 255], labels uint8), same shapes.
    """
    cfg = cfg or AugmentConfig()
    img, lab = geometric(image, labels, rng, cfg, fill_label)
    if rng.random() < cfg.p_elastic:
        img, lab = elastic(img, lab, rng, cfg, fill_label)
    return photometric(img, rng, cfg), lab
