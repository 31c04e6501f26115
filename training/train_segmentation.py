"""Train the lung/heart segmentation network: the paper's section II-B recipe, made to hold on other hospitals' films.

The paper's recipe: FC-DenseNet103 on the preprocessed 256x256 JSRT/SCR images (80 % train / 20 % validation by
patient), class-weighted cross-entropy over background / heart / left lung / right lung, Adam lr 1e-4, batch 2,
learning rate x0.1 when the training loss plateaus, early stopping on the validation score.

What this script adds for films from other hospitals (each a config field, so the paper's recipe stays one flag away):

- ``partial_labels``: the Cohen films with v7labs lung polygons of the *classification train split's* patients join
  the training set with partial labels (:mod:`training.losses`: inside a polygon that lung or heart, outside
  background or heart); the loss is ``-log`` of the summed probability of the allowed classes. These films show AP,
  supine and opacified lungs, which JSRT never does. The classification test split is never trained on;
- ``heart_atlas_margin``: on those films the heart is allowed only where the JSRT training hearts lie in the box of the
  lungs (dilated by this share of the box): without it the network may call the lower left lung heart at no cost;
- ``heart_share_limit`` / ``heart_share_weight``: and it may take at most about this share of a polygon's lung (a
  hinge penalty on the expected share, :func:`training.losses.heart_share_penalty`);
- ``augment="strong"`` (:mod:`training.augment`): rotation, scale, thorax crops, shift, mild elastic deformation,
  gamma, contrast, brightness, blur or unsharp masking, noise, JPEG re-encoding, downsample-upsample;
  ``augment="paper"`` is the previous mild affine + gamma jitter, ``"none"`` nothing;
- model selection on JSRT validation *and* the Cohen films of the classification validation split (convention-aware
  lung Jaccard: our lung plus our heart inside the polygon, against the polygon);
- ``init_from``: warm start from a saved folder of the same architecture (training continues across sessions).

Usage:
    python -m training.train_segmentation [--arch fcdensenet103|fcdensenet67|fcdensenet56|unet] [--epochs 100]
        [--max-minutes 90] [--init-from models/...] [--resume] [--config cfg.yaml] [--KEY VALUE ...]

Every field of ``SegTrainConfig`` is a CLI option. The run directory keeps ``last/`` (resume point) and ``best/``
(best validation Jaccard); the final model is exported as a complete Hub folder (``--out``) with
``save_pretrained``, its image processor, the final training config and a model card.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cxr_hub import FCDenseNetConfig, FCDenseNetForSemanticSegmentation, UNetConfig, UNetForSemanticSegmentation
from cxr_hub.evaluation.metrics import CONVENTION_AWARE_LUNG, heart_share_of_lung, structure_scores, summarize_scores
from cxr_hub.models import CXRImageProcessor, image_processor_for
from training.augment import augment_pair
from training.config import parse_dataclass_config
from training.data import random_affine
from training.losses import (
    allowed_from_labels,
    allowed_from_v7labs,
    heart_atlas,
    heart_share_penalty,
    partial_label_loss,
)
from training.runtime import autocast_dtype, out_of_budget, restore_training, save_training_state

SEG_ARCHS = ("fcdensenet103", "fcdensenet67", "fcdensenet56", "unet")
AUGMENTATIONS = ("strong", "paper", "none")
#: Bitmask value of pixels brought into a film by a geometric transform: background only (they are black).
_BACKGROUND_ONLY = 1


@dataclass
class SegTrainConfig:
    """Typed training config; every field is also a ``--field-name`` CLI option."""

    data: str | None = None  # data folder (else env CXR_DATA, else ../shared/data/cxr)
    split_file: str | None = None  # patient-level split JSON (default: training/splits/splits_seed0.json)
    arch: str = "fcdensenet103"  # "fcdensenet103", "fcdensenet67", "fcdensenet56" or "unet"
    run_dir: str = "runs/segmentation"  # checkpoints (best/, last/) and logs
    out: str | None = None  # Hub folder for the final model (default: models/cxr-lung-seg-<arch>)
    image_size: int = 256  # side of the network input (the paper: 256)
    preprocess: bool = True  # the paper's histogram equalisation + gamma 0.5
    epochs: int = 100  # at most this many epochs (early stopping may end sooner)
    batch_size: int = 2  # images per optimiser step
    lr: float = 1e-4  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay
    plateau_factor: float = 0.1  # lr multiplier when the training loss plateaus
    plateau_patience: int = 3  # epochs without training-loss improvement before lr x plateau_factor
    early_stopping_patience: int = 10  # epochs without validation-Jaccard improvement before stopping
    class_weights: str = "median_frequency"  # "median_frequency", "none" or comma-separated weights
    augment: str = "strong"  # "strong" (other hospitals), "paper" (mild affine + gamma) or "none"
    partial_labels: bool = True  # add the Cohen/v7labs films of the classification train split (partial labels)
    unknown_band: int = 1  # pixels either side of a v7labs polygon border left unconstrained (at image_size)
    # the heart of a v7labs film only where the JSRT training hearts are (more than heart_atlas_min_share of them), in
    # lung-box coordinates, dilated by heart_atlas_margin of the box (training.losses.heart_atlas); a negative margin
    # allows the heart anywhere (the first recipe)
    heart_atlas_margin: float = 0.03
    heart_atlas_min_share: float = 0.02  # see heart_atlas_margin
    # size constraint: weight x mean max(0, heart share of a polygon's lung - limit)
    # (training.losses.heart_share_penalty); weight 0 turns it off. The limit: on JSRT the heart covers 4 +/- 3 % of
    # the lungs' convex hulls (a stand-in for the polygons' lung); AP films magnify the heart
    heart_share_limit: float = 0.10
    heart_share_weight: float = 1.0  # see heart_share_limit
    init_from: str | None = None  # warm start: a saved folder of the same architecture
    base_channels: int = 64  # U-Net only: channels of the first level
    export_only: bool = False  # re-export run_dir/best with run_dir/training_config.json's summary, no training
    amp: str = "auto"  # "auto" (bf16 autocast where supported), "bf16", "fp16" (CUDA), "none"
    seed: int = 0  # seed of weights, sampling and augmentation
    max_minutes: float | None = None  # wall-clock budget: stop after the epoch that would overrun it
    max_steps_per_epoch: int | None = None  # cap on optimiser steps per epoch (smoke runs)
    num_threads: int | None = None  # torch CPU threads (default: torch's choice)
    device: str | None = None  # default: cuda when available, else cpu
    fp16_storage: bool = True  # store the exported weights in fp16 (they load as float32)
    cache_dir: str = "data_cache"  # where the preprocessed training images are cached
    notes: list[str] = field(default_factory=list)


def parse_config(argv: list[str] | None = None) -> tuple[SegTrainConfig, bool]:
    """Builds the config from defaults, an optional YAML file and CLI overrides (in that order)."""
    config, resume = parse_dataclass_config(SegTrainConfig, argv, __doc__.split("\n\n")[0])
    if config.arch not in SEG_ARCHS:
        raise SystemExit(f"--arch must be one of {SEG_ARCHS}, got {config.arch!r}")
    if config.augment not in AUGMENTATIONS:
        raise SystemExit(f"--augment must be one of {AUGMENTATIONS}, got {config.augment!r}")
    return config, resume


def model_class(arch: str) -> type[torch.nn.Module]:
    """The model class of ``arch``."""
    return UNetForSemanticSegmentation if arch == "unet" else FCDenseNetForSemanticSegmentation


def build_model(config: SegTrainConfig, class_weights: list[float]) -> torch.nn.Module:
    """A fresh segmentation model for ``config.arch``, or the ``init_from`` weights (warm start).

    Raises:
        SystemExit: ``init_from`` holds another architecture.
    """
    if config.init_from:
        model = model_class(config.arch).from_pretrained(config.init_from)
        preset = getattr(model.config, "preset", "unet")
        if preset != config.arch:
            raise SystemExit(f"--init-from {config.init_from} holds a {preset} model, not --arch {config.arch}.")
        model.config.class_weights = class_weights
        return model
    if config.arch == "unet":
        return UNetForSemanticSegmentation(
            UNetConfig(image_size=config.image_size, class_weights=class_weights, base_channels=config.base_channels)
        )
    return FCDenseNetForSemanticSegmentation(
        FCDenseNetConfig(preset=config.arch, image_size=config.image_size, class_weights=class_weights)
    )


def convention_aware_lung_jaccard(pred: np.ndarray, polygons: np.ndarray) -> float:
    """Convention-aware lung Jaccard (:data:`cxr_hub.evaluation.metrics.CONVENTION_AWARE_LUNG`); 1 when both empty."""
    j = structure_scores(pred, polygons, (CONVENTION_AWARE_LUNG,))["jaccard"][CONVENTION_AWARE_LUNG]
    return 1.0 if np.isnan(j) else j


def median_frequency_weights(labels: np.ndarray, num_classes: int = 4) -> list[float]:
    """Median-frequency class balancing (Eigen & Fergus): w_c = median(f) / f_c.

    f_c is the pixel share of class c over the images where c appears, so a class absent from some images is not
    penalised for it.
    """
    freqs = []
    for c in range(num_classes):
        present = (labels == c).reshape(len(labels), -1)
        images_with = present.any(1)
        if not images_with.any():
            freqs.append(float("nan"))
            continue
        freqs.append(present[images_with].sum() / (images_with.sum() * present.shape[1]))
    f = np.asarray(freqs)
    med = np.nanmedian(f)
    return [round(float(med / x), 4) if np.isfinite(x) and x > 0 else 1.0 for x in f]


def resolve_class_weights(config: SegTrainConfig, train_labels: np.ndarray) -> list[float]:
    """Class weights from the config's rule."""
    if config.class_weights == "median_frequency":
        return median_frequency_weights(train_labels)
    if config.class_weights == "none":
        return [1.0, 1.0, 1.0, 1.0]
    weights = [float(x) for x in config.class_weights.split(",")]
    if len(weights) != 4:
        raise SystemExit("--class-weights needs 4 comma-separated values (background, heart, left lung, right lung)")
    return weights


