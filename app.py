"""cxr-hub Gradio app: the patch-based COVID-19 chest X-ray method of Oh, Park & Ye (IEEE TMI 2020), in a browser.

For an educator in front of a class, a researcher or a curious visitor: upload a frontal chest X-ray (PNG, JPEG or
DICOM) or pick an example, and see the lung/heart segmentation with the K sampled patches, the patch vote, the
probabilistic Grad-CAM beside the global model's Grad-CAM (the paper's Fig. 7), the biomarkers and the paper's
triage idea (Fig. 9) worded as education. Research and education only, not for clinical use.

Thin by design: :class:`CXRPipeline` does the work; this file finds the models, caches per image, draws (with
:mod:`cxr_hub.visualize`) and lays out the UI. Run ``python app.py`` (``--help`` for options).

Honesty rules, because no trained classifier is shipped yet:

* Models come from ``models/<name>/`` in the repository or from the environment (:func:`discover_models`).
  A missing classifier → segmentation, patch positions and biomarkers only, and the classification panel says so;
  no vote, probability or saliency map is ever computed with untrained weights. A missing segmentation model →
  the app still starts and explains that no trained models are shipped.
* Classes a classifier never saw in training (``config.trained_classes``, e.g. tuberculosis: no images) are
  marked "untrained" wherever they appear.

Speed: :meth:`CXRPipeline.prepare` (segmentation, the 1024 lung-masked frame, biomarkers) is cached per image in an
LRU keyed by a hash of the decoded pixels (never the file name), so moving the K, patch-size, seed or class control
re-runs only the patch vote and saliency.

Privacy: only pixel arrays from :func:`cxr_hub.load_image` are used; no DICOM header field and no file name is
shown, logged or written to a report. Gradio's upload cache is purged (``delete_cache``).
"""

from __future__ import annotations

import argparse
import atexit
import csv
import hashlib
import json
import logging
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

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image
from torch import nn

from cxr_hub import (
    LABEL_SETS,
    CXRInputError,
    CXRPipeline,
    PatchClassifierConfig,
    PipelineResult,
    PreparedImage,
    load_image,
)
from cxr_hub.io import SUPPORTED_EXTENSIONS
from cxr_hub.patches import sample_patch_boxes
from cxr_hub.pipeline import PRECISIONS
from cxr_hub.preprocessing import map_boxes, resize_image
from cxr_hub.visualize import (
    BOX_COLOUR,
    LABEL_COLOURS,
    LABEL_NAMES,
    annotated_segmentation,
    display_size,
    draw_boxes,
    draw_segmentation,
    gray_rgb,
    heat_overlay,
    hex_colour,
    patch_mosaic,
    report_figure,
    to_uint8,
)

logger = logging.getLogger("cxr_hub.app")

REPO_ROOT = Path(__file__).resolve().parent
MODELS_DIR = REPO_ROOT / "models"
EXAMPLES_DIR = REPO_ROOT / "examples"

PAPER_MODEL = "Paper 4-class model"
COVIDX_MODEL = "COVIDx 3-class model"
MODEL_CHOICES = (PAPER_MODEL, COVIDX_MODEL)
PREDICTED = "predicted class"

K_MIN, K_MAX, K_DEFAULT = 1, 400, 100
PATCH_MIN, PATCH_MAX, PATCH_STEP, PATCH_DEFAULT = 112, 448, 16, 224
#: Uploads above this are refused by Gradio before they reach the handler (a large CR DICOM is ~15-30 MB).
MAX_FILE_SIZE = "32mb"
#: One analysis at a time: on a 2-core CPU Space, parallel runs only slow each other down.
CONCURRENCY_LIMIT = 1
QUEUE_MAX_SIZE = 16
#: Gradio cache purge (every 5 min, files older than 15 min; all of it on shutdown): uploads are not kept.
DELETE_CACHE = (300, 900)
#: Prepared images kept (a 1024² film costs ~15 MB, a 3000² DICOM ~100 MB).
PREPARED_CACHE_SIZE = 6
#: Recent analyses kept for the "How it works" tab.
RESULT_CACHE_SIZE = 8
#: Longer side of the images sent to the browser (analysis always uses the original pixels).
DISPLAY_SIDE = 768
REPORT_PANEL_SIDE = 512

SEGMENTATION_ENV = "CXR_HUB_SEGMENTATION"
SEGMENTATION_FOLDER = "cxr-lung-seg-fcdensenet103"

