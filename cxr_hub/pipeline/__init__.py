"""``CXRPipeline``: load → preprocess → segment → sample patches → vote → probabilistic Grad-CAM (Oh, Park, Ye 2020).

Two halves, so an interactive app can cache the expensive, parameter-free part:

* :meth:`CXRPipeline.prepare` (per image): load, the input-validity check (:mod:`cxr_hub.validity`: is this a
  frontal chest X-ray? a refusal raises before anything is classified; ``check_input=False`` turns it into a
  warning), the paper's preprocessing, lung/heart segmentation at the segmentation model's size (256), the label
  map and lung mask at the original size, the lung-masked, normalised classifier frame (1024) and the biomarkers →
  :class:`PreparedImage`. :meth:`CXRPipeline.check` runs the check alone.
* :meth:`CXRPipeline.analyze` (per K / patch size / seed / classes): patch sampling, batched classification, majority
  vote, probabilistic Grad-CAM, and the optional global classifier → :class:`PipelineResult`.

Every preprocessing parameter (frame size, gamma, equalisation, mean/std, network input size, default patch size
and K) comes from the models' configs through :func:`cxr_hub.image_processor_for`; nothing is hard-coded here.

Segmentation-only mode: ``classifier_model=None``. :meth:`CXRPipeline.prepare` still segments and builds the frame
(its parameters then come from ``frame_config``, by default ``PatchClassifierConfig()``: the paper's 1024 frame,
gamma 0.5, equalisation, 224 patches, K = 100), and :meth:`CXRPipeline.sample_patches` places the patches exactly as
:meth:`CXRPipeline.analyze` would; ``analyze`` itself raises :class:`NoClassifierError`. Nothing is ever classified
with weights that were not loaded.

Rules (see :mod:`cxr_hub.patches` and :mod:`cxr_hub.saliency` for the functions):

* Patch centres are drawn jointly and uniformly from the lung pixels of the lung mask resized (nearest) to the
  classifier frame, by default from a stream of frame positions fixed by the seed (``sampling="stable"``), so a
  slightly different mask keeps almost every patch; a patch near the border is shifted inside the frame, never
  zero-padded.
* A ``patch_size`` other than the classifier's trained ``config.patch_size`` is cropped at that size, resized to
  ``config.input_size`` and flagged in ``warnings``.
* Majority vote; ties → highest mean probability → lowest class index. Same seed → identical result; ``seed=None``
  draws a seed (:func:`resolve_seed`) and ``PipelineResult.seed`` records it, so every result can be replayed.
* Speed: all K patches go through the network in chunks of ``chunk_size`` under ``torch.inference_mode``,
  channels_last throughout. Which arithmetic each network runs in (int8, bf16 autocast with folded batch norms, or
  fp32) is decided outside the method by the numeric policy (:mod:`cxr_hub.runtime.numerics`), each choice
  validated against fp32 on real films first; :meth:`CXRPipeline.settings` reports what it chose and why.
* Saliency costs no backward pass: for the GAP + linear head, Grad-CAM maps follow from the voting pass's layer4
  features (:func:`cxr_hub.saliency.gradcam_from_features`); the un-normalised maps of every class are kept from
  that pass (K x C x 7 x 7 floats), so no second forward pass is needed for any requested class. An empty saliency
  selection (``saliency_classes=[]`` or ``""``) computes no map at all.
* Eq. (5): per-patch maps normalised to [0, 1] (``normalize_cams``), times the patch's class probability, pasted,
  summed and divided by the per-pixel patch count; computed in the 1024 frame and resized to the original size.
* Too little lung (below ``min_lung_fraction`` of the image, default 5 %) gives a warning, no lung at all a
  :class:`cxr_hub.CXRInputError`.

Pipeline-level problems go into ``PipelineResult.warnings`` (never ``warnings.warn``), for reports and the app.
Only pixel arrays from :func:`cxr_hub.load_image` enter the pipeline, so no DICOM header field can reach a result.

Modules: :mod:`~cxr_hub.pipeline.core` (:class:`CXRPipeline`: models, options, loading, ``settings()``),
:mod:`~cxr_hub.pipeline.prepare` (the per-image half), :mod:`~cxr_hub.pipeline.analyze` (the per-request half:
sample → classify in chunks → vote → saliency), :mod:`~cxr_hub.pipeline.results` (what they return) and
:mod:`~cxr_hub.pipeline.arguments` (seeds, the frame config, argument checks). The package imports the method's
vocabulary (preprocessing, patches, saliency, biomarkers, validity, io, models) and :mod:`cxr_hub.runtime`; nothing
of cxr_hub imports it except the layers above (cli, demo, evaluation).
"""

from ..runtime.numerics import CLASSIFIER_PRECISIONS, PRECISIONS
from .arguments import DEFAULT_MIN_LUNG_FRACTION, FRAME_FIELDS, SEED_LIMIT, resolve_seed
from .core import CXRPipeline
from .results import PATCH_CACHE_ENTRIES, NoClassifierError, PatchSample, PipelineResult, PreparedImage

__all__ = [
    "CLASSIFIER_PRECISIONS",
    "DEFAULT_MIN_LUNG_FRACTION",
    "FRAME_FIELDS",
    "PATCH_CACHE_ENTRIES",
    "PRECISIONS",
    "SEED_LIMIT",
    "CXRPipeline",
    "NoClassifierError",
    "PatchSample",
    "PipelineResult",
    "PreparedImage",
    "resolve_seed",
]
