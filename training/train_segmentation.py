"""Train the lung/heart segmentation network (the paper's section II-B recipe by default).

FC-DenseNet103 on the preprocessed 256x256 JSRT/SCR images (80 % train / 20 % validation by patient),
class-weighted cross-entropy over background / heart / left lung / right lung, Adam lr 1e-4, batch 2, learning rate
x0.1 when the training loss plateaus, early stopping on the validation Jaccard.

Usage:
    python -m training.train_segmentation [--arch fcdensenet103|fcdensenet67|fcdensenet56|unet] [--epochs 100]
        [--max-minutes 90] [--resume] [--config cfg.yaml] [--KEY VALUE ...]

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
from cxr_hub.metrics import structure_scores, summarize_scores
from cxr_hub.models import CXRImageProcessor, image_processor_for, weighted_segmentation_loss
from training.config import parse_dataclass_config
from training.data import random_affine
from training.runtime import autocast_dtype, out_of_budget, restore_training, save_training_state

SEG_ARCHS = ("fcdensenet103", "fcdensenet67", "fcdensenet56", "unet")


@dataclass
class SegTrainConfig:
    """Typed training config; every field is also a ``--field-name`` CLI option."""

    data: str | None = None  # data folder (else env CXR_DATA, else ../shared/data/cxr)
    split_file: str | None = None  # patient-level split JSON (default: training/splits/splits_seed0.json)
    arch: str = "fcdensenet103"
    run_dir: str = "runs/segmentation"
    out: str | None = None  # Hub folder for the final model (default: models/cxr-lung-seg-<arch>)
    image_size: int = 256
    preprocess: bool = True  # the paper's histogram equalisation + gamma 0.5
    epochs: int = 100
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.0
    plateau_factor: float = 0.1
    plateau_patience: int = 3  # epochs without training-loss improvement before lr x plateau_factor
    early_stopping_patience: int = 10  # epochs without validation-Jaccard improvement before stopping
    class_weights: str = "median_frequency"  # "median_frequency", "none" or comma-separated weights
    augment: bool = True
    amp: str = "auto"  # "auto" (bf16 autocast where supported), "bf16", "fp16" (CUDA), "none"
    seed: int = 0
    max_minutes: float | None = None  # wall-clock budget: stop after the epoch that would overrun it
    max_steps_per_epoch: int | None = None
    num_threads: int | None = None
    device: str | None = None  # default: cuda when available, else cpu
    fp16_storage: bool = True  # store the exported weights in fp16 (they load as float32)
    cache_dir: str = "data_cache"
    notes: list[str] = field(default_factory=list)


def parse_config(argv: list[str] | None = None) -> tuple[SegTrainConfig, bool]:
    """Builds the config from defaults, an optional YAML file and CLI overrides (in that order)."""
    config, resume = parse_dataclass_config(SegTrainConfig, argv, __doc__.split("\n\n")[0])
    if config.arch not in SEG_ARCHS:
        raise SystemExit(f"--arch must be one of {SEG_ARCHS}, got {config.arch!r}")
    return config, resume


def build_model(config: SegTrainConfig, class_weights: list[float]) -> torch.nn.Module:
    """A fresh segmentation model for ``config.arch``."""
    if config.arch == "unet":
        return UNetForSemanticSegmentation(UNetConfig(image_size=config.image_size, class_weights=class_weights))
    return FCDenseNetForSemanticSegmentation(
        FCDenseNetConfig(preset=config.arch, image_size=config.image_size, class_weights=class_weights)
    )


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


def train(
    config: SegTrainConfig,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    resume: bool = False,
) -> dict[str, Any]:
    """Trains on in-memory arrays (images (N, S, S) float32 in [0, 255], labels (N, S, S) uint8).

    Writes ``run_dir/last`` every epoch (model + ``training_state.pt``) and ``run_dir/best`` on improvement.

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
    n = len(train_images)
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
            imgs, labs = train_images[idx], train_labels[idx]
            if config.augment:
                pairs = [random_affine(i, lab, rng) for i, lab in zip(imgs, labs, strict=True)]
                imgs = np.stack([p[0] for p in pairs])
                labs = np.stack([p[1] for p in pairs])
            x = to_pixel_values(imgs, processor).to(device)
            if device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(labs.astype(np.int64)).to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x).logits
            # the loss in fp32: bf16 log-softmax over 65k pixels loses precision
            loss = weighted_segmentation_loss(logits.float(), y, class_weights, model.config.semantic_loss_ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach().item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        train_loss = float(np.mean(losses))
        scheduler.step(train_loss)
        val = evaluate(model, val_images, val_labels, device)
        score = val["selection_jaccard"]
        record = {
            "epoch": epoch,
            "train_loss": round(train_loss, 5),
            "lr": optimizer.param_groups[0]["lr"],
            "val_jaccard_lung": round(val["jaccard"]["lung"]["mean"], 4),
            "val_jaccard_heart": round(val["jaccard"]["heart"]["mean"], 4),
            "val_selection_jaccard": round(score, 4),
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
    from cxr_hub.hub import export_hub_folder
    from cxr_hub.models import image_processor_for
    from training.data import DEFAULT_SPLIT_FILE, load_or_create_splits, read_rows, rows_in_split, segmentation_arrays

    config, resume = parse_config(argv)
    root, rows = read_rows(config.data)
    splits = load_or_create_splits(rows, config.split_file or DEFAULT_SPLIT_FILE)["segmentation"]
    train_rows, val_rows = rows_in_split(rows, splits, "train"), rows_in_split(rows, splits, "val")
    tqdm.write(f"data: {root} — {len(train_rows)} training and {len(val_rows)} validation images (JSRT/SCR)")
    cache = config.cache_dir
    train_x, train_y = segmentation_arrays(train_rows, config.image_size, config.preprocess, cache)
    val_x, val_y = segmentation_arrays(val_rows, config.image_size, config.preprocess, cache)
    summary = train(config, train_x, train_y, val_x, val_y, resume=resume)

    run_dir = Path(config.run_dir)
    cls = UNetForSemanticSegmentation if config.arch == "unet" else FCDenseNetForSemanticSegmentation
    best = cls.from_pretrained(run_dir / "best")
    if not config.preprocess:
        config.notes.append("trained WITHOUT the paper's preprocessing (min-max scaling only)")
    out = Path(config.out or f"models/cxr-lung-seg-{config.arch}")
    processor = image_processor_for(best.config)
    if not config.preprocess:
        processor.do_equalize, processor.gamma = False, None
    training_info = {
        "description": (
            f"Trained from scratch on {len(train_rows)} JSRT films with SCR heart/lung masks; "
            f"{len(val_rows)} held-out JSRT films (different patients) for model selection."
        ),
        "architecture": config.arch,
        "budget": f"{summary['epochs_run']} epochs in {summary['minutes']} min on {summary['device']} "
        f"(autocast {summary['autocast']}); best epoch {summary['best_epoch']}",
        "optimiser": f"Adam lr {config.lr}, batch {config.batch_size}, lr x{config.plateau_factor} on plateau",
        "class_weights": summary["class_weights"],
        "augmentation": "random rotation ±10°, scale 0.9–1.1, shift ±6 %, gamma jitter" if config.augment else "none",
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
    tqdm.write(f"exported {out} (best epoch {summary['best_epoch']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