DISCLAIMER = (
    "**Research and education only. Not for clinical use.** This is not a medical device: no output here may be "
    "used to diagnose, triage or treat anyone."
)

#: Display names of the classifiers' classes (the JSON keeps the config's names).
CLASS_DISPLAY = {
    "normal": "normal",
    "bacterial": "bacterial pneumonia",
    "tuberculosis": "tuberculosis",
    "viral_covid": "viral pneumonia / COVID-19",
    "pneumonia": "pneumonia (non-COVID-19)",
    "covid": "COVID-19",
}

#: Short names for the bar chart's axis.
CLASS_SHORT = {
    "normal": "normal",
    "bacterial": "bacterial",
    "tuberculosis": "TB",
    "viral_covid": "viral/COVID",
    "pneumonia": "pneumonia",
    "covid": "COVID-19",
}

#: Bar order of the vote chart (the classes' index order; Vega-Lite would sort them alphabetically).
CLASS_SORT = list(dict.fromkeys(CLASS_SHORT[c] for c in (*LABEL_SETS["label4"], *LABEL_SETS["label3"])))
TRAINED, UNTRAINED = "trained", "untrained (no training images)"

#: The paper's per-class biomarker statistics (Tables VI, VII and IX of Oh, Park, Ye 2020), keyed by biomarker
#: ("cardiothoracic_ratio", "lung_mean_intensity", "lung_std_intensity") → class ("normal", "bacterial",
#: "tuberculosis", "viral", "covid") → value as printed in the paper.
#: TODO: fill in from the paper's tables, checked against the PDF (RESULTS.md). Deliberately empty until then:
#: a reference value shown to a class must be the paper's number, never a guess.
PAPER_REFERENCE: dict[str, dict[str, str]] = {}
PAPER_REFERENCE_PENDING = "reference values: see RESULTS.md (pending)"


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
        "label4", "CXR_HUB_CLASSIFIER", "cxr-patch-resnet18", "CXR_HUB_GLOBAL_CLASSIFIER", "cxr-global-resnet18"
    ),
    COVIDX_MODEL: ModelSpec("label3", "CXR_HUB_CLASSIFIER_LABEL3", "cxr-patch-resnet18-covidx"),
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


_REFUSAL = "No trained classifier is shipped: this stand-in never classifies."


class _RefusingHead(nn.Module):
    """The stand-in's "linear head": reading its weights (what Grad-CAM and voting need) raises."""

    @property
    def weight(self) -> Any:
        raise RuntimeError(_REFUSAL)


class _NoClassifier(nn.Module):
    """Stands in for the patch classifier when none is shipped, so the pipeline can still segment and place patches.

    It carries only the paper's default configuration (1024 frame, 224 patches, gamma 0.5, equalisation), which
    :meth:`CXRPipeline.prepare` needs for the lung-masked frame, and it has no weights and refuses to classify: no
    output of random weights can reach the UI. (A segmentation-only mode inside CXRPipeline would make this
    unnecessary.)
    """

    def __init__(self, label_set: str) -> None:
        super().__init__()
        self.config = PatchClassifierConfig(label_set=label_set, trained_classes=[])
        self.classifier = _RefusingHead()

    def forward_features(self, x: Any) -> Any:
        raise RuntimeError(_REFUSAL)

    forward_head = forward_features


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
            classifier's preprocessing), so two choices with the same preprocessing share cached images.
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


