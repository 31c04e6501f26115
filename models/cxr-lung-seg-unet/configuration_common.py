"""Config helpers shared by every cxr-hub config (ships with the weights for ``trust_remote_code``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def fill_label_maps(kwargs: dict[str, Any], default_id2label: Mapping[int, str]) -> dict[str, Any]:
    """Sets ``id2label`` (default when absent) and ``label2id`` (its inverse when absent) in config kwargs."""
    if kwargs.get("id2label") is None:
        kwargs["id2label"] = dict(default_id2label)
    if kwargs.get("label2id") is None:
        kwargs["label2id"] = {v: int(k) for k, v in kwargs["id2label"].items()}
    return kwargs


def checked_class_weights(class_weights: Sequence[float] | None, num_labels: int) -> list[float]:
    """Per-class loss weights as floats (all 1 when None); raises if the count differs from ``num_labels``."""
    weights = [float(w) for w in class_weights] if class_weights is not None else [1.0] * num_labels
    if len(weights) != num_labels:
        raise ValueError(f"class_weights has {len(weights)} entries but there are {num_labels} classes.")
    return weights
