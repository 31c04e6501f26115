"""What the UI's outputs get from an analysis: the images, the report files, the step-by-step images, and
:func:`render`, which maps an :class:`~cxr_hub.demo.engine.Analysis` to every output in :data:`OUTPUT_NAMES` order.

The values are plain Python (text, numpy arrays, PIL images, dicts, file paths, a pandas frame for the vote chart);
``app.py`` wires them to its Gradio components. No gradio here, and pandas (the ``app`` extra) only when the vote
chart's frame is built, so ``cxr_hub.demo`` imports without either.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..models import LABEL_SETS
from ..preprocessing import resize_image
from ..visualize import (
    BOX_COLOUR,
    annotated_segmentation,
    display_size,
    draw_boxes,
    draw_segmentation,
    gray_rgb,
    heat_overlay,
    patch_mosaic,
    report_figure,
    to_uint8,
)
from .engine import PREDICTED, Analysis, CXRApp
from .names import display_name, format_number, model_label
from .presenters import biomarkers_markdown, details_markdown, summary_dict, summary_markdown, triage_text

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CLASS_SHORT",
    "CLASS_SORT",
    "CLEARED_SUMMARY",
    "DISPLAY_SIDE",
    "OUTPUT_NAMES",
    "REPORT_PANEL_SIDE",
    "TRAINED",
    "UNTRAINED",
    "cleared_outputs",
    "render",
    "saliency_images",
    "steps",
    "votes_frame",
    "write_report",
]

#: Longer side of the images sent to the browser (analysis always uses the original pixels), and of a report panel.
DISPLAY_SIDE = 768
REPORT_PANEL_SIDE = 512

#: The UI's outputs of an analysis, in the order :func:`render` returns them (the API's output order too).
OUTPUT_NAMES = (
    "summary",
    "segmentation",
    "votes_plot",
    "vote_fractions",
    "probabilistic_gradcam",
    "global_gradcam",
    "biomarkers",
    "triage",
    "details",
    "result",
    "report",
)

#: What the summary says while an analysis runs, or after a refusal (the error itself is shown by Gradio).
CLEARED_SUMMARY = "Choose an image and press **Analyse**."

#: Short names for the vote chart's axis.
CLASS_SHORT = {
    "normal": "normal",
    "bacterial": "bacterial",
    "tuberculosis": "TB",
    "viral_covid": "viral/COVID",
    "pneumonia": "pneumonia",
    "covid": "COVID-19",
}

#: Bar order of the vote chart (the classes' index order; Vega-Lite would sort them alphabetically).
CLASS_SORT = list(dict.fromkeys(CLASS_SHORT[c] for c in (*LABEL_SETS["label4"], *LABEL_SETS["label3"])))
TRAINED, UNTRAINED = "trained", "untrained (no training images)"


def cleared_outputs() -> tuple:
    """Empty values for every output of :data:`OUTPUT_NAMES` plus the session state: shown when a new image is
    chosen and before each analysis, so an error (a refused upload) never leaves the previous image's result."""
    return (CLEARED_SUMMARY, *([None] * (len(OUTPUT_NAMES) - 1)), None)


def votes_frame(a: Analysis) -> pd.DataFrame | None:
    """The vote chart's data: one row per class (short name, votes, trained or not); None without a classifier."""
    r = a.result
    if r is None:
        return None
    import pandas as pd  # the app extra, only needed once there is a chart to draw

    untrained = a.models.untrained_classes
    return pd.DataFrame(
        {
            "class": [CLASS_SHORT.get(c, c) for c in r.class_names],
            "votes": [r.votes[c] for c in r.class_names],
            "training": [UNTRAINED if c in untrained else TRAINED for c in r.class_names],
        }
    )


