"""The pipeline's argument rules: seeds, the classifier frame's config and the classifiers' roles, stage timing."""

from __future__ import annotations

import contextlib
import operator
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import PatchClassifierConfig

__all__ = ["DEFAULT_MIN_LUNG_FRACTION", "FRAME_FIELDS", "SEED_LIMIT", "resolve_seed"]

#: Below this share of the image segmented as lung, a result is flagged as unreliable.
DEFAULT_MIN_LUNG_FRACTION = 0.05

#: ``seed=None`` draws a seed in ``[0, SEED_LIMIT)`` from fresh OS entropy and records it in the result. The range is
#: the app's seed box (0 … 2**32 - 1) and exact in any JSON reader, so every result can be replayed anywhere.
SEED_LIMIT = 2**32


def _integer(name: str, value: Any) -> int:
    """``value`` as a Python int: ints and numpy integers pass; bools, floats (even 3.0) and strings raise."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ValueError(f"{name} must be an integer (a Python or numpy int), got {value!r} ({type(value).__name__}).")


def resolve_seed(seed: int | np.integer | None) -> int:
    """The patch sampler's seed as it is used and recorded: a Python int, freshly drawn for None.

    Args:
        seed: a non-negative integer (Python or numpy), or None to draw one from fresh OS entropy
            (``np.random.SeedSequence().entropy`` reduced to ``[0, SEED_LIMIT)``).

    Returns:
        The seed as a Python int (what ``PipelineResult.seed`` records, so ``seed=result.seed`` replays a result).

    Raises:
        ValueError: a bool, a negative number, a float or anything else that is not an integer.
    """
    if seed is None:
        return int(np.random.SeedSequence().entropy % SEED_LIMIT)
    value = _integer("seed", seed)
    if value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value}.")
    return value


#: The config fields the classifier frame and the patch defaults depend on; a ``frame_config`` given together with a
#: classifier must agree with the classifier's config on all of them.
FRAME_FIELDS = (
    "image_size",
    "do_equalize",
    "gamma",
    "image_mean",
    "image_std",
    "patch_size",
    "num_patches",
    "patch_center_margin",
    "lung_masked",
)


class _Timer:
    """Wall-clock stages in milliseconds; synchronises CUDA first so asynchronous kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3


def _frame_config(
    classifier_config: PatchClassifierConfig | None, frame_config: PatchClassifierConfig | None
) -> PatchClassifierConfig:
    """The config the classifier frame follows: the classifier's, else ``frame_config``, else the paper's default."""
    if frame_config is not None and not (
        isinstance(frame_config, PatchClassifierConfig) and frame_config.mode == "patch"
    ):
        mode = getattr(frame_config, "mode", None)
        raise TypeError(
            "frame_config must be a PatchClassifierConfig with mode='patch' (it defines the 1024 classifier frame), "
            f"got {type(frame_config).__name__}" + (f" with mode={mode!r}." if mode is not None else ".")
        )
    if classifier_config is None:
        return frame_config if frame_config is not None else PatchClassifierConfig()
    if frame_config is not None:
        differ = [
            f"{name}: classifier {getattr(classifier_config, name)!r} vs frame_config {getattr(frame_config, name)!r}"
            for name in FRAME_FIELDS
            if getattr(classifier_config, name) != getattr(frame_config, name)
        ]
        if differ:
            raise ValueError(
                "frame_config disagrees with the classifier's config, which defines the frame the classifier was "
                f"trained on ({'; '.join(differ)}). Drop frame_config (the classifier's config is used) or make them "
                "agree."
            )
    return classifier_config


def _check_classifier(model: nn.Module, role: str, mode: str) -> PatchClassifierConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, PatchClassifierConfig):
        raise TypeError(f"The {role} must be a cxr_hub PatchClassifier model, got {type(model).__name__}.")
    if config.mode != mode:
        raise ValueError(f"The {role} must have config.mode == {mode!r}, got {config.mode!r}.")
    for attr in ("forward_features", "forward_head", "classifier"):
        if not hasattr(model, attr):
            raise TypeError(f"The {role} lacks {attr!r} (needed for batched voting and backward-free Grad-CAM).")
    return config