def _load(source: str) -> nn.Module:
    from transformers import AutoModel  # cxr_hub registered its classes on import: no trust_remote_code needed

    return AutoModel.from_pretrained(source).eval()


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
    """Everything one request produced; drawn by :func:`render`.

    ``boxes`` are patch edges in original pixels and ``boxes_1024`` in the classifier frame (also set in
    segmentation-only mode, where the patches are placed exactly as the pipeline would place them).
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


class CXRApp:
    """Model loading, per-image caching and analysis behind the UI (no Gradio in here, so it is testable alone).

    Args:
        environ: environment for :func:`discover_models` (default ``os.environ``).
        models_dir: folder of the shipped models (default ``models/`` next to this file).
        device: "cpu", "cuda" or None (CUDA when present).
        prepared_cache_size: images whose segmentation and 1024 frame are kept.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        models_dir: Path | None = None,
        device: str | None = None,
        prepared_cache_size: int = PREPARED_CACHE_SIZE,
    ) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.models_dir = MODELS_DIR if models_dir is None else Path(models_dir)
        self.device = device
        self._loaded: dict[str, LoadedModels] = {}
        self._modules: dict[str, nn.Module] = {}
        self._load_lock = threading.Lock()
        self.prepared: LRUCache[tuple, PreparedImage] = LRUCache(prepared_cache_size)
        # (upload path, mtime, size) → pixel hash: a slider change skips decoding, and a cached image survives
        # Gradio's purge of the uploaded file
        self._path_hashes: LRUCache[tuple, str] = LRUCache(64)
        self.results: LRUCache[str, Analysis] = LRUCache(RESULT_CACHE_SIZE)
        self._report_dir = Path(tempfile.mkdtemp(prefix="cxr_hub_reports_"))
        atexit.register(shutil.rmtree, self._report_dir, ignore_errors=True)

    # -- models

    def sources(self, choice: str) -> ModelSources:
        return discover_models(choice, self.environ, self.models_dir)

    def _module(self, source: str) -> nn.Module:
        # shared between choices: one segmentation network in memory for both classifiers
        if source not in self._modules:
            self._modules[source] = _load(source)
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
        precision = self.environ.get("CXR_HUB_PRECISION", "auto")  # bf16 on a CPU: an unvalidated opt-in
        if precision not in PRECISIONS:
            errors.append(f"CXR_HUB_PRECISION={precision!r} ignored: use one of {', '.join(PRECISIONS)}")
            precision = "auto"
        try:
            pipe = CXRPipeline(
                seg, classifier or _NoClassifier(src.label_set), glob, device=self.device, precision=precision
            )
        except (TypeError, ValueError) as exc:
            errors.append(f"the models do not fit together: {_short(exc)}")
            return LoadedModels(src, None, False, names, [], errors)
        proc = pipe.classifier_processor
        key = (src.segmentation, proc.size, proc.do_equalize, proc.gamma, proc.image_mean, proc.image_std)
        if classifier is None:
            return LoadedModels(src, pipe, False, names, [], errors, key)
        cfg = pipe.classifier_config
        return LoadedModels(src, pipe, True, pipe.class_names, list(cfg.trained_classes), errors, key)

    # -- images

    def _pixels(self, path: str | os.PathLike[str], decode: bool = False) -> tuple[str, np.ndarray | None]:
        """``(pixel hash, pixels)`` of an upload. Pixels is None when the hash is already known for this file and
        ``decode`` is False: a slider change then costs no decoding at all."""
        path = str(path)
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
        pixels = load_image(path)
        digest = pixel_hash(pixels)
        self._path_hashes.put(ident, digest)
        self._path_hashes.put((path,), digest)
        return digest, pixels

    def prepare(self, models: LoadedModels, path: str | os.PathLike[str]) -> tuple[PreparedImage, bool]:
        """Cached :meth:`CXRPipeline.prepare` of the image at ``path``; returns ``(prepared, cache_hit)``."""
        assert models.pipeline is not None
        digest, pixels = self._pixels(path)
        cached = self.prepared.get((models.prepare_key, digest))
        if cached is not None:
            return cached, True
        if pixels is None:  # hash known, but this choice never prepared it (or it was evicted): decode
            digest, pixels = self._pixels(path, decode=True)
        assert pixels is not None
        prepared = models.pipeline.prepare(pixels)
        self.prepared.put((models.prepare_key, digest), prepared)
        return prepared, False

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

        Raises:
            CXRInputError: unreadable image or no lung found.
            AppInputError: missing image, out-of-range parameter, unknown class, expired upload.
        """
        start = time.perf_counter()
        if image is None or (isinstance(image, str) and not image):
            raise AppInputError("Upload a chest X-ray (PNG, JPEG or DICOM) or pick an example first.")
        if model not in MODEL_SPECS:
            raise AppInputError(f"Unknown model {model!r}; choose one of: {', '.join(MODEL_SPECS)}.")
        k_int, patch, seed_int = _check_int("K", k, K_MIN, K_MAX), _check_patch(patch_size), _check_seed(seed)
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
        prepared, analysis.cache_hit = self.prepare(models, image)
        analysis.timings["app_prepare"] = (time.perf_counter() - t) * 1e3
        analysis.prepared, analysis.image = prepared, prepared.image
        if patch > min(prepared.frame.shape):
            raise AppInputError(f"Patch size {patch} is larger than the classifier frame ({prepared.frame.shape[0]}).")
        t = time.perf_counter()
        if models.classifier_loaded:
            result = pipe.analyze(
                prepared, k=k_int, patch_size=patch, seed=seed_int, saliency_classes=None if cls == PREDICTED else cls
            )
            analysis.result = result
            analysis.boxes, analysis.boxes_1024 = result.patch_boxes, result.patch_boxes_1024
            analysis.warnings.extend(result.warnings)
        else:
            # the same draw as CXRPipeline.analyze (same rng use), so the boxes are where a classifier would look
            rng = np.random.default_rng(seed_int)
            _, boxes = sample_patch_boxes(prepared.frame_mask, k_int, patch, rng, mode=pipe.sampling)
            analysis.boxes_1024 = boxes
            analysis.boxes = map_boxes(boxes, prepared.frame.shape, prepared.original_size)
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
    return text[:300]


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


# --------------------------------------------------------------------------------------------------------- render


def display_name(name: str, untrained: list[str] | None = None) -> str:
    """Readable class name, marked when the classifier never saw that class."""
    text = CLASS_DISPLAY.get(name, name.replace("_", " "))
    return f"{text} (untrained, no images)" if untrained and name in untrained else text


def _fmt(value: float | None, spec: str = ".3f") -> str:
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
        "paper_reference": PAPER_REFERENCE or None,
        "triage_education": triage_text(a, markdown=False),
        "cache": "hit" if a.cache_hit else "miss",
        "device": str(m.pipeline.device) if m.pipeline is not None else None,
        "warnings": list(dict.fromkeys(a.warnings)),
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


def _summary_markdown(a: Analysis) -> str:
    m, r = a.models, a.result
    if m.mode == "no_models":
        return (
            "### No trained models are shipped yet\n"
            "This app needs at least the lung/heart segmentation model (`models/cxr-lung-seg-fcdensenet103`, or "
            f"`{SEGMENTATION_ENV}`), which is still being trained. Until it exists, nothing is analysed: the image "
            "above is shown as loaded. Untrained (random) weights are never used to produce a result."
            + "".join(f"\n- {e}" for e in m.errors)
        )
    if r is None:
        return (
            "### No trained classifier is shipped yet\n"
            f"The {m.sources.choice}'s classifier has not been trained and published yet, so this app does **not** "
            "classify the image: no vote, no probabilities and no saliency map (random weights are never used). "
            f"What you see is real: the segmentation, where the K = {a.k} patches of {a.patch_size} px would be "
            "taken (same seed → same patches), and the biomarkers."
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
    return "\n\n".join(lines)


def _biomarkers_markdown(a: Analysis) -> str:
    if a.prepared is None:
        return "Biomarkers need the segmentation model (not shipped yet)."
    b = a.prepared.biomarkers
    rows = [
        ("cardiothoracic ratio (heart width / thoracic width)", _fmt(b.cardiothoracic_ratio), "cardiothoracic_ratio"),
        (
            "lung mean intensity (preprocessed gray level, 0–255)",
            _fmt(b.lung_mean_intensity, ".1f"),
            "lung_mean_intensity",
        ),
        ("lung intensity spread (standard deviation)", _fmt(b.lung_std_intensity, ".1f"), "lung_std_intensity"),
        (
            "lung area (share of the image: left / right)",
            f"{b.lung_area_fraction:.1%} ({b.left_lung_area_fraction:.1%} / {b.right_lung_area_fraction:.1%})",
            None,
        ),
    ]
    head = "| biomarker | this image | paper, per class (normal / bacterial / TB / viral / COVID-19) |\n|---|---|---|"
    body = []
    for label, value, key in rows:
        ref = PAPER_REFERENCE.get(key) if key else None
        ref_text = (
            " / ".join(ref.get(c, "–") for c in ("normal", "bacterial", "tuberculosis", "viral", "covid"))
            if ref
            else (PAPER_REFERENCE_PENDING if key else "—")
        )
        body.append(f"| {label} | {value} | {ref_text} |")
    notes = "".join(f"\n- {w}" for w in b.warnings)
    return (
        head
        + "\n"
        + "\n".join(body)
        + "\n\nFrom this image's segmentation, in pixels of the original image (square pixels assumed). The paper "
        "compares such statistics between classes (Tables VI, VII, IX); one image's value says little on its own."
        + notes
    )


def _details_markdown(a: Analysis) -> str:
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


def _votes_frame(a: Analysis) -> pd.DataFrame | None:
    r = a.result
    if r is None:
        return None
    untrained = a.models.untrained_classes
    return pd.DataFrame(
        {
            "class": [CLASS_SHORT.get(c, c) for c in r.class_names],
            "votes": [r.votes[c] for c in r.class_names],
            "training": [UNTRAINED if c in untrained else TRAINED for c in r.class_names],
        }
    )


def _saliency_images(a: Analysis) -> tuple[Image.Image | None, Image.Image | None, str]:
    """(probabilistic Grad-CAM overlay, global Grad-CAM overlay, the class shown)."""
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


def render(a: Analysis, engine: CXRApp) -> tuple:
    """The UI outputs of an analysis, in :data:`OUTPUT_NAMES` order (without the session state)."""
    if a.prepared is not None:
        seg = annotated_segmentation(a.image, a.prepared.label_map, a.boxes, DISPLAY_SIDE)
    else:
        seg = (gray_rgb(a.image, display_size(a.image.shape[:2], DISPLAY_SIDE)).astype(np.uint8), [])
    frame = _votes_frame(a)
    fractions = None
    if a.result is not None:
        untrained = a.models.untrained_classes
        fractions = {display_name(c, untrained): f for c, f in a.result.vote_fraction.items()}
    patch_cam, global_cam, _ = _saliency_images(a)
    summary = summary_dict(a)
    report = write_report(a, engine, seg, patch_cam, global_cam) if a.prepared is not None else None
    return (
        _summary_markdown(a),
        seg,
        frame,
        fractions,
        patch_cam,
        global_cam,
        _biomarkers_markdown(a),
        triage_text(a),
        _details_markdown(a),
        summary,
        report,
    )


def write_report(
    a: Analysis,
    engine: CXRApp,
    seg: tuple[np.ndarray, list],
    patch_cam: Image.Image | None,
    global_cam: Image.Image | None,
) -> list[str]:
    """Writes the downloadable report (JSON with every patch, and one PNG figure); returns the two paths."""
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
            f"cxr-hub — {a.models.sources.choice}: NO trained classifier shipped yet, so no classification.",
            f"Segmentation and K = {a.k} patch positions ({a.patch_size} px, seed {a.seed}) only.",
        ]
    b = a.prepared.biomarkers
    head.append(
        f"cardiothoracic ratio {_fmt(b.cardiothoracic_ratio)}; lung intensity mean {_fmt(b.lung_mean_intensity, '.1f')}"
        f", spread {_fmt(b.lung_std_intensity, '.1f')}"
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
    patch_cam, global_cam, cls = _saliency_images(a)
    if patch_cam is not None:
        gallery.append((patch_cam, f"8. Probabilistic Grad-CAM ({display_name(cls)})"))
    if global_cam is not None:
        gallery.append((global_cam, f"9. Global model's Grad-CAM ({display_name(cls)})"))
    note = (
        f"Steps for the last analysed image (model: {a.models.sources.choice}, K = {a.k}, patch {a.patch_size} px, "
        f"seed {a.seed})."
    )
    if a.result is None:
        note += " No trained classifier is shipped yet, so the vote and saliency steps have no images."
    return gallery, note


# ------------------------------------------------------------------------------------------------------------- UI

HOW_IT_WORKS = """
The paper (Oh, Park & Ye, *IEEE TMI* 2020) asks how to learn COVID-19 features from **few** chest X-rays. Its
answer: look only inside the lungs, and look at many small pieces instead of the whole film.

