"""Adversarial source head (#16): make the classifier's pooled features useless for telling collections apart.

Domain-adversarial training (Ganin & Lempitsky, ICML 2015): a small head predicts the collection (source) a patch
comes from from the classifier's pooled layer4 features, and a gradient-reversal layer between the two turns the
head's gradient around before it reaches the backbone. The head learns to tell sources apart; the backbone learns
features that defeat it. The head sees only patches of one class (normals by default): among films of one class
the source is a shortcut, while across classes it is partly the label itself (most COVID-19 films come from one
collection), and an adversary on every patch would fight the diagnosis too.

The head is training-only: it is not part of the exported model (the pipeline never sees it), and it is saved in
``last/`` beside the optimiser state so that ``--resume`` continues it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ADVERSARY_FILE = "source_adversary.pt"


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Identity forward; the gradient flowing back through it is multiplied by ``-weight``.

    Args:
        x: any tensor.
        weight: >= 0, how strongly the features are pushed against what follows (0 cuts the gradient).
    """
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    return _ReverseGradient.apply(x, float(weight))


def adversary_weight(weight: float, ramp_epochs: int, epoch: int) -> float:
    """The reversal weight of a (1-based) epoch: linear from ``weight / ramp_epochs`` up to ``weight`` at epoch
    ``ramp_epochs``, then constant (0 ramp epochs: ``weight`` from the start).

    A ramp lets the classifier learn something before its features are pushed around; a function of the epoch
    only, so a resumed run gets the weights an uninterrupted one would have had.
    """
    if ramp_epochs <= 0:
        return float(weight)
    return float(weight) * min(1.0, epoch / ramp_epochs)


class SourceAdversary(nn.Module):
    """MLP on pooled features → source logits: (B, num_features) → (B, len(sources)).

    An MLP rather than a linear layer: features that only defeat a linear head still carry the source for the
    non-linear part of the network (the shortcut report's probe is linear and would then look better than it is).
    """

    def __init__(self, num_features: int, sources: Sequence[str], hidden: int = 256) -> None:
        super().__init__()
        if len(sources) < 2:
            raise ValueError(f"An adversarial source head needs at least two sources, got {list(sources)}")
        self.sources = list(sources)
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, len(sources))
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Source logits of pooled features (B, num_features) → (B, len(sources))."""
        return self.net(pooled)


def adversary_sources(labels: np.ndarray, sources: Sequence[str], class_index: int) -> list[str]:
    """The sources (sorted) of the images of one class: what the head tells apart."""
    return sorted({s for y, s in zip(labels.tolist(), sources, strict=True) if y == class_index})


def source_targets(
    labels: np.ndarray, sources: Sequence[str], class_index: int, head_sources: Sequence[str]
) -> np.ndarray:
    """Per image: the index of its source in ``head_sources`` for images of ``class_index``, else -1 (ignored)."""
    index = {s: i for i, s in enumerate(head_sources)}
    return np.asarray(
        [index.get(s, -1) if y == class_index else -1 for y, s in zip(labels.tolist(), sources, strict=True)],
        dtype=np.int64,
    )


def adversary_loss(
    head: SourceAdversary, pooled: torch.Tensor, targets: torch.Tensor, weight: float
) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy of the source head on the samples with a target (>= 0), through a gradient reversal.

    Args:
        head: the source head.
        pooled: (B, F) pooled features of the classifier (with their graph).
        targets: (B,) int64 source indices, -1 for samples the head does not see.
        weight: the reversal weight (:func:`adversary_weight`).

    Returns:
        ``(loss, correct, seen)``: the mean cross-entropy over the seen samples (0 with a graph when none is seen),
        how many of them the head got right and how many it saw.
    """
    seen = targets >= 0
    n = int(seen.sum())
    if n == 0:
        return pooled.sum() * 0.0, 0, 0
    logits = head(reverse_gradient(pooled[seen].float(), weight))
    loss = F.cross_entropy(logits, targets[seen])
    correct = int((logits.argmax(1) == targets[seen]).sum())
    return loss, correct, n


def save_adversary(folder: Path, head: SourceAdversary) -> None:
    """Writes the head's weights and sources beside ``last/``'s training state."""
    torch.save({"sources": head.sources, "state_dict": head.state_dict()}, folder / ADVERSARY_FILE)


def load_adversary(folder: Path, head: SourceAdversary) -> None:
    """Restores a head saved by :func:`save_adversary`.

    Raises:
        SystemExit: no head in ``folder`` (the run was trained without one) or one for other sources.
    """
    path = folder / ADVERSARY_FILE
    if not path.is_file():
        raise SystemExit(
            f"--resume with --source-adversary: {folder} has no {ADVERSARY_FILE} (the run was trained without an "
            "adversarial head); resume without --source-adversary, or start a new --run-dir"
        )
    saved = torch.load(path, weights_only=True, map_location="cpu")
    if list(saved["sources"]) != head.sources:
        raise SystemExit(
            f"--resume: the saved source head tells {saved['sources']} apart, this run's data has {head.sources}"
        )
    head.load_state_dict(saved["state_dict"])
