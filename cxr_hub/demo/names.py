"""How the demo names things for people: the model choices' labels, the classes, numbers.

The engine knows a model choice by its id (:data:`cxr_hub.demo.discovery.MODEL_CHOICES`); the UI, the JSON summary
and the report show :data:`MODEL_LABELS` instead, and the UI's answers arrive as those labels (:func:`model_id`).
"""

from __future__ import annotations

import math

from .discovery import COVIDX_MODEL, PAPER_MODEL

__all__ = [
    "CLASS_DISPLAY",
    "COVIDX_LABEL",
    "LABEL_CHOICES",
    "MODEL_LABELS",
    "PAPER_LABEL",
    "SOURCE_DISPLAY",
    "display_name",
    "format_number",
    "model_id",
    "model_label",
]

#: Model choice id → its label in the UI, the public API (``model=...``), the JSON summary and the report.
MODEL_LABELS: dict[str, str] = {PAPER_MODEL: "Paper 4-class model", COVIDX_MODEL: "COVIDx 3-class model"}
PAPER_LABEL = MODEL_LABELS[PAPER_MODEL]
COVIDX_LABEL = MODEL_LABELS[COVIDX_MODEL]
#: The model selector's choices, in order.
LABEL_CHOICES = tuple(MODEL_LABELS.values())

#: Display names of the classifiers' classes (the JSON keeps the config's names).
CLASS_DISPLAY = {
    "normal": "normal",
    "bacterial": "bacterial pneumonia",
    "tuberculosis": "tuberculosis",
    "viral_covid": "viral pneumonia / COVID-19",
    "pneumonia": "pneumonia (non-COVID-19)",
    "covid": "COVID-19",
}


#: Display names of the image collections (the manifest's ``source`` values).
SOURCE_DISPLAY = {
    "jsrt": "JSRT",
    "nih": "NIH ChestX-ray14",
    "cohen": "COVID-19 image data collection (Cohen et al.)",
}


def model_label(choice: str) -> str:
    """The label of a model choice id (:data:`MODEL_LABELS`); an unknown id is shown as it is."""
    return MODEL_LABELS.get(choice, choice)


def model_id(label: object) -> str | None:
    """The model choice id of a label, as the UI and the API send it; None for anything else.

    Compared, never hashed: an API call can send any JSON value, and the engine refuses None with its own
    :class:`~cxr_hub.demo.engine.UnknownModelError` after its earlier checks (so errors keep their order).
    """
    return next((choice for choice, text in MODEL_LABELS.items() if text == label), None)


def display_name(name: str, untrained: list[str] | None = None) -> str:
    """Readable class name, marked when the classifier never saw that class."""
    text = CLASS_DISPLAY.get(name, name.replace("_", " "))
    return f"{text} (untrained, no images)" if untrained and name in untrained else text


def format_number(value: float | None, spec: str = ".3f") -> str:
    """``format(value, spec)``, or "n/a" for None, NaN and infinities."""
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)