def render(a: Analysis, engine: CXRApp) -> tuple:
    """The UI outputs of an analysis, in :data:`OUTPUT_NAMES` order (without the session state).

    Args:
        a: the analysis.
        engine: the engine that made it (the report files go to its report folder).

    Returns:
        summary markdown; the segmentation as ``(gray RGB uint8 image (H, W, 3) at DISPLAY_SIDE, [(mask, name),
        ...])`` (no masks without a segmentation); the vote chart's frame and ``{class label: vote fraction in
        [0, 1]}`` (None without a classifier); the probabilistic and the global Grad-CAM overlays (PIL, or None);
        the biomarker, triage and details markdown; the JSON summary; the report's two paths (None without a
        segmentation).
    """
    if a.prepared is not None:
        seg = annotated_segmentation(a.image, a.prepared.label_map, a.boxes, DISPLAY_SIDE)
    else:
        seg = (gray_rgb(a.image, display_size(a.image.shape[:2], DISPLAY_SIDE)).astype(np.uint8), [])
    frame = votes_frame(a)
    fractions = None
    if a.result is not None:
        untrained = a.models.untrained_classes
        fractions = {display_name(c, untrained): f for c, f in a.result.vote_fraction.items()}
    patch_cam, global_cam, _ = saliency_images(a)
    summary = summary_dict(a)
    report = write_report(a, engine, patch_cam, global_cam) if a.prepared is not None else None
    return (
        summary_markdown(a),
        seg,
        frame,
        fractions,
        patch_cam,
        global_cam,
        biomarkers_markdown(a),
        triage_text(a),
        details_markdown(a),
        summary,
        report,
    )


# --------------------------------------------------------------------------------------- images, report, steps


def saliency_images(a: Analysis) -> tuple[Image.Image | None, Image.Image | None, str]:
    """The saliency overlays of the class shown (the predicted one unless another was asked for).

    Returns:
        ``(probabilistic Grad-CAM overlay, global Grad-CAM overlay, class)``: RGB PIL images whose longer side is
        :data:`DISPLAY_SIDE` (None where there is no map), and the class name ("" without a classifier).
    """
    r = a.result
    if r is None or not r.saliency:
        return None, None, ""
    cls = r.label if a.saliency_class == PREDICTED else a.saliency_class
    sal = r.saliency.get(cls)
    patch = heat_overlay(sal, a.image, DISPLAY_SIDE) if sal is not None else None
    glob = None
    if r.global_saliency:
        gmap = r.global_saliency.get(cls)
        glob = heat_overlay(gmap, a.image, DISPLAY_SIDE) if gmap is not None else None
    return patch, glob, cls


def write_report(
    a: Analysis,
    engine: CXRApp,
    patch_cam: Image.Image | None,
    global_cam: Image.Image | None,
) -> list[str]:
    """Writes the downloadable report (JSON with every patch, and one PNG figure); returns the two paths.

    ``patch_cam`` and ``global_cam`` are the overlays from :func:`saliency_images` (None when there is no map); the
    caller passes them because it usually shows them too. Needs ``a.prepared`` (a segmentation model). Older
    reports in the engine's report folder are pruned (:meth:`~cxr_hub.demo.engine.CXRApp.new_report_paths`).

    Returns:
        ``[JSON path, PNG path]``: :func:`~cxr_hub.demo.presenters.summary_dict` with every patch, and one figure
        (segmentation with the patches and both Grad-CAMs, :data:`REPORT_PANEL_SIDE` px panels).
    """
    json_path, png_path = engine.new_report_paths(a.id)
    json_path.write_text(json.dumps(summary_dict(a, include_patches=True), indent=2, allow_nan=False) + "\n")
    r = a.result
    assert a.prepared is not None
    overlay = draw_segmentation(a.image, a.prepared.label_map, a.boxes, REPORT_PANEL_SIDE)
    if r is not None:
        untrained = a.models.untrained_classes
        head = [
            f"cxr-hub — {model_label(a.models.sources.choice)}: majority vote {display_name(r.label, untrained)} "
            f"({r.votes[r.label]} of {r.k} patches, patch {r.patch_size} px, seed {a.seed})",
            "votes: " + ", ".join(f"{display_name(c, untrained)} {r.vote_fraction[c]:.0%}" for c in r.class_names),
        ]
    else:
        head = [
            f"cxr-hub — {model_label(a.models.sources.choice)}: no classifier loaded, so no classification.",
            f"Segmentation and K = {a.k} patch positions ({a.patch_size} px, seed {a.seed}) only.",
        ]
    b = a.prepared.biomarkers
    head.append(
        f"cardiothoracic ratio {format_number(b.cardiothoracic_ratio)}; lung intensity mean "
        f"{format_number(b.lung_mean_intensity, '.1f')}, spread {format_number(b.lung_std_intensity, '.1f')}"
    )
    cls = "" if r is None else (r.label if a.saliency_class == PREDICTED else a.saliency_class)
    panels = [
        ("segmentation (heart red, left lung green, right lung blue) + patches", overlay),
        (f"probabilistic Grad-CAM: {display_name(cls)}" if cls else "probabilistic Grad-CAM", patch_cam),
        (f"global model Grad-CAM: {display_name(cls)}" if cls else "global model Grad-CAM", global_cam),
    ]
    report_figure(panels, head, REPORT_PANEL_SIDE).save(png_path, compress_level=1)
    return [str(json_path), str(png_path)]


