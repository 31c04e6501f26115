"""The demo app's engine, without any UI: model discovery and loading, per-image caching, analysis, reports.

``app.py`` (Gradio) is a thin layer over this module: it builds the Blocks, turns an :class:`Analysis` into its
components' values and converts :class:`AppInputError` / :class:`cxr_hub.CXRInputError` into ``gr.Error``. Nothing
here imports gradio or pandas, so the engine can be used (and tested) from plain Python or a notebook::

    from cxr_hub.demo import CXRApp, summary_dict

    engine = CXRApp(device="cpu")
    analysis = engine.analyze("examples/covid19_cohen_2168a917.jpg", k=100, patch_size=224, seed=0)
    summary = summary_dict(analysis)  # JSON-ready: mode, label, votes, biomarkers, warnings, timings, ...

Honesty rules (the app never shows more than its models and the upload support):

* Models come from ``models/<name>/`` in the repository (where the trained models ship) or from the environment
  (:func:`discover_models`). A classifier that is missing or fails to load → a segmentation-only
  :class:`cxr_hub.CXRPipeline` (``classifier_model=None``): segmentation, patch positions
  (:meth:`~cxr_hub.CXRPipeline.sample_patches`, the same boxes a classifier would use) and biomarkers only; no vote,
  probability or saliency map is ever computed with untrained weights. A missing segmentation model → the app still
  starts and explains that it cannot analyse anything.
* Classes a classifier never saw in training (``config.trained_classes``, e.g. tuberculosis: no images) are
  listed in :attr:`LoadedModels.untrained_classes` and marked "untrained" wherever they appear.
* An upload that is not a frontal chest X-ray (a photograph, a lateral film, a CT slice, a rotated or inverted
  film, ...) is refused by the pipeline's own input-validity check (:mod:`cxr_hub.validity`, run inside
  :meth:`cxr_hub.CXRPipeline.prepare`): :class:`cxr_hub.validity.NotAFrontalCXRError`, a ``CXRInputError`` whose
  message the UI shows as its error. The decision is the pipeline's, never the app's; a refusal is remembered per
  image, so moving a slider does not segment it again.

Speed: :meth:`CXRPipeline.prepare` (segmentation, the 1024 lung-masked frame, biomarkers) is cached per image in an
LRU keyed by a hash of the decoded pixels (never the file name), so changing K, the patch size, the seed or the class
re-runs only the patch vote and saliency.

Privacy: only pixel arrays from :func:`cxr_hub.load_image` are used; no DICOM header field and no file name is
put into an :class:`Analysis`, a summary or a report.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from PIL import Image
from torch import nn

from . import presets
from .io import load_image
from .loading import UnsafeCheckpointError, allow_pickle_from_env, load_model
from .models import LABEL_SETS
from .paper import BIOMARKER_TABLES, INTENSITY_SCALE, LABEL4_TO_PAPER, PAPER_CLASS_NAMES, paper_mean_sd, to_paper_units
from .pipeline import CLASSIFIER_PRECISIONS, CXRPipeline, PipelineResult, PreparedImage
from .preprocessing import resize_image
from .presets import SHIPPED
from .validity import NotAFrontalCXRError, ValidityReport
from .visualize import (
    BOX_COLOUR,
    display_size,
    draw_boxes,
    draw_segmentation,
    heat_overlay,
    patch_mosaic,
    report_figure,
    to_uint8,
)

__all__ = [
    "COVIDX_MODEL",
    "MODEL_CHOICES",
    "MODEL_SPECS",
    "PAPER_MODEL",
    "PREDICTED",
    "Analysis",
    "AppInputError",
    "CXRApp",
    "LRUCache",
    "LoadedModels",
    "ModelSources",
    "ModelSpec",
    "biomarker_panel",
    "discover_models",
    "display_name",
    "format_number",
    "pixel_hash",
    "request_timings",
    "saliency_images",
    "steps",
    "summary_dict",
    "triage_text",
    "write_report",
]

#: The repository's ``models/`` folder (when run from a checkout); the default place of the shipped models.
MODELS_DIR = presets.MODELS_DIR

PAPER_MODEL = "Paper 4-class model"
COVIDX_MODEL = "COVIDx 3-class model"
MODEL_CHOICES = (PAPER_MODEL, COVIDX_MODEL)
PREDICTED = "predicted class"

K_MIN, K_MAX, K_DEFAULT = 1, 400, 100
PATCH_MIN, PATCH_MAX, PATCH_STEP, PATCH_DEFAULT = 112, 448, 16, 224
#: Prepared images kept (a 1024² film costs ~15 MB, a 3000² DICOM ~100 MB).
PREPARED_CACHE_SIZE = 6
#: Recent analyses kept for the "How it works" tab.
RESULT_CACHE_SIZE = 8
#: Longer side of the images sent to the browser (analysis always uses the original pixels), and of a report panel.
DISPLAY_SIDE = 768
REPORT_PANEL_SIDE = 512

SEGMENTATION_ENV = SHIPPED["segmentation"].env
SEGMENTATION_FOLDER = SHIPPED["segmentation"].folder
PRECISION_ENV = "CXR_HUB_PRECISION"
#: How error messages name an uploaded file (never its path or file name, which can carry a patient's name).
UPLOAD_NAME = "The uploaded file"

#: Display names of the classifiers' classes (the JSON keeps the config's names).
CLASS_DISPLAY = {
    "normal": "normal",
    "bacterial": "bacterial pneumonia",
    "tuberculosis": "tuberculosis",
    "viral_covid": "viral pneumonia / COVID-19",
    "pneumonia": "pneumonia (non-COVID-19)",
    "covid": "COVID-19",
}

#: Per-class biomarker reference values measured on this project's curated data by ``python -m cxr_hub biomarkers``
#: (the run behind RESULTS.md's tables, written by ``cxr_hub.biomarker_analysis.write_outputs``), shipped with the
#: package: ``{"description", "classes", "n", "units", "values": {biomarker: {class: "mean ± SD"}}, "stats":
#: {biomarker: {class: {"n", "mean", "sd"}}}}``. The paper's values shown beside them (Tables VI, VII, IX) come from
#: :mod:`cxr_hub.paper`, never typed here.
REFERENCE_FILE = Path(__file__).resolve().parent / "data" / "biomarker_reference.json"
REFERENCE_PENDING = "no per-class reference measured yet (run python -m cxr_hub biomarkers)"


def load_biomarker_reference(path: Path | None = None) -> dict[str, Any] | None:
    """The shipped per-class biomarker reference (see :data:`REFERENCE_FILE`), or None when absent or unreadable."""
    try:
        ref = json.loads((path or REFERENCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(ref, dict) or not isinstance(ref.get("values"), dict) or not ref.get("classes"):
        return None
    return ref


BIOMARKER_REFERENCE: dict[str, Any] | None = load_biomarker_reference()

#: The biomarker panel's rows: (key, label, digits in the paper's units); lung area has no counterpart in the paper.
PANEL_BIOMARKERS: tuple[tuple[str, str, int], ...] = (
    ("cardiothoracic_ratio", "cardiothoracic ratio", 3),
    ("lung_mean_intensity", "lung mean intensity", 3),
    ("lung_std_intensity", "lung intensity spread (SD)", 3),
    ("lung_area_fraction", "lung area (share of image)", 3),
)

#: What differs between the paper's per-class values and ours, shown under the panel's table.
BIOMARKER_PANEL_NOTE = (
    "Same units on every row: intensities are gray levels of the preprocessed image (histogram equalisation, gamma "
    f"0.5) divided by {INTENSITY_SCALE:.0f}, the paper's [0, 1] scale; the cardiothoracic ratio is a plain ratio. "
    "**How the two references differ:** the paper measured its own films with its own masks; ours are this "
    "project's films with our segmentation model's masks (the ratio from the largest connected heart and lung "
    "regions), and class and collection are confounded in our data. The paper keeps viral and COVID-19 apart, "
    "while our label4 class viral/COVID-19 merges them; tuberculosis is a class of the paper only — our data have "
    "no tuberculosis images, so our models never learnt it and we have no values for it."
)


def _paper_cell(biomarker: str, paper_class: str, digits: int) -> str:
    table = BIOMARKER_TABLES.get(biomarker)
    if table is None:
        return "not in the paper"
    mean, sd = paper_mean_sd(table, paper_class)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _ours_cell(reference: Mapping[str, Any] | None, biomarker: str, cls: str, digits: int) -> str:
    stats = ((reference or {}).get("stats") or {}).get(biomarker) or {}
    s = stats.get(cls)
    if s is None:
        if reference is None or not reference.get("stats"):
            return REFERENCE_PENDING
        if not (reference.get("n") or {}).get(cls):
            return "no images in our data, so our models do not have this class"
        return "no values"
    mean, sd = to_paper_units(biomarker, s["mean"]), to_paper_units(biomarker, s["sd"])
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def biomarker_panel(markers: Any, reference: Mapping[str, Any] | None = None) -> str:
    """The app's biomarker panel: this image's values, our per-class mean ± SD and the paper's, in the same units.

    Args:
        markers: the image's :class:`cxr_hub.biomarkers.Biomarkers` (``PreparedImage.biomarkers``).
        reference: our per-class reference (default :data:`BIOMARKER_REFERENCE`, the shipped file).

    Returns:
        Markdown: one table (a row for this image, then for each class a row of ours and a row per paper class it
        covers), the note on how the references differ, and where each comes from.
    """
    ref = BIOMARKER_REFERENCE if reference is None else reference
    header = "| | " + " | ".join(label for _, label, _ in PANEL_BIOMARKERS) + " |"
    lines = [header, "|---" * (1 + len(PANEL_BIOMARKERS)) + "|"]
    image_cells = []
    for key, _, digits in PANEL_BIOMARKERS:
        value = getattr(markers, key)
        if key == "lung_area_fraction":
            left, right = markers.left_lung_area_fraction, markers.right_lung_area_fraction
            image_cells.append(
                f"{value:.{digits}f} (left {left:.{digits}f}, right {right:.{digits}f})"
                if math.isfinite(value)
                else "n/a"
            )
        else:
            image_cells.append(format_number(to_paper_units(key, value), f".{digits}f"))
    lines.append("| **this image** | " + " | ".join(image_cells) + " |")
    classes = list(ref["classes"]) if ref else list(LABEL4_TO_PAPER)
    for cls in classes:
        n = (ref or {}).get("n", {}).get(cls)
        ours = f"{display_name(cls)}, ours" + (f" (n = {n})" if n else "")
        cells = [_ours_cell(ref, key, cls, digits) for key, _, digits in PANEL_BIOMARKERS]
        if len(set(cells)) == 1 and "±" not in cells[0]:
            # one reason for the whole row (no images, nothing measured yet): say it once
            cells = [cells[0]] + ["—"] * (len(cells) - 1)
        lines.append(f"| {ours} | " + " | ".join(cells) + " |")
        for paper_class in LABEL4_TO_PAPER.get(cls, ()):
            cells = [_paper_cell(key, paper_class, digits) for key, _, digits in PANEL_BIOMARKERS]
            lines.append(f"| {PAPER_CLASS_NAMES[paper_class]}, paper | " + " | ".join(cells) + " |")
    parts = [
        "\n".join(lines),
        "This image's values come from its own segmentation (pixels of the original image, square pixels assumed); "
        "one image's value says little on its own. The paper compares such statistics between classes "
        "(Tables VI, VII, IX: mean ± SD per class).",
        BIOMARKER_PANEL_NOTE,
        f"Ours: {ref['description']}" if ref else f"Ours: {REFERENCE_PENDING}.",
        "Paper: Oh, Park, Ye, IEEE TMI 2020, Tables VI, VII and IX (cxr_hub/data/paper_tables.json).",
    ]
    parts += [f"- {w}" for w in getattr(markers, "warnings", [])]
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------- model discovery


@dataclass(frozen=True)
class ModelSpec:
    """Where one model choice's networks come from: env variable names and default folders under ``models/``."""

    label_set: str
    classifier_env: str
    classifier_folder: str
    global_env: str | None = None
    global_folder: str | None = None


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
    """The model sources of one choice: local folders or Hub repo ids, None when absent."""

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
    ``CXR_HUB_GLOBAL_CLASSIFIER`` (paper 4-class global model). Defaults: ``models/cxr-lung-seg-fcdensenet103``,
    ``models/cxr-patch-resnet18``, ``models/cxr-patch-resnet18-covidx``, ``models/cxr-global-resnet18``.

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


