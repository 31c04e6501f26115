"""The demo app's engine, without any UI: model loading, per-image caching and analysis.

``app.py`` (Gradio) and :mod:`cxr_hub.demo.outputs` turn an :class:`Analysis` into what the UI shows; nothing here
imports gradio or pandas, so the engine can be used (and tested) from plain Python or a notebook::

    from cxr_hub.demo import CXRApp, summary_dict

    engine = CXRApp(device="cpu")
    analysis = engine.analyze("examples/covid19_cohen_2168a917.jpg", k=100, patch_size=224, seed=0)
    summary = summary_dict(analysis)  # JSON-ready: mode, label, votes, biomarkers, warnings, timings, ...

A model choice is named by its id (:data:`~cxr_hub.demo.discovery.PAPER_MODEL` ``"label4"``,
:data:`~cxr_hub.demo.discovery.COVIDX_MODEL` ``"label3"``); its networks are found by
:func:`~cxr_hub.demo.discovery.discover_models`. What the engine guarantees (no result from untrained weights, the
pipeline's input check decides, pixels only) is written in :mod:`cxr_hub.demo`.

Speed: :meth:`CXRPipeline.prepare` (segmentation, the 1024 lung-masked frame, biomarkers) is cached per image in an
LRU keyed by a hash of the decoded pixels (never the file name), so changing K, the patch size, the seed or the class
re-runs only the patch vote and saliency. A refusal by the input check is remembered per image the same way.
"""

from __future__ import annotations

import atexit
import hashlib
import math
import os
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
from torch import nn

from ..hub.card_metrics import read_card_metrics
from ..io import load_image
from ..loading import UnsafeCheckpointError, allow_pickle_from_env, load_model
from ..models import LABEL_SETS
from ..pipeline import CLASSIFIER_PRECISIONS, CXRPipeline, PipelineResult, PreparedImage
from ..validity import NotAFrontalCXRError, ValidityReport
from .discovery import MODEL_CHOICES, MODEL_SPECS, MODELS_DIR, PAPER_MODEL, ModelSources, discover_models

__all__ = [
    "K_DEFAULT",
    "K_MAX",
    "K_MIN",
    "PATCH_DEFAULT",
    "PATCH_MAX",
    "PATCH_MIN",
    "PATCH_STEP",
    "PRECISION_ENV",
    "PREDICTED",
    "PREPARED_CACHE_SIZE",
    "RESULT_CACHE_SIZE",
    "UPLOAD_NAME",
    "Analysis",
    "AppInputError",
    "CXRApp",
    "LRUCache",
    "LoadedModels",
    "UnknownClassError",
    "UnknownModelError",
    "pixel_hash",
]

#: The saliency class that means "the class the vote predicted".
PREDICTED = "predicted class"

K_MIN, K_MAX, K_DEFAULT = 1, 400, 100
PATCH_MIN, PATCH_MAX, PATCH_STEP, PATCH_DEFAULT = 112, 448, 16, 224
#: Prepared images kept (a 1024² film costs ~15 MB, a 3000² DICOM ~100 MB).
PREPARED_CACHE_SIZE = 6
#: Recent analyses kept for the "How it works" tab.
RESULT_CACHE_SIZE = 8

PRECISION_ENV = "CXR_HUB_PRECISION"
#: How error messages name an uploaded file (never its path or file name, which can carry a patient's name).
UPLOAD_NAME = "The uploaded file"


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
        card_metrics: the patch classifier's measured test numbers, read from its model card
            (:func:`cxr_hub.hub.card_metrics.read_card_metrics`; empty without a classifier or a card).
    """

    sources: ModelSources
    pipeline: CXRPipeline | None
    classifier_loaded: bool
    class_names: list[str]
    trained_classes: list[str]
    errors: list[str] = field(default_factory=list)
    prepare_key: tuple = ()
    card_metrics: dict[str, float] = field(default_factory=dict)

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


class UnknownModelError(AppInputError):
    """A model choice that is not one of :data:`~cxr_hub.demo.discovery.MODEL_CHOICES`.

    ``choice`` is what was asked for, so a UI can word the message with the labels it shows instead of the ids.
    """

    def __init__(self, choice: object) -> None:
        self.choice = choice
        super().__init__(f"Unknown model {choice!r}; choose one of: {', '.join(MODEL_CHOICES)}.")


class UnknownClassError(AppInputError):
    """A saliency class the chosen model does not have; ``choice`` is the model's id, for a UI to name it."""

    def __init__(self, saliency_class: str, choice: str, class_names: list[str]) -> None:
        self.saliency_class, self.choice, self.class_names = saliency_class, choice, list(class_names)
        super().__init__(
            f"Unknown class {saliency_class!r} for model {choice!r}; choose {PREDICTED!r} or one of {class_names}."
        )


