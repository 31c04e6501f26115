"""Run-time pieces shared by the training loops: mixed precision, the wall-clock budget, resumable checkpoints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_hub.runtime.hardware import cpu_has_bf16

STATE_FILE = "training_state.pt"
AMP_CHOICES = ("auto", "bf16", "fp16", "none")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a config's ``amp`` setting; None means full fp32.

    Args:
        amp: "auto" (bf16 on CUDA with bf16 and on CPUs with native bf16, fp16 on older CUDA), "bf16", "fp16"
            (CUDA only; fp32 elsewhere) or "none".
        device: where the model runs.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}.")
    if amp == "none":
        return None
    if amp == "fp16":
        return torch.float16 if device.type == "cuda" else None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def out_of_budget(start_time: float, epochs_this_run: int, max_minutes: float | None) -> bool:
    """Whether another epoch would overrun a wall-clock budget, judged by this run's pace so far.

    Args:
        start_time: ``time.time()`` when this run (not the resumed training) started.
        epochs_this_run: epochs finished since then (a resumed run's earlier epochs took other time).
        max_minutes: the budget, or None for none.
    """
    if max_minutes is None or epochs_this_run < 1:
        return False
    elapsed = (time.time() - start_time) / 60
    return elapsed + elapsed / epochs_this_run > max_minutes


def save_training_state(
    folder: Path,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    scheduler: Any = None,
    rng: np.random.Generator | None = None,
) -> None:
    """Writes what ``restore_training`` needs beside a ``save_pretrained`` model in ``folder``.

    Only tensors, numbers, strings and containers: it loads back with ``torch.load(weights_only=True)``.
    """
    payload: dict[str, Any] = {"optimizer": optimizer.state_dict(), "state": state, "torch_rng": torch.get_rng_state()}
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    if rng is not None:
        payload["numpy_rng"] = rng.bit_generator.state
    torch.save(payload, folder / STATE_FILE)


def restore_training(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scheduler: Any = None,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Loads the model weights, optimizer (and scheduler, numpy RNG) and torch RNG saved in ``folder``.

    Returns:
        The loop's saved ``state`` dict.

    Raises:
        SystemExit: nothing to resume in ``folder``.
    """
    if not (folder / STATE_FILE).is_file():
        raise SystemExit(f"--resume: nothing to resume in {folder}")
    model.load_state_dict(type(model).from_pretrained(folder).to(device).state_dict())
    saved = torch.load(folder / STATE_FILE, weights_only=True, map_location=device)
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    if rng is not None:
        rng.bit_generator.state = saved["numpy_rng"]
    torch.set_rng_state(saved["torch_rng"])
    return saved["state"]
