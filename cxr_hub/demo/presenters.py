"""What the demo says about an analysis, in words: the JSON summary, the markdown panels, the model status and cards.

Plain functions of an :class:`~cxr_hub.demo.engine.Analysis` (or of the engine, for what it has loaded); no gradio
here. The images, the report files and the mapping of an analysis to the UI's outputs are in
:mod:`cxr_hub.demo.outputs`. Model choices are shown by their labels (:data:`cxr_hub.demo.names.MODEL_LABELS`).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .biomarker_reference import BIOMARKER_REFERENCE, biomarker_panel
from .discovery import MODEL_CHOICES, MODEL_SPECS, SEGMENTATION_ENV, SEGMENTATION_FOLDER
from .engine import PREDICTED, Analysis, CXRApp, LoadedModels, UnknownClassError, UnknownModelError
from .names import LABEL_CHOICES, SOURCE_DISPLAY, display_name, model_label

__all__ = [
    "BIOMARKERS_NEED_SEGMENTATION",
    "biomarkers_markdown",
    "details_markdown",
    "example_label",
    "example_rows",
    "input_error_message",
    "limits_text",
    "model_cards",
    "models_status",
    "request_timings",
    "summary_dict",
    "summary_markdown",
    "triage_text",
]


# ------------------------------------------------------------------------------------------------ the JSON summary


def _map_stats(maps: Mapping[str, np.ndarray] | None, lung: np.ndarray | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, m in (maps or {}).items():
        total = float(m.sum(dtype=np.float64))
        share = float(m[lung].sum(dtype=np.float64)) / total if lung is not None and total > 0 else None
        out[name] = {"min": float(m.min()), "max": float(m.max()), "mean": float(m.mean()), "in_lung": share}
    return out


def summary_dict(a: Analysis, include_patches: bool = False) -> dict[str, Any]:
    """JSON-ready summary of an analysis (the API's ``result`` output and the downloadable report).

    Args:
        a: the analysis.
        include_patches: add the per-patch boxes and probabilities (the report; the UI's JSON view stays small).

    Returns:
        Strict JSON values only (NaN and infinities → None): mode, the model choice's label, the model sources,
        classes, parameters, biomarkers and their reference, the triage text, warnings, the input check, and with a
        classifier the vote (``label``, ``votes``, ``vote_fraction``, ``probabilities``, global model) and saliency
        statistics (min, max, mean in [0, 1] and the share inside the lungs), ``limits`` (:func:`limits_text`) and
        ``measured`` (the model card's test numbers it is made from); ``timings_ms`` in milliseconds.
    """
    m, r = a.models, a.result
    out: dict[str, Any] = {
        "disclaimer": "Research and education only. Not for clinical use.",
        "mode": m.mode,
        "model_choice": model_label(m.sources.choice),
        "models": {
            "segmentation": m.sources.segmentation,
            "classifier": m.sources.classifier if m.classifier_loaded else None,
            "global_classifier": m.sources.global_classifier if r is not None and r.global_label else None,
        },
        "class_names": m.class_names,
        "trained_classes": m.trained_classes,
        "untrained_classes": m.untrained_classes,
        "k": a.k,
        "patch_size": a.patch_size,
        "seed": a.seed,
        "saliency_class": a.saliency_class,
        "image_size": list(a.image.shape[:2]) if a.prepared is not None else None,
        "num_patch_boxes": None if a.boxes is None else len(a.boxes),
        "biomarkers": a.prepared.biomarkers.to_dict() if a.prepared is not None else None,
        "biomarker_reference": BIOMARKER_REFERENCE,
        "triage_education": triage_text(a, markdown=False),
        "cache": "hit" if a.cache_hit else "miss",
        "device": str(m.pipeline.device) if m.pipeline is not None else None,
        "warnings": list(dict.fromkeys(a.warnings)),
        "input_check": a.input_check.to_dict() if a.input_check is not None else None,
    }
    if r is not None:
        full = r.to_dict()
        for key in ("label", "votes", "vote_fraction", "probabilities", "global_label", "global_probabilities"):
            out[key] = full[key]
        out["saliency_stats"] = _map_stats(r.saliency, r.lung_mask)
        out["global_saliency_stats"] = _map_stats(r.global_saliency, r.lung_mask) or None
        out["limits"] = limits_text(m, markdown=False)
        out["measured"] = dict(m.card_metrics)  # the card's test numbers the limits text is made from
        out["timings_ms"] = request_timings(a)
        if include_patches:
            for key in ("patch_boxes", "patch_boxes_1024", "patch_centers_1024", "patch_probabilities"):
                out[key] = full[key]
    else:
        out["label"] = None
        out["votes"] = None
        out["timings_ms"] = request_timings(a)
        if include_patches and a.boxes is not None:
            out["patch_boxes"] = np.asarray(a.boxes, float).tolist()
            out["patch_boxes_1024"] = np.asarray(a.boxes_1024, int).tolist()
    return _json_safe(out)


def request_timings(a: Analysis) -> dict[str, float]:
    """ms spent on this request: the pipeline's stages, then the app's (``app_prepare``: prepare or cache lookup,
    ``app_analyze``, ``app_total``). On a cache hit the prepare stages are left out: the pipeline reports what they
    cost when the image was first prepared, not now."""
    timings = dict(a.result.timings) if a.result is not None else dict(a.prepared.timings if a.prepared else {})
    if a.cache_hit:
        timings = {k: v for k, v in timings.items() if k in ("sample", "classify", "saliency", "global", "analyze")}
    timings.update(a.timings)
    return timings


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def triage_text(a: Analysis, markdown: bool = True) -> str:
    """The paper's Fig. 9 idea for the predicted class, worded as education (never advice)."""
    r = a.result
    head = "**What the paper's workflow (Fig. 9) describes — education, not advice.** " if markdown else ""
    if r is None:
        return head + (
            "No classification, so no triage illustration. In the paper's scheme, images classified as viral "
            "pneumonia / COVID-19-like go on to confirmation by RT-PCR or CT; normal, bacterial and tuberculosis go "
            "to the other (usual) pathways."
        )
    if r.label in a.models.untrained_classes:
        return head + (
            f"The majority vote is '{display_name(r.label)}', a class this model never saw in training: "
            "the vote means nothing, so there is nothing to illustrate."
        )
    if r.label in ("viral_covid", "covid"):
        step = (
            "an image the model puts in the viral / COVID-19-like group would be sent on to confirmation by "
            "RT-PCR or CT."
        )
    elif r.label == "pneumonia":
        step = (
            "this 3-class model's 'pneumonia' mixes bacterial and non-COVID viral pneumonia, which the paper's "
            "scheme sends down different paths (viral → RT-PCR/CT, bacterial → other pathway), so the 3-class "
            "label does not map cleanly onto Fig. 9."
        )
    else:
        step = (
            f"an image classified as '{display_name(r.label)}' would follow the other (usual) pathway for that "
            "finding, not the COVID-19 confirmation path."
        )
    return head + (
        f"In the paper's proposed workflow, {step} Only a clinician, with the patient, tests and history, decides "
        "anything; this demo is not validated for any clinical use."
    )


def limits_text(models: LoadedModels, markdown: bool = True) -> str:
    """How far to trust a vote of this classifier, in words an educator can repeat, from its card's test numbers.

    The numbers (accuracy per image collection, sensitivity per trained class) are read from the model card
    (:attr:`LoadedModels.card_metrics`), so they describe the weights that are loaded and change when the card is
    re-rendered for new weights; nothing is typed here.
    """
    metrics = models.card_metrics
    untrained = models.untrained_classes
    prefix = "accuracy_source_"
    sources = sorted((k.removeprefix(prefix), v) for k, v in metrics.items() if k.startswith(prefix))
    classes = [
        (c, metrics[f"sensitivity_{c}"])
        for c in models.class_names
        if c not in untrained and f"sensitivity_{c}" in metrics
    ]
    head = "**How far to trust this vote.** " if markdown else "How far to trust this vote. "
    if not sources and not classes:
        return head + (
            "This model's card carries no measured test numbers, so nothing here says how often it is right. Treat "
            "the vote as an illustration of the method only."
        )
    measured = []
    if sources:
        measured.append(
            "right on " + ", ".join(f"{v:.0%} of the {SOURCE_DISPLAY.get(name, name)} films" for name, v in sources)
        )
    if classes:
        measured.append("by class: " + ", ".join(f"{display_name(c)} {v:.0%} found" for c, v in classes))
    return head + (
        f"On our test films this model was {'; '.join(measured)}. In our data each class comes mostly from one or "
        "two image collections, so part of what a model learns can be which collection a film comes from rather "
        "than the disease: a gap between collections is the sign of it. It was not tested on films from other "
        "hospitals, where a vote can be wrong however clear the majority."
    )


# ------------------------------------------------------------------------------------------------ markdown panels


def summary_markdown(a: Analysis) -> str:
    """The summary panel: the majority vote and every class's votes, or why there is no classification."""
    m, r = a.models, a.result
    if m.mode == "no_models":
        return (
            "### No segmentation model could be loaded\n"
            f"This app needs at least the lung/heart segmentation model (`models/{SEGMENTATION_FOLDER}` in the "
            f"repository, or `{SEGMENTATION_ENV}`), and none could be loaded here, so nothing is analysed: the image "
            "above is shown as loaded. Untrained (random) weights are never used to produce a result."
            + "".join(f"\n- {e}" for e in m.errors)
        )
    if r is None:
        return (
            "### No classifier loaded\n"
            f"The {model_label(m.sources.choice)}'s classifier was not found or could not be loaded (see *Which "
            "models are loaded*), so this app does **not** classify the image: no vote, no probabilities and no "
            f"saliency map (random weights are never used). What you see is real: the segmentation, where the K = "
            f"{a.k} patches of {a.patch_size} px would be taken (same seed → same patches), and the biomarkers."
        )
    n = r.k
    untrained = m.untrained_classes
    lines = [f"### Majority vote: **{display_name(r.label, untrained)}** — {r.votes[r.label]} of {n} patches"]
    lines.append(
        " · ".join(
            f"{display_name(c, untrained)}: {r.votes[c]} ({r.vote_fraction[c]:.0%})"
            for c in r.class_names
            if c in r.votes
        )
    )
    if r.global_label is not None:
        lines.append(f"Global (whole-image) model: **{display_name(r.global_label, untrained)}**.")
    if untrained:
        lines.append(
            f"**Never trained (no images):** {', '.join(display_name(c) for c in untrained)} — votes for it are "
            "meaningless."
        )
    lines.append(limits_text(m))
    return "\n\n".join(lines)


#: The biomarker panel without a segmentation (the ``no_models`` mode): what is missing, and where it comes from.
BIOMARKERS_NEED_SEGMENTATION = (
    "No biomarkers: they are measured on the lung/heart segmentation, and no segmentation model could be loaded "
    "here (see *Which models are loaded*)."
)


def biomarkers_markdown(a: Analysis) -> str:
    """The biomarker panel (:func:`~cxr_hub.demo.biomarker_reference.biomarker_panel`), or why there is none."""
    if a.prepared is None:
        return BIOMARKERS_NEED_SEGMENTATION
    # ours and the paper's per-class values, in the paper's units
    return biomarker_panel(a.prepared.biomarkers)


def details_markdown(a: Analysis) -> str:
    """Device, whether the segmentation came from the cache, the request's timings and the pipeline's warnings."""
    m = a.models
    device = str(m.pipeline.device) if m.pipeline is not None else "—"
    parts = [f"**Device:** {device}"]
    if m.pipeline is not None:
        parts.append("**segmentation:** " + ("reused from the cache" if a.cache_hit else "computed for this image"))
    timings = request_timings(a)
    parts.append("**timings (ms):** " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    text = " · ".join(parts)
    warnings = list(dict.fromkeys(a.warnings))
    if warnings:
        text += "\n\n**Warnings from the pipeline:**\n" + "\n".join(f"- {w}" for w in warnings)
    return text


def input_error_message(exc: Exception, model: object) -> str:
    """The message the UI shows for an input error, with the model named by the label the UI sent (``model``).

    The engine names model choices by their ids; an unknown model or class is worded here with the labels a visitor
    sees (:data:`~cxr_hub.demo.names.MODEL_LABELS`). Every other message is the engine's or the pipeline's own.
    """
    if isinstance(exc, UnknownModelError):
        return f"Unknown model {model!r}; choose one of: {', '.join(LABEL_CHOICES)}."
    if isinstance(exc, UnknownClassError):
        return (
            f"Unknown class {exc.saliency_class!r} for the {model_label(exc.choice)}; choose {PREDICTED!r} or one "
            f"of {exc.class_names}."
        )
    return str(exc)


# ------------------------------------------------------------------------------------- models and example images


def models_status(engine: CXRApp) -> str:
    """Markdown list of which networks each model choice found (the *Which models are loaded* accordion)."""
    lines = []
    for choice in MODEL_CHOICES:
        s = engine.sources(choice)
        # plain words, no emoji: headless browsers and many school computers have no emoji font
        seg = "segmentation: available" if s.segmentation else "segmentation: **not found**"
        clf = "classifier: available" if s.classifier else "classifier: **not found** (no vote, no saliency)"
        glob = ""
        if MODEL_SPECS[choice].global_env:
            glob = " · global model: " + ("available" if s.global_classifier else "**not found**")
        lines.append(f"- **{model_label(choice)}:** {seg} · {clf}{glob}")
        lines.extend(f"  - problem: {n}" for n in s.notes)
    if not any(engine.sources(c).segmentation for c in MODEL_CHOICES):
        lines.insert(0, "**No segmentation model found.** The app starts and explains; it analyses nothing.")
    return "\n".join(lines)


def model_cards(engine: CXRApp) -> str:
    """Markdown with the model card (``README.md``) of every network the engine would load, each folded away."""
    parts = []
    seen: set[str] = set()
    for choice in MODEL_CHOICES:
        s = engine.sources(choice)
        for role, src in (
            ("segmentation", s.segmentation),
            ("classifier", s.classifier),
            ("global", s.global_classifier),
        ):
            if src is None or src in seen:
                continue
            seen.add(src)
            card = Path(src) / "README.md"
            text = card.read_text() if card.is_file() else f"No local model card; see the model's Hub page `{src}`."
            text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)  # Hub YAML front matter is not for people
            parts.append(f"<details><summary><b>{role}: {src}</b></summary>\n\n{text}\n\n</details>")
    if not parts:
        parts.append(
            "No model is loaded here, so there is no model card to show. The cards (intended use, training data, "
            "measured metrics, limitations) come with the weights in `models/<name>/README.md`."
        )
    return "\n\n".join(parts)


def example_rows(examples_dir: Path) -> list[dict[str, str]]:
    """The rows of ``examples_dir/examples.csv`` whose image exists, one per class in teaching order."""
    path = examples_dir / "examples.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if (examples_dir / r["file"]).is_file()]
    # one per class, in the order a teacher would show them
    order = {"normal": 0, "bacterial": 1, "pneumonia": 2, "covid": 3}
    return sorted(rows, key=lambda r: order.get(r.get("label4") or r.get("label3") or "", 9))


def example_label(row: Mapping[str, str]) -> str:
    """ "Finding — collection (licence)" from a row of ``examples/examples.csv``."""
    source = SOURCE_DISPLAY.get(row["source"], row["source"])
    licence = row["license"].split(": ", 1)[-1]  # "NIH ChestX-ray14: public, ..." → "public, ..."
    return f"{row['finding']} — {source}, {licence}"
