"""The app's two model choices and where their networks come from (nothing is loaded here).

A choice is named by a stable id, the label set its classifier predicts: :data:`PAPER_MODEL` (``"label4"``, the
paper's four classes) and :data:`COVIDX_MODEL` (``"label3"``, COVIDx's three). How a UI names them for people
("Paper 4-class model", ...) is :data:`cxr_hub.demo.names.MODEL_LABELS`, never a key here. Each choice's networks
come from an environment variable (a folder written by ``save_pretrained`` or a Hub repo id) or, by default, from
the repository's ``models/<name>/`` folder (:data:`cxr_hub.presets.SHIPPED`); :func:`discover_models` resolves them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import presets
from ..presets import SHIPPED

__all__ = [
    "COVIDX_MODEL",
    "MODELS_DIR",
    "MODEL_CHOICES",
    "MODEL_SPECS",
    "PAPER_MODEL",
    "SEGMENTATION_ENV",
    "SEGMENTATION_FOLDER",
    "ModelSources",
    "ModelSpec",
    "discover_models",
]

#: The repository's ``models/`` folder (when run from a checkout); the default place of the shipped models.
MODELS_DIR = presets.MODELS_DIR

#: The ids of the two model choices: the label set of each one's classifier (stable, unlike what a UI shows).
PAPER_MODEL = "label4"
COVIDX_MODEL = "label3"
MODEL_CHOICES = (PAPER_MODEL, COVIDX_MODEL)

SEGMENTATION_ENV = SHIPPED["segmentation"].env
SEGMENTATION_FOLDER = SHIPPED["segmentation"].folder


@dataclass(frozen=True)
class ModelSpec:
    """Where one model choice's networks come from: env variable names and default folders under ``models/``."""

    label_set: str
    classifier_env: str
    classifier_folder: str
    global_env: str | None = None
    global_folder: str | None = None


#: Model choice id → where its networks come from.
MODEL_SPECS: dict[str, ModelSpec] = {
    PAPER_MODEL: ModelSpec(
        "label4",
        SHIPPED["label4/patch"].env,
        SHIPPED["label4/patch"].folder,
        SHIPPED["label4/global"].env,
        SHIPPED["label4/global"].folder,
    ),
    COVIDX_MODEL: ModelSpec("label3", SHIPPED["label3/patch"].env, SHIPPED["label3/patch"].folder),
}

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class ModelSources:
    """The model sources of one choice (its id in ``choice``): local folders or Hub repo ids, None when absent."""

    choice: str
    label_set: str
    segmentation: str | None
    classifier: str | None
    global_classifier: str | None
    notes: tuple[str, ...] = ()


def _resolve(env_name: str | None, folder: str | None, environ: Mapping[str, str], models_dir: Path) -> tuple:
    """``(source, note)`` for one model: the env value (folder or Hub repo id) if set, else ``models_dir/folder``."""
    value = environ.get(env_name, "").strip() if env_name else ""
    if value:
        path = Path(value).expanduser()
        if (path / "config.json").is_file():
            return str(path), None
        if not path.exists() and _REPO_ID.fullmatch(value) and not value.startswith((".", "/", "~")):
            return value, None  # a Hub repo id: from_pretrained fetches it (or fails with a message)
        return None, f"{env_name}={value!r} is neither a model folder (no config.json there) nor a Hub repo id."
    if folder and (models_dir / folder / "config.json").is_file():
        return str(models_dir / folder), None
    return None, None


def discover_models(
    choice: str, environ: Mapping[str, str] | None = None, models_dir: Path | None = None
) -> ModelSources:
    """Maps a model choice to its model sources (nothing is loaded).

    Environment overrides (a folder written by ``save_pretrained`` or a Hub repo id): ``CXR_HUB_SEGMENTATION``,
    ``CXR_HUB_CLASSIFIER`` (paper 4-class), ``CXR_HUB_CLASSIFIER_LABEL3`` (COVIDx 3-class),
    ``CXR_HUB_GLOBAL_CLASSIFIER`` (paper 4-class global model). Defaults: the folders of :data:`cxr_hub.presets.SHIPPED`
    (``segmentation``, ``label4/patch``, ``label3/patch``, ``label4/global``).

    Args:
        choice: a model choice id, one of :data:`MODEL_CHOICES`.
        environ: environment to read the overrides from (default ``os.environ``).
        models_dir: folder of the default model folders (default :data:`MODELS_DIR`).

    Raises:
        ValueError: unknown choice.
    """
    if choice not in MODEL_SPECS:
        raise ValueError(f"Unknown model {choice!r}; choose one of {list(MODEL_SPECS)}.")
    environ = os.environ if environ is None else environ
    models_dir = MODELS_DIR if models_dir is None else Path(models_dir)
    spec = MODEL_SPECS[choice]
    seg, n1 = _resolve(SEGMENTATION_ENV, SEGMENTATION_FOLDER, environ, models_dir)
    clf, n2 = _resolve(spec.classifier_env, spec.classifier_folder, environ, models_dir)
    glob, n3 = _resolve(spec.global_env, spec.global_folder, environ, models_dir)
    notes = tuple(n for n in (n1, n2, n3) if n)
    return ModelSources(choice, spec.label_set, seg, clf, glob, notes)
