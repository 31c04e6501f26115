"""Train the patch-based (or global) chest X-ray classifier: the paper's section II-C recipe by default.

ResNet-18 on the preprocessed images resized to 1024x1024 and masked with the lungs that the shipped segmentation
model finds (computed once and cached, see ``training/classifier_data.py``).

* ``--mode patch`` (default): each step takes random 224x224 patches whose centres are drawn uniformly from the lung
  pixels with :func:`cxr_hub.patches.sample_patch_boxes` and cut with :func:`cxr_hub.patches.crop_patches` — the
  pipeline's own sampler and cropper, so training and inference patches follow one code path. Validation votes
  over ``val_patches`` patches per image with :func:`cxr_hub.patches.majority_vote`; the final test uses
  ``num_patches`` (K = 100).
* ``--mode global``: the whole masked frame resized to 224.

Defaults: Adam lr 1e-5 (constant; ``--lr-schedule cosine`` decays it), weight decay 1e-4, L1 penalty 1e-5 on the
convolution and linear weights, batch 16 patches, up to 100 epochs, early stopping on the validation macro F1,
class-balanced sampling, patient-level split shared with the other scripts. ImageNet weights are not reachable offline:
the default is training from scratch (the card says so); ``--pretrained imagenet`` loads timm's weights where there is
internet.

Usage:
    python -m training.train_classifier [--label-set label4|label3] [--mode patch|global] [--pack DIR]
        [--segmentation models/cxr-lung-seg-unet] [--epochs 100] [--max-minutes 8] [--resume]
        [--config cfg.yaml] [--KEY VALUE ...]

Every field of ``ClassifierTrainConfig`` is a CLI option; those that are :class:`PatchClassifierConfig` parameters
(``--label-set``, ``--patch-size``, ``--lung-masked``, ...) have its names and defaults and go into the exported
model's config as given. ``--task`` and ``--lung-mask/--no-lung-mask`` (and the keys ``task`` and ``lung_mask`` of a
``--config`` file) are the deprecated names of ``--label-set`` and ``--lung-masked``.

The run directory keeps ``last/`` (resume point) and ``best/`` (best validation macro F1); the best model is exported
as a Hub folder (``--out``, by default ``models/cxr-patch-resnet18`` for label4 patch, ``models/cxr-global-resnet18``
for label4 global and ``models/cxr-patch-resnet18-covidx`` for label3 patch) with fp16 safetensors, its image
processor, the test metrics, the final training config (``training_config.json``) and a model card.

Definitions:

* **Epoch**: as many draws as there are training images (``draws_per_epoch`` sets another number: the
  training-set-size ablation keeps the full set's steps per epoch on a subset). Each draw picks an image — with
  probability proportional to 1 / (its class's training count) under class-balanced sampling, so every class is
  drawn equally often — and cuts ``patches_per_image`` patches from it (default 1, so a batch of 16 patches comes
  from 16 draws; a larger P gives more patches per decoded image at the same batch size). Global mode: one whole
  image per draw.
* **Random streams**: the sampler of epoch e uses ``default_rng([seed, e, 0])``; the patches of image i in epoch e
  use ``default_rng([seed, e, 1, key(id_i)])`` (its own stream, independent of the draw order); augmentation of
  step s uses ``[seed, e, 2, s]``. A resumed run therefore continues with exactly the draws it would have made.
  Validation and test patches use ``default_rng(eval_seed)`` per image, so the validation patches are the same every
  epoch. Training and evaluation here draw with ``mode="joint"`` (what the shipped models were trained and
  scored with; see CHANGELOG.md for when the pipeline's default changed); the pipeline now draws the same
  distribution with ``mode="stable"`` (see :mod:`cxr_hub.patches`), so its patches for a given seed differ from these.
* **Normalisation**: as the pipeline: gray levels in [0, 255] with 0 outside the lungs, ``(x / 255 - mean) / std``
  with the config's ``image_mean`` / ``image_std``.
* **Augmentation** (``--augment``, training only): per patch a random gamma ``exp(U(-0.15, 0.15))`` and gain
  ``U(0.9, 1.1)`` on [0, 1] gray levels, clipped to [0, 1]. Both keep 0 at 0, so the lung mask (the outside's flat
  zero) is untouched. No flips: they would swap the patient's left and right.
* **L1 penalty**: ``l1 * sum(|w|)`` over the weights of every convolution and linear layer (biases and
  batch-norm parameters excluded: they carry no sparsity meaning), added to the cross-entropy.
* **Ablations** (``training/ablations.py``): ``train_fraction`` keeps a patient-level, class-stratified share of the
  training patients (nested across fractions); ``--no-lung-masked`` trains on the whole preprocessed frame (patch
  centres still lie in the lungs) and sets ``config.lung_masked = False`` so the pipeline feeds it unmasked frames.
* **Shortcut experiments** (#16): ``--source-balanced`` draws each collection of a class equally often;
  ``--scanner-augment P`` adds scanner-like degradations to a share P of the patches; ``--patch-center-margin M``
  draws patch centres at least M x patch side deep in the lung (saved in the model's config, which the pipeline
  follows), so patches show tissue rather than the lung outline; ``--hold-out-source S`` (leave-one-source-out)
  removes the normal films of collection S from training and validation and, after training, scores all of them
  (every split) in ``held_out_metrics.json`` and ``training_config.json["held_out"]``; such a run exports into its
  run directory unless ``--out`` is given. ``--source-adversary W`` trains an adversarial source head on the
  pooled features of ``--source-adversary-class`` patches (normals by default) behind a gradient reversal of weight W
  (``training/adversary.py``); per epoch the history records the head's loss and training accuracy.
* **Selection** (``--select``): by default the best epoch has the highest validation macro F1 (over the classes
  present in validation); ties go to the lower validation loss. ``--select loss`` takes the lowest validation loss,
  ``--select last`` the final epoch. Early stopping after ``early_stopping_patience`` epochs without a better epoch
  (not with ``last``). A finished run can be re-exported from its final epoch with ``--resume --select last``; the
  other two choices cannot be changed after training (only the chosen epoch's weights were kept).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cxr_hub import PatchClassifierConfig, PatchClassifierForImageClassification, patches
from cxr_hub.evaluation.classification_metrics import accuracy_by_group, classification_report
from cxr_hub.models import LABEL_SETS, MODES, CXRImageProcessor
from cxr_hub.presets import SHIPPED, repo_relative_folder
from training import adversary as adversary_lib
from training.augment import AugmentConfig, photometric
from training.classifier_data import (
    DEFAULT_SEGMENTATION,
    TASKS,
    ClassifierData,
    fraction_subset,
    global_frames,
    hold_out_source_normals,
)
from training.config import current_names, parse_dataclass_config
from training.runtime import autocast_dtype, out_of_budget, restore_training, save_training_state

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Default export folder per (label set, mode): the shipped model of that role (cxr_hub.presets.SHIPPED); a label3
#: global model does not ship, so it gets a folder of its own beside the others.
DEFAULT_OUT: dict[tuple[str, str], str] = {
    **{(m.label_set, m.role): repo_relative_folder(key) for key, m in SHIPPED.items() if m.label_set is not None},
    ("label3", "global"): "models/cxr-global-resnet18-covidx",
}
PRETRAINED = ("none", "imagenet")
#: The classifiers' card template (written for every cxr-hub classifier, patch and global).
CARD_TEMPLATE = REPO_ROOT / "model_cards" / "cxr-patch-resnet18.md"
MAX_EXPORT_MB = 25.0
DATA_SOURCES = (
    "JSRT digitised PA films (normal, non-nodule), the Cohen COVID-19 image data collection (COVID-19 and other "
    "viral, bacterial, normal; frontal views), NIH ChestX-ray14 (No Finding, Pneumonia)"
)
#: Training options renamed to the model config's names (#17): old name → name now. The old CLI options and YAML keys
#: still work, with a DeprecationWarning; saved ``training_config.json`` files (the shipped models') keep the old keys.
RENAMED: dict[str, str] = {"task": "label_set", "lung_mask": "lung_masked"}
#: The model config's parameters: a training option of the same name takes its default and is passed on to it.
MODEL_PARAMETERS = inspect.signature(PatchClassifierConfig.__init__).parameters


def _model_default(name: str) -> Any:
    """:class:`PatchClassifierConfig`'s default of ``name``, so a model option has its default in one place."""
    return MODEL_PARAMETERS[name].default