def to_pixel_values(images: np.ndarray, processor: CXRImageProcessor) -> torch.Tensor:
    """(N, H, W) float [0, 255] at the model's size → (N, 1, H, W) normalised by the model's image processor."""
    return torch.from_numpy(processor.normalize(images).astype(np.float32))[:, None]


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device, batch_size: int = 8
) -> dict[str, Any]:
    """Validation scores at the training resolution (fp32): per-structure Jaccard/Dice mean and std."""
    model.eval()
    processor = image_processor_for(model.config)
    scores = []
    for start in range(0, len(images), batch_size):
        x = to_pixel_values(images[start : start + batch_size], processor).to(device)
        pred = model(x).logits.argmax(1).cpu().numpy()
        for p, t in zip(pred, labels[start : start + batch_size], strict=True):
            scores.append(structure_scores(p, t))
    summary = summarize_scores(scores)
    jac = summary["jaccard"]
    summary["selection_jaccard"] = float(np.mean([jac[s]["mean"] for s in ("heart", "left_lung", "right_lung")]))
    return summary


@torch.inference_mode()
def evaluate_polygons(
    model: torch.nn.Module, images: np.ndarray, polygons: np.ndarray, device: torch.device, batch_size: int = 8
) -> dict[str, float]:
    """Convention-aware lung Jaccard (mean, std, n) on films with v7labs polygons, at the training resolution.

    ``heart_share`` is the mean share of polygon pixels labelled heart: the convention-aware score cannot see a heart
    that spreads over the lung, this number does (the true share, the lung behind the heart, is unknown but small).
    """
    model.eval()
    processor = image_processor_for(model.config)
    scores, heart = [], []
    for start in range(0, len(images), batch_size):
        x = to_pixel_values(images[start : start + batch_size], processor).to(device)
        pred = model(x).logits.argmax(1).cpu().numpy()
        refs = polygons[start : start + batch_size]
        scores += [convention_aware_lung_jaccard(p, t) for p, t in zip(pred, refs, strict=True)]
        for p, t in zip(pred, refs, strict=True):
            share = heart_share_of_lung(p, t)
            heart.append(0.0 if math.isnan(share) else share)
    return {
        "mean": float(np.mean(scores)),
        "std": float(np.std(scores)),
        "n": len(scores),
        "heart_share": float(np.mean(heart)),
    }


