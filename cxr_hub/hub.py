"""Model cards, Hub-ready export folders and uploads for cxr-hub models.

Three steps, each usable alone:

* :func:`render_model_card` fills a markdown template from ``model_cards/`` (or the built-in fallback) with the
  model's config and *measured* metrics, and prepends Hugging Face YAML front matter generated with
  ``yaml.safe_dump`` (so it always parses);
* :func:`export_hub_folder` writes ``save_pretrained`` output (safetensors only), the image processor and the card;
* :func:`push_to_hub` checks such a folder and uploads it (or, with ``dry_run=True``, only lists what it would send).

The CLI subcommands ``push`` and ``model-card`` are registered by :func:`add_parser`.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import math
import numbers
import string
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub.errors import HfHubHTTPError

# A Hub folder must hold safetensors only: PICKLE_SUFFIXES are the formats that unpickle (and can run code) on load.
from .loading import PICKLE_SUFFIXES, pickle_checkpoints
from .paper import format_mean_sd, format_number, paper_row, paper_table, replace_generated

__all__ = [
    "BUILTIN_TEMPLATE",
    "CITATION_BIBTEX",
    "CLASSIFICATION_MODEL_TYPES",
    "CREDENTIAL_PATTERNS",
    "IGNORE_PATTERNS",
    "MODEL_CARDS_DIR",
    "PICKLE_SUFFIXES",
    "SEGMENTATION_MODEL_TYPES",
    "add_parser",
    "card_metrics_from_report",
    "export_hub_folder",
    "list_upload_files",
    "paper_comparison_section",
    "pipeline_tag_for",
    "push_to_hub",
    "refresh_paper_comparison",
    "render_model_card",
    "skipped_upload_files",
    "validate_hub_folder",
]

# Resolved from the source tree; installed wheels do not carry this folder, hence BUILTIN_TEMPLATE below.
MODEL_CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"
DEFAULT_TEMPLATE_NAME = "template"

SEGMENTATION_MODEL_TYPES = frozenset({"cxr_fcdensenet", "cxr_unet"})
CLASSIFICATION_MODEL_TYPES = frozenset({"cxr_patch_classifier"})

BASE_TAGS = ("medical-imaging", "chest-x-ray", "covid-19", "research-only")


# A superset of huggingface_hub's DEFAULT_IGNORE_PATTERNS, so the dry-run listing equals what upload_folder sends.
IGNORE_PATTERNS: tuple[str, ...] = (
    ".git",
    ".git/*",
    "*/.git",
    "**/.git/**",
    ".cache/*",
    "*/.cache/*",
    "**/.cache/**",
    "__pycache__/*",
    "*/__pycache__/*",
    "*.pyc",
    ".ipynb_checkpoints/*",
    "*/.ipynb_checkpoints/*",
    ".DS_Store",
    "*/.DS_Store",
    *(f"*{suffix}" for suffix in sorted(PICKLE_SUFFIXES)),
)

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"

CLINICAL_NOTICE = "not for clinical use"

CITATION_BIBTEX = """\
```bibtex
@article{oh2020deep,
  title   = {Deep Learning {COVID-19} Features on {CXR} Using Limited Training Data Sets},
  author  = {Oh, Yujin and Park, Sangjoon and Ye, Jong Chul},
  journal = {IEEE Transactions on Medical Imaging},
  volume  = {39},
  number  = {8},
  pages   = {2688--2700},
  year    = {2020},
  doi     = {10.1109/TMI.2020.2993291}
}
```"""

# Used when model_cards/ is absent (an installed wheel); keeps every section model_cards/template.md has.
BUILTIN_TEMPLATE = """\
# ${model_name}

`${model_type}` (${task_name}) from **cxr-hub**, a reproduction of *Deep Learning COVID-19 Features on CXR Using
Limited Training Data Sets* (Oh, Park, Ye, IEEE TMI 2020, doi:10.1109/TMI.2020.2993291). License: ${license}.

## Model summary

${model_summary}

## Intended use

**Intended use: research and education only. NOT for clinical use.** This model is not a medical device and has not
been clinically validated; its outputs must not inform the care of any patient.

## Out-of-scope use

- Diagnosis, screening or triage of real patients, or any clinical decision.
- Pediatric images, lateral views, and images that are not frontal chest X-rays (CT, photographs, other body parts).
- Replacing RT-PCR or any other reference test for COVID-19.

## How to use

${how_to_use}

## Training data

${training_data}

## Evaluation

${evaluation}

## Compared with the paper

${paper_comparison}

## Limitations and biases

- Small training data: results vary with the split and may not transfer to other hospitals or devices.
- No tuberculosis images in our data: the model has not learnt tuberculosis.
- Source/site shortcuts: classes come from different public collections, so the model can pick up the source
  (markers, borders, compression) instead of the disease.
- Pediatric versus adult images and AP (portable, bedside) versus PA projections are confounded with the classes.

## Citation