@dataclass
class ClassifierTrainConfig:
    """Typed training config; every field is also a ``--field-name`` CLI option.

    The fields named like a :class:`PatchClassifierConfig` parameter (``label_set``, ``mode``, ``backbone``, the
    frame and patch sizes, ``num_patches``, ``patch_center_margin``, the normalisation, ``drop_rate``, the
    preprocessing, ``lung_masked``) take its defaults and are its values in the trained model (:meth:`model_options`);
    the model config's docstring says what they mean.
    """

    # "label4" (normal, bacterial, tuberculosis, viral_covid) or "label3" (normal, pneumonia, covid)
    label_set: str = _model_default("label_set")
    mode: str = _model_default("mode")  # "patch" (random lung patches, majority vote) or "global" (whole masked image)
    data: str | None = None  # data folder (else env CXR_DATA, else ../shared/data/cxr)
    split_file: str | None = None  # patient-level split JSON (default: training/splits/splits_seed0.json)
    pack: str | None = None  # read a pack (training/pack_classifier_data.py) instead of the shared data
    segmentation: str = DEFAULT_SEGMENTATION  # lung masks come from this model (cached once)
    cache_dir: str = "data_cache"  # where the masked frames are cached (training/classifier_data.py)
    run_dir: str | None = None  # default: runs/classifier-<label_set>-<mode>
    out: str | None = None  # Hub folder for the best model (default: see DEFAULT_OUT)
    backbone: str = _model_default("backbone")  # timm architecture name
    pretrained: str = "none"  # "none": from scratch; "imagenet": timm weights (needs internet)
    image_size: int = _model_default("image_size")  # side of the masked frame patches are cut from
    patch_size: int = _model_default("patch_size")  # side of a patch cut from the masked frame, in pixels
    input_size: int = _model_default("input_size")  # side the network sees (a patch is resized to it)
    num_patches: int = _model_default("num_patches")  # K at test time
    val_patches: int = 25  # K for the per-epoch validation vote (CPU-friendly; the final test uses num_patches)
    patches_per_image: int = 1  # patches cut from each drawn image in a training step
    # patch centres at least this share of the patch side deep in the lung (saved in the model config, which the
    # pipeline follows); 0: anywhere in the lung (the paper)
    patch_center_margin: float = _model_default("patch_center_margin")
    draws_per_epoch: int | None = None  # image draws per epoch (default: the number of training images)
    train_fraction: float = 1.0  # share of each class's training patients (patient-level; the Fig. 12 ablation)
    # leave-one-source-out: the normal films of this source (e.g. jsrt, nih) are removed from training and
    # validation, and all of them (every split) are scored after training as films of a collection never seen
    hold_out_source: str | None = None
    # train on lung-masked frames (the paper); False: whole frames (the Table XVI ablation)
    lung_masked: bool = _model_default("lung_masked")
    gamma: float | None = _model_default("gamma")  # the paper's gamma correction after equalisation
    do_equalize: bool = _model_default("do_equalize")  # the paper's histogram equalisation
    image_mean: float = _model_default("image_mean")  # input normalisation: (x / 255 - mean) / std
    image_std: float = _model_default("image_std")  # see image_mean
    drop_rate: float = _model_default("drop_rate")  # dropout before the linear head
    epochs: int = 100  # at most this many epochs (early stopping may end sooner)
    batch_size: int = 16  # patches (patch mode) or images (global mode) per optimiser step
    lr: float = 1e-5  # Adam learning rate (the paper's)
    # "constant" (the paper) or "cosine": from epoch lr_decay_start + 1 the rate follows a half cosine down to
    # lr_min_factor x lr at the last epoch. A function of the epoch number only, so a resumed run gets the rates an
    # uninterrupted one would have had, and a constant-rate run can be continued with a decay (--resume).
    lr_schedule: str = "constant"
    lr_decay_start: int = 0  # last epoch at the full rate (cosine schedule)
    lr_min_factor: float = 0.01  # the cosine ends at this share of lr
    weight_decay: float = 1e-4  # Adam weight decay
    l1: float = 1e-5  # L1 penalty weight on convolution and linear weights (0: off)
    balanced_sampling: bool = True  # every class drawn equally often
    # within each class, every source (collection) drawn equally often: a class whose films come mostly from one
    # collection no longer teaches that collection's look (only with balanced_sampling)
    source_balanced: bool = False
    # adversarial source head (training/adversary.py): a head learns the collection of the patches of one class from
    # the pooled features and a gradient reversal of this weight pushes the backbone against it (0: off); the weight
    # ramps up linearly over the first source_adversary_ramp epochs
    source_adversary: float = 0.0
    source_adversary_class: str = "normal"  # the class whose patches the source head sees
    source_adversary_ramp: int = 5  # epochs over which the reversal weight ramps up from 0
    early_stopping_patience: int = 20  # epochs without a better validation macro F1 (or loss, with select="loss")
    # which checkpoint is tested and exported: "macro_f1" (the best validation macro F1, ties to the lower loss; the
    # paper's way), "loss" (the lowest validation loss of the vote: smoother when a class has a handful of validation
    # films) or "last" (the final epoch, e.g. at the end of a cosine decay; no early stopping)
    select: str = "macro_f1"
    augment: bool = True  # geometric and photometric patch augmentation
    # share of training patches that also get the scanner augmentation (blur or unsharp masking, noise, JPEG
    # re-encoding, downsample-upsample: what the histogram equalisation leaves of another scanner; scanner_augment)
    scanner_augment: float = 0.0
    amp: str = "auto"  # "auto" (bf16 autocast where native), "bf16", "fp16" (CUDA), "none"
    seed: int = 0  # seed of weights, sampling and augmentation
    eval_seed: int = 0  # seed of the validation / test patch sampler (the pipeline's seed)
    eval_chunk: int = 256  # patches per forward pass at evaluation
    n_boot: int = 1000  # bootstrap resamples for the test CIs
    test_eval: bool = True  # score the best model on the test split and put the numbers in the card
    max_minutes: float | None = None  # wall-clock budget: stop after the epoch that would overrun it
    max_steps_per_epoch: int | None = None  # cap on optimiser steps per epoch (smoke runs)
    limit: int | None = None  # at most this many images per split (smoke runs)
    overfit_one_batch: bool = False  # sanity check: every step reuses the first batch (no new draws)
    num_threads: int | None = None  # torch CPU threads (default: torch's choice)
    device: str | None = None  # default: cuda when available, else cpu
    fp16_storage: bool = True  # store the exported weights in fp16 (they load as float32)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_saved(cls, values: Mapping[str, Any]) -> ClassifierTrainConfig:
        """The config a run saved (``training_config.json["config"]``), old option names included.

        Files written before the rename (the shipped models' among them) keep the old names (``task``, ``lung_mask``):
        they are read without a warning. Options a file predates take today's defaults.

        Raises:
            ValueError: a key that is no option (any more), or an old and a current name with different values.
        """
        values = current_names(values, RENAMED, warn=False)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Not options of {cls.__name__}: {sorted(unknown)}")
        return cls(**values)

    def model_options(self) -> dict[str, Any]:
        """The options that are :class:`PatchClassifierConfig` parameters, by name (what :func:`build_model` passes)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in MODEL_PARAMETERS}

    def resolved_run_dir(self) -> Path:
        """The run directory (default ``runs/classifier-<label_set>-<mode>``)."""
        return Path(self.run_dir or f"runs/classifier-{self.label_set}-{self.mode}")

    def resolved_out(self) -> Path:
        """The export folder (default from :data:`DEFAULT_OUT`; a held-out-source run exports into its run dir)."""
        if self.out:
            return Path(self.out)
        if self.hold_out_source:
            return self.resolved_run_dir() / "export"  # an experiment never replaces a shipped model by default
        return Path(DEFAULT_OUT[(self.label_set, self.mode)])


LR_SCHEDULES = ("constant", "cosine")
SELECTIONS = ("macro_f1", "loss", "last")


def epoch_lr(config: ClassifierTrainConfig, epoch: int) -> float:
    """The learning rate of a (1-based) epoch under ``config.lr_schedule``.

    Returns:
        ``config.lr`` up to epoch ``lr_decay_start`` (and always for "constant"), then a half cosine that reaches
        ``lr_min_factor * lr`` at epoch ``config.epochs``.
    """
    if config.lr_schedule == "constant" or epoch <= config.lr_decay_start:
        return config.lr
    span = max(1, config.epochs - config.lr_decay_start)
    progress = min(1.0, (epoch - config.lr_decay_start) / span)
    low = config.lr * config.lr_min_factor
    return low + (config.lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def parse_config(argv: list[str] | None = None) -> tuple[ClassifierTrainConfig, bool]:
    """Builds the config from defaults, an optional YAML file and CLI overrides (in that order)."""
    config, resume = parse_dataclass_config(ClassifierTrainConfig, argv, __doc__.split("\n\n")[0], renamed=RENAMED)
    checks = {
        "label-set": (config.label_set, TASKS),
        "mode": (config.mode, MODES),
        "pretrained": (config.pretrained, PRETRAINED),
        "lr-schedule": (config.lr_schedule, LR_SCHEDULES),
        "select": (config.select, SELECTIONS),
    }
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise SystemExit(f"--{key} must be one of {allowed}, got {value!r}")
    if config.patches_per_image < 1 or config.batch_size < 1:
        raise SystemExit("--patches-per-image and --batch-size must be at least 1")
    if config.draws_per_epoch is not None and config.draws_per_epoch < 1:
        raise SystemExit("--draws-per-epoch must be at least 1")
    if not 0.0 < config.train_fraction <= 1.0:
        raise SystemExit(f"--train-fraction must be in (0, 1], got {config.train_fraction}")
    if config.lr_decay_start < 0 or not 0.0 <= config.lr_min_factor <= 1.0:
        raise SystemExit(
            f"--lr-decay-start must be >= 0 and --lr-min-factor in [0, 1], got {config.lr_decay_start} and "
            f"{config.lr_min_factor}"
        )
    if config.source_adversary < 0 or config.source_adversary_ramp < 0:
        raise SystemExit(
            f"--source-adversary and --source-adversary-ramp must be >= 0, got {config.source_adversary} and "
            f"{config.source_adversary_ramp}"
        )
    if config.source_adversary_class not in LABEL_SETS[config.label_set]:
        raise SystemExit(
            f"--source-adversary-class must be a class of --label-set {config.label_set} "
            f"{list(LABEL_SETS[config.label_set])}, got {config.source_adversary_class!r}"
        )
    if not 0.0 <= config.patch_center_margin <= 0.5:
        raise SystemExit(
            f"--patch-center-margin must be in [0, 0.5] (a share of the patch side), got {config.patch_center_margin}"
        )
    return config, resume


def trained_classes(data: ClassifierData) -> list[str]:
    """Classes with at least one training image (e.g. no tuberculosis in the project's data)."""
    return [c for c, n in data.class_counts().items() if n > 0]


def build_model(
    config: ClassifierTrainConfig, trained: list[str], load_pretrained: bool = True
) -> PatchClassifierForImageClassification:
    """A fresh classifier; every class of the label set stays in the head, ``trained_classes`` lists the learnt ones.

    Args:
        config: the training config (its :meth:`~ClassifierTrainConfig.model_options` and ``pretrained``).
        trained: classes with training images.
        load_pretrained: load ImageNet weights when ``config.pretrained == "imagenet"`` (False when resuming: the
            checkpoint replaces them anyway, and a resume should not need the network).

    Raises:
        SystemExit: ImageNet weights were asked for and cannot be loaded (no internet), with what to do instead.
    """
    model_config = PatchClassifierConfig(**config.model_options(), trained_classes=trained)
    model = PatchClassifierForImageClassification(model_config)
    if config.pretrained == "imagenet" and load_pretrained:
        try:
            model.load_imagenet_weights()
        except Exception as exc:  # network, cache or hub errors all mean the same thing here
            raise SystemExit(
                f"--pretrained imagenet: could not load {model_config.pretrained_source!r} ({exc}). ImageNet weights "
                "need internet or a warm Hugging Face cache; use --pretrained none to train from scratch."
            ) from exc
    return model


def class_balanced_probabilities(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Sampling probability of each image ∝ 1 / (its class's count), so each present class is drawn equally often.

    Returns:
        float64 (N,) probabilities summing to 1.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = 1.0 / counts[labels]
    return weights / weights.sum()


def class_source_balanced_probabilities(labels: np.ndarray, sources: Sequence[str], num_classes: int) -> np.ndarray:
    """Sampling probability ∝ 1 / (classes present × sources of the image's class × images of its class and source).

    Each present class is drawn equally often (as :func:`class_balanced_probabilities`), and within a class each
    source equally often: 19 Cohen normals weigh as much as 300 NIH normals.

    Returns:
        float64 (N,) probabilities summing to 1.
    """
    pairs = list(zip(labels.tolist(), sources, strict=True))
    counts: dict[tuple[int, str], int] = {}
    for pair in pairs:
        counts[pair] = counts.get(pair, 0) + 1
    per_class = np.bincount([c for c, _ in counts], minlength=num_classes)  # sources per class
    weights = np.array([1.0 / (per_class[c] * counts[(c, s)]) for c, s in pairs])
    return weights / weights.sum()


#: The scanner part of the segmentation augmentation (training/augment.py): no gamma, contrast or brightness, which
#: the histogram equalisation of the preprocessing removes anyway; blur or unsharp masking, noise, JPEG, resampling.
SCANNER_AUGMENT = AugmentConfig(
    max_gamma=0.0,
    contrast=(1.0, 1.0),
    brightness=0.0,
    p_blur=0.3,
    p_sharpen=0.3,
    p_noise=0.4,
    p_jpeg=0.4,
    p_resample=0.4,
    resample_factor=(0.35, 0.8),
)


def scanner_augment(x01: torch.Tensor, inside: torch.Tensor, gen: np.random.Generator, share: float) -> torch.Tensor:
    """The scanner augmentation on a random ``share`` of the samples, the lung mask re-applied afterwards.

    Args:
        x01: (B, 1, S, S) gray levels in [0, 1], 0 outside the lungs.
        inside: (B, 1, S, S) bool, the lungs (what stays non-zero).
        gen: random generator.
        share: probability per sample (0: unchanged).

    Returns:
        (B, 1, S, S) in [0, 1].
    """
    chosen = np.flatnonzero(gen.random(x01.shape[0]) < share)
    if chosen.size == 0:
        return x01
    out = x01.clone()
    for b in chosen:
        img = (x01[b, 0].float().cpu().numpy() * 255.0).astype(np.float32)
        aug = torch.from_numpy(photometric(img, gen, SCANNER_AUGMENT) / 255.0).to(x01.device, x01.dtype)
        out[b, 0] = torch.where(inside[b, 0], aug, torch.zeros_like(aug))
    return out


def l1_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Weights of every convolution and linear layer (the L1 penalty's parameters)."""
    return [
        m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.weight is not None
    ]


def id_key(image_id: str) -> int:
    """A stable 32-bit integer of an image id (its random stream key; Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:4], "little")


def jitter(x: torch.Tensor, gen: np.random.Generator) -> torch.Tensor:
    """Random gamma exp(U(-0.15, 0.15)) and gain U(0.9, 1.1) per sample on [0, 1] gray levels; keeps 0 at 0.

    Args:
        x: (B, 1, S, S) gray levels in [0, 1].
        gen: random generator.

    Returns:
        (B, 1, S, S) in [0, 1].
    """
    b = x.shape[0]
    gamma = torch.from_numpy(np.exp(gen.uniform(-0.15, 0.15, b))).to(x.device, x.dtype).view(b, 1, 1, 1)
    gain = torch.from_numpy(gen.uniform(0.9, 1.1, b)).to(x.device, x.dtype).view(b, 1, 1, 1)
    return (x.clamp(0, 1).pow(gamma) * gain).clamp(0, 1)


class InputMaker:
    """Turns images of a :class:`ClassifierData` into normalised network inputs on the device.

    Patch mode keeps the uint8 masked frames on the device and cuts patches there; global mode keeps the resized
    whole frames.
    """

    def __init__(self, data: ClassifierData, config: ClassifierTrainConfig, device: torch.device) -> None:
        self.data = data
        self.config = config
        self.device = device
        self.masks: torch.Tensor | None = None  # the lung masks on the device, once scanner_augment asks for them
        self.margin = round(config.patch_center_margin * config.patch_size)
        self.regions: dict[int, np.ndarray] = {}  # where patch centres may lie, per image (margin > 0 only)
        # the pipeline's normalisation (the processor the exported model ships with computes the same)
        self.processor = CXRImageProcessor(image_mean=config.image_mean, image_std=config.image_std)
        if config.mode == "patch":
            if data.image_size != config.image_size:
                raise ValueError(f"Frames are {data.image_size} px but config.image_size is {config.image_size}.")
            self.frames = torch.from_numpy(data.frames).to(device)
        else:
            self.frames = torch.from_numpy(global_frames(data, config.input_size, config.lung_masked)).to(device)

    def patch_boxes(self, i: int, k: int, rng: np.random.Generator) -> np.ndarray:
        """(k, 4) patch boxes of image i from the pipeline's sampler (centres uniform over the lung pixels, or over
        those deeper than the centre margin, as :func:`cxr_hub.patches.patch_center_region` and the pipeline)."""
        region = self.data.masks[i]
        if self.margin:
            if i not in self.regions:
                self.regions[i] = patches.patch_center_region(region, self.margin)
            region = self.regions[i]
        _, boxes = patches.sample_patch_boxes(region, k, self.config.patch_size, rng)
        return boxes

    def patches01(self, i: int, boxes: np.ndarray) -> torch.Tensor:
        """(k, 1, s, s) patches of image i in [0, 1] gray levels, cut with the pipeline's cropper."""
        return patches.crop_patches(self.frames[i], boxes, self.config.input_size) / 255.0

    def patch_masks(self, i: int, boxes: np.ndarray) -> torch.Tensor:
        """(k, 1, s, s) bool lung masks of the patches :meth:`patches01` cuts with the same boxes."""
        if self.masks is None:
            self.masks = torch.from_numpy(self.data.masks).to(self.device)
        return patches.crop_patches(self.masks[i].to(torch.uint8), boxes, self.config.input_size) > 0

    def whole01(self, index: np.ndarray | list[int]) -> torch.Tensor:
        """(n, 1, s, s) whole masked frames (global mode) in [0, 1]."""
        return self.frames[torch.as_tensor(np.asarray(index), device=self.device)][:, None] / 255.0

    def finish(self, x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] gray levels → normalised input in channels_last."""
        x = self.processor.normalize(x01 * 255.0)
        return x.contiguous(memory_format=torch.channels_last)


def epoch_draws(maker: InputMaker, config: ClassifierTrainConfig, epoch: int) -> list[tuple[int, np.ndarray | None]]:
    """The draws of one epoch: ``(image index, (P, 4) patch boxes or None in global mode)`` in step order."""
    data = maker.data
    n = len(data)
    size = config.draws_per_epoch or n
    sampler = np.random.default_rng([config.seed, epoch, 0])
    if config.balanced_sampling:
        p = (
            class_source_balanced_probabilities(data.labels, data.sources, len(data.class_names))
            if config.source_balanced
            else class_balanced_probabilities(data.labels, len(data.class_names))
        )
        order = sampler.choice(n, size=size, replace=True, p=p)
    else:
        order = np.concatenate([sampler.permutation(n) for _ in range(math.ceil(size / n))])[:size]
    if config.mode == "global":
        return [(int(i), None) for i in order]
    p = config.patches_per_image
    counts = np.bincount(order, minlength=n)
    boxes: dict[int, np.ndarray] = {}
    for i in np.flatnonzero(counts):
        # one sampler call per image and epoch, from the image's own stream: independent of the draw order
        rng = np.random.default_rng([config.seed, epoch, 1, id_key(data.ids[i])])
        boxes[int(i)] = maker.patch_boxes(int(i), int(counts[i]) * p, rng).reshape(int(counts[i]), p, 4)
    used = np.zeros(n, dtype=np.int64)
    draws = []
    for i in order:
        draws.append((int(i), boxes[int(i)][used[i]]))
        used[i] += 1
    return draws


def make_batch(
    maker: InputMaker, draws: list[tuple[int, np.ndarray | None]], augment_rng: np.random.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised inputs (B, 1, s, s) and int64 labels (B,) of some draws; augmented when a generator is given."""
    labels = maker.data.labels
    if maker.config.mode == "global":
        idx = [i for i, _ in draws]
        x01 = maker.whole01(idx)
        y = labels[idx]
    else:
        x01 = torch.cat([maker.patches01(i, b) for i, b in draws])
        y = np.concatenate([np.full(len(b), labels[i]) for i, b in draws])
    if augment_rng is not None:
        x01 = jitter(x01, augment_rng)
        share = maker.config.scanner_augment
        if share > 0 and maker.config.mode == "patch":
            inside = torch.cat([maker.patch_masks(i, b) for i, b in draws])
            x01 = scanner_augment(x01, inside, augment_rng, share)
    return maker.finish(x01), torch.as_tensor(y, dtype=torch.long, device=maker.device)


def draw_values(values: np.ndarray, draws: list[tuple[int, np.ndarray | None]]) -> np.ndarray:
    """Per sample of the batch :func:`make_batch` makes from ``draws``: the value of its image (repeated per patch)."""
    return np.concatenate([np.full(1 if b is None else len(b), values[i]) for i, b in draws])


def build_adversary(
    config: ClassifierTrainConfig, data: ClassifierData, num_features: int
) -> tuple[adversary_lib.SourceAdversary, np.ndarray] | None:
    """The source head of ``--source-adversary`` and each training image's source target (-1: not seen), or None.

    Raises:
        SystemExit: fewer than two sources among the training images of the head's class.
    """
    if config.source_adversary <= 0:
        return None
    index = data.class_names.index(config.source_adversary_class)
    sources = adversary_lib.adversary_sources(data.labels, data.sources, index)
    if len(sources) < 2:
        raise SystemExit(
            f"--source-adversary: the training {config.source_adversary_class} images come from {sources}; the head "
            "needs two sources or more to tell apart (choose another --source-adversary-class or leave it off)"
        )
    head = adversary_lib.SourceAdversary(num_features, sources)
    return head, adversary_lib.source_targets(data.labels, data.sources, index, sources)


def _autocast(device: torch.device, amp: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)


@torch.inference_mode()
def predict(
    model: PatchClassifierForImageClassification,
    maker: InputMaker,
    k: int,
    seed: int,
    amp: torch.dtype | None = None,
    chunk: int = 256,
) -> dict[str, Any]:
    """Image-level predictions: majority vote over k patches (patch mode) or argmax (global mode).

    Patch mode draws each image's patches with ``default_rng(seed)`` and ``mode="joint"``, as
    ``CXRPipeline(sampling="joint").analyze(seed=seed)`` does.

    Returns:
        ``{"pred": int64 (N,), "probs": float32 (N, C) mean patch probabilities, "loss": mean cross-entropy over
        patches (or images)}``.
    """
    model.eval()
    data, device = maker.data, maker.device
    n, c = len(data), len(data.class_names)
    pred = np.zeros(n, dtype=np.int64)
    probs = np.zeros((n, c), dtype=np.float32)
    loss_sum, loss_n = 0.0, 0
    if maker.config.mode == "global":
        for start in range(0, n, chunk):
            idx = list(range(start, min(n, start + chunk)))
            x = maker.finish(maker.whole01(idx))
            y = torch.as_tensor(data.labels[idx], device=device)
            with _autocast(device, amp):
                logits = model(x).logits.float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            loss_n += len(idx)
            p = torch.softmax(logits, -1).cpu().numpy()
            probs[idx], pred[idx] = p, p.argmax(1)
        return {"pred": pred, "probs": probs, "loss": loss_sum / max(loss_n, 1)}
    for i in range(n):
        boxes = maker.patch_boxes(i, k, np.random.default_rng(seed))
        chunks = []
        for start in range(0, k, chunk):
            x = maker.finish(maker.patches01(i, boxes[start : start + chunk]))
            with _autocast(device, amp):
                chunks.append(model(x).logits.float())
        logits = torch.cat(chunks)
        y = torch.full((k,), int(data.labels[i]), device=device)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        loss_n += k
        p = torch.softmax(logits, -1)
        pred[i], _ = patches.majority_vote(p)
        probs[i] = p.mean(0).cpu().numpy()
    return {"pred": pred, "probs": probs, "loss": loss_sum / max(loss_n, 1)}


def score(
    data: ClassifierData, pred: np.ndarray, n_boot: int = 0, seed: int = 0, untrained: list[str] | None = None
) -> dict[str, Any]:
    """Classification report of image-level predictions (macro over classes present in ``data``)."""
    names = data.class_names
    y_true, y_pred = data.label_names(), [names[i] for i in pred]
    report = classification_report(
        y_true,
        y_pred,
        names,
        data.patients if n_boot else None,
        n_boot=max(n_boot, 1),
        seed=seed,
        untrained=untrained or [],
    )
    report["accuracy_by_source"] = accuracy_by_group(y_true, y_pred, data.sources)
    return report


def train(
    config: ClassifierTrainConfig, train_data: ClassifierData, val_data: ClassifierData, resume: bool = False
) -> dict[str, Any]:
    """Trains on in-memory data; writes ``run_dir/last`` every epoch and ``run_dir/best`` on improvement.

    Args:
        config: the training config.
        train_data: training images (uint8 masked frames and masks).
        val_data: validation images (at least one).
        resume: continue from ``run_dir/last``.

    Returns:
        A summary: per-epoch history, best epoch and its validation report, trained classes, device and timing.
    """
    if len(train_data) == 0 or len(val_data) == 0:
        raise SystemExit(f"Need training and validation images, got {len(train_data)} and {len(val_data)}.")
    run_dir = config.resolved_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    trained = trained_classes(train_data)
    model = build_model(config, trained, load_pretrained=not resume).to(device).to(memory_format=torch.channels_last)
    built = build_adversary(config, train_data, model.num_features)  # after the model: its seeded weights stay
    adversary, adversary_targets = (built[0].to(device), built[1]) if built else (None, None)
    params = list(model.parameters()) + (list(adversary.parameters()) if adversary is not None else [])
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": -1, "history": [], "stale": 0}
    last_dir = run_dir / "last"
    if resume:
        if adversary is None and (last_dir / adversary_lib.ADVERSARY_FILE).is_file():
            raise SystemExit(
                f"--resume: {last_dir} was trained with an adversarial source head; resume with its "
                "--source-adversary (training_config.json has it), or start a new --run-dir"
            )
        if adversary is not None:
            adversary_lib.load_adversary(last_dir, adversary)
        state = restore_training(last_dir, model, optimizer, device)
        chosen_by = state.get("select", "macro_f1")  # runs saved before --select existed chose by macro F1
        if chosen_by != config.select and config.select != "last":
            raise SystemExit(
                f"--select {config.select}: this run's best/ was chosen by {chosen_by} and the other epochs' weights "
                f"were not kept; resume with --select {chosen_by}, or --select last (the final epoch, in last/)"
            )
    state["select"] = config.select
    amp = autocast_dtype(config.amp, device)
    l1_params = l1_parameters(model)
    train_maker = InputMaker(train_data, config, device)
    val_maker = InputMaker(val_data, config, device)
    untrained = [c for c in train_data.class_names if c not in trained]
    images_per_step = (
        max(1, config.batch_size // config.patches_per_image) if config.mode == "patch" else config.batch_size
    )
    steps = math.ceil((config.draws_per_epoch or len(train_data)) / images_per_step)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    fixed: tuple[torch.Tensor, torch.Tensor] | None = None

    start_time = time.time()
    epochs_this_run = 0
    # Wall-clock minutes of the earlier runs of a resumed training, so the summary states the whole budget. States saved
    # before this field existed stand for their runs with the epochs' own seconds (a slight undercount: no start-up).
    minutes_before = state.get("minutes_total", sum(r.get("seconds", 0.0) for r in state["history"]) / 60)
    while state["epoch"] < config.epochs:
        epoch = state["epoch"] + 1
        epoch_start = time.time()
        for group in optimizer.param_groups:  # set every epoch: a resumed optimiser state carries its last rate
            group["lr"] = epoch_lr(config, epoch)
        model.train()
        draws = epoch_draws(train_maker, config, epoch)
        ce_losses, l1_losses, adv_losses = [], [], []
        adv_correct = adv_seen = 0
        adv_weight = adversary_lib.adversary_weight(config.source_adversary, config.source_adversary_ramp, epoch)
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{config.epochs}", unit="step", leave=False)
        for step in bar:
            if fixed is None or not config.overfit_one_batch:
                aug = np.random.default_rng([config.seed, epoch, 2, step]) if config.augment else None
                step_draws = draws[step * images_per_step : (step + 1) * images_per_step]
                x, y = make_batch(train_maker, step_draws, aug)
                t = (
                    torch.as_tensor(draw_values(adversary_targets, step_draws), device=device)
                    if adversary_targets is not None
                    else None
                )
                batch = (x, y, t)
                fixed = batch if config.overfit_one_batch else None
            x, y, t = fixed if fixed is not None else batch
            with _autocast(device, amp):
                out = model(x, output_hidden_states=adversary is not None)
            ce = F.cross_entropy(out.logits.float(), y)  # the loss in fp32, outside autocast
            l1 = config.l1 * sum(p.abs().sum() for p in l1_params) if config.l1 else torch.zeros((), device=device)
            loss = ce + l1
            if adversary is not None:
                pooled = out.hidden_states[0].float().mean(dim=(2, 3))  # what the classifier's linear head sees
                adv, correct, seen = adversary_lib.adversary_loss(adversary, pooled, t, adv_weight)
                loss = loss + adv  # the head minimises it; the reversal makes the backbone maximise it
                adv_losses.append(adv.detach().item())
                adv_correct, adv_seen = adv_correct + correct, adv_seen + seen
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ce_losses.append(ce.detach().item())
            l1_losses.append(float(l1.detach()))
            bar.set_postfix(ce=f"{np.mean(ce_losses[-20:]):.4f}")
        val_out = predict(model, val_maker, config.val_patches, config.eval_seed, amp, config.eval_chunk)
        val = score(val_data, val_out["pred"], untrained=untrained)
        f1 = val["f1"] if val["f1"] is not None else 0.0
        record = {
            "epoch": epoch,
            "train_loss": round(float(np.mean(ce_losses) + np.mean(l1_losses)), 6),
            "train_ce": round(float(np.mean(ce_losses)), 6),
            "train_l1": round(float(np.mean(l1_losses)), 6),
            "val_loss": round(val_out["loss"], 6),
            "val_accuracy": round(val["accuracy"], 4),
            "val_macro_f1": round(f1, 4),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.time() - epoch_start, 1),
        }
        if adversary is not None:  # the head's training accuracy: near chance when the features no longer tell
            record["adversary_weight"] = round(adv_weight, 6)
            record["adversary_ce"] = round(float(np.mean(adv_losses)), 6)
            record["adversary_accuracy"] = round(adv_correct / adv_seen, 4) if adv_seen else None
        state["history"].append(record)
        tqdm.write(json.dumps(record))
        state["epoch"] = epoch
        state["last_val"] = val
        if config.select == "last":  # no best/ (main reads last/), no early stopping; chosen after the loop
            state["stale"] = 0
        else:
            # macro F1 first, then the lower validation loss; or the loss alone
            key = [f1, -val_out["loss"]] if config.select == "macro_f1" else [-val_out["loss"]]
            if state["best"] is None or key > state["best"]:
                state.update(best=key, best_epoch=epoch, stale=0, best_val=val)
                model.save_pretrained(run_dir / "best")
            else:
                state["stale"] += 1
        model.save_pretrained(last_dir)
        state["minutes_total"] = minutes_before + (time.time() - start_time) / 60
        save_training_state(last_dir, optimizer, state)
        if adversary is not None:
            adversary_lib.save_adversary(last_dir, adversary)
        if state["stale"] >= config.early_stopping_patience:
            tqdm.write(f"early stopping: no better validation {config.select} for {state['stale']} epochs")
            break
        epochs_this_run += 1
        if out_of_budget(start_time, epochs_this_run, config.max_minutes):
            tqdm.write(f"stopping: the {config.max_minutes}-minute budget would be exceeded by another epoch")
            break
    if config.select == "last":  # also when a finished run is re-exported: the final epoch is the chosen one
        state.update(best_epoch=state["epoch"], best_val=state.get("last_val"))
    minutes_this_run = (time.time() - start_time) / 60
    return {
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "selected_by": config.select,
        "best_validation": state.get("best_val"),
        "history": state["history"],
        "trained_classes": trained,
        "untrained_classes": untrained,
        "adversary_sources": adversary.sources if adversary is not None else None,
        "stopped_early": state["stale"] >= config.early_stopping_patience,
        "steps_per_epoch": steps,
        "device": str(device),
        "autocast": str(amp).replace("torch.", "") if amp else "none",
        "minutes": round(minutes_before + minutes_this_run, 2),  # every run of this training
        "minutes_this_run": round(minutes_this_run, 2),
    }


def evaluate_test(
    model: PatchClassifierForImageClassification, data: ClassifierData, config: ClassifierTrainConfig
) -> dict[str, Any]:
    """The best model on the test split: K = ``num_patches`` votes, bootstrap CIs over patients."""
    device = next(model.parameters()).device
    model = model.to(memory_format=torch.channels_last)
    maker = InputMaker(data, config, device)
    amp = autocast_dtype(config.amp, device)
    out = predict(model, maker, config.num_patches, config.eval_seed, amp, config.eval_chunk)
    untrained = [c for c in data.class_names if c not in model.config.trained_classes]
    report = score(data, out["pred"], n_boot=config.n_boot, seed=config.eval_seed, untrained=untrained)
    report["k"] = config.num_patches if config.mode == "patch" else 1
    report["seed"] = config.eval_seed
    report["loss"] = out["loss"]
    # per-image predictions let ablation runs be compared on the same images (paired tests)
    report["predictions"] = {i: data.class_names[int(c)] for i, c in zip(data.ids, out["pred"], strict=True)}
    report["truth"] = dict(zip(data.ids, data.label_names(), strict=True))
    return report


def _counts_table(counts: dict[str, dict[str, int]], names: list[str], trained: list[str]) -> str:
    lines = ["| class | train | val | test |", "|---|---|---|---|"]
    for c in names:
        flag = "" if c in trained else " (untrained: no images)"
        lines.append(
            f"| {c}{flag} | " + " | ".join(str(counts.get(s, {}).get(c, 0)) for s in ("train", "val", "test")) + " |"
        )
    return "\n".join(lines)


def training_card_info(
    config: ClassifierTrainConfig, summary: dict[str, Any], info: dict[str, Any], test: dict[str, Any] | None
) -> dict[str, Any]:
    """The card's training section: data and counts, initialisation, recipe, budget."""
    names = list(LABEL_SETS[config.label_set])
    trained = summary["trained_classes"]
    untrained = summary["untrained_classes"]
    init = (
        "**Trained from scratch** (random initialisation): ImageNet weights were not reachable where these weights "
        "were trained, unlike the paper, which fine-tuned ImageNet weights."
        if config.pretrained == "none"
        else "Backbone initialised from ImageNet weights (timm `resnet18.a1_in1k`, first convolution summed to gray)."
    )
    absent = (
        f" **{', '.join(untrained)}: no training images** — the class stays in the output layer (the paper's label "
        "set) but is untrained; its outputs mean nothing and it is absent from every evaluation here."
        if untrained
        else ""
    )
    what = (
        f"random {config.patch_size}x{config.patch_size} patches centred on lung pixels of the lung-masked "
        f"{config.image_size}x{config.image_size} frame, {config.num_patches} per image voted at test time"
        if config.mode == "patch"
        else f"the whole lung-masked frame resized to {config.input_size}x{config.input_size}"
    )
    description = (
        f"{init}{absent}\n\nData: {DATA_SOURCES}; task `{config.label_set}`, classes {', '.join(names)}. Patient-level "
        f"split (70/10/20 % by patient, stratified by class and source; `training/splits/splits_seed0.json`). "
        f"Input: {what}. Lung masks from the segmentation model (fingerprint "
        f"`{info.get('segmentation_fingerprint')}`), computed once and cached.\n\nImages per class:\n\n"
        f"{_counts_table(info.get('counts', {}), names, trained)}\n\nSources per split: "
        + "; ".join(
            f"{s}: " + ", ".join(f"{k} {v}" for k, v in src.items()) for s, src in info.get("sources", {}).items()
        )
    )
    out: dict[str, Any] = {
        "description": description,
        "initialisation": "from scratch" if config.pretrained == "none" else "ImageNet (timm)",
        "trained_classes": trained,
        "untrained_classes": untrained or None,
        "optimiser": f"Adam lr {config.lr}"
        + (
            f" (cosine decay from epoch {config.lr_decay_start + 1} to {config.lr_min_factor:g} x lr at epoch "
            f"{config.epochs})"
            if config.lr_schedule == "cosine"
            else ""
        )
        + f", weight decay {config.weight_decay}, batch {config.batch_size} "
        f"{'patches' if config.mode == 'patch' else 'images'}, L1 {config.l1} on conv/linear weights",
        "sampling": (
            (
                "class- and source-balanced (p ∝ 1/(sources of the class × films of that class and source))"
                if config.source_balanced
                else "class-balanced (p ∝ 1/class count)"
            )
            if config.balanced_sampling
            else "uniform"
        )
        + (f", {config.patches_per_image} patch(es) per drawn image" if config.mode == "patch" else "")
        + (
            f", patch centres at least {config.patch_center_margin:g} x the patch side "
            f"({round(config.patch_center_margin * config.patch_size)} px) deep in the lung"
            if config.mode == "patch" and config.patch_center_margin > 0
            else ""
        ),
        "augmentation": (
            "gamma exp(U(-0.15, 0.15)) and gain U(0.9, 1.1) on lung gray levels"
            + (
                f"; on {config.scanner_augment:.0%} of the patches also blur or unsharp masking, noise, JPEG "
                "re-encoding and downsample-upsample (train_classifier.SCANNER_AUGMENT), the lung mask re-applied"
                if config.scanner_augment > 0 and config.mode == "patch"
                else ""
            )
        )
        if config.augment
        else "none",
        "model selection": (
            "the final epoch"
            if config.select == "last"
            else f"validation {'macro F1' if config.select == 'macro_f1' else 'loss'} ({config.val_patches} patches "
            f"per image in patch mode), early stopping after {config.early_stopping_patience} epochs without "
            "improvement"
        ),
        "budget": f"{summary['epochs_run']} epochs ({summary['steps_per_epoch']} steps each) in "
        f"{summary['minutes']} min on {summary['device']} (autocast {summary['autocast']})"
        + (
            f", over more than one run (resumed; the last {summary['minutes_this_run']} min)"
            if summary.get("minutes_this_run", summary["minutes"]) < summary["minutes"]
            else ""
        )
        + "; "
        f"{'final' if config.select == 'last' else 'best'} epoch {summary['best_epoch']}",
        "training inputs": (
            f"lung-masked {config.image_size}px frames stored as JPEG (quality {info.get('jpeg_quality')}) in a pack"
            if info.get("kind") == "pack"
            else f"lung-masked {config.image_size}px frames cached as uint8"
        ),
    }
    if config.source_adversary > 0:
        out["source adversary"] = (
            f"an MLP head learnt the collection of {config.source_adversary_class} patches "
            f"({', '.join(summary.get('adversary_sources') or [])}) from the pooled layer4 features while a gradient "
            f"reversal of weight {config.source_adversary:g} (ramped over {config.source_adversary_ramp} epochs) "
            "pushed the backbone against it (training/adversary.py); the head is not part of this model"
        )
    if test is not None:
        flag = "--classifier" if config.mode == "patch" else "--global-classifier"
        out["test evaluation"] = (
            f"{test['n']} held-out images of the test split, "
            + (f"K={test['k']} patches (seed {test['seed']})" if config.mode == "patch" else "whole images")
            + ", scored from the training inputs above; `python -m cxr_hub evaluate --manifest DATA --task "
            f"{config.label_set} {flag} {config.resolved_out()} --split-file training/splits/splits_seed0.json "
            "--split classification:test` re-runs it end to end on the original images. Macro averages over the "
            "classes present in the test set."
        )
    return out


def card_metrics(test: dict[str, Any] | None, config: ClassifierTrainConfig) -> dict[str, Any] | None:
    """Numeric test metrics for the card's model-index (undefined values left out)."""
    if test is None:
        return None
    values: dict[str, float] = {}
    for key in ("accuracy", "f1", "precision", "recall", "specificity"):
        if test.get(key) is not None:
            values["accuracy" if key == "accuracy" else f"macro_{key}"] = round(float(test[key]), 4)
    for key in ("accuracy", "f1"):
        ci = (test.get("ci95") or {}).get(key)
        if ci:
            name = "accuracy" if key == "accuracy" else "macro_f1"
            values[f"{name}_ci95_low"], values[f"{name}_ci95_high"] = round(ci[0], 4), round(ci[1], 4)
    for cls, m in test["per_class"].items():
        if m["n"] and m["sensitivity"] is not None:
            values[f"sensitivity_{cls}"] = round(float(m["sensitivity"]), 4)
    for src, m in test.get("accuracy_by_source", {}).items():
        values[f"accuracy_source_{src}"] = round(float(m["accuracy"]), 4)
    if not values:
        return None
    return {
        "dataset": {
            "name": "cxr-hub curated chest X-rays (JSRT, Cohen, NIH), patient-level test split",
            "type": "cxr-hub-curated",
            "split": "test",
        },
        "values": values,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry: data (pack or cache), patient split, training, test evaluation, Hub export."""
    from cxr_hub.hub import export_hub_folder
    from cxr_hub.models import image_processor_for
    from training.classifier_data import load_task_splits

    config, resume = parse_config(argv)
    try:
        splits, info = load_task_splits(
            config.label_set,
            data=config.data,
            pack=config.pack,
            segmentation=config.segmentation,
            split_file=config.split_file,
            cache_dir=config.cache_dir,
            image_size=config.image_size,
            do_equalize=config.do_equalize,
            gamma=config.gamma,
            device=config.device,
            limit=config.limit,
            lung_mask=config.lung_masked,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    if config.train_fraction < 1.0:
        full = len(splits["train"])
        splits["train"] = fraction_subset(splits["train"], config.train_fraction, config.seed)
        info["train_fraction"] = {"fraction": config.train_fraction, "images": len(splits["train"]), "of": full}
    held: ClassifierData | None = None
    if config.hold_out_source:
        try:
            splits, held = hold_out_source_normals(splits, config.hold_out_source)
        except ValueError as exc:
            raise SystemExit(f"error: --hold-out-source: {exc}") from exc
        info["held_out"] = {"source": config.hold_out_source, "class": "normal", "images": len(held)}
    if config.train_fraction < 1.0 or held is not None:
        for name, part in splits.items():  # the counts of what is trained, validated and tested on now
            info["counts"][name] = part.class_counts()
            info["sources"][name] = dict(sorted(Counter(part.sources).items()))
    counts = info["counts"]
    tqdm.write(f"data: {info['source']}")
    tqdm.write("images per class: " + json.dumps(counts))
    untrained = [c for c, n in counts["train"].items() if n == 0]
    if untrained:
        tqdm.write(
            f"note: no training images for {', '.join(untrained)}: kept in the output layer (the task's label set), "
            "untrained, and absent from every evaluation; config.trained_classes lists the others"
        )
    if info.get("skipped"):
        tqdm.write(f"skipped {len(info['skipped'])} image(s) (no lung found or not cached): see training_config.json")
    summary = train(config, splits["train"], splits["val"], resume=resume)

    run_dir, out = config.resolved_run_dir(), config.resolved_out()
    best = PatchClassifierForImageClassification.from_pretrained(
        run_dir / ("last" if config.select == "last" else "best")
    )
    device = torch.device(summary["device"])
    best = best.to(device)
    test = evaluate_test(best, splits["test"], config) if config.test_eval and len(splits["test"]) else None
    if test is not None:
        (run_dir / "test_metrics.json").write_text(json.dumps(test, indent=2) + "\n")
        tqdm.write(f"test: accuracy {test['accuracy']:.4f}, macro F1 {test['f1']:.4f} (n={test['n']})")
    if summary["untrained_classes"]:
        config.notes.append(f"untrained and absent (no training images): {', '.join(summary['untrained_classes'])}")
    if config.pretrained == "none":
        config.notes.append("trained from scratch: no ImageNet initialisation")
    held_report = None
    if held is not None:
        held_report = evaluate_test(best, held, config)
        (run_dir / "held_out_metrics.json").write_text(json.dumps(held_report, indent=2) + "\n")
        called = held_report["per_class"]["normal"]["sensitivity"]
        tqdm.write(
            f"held-out {config.hold_out_source} normals (never trained on) called normal: {called:.1%} "
            f"(n={held_report['n']})"
        )
        config.notes.append(
            f"leave-one-source-out experiment: the {config.hold_out_source} normal films were held out of training "
            f"and validation; {called:.1%} of them (n={held_report['n']}) are called normal"
        )
    export_hub_folder(
        best.cpu(),
        out,
        image_processor=image_processor_for(best.config),
        training=training_card_info(config, summary, info, test),
        metrics=card_metrics(test, config),
        model_name=out.name,
        dtype="float16" if config.fp16_storage else None,
        template=CARD_TEMPLATE if CARD_TEMPLATE.is_file() else None,
    )
    final = {"config": dataclasses.asdict(config), "data": info, "summary": summary, "test": test}
    if held_report is not None:
        final["held_out"] = held_report
    for folder in (run_dir, out):
        (folder / "training_config.json").write_text(json.dumps(final, indent=2, default=str) + "\n")
    size_mb = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 2**20
    tqdm.write(f"exported {out} (epoch {summary['best_epoch']}, chosen by {config.select}, weights {size_mb:.1f} MiB)")
    if size_mb > MAX_EXPORT_MB:
        tqdm.write(f"warning: the weights exceed {MAX_EXPORT_MB} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
