"""Segmentation evaluation as a library: a model scored against the masks of a manifest.

:func:`evaluate_segmentation` scores a segmentation model against the masks of any folder in the manifest format, at
each mask's original resolution, and writes ``metrics.json``, ``per_image.csv``, a PNG grid of the worst cases and an
under-segmentation report (the paper's section V-F-3). The loading and inference helpers here
(:func:`load_segmentation_model`, :func:`segmentation_processor`, :func:`segment`) are shared with the biomarker
study, training and the benchmarks. No argument parsing and no printing here (the command is
:mod:`cxr_hub.cli.evaluate_segmentation`).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..biomarkers import cardiothoracic_ratio
from ..io import CXRInputError, load_image
from ..manifest import ManifestRow, load_label_map, read_manifest
from ..models import CXRImageProcessor, image_processor_for
from ..postprocessing import clean_label_map, uses_postprocessing
from ..presets import default_folder
from .metrics import (
    CONVENTION_AWARE_LUNG,
    STRUCTURE_LABELS,
    heart_share_of_lung,
    structure_scores,
    summarize,
    summarize_scores,
)
from .selection import select_rows

__all__ = [
    "DEFAULT_SEGMENTATION",
    "UNDERSEGMENTATION_THRESHOLD",
    "ctr_agreement",
    "evaluate_segmentation",
    "load_segmentation_model",
    "segment",
    "segmentation_processor",
    "undersegmentation_report",
]

DEFAULT_SEGMENTATION = str(default_folder("segmentation"))
# An image's predicted lung area below this share of the normal class's median counts as under-segmented.
UNDERSEGMENTATION_THRESHOLD = 0.75


def load_segmentation_model(
    name_or_path: str | Path, device: str | torch.device | None = None, allow_pickle: bool = False
) -> torch.nn.Module:
    """Loads a cxr-hub segmentation model (local Hub folder or repo id) in eval mode on ``device``.

    Only safetensors weights are read unless ``allow_pickle`` (see :func:`cxr_hub.loading.load_model`).

    Args:
        name_or_path: a folder written by ``save_pretrained`` or a Hub repo id.
        device: "cpu" / "cuda" or a device (default: CUDA when available).
        allow_pickle: also read pickle checkpoints (they can run code when loaded: trusted files only).

    Returns:
        The model, in eval mode, on the device.

    Raises:
        FileNotFoundError: a local-looking path that does not exist (with a hint on how to get a model).
        cxr_hub.loading.UnsafeCheckpointError: a pickle checkpoint and ``allow_pickle`` is False.
    """
    from transformers import AutoModelForSemanticSegmentation

    from ..loading import load_model

    path = Path(name_or_path)
    if not path.exists() and (str(name_or_path).startswith((".", "/", "models")) or path.suffix):
        raise FileNotFoundError(
            f"No segmentation model at {path}. Train one with `python -m training.train_segmentation` or pass "
            "--segmentation with a Hub folder or repo id."
        )
    model = load_model(name_or_path, AutoModelForSemanticSegmentation, allow_pickle=allow_pickle)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(dev).eval()


def segmentation_processor(model: torch.nn.Module, preprocessing: str = "model") -> CXRImageProcessor:
    """The processor matching the model's config; ``preprocessing="none"`` drops histeq and gamma (ablation).

    Args:
        model: a cxr-hub segmentation model (its ``config`` names the preprocessing).
        preprocessing: ``"model"`` (the config's, the paper's by default) or ``"none"`` (min-max scaling only).

    Returns:
        A new :class:`cxr_hub.CXRImageProcessor`.

    Raises:
        ValueError: another ``preprocessing``.
    """
    processor = image_processor_for(model.config)
    if preprocessing == "none":
        processor.do_equalize, processor.gamma = False, None
    elif preprocessing != "model":
        raise ValueError(f"preprocessing must be 'model' or 'none', got {preprocessing!r}.")
    return processor


@torch.inference_mode()
def segment(model: torch.nn.Module, processor: CXRImageProcessor, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Label maps (0 bg, 1 heart, 2 left lung, 3 right lung) at each image's original size.

    Args:
        model: a segmentation model in eval mode.
        processor: its image processor.
        images: (H, W) float gray images.

    Returns:
        list of int64 (H, W) label maps.
    """
    device = next(model.parameters()).device
    batch = processor(list(images), return_tensors="pt")
    logits = model(batch["pixel_values"].to(device)).logits.float()
    return processor.post_process_semantic_segmentation(logits, target_sizes=[im.shape for im in images])