def train(
    config: SegTrainConfig,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    resume: bool = False,
    partial: tuple[np.ndarray, np.ndarray] | None = None,
    polygon_val: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Trains on in-memory arrays (images (N, S, S) float32 in [0, 255], labels (N, S, S) uint8).

    Writes ``run_dir/last`` every epoch (model + ``training_state.pt``) and ``run_dir/best`` on improvement.

    Args:
        config: the training config.
        train_images, train_labels: fully labelled training films (class ids 0..3).
        val_images, val_labels: fully labelled validation films.
        resume: continue from ``run_dir/last``.
        partial: (images, allowed-class bitmasks) of partially labelled training films
            (:func:`training.losses.allowed_from_v7labs`), or None.
        polygon_val: (images, v7labs polygon maps) scored by the convention-aware lung Jaccard; when given, the model
            is selected on the mean of the full-label selection Jaccard and that score.

    Returns:
        A summary: history per epoch, best epoch and its validation scores, the class weights and timing.
    """
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    class_weights = resolve_class_weights(config, train_labels)
    # every training film as allowed-class bitmasks: full labels allow one class, partial ones a set
    images_all, allowed_all = train_images, allowed_from_labels(train_labels)
    if partial is not None and len(partial[0]):
        images_all = np.concatenate([train_images, partial[0]])
        allowed_all = np.concatenate([allowed_all, partial[1]])
    model = build_model(config, class_weights).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
    )
    state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "history": [], "stale": 0}
    last_dir = run_dir / "last"
    if resume:
        state = restore_training(last_dir, model, optimizer, device, scheduler=scheduler, rng=rng)
    amp = autocast_dtype(config.amp, device)
    processor = image_processor_for(model.config)
    start_time = time.time()
    n = len(images_all)
    steps = math.ceil(n / config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    epochs_this_run = 0
    while state["epoch"] < config.epochs:
        epoch = state["epoch"] + 1
        epoch_start = time.time()
        model.train()
        order = rng.permutation(n)
        losses = []
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{config.epochs}", unit="step", leave=False)
        for step in bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            imgs, labs = images_all[idx], allowed_all[idx]
            if config.augment != "none":
                recipe = augment_pair if config.augment == "strong" else random_affine
                pairs = [recipe(i, lab, rng, fill_label=_BACKGROUND_ONLY) for i, lab in zip(imgs, labs, strict=True)]
                imgs = np.stack([p[0] for p in pairs])
                labs = np.stack([p[1] for p in pairs])
            x = to_pixel_values(imgs, processor).to(device)
            if device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(labs.astype(np.int64)).to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x).logits
            # the loss in fp32: bf16 log-softmax over 65k pixels loses precision
            loss = partial_label_loss(logits.float(), y, class_weights)
            if config.heart_share_weight > 0:
                loss = loss + config.heart_share_weight * heart_share_penalty(
                    logits.float(), y, config.heart_share_limit
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach().item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        train_loss = float(np.mean(losses))
        scheduler.step(train_loss)
        val = evaluate(model, val_images, val_labels, device)
        score = val["selection_jaccard"]
        if polygon_val is not None and len(polygon_val[0]):
            val["polygon_lung_jaccard"] = evaluate_polygons(model, *polygon_val, device)
            score = (score + val["polygon_lung_jaccard"]["mean"]) / 2
        record = {
            "epoch": epoch,
            "train_loss": round(train_loss, 5),
            "lr": optimizer.param_groups[0]["lr"],
            "val_jaccard_lung": round(val["jaccard"]["lung"]["mean"], 4),
            "val_jaccard_heart": round(val["jaccard"]["heart"]["mean"], 4),
            "val_selection_jaccard": round(val["selection_jaccard"], 4),
            # None without polygon films (NaN would make two identical histories compare unequal)
            "val_polygon_lung_jaccard": (
                round(val["polygon_lung_jaccard"]["mean"], 4) if "polygon_lung_jaccard" in val else None
            ),
            "val_polygon_heart_share": (
                round(val["polygon_lung_jaccard"]["heart_share"], 4) if "polygon_lung_jaccard" in val else None
            ),
            "val_score": round(score, 4),
            "seconds": round(time.time() - epoch_start, 1),
        }
        state["history"].append(record)
        tqdm.write(json.dumps(record))
        state["epoch"] = epoch
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch, stale=0, best_val=val)
            model.save_pretrained(run_dir / "best")
        else:
            state["stale"] += 1
        model.save_pretrained(last_dir)
        save_training_state(last_dir, optimizer, state, scheduler=scheduler, rng=rng)
        if state["stale"] >= config.early_stopping_patience:
            tqdm.write(f"early stopping: no validation improvement for {state['stale']} epochs")
            break
        epochs_this_run += 1
        if out_of_budget(start_time, epochs_this_run, config.max_minutes):
            tqdm.write(f"stopping: the {config.max_minutes}-minute budget would be exceeded by another epoch")
            break
    return {
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_validation": state.get("best_val"),
        "history": state["history"],
        "class_weights": class_weights,
        "device": str(device),
        "autocast": str(amp).replace("torch.", "") if amp else "none",
        "minutes": round((time.time() - start_time) / 60, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry: load data, split by patient, train, export the best model as a Hub folder."""
    from training.data import DEFAULT_SPLIT_FILE, load_or_create_splits, read_rows, rows_in_split, segmentation_arrays

    config, resume = parse_config(argv)
    if config.export_only:
        saved_file = Path(config.run_dir) / "training_config.json"
        summary = json.loads(saved_file.read_text())["summary"] if saved_file.is_file() else summary_from_state(config)
        summary["total_budget"] = total_budget(config, summary)  # the chain as it stands now (its folders may be new)
        out = export_best(config, summary)
        tqdm.write(f"re-exported {out} from {config.run_dir}/best (no training)")
        return 0
    root, rows = read_rows(config.data)
    all_splits = load_or_create_splits(rows, config.split_file or DEFAULT_SPLIT_FILE)
    splits = all_splits["segmentation"]
    train_rows, val_rows = rows_in_split(rows, splits, "train"), rows_in_split(rows, splits, "val")
    tqdm.write(f"data: {root} — {len(train_rows)} training and {len(val_rows)} validation images (JSRT/SCR)")
    cache = config.cache_dir
    train_x, train_y = segmentation_arrays(train_rows, config.image_size, config.preprocess, cache)
    val_x, val_y = segmentation_arrays(val_rows, config.image_size, config.preprocess, cache)
    partial, polygon_val, polygon_counts = None, None, {"train": 0, "val": 0}
    if config.partial_labels:
        # v7labs polygons of the classification split's train patients for training, its val patients for model
        # selection; its test patients stay unseen (they are the cross-database evaluation)
        poly = [r for r in rows if r.mask is not None and r.mask_source == "v7labs"]
        p_train = rows_in_split(poly, all_splits["classification"], "train")
        p_val = rows_in_split(poly, all_splits["classification"], "val")
        polygon_counts = {"train": len(p_train), "val": len(p_val)}
        tqdm.write(f"partial labels: {len(p_train)} Cohen/v7labs training films, {len(p_val)} for model selection")
        px, py = segmentation_arrays(p_train, config.image_size, config.preprocess, cache)
        atlas = (
            heart_atlas(train_y, margin=config.heart_atlas_margin, min_share=config.heart_atlas_min_share)
            if config.heart_atlas_margin >= 0
            else None
        )
        partial = (px, np.stack([allowed_from_v7labs(m, config.unknown_band, atlas) for m in py]))
        polygon_val = segmentation_arrays(p_val, config.image_size, config.preprocess, cache)
    summary = train(config, train_x, train_y, val_x, val_y, resume=resume, partial=partial, polygon_val=polygon_val)
    summary["data"] = {"jsrt_train": len(train_rows), "jsrt_val": len(val_rows), "polygons": polygon_counts}
    summary["total_budget"] = total_budget(config, summary)
    out = export_best(config, summary)
    tqdm.write(f"exported {out} (best epoch {summary['best_epoch']})")
    return 0


def heart_constraint(config: dict[str, Any]) -> str:
    """How a run constrained the heart on the partially labelled films, in a few words (a saved config's dict)."""
    if not config.get("partial_labels"):
        return "no partial labels"
    margin = config.get("heart_atlas_margin")
    if margin is None or margin < 0:
        return "heart allowed anywhere"
    text = "heart atlas"
    if config.get("heart_share_weight"):
        text += f" + at most {config.get('heart_share_limit', 0):.0%} of a polygon's lung"
    return text


def budget_text(summary: dict[str, Any]) -> str:
    """The training budget in words, with the warm-start chain's total when there is one."""
    text = (
        f"{summary['epochs_run']} epochs in {summary['minutes']} min on {summary['device']} "
        f"(autocast {summary['autocast']}); best epoch {summary['best_epoch']}"
    )
    total = summary.get("total_budget")
    if total and total["runs"] > 1:
        lrs = " then ".join(
            f"{st['epochs']} at lr {st['lr']:g}" + (f" ({st['heart']})" if st.get("heart") else "")
            for st in total["stages"]
        )
        text += (
            f"; total over {total['runs']} warm-started runs: {total['epochs']} epochs ({lrs}), {total['minutes']} min"
        )
    return text


AUGMENTATION_TEXT = {
    "strong": "rotation ±10°, scale 0.8–1.15 or thorax crop 1.15–1.45, shift ±8 %, mild elastic; gamma, contrast, "
    "brightness, blur or unsharp masking, noise, JPEG re-encoding, downsample-upsample (training/augment.py)",
    "paper": "random rotation ±10°, scale 0.9–1.1, shift ±6 %, gamma jitter",
    "none": "none",
}


def describe_training(config: dict[str, Any], data: dict[str, Any] | None = None) -> str:
    """How a model was trained, in words, from its saved config (older configs lack the newer fields).

    Args:
        config: ``dataclasses.asdict(SegTrainConfig)`` as saved in ``training_config.json``.
        data: image counts (``summary["data"]``), when recorded.
    """
    data = data or {}

    def n(key: str) -> str:
        return f"{data[key]} " if key in data else ""

    polygons = data.get("polygons", {})
    init = config.get("init_from")
    chain = "each run's learning rate, epochs, minutes and heart constraint are in `training_config.json`, " + (
        "summary.total_budget.stages"
    )
    if not init:
        start = "Trained from scratch"
    elif Path(init).parts[:1] == ("models",):
        start = f"Warm-started from `{init}` (an earlier run of this recipe; {chain})"
    else:  # a local run folder: name it, but say it does not ship
        start = (
            f"Warm-started from earlier runs of this recipe (the last one `{init}`, a local run folder that does not "
            f"ship; {chain})"
        )
    text = f"{start} on the {n('jsrt_train')}JSRT films of the segmentation train split with SCR heart and lung masks"
    if config.get("partial_labels"):
        text += (
            f", plus {polygons.get('train', 'the')} Cohen films with v7labs lung polygons of the classification train "
            "split as partial labels (inside a polygon: that lung or heart; outside: background or heart; "
            "`training/losses.py`)"
        )
        margin = config.get("heart_atlas_margin", -1.0)
        if margin is not None and margin >= 0:
            text += (
                ", the heart allowed there only where more than "
                f"{config.get('heart_atlas_min_share', 0.0):.0%} of the JSRT training hearts lie, mapped into each "
                f"film's lung box and dilated by {margin:.0%} of the box (`training.losses.heart_atlas`)"
            )
        if config.get("heart_share_weight"):
            text += (
                f", and penalised (weight {config['heart_share_weight']}) where it covers more than "
                f"{config.get('heart_share_limit', 0):.0%} of a polygon's lung (`training.losses.heart_share_penalty`)"
            )
    text += f"; model selection on the {n('jsrt_val')}held-out JSRT validation films"
    if config.get("partial_labels"):
        text += (
            f" and {polygons.get('val', 'the')} Cohen films of the classification validation split "
            "(convention-aware lung Jaccard)"
        )
    augment = {True: "paper", False: "none"}.get(config.get("augment"), config.get("augment"))
    return (
        text + f". Augmentation: {AUGMENTATION_TEXT.get(augment, augment)}. Split: `training/splits/splits_seed0.json`."
    )


def summary_from_state(config: SegTrainConfig) -> dict[str, Any]:
    """The run summary rebuilt from ``run_dir/last`` (a run whose export failed after training), with the image
    counts from the split file."""
    from training.data import DEFAULT_SPLIT_FILE, load_or_create_splits, read_rows, rows_in_split

    state = torch.load(Path(config.run_dir) / "last" / "training_state.pt", weights_only=True)["state"]
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = autocast_dtype(config.amp, device)
    best = model_class(config.arch).from_pretrained(Path(config.run_dir) / "best")
    _, rows = read_rows(config.data)
    splits = load_or_create_splits(rows, config.split_file or DEFAULT_SPLIT_FILE)
    poly = [r for r in rows if r.mask is not None and r.mask_source == "v7labs"]
    summary = {
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_validation": state.get("best_val"),
        "history": state["history"],
        "class_weights": list(best.config.class_weights),
        "device": str(device),
        "autocast": str(amp).replace("torch.", "") if amp else "none",
        "minutes": round(sum(h["seconds"] for h in state["history"]) / 60, 1),
        "data": {
            "jsrt_train": len(rows_in_split(rows, splits["segmentation"], "train")),
            "jsrt_val": len(rows_in_split(rows, splits["segmentation"], "val")),
            "polygons": {
                name: len(rows_in_split(poly, splits["classification"], name)) if config.partial_labels else 0
                for name in ("train", "val")
            },
        },
    }
    summary["total_budget"] = total_budget(config, summary)
    return summary


def total_budget(config: SegTrainConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Epochs and minutes of this run plus those of the warm-start chain behind it (read from the ``init_from``
    folder's ``training_config.json``), so a model trained across sessions states its whole budget.

    Returns:
        ``{"epochs", "minutes", "runs", "stages": [{"lr", "epochs", "minutes", "augment"}, ...]}``, oldest first.
    """
    stages: list[dict[str, Any]] = []
    if config.init_from:
        saved = Path(config.init_from) / "training_config.json"
        if saved.is_file():
            previous = json.loads(saved.read_text())
            before = previous["summary"].get("total_budget")
            # stages saved before the heart was recorded ran the recipe of that folder's config (no atlas yet)
            stages = (
                [{**st, "heart": st.get("heart") or heart_constraint(previous["config"])} for st in before["stages"]]
                if before
                else [
                    {
                        "lr": previous["config"]["lr"],
                        "epochs": previous["summary"]["epochs_run"],
                        "minutes": previous["summary"]["minutes"],
                        "augment": previous["config"].get("augment"),
                        "heart": heart_constraint(previous["config"]),
                    }
                ]
            )
    stages.append(
        {
            "lr": config.lr,
            "epochs": summary["epochs_run"],
            "minutes": summary["minutes"],
            "augment": config.augment,
            "heart": heart_constraint(dataclasses.asdict(config)),
        }
    )
    return {
        "epochs": sum(st["epochs"] for st in stages),
        "minutes": round(sum(st["minutes"] for st in stages), 1),
        "runs": len(stages),
        "stages": stages,
    }


def export_best(config: SegTrainConfig, summary: dict[str, Any]) -> Path:
    """Exports ``run_dir/best`` as a complete Hub folder (``config.out``) with the final training config beside it.

    The exported config asks the pipeline for the anatomical clean-up (``postprocessing="clean_label_map"``): every
    number measured for the model is measured with it.
    """
    from cxr_hub.hub import export_hub_folder
    from cxr_hub.postprocessing import POSTPROCESSING

    run_dir = Path(config.run_dir)
    best = model_class(config.arch).from_pretrained(run_dir / "best")
    best.config.postprocessing = POSTPROCESSING
    if not config.preprocess:
        config.notes.append("trained WITHOUT the paper's preprocessing (min-max scaling only)")
    out = Path(config.out or f"models/cxr-lung-seg-{config.arch}")
    processor = image_processor_for(best.config)
    if not config.preprocess:
        processor.do_equalize, processor.gamma = False, None
    training_info = {
        "description": describe_training(dataclasses.asdict(config), summary.get("data")),
        "architecture": config.arch,
        "budget": budget_text(summary),
        "optimiser": f"Adam lr {config.lr}, batch {config.batch_size}, lr x{config.plateau_factor} on plateau",
        "class_weights": summary["class_weights"],
    }
    export_hub_folder(
        best,
        out,
        image_processor=processor,
        training=training_info,
        model_name=out.name,
        dtype="float16" if config.fp16_storage else None,
    )
    final = {"config": dataclasses.asdict(config), "summary": summary}
    for folder in (run_dir, out):
        (folder / "training_config.json").write_text(json.dumps(final, indent=2, default=str) + "\n")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
