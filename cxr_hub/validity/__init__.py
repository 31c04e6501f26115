"""Input-validity check: refuse what is not a frontal (PA/AP) chest X-ray before any patch is classified.

The method (segmentation → lung patches → vote) returns a confident class for anything it is given: a photograph, a
lateral film, a CT slice. :class:`InputValidator` decides, inside :meth:`cxr_hub.CXRPipeline.prepare`, whether an
input may be analysed at all, from what the pipeline computes anyway (the loaded image, the 256 × 256 segmentation
input and the segmentation's class probabilities), so every entry point (the CLI, ``predict FOLDER``, ``evaluate``,
the Python API and the app) gets the same decision, and a refusal is a :class:`NotAFrontalCXRError` (a
:class:`cxr_hub.CXRInputError`) whose message says what was seen and what to upload instead.

Checks, in the order they are tried; each returns a score (:class:`CheckScore`), and every score goes into
:class:`ValidityReport` (``PreparedImage.input_check``, ``PipelineResult.input_check``, the JSON result and the CSV
row):

* **Image** (before the segmentation, so a refusal costs no network pass; independent of the segmentation model):
  ``colour`` (share of strongly coloured pixels of an RGB input: radiographs are gray), ``size`` (shorter side in
  pixels), ``aspect`` (longer / shorter side), ``blank`` (share of the image in its most common gray level) and
  ``structure`` (gray-level spread left after a 32 × 32 area reduction, relative to the full image's: noise and
  flat images lose almost all of it, a radiograph keeps most).
* **Anatomy** (from the segmentation's class probabilities, reduced from 256 × 256 to 128 × 128): ``lung_share``
  (segmented lung, within the range of real frontal films), ``lung_balance`` (smaller lung / larger lung),
  ``lung_sides`` (the right lung on the image's left, the left lung on its right), ``heart_between`` and
  ``heart_low`` (where the heart sits relative to the lungs; passes when no heart is segmented, which happens on
  real films).
* **Polarity** (``polarity``: the lungs darker than the mediastinum between them, read as the sign of the input's
  correlation with the mean frontal film). An inverted film (a negative) is **refused**, not inverted for the user:
  the classifier never saw one, and inverting silently would analyse pixels the user did not send. The message says
  how to fix it.
* **Orientation** (``orientation``: how much better the 32 × 32 image matches the mean upright frontal film turned by
  90°, 180° or 270° than upright). A rotated film is refused with the angle, not rotated for the user.
* **Learned** (``frontal_model``: a multinomial logistic model on segmentation-derived features, trained on our
  frontal films against lateral films, CT slices, rotations, inversions, crops, photographs, drawings and noise):
  the probability that the input is a frontal film; a refusal names the most likely kind ("this looks like a
  lateral view: upload a frontal (PA or AP) film").

The thresholds (:class:`ImageThresholds`, :class:`AnatomyThresholds`: every field documented there), the two mean
images the orientation and label features compare against, and the learned model's weights live in **one file**,
``cxr_hub/data/validity.json`` (:data:`VALIDITY_FILE`), written by ``python -m training.calibrate_validity``. The
anatomy, polarity, orientation and learned checks depend on the segmentation network (they read its output), so the
file holds one calibration per segmentation model, found by a fingerprint of its weights (:func:`model_fingerprint`).
A pipeline whose segmentation model has no calibration runs the image checks only, and its reports say so
(``calibration: null`` and a note); calibrate it with ``python -m training.calibrate_validity --segmentation M``.

Override, for research: ``CXRPipeline(check_input=False)`` (``--no-input-check``) still measures every check but
refuses nothing; every result it lets through carries a warning, and says what the check would have decided.

Decision logic is plain functions on arrays (no network), shared by the pipeline and the calibration script.

What lives where (each module imports only those listed before it):

* :mod:`~cxr_hub.validity.report`: the vocabulary (:data:`CHECKS`, :data:`IMAGE_CHECKS`, :data:`KINDS`,
  :data:`THUMB_SIDE`, :data:`CSV_COLUMNS`), :class:`Measurements`, :class:`CheckScore`, :class:`ValidityReport` and
  the refusal, :class:`NotAFrontalCXRError`.
* :mod:`~cxr_hub.validity.calibration`: the thresholds' one documented place (:class:`ImageThresholds`,
  :class:`AnatomyThresholds`), :class:`LearnedModel`, :class:`Calibration`, reading :data:`VALIDITY_FILE`
  (:func:`load_validity_file`, :data:`FILE_FORMAT`, :func:`threshold_fields`) and :func:`model_fingerprint`.
* :mod:`~cxr_hub.validity.image_measures`: what the image checks measure (:func:`colour_share`,
  :func:`source_colour_share`, :func:`measure_image`).
* :mod:`~cxr_hub.validity.segmentation_measures`: what the segmentation-based checks measure
  (:func:`measure_segmentation`, :data:`WORK_SIDE`, :func:`decision_features`).
* :mod:`~cxr_hub.validity.validator`: :class:`InputValidator`, the decisions and the wording of each refusal.

What it may import: the method's vocabulary only (numpy, OpenCV, PIL, :mod:`cxr_hub.models`,
:mod:`cxr_hub.biomarkers`; torch inside :func:`model_fingerprint`); never :mod:`cxr_hub.pipeline`, the cli, the demo
or :mod:`cxr_hub.evaluation`. The pipeline imports this package, and ``training.calibrate_validity`` fits on its
functions without a network.

Every name importable from ``cxr_hub.validity`` when it was one module still is (those outside ``__all__`` too:
:data:`FILE_FORMAT`, :data:`IMAGE_CHECKS`, :data:`WORK_SIDE`, :class:`LearnedModel`).
"""

from __future__ import annotations

from .calibration import FILE_FORMAT as FILE_FORMAT
from .calibration import (
    VALIDITY_FILE,
    AnatomyThresholds,
    Calibration,
    ImageThresholds,
    load_validity_file,
    model_fingerprint,
    threshold_fields,
)
from .calibration import LearnedModel as LearnedModel
from .image_measures import colour_share, measure_image, source_colour_share
from .report import (
    CHECKS,
    CSV_COLUMNS,
    KINDS,
    THUMB_SIDE,
    CheckScore,
    Measurements,
    NotAFrontalCXRError,
    ValidityReport,
)
from .report import IMAGE_CHECKS as IMAGE_CHECKS
from .segmentation_measures import WORK_SIDE as WORK_SIDE
from .segmentation_measures import decision_features, measure_segmentation
from .validator import InputValidator

__all__ = [
    "CHECKS",
    "CSV_COLUMNS",
    "KINDS",
    "THUMB_SIDE",
    "VALIDITY_FILE",
    "AnatomyThresholds",
    "Calibration",
    "CheckScore",
    "ImageThresholds",
    "InputValidator",
    "Measurements",
    "NotAFrontalCXRError",
    "ValidityReport",
    "colour_share",
    "decision_features",
    "load_validity_file",
    "measure_image",
    "measure_segmentation",
    "model_fingerprint",
    "source_colour_share",
    "threshold_fields",
]