def ctr_agreement(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Agreement of predicted and reference cardiothoracic ratios (Bland-Altman: differences predicted − reference).

    Args:
        pairs: ``(predicted, reference)`` ratio of each image, finite values (ratios in [0, 1]).

    Returns:
        ``{"n", "mae", "mean_difference", "sd_difference", "limits_of_agreement"}`` (95 %); ``{"n": 0}`` without pairs.
    """
    if not pairs:
        return {"n": 0}
    d = np.array([p - r for p, r in pairs], dtype=np.float64)
    mean, sd = float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return {
        "n": len(d),
        "mae": float(np.abs(d).mean()),
        "mean_difference": mean,
        "sd_difference": sd,
        "limits_of_agreement": [mean - 1.96 * sd, mean + 1.96 * sd],
    }


def _lung_fraction(label_map: np.ndarray) -> float:
    return float(np.isin(label_map, STRUCTURE_LABELS["lung"]).mean())


def undersegmentation_report(
    lung_fractions: dict[str, float], labels: dict[str, str], threshold: float = UNDERSEGMENTATION_THRESHOLD
) -> dict[str, Any]:
    """Share of images per class whose predicted lung area is below ``threshold`` x the normal class's median.

    Lung area is measured as the share of the image's pixels labelled lung, so film size does not matter.

    Args:
        lung_fractions: image id → predicted lung area share.
        labels: image id → class.
        threshold: fraction of the normal median below which a mask counts as deformed.

    Returns:
        ``{"definition", "reference_median", "per_class": {class: {"n", "undersegmented", "share"}}}``; the reference
        is the median over ``normal`` images, or over all images when there are none (stated in ``definition``).
    """
    normals = [f for i, f in lung_fractions.items() if labels.get(i) == "normal"]
    reference_name = "normal" if normals else "all images"
    reference = float(np.median(normals if normals else list(lung_fractions.values()) or [np.nan]))
    per_class: dict[str, dict[str, Any]] = {}
    for cls in sorted({labels[i] for i in lung_fractions if labels.get(i)}):
        vals = [f for i, f in lung_fractions.items() if labels.get(i) == cls]
        under = sum(f < threshold * reference for f in vals)
        per_class[cls] = {"n": len(vals), "undersegmented": int(under), "share": under / len(vals) if vals else None}
    return {
        "definition": f"predicted lung area (share of image pixels) < {threshold:.0%} of the median over "
        f"{reference_name} images",
        "reference_median": reference,
        "per_class": per_class,
    }


def _worst_case_grid(cases: list[tuple[float, ManifestRow, np.ndarray, np.ndarray]], path: Path) -> None:
    """Saves image + reference contour + predicted overlay for the worst-scoring images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not cases:
        return
    cols = min(4, len(cases))
    rows = int(np.ceil(len(cases) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    colours = np.array([[0, 0, 0, 0], [1, 0.2, 0.2, 0.35], [0.2, 0.5, 1, 0.35], [0.2, 1, 0.4, 0.35]])
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (score, row, pred, target) in zip(axes.ravel(), cases, strict=False):
        image = load_image(row.image)
        ax.imshow(image, cmap="gray")
        ax.imshow(colours[pred])
        ax.contour(np.isin(target, (2, 3)), levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(f"{row.id[:28]}\nlung J={score:.3f}", fontsize=7)
    fig.suptitle("Worst lung Jaccard: prediction (fill) vs reference lungs (yellow)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _ctr_groups(ctr: dict[str, float], rows: dict[str, ManifestRow]) -> dict[str, Any]:
    """CTR from our masks (finite values only), summarised per ``"source/label4"`` group and per label4 class."""
    groups: dict[str, list[float]] = defaultdict(list)
    for i, v in ctr.items():
        if np.isfinite(v):
            row = rows[i]
            groups[f"{row.source}/{row.label4}"].append(v)
            groups[f"all/{row.label4}"].append(v)
    return {k: summarize(v) for k, v in sorted(groups.items())}


def evaluate_segmentation(
    manifest: str | Path,
    out_dir: str | Path,
    *,
    segmentation: str | Path | torch.nn.Module = DEFAULT_SEGMENTATION,
    preprocessing: str = "model",
    split_file: str | Path | None = None,
    split: str | None = None,
    sources: Iterable[str] | None = None,
    task: str = "label4",
    undersegmentation: bool = True,
    worst: int = 12,
    limit: int | None = None,
    device: str | None = None,
    postprocess: bool | None = None,
) -> dict[str, Any]:
    """Evaluates a segmentation model on every selected manifest row with a mask.

    Over 80 lines for documenting its thirteen arguments and for the one dict that is ``metrics.json``; the work per
    image is :func:`_score_image`.

    Jaccard and Dice are computed at the mask's original resolution, per structure; a structure the mask source does
    not annotate (v7labs: no heart) is skipped for that image, never scored as a miss. References without a heart are
    also scored convention-aware (:data:`cxr_hub.evaluation.metrics.CONVENTION_AWARE_LUNG`).

    Args:
        manifest: manifest CSV or its folder; image and mask paths are relative to it.
        out_dir: destination of ``metrics.json``, ``per_image.csv`` and ``worst_cases.png`` (created).
        segmentation: model folder or Hub repo id (:func:`load_segmentation_model`), or a loaded model.
        preprocessing: ``"model"`` (the paper's, from the model's config) or ``"none"`` (min-max only; ablation).
        split_file: split JSON for ``split`` (:func:`cxr_hub.evaluation.selection.select_rows`).
        split: ``GROUP:NAME``, e.g. ``"segmentation:val"``.
        sources: only rows of these sources.
        task: the label column of the under-segmentation report ("label4" / "label3").
        undersegmentation: also segment labelled rows without masks for the under-segmentation report.
        worst: how many of the worst lung Jaccard images the PNG grid shows.
        limit: at most this many images, in manifest order (quick checks).
        device: "cpu" / "cuda" (default: CUDA when available).
        postprocess: score the predictions after :func:`cxr_hub.postprocessing.clean_label_map` (True) or as they
            come (False); None (default): as the pipeline does for this model
            (:func:`cxr_hub.postprocessing.uses_postprocessing` of its config). ``metrics["postprocessing"]`` says
            which (``applied``), how many pixels the clean-up changes, and the scores the other way
            (``scores_without`` when applied, ``scores_with`` when not).

    Returns:
        The metrics dict written to ``out_dir/metrics.json``.

    Raises:
        FileNotFoundError: the manifest or the model is missing.
        ValueError: nothing to evaluate, or a malformed split.
    """
    # everything that can fail on the arguments comes before the output folder exists: an error leaves nothing behind
    rows = select_rows(read_manifest(manifest), split_file, split, sources)
    scored = [r for r in rows if r.mask is not None]
    labelled = [r for r in rows if r.label(task)] if undersegmentation else []
    todo = {r.id: r for r in scored + labelled}
    if limit:
        todo = dict(list(todo.items())[:limit])
    if not todo:
        raise ValueError("No rows to evaluate: the selection has no images with masks (or labels).")
    model = segmentation if isinstance(segmentation, torch.nn.Module) else load_segmentation_model(segmentation, device)
    processor = segmentation_processor(model, preprocessing)
    if postprocess is None:
        postprocess = uses_postprocessing(model.config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tally = _Tally()
    for row in tqdm(list(todo.values()), desc="segmenting", unit="img"):
        _score_image(tally, model, processor, row, postprocess, worst)
    metrics: dict[str, Any] = {
        "n": len(tally.scores),
        **_mean_std(summarize_scores(tally.scores)),
        "by_source": {
            src: {"n": len(v), **_mean_std(summarize_scores(v))} for src, v in sorted(tally.by_source.items())
        },
        "model": str(segmentation) if not isinstance(segmentation, torch.nn.Module) else type(segmentation).__name__,
        "preprocessing": "paper (histogram equalisation + gamma 0.5)" if preprocessing == "model" else "none (min-max)",
        "resolution": "original mask resolution",
        "selection": {"manifest": str(manifest), "split": split, "sources": sorted(sources) if sources else None},
        "failures": tally.failures,
        "postprocessing": {
            "applied": bool(postprocess),
            # what the clean-up changes (applied or not: a model measured without it shows what it would do)
            "changed_share_of_labelled_pixels": summarize(tally.changed),
            "images_changed": int(sum(c > 0 for c in tally.changed)),
            ("scores_without" if postprocess else "scores_with"): _mean_std(summarize_scores(tally.other_scores)),
        },
        "ctr_agreement": ctr_agreement(tally.ctr_pairs),
        # summarize skips the images without the value (references with a heart) and NaN
        "heart_share_of_reference_lung": summarize([p.get("heart_share_of_reference_lung") for p in tally.per_image]),
        "ctr_predicted_by_source_and_label": _ctr_groups(tally.ctr_predicted, todo),
    }
    if undersegmentation and labelled:
        labels = {r.id: r.label(task) for r in labelled}
        metrics["undersegmentation"] = undersegmentation_report(
            {i: f for i, f in tally.lung_fraction.items() if i in labels}, labels
        )
        metrics["undersegmentation"]["lung_area_share"] = {
            cls: summarize([f for i, f in tally.lung_fraction.items() if labels.get(i) == cls])
            for cls in sorted(set(labels.values()))
        }
    _write_outputs(out, metrics, tally)
    return metrics


@dataclass
class _Tally:
    """What :func:`evaluate_segmentation` collects image by image."""

    per_image: list[dict[str, Any]] = field(default_factory=list)
    scores: list[dict[str, dict[str, float]]] = field(default_factory=list)
    by_source: dict[str, list[dict[str, dict[str, float]]]] = field(default_factory=lambda: defaultdict(list))
    lung_fraction: dict[str, float] = field(default_factory=dict)
    #: every image's CTR from our mask, annotated or not
    ctr_predicted: dict[str, float] = field(default_factory=dict)
    worst_cases: list[tuple[float, ManifestRow, np.ndarray, np.ndarray]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    changed: list[float] = field(default_factory=list)
    #: the other variant of the same inference: before the clean-up when it is applied, after it when it is not
    other_scores: list[dict[str, dict[str, float]]] = field(default_factory=list)
    ctr_pairs: list[tuple[float, float]] = field(default_factory=list)


def _score_image(
    tally: _Tally,
    model: torch.nn.Module,
    processor: CXRImageProcessor,
    row: ManifestRow,
    postprocess: bool,
    worst: int,
) -> None:
    """Segments one row's image and adds its scores (when it has a mask) and measurements to ``tally``."""
    try:
        image = load_image(row.image)
    except CXRInputError as exc:
        tally.failures.append({"id": row.id, "error": str(exc)})
        return
    raw = segment(model, processor, [image])[0]
    cleaned, report = clean_label_map(raw)
    tally.changed.append(report.changed_fraction)
    pred, other = (cleaned, raw) if postprocess else (raw, cleaned)
    tally.lung_fraction[row.id] = _lung_fraction(pred)
    tally.ctr_predicted[row.id] = float(cardiothoracic_ratio(pred)[0])
    if row.mask is None:
        return
    target = load_label_map(row.mask)
    if target.shape != pred.shape:
        tally.failures.append({"id": row.id, "error": f"mask {target.shape} differs from image {pred.shape}"})
        return
    structures = ["lung", *row.annotated_structures(target)]
    if "heart" not in structures:
        structures.append(CONVENTION_AWARE_LUNG)
    s = structure_scores(pred, target, structures)
    tally.scores.append(s)
    tally.by_source[row.source].append(s)
    tally.other_scores.append(structure_scores(other, target, structures))
    ctr = {}
    if "heart" not in structures:  # a reference without a heart (v7labs polygons include the lung behind it)
        ctr["heart_share_of_reference_lung"] = heart_share_of_lung(pred, target)
    if "heart" in structures:  # the reference has a heart: the CTR of our mask against the reference's
        ctr = {"ctr_predicted": cardiothoracic_ratio(pred)[0], "ctr_reference": cardiothoracic_ratio(target)[0]}
        if all(np.isfinite(v) for v in ctr.values()):
            tally.ctr_pairs.append((ctr["ctr_predicted"], ctr["ctr_reference"]))
    tally.per_image.append(
        {"id": row.id, "source": row.source, "mask_source": row.mask_source, "label4": row.label4}
        | {f"jaccard_{k}": round(v, 5) for k, v in s["jaccard"].items()}
        | {f"dice_{k}": round(v, 5) for k, v in s["dice"].items()}
        | {k: round(float(v), 5) for k, v in ctr.items()}
    )
    tally.worst_cases.append((s["jaccard"]["lung"], row, pred.astype(np.uint8), target))
    tally.worst_cases = sorted(tally.worst_cases, key=lambda c: c[0])[:worst]


def _mean_std(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    return {m: {k: {"mean": v["mean"], "std": v["std"], "n": v["n"]} for k, v in d.items()} for m, d in summary.items()}


def _write_outputs(out: Path, metrics: dict[str, Any], tally: _Tally) -> None:
    """Writes ``metrics.json``, ``per_image.csv`` (when an image was scored) and ``worst_cases.png``."""
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    if tally.per_image:
        with (out / "per_image.csv").open("w", newline="") as f:
            fields = sorted(
                {k for p in tally.per_image for k in p}, key=lambda k: (k.startswith(("jaccard", "dice")), k)
            )
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(tally.per_image)
    _worst_case_grid(tally.worst_cases, out / "worst_cases.png")