@dataclass
class Analysis:
    """Everything one request produced; :func:`cxr_hub.demo.outputs.render` turns it into the UI's outputs.

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
        """Where the networks of a model choice id come from (:func:`~cxr_hub.demo.discovery.discover_models`)."""
        return discover_models(choice, self.environ, self.models_dir)

    def _module(self, source: str) -> nn.Module:
        # shared between choices: one segmentation network in memory for both classifiers
        if source not in self._modules:
            self._modules[source] = _load(source, self.allow_pickle)
        return self._modules[source]

    def models(self, choice: str) -> LoadedModels:
        """Loads (once) and returns the models of a choice id; loading problems become messages, never exceptions."""
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
        # what the card says it measured, so the result panel can say how far to trust a vote (never typed here)
        card = read_card_metrics(src.classifier) if src.classifier is not None else {}
        return LoadedModels(src, pipe, True, pipe.class_names, list(cfg.trained_classes), errors, key, card)

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
        model: str | None = PAPER_MODEL,
        k: float = K_DEFAULT,
        patch_size: float = PATCH_DEFAULT,
        seed: float | None = 0,
        saliency_class: str | None = PREDICTED,
    ) -> Analysis:
        """Runs what the loaded models allow on one image.

        An upload the pipeline's input-validity check refuses (not a frontal chest X-ray) raises, before anything is
        classified; an accepted one's scores are in ``Analysis.input_check``.

        Args:
            image: path of the upload (PNG, JPEG, DICOM, ...).
            model: a model choice id, one of :data:`~cxr_hub.demo.discovery.MODEL_CHOICES`; anything else (None
                included) raises :class:`UnknownModelError`.
            k: patches in the vote, a whole number from :data:`K_MIN` to :data:`K_MAX`.
            patch_size: patch side in the 1024 frame, :data:`PATCH_MIN` to :data:`PATCH_MAX` in steps of
                :data:`PATCH_STEP`.
            seed: patch sampling seed, 0 to 2**32 - 1 (None or "" → 0).
            saliency_class: :data:`PREDICTED` or one of the model's classes.

        Raises:
            cxr_hub.validity.NotAFrontalCXRError: the input check refused the upload (the message says why and
                what to upload instead).
            CXRInputError: unreadable image or no lung found.
            AppInputError: missing image, out-of-range parameter, unknown model (:class:`UnknownModelError`) or
                class (:class:`UnknownClassError`), expired upload.
        """
        start = time.perf_counter()
        if image is None or (isinstance(image, str) and not image):
            raise AppInputError("Upload a chest X-ray (PNG, JPEG or DICOM) or pick an example first.")
        if model not in MODEL_SPECS:
            raise UnknownModelError(model)
        k_int, patch, seed_int = _check_int("K", k, K_MIN, K_MAX), _check_patch(patch_size), _check_seed(seed)
        if saliency_class is not None and not isinstance(saliency_class, str):  # an API call can send anything
            raise AppInputError(f"Saliency class must be {PREDICTED!r} or a class name, got {saliency_class!r}.")
        models = self.models(model)
        cls = (saliency_class or PREDICTED).strip()
        if cls != PREDICTED and cls not in models.class_names:
            raise UnknownClassError(cls, model, models.class_names)
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
