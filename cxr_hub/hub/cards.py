"""Model cards for cxr-hub models: a markdown template filled with the model's config and *measured* metrics.

:func:`render_model_card` fills a markdown template from ``model_cards/`` (or :data:`BUILTIN_TEMPLATE`) with the
model's config and measured metrics (:mod:`cxr_hub.hub.card_metrics`), the paper comparison
(:mod:`cxr_hub.hub.paper_comparison`) and usage snippets, and prepends Hugging Face YAML front matter generated with
``yaml.safe_dump`` (so it always parses). No argument parsing and no printing here: ``python -m cxr_hub model-card``
is :mod:`cxr_hub.cli.hub`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..presets import REPO_ROOT
from .card_metrics import (
    _MISSING,
    CLASSIFICATION_MODEL_TYPES,
    SEGMENTATION_MODEL_TYPES,
    _config_get,
    _format_value,
    _md_cell,
    _model_type,
    _normalize_metrics,
)
from .paper_comparison import paper_comparison_section

__all__ = [
    "BUILTIN_TEMPLATE",
    "CITATION_BIBTEX",
    "MODEL_CARDS_DIR",
    "evaluation_section",
    "pipeline_tag_for",
    "render_model_card",
]

# Resolved from the source tree; installed wheels do not carry this folder, hence BUILTIN_TEMPLATE below.
MODEL_CARDS_DIR = REPO_ROOT / "model_cards"
DEFAULT_TEMPLATE_NAME = "template"

BASE_TAGS = ("medical-imaging", "chest-x-ray", "covid-19", "research-only")


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


def evaluation_section(results: list[dict[str, Any]]) -> str:
    """The card's "Evaluation" section: a table of every measured value, or a plain "not yet evaluated".

    Args:
        results: normalised results, each ``{"dataset": {"name", "split", ...}, "values": {metric: number}}`` (the
            front matter's ``model-index`` results, as ``training/refresh_card_metrics.py`` reads them back).

    Returns:
        Markdown: a lead sentence and a ``| Dataset | Split | Metric | Value |`` table.
    """
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

    Over 80 lines for documenting its twelve arguments and the template's placeholders; each section of the card
    is rendered by a helper above.

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
        "evaluation": evaluation_section(results),
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
