"""The demo app's library code: everything behind ``app.py`` (the Gradio UI) that is not Gradio.

What lives where:

* :mod:`~cxr_hub.demo.discovery`: the two model choices, by stable id (:data:`PAPER_MODEL` ``"label4"``,
  :data:`COVIDX_MODEL` ``"label3"``), and where their networks come from (``models/<name>/`` or the ``CXR_HUB_*``
  environment variables; :func:`discover_models`). Nothing is loaded there.
* :mod:`~cxr_hub.demo.engine`: :class:`CXRApp` loads the models, caches prepared images (:class:`LRUCache`, keyed by
  :func:`pixel_hash`), checks the request's parameters (:class:`AppInputError`) and runs the analysis
  (:class:`Analysis`).
* :mod:`~cxr_hub.demo.names`: how people see names: the model choices' labels (:data:`MODEL_LABELS`, "Paper 4-class
  model", ...), the classes, numbers.
* :mod:`~cxr_hub.demo.biomarker_reference`: our per-class biomarker reference and the paper's, and the biomarker
  panel.
* :mod:`~cxr_hub.demo.presenters`: the JSON summary (:func:`summary_dict`), the markdown panels, the model status and
  cards, the example images' captions, the wording of input errors for the UI.
* :mod:`~cxr_hub.demo.outputs`: the images, the downloadable report, the "How it works" steps, and :func:`render`
  (an :class:`Analysis` → every UI output, in :data:`OUTPUT_NAMES` order).

What it may import: :mod:`cxr_hub`'s pipeline, io, loading, models, paper, preprocessing, presets, validity and
visualize modules, numpy, PIL and torch; pandas only inside :func:`votes_frame` (the ``app`` extra). Never gradio and
never ``app.py``: the engine works, and is tested, from plain Python or a notebook::

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

Privacy: only pixel arrays from :func:`cxr_hub.load_image` are used; no DICOM header field and no file name is
put into an :class:`Analysis`, a summary or a report.

Every name below was importable from ``cxr_hub.demo`` when it was one module, and still is.
"""

from __future__ import annotations

from .biomarker_reference import (
    BIOMARKER_PANEL_NOTE,
    BIOMARKER_REFERENCE,
    PANEL_BIOMARKERS,
    REFERENCE_FILE,
    REFERENCE_PENDING,
    biomarker_panel,
    load_biomarker_reference,
)
from .discovery import (
    COVIDX_MODEL,
    MODEL_CHOICES,
    MODEL_SPECS,
    MODELS_DIR,
    PAPER_MODEL,
    SEGMENTATION_ENV,
    SEGMENTATION_FOLDER,
    ModelSources,
    ModelSpec,
    discover_models,
)
from .engine import (
    K_DEFAULT,
    K_MAX,
    K_MIN,
    PATCH_DEFAULT,
    PATCH_MAX,
    PATCH_MIN,
    PATCH_STEP,
    PRECISION_ENV,
    PREDICTED,
    PREPARED_CACHE_SIZE,
    RESULT_CACHE_SIZE,
    UPLOAD_NAME,
    Analysis,
    AppInputError,
    CXRApp,
    LoadedModels,
    LRUCache,
    UnknownClassError,
    UnknownModelError,
    pixel_hash,
)
from .names import (
    CLASS_DISPLAY,
    COVIDX_LABEL,
    LABEL_CHOICES,
    MODEL_LABELS,
    PAPER_LABEL,
    display_name,
    format_number,
    model_id,
    model_label,
)
from .outputs import (
    CLEARED_SUMMARY,
    DISPLAY_SIDE,
    OUTPUT_NAMES,
    REPORT_PANEL_SIDE,
    cleared_outputs,
    render,
    saliency_images,
    steps,
    votes_frame,
    write_report,
)
from .presenters import request_timings, summary_dict, triage_text

__all__ = [
    "BIOMARKER_PANEL_NOTE",
    "BIOMARKER_REFERENCE",
    "CLASS_DISPLAY",
    "CLEARED_SUMMARY",
    "COVIDX_LABEL",
    "COVIDX_MODEL",
    "DISPLAY_SIDE",
    "K_DEFAULT",
    "K_MAX",
    "K_MIN",
    "LABEL_CHOICES",
    "MODELS_DIR",
    "MODEL_CHOICES",
    "MODEL_LABELS",
    "MODEL_SPECS",
    "OUTPUT_NAMES",
    "PANEL_BIOMARKERS",
    "PAPER_LABEL",
    "PAPER_MODEL",
    "PATCH_DEFAULT",
    "PATCH_MAX",
    "PATCH_MIN",
    "PATCH_STEP",
    "PRECISION_ENV",
    "PREDICTED",
    "PREPARED_CACHE_SIZE",
    "REFERENCE_FILE",
    "REFERENCE_PENDING",
    "REPORT_PANEL_SIDE",
    "RESULT_CACHE_SIZE",
    "SEGMENTATION_ENV",
    "SEGMENTATION_FOLDER",
    "UPLOAD_NAME",
    "Analysis",
    "AppInputError",
    "CXRApp",
    "LRUCache",
    "LoadedModels",
    "ModelSources",
    "ModelSpec",
    "UnknownClassError",
    "UnknownModelError",
    "biomarker_panel",
    "cleared_outputs",
    "discover_models",
    "display_name",
    "format_number",
    "load_biomarker_reference",
    "model_id",
    "model_label",
    "pixel_hash",
    "render",
    "request_timings",
    "saliency_images",
    "steps",
    "summary_dict",
    "triage_text",
    "votes_frame",
    "write_report",
]