@dataclass
class LoadedModels:
    """One model choice, loaded: the pipeline (None without a segmentation model) and what it can honestly show.

    Attributes:
        sources: where the models came from.
        pipeline: CXRPipeline, or None when no segmentation model is available.
        classifier_loaded: a real (shipped) patch classifier is loaded; False → segmentation-only mode.
        class_names: the classifier's classes (from the label set when no classifier is loaded).
        trained_classes: classes with training images ([] without a classifier).
        errors: loading problems, in words (shown in the UI).
        prepare_key: identifies everything :meth:`CXRPipeline.prepare` depends on (segmentation model + the
            classifier frame's preprocessing), so two choices with the same preprocessing share cached images.
    """

    sources: ModelSources
    pipeline: CXRPipeline | None
    classifier_loaded: bool
    class_names: list[str]
    trained_classes: list[str]
    errors: list[str] = field(default_factory=list)
    prepare_key: tuple = ()

    @property
    def mode(self) -> str:
        """ "full", "segmentation_only" or "no_models"."""
        if self.pipeline is None:
            return "no_models"
        return "full" if self.classifier_loaded else "segmentation_only"

    @property
    def untrained_classes(self) -> list[str]:
        return [c for c in self.class_names if c not in self.trained_classes] if self.classifier_loaded else []