def steps(a: Analysis | None) -> tuple[list[tuple[Image.Image, str]], str]:
    """The method step by step with this image's own intermediate images (the "How it works" tab).

    Returns:
        ``(gallery, note)``: ``(PIL image, at most 512 px a side, numbered caption)`` per step (the vote and
        saliency steps only with a classifier), and a markdown note on which analysis they show. Without an
        analysis (or a segmentation) an empty gallery and a note saying what to do.
    """
    if a is None or a.prepared is None:
        return [], "Analyse an image first (the **Analyse** tab); its intermediate images will appear here."
    p, pipe = a.prepared, a.models.pipeline
    assert pipe is not None
    size = display_size(p.original_size, 512)
    seg_side = pipe.segmentation_processor.size
    frame_side = p.frame.shape[0]
    gallery: list[tuple[Image.Image, str]] = [
        (Image.fromarray(to_uint8(resize_image(p.image, size))), "1. The X-ray as loaded"),
        (
            Image.fromarray(np.clip(resize_image(p.preprocessed, size), 0, 255).astype(np.uint8)),
            "2. Histogram equalisation + gamma",
        ),
        (
            Image.fromarray(np.clip(resize_image(p.preprocessed, seg_side), 0, 255).astype(np.uint8)),
            f"3. Segmentation input ({seg_side}×{seg_side})",
        ),
        (draw_segmentation(p.image, p.label_map, None, 512), "4. Heart, left lung, right lung"),
        (Image.fromarray(to_uint8(resize_image(p.frame, 512))), f"5. Lung-masked {frame_side}×{frame_side} frame"),
    ]
    if a.boxes_1024 is not None:
        framed = Image.fromarray(to_uint8(p.frame)).convert("RGB")
        draw_boxes(framed, a.boxes_1024, BOX_COLOUR, width=max(1, frame_side // 256))
        framed.thumbnail((512, 512))
        gallery.append((framed, f"6. K = {a.k} random patches centred in the lungs"))
        mosaic = patch_mosaic(p.frame, a.boxes_1024)
        if mosaic is not None:
            gallery.append((mosaic, "7. The first patches, as the network sees them"))
    patch_cam, global_cam, cls = saliency_images(a)
    if patch_cam is not None:
        gallery.append((patch_cam, f"8. Probabilistic Grad-CAM ({display_name(cls)})"))
    if global_cam is not None:
        gallery.append((global_cam, f"9. Global model's Grad-CAM ({display_name(cls)})"))
    note = (
        f"Steps for the last analysed image (model: {model_label(a.models.sources.choice)}, K = {a.k}, "
        f"patch {a.patch_size} px, seed {a.seed})."
    )
    if a.result is None:
        note += " No classifier is loaded, so the vote and saliency steps have no images."
    return gallery, note
