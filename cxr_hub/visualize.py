"""Drawing helpers shared by the CLI (``predict``) and the Gradio app: overlays, patch boxes and the report figure.

Everything here is for *viewing*: images are min-max scaled to uint8 and downscaled to at most
:data:`OVERLAY_MAX_SIDE` pixels on the longer side; analysis always uses the original pixels. Only numpy and PIL
(plus matplotlib's colour maps, never pyplot, so no GUI backend is touched) — no torch, so the app's drawing costs
nothing to import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .models import SEGMENTATION_IDS, SEGMENTATION_LABELS
from .preprocessing import map_boxes, resize_image, resize_label_map

if TYPE_CHECKING:
    from .pipeline import PipelineResult

__all__ = [
    "BOX_COLOUR",
    "LABEL_COLOURS",
    "LABEL_NAMES",
    "OVERLAY_MAX_SIDE",
    "annotated_segmentation",
    "box_outline_mask",
    "display_size",
    "draw_boxes",
    "draw_segmentation",
    "gray_rgb",
    "heat_overlay",
    "hex_colour",
    "patch_mosaic",
    "report_figure",
    "segmentation_overlay",
    "to_uint8",
]

#: Overlay PNGs are drawn at most this many pixels on the longer side (the JSON keeps original-pixel boxes).
OVERLAY_MAX_SIDE = 1024
#: label → RGB for the segmentation overlay: heart red, left lung green, right lung blue.
LABEL_COLOURS: dict[int, tuple[int, int, int]] = {
    SEGMENTATION_IDS["heart"]: (230, 60, 60),
    SEGMENTATION_IDS["left_lung"]: (60, 200, 90),
    SEGMENTATION_IDS["right_lung"]: (70, 130, 240),
}
#: label → name as shown in legends (the patient's left lung is on the image's right in a PA film).
LABEL_NAMES: dict[int, str] = {value: name.replace("_", " ") for value, name in SEGMENTATION_LABELS.items() if value}
#: colour of the sampled patch boxes.
BOX_COLOUR: tuple[int, int, int] = (255, 220, 0)


def hex_colour(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` → ``"#rrggbb"`` (Gradio colour maps take hex strings)."""
    return "#" + "".join(f"{int(c):02x}" for c in rgb[:3])


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max scales any gray image to uint8 for viewing (not for analysis)."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(image)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def display_size(shape: tuple[int, int], max_side: int = OVERLAY_MAX_SIDE) -> tuple[int, int]:
    """(H, W) scaled down (never up) so the longer side is at most ``max_side``."""
    h, w = int(shape[0]), int(shape[1])
    f = min(1.0, max_side / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def gray_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Gray image resized to ``size`` and min-max scaled, as float32 (H, W, 3) in [0, 255] ready for blending."""
    g = to_uint8(resize_image(image, size)).astype(np.float32)
    return np.repeat(g[..., None], 3, axis=2)


def draw_boxes(
    canvas: Image.Image, boxes: np.ndarray, colour: tuple[int, int, int] | int = BOX_COLOUR, width: int = 1
) -> Image.Image:
    """Draws ``(x0, y0, x1, y1)`` boxes (exclusive right/bottom edges, canvas pixels) on ``canvas`` in place.

    ``colour`` is an RGB tuple for an RGB canvas, an int for a gray ("L") one.
    """
    draw = ImageDraw.Draw(canvas)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=width)
    return canvas


def draw_segmentation(
    image: np.ndarray,
    label_map: np.ndarray,
    boxes: np.ndarray | None = None,
    max_side: int = OVERLAY_MAX_SIDE,
) -> Image.Image:
    """Gray image with the label map tinted (heart red, left lung green, right lung blue) and optional patch boxes.

    Args:
        image: (H, W) gray image at the original size.
        label_map: (H, W) labels (0 background, 1 heart, 2 left lung, 3 right lung), same size.
        boxes: optional (K, 4) ``(x0, y0, x1, y1)`` patch edges in original-image pixels.
        max_side: longer side of the drawing.
    """
    shape = (int(label_map.shape[0]), int(label_map.shape[1]))
    size = display_size(shape, max_side)
    rgb = gray_rgb(image, size)
    labels = resize_label_map(label_map, size)
    for label, colour in LABEL_COLOURS.items():
        sel = labels == label
        rgb[sel] = 0.6 * rgb[sel] + 0.4 * np.array(colour, dtype=np.float32)
    canvas = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if boxes is not None and len(boxes):
        draw_boxes(canvas, map_boxes(boxes, shape, size))
    return canvas


def segmentation_overlay(result: PipelineResult, image: np.ndarray) -> Image.Image:
    """:func:`draw_segmentation` of a pipeline result: its label map and patch boxes over ``image``."""
    return draw_segmentation(image, result.label_map, result.patch_boxes)


def heat_overlay(saliency: np.ndarray, image: np.ndarray, max_side: int = OVERLAY_MAX_SIDE) -> Image.Image:
    """Gray image with a jet heat map blended in, opacity and colour scaled to the map's maximum."""
    from matplotlib import colormaps  # colormaps only: no pyplot, so no GUI backend is ever touched

    size = display_size(saliency.shape, max_side)
    rgb = gray_rgb(image, size)
    heat = resize_image(np.asarray(saliency, dtype=np.float32), size)
    peak = float(heat.max())
    scaled = np.clip(heat / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(heat)
    colours = colormaps["jet"](scaled)[..., :3].astype(np.float32) * 255.0
    alpha = (0.6 * scaled)[..., None]  # weak saliency fades into the image instead of a flat blue box
    return Image.fromarray(np.clip((1 - alpha) * rgb + alpha * colours, 0, 255).astype(np.uint8))


def box_outline_mask(
    boxes: np.ndarray, image_size: tuple[int, int], size: tuple[int, int], width: int = 2
) -> np.ndarray:
    """A float mask (``size``) that is 1 on the outlines of the boxes, 0 elsewhere.

    Args:
        boxes: (K, 4) ``(x0, y0, x1, y1)`` edges in pixels of ``image_size``.
        image_size: (H, W) the boxes refer to.
        size: (H, W) of the mask.
        width: outline width in mask pixels.
    """
    canvas = Image.new("L", (size[1], size[0]), 0)
    if len(boxes):
        draw_boxes(canvas, map_boxes(np.asarray(boxes, np.float64), image_size, size), colour=255, width=width)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def annotated_segmentation(
    image: np.ndarray,
    label_map: np.ndarray,
    boxes: np.ndarray | None,
    max_side: int = OVERLAY_MAX_SIDE,
    region_alpha: float = 0.45,
    box_label: str = "sampled patches",
) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """Base image and masks for an annotated-image view (e.g. ``gr.AnnotatedImage``): one mask per structure.

    Args:
        image: (H, W) gray image at the original size.
        label_map: (H, W) labels at the original size.
        boxes: (K, 4) patch edges in original pixels, or None.
        max_side: longer side of the drawing.
        region_alpha: mask value (= opacity) of the heart and lung regions; the box outlines are opaque.
        box_label: legend text of the boxes.

    Returns:
        ``(base, annotations)``: uint8 (h, w, 3) gray base and ``[(float mask (h, w) in [0, 1], name), ...]`` for
        heart, left lung, right lung and (when boxes are given) the patch outlines.
    """
    shape = (int(label_map.shape[0]), int(label_map.shape[1]))
    size = display_size(shape, max_side)
    base = gray_rgb(image, size).astype(np.uint8)
    labels = resize_label_map(label_map, size)
    annotations = [((labels == label).astype(np.float32) * region_alpha, name) for label, name in LABEL_NAMES.items()]
    if boxes is not None:
        width = max(1, round(max(size) / 512))
        annotations.append((box_outline_mask(boxes, shape, size, width), box_label))
    return base, annotations


def patch_mosaic(
    frame: np.ndarray, boxes: np.ndarray, count: int = 8, tile: int = 128, columns: int = 4
) -> Image.Image | None:
    """The first ``count`` patches cut from the classifier frame, as a grid of ``tile`` px tiles (for teaching).

    Args:
        frame: (S, S) classifier frame (normalised values are fine: each tile is min-max scaled).
        boxes: (K, 4) int patch edges in that frame.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)[:count]
    if not len(boxes):
        return None
    rows = -(-len(boxes) // columns)
    cols = min(columns, len(boxes))
    canvas = Image.new("L", (cols * tile + (cols - 1) * 4, rows * tile + (rows - 1) * 4), 255)
    lo, hi = float(frame.min()), float(frame.max())
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        crop = resize_image(frame[y0:y1, x0:x1].astype(np.float32), (tile, tile))
        crop = (crop - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(crop)
        r, c = divmod(i, columns)
        canvas.paste(Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)), (c * (tile + 4), r * (tile + 4)))
    return canvas


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font at ``size`` (scalable since Pillow 10.1), else its bitmap default."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # older Pillow or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def report_figure(
    panels: Sequence[tuple[str, Image.Image | None]],
    lines: Sequence[str],
    panel_side: int = 512,
    footer: str = "Research and education only. Not for clinical use.",
) -> Image.Image:
    """One PNG for a report: text lines on top, the panels side by side with titles, a footer line.

    Args:
        panels: ``(title, image)`` pairs; a None image leaves a gray "not available" tile.
        lines: header text, one entry per line.
        panel_side: longer side of each panel.
        footer: last line (the disclaimer).
    """
    font, small = _font(18), _font(15)
    n = max(1, len(panels))
    pad, title_h, line_h = 12, 26, 24
    header_h = pad + line_h * len(lines)
    width = pad + n * (panel_side + pad)
    height = header_h + pad + title_h + panel_side + pad + line_h + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_h), line, fill=(0, 0, 0), font=font)
    top = header_h + pad
    for i, (title, img) in enumerate(panels):
        x = pad + i * (panel_side + pad)
        draw.text((x, top), title, fill=(0, 0, 0), font=small)
        if img is None:
            draw.rectangle([x, top + title_h, x + panel_side - 1, top + title_h + panel_side - 1], fill=(225, 225, 225))
            draw.text((x + pad, top + title_h + panel_side // 2), "not available", fill=(90, 90, 90), font=small)
            continue
        thumb = img.convert("RGB")
        thumb.thumbnail((panel_side, panel_side))
        canvas.paste(thumb, (x, top + title_h))
    draw.text((pad, height - pad - line_h + 4), footer, fill=(160, 0, 0), font=font)
    return canvas