${citation}
"""


class _Missing:
    """Sentinel type for absent config fields (None is a legitimate field value)."""


_MISSING = _Missing()

# Config fields worth showing in the card, in display order; each is printed only when the config has it.
SUMMARY_FIELDS: tuple[str, ...] = (
    "architectures",
    "id2label",
    "trained_classes",
    "label_set",
    "num_channels",
    "image_size",
    "mode",
    "patch_size",
    "input_size",
    "num_patches",
    "backbone",
    "preset",
    "down_blocks",
    "bottleneck_layers",
    "block_layers",
    "growth_rate",
    "first_conv_channels",
    "base_channels",
    "depth",
    "do_equalize",
    "gamma",
    "image_mean",
    "image_std",
)


# --------------------------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------------------------


def _config_get(config: Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, _MISSING)
    return getattr(config, key, _MISSING)


def _model_type(config: Any) -> str:
    value = _config_get(config, "model_type")
    return str(value) if isinstance(value, str) and value else "unknown"


def pipeline_tag_for(model_type: str) -> str:
    """The Hub ``pipeline_tag`` of a cxr-hub model type (unknown types count as classifiers).

    Args:
        model_type: ``config.model_type``.

    Returns:
        ``"image-segmentation"`` or ``"image-classification"``.
    """
    return "image-segmentation" if model_type in SEGMENTATION_MODEL_TYPES else "image-classification"


def _task_name(pipeline_tag: str) -> str:
    if pipeline_tag == "image-segmentation":
        return "Semantic segmentation of frontal chest X-rays"
    return "Classification of frontal chest X-rays"


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


def _model_summary(config: Any, model_type: str, pipeline_tag: str) -> str:
    lines = [f"- **model_type**: `{model_type}`", f"- **task**: {pipeline_tag}"]
    for field in SUMMARY_FIELDS:
        value = _config_get(config, field)
        if value is _MISSING or value is None:
            continue
        lines.append(f"- **{field}**: {_format_value(value)}")
    # Classes present in the head but never trained (e.g. tuberculosis) must be visible to readers of the card.
    id2label = _config_get(config, "id2label")
    trained = _config_get(config, "trained_classes")
    if isinstance(id2label, Mapping) and isinstance(trained, list | tuple):
        untrained = [str(label) for label in id2label.values() if label not in trained]
        if untrained:
            lines.append(f"- **untrained classes**: {', '.join(untrained)} (no training images; ignore these outputs)")
    return "\n".join(lines)


def _how_to_use(repo_id: str | None, revision: str | None, pipeline_tag: str, model_type: str) -> str:
    repo = repo_id or "<repo-id>"
    rev = revision or "main"
    if pipeline_tag == "image-segmentation":
        auto_cls = "AutoModelForSemanticSegmentation"
        post = (
            "labels = processor.post_process_semantic_segmentation(\n"
            '    outputs, target_sizes=inputs["original_sizes"].tolist()\n'
            ")[0]  # (H, W) label map at the original size, classes in model.config.id2label"
        )
    else:
        auto_cls = "AutoModelForImageClassification" if model_type in CLASSIFICATION_MODEL_TYPES else "AutoModel"
        post = (
            "probs = outputs.logits.softmax(-1)  # class order: model.config.id2label\n"
            "# A patch classifier is trained on lung-masked patches: the paper's patch sampling and majority vote\n"
            "# are in the cxr_hub pipeline; the lines above only show the calling convention."
        )
    return f"""\
Remote code runs on your machine: pin `revision` to a commit hash you have reviewed.

```python
import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, {auto_cls}

repo_id, revision = "{repo}", "{rev}"
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True, revision=revision)
model = {auto_cls}.from_pretrained(repo_id, trust_remote_code=True, revision=revision).eval()

image = np.asarray(Image.open("frontal_cxr.png").convert("L"))
inputs = processor(image, return_tensors="pt")
with torch.no_grad():
    outputs = model(pixel_values=inputs["pixel_values"])
{post}
```

With the `cxr_hub` package installed, importing it registers the model classes, so no remote code is needed:

```python
import cxr_hub  # noqa: F401  (registers the cxr_* configs, models and image processor)
from transformers import AutoImageProcessor, {auto_cls}

model = {auto_cls}.from_pretrained("{repo}", revision="{rev}").eval()
processor = AutoImageProcessor.from_pretrained("{repo}", revision="{rev}")
```