def _load(source: str, allow_pickle: bool = False) -> nn.Module:
    # cxr_hub registered its classes on import: no trust_remote_code; safetensors only unless the operator opted in
    return load_model(source, allow_pickle=allow_pickle)


# -------------------------------------------------------------------------------------------------------- caches

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A small thread-safe least-recently-used cache."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = max(1, int(maxsize))
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def pixel_hash(pixels: np.ndarray) -> str:
    """Content hash of a decoded image (shape, dtype and pixel bytes): the cache key, independent of file names."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{pixels.shape}|{pixels.dtype.str}".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------- analysis


class AppInputError(ValueError):
    """A request the app cannot serve (bad parameter, expired upload); its message is shown to the user."""


@dataclass
class Analysis:
    """Everything one request produced; drawn by ``app.render``.

    ``boxes`` are patch edges in original pixels and ``boxes_1024`` in the classifier frame (also set in
    segmentation-only mode, where the patches are placed exactly as the pipeline would place them).
    ``input_check`` is the pipeline's input-validity report of the image (an image it refuses never becomes an
    Analysis: :meth:`CXRApp.analyze` raises).
    """

    id: str
    models: LoadedModels
    image: np.ndarray
    k: int
    patch_size: int
    seed: int
    saliency_class: str
    prepared: PreparedImage | None = None
    result: PipelineResult | None = None
    boxes: np.ndarray | None = None
    boxes_1024: np.ndarray | None = None
    cache_hit: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    input_check: ValidityReport | None = None


class CXRApp:
    """Model loading, per-image caching and analysis behind the UI (no Gradio here, so it works and is tested alone).

    Args:
        environ: environment for :func:`discover_models` (default ``os.environ``).
        models_dir: folder of the shipped models (default :data:`MODELS_DIR`, the repository's ``models/``).
        device: "cpu", "cuda" or None (CUDA when present).
        prepared_cache_size: images whose segmentation and 1024 frame are kept.
        allow_pickle: also load pickle checkpoints (``pytorch_model.bin``, which can run code when loaded); None →
            ``CXR_HUB_ALLOW_PICKLE`` in ``environ`` ("1"/"true"/"yes"), else False: safetensors only.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        models_dir: Path | None = None,
        device: str | None = None,
        prepared_cache_size: int = PREPARED_CACHE_SIZE,
        allow_pickle: bool | None = None,
    ) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.models_dir = MODELS_DIR if models_dir is None else Path(models_dir)
        self.device = device
        self.allow_pickle = allow_pickle_from_env(self.environ) if allow_pickle is None else bool(allow_pickle)
        self._loaded: dict[str, LoadedModels] = {}
        self._modules: dict[str, nn.Module] = {}
        self._load_lock = threading.Lock()
        self.prepared: LRUCache[tuple, PreparedImage] = LRUCache(prepared_cache_size)
        # (upload path, mtime, size) → pixel hash: a slider change skips decoding, and a cached image survives
        # Gradio's purge of the uploaded file
        self._path_hashes: LRUCache[tuple, str] = LRUCache(64)
        # (prepare key, pixel hash) → the pipeline's refusal of that image: a slider change re-raises it, unsegmented
        self._refused: LRUCache[tuple, NotAFrontalCXRError] = LRUCache(64)
        self.results: LRUCache[str, Analysis] = LRUCache(RESULT_CACHE_SIZE)
        self._report_dir = Path(tempfile.mkdtemp(prefix="cxr_hub_reports_"))
        atexit.register(shutil.rmtree, self._report_dir, ignore_errors=True)

    # -- models

    def sources(self, choice: str) -> ModelSources:
        return discover_models(choice, self.environ, self.models_dir)

    def _module(self, source: str) -> nn.Module:
        # shared between choices: one segmentation network in memory for both classifiers
        if source not in self._modules:
            self._modules[source] = _load(source, self.allow_pickle)
        return self._modules[source]

    def models(self, choice: str) -> LoadedModels:
        """Loads (once) and returns the models of a choice; loading problems become messages, never exceptions."""
        with self._load_lock:
            if choice not in self._loaded:
                self._loaded[choice] = self._build(self.sources(choice))
            return self._loaded[choice]

    def _build(self, src: ModelSources) -> LoadedModels:
        names = list(LABEL_SETS[src.label_set])
        errors = list(src.notes)
        if src.segmentation is None:
            return LoadedModels(src, None, False, names, [], errors)
        try:
            seg = self._module(src.segmentation)
        except Exception as exc:  # offline Hub id, corrupt folder...: the app must still start and explain
            errors.append(f"could not load the segmentation model {src.segmentation}: {_short(exc)}")
            return LoadedModels(src, None, False, names, [], errors)
        classifier: nn.Module | None = None
        if src.classifier is not None:
            try:
                classifier = self._module(src.classifier)
            except Exception as exc:
                errors.append(f"could not load the classifier {src.classifier}: {_short(exc)}")
        glob = None
        if classifier is not None and src.global_classifier is not None:
            try:
                glob = self._module(src.global_classifier)
                if glob.config.id2label != classifier.config.id2label:
                    errors.append("global classifier ignored: its classes differ from the patch classifier's")
                    glob = None
            except Exception as exc:
                errors.append(f"could not load the global classifier {src.global_classifier}: {_short(exc)}")
        # auto: int8 or bf16 where the CPU has it and it was validated on real films (see CXRPipeline)
        precision = self.environ.get(PRECISION_ENV, "auto")
        if precision not in CLASSIFIER_PRECISIONS:
            errors.append(f"{PRECISION_ENV}={precision!r} ignored: use one of {', '.join(CLASSIFIER_PRECISIONS)}")
            precision = "auto"
        try:
            # no classifier → segmentation-only pipeline: its frame follows the paper's PatchClassifierConfig()
            pipe = CXRPipeline(seg, classifier, glob, device=self.device, precision=precision)
        except (TypeError, ValueError) as exc:
            errors.append(f"the models do not fit together: {_short(exc)}")
            return LoadedModels(src, None, False, names, [], errors)
        proc = pipe.frame_processor
        key = (src.segmentation, proc.size, proc.do_equalize, proc.gamma, proc.image_mean, proc.image_std)
        if pipe.classifier_config is None:
            return LoadedModels(src, pipe, False, names, [], errors, key)
        cfg = pipe.classifier_config
        return LoadedModels(src, pipe, True, pipe.class_names, list(cfg.trained_classes), errors, key)

    # -- images

    def _pixels(self, path: str | os.PathLike[str], decode: bool = False) -> tuple[str, np.ndarray | None]:
        """``(pixel hash, pixels)`` of an upload. Pixels is None when the hash is already known for this file and
        ``decode`` is False: a slider change then costs no decoding at all."""
        path = str(path)
        if "\x00" in path:  # os.stat raises ValueError for it; no upload is ever named so
            raise AppInputError("The upload's file name is invalid; please upload the file again.")
        try:
            st = os.stat(path)
            ident: tuple = (path, st.st_mtime_ns, st.st_size)
        except OSError:
            ident = (path,)  # purged by Gradio's delete_cache; a cached analysis can still be served
        known = self._path_hashes.get(ident) or self._path_hashes.get((path,))
        if known is not None and not decode:
            return known, None
        if len(ident) == 1:
            raise AppInputError(
                "The uploaded file is no longer on the server (uploads are deleted after about 15 minutes, for "
                "privacy). Please upload it again."
            )
        # the upload's path is Gradio's cache folder plus the visitor's file name: neither belongs in a message
        pixels = load_image(path, source_name=UPLOAD_NAME)
        digest = pixel_hash(pixels)
        self._path_hashes.put(ident, digest)
        self._path_hashes.put((path,), digest)
        return digest, pixels

    def prepare(self, models: LoadedModels, path: str | os.PathLike[str]) -> tuple[PreparedImage, bool]:
        """Cached :meth:`CXRPipeline.prepare` of the image at ``path``; returns ``(prepared, cache_hit)``."""
        prepared, hit, _ = self._prepare(models, path)
        return prepared, hit

    def _prepare(self, models: LoadedModels, path: str | os.PathLike[str]) -> tuple[PreparedImage, bool, str]:
        """:meth:`prepare`, plus the pixel hash of the image."""
        assert models.pipeline is not None
        digest, pixels = self._pixels(path)
        key = (models.prepare_key, digest)
        cached = self.prepared.get(key)
        if cached is not None:
            return cached, True, digest
        refused = self._refused.get(key)
        if refused is not None:
            raise refused
        if pixels is None:  # hash known, but this choice never prepared it (or it was evicted): decode
            digest, pixels = self._pixels(path, decode=True)
        assert pixels is not None
        try:
            # the upload file is the colour check's source: load_image made the pixels gray
            prepared = models.pipeline.prepare(pixels, source_name=UPLOAD_NAME, source=str(path))
        except NotAFrontalCXRError as exc:
            self._refused.put(key, exc)
            raise
        self.prepared.put(key, prepared)
        return prepared, False, digest

    # -- analysis

    def analyze(
        self,
        image: str | os.PathLike[str] | None,
        model: str = PAPER_MODEL,
        k: float = K_DEFAULT,
        patch_size: float = PATCH_DEFAULT,
        seed: float | None = 0,
        saliency_class: str | None = PREDICTED,
    ) -> Analysis:
        """Runs what the loaded models allow on one image.

        An upload the pipeline's input-validity check refuses (not a frontal chest X-ray) raises, before anything is
        classified; an accepted one's scores are in ``Analysis.input_check``.

        Raises:
            cxr_hub.validity.NotAFrontalCXRError: the input check refused the upload (the message says why and
                what to upload instead).
            CXRInputError: unreadable image or no lung found.
            AppInputError: missing image, out-of-range parameter, unknown class, expired upload.
        """
        start = time.perf_counter()
        if image is None or (isinstance(image, str) and not image):
            raise AppInputError("Upload a chest X-ray (PNG, JPEG or DICOM) or pick an example first.")
        if model not in MODEL_SPECS:
            raise AppInputError(f"Unknown model {model!r}; choose one of: {', '.join(MODEL_SPECS)}.")
        k_int, patch, seed_int = _check_int("K", k, K_MIN, K_MAX), _check_patch(patch_size), _check_seed(seed)
        if saliency_class is not None and not isinstance(saliency_class, str):  # an API call can send anything
            raise AppInputError(f"Saliency class must be {PREDICTED!r} or a class name, got {saliency_class!r}.")
        models = self.models(model)
        cls = (saliency_class or PREDICTED).strip()
        if cls != PREDICTED and cls not in models.class_names:
            raise AppInputError(
                f"Unknown class {cls!r} for the {model}; choose {PREDICTED!r} or one of {models.class_names}."
            )
        analysis = Analysis(uuid.uuid4().hex[:12], models, np.zeros((1, 1), np.float32), k_int, patch, seed_int, cls)
        analysis.warnings.extend(models.errors)
        if models.pipeline is None:  # nothing to analyse: show the image as loaded (and reject bad files)
            analysis.image = self._pixels(image, decode=True)[1]  # type: ignore[assignment]
            analysis.timings["app_total"] = (time.perf_counter() - start) * 1e3
            return analysis
        pipe = models.pipeline
        t = time.perf_counter()
        prepared, analysis.cache_hit, _ = self._prepare(models, image)
        analysis.timings["app_prepare"] = (time.perf_counter() - t) * 1e3
        analysis.prepared, analysis.image = prepared, prepared.image
        if patch > min(prepared.frame.shape):
            raise AppInputError(f"Patch size {patch} is larger than the classifier frame ({prepared.frame.shape[0]}).")
        analysis.input_check = prepared.input_check
        t = time.perf_counter()
        if models.classifier_loaded:
            result = pipe.analyze(
                prepared, k=k_int, patch_size=patch, seed=seed_int, saliency_classes=None if cls == PREDICTED else cls
            )
            analysis.result = result
            analysis.boxes, analysis.boxes_1024 = result.patch_boxes, result.patch_boxes_1024
            analysis.warnings.extend(result.warnings)
        else:
            # the same sampler and seed as CXRPipeline.analyze: the boxes are where a classifier would look
            sample = pipe.sample_patches(prepared, k=k_int, patch_size=patch, seed=seed_int)
            analysis.boxes, analysis.boxes_1024 = sample.boxes, sample.boxes_1024
            analysis.warnings.extend(prepared.warnings)
        analysis.timings["app_analyze"] = (time.perf_counter() - t) * 1e3
        analysis.timings["app_total"] = (time.perf_counter() - start) * 1e3
        self.results.put(analysis.id, analysis)
        return analysis

    def new_report_paths(self, analysis_id: str) -> tuple[Path, Path]:
        """Fresh report file paths; older reports are pruned (the browser has already fetched its copies)."""
        files = sorted(self._report_dir.glob("cxr_report_*"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - 4 * RESULT_CACHE_SIZE)]:
            old.unlink(missing_ok=True)
        stem = self._report_dir / f"cxr_report_{analysis_id}"
        return stem.with_suffix(".json"), stem.with_suffix(".png")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # a refused pickle's message is written for the operator and ends with how to opt in: keep all of it
    return text if isinstance(exc, UnsafeCheckpointError) else text[:300]


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AppInputError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number) or number != round(number) or not lo <= number <= hi:
        raise AppInputError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}.")
    return int(number)