1. **Preprocessing.** The image is converted to float, its histogram is equalised and a gamma of 0.5 is applied,
   so films from different machines look alike.
2. **Segmentation.** An FC-DenseNet103 (a fully convolutional DenseNet) outlines the heart and both lungs on a
   256×256 version of the image. The mask is scaled back to the original size.
3. **Masking.** The preprocessed image is resized to 1024×1024 and everything outside the lungs is set to zero:
   the classifier cannot use text markers, tubes outside the lungs or the image border.
4. **Patches.** K patch centres (the paper: K = 100) are drawn at random from the lung pixels; each patch
   (224×224) is cut around its centre.
5. **Vote.** A ResNet-18 classifies every patch; the class with the most votes wins. Many patches make the decision
   robust even though each patch sees only part of the lung — and a small network trained on patches needs fewer
   images than one trained on whole films.
6. **Probabilistic Grad-CAM (eq. 5).** Each patch's Grad-CAM map for a class is scaled to [0, 1], weighted by the
   patch's probability for that class, pasted back where the patch came from, and the sum is divided by how many
   patches covered each pixel. The paper compares this with the ordinary Grad-CAM of a global (whole-image) model
   (Fig. 7): the patch map is usually more focused on lung findings.
7. **Biomarkers.** From the segmentation: the cardiothoracic ratio and the mean and spread of the lung's gray levels,
   which the paper compares between classes.

