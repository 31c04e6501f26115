"""The measured numbers a model card carries, and the config fields its sections read.

* :func:`card_metrics_from_report` — the card metrics of a ``metrics.json`` that ``evaluate`` or
  ``evaluate-segmentation`` writes; :func:`read_card_metrics` — the other way: the first result a rendered card
  carries, read back from its front matter (the demo states a model's measured limits from it).
* The metric shapes :func:`cxr_hub.hub.cards.render_model_card` accepts (a flat ``{name: number}``,
  ``{"dataset", "values", "task"}`` or a list of those), checked and normalised to one list of results
  (``_normalize_metrics``); the value and cell formatting the card's tables use.
* Which cxr-hub model types are segmentation networks and which classifiers, and how a config (a
  ``PretrainedConfig`` or its ``config.json`` as a dict) is read field by field.

Shared by :mod:`cxr_hub.hub.cards` and :mod:`cxr_hub.hub.paper_comparison` (the names with a leading underscore
are for those two only, not for users); imports nothing of cxr_hub.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CLASSIFICATION_MODEL_TYPES", "SEGMENTATION_MODEL_TYPES", "card_metrics_from_report", "read_card_metrics"]

SEGMENTATION_MODEL_TYPES = frozenset({"cxr_fcdensenet", "cxr_unet"})
CLASSIFICATION_MODEL_TYPES = frozenset({"cxr_patch_classifier"})


class _Missing:
    """Sentinel type for absent config fields (None is a legitimate field value)."""


_MISSING = _Missing()


def _config_get(config: Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, _MISSING)
    return getattr(config, key, _MISSING)


def _model_type(config: Any) -> str:
    value = _config_get(config, "model_type")
    return str(value) if isinstance(value, str) and value else "unknown"


def _check_metric_value(name: str, value: Any) -> int | float:
    # bool is an int subclass but never a measurement; NaN/inf would put a non-number in the card.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Metric {name!r} has the non-numeric value {value!r} ({type(value).__name__}); metric values must be "
            "numbers. Pass either {'dataset': {...}, 'values': {name: number}} or a flat {name: number} dict."
        )
    if isinstance(value, numbers.Integral):
        return int(value)
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"Metric {name!r} is {out}; only finite values can go into a model card.")
    return out


_DATASET_KEYS = ("type", "name", "config", "split", "revision")
_RESULT_KEYS = frozenset({"dataset", "values", "task"})


def _normalize_dataset(dataset: Any) -> dict[str, str]:
    if dataset is None:
        # The Hub's model-index requires a dataset; say honestly that it was not given.
        return {"type": "unspecified", "name": "Unspecified evaluation set"}
    if isinstance(dataset, str):
        return {"type": dataset, "name": dataset}
    if not isinstance(dataset, Mapping):
        raise ValueError(f"metrics['dataset'] must be a dict or a string, not {type(dataset).__name__}.")
    unknown = sorted(set(dataset) - set(_DATASET_KEYS))
    if unknown:
        raise ValueError(f"Unknown metrics['dataset'] keys {unknown}; allowed: {list(_DATASET_KEYS)}.")
    if not dataset.get("name") and not dataset.get("type"):
        raise ValueError("metrics['dataset'] needs a 'name' or a 'type'.")
    out = {key: str(dataset[key]) for key in _DATASET_KEYS if dataset.get(key) is not None}
    out.setdefault("type", out.get("name", ""))
    out.setdefault("name", out["type"])
    return {key: out[key] for key in _DATASET_KEYS if key in out}


def _normalize_metrics(metrics: Any) -> list[dict[str, Any]]:
    """Turns the accepted metric shapes into a list of ``{"dataset", "values", "task"}`` results.

    Accepted: ``None``; a flat ``{name: number}``; ``{"dataset": ..., "values": {name: number}, "task": ...}``; or a
    list of the latter (one per evaluation set).
    """
    if metrics is None:
        return []
    if isinstance(metrics, Sequence) and not isinstance(metrics, str | bytes):
        results = []
        for item in metrics:
            if not (isinstance(item, Mapping) and isinstance(item.get("values"), Mapping)):
                raise ValueError("A list of metrics must hold {'dataset': ..., 'values': {...}} dicts.")
            results.extend(_normalize_metrics(item))
        return results
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a dict (or a list of dicts), not {type(metrics).__name__}.")
    if isinstance(metrics.get("values"), Mapping):
        unknown = sorted(set(metrics) - _RESULT_KEYS)
        if unknown:
            raise ValueError(f"Unknown metrics keys {unknown}; allowed: {sorted(_RESULT_KEYS)}.")
        values_in = metrics["values"]
        dataset = _normalize_dataset(metrics.get("dataset"))
        task = metrics.get("task")
        if task is not None and not isinstance(task, Mapping):
            raise ValueError("metrics['task'] must be a dict like {'type': ..., 'name': ...}.")
    else:
        values_in, dataset, task = metrics, _normalize_dataset(None), None
    values = {str(name): _check_metric_value(str(name), value) for name, value in values_in.items()}
    if not values:
        return []
    return [{"dataset": dataset, "values": values, "task": dict(task) if task else None}]


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        text = f"{value:.4f}".rstrip("0")
        text = text + "0" if text.endswith(".") else text
        # Tiny values would round to "0.0": show them in full rather than as a misleading zero.
        return text if text not in ("0.0", "-0.0") or value == 0 else f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_format_value(v) for v in value) if value else "(none)"
    return str(value)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def card_metrics_from_report(
    report: Mapping[str, Any], dataset: Mapping[str, Any] | None = None, *, part: str | None = None
) -> dict[str, Any] | None:
    """The card metrics (``{"dataset", "values"}``) of a ``metrics.json`` that ``evaluate`` or
    ``evaluate-segmentation`` writes; None when ``report`` is not such a file (it is then used as it is).

    Classification reports give ``accuracy``, ``macro_precision`` / ``_recall`` / ``_f1`` / ``_specificity``, the
    bootstrap bounds ``accuracy_ci95_low`` / ``_high`` and ``macro_f1_ci95_low`` / ``_high``, ``sensitivity_<class>``
    of every class present and ``accuracy_source_<source>``: the names the shipped cards use. Segmentation reports
    give ``jaccard_<structure>`` and ``dice_<structure>`` (means) and ``num_images``. Undefined values are left out.

    Args:
        report: the parsed ``metrics.json``.
        dataset: the card's dataset entry (``name``, ``type``, ``split``); default: from the report's selection.
        part: ``"global"``: the report's global-classifier part (``evaluate --global-classifier``).

    Returns:
        ``{"dataset": {...}, "values": {name: number}}`` (values rounded to 4 digits), or None.

    Raises:
        ValueError: ``part`` is not in the report.
    """
    if part is not None:
        if not isinstance(report.get(part), Mapping):
            raise ValueError(f"The metrics JSON has no {part!r} part (was evaluate run with --global-classifier?).")
        report = {**report[part], "selection": report.get("selection")}
    values: dict[str, Any] = {}
    if isinstance(report.get("per_class"), Mapping) and isinstance(report.get("confusion_matrix"), Mapping):
        for key in ("accuracy", "precision", "recall", "f1", "specificity"):
            if isinstance(report.get(key), int | float):
                values["accuracy" if key == "accuracy" else f"macro_{key}"] = round(float(report[key]), 4)
        for key, name in (("accuracy", "accuracy"), ("f1", "macro_f1")):
            ci = (report.get("ci95") or {}).get(key)
            if ci:
                values[f"{name}_ci95_low"], values[f"{name}_ci95_high"] = round(ci[0], 4), round(ci[1], 4)
        for cls, m in report["per_class"].items():
            if m.get("n") and m.get("sensitivity") is not None:
                values[f"sensitivity_{cls}"] = round(float(m["sensitivity"]), 4)
        for src, m in (report.get("accuracy_by_source") or {}).items():
            values[f"accuracy_source_{src}"] = round(float(m["accuracy"]), 4)
    elif isinstance(report.get("jaccard"), Mapping) and all(
        isinstance(v, Mapping) and "mean" in v for v in report["jaccard"].values()
    ):
        for metric in ("jaccard", "dice"):
            for structure, stats in (report.get(metric) or {}).items():
                if isinstance(stats.get("mean"), int | float) and math.isfinite(stats["mean"]):
                    values[f"{metric}_{structure}"] = round(float(stats["mean"]), 4)
        if isinstance(report.get("n"), int):
            values["num_images"] = report["n"]
    else:
        return None
    if dataset is None:
        selection = report.get("selection") or {}
        split = selection.get("split")
        folder = Path(str(selection.get("manifest") or "data")).parent.name or "data"
        dataset = {
            "name": f"cxr-hub manifest {folder!r}, {f'split {split}' if split else 'all labelled rows'}",
            "type": "cxr-hub-manifest",
            "split": (str(split).partition(":")[2] or str(split)) if split else "all",
        }
    return {"dataset": dict(dataset), "values": values}


def read_card_metrics(source: str | Path) -> dict[str, float]:
    """The metrics of the first result in a model card's ``model-index`` (the card's headline evaluation).

    The card is ``README.md`` of a local model folder, or of a Hub repository when its card is already in the local
    Hugging Face cache (never a download: the demo calls this while it loads models, possibly offline).

    Args:
        source: a model folder, or a Hub repo id.

    Returns:
        ``{metric type: value}`` (e.g. ``accuracy_source_jsrt``, ``sensitivity_normal``); empty when there is no
        card, no ``model-index`` or no numeric metric. A malformed card reads as empty rather than raising: a model
        without readable numbers is described as such by the caller.
    """
    import yaml
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.repocard import metadata_load

    folder = Path(source).expanduser()
    if folder.is_dir():
        card: Path | None = folder / "README.md"
    else:
        try:
            cached = try_to_load_from_cache(str(source), "README.md")
        except ValueError:  # not a repo id either (a missing folder): no card
            return {}
        card = Path(cached) if isinstance(cached, str) else None
    if card is None or not card.is_file():
        return {}
    try:
        meta = metadata_load(card) or {}
        metrics = meta["model-index"][0]["results"][0]["metrics"]
    except (KeyError, IndexError, TypeError, ValueError, yaml.YAMLError):  # no model-index, or a broken one
        return {}
    out: dict[str, float] = {}
    for m in metrics if isinstance(metrics, list) else []:
        if not isinstance(m, Mapping):
            continue
        value = m.get("value")
        numeric = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
        if isinstance(m.get("type"), str) and numeric:
            out[m["type"]] = float(value)
    return out