def _check_patch(value: Any) -> int:
    patch = _check_int("Patch size", value, PATCH_MIN, PATCH_MAX)
    if (patch - PATCH_MIN) % PATCH_STEP:
        raise AppInputError(f"Patch size must be {PATCH_MIN}, {PATCH_MIN + PATCH_STEP}, … {PATCH_MAX}; got {patch}.")
    return patch


def _check_seed(value: Any) -> int:
    return 0 if value is None or value == "" else _check_int("Seed", value, 0, 2**32 - 1)


# ------------------------------------------------------------------------------------- summaries, reports, steps


def display_name(name: str, untrained: list[str] | None = None) -> str:
    """Readable class name, marked when the classifier never saw that class."""
    text = CLASS_DISPLAY.get(name, name.replace("_", " "))
    return f"{text} (untrained, no images)" if untrained and name in untrained else text


def format_number(value: float | None, spec: str = ".3f") -> str:
    """``format(value, spec)``, or "n/a" for None, NaN and infinities."""
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


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
        include_patches: add the per-patch boxes and probabilities (the report; the UI's JSON view stays small).
    """
    m, r = a.models, a.result
    out: dict[str, Any] = {
        "disclaimer": "Research and education only. Not for clinical use.",
        "mode": m.mode,
        "model_choice": m.sources.choice,
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


def saliency_images(a: Analysis) -> tuple[Image.Image | None, Image.Image | None, str]:
    """(probabilistic Grad-CAM overlay, global Grad-CAM overlay, the class shown), at :data:`DISPLAY_SIDE`."""
    r = a.result
    if r is None or not r.saliency:
        return None, None, ""
    cls = r.label if a.saliency_class == PREDICTED else a.saliency_class
    sal = r.saliency.get(cls)
    patch = heat_overlay(sal, a.image, DISPLAY_SIDE) if sal is not None else None
    glob = None
    if r.global_saliency:
        gmap = r.global_saliency.get(cls)
        glob = heat_overlay(gmap, a.image, DISPLAY_SIDE) if gmap is not None else None
    return patch, glob, cls


def write_report(
    a: Analysis,
    engine: CXRApp,
    patch_cam: Image.Image | None,
    global_cam: Image.Image | None,
) -> list[str]:
    """Writes the downloadable report (JSON with every patch, and one PNG figure); returns the two paths.

    ``patch_cam`` and ``global_cam`` are the overlays from :func:`saliency_images` (None when there is no map); the
    caller passes them because it usually shows them too. Needs ``a.prepared`` (a segmentation model).
    """
    json_path, png_path = engine.new_report_paths(a.id)
    json_path.write_text(json.dumps(summary_dict(a, include_patches=True), indent=2, allow_nan=False) + "\n")
    r = a.result
    assert a.prepared is not None
    overlay = draw_segmentation(a.image, a.prepared.label_map, a.boxes, REPORT_PANEL_SIDE)
    if r is not None:
        untrained = a.models.untrained_classes
        head = [
            f"cxr-hub — {a.models.sources.choice}: majority vote {display_name(r.label, untrained)} "
            f"({r.votes[r.label]} of {r.k} patches, patch {r.patch_size} px, seed {a.seed})",
            "votes: " + ", ".join(f"{display_name(c, untrained)} {r.vote_fraction[c]:.0%}" for c in r.class_names),
        ]
    else:
        head = [
            f"cxr-hub — {a.models.sources.choice}: no classifier loaded, so no classification.",
            f"Segmentation and K = {a.k} patch positions ({a.patch_size} px, seed {a.seed}) only.",
        ]
    b = a.prepared.biomarkers
    head.append(
        f"cardiothoracic ratio {format_number(b.cardiothoracic_ratio)}; lung intensity mean "
        f"{format_number(b.lung_mean_intensity, '.1f')}, spread {format_number(b.lung_std_intensity, '.1f')}"
    )
    cls = "" if r is None else (r.label if a.saliency_class == PREDICTED else a.saliency_class)
    panels = [
        ("segmentation (heart red, left lung green, right lung blue) + patches", overlay),
        (f"probabilistic Grad-CAM: {display_name(cls)}" if cls else "probabilistic Grad-CAM", patch_cam),
        (f"global model Grad-CAM: {display_name(cls)}" if cls else "global model Grad-CAM", global_cam),
    ]
    report_figure(panels, head, REPORT_PANEL_SIDE).save(png_path, compress_level=1)
    return [str(json_path), str(png_path)]


def steps(a: Analysis | None) -> tuple[list[tuple[Image.Image, str]], str]:
    """The method step by step with this image's own intermediate images (the "How it works" tab)."""
    if a is None or a.prepared is None:
        return [], "Analyse an image first (the **Analyse** tab); its intermediate images will appear here."
    p, pipe = a.prepared, a.models.pipeline
    assert pipe is not None
    size = display_size(p.original_size, 512)
    seg_side = pipe.segmentation_processor.size
    frame_side = p.frame.shape[0]
    gallery: list[tuple[Image.Image, str]] = [
        (Image.fromarray(to_uint8(resize_image(p.image, size))), "1. The X-ray as loaded"),
        (
            Image.fromarray(np.clip(resize_image(p.preprocessed, size), 0, 255).astype(np.uint8)),
            "2. Histogram equalisation + gamma",
        ),
        (
            Image.fromarray(np.clip(resize_image(p.preprocessed, seg_side), 0, 255).astype(np.uint8)),
            f"3. Segmentation input ({seg_side}×{seg_side})",
        ),
        (draw_segmentation(p.image, p.label_map, None, 512), "4. Heart, left lung, right lung"),
        (Image.fromarray(to_uint8(resize_image(p.frame, 512))), f"5. Lung-masked {frame_side}×{frame_side} frame"),
    ]
    if a.boxes_1024 is not None:
        framed = Image.fromarray(to_uint8(p.frame)).convert("RGB")
        draw_boxes(framed, a.boxes_1024, BOX_COLOUR, width=max(1, frame_side // 256))
        framed.thumbnail((512, 512))
        gallery.append((framed, f"6. K = {a.k} random patches centred in the lungs"))
        mosaic = patch_mosaic(p.frame, a.boxes_1024)
        if mosaic is not None:
            gallery.append((mosaic, "7. The first patches, as the network sees them"))
    patch_cam, global_cam, cls = saliency_images(a)
    if patch_cam is not None:
        gallery.append((patch_cam, f"8. Probabilistic Grad-CAM ({display_name(cls)})"))
    if global_cam is not None:
        gallery.append((global_cam, f"9. Global model's Grad-CAM ({display_name(cls)})"))
    note = (
        f"Steps for the last analysed image (model: {a.models.sources.choice}, K = {a.k}, patch {a.patch_size} px, "
        f"seed {a.seed})."
    )
    if a.result is None:
        note += " No classifier is loaded, so the vote and saliency steps have no images."
    return gallery, note