Try it: move K from 1 to 400 and watch the vote settle; change the seed to see other patches; change the patch size
(patches other than 224 px are resized to the network's input, and the app warns about it).
"""

API_EXAMPLE = """
```python
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")  # or the Space's name, e.g. "user/cxr-hub"
outputs = client.predict(
    image=handle_file("examples/covid19_cohen_2168a917.jpg"),
    model="Paper 4-class model",
    k=100,
    patch_size=224,
    seed=0,
    saliency_class="predicted class",
    api_name="/analyze",
)
result = outputs[9]  # the JSON summary: label, votes, vote_fraction, biomarkers, warnings, timings, ...
```
"""

OUTPUT_NAMES = (
    "summary",
    "segmentation",
    "votes_plot",
    "vote_fractions",
    "probabilistic_gradcam",
    "global_gradcam",
    "biomarkers",
    "triage",
    "details",
    "result",
    "report",
)


def _example_rows() -> list[dict[str, str]]:
    path = EXAMPLES_DIR / "examples.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if (EXAMPLES_DIR / r["file"]).is_file()]
    # one per class, in the order a teacher would show them
    order = {"normal": 0, "bacterial": 1, "pneumonia": 2, "covid": 3}
    return sorted(rows, key=lambda r: order.get(r.get("label4") or r.get("label3") or "", 9))


def _example_label(row: Mapping[str, str]) -> str:
    """ "Finding — collection (licence)" from a row of ``examples/examples.csv``."""
    source = {"nih": "NIH ChestX-ray14", "cohen": "COVID-19 image data collection (Cohen et al.)"}.get(
        row["source"], row["source"]
    )
    licence = row["license"].split(": ", 1)[-1]  # "NIH ChestX-ray14: public, ..." → "public, ..."
    return f"{row['finding']} — {source}, {licence}"


def _models_status(engine: CXRApp) -> str:
    lines = []
    for choice in MODEL_CHOICES:
        s = engine.sources(choice)
        # plain words, no emoji: headless browsers and many school computers have no emoji font
        seg = "segmentation: available" if s.segmentation else "segmentation: **not shipped yet**"
        clf = "classifier: available" if s.classifier else "classifier: **not trained yet** (no vote, no saliency)"
        glob = ""
        if MODEL_SPECS[choice].global_env:
            glob = " · global model: " + ("available" if s.global_classifier else "**not trained yet**")
        lines.append(f"- **{choice}:** {seg} · {clf}{glob}")
        lines.extend(f"  - problem: {n}" for n in s.notes)
    if not any(engine.sources(c).segmentation for c in MODEL_CHOICES):
        lines.insert(0, "**No trained models are shipped yet.** The app starts and explains; it analyses nothing.")
    return "\n".join(lines)


def _model_cards(engine: CXRApp) -> str:
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
            "No model is shipped yet, so there is no model card to show. The cards (intended use, training data, "
            "measured metrics, limitations) come with the weights in `models/<name>/README.md`."
        )
    return "\n\n".join(parts)


def build_demo(engine: CXRApp | None = None) -> gr.Blocks:
    """Builds the Gradio UI around an engine (default: models from ``models/`` and the environment)."""
    engine = engine or CXRApp()
    examples = _example_rows()
    outputs_count = len(OUTPUT_NAMES)

    def analyze(
        image: str | None, model: str, k: float, patch_size: float, seed: float | None, saliency_class: str | None
    ) -> tuple:
        """Analyse one chest X-ray: segmentation, K-patch vote, probabilistic Grad-CAM, biomarkers (research only).

        Args:
            image: PNG, JPEG or DICOM file.
            model: "Paper 4-class model" or "COVIDx 3-class model".
            k: number of patches, 1-400 (the paper: 100).
            patch_size: patch side in the 1024 frame, 112-448 in steps of 16 (the paper: 224).
            seed: patch sampling seed (same seed, same patches).
            saliency_class: "predicted class" or a class name of the model.
        """
        try:
            a = engine.analyze(image, model, k, patch_size, seed, saliency_class)
            return (*render(a, engine), a.id)
        except (CXRInputError, AppInputError) as exc:
            # the message is written for the user; a traceback would only leak internals
            raise gr.Error(str(exc), print_exception=False) from None

    def analyze_live(*args: Any) -> tuple:
        if not args[0]:  # a control moved before any image was chosen: nothing to update
            return tuple(gr.skip() for _ in range(outputs_count + 1))
        return analyze(*args)

    def preview(image: str | None) -> Image.Image | None:
        if not image:
            return None
        try:
            pixels = load_image(image)
        except CXRInputError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return Image.fromarray(to_uint8(resize_image(pixels, display_size(pixels.shape, DISPLAY_SIDE))))

    def class_choices(model: str) -> gr.Dropdown:
        names = list(LABEL_SETS[MODEL_SPECS[model].label_set])
        return gr.Dropdown(choices=[PREDICTED, *names], value=PREDICTED)

    def explain(analysis_id: str | None) -> tuple[list, str]:
        return steps(engine.results.get(analysis_id) if analysis_id else None)

    colour_map = {name: hex_colour(LABEL_COLOURS[label]) for label, name in LABEL_NAMES.items()}
    colour_map["sampled patches"] = hex_colour(BOX_COLOUR)

    with gr.Blocks(
        title="cxr-hub: COVID-19 features on chest X-rays", analytics_enabled=False, delete_cache=DELETE_CACHE
    ) as demo:
        last = gr.State(None)
        gr.Markdown(
            "# cxr-hub — patch-based COVID-19 features on chest X-rays\n"
            "After *Deep Learning COVID-19 Features on CXR using Limited Training Data Sets* (Oh, Park, Ye, IEEE TMI "
            f"2020).\n\n> {DISCLAIMER}"
        )
        with gr.Accordion("Which models are loaded", open=not any(engine.sources(c).classifier for c in MODEL_CHOICES)):
            gr.Markdown(_models_status(engine), elem_id="model-status")
        with gr.Tab("Analyse", id="analyse"), gr.Row():
            with gr.Column(scale=1, min_width=320):
                image_in = gr.File(
                    label="Chest X-ray (PNG, JPEG or DICOM)",
                    file_types=list(SUPPORTED_EXTENSIONS),
                    type="filepath",
                    elem_id="image-input",
                )
                preview_img = gr.Image(label="Input", interactive=False, height=260, format="jpeg", elem_id="preview")
                model_in = gr.Radio(list(MODEL_CHOICES), value=PAPER_MODEL, label="Model", elem_id="model")
                k_in = gr.Slider(K_MIN, K_MAX, value=K_DEFAULT, step=1, label="K: patches", elem_id="k-slider")
                patch_in = gr.Slider(
                    PATCH_MIN,
                    PATCH_MAX,
                    value=PATCH_DEFAULT,
                    step=PATCH_STEP,
                    label="Patch size (px)",
                    elem_id="patch-slider",
                )
                seed_in = gr.Number(value=0, precision=0, minimum=0, label="Seed (press Enter)", elem_id="seed")
                class_in = gr.Dropdown(
                    [PREDICTED, *LABEL_SETS["label4"]],
                    value=PREDICTED,
                    label="Saliency for class",
                    allow_custom_value=True,  # API callers may name the 3-class model's classes
                    elem_id="saliency-class",
                )
                run_btn = gr.Button("Analyse", variant="primary", elem_id="analyse-button")
                if examples:
                    gr.Examples(
                        examples=[[str(EXAMPLES_DIR / r["file"]), str(EXAMPLES_DIR / r["file"])] for r in examples],
                        inputs=[image_in, preview_img],
                        label="Examples (real X-rays; click one, then Analyse)",
                        visible_columns=[1],
                        examples_per_page=8,
                    )
                    gr.Markdown(
                        "Example images: "
                        + "; ".join(f"{i + 1}. {_example_label(r)}" for i, r in enumerate(examples))
                        + ". Full attribution in the **About** tab and `examples/README.md`.",
                        elem_id="example-credits",
                    )
            with gr.Column(scale=2):
                summary_out = gr.Markdown("Choose an image and press **Analyse**.", elem_id="summary")
                with gr.Row():
                    seg_out = gr.AnnotatedImage(
                        label="Segmentation and sampled patches",
                        color_map=colour_map,
                        height=420,
                        format="jpeg",  # the gray base image; Gradio writes the masks as PNG (they need alpha)
                        elem_id="segmentation",
                    )
                    with gr.Column():
                        votes_plot = gr.BarPlot(
                            x="class",
                            y="votes",
                            color="training",
                            color_map={TRAINED: "#6366f1", UNTRAINED: "#b0b0b0"},
                            sort=CLASS_SORT,
                            title="Votes of the K patches",
                            height=220,
                            elem_id="votes-plot",
                        )
                        fractions_out = gr.Label(label="Vote fractions", elem_id="vote-fractions")
                with gr.Row():
                    patch_cam_out = gr.Image(
                        label="Probabilistic Grad-CAM (patches, eq. 5)", height=340, format="jpeg", elem_id="patch-cam"
                    )
                    global_cam_out = gr.Image(
                        label="Global model's Grad-CAM (Fig. 7)", height=340, format="jpeg", elem_id="global-cam"
                    )
                biomarkers_out = gr.Markdown(elem_id="biomarkers")
                triage_out = gr.Markdown(elem_id="triage")
                details_out = gr.Markdown(elem_id="details")
                report_out = gr.File(label="Report (JSON + PNG)", file_count="multiple", elem_id="report")
                with gr.Accordion("Result as JSON", open=False):
                    result_out = gr.JSON(elem_id="result-json")
        with gr.Tab("How it works", id="how") as how_tab:
            gr.Markdown(HOW_IT_WORKS)
            steps_note = gr.Markdown("Analyse an image first; its intermediate images will appear here.")
            steps_gallery = gr.Gallery(label="This image, step by step", columns=3, height="auto", elem_id="steps")
        with gr.Tab("About", id="about"):
            gr.Markdown(
                f"## Disclaimer\n{DISCLAIMER} The models were trained on small public data sets with known biases "
                "(see the model cards); their outputs are illustrations of a research method.\n\n"
                "## Privacy\nOnly the image's pixels are used. DICOM header fields (names, IDs, dates) and file names "
                "are never shown, logged or written to a report. Uploads are deleted from the server after about 15 "
                "minutes; the analysis cache keeps derived arrays in memory only.\n\n"
                "## Model cards\n" + _model_cards(engine) + "\n\n## Use it from Python\n" + API_EXAMPLE
            )
            credits = EXAMPLES_DIR / "README.md"
            if credits.is_file():
                gr.Markdown("## Example images\n" + credits.read_text().split("\n", 1)[1])
            gr.Markdown(
                "## Citation\nY. Oh, S. Park, J. C. Ye, *Deep Learning COVID-19 Features on CXR Using Limited Training "
                "Data Sets*, IEEE Transactions on Medical Imaging 39(8):2688–2700, 2020, doi:10.1109/TMI.2020.2993291."
            )

        inputs = [image_in, model_in, k_in, patch_in, seed_in, class_in]
        outputs = [
            summary_out,
            seg_out,
            votes_plot,
            fractions_out,
            patch_cam_out,
            global_cam_out,
            biomarkers_out,
            triage_out,
            details_out,
            result_out,
            report_out,
            last,
        ]
        # one shared concurrency slot for every computing event (per-listener limits would allow parallel runs)
        common = {"concurrency_id": "analysis", "concurrency_limit": CONCURRENCY_LIMIT}
        run_btn.click(analyze, inputs, outputs, api_name="analyze", **common)
        gr.on(
            [k_in.release, patch_in.release, seed_in.submit, class_in.input],
            analyze_live,
            inputs,
            outputs,
            api_visibility="private",
            trigger_mode="always_last",
            show_progress="minimal",
            **common,
        )
        model_in.input(class_choices, model_in, class_in, api_visibility="private").then(
            analyze_live, inputs, outputs, api_visibility="private", trigger_mode="always_last", **common
        )
        image_in.upload(preview, image_in, preview_img, api_visibility="private")
        image_in.clear(lambda: None, None, preview_img, api_visibility="private")
        how_tab.select(explain, last, [steps_gallery, steps_note], api_visibility="private", **common)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=CONCURRENCY_LIMIT)
    return demo


def launch_kwargs() -> dict[str, Any]:
    """Keyword arguments of ``demo.launch`` shared by ``main`` and the tests (Gradio 6 takes theme/css here)."""
    return {"max_file_size": MAX_FILE_SIZE, "show_error": False, "enable_monitoring": False, "theme": gr.themes.Soft()}


def main(argv: list[str] | None = None) -> None:
    """``python app.py``: loads the paper model eagerly (so the first visitor does not wait) and serves the UI."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: CUDA when present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    engine = CXRApp(device=args.device)
    engine.models(PAPER_MODEL)
    build_demo(engine).launch(server_name=args.host, server_port=args.port, **launch_kwargs())


if __name__ == "__main__":
    main()