The full method of the paper (lung segmentation, random lung patches, majority vote, saliency maps) is the
`cxr_hub` pipeline (`python -m cxr_hub --help`)."""


def _training_section(training: Any) -> str:
    if training is None:
        return (
            "See the training section of the cxr-hub repository (`training/`) for the data, the splits and the "
            "training script that produced these weights."
        )
    if isinstance(training, str):
        return training.strip()
    if not isinstance(training, Mapping):
        raise ValueError(f"training must be a string or a dict, not {type(training).__name__}.")
    parts = []
    text = training.get("description", training.get("text"))
    if text:
        parts.append(str(text).strip())
    fields = [
        f"- **{key}**: {_format_value(value)}"
        for key, value in training.items()
        if key not in ("description", "text") and value is not None
    ]
    if fields:
        parts.append("\n".join(fields))
    return "\n\n".join(parts) if parts else _training_section(None)


def _evaluation_section(results: list[dict[str, Any]]) -> str:
    if not results:
        return "This model has **not yet been evaluated**: no metrics are reported here."
    lines = [
        "Measured by the cxr-hub evaluation code on held-out data (numbers as computed, not copied from the paper).",
        "",
        "| Dataset | Split | Metric | Value |",
        "|---|---|---|---|",
    ]
    for result in results:
        dataset = result["dataset"]
        for name, value in result["values"].items():
            cells = (dataset["name"], dataset.get("split", "-"), name, _format_value(value))
            lines.append("| " + " | ".join(_md_cell(str(c)) for c in cells) + " |")
    return "\n".join(lines)


PAPER_SECTION = "paper-comparison"
PAPER_SECTION_HINT = "rendered by cxr_hub.hub from cxr_hub/data/paper_tables.json and this card's first result"
_LABEL3_TO_PAPER = {"normal": "sens_normal", "pneumonia": "sens_pneumonia", "covid": "sens_covid19"}


def _paper_counterpart(config: Any, values: Mapping[str, Any]) -> tuple[str, list[tuple[str, Any, Any]], str] | None:
    """``(source, [(metric, ours, paper)], unit)`` for a card's first result, or None when the paper has none.

    Classifiers compare in percent (Tables X, XI for label4 by mode, XII for label3); segmentation networks compare
    Jaccard indices (Table V for FC-DenseNet103, Table XIII for U-Net).
    """
    model_type = _model_type(config)
    if model_type in CLASSIFICATION_MODEL_TYPES:
        label_set, mode = _config_get(config, "label_set"), _config_get(config, "mode")
        id2label = _config_get(config, "id2label")
        classes = [str(v) for v in id2label.values()] if isinstance(id2label, Mapping) else []

        def ours(key: str) -> float | None:
            return 100 * values[key] if isinstance(values.get(key), int | float) else None

        if label_set == "label4" and mode in ("patch", "global"):
            x = paper_row("table_x_macro_metrics_percent", mode)
            xi = paper_row("table_xi_sensitivity_percent", mode)
            rows = [("accuracy", ours("accuracy"), x["accuracy"])]
            macro = {"precision": "precision", "recall": "recall", "f1": "F1", "specificity": "specificity"}
            rows += [(f"macro {t}", ours(f"macro_{k}"), x[k]) for k, t in macro.items()]
            rows += [(f"sensitivity ({c})", ours(f"sensitivity_{c}"), xi.get(c)) for c in classes if c in xi]
            return f"the paper's {mode} model, Tables X and XI", rows, "points"
        if label_set == "label3" and mode == "patch":
            xii = paper_row("table_xii_vs_covidnet_percent", "patch")
            rows = [(f"sensitivity ({c})", ours(f"sensitivity_{c}"), xii[k]) for c, k in _LABEL3_TO_PAPER.items()]
            return "the paper's patch model on COVIDx, Table XII", rows, "points"
        return None
    if model_type == "cxr_fcdensenet" and _config_get(config, "preset") in ("fcdensenet103", _MISSING):
        v = paper_table("table_v_segmentation_jaccard")["jsrt_preprocessed"]
        rows = [
            ("Jaccard, lung", values.get("jaccard_lung"), v["lung"]),
            ("Jaccard, heart", values.get("jaccard_heart"), v["heart"]),
        ]
        return "the paper's FC-DenseNet103 on JSRT, Table V", rows, ""
    if model_type == "cxr_unet":
        v = paper_table("table_xiii_lung_jaccard_by_network")["unet"]
        return "the paper's U-Net on JSRT, Table XIII", [("Jaccard, lung", values.get("jaccard_lung"), v["jsrt"])], ""
    return None


def paper_comparison_section(config: Any, metrics: Any) -> str:
    """The card's "Compared with the paper" section: this model's first measured result beside the paper's numbers
    (read from ``cxr_hub/data/paper_tables.json``), with each difference in words, between generated-section markers.

    Args:
        config: the model's config (``model_type``, ``label_set``, ``mode``, ``id2label``, ``preset``).
        metrics: the card's metrics in any shape :func:`render_model_card` accepts; the first result is compared.

    Returns:
        Markdown; says so plainly when the model is not evaluated yet or the paper has no counterpart.
    """
    results = _normalize_metrics(metrics)
    body = _paper_comparison_body(config, results)
    return f"<!-- generated:{PAPER_SECTION} {PAPER_SECTION_HINT} -->\n{body}\n<!-- /generated:{PAPER_SECTION} -->"


def _paper_comparison_body(config: Any, results: list[dict[str, Any]]) -> str:
    if not results:
        return "Not evaluated yet, so there is nothing to compare with the paper's numbers."
    first = results[0]
    found = _paper_counterpart(config, first["values"])
    if found is None:
        return "The paper reports no number for this kind of model."
    source, rows, unit = found
    table = ["| metric | this model | paper | difference |", "|---|---|---|---|"]
    lower, higher, missing = [], [], []
    for name, ours, paper in rows:
        pair = isinstance(paper, list | tuple)
        paper_mean = paper[0] if pair else paper
        paper_text = format_mean_sd(paper) if pair else format_number(paper)
        if ours is None:
            missing.append(name)
            table.append(f"| {name} | no value (untrained: no images) | {paper_text} | not comparable |")
            continue
        diff = ours - paper_mean
        ours_text = f"{ours:.1f}" if unit else f"{ours:.3f}"
        size = f"{abs(diff):.1f} points" if unit else f"{abs(diff):.3f}"
        same = abs(diff) < (1.0 if unit else 0.005)
        word = "about the same" if same else f"**{size} {'lower' if diff < 0 else 'higher'}**"
        if not same:
            (lower if diff < 0 else higher).append(name)
        table.append(f"| {name} | {ours_text} | {paper_text} | {word} |")
    compared = len(rows) - len(missing)
    if compared and len(lower) == compared:
        verdict = f"**This model is below the paper on every metric compared** ({compared})."
    elif lower:
        verdict = f"**Below the paper** on {'; '.join(lower)}" + (
            f". Above it on {'; '.join(higher)}." if higher else "."
        )
    else:
        verdict = "Not below the paper on any metric compared."
    units = "percent" if unit else "Jaccard index, mean ± SD for the paper"
    lines = [
        f"This model's first result above ({_md_cell(first['dataset']['name'])}) beside {source} ({units}; the "
        "paper's numbers from `cxr_hub/data/paper_tables.json`). The paper measured its own model on its own data, "
        "so this shows how far these weights are from the published result, not a like-for-like test.",
        "",
        *table,
        "",
        verdict,
    ]
    if missing:
        lines.append(f"No value of this model for {'; '.join(missing)}: no such images in its data.")
    return "\n".join(lines)


def refresh_paper_comparison(card_text: str, config: Any) -> str:
    """A rendered card with its "Compared with the paper" section recomputed from its own front matter.

    The section is replaced between its markers, or added (with its heading) before "## Limitations and biases"
    when the card predates it. Run it after the card's metrics change (``training/refresh_card_metrics.py``).

    Raises:
        ValueError: the card has no YAML front matter, or no place for the section.
    """
    parts = card_text.split("---\n", 2)
    if len(parts) != 3 or parts[0]:
        raise ValueError("The card has no YAML front matter between '---' lines; render it with render_model_card.")
    meta = yaml.safe_load(parts[1]) or {}
    index = (meta.get("model-index") or [{}])[0].get("results") or []
    results = [{"dataset": r["dataset"], "values": {m["type"]: m["value"] for m in r["metrics"]}} for r in index]
    section = paper_comparison_section(config, results)
    marker = f"<!-- generated:{PAPER_SECTION}"
    if marker in card_text:
        body = section.split("\n", 1)[1].rsplit("\n", 1)[0]
        return replace_generated(card_text, PAPER_SECTION, body, PAPER_SECTION_HINT)
    anchor = "\n## Limitations and biases"
    if anchor not in card_text:
        raise ValueError("The card has no '## Limitations and biases' section to put the paper comparison before.")
    return card_text.replace(anchor, f"\n## Compared with the paper\n\n{section}\n{anchor}", 1)


def _front_matter(
    *,
    license: str,
    pipeline_tag: str,
    model_type: str,
    model_name: str,
    task_name: str,
    results: list[dict[str, Any]],
    datasets: Sequence[str] | None,
    tags: Sequence[str] | None,
    training: Any,
) -> dict[str, Any]:
    task_tag = "lung-segmentation" if pipeline_tag == "image-segmentation" else "patch-based-classification"
    all_tags = list(dict.fromkeys([*BASE_TAGS, model_type, task_tag, *(tags or ())]))
    if datasets is None:
        found: list[str] = []
        if isinstance(training, Mapping) and training.get("datasets"):
            declared = training["datasets"]
            found.extend([declared] if isinstance(declared, str) else [str(d) for d in declared])
        found.extend(r["dataset"]["type"] for r in results if r["dataset"]["type"] != "unspecified")
        datasets = found
    meta: dict[str, Any] = {
        "license": license,
        "library_name": "transformers",
        "pipeline_tag": pipeline_tag,
        "tags": all_tags,
    }
    if datasets:
        meta["datasets"] = list(dict.fromkeys(str(d) for d in datasets))
    if results:
        meta["metrics"] = list(dict.fromkeys(name for r in results for name in r["values"]))
        meta["model-index"] = [
            {
                "name": model_name,
                "results": [
                    {
                        "task": r["task"] or {"type": pipeline_tag, "name": task_name},
                        "dataset": r["dataset"],
                        "metrics": [{"type": k, "value": v, "name": k} for k, v in r["values"].items()],
                    }
                    for r in results
                ],
            }
        ]
    return meta


def _is_plain_name(name: str) -> bool:
    return bool(name) and Path(name).name == name and name not in (".", "..")


def _load_template(template: str | Path | None, model_name: str, template_dir: str | Path | None) -> tuple[str, str]:
    """Returns ``(template text, where it came from)``; see :func:`render_model_card` for the lookup order."""
    folder = Path(template_dir) if template_dir is not None else MODEL_CARDS_DIR
    if template is not None:
        path = Path(template)
        if path.suffix == ".md" and path.is_file():
            return path.read_text(encoding="utf-8"), str(path)
        name = str(template)
        if _is_plain_name(name):
            candidate = folder / (name if name.endswith(".md") else f"{name}.md")
            if candidate.is_file():
                return candidate.read_text(encoding="utf-8"), str(candidate)
        # An explicit request must not silently fall back to another template.
        raise ValueError(f"Model card template {str(template)!r} not found (as a file, or as a name in {folder}).")
    candidates = [folder / f"{model_name}.md"] if _is_plain_name(model_name) else []
    candidates.append(folder / f"{DEFAULT_TEMPLATE_NAME}.md")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8"), str(candidate)
    return BUILTIN_TEMPLATE, "<built-in template>"


def _template_identifiers(tpl: string.Template, source: str) -> list[str]:
    names = []
    for match in tpl.pattern.finditer(tpl.template):
        if match.group("invalid") is not None:
            line = tpl.template.count("\n", 0, match.start("invalid")) + 1
            raise ValueError(
                f"Invalid '$' in model card template {source} (line {line}): use ${{name}} for a placeholder and "
                "$$ for a literal dollar sign."
            )
        name = match.group("named") or match.group("braced")
        if name:
            names.append(name)
    return names


def render_model_card(
    config: Any,
    *,
    metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    template: str | Path | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    training: Mapping[str, Any] | str | None = None,
    extra: Mapping[str, Any] | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    revision: str | None = None,
    template_dir: str | Path | None = None,
) -> str:
    """Renders a Hugging Face model card (YAML front matter + markdown) for a cxr-hub model.

    The markdown body comes from a ``string.Template`` file (``${placeholder}`` syntax, ``$$`` for a literal
    dollar). Lookup without ``template``: ``<template_dir>/<model_name>.md``, then ``<template_dir>/template.md``,
    then :data:`BUILTIN_TEMPLATE`; ``template_dir`` defaults to the repository's ``model_cards/``. The front matter
    is generated here, never by the template.

    Placeholders available to templates: ``model_name``, ``repo_id``, ``revision``, ``model_type``,
    ``pipeline_tag``, ``task_name``, ``license``, ``model_summary``, ``how_to_use``, ``training_data``,
    ``evaluation``, ``paper_comparison`` (the first result beside the paper's numbers,
    :func:`paper_comparison_section`),
    ``citation``, plus every key of ``extra``.

    Args:
        config: the model's ``PretrainedConfig`` (or its ``config.json`` as a dict).
        metrics: measured metrics, either ``{"dataset": {"name", "type", "split"}, "values": {name: number}}``
            (optionally with ``"task": {"type", "name"}``; a list of such dicts for several evaluation sets) or a
            flat ``{name: number}``. ``None``: the card says the model is not yet evaluated.
        template: a template file path, or a name looked up in ``template_dir`` (``"foo"`` → ``foo.md``).
        model_name: title of the card and of the model-index entry; defaults to the last part of ``repo_id``, else
            the model type. Also selects a per-model template.
        repo_id: Hub repository id used in the usage snippets.
        training: training data description: free text, or a dict (``description`` becomes a paragraph, other
            keys a list; a ``datasets`` entry also feeds the front matter's ``datasets``).
        extra: additional (or overriding) placeholder values for custom templates.
        license: the Hub license id.
        datasets: front-matter ``datasets``; default: those named in ``training`` and ``metrics``.
        tags: tags added to the default ones.
        revision: revision shown in the usage snippets (default ``"main"``).
        template_dir: folder of templates instead of the repository's ``model_cards/``.

    Returns:
        The card text, starting with ``---``.

    Raises:
        ValueError: unknown placeholders, an invalid ``$``, a missing explicit template, a template that brings
            its own front matter or drops the "not for clinical use" notice, or malformed/non-numeric metrics.
    """
    model_type = _model_type(config)
    pipeline_tag = pipeline_tag_for(model_type)
    task_name = _task_name(pipeline_tag)
    if model_name is None:
        model_name = repo_id.rstrip("/").split("/")[-1] if repo_id else model_type
    results = _normalize_metrics(metrics)

    text, source = _load_template(template, model_name, template_dir)
    if text.lstrip().startswith("---"):
        raise ValueError(f"Template {source} starts with front matter; remove it, the front matter is generated.")
    context: dict[str, str] = {
        "model_name": model_name,
        "repo_id": repo_id or "<repo-id>",
        "revision": revision or "main",
        "model_type": model_type,
        "pipeline_tag": pipeline_tag,
        "task_name": task_name,
        "license": license,
        "model_summary": _model_summary(config, model_type, pipeline_tag),
        "how_to_use": _how_to_use(repo_id, revision, pipeline_tag, model_type),
        "training_data": _training_section(training),
        "evaluation": _evaluation_section(results),
        "paper_comparison": paper_comparison_section(config, results),
        "citation": CITATION_BIBTEX,
    }
    for key, value in (extra or {}).items():
        if not str(key).isidentifier():
            raise ValueError(f"extra key {key!r} is not a valid placeholder name.")
        context[str(key)] = str(value)

    tpl = string.Template(text)
    unknown = sorted(set(_template_identifiers(tpl, source)) - set(context))
    if unknown:
        raise ValueError(
            f"Unknown placeholder(s) {', '.join('${' + n + '}' for n in unknown)} in model card template {source}. "
            f"Available: {', '.join(sorted(context))} (add more through extra=...)."
        )
    body = tpl.substitute(context)
    if CLINICAL_NOTICE not in body.lower():
        raise ValueError(f"Template {source} must keep the explicit '{CLINICAL_NOTICE}' notice.")

    meta = _front_matter(
        license=license,
        pipeline_tag=pipeline_tag,
        model_type=model_type,
        model_name=model_name,
        task_name=task_name,
        results=results,
        datasets=datasets,
        tags=tags,
        training=training,
    )
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"---\n{front}---\n\n{body.strip()}\n"


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------


_STORAGE_DTYPES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def export_hub_folder(
    model: Any,
    out_dir: str | Path,
    *,
    image_processor: Any | None = None,
    metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    training: Mapping[str, Any] | str | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    safe_serialization: bool = True,
    dtype: str | None = None,
    template: str | Path | None = None,
    template_dir: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a Hub-ready folder: safetensors weights + ``config.json``, the image processor, and ``README.md``.

    Args:
        model: a ``transformers`` ``PreTrainedModel``.
        out_dir: destination folder (created if needed; existing files of the same names are overwritten).
        image_processor: saved with ``save_pretrained`` when given (``preprocessor_config.json``).
        metrics: measured metrics for the card (see :func:`render_model_card`).
        training: training data description for the card.
        model_name: card title; defaults to the folder name.
        repo_id: Hub repository id shown in the card's snippets.
        license: the Hub license id.
        safe_serialization: must stay True: pickle checkpoints are never written.
        dtype: storage dtype of floating-point weights (``"float16"`` or ``"bfloat16"``; None keeps the model's).
            The config still says float32, so ``from_pretrained`` loads float32 parameters.
        template: card template (path or name), see :func:`render_model_card`.
        template_dir: folder of card templates.
        extra: extra template placeholders.

    Returns:
        The folder path.

    Raises:
        ValueError: ``safe_serialization=False``, an unknown ``dtype``, or a card problem (raised before any file
            is written).
        RuntimeError: pickle checkpoints are present in the folder after saving (e.g. left by an older export).
    """
    if not safe_serialization:
        raise ValueError("cxr-hub exports safetensors only; pickle checkpoints can run code when loaded.")
    storage = None
    if dtype is not None:
        key = str(dtype).removeprefix("torch.")
        if key == "float32":
            storage = None
        elif key in _STORAGE_DTYPES:
            storage = _STORAGE_DTYPES[key]
        else:
            raise ValueError(f"Unsupported storage dtype {dtype!r}; use 'float16', 'bfloat16' or None.")
    out = Path(out_dir)
    # The card is rendered first so that a template or metrics error leaves no half-written folder behind.
    card = render_model_card(
        model.config,
        metrics=metrics,
        template=template,
        model_name=model_name or out.resolve().name,
        repo_id=repo_id,
        training=training,
        extra=extra,
        license=license,
        template_dir=template_dir,
    )
    out.mkdir(parents=True, exist_ok=True)
    if storage is None:
        model.save_pretrained(out)
    else:
        import torch

        torch_dtype = getattr(torch, storage)
        # Casting the state dict (not the model) leaves the caller's model untouched and keeps config.dtype as the
        # model's own (float32), which is what from_pretrained uses by default.
        state_dict = {
            k: (v.detach().to(torch_dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()
        }
        model.save_pretrained(out, state_dict=state_dict)
        config_path = out / "config.json"
        config_json = json.loads(config_path.read_text(encoding="utf-8"))
        if config_json.get("dtype") != "float32":
            config_json["dtype"] = "float32"
            config_path.write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if image_processor is not None:
        image_processor.save_pretrained(out)
    pickles = pickle_checkpoints(out)
    if pickles:
        raise RuntimeError(f"Pickle checkpoint(s) found in {out}: {pickles}. Remove them; only safetensors ship.")
    (out / "README.md").write_text(card, encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------------------------


def _auto_map_modules(auto_map: Any) -> set[str]:
    refs: list[str] = []
    for value in (auto_map or {}).values():
        refs.extend(v for v in (value if isinstance(value, list | tuple) else [value]) if isinstance(v, str))
    # "other/repo--module.Class" points at code in another repository: nothing to check locally.
    return {ref.rsplit(".", 1)[0] for ref in refs if "--" not in ref and "." in ref}


def validate_hub_folder(folder: str | Path) -> Path:
    """Checks that a folder is a complete, pickle-free cxr-hub Hub folder.

    Args:
        folder: the folder written by :func:`export_hub_folder`.

    Returns:
        The folder as a Path.

    Raises:
        ValueError: it is not a folder, lacks ``config.json``, safetensors weights (``model.safetensors`` or a
            complete sharded index) or ``README.md`` (with parseable front matter), holds pickle checkpoints, or
            its ``auto_map`` names code files that are missing.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder.")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json; export it with export_hub_folder / save_pretrained first.")
    if not (path / SAFETENSORS_NAME).is_file():
        index = path / SAFETENSORS_INDEX_NAME
        if not index.is_file():
            raise ValueError(f"{path} has no {SAFETENSORS_NAME} (nor a sharded {SAFETENSORS_INDEX_NAME}).")
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{index} is not a valid safetensors index: {exc}") from exc
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ValueError(f"{path} is missing safetensors shards listed in its index: {missing}.")
    readme = path / "README.md"
    if not readme.is_file():
        raise ValueError(f"{path} has no README.md; write one with `python -m cxr_hub model-card {path}`.")
    text = readme.read_text(encoding="utf-8")
    if text.startswith("---"):
        parts = text.split("---", 2)
        try:
            if len(parts) < 3 or not isinstance(yaml.safe_load(parts[1]) or {}, dict):
                raise ValueError("front matter is not a mapping")
        except (yaml.YAMLError, ValueError) as exc:
            raise ValueError(f"{readme} has invalid YAML front matter: {exc}") from exc
    pickles = pickle_checkpoints(path)
    if pickles:
        raise ValueError(f"{path} contains pickle checkpoint(s) {pickles}; remove them, only safetensors are pushed.")
    for name in ("config.json", "preprocessor_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            auto_map = json.loads(file.read_text(encoding="utf-8")).get("auto_map")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file} is not valid JSON: {exc}") from exc
        missing = sorted(m + ".py" for m in _auto_map_modules(auto_map) if not (path / f"{m}.py").is_file())
        if missing:
            raise ValueError(
                f"{file} auto_map needs {missing}, which are not in {path} (trust_remote_code would fail)."
            )
    return path


#: File names (matched case-insensitively against every part of a path) that look like credentials: never uploaded.
CREDENTIAL_PATTERNS: tuple[str, ...] = (
    ".env",
    ".env.*",
    "*.env",
    ".netrc",
    "_netrc",
    ".git-credentials",
    ".pypirc",
    ".npmrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "credentials*",
    "*credentials.json",
    "*secret*",
    "token",
    "token.*",
    "token_*",
    "token-*",
    "*.token",
    "*_token",
    "*_token.*",
)


def _skip_reason(rel: str) -> str | None:
    """Why a file (relative POSIX path) is never uploaded, or None: hidden, or named like a credential."""
    parts = rel.split("/")
    if any(fnmatch.fnmatch(part.lower(), pattern) for part in parts for pattern in CREDENTIAL_PATTERNS):
        return "looks like a credential"
    if any(part.startswith(".") for part in parts):
        return "hidden"
    return None


def _folder_files(folder: str | Path) -> list[str]:
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.glob("**/*") if p.is_file())


def skipped_upload_files(folder: str | Path) -> list[tuple[str, str]]:
    """The files :func:`push_to_hub` leaves out because they are hidden or look like credentials, with the reason.

    A model folder has no reason to hold a dotfile, and a ``.env``, ``*.pem`` or ``token`` file left there by accident
    would be published to everyone who can read the repository. ``.git`` and caches are left out too (silently, as
    :data:`IGNORE_PATTERNS` says).

    Args:
        folder: the folder to upload.

    Returns:
        Sorted ``(relative path, reason)`` pairs, reason "hidden" or "looks like a credential".
    """
    from huggingface_hub.utils import filter_repo_objects

    kept = list(filter_repo_objects(_folder_files(folder), ignore_patterns=list(IGNORE_PATTERNS)))
    return [(rel, reason) for rel in kept if (reason := _skip_reason(rel))]


def list_upload_files(folder: str | Path) -> list[str]:
    """Relative POSIX paths of the files :func:`push_to_hub` sends, filtered like ``upload_folder`` does.

    Hidden files and files named like credentials are never sent (:func:`skipped_upload_files` lists them).

    Args:
        folder: the folder to upload.

    Returns:
        Sorted relative paths.
    """
    from huggingface_hub.utils import filter_repo_objects

    kept = filter_repo_objects(_folder_files(folder), ignore_patterns=list(IGNORE_PATTERNS))
    return [rel for rel in kept if _skip_reason(rel) is None]


def _upload_ignore_patterns(folder: str | Path) -> list[str]:
    """``upload_folder``'s ignore list: IGNORE_PATTERNS, every hidden path, and each skipped file by its exact path."""
    # upload_folder lists the folder itself, so the skipped files go by name (glob-escaped) besides the generic
    # hidden-path patterns; the credential patterns are matched case-insensitively above, which fnmatchcase is not
    exact = [glob.escape(rel) for rel, _ in skipped_upload_files(folder)]
    return [*IGNORE_PATTERNS, ".*", "*/.*", *exact]


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload cxr-hub model",
    dry_run: bool = False,
    create_repo: bool = True,
) -> list[str]:
    """Uploads an exported folder to a Hub model repository (one commit).

    Args:
        folder: folder written by :func:`export_hub_folder`; checked with :func:`validate_hub_folder`.
        repo_id: ``"namespace/name"``.
        revision: branch to commit to (created from the default branch if missing); None: the default branch.
        private: create the repository as private (ignored when it already exists).
        token: Hub token; None uses huggingface_hub's usual sources (``HF_TOKEN``, the saved login).
        commit_message: the commit message.
        dry_run: only list the files that would be sent; contacts nothing.
        create_repo: create the repository if it does not exist.

    Returns:
        The relative paths of the files sent (or that would be sent); hidden files and files that look like
        credentials are never among them (:func:`skipped_upload_files`).

    Raises:
        ValueError: the folder fails validation, or ``repo_id`` is malformed.
    """
    path = validate_hub_folder(folder)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'namespace/name', got {repo_id!r}.")
    files = list_upload_files(path)
    if dry_run:
        return files

    # Looked up on the module at call time (not imported by name) so tests can monkeypatch them.
    import huggingface_hub

    if create_repo:
        # private=None lets an organisation's "private by default" setting apply when private was not asked for.
        huggingface_hub.create_repo(
            repo_id, token=token, private=True if private else None, repo_type="model", exist_ok=True
        )
    if revision is not None and not revision.startswith("refs/pr/"):
        # upload_folder fails on a branch that does not exist yet.
        huggingface_hub.create_branch(repo_id, branch=revision, token=token, repo_type="model", exist_ok=True)
    huggingface_hub.upload_folder(
        repo_id=repo_id,
        folder_path=str(path),
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        token=token,
        # A fresh list (upload_folder extends the list it is given in place) that also leaves out hidden files and
        # anything that looks like a credential.
        ignore_patterns=_upload_ignore_patterns(path),
    )
    return files


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def _human_size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def _cmd_push(args: argparse.Namespace) -> int:
    try:
        files = push_to_hub(
            args.folder,
            args.repo_id,
            revision=args.revision,
            private=args.private,
            commit_message=args.commit_message,
            dry_run=args.dry_run,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (HfHubHTTPError, OSError) as exc:
        # Network, permission or missing-token failures: report them without a traceback (the token never appears).
        print(f"error: upload failed: {exc}", file=sys.stderr)
        return 1
    folder = Path(args.folder)
    sizes = {f: (folder / f).stat().st_size for f in files}
    target = f"{args.repo_id}@{args.revision or 'main'}"
    verb = "Would upload" if args.dry_run else "Uploaded"
    print(f"{verb} {len(files)} file(s), {_human_size(sum(sizes.values()))}, to {target}:")
    for name in files:
        print(f"  {_human_size(sizes[name]):>10}  {name}")
    skipped = skipped_upload_files(folder)
    if skipped:
        print(f"Skipped {len(skipped)} file(s), never uploaded:")
        for name, reason in skipped:
            print(f"  {name}  ({reason})")
    return 0


def _read_json(path: str | None, what: str) -> Any:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Cannot read the {what} JSON {path}: {exc}") from exc


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


def _cmd_model_card(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not (folder / "config.json").is_file():
        print("error: the model folder has no config.json: pass a folder written by save_pretrained.", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else folder / "README.md"
    if output.exists() and not args.overwrite:
        # a card is curated: its measured results and hand-written sections must not vanish by accident
        print(
            f"error: {output.name} already exists and may hold measured results and hand-written sections: pass "
            "--overwrite to replace it, or --output FILE to write the new card elsewhere.",
            file=sys.stderr,
        )
        return 2
    try:
        from transformers import AutoConfig

        try:
            # no trust_remote_code: the folder's Python files would run; cxr-hub's own types are registered on import
            config: Any = AutoConfig.from_pretrained(str(folder))
        except (ValueError, KeyError, OSError, ImportError):
            # A model type that is not registered: the card needs only the raw fields.
            config = _read_json(str(folder / "config.json"), "config")
        metrics = _read_json(args.metrics, "metrics")
        if isinstance(metrics, Mapping):
            dataset = {"name": args.dataset_name, "type": "cxr-hub-manifest"} if args.dataset_name else None
            metrics = card_metrics_from_report(metrics, dataset, part="global" if args.use_global else None) or metrics
        card = render_model_card(
            config,
            metrics=metrics,
            template=args.template,
            model_name=args.model_name or folder.resolve().name,
            repo_id=args.repo_id,
            training=_read_json(args.training, "training"),
            license=args.license,
            revision=args.revision,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output.write_text(card, encoding="utf-8")
    print(f"Wrote {output}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers the ``push`` and ``model-card`` subcommands.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    push = subparsers.add_parser(
        "push",
        help="upload an exported model folder to the Hugging Face Hub",
        description="Checks an exported folder (config.json, safetensors, README.md, no pickles) and uploads it. "
        "The token comes from HF_TOKEN or `hf auth login`; it is never printed.",
    )
    push.add_argument("folder", help="folder written by cxr_hub.hub.export_hub_folder")
    push.add_argument("--repo-id", required=True, help="target repository, namespace/name")
    push.add_argument("--revision", default=None, help="branch to commit to (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--dry-run", action="store_true", help="list the files and sizes that would be sent; no upload")
    push.add_argument("--commit-message", default="Upload cxr-hub model", help="commit message")
    push.set_defaults(func=_cmd_push)

    card = subparsers.add_parser(
        "model-card",
        help="re-render README.md of an exported model folder",
        description="Renders the model card of an exported folder from its config.json and a metrics JSON (the "
        "metrics.json of evaluate or evaluate-segmentation, or card metrics). Without --metrics the card says the "
        "model is not yet evaluated. An existing card is never replaced without --overwrite.",
    )
    card.add_argument("folder", help="exported model folder (with config.json)")
    card.add_argument(
        "--metrics",
        default=None,
        help="metrics.json written by evaluate or evaluate-segmentation, or card metrics: "
        '{"dataset": {"name", "type", "split"}, "values": {name: number}} or {name: number}',
    )
    card.add_argument(
        "--global",
        dest="use_global",
        action="store_true",
        help="take the global classifier's part of an evaluate metrics.json (evaluate --global-classifier)",
    )
    card.add_argument("--dataset-name", default=None, help="dataset name on the card (default: from the metrics)")
    card.add_argument("--template", default=None, help="template name in model_cards/ or a path to a .md file")
    card.add_argument("--training", default=None, help="training description JSON (a string or a dict)")
    card.add_argument("--repo-id", default=None, help="Hub repository id shown in the usage snippets")
    card.add_argument("--revision", default=None, help="revision shown in the usage snippets")
    card.add_argument("--model-name", default=None, help="card title (default: the folder name)")
    card.add_argument("--license", default="apache-2.0", help="Hub license id (default: apache-2.0)")
    card.add_argument("--output", default=None, help="where to write the card (default: FOLDER/README.md)")
    card.add_argument(
        "--overwrite", action="store_true", help="replace an existing card (its measured and hand-written content)"
    )
    card.set_defaults(func=_cmd_model_card)
