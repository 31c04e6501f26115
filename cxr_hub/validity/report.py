"""What the input-validity check says: the names of its checks and kinds, what it measured, its decision, the
refusal.

* :data:`CHECKS` (every check, in the order they are tried), :data:`IMAGE_CHECKS` (those before the segmentation),
  :data:`KINDS` (what the learned check tells apart), :data:`THUMB_SIDE` (the side of the thumbnails compared with
  the calibration's mean images) and :data:`CSV_COLUMNS` (a batch CSV row's input-check cells).
* :class:`Measurements`: what was measured on one input, before any threshold.
* :class:`CheckScore` and :class:`ValidityReport`: one check's outcome, and every check's with the decision (as JSON,
  :meth:`ValidityReport.to_dict`; as CSV cells, :meth:`ValidityReport.csv_values`; as the refusal,
  :meth:`ValidityReport.error`).
* :class:`NotAFrontalCXRError`: the refusal, a :class:`cxr_hub.CXRInputError`.

The bottom of :mod:`cxr_hub.validity`: it imports numpy and :mod:`cxr_hub.models` (for ``CXRInputError``) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models.image_processing_cxr import CXRInputError

#: What the learned check tells apart; "frontal" is the only kind that is accepted.
KINDS = ("frontal", "lateral", "ct", "rotated", "inverted", "crop", "photo", "graphic", "noise")
#: Every check, in the order they are tried. The first failing image check words the refusal; of the others,
#: the learned model, orientation and polarity come first (see :class:`~cxr_hub.validity.InputValidator`).
CHECKS = (
    "colour",
    "size",
    "aspect",
    "blank",
    "structure",
    "lung_share",
    "lung_balance",
    "lung_sides",
    "heart_between",
    "heart_low",
    "polarity",
    "orientation",
    "frontal_model",
)
#: The checks on the loaded image alone, tried before the segmentation (a refusal costs no network pass).
IMAGE_CHECKS = CHECKS[:5]
#: Side of the thumbnails the orientation and label-map features compare with the calibration's mean images.
THUMB_SIDE = 32
#: Columns a batch CSV row gets from :meth:`ValidityReport.csv_values` (the same names, the same order).
CSV_COLUMNS = (
    "input_check",
    "input_kind",
    "input_failed",
    *(f"input_{name}" for name in CHECKS),
)


class NotAFrontalCXRError(CXRInputError):
    """An input the validity check refused: not a frontal chest X-ray (or not usable as one).

    Attributes:
        report: the :class:`ValidityReport` with every score measured before the refusal.
        kind: what the input looks like (``report.kind``: "lateral", "ct", "colour", "rotated", ...).
    """

    def __init__(self, message: str, report: ValidityReport) -> None:
        super().__init__(message)
        self.report = report
        self.kind = report.kind


@dataclass
class Measurements:
    """What the check measured on one input, before any threshold (the calibration script fits on these).

    Attributes:
        scalars: named measurements (image: ``height``, ``width``, ``min_side``, ``aspect``, ``colour``,
            ``blank``, ``structure``; segmentation: see :func:`measure_segmentation`).
        thumb: (32, 32) float32 z-scored segmentation input, or None before the segmentation.
        labels: (4, 32, 32) float32 area-mean class probabilities, or None before the segmentation.
        gray: (128, 128) float32 segmentation input in [0, 1], as measured (None before the segmentation).
        probs: (4, 128, 128) float32 class probabilities, as measured: ``measure_segmentation(255 * gray, probs)``
            gives these measurements again (how the calibration re-derives features without the network).
    """

    scalars: dict[str, float]
    thumb: np.ndarray | None = None
    labels: np.ndarray | None = None
    gray: np.ndarray | None = field(default=None, repr=False)
    probs: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CheckScore:
    """One check's outcome.

    Attributes:
        name: one of :data:`CHECKS`.
        score: what was measured (None: nothing to measure, e.g. no colour channel or no heart segmented).
        passed: within the limit (a check with no score passes).
        limit: the accepted range, in words ("<= 0.05", "0.08 .. 0.55").
    """

    name: str
    score: float | None
    passed: bool
    limit: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"score", "passed", "limit"}``."""
        score = None if self.score is None or not math.isfinite(self.score) else round(float(self.score), 6)
        return {"score": score, "passed": self.passed, "limit": self.limit}


@dataclass
class ValidityReport:
    """Every check's score and the decision, for one input.

    Attributes:
        checks: name → score, in :data:`CHECKS` order (only the checks that ran).
        kind: what the input looks like: "frontal" when accepted; else a kind of :data:`KINDS` or the name of the
            image check that refused it ("colour", "size", "aspect", "blank", "structure") or "anatomy".
        reason: why it was refused, in words ending with what to do ("" when accepted).
        probabilities: the learned model's probability per kind ({} when it did not run).
        calibration: name of the segmentation model the anatomy checks were calibrated on; None: they did not run.
        enforced: whether the pipeline refuses what fails (False: ``check_input=False``).
        notes: remarks (e.g. why the anatomy checks did not run).
        ms: time the check itself took, in milliseconds (the segmentation it reads excluded).
        features: every measured and derived value (for calibration and debugging; not in :meth:`to_dict`).
        measurements: the segmentation measurements with their thumbnails (None before the segmentation), what
            ``training.calibrate_validity`` fits on.
    """

    checks: dict[str, CheckScore] = field(default_factory=dict)
    kind: str = "frontal"
    reason: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    calibration: str | None = None
    enforced: bool = True
    notes: list[str] = field(default_factory=list)
    ms: float = 0.0
    features: dict[str, float] = field(default_factory=dict, repr=False)
    measurements: Measurements | None = field(default=None, repr=False)

    @property
    def accepted(self) -> bool:
        """No check failed."""
        return not self.reason

    @property
    def failed(self) -> list[str]:
        """Names of the checks that failed, in :data:`CHECKS` order."""
        return [name for name, c in self.checks.items() if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: decision, kind, reason, scores, probabilities, calibration, notes, ms."""
        return {
            "accepted": self.accepted,
            "enforced": self.enforced,
            "kind": self.kind,
            "reason": self.reason,
            "failed": self.failed,
            "checks": {name: c.to_dict() for name, c in self.checks.items()},
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "calibration": self.calibration,
            "notes": list(self.notes),
            "ms": round(self.ms, 3),
        }

    def csv_values(self) -> dict[str, str]:
        """The batch CSV cells of :data:`CSV_COLUMNS`: decision ("accepted", "refused", or with the check off
        "accepted (not enforced)" / "refused (not enforced)"), kind, failed checks joined by "|", and each check's
        score with 6 decimals ("" where it has none)."""
        decision = "accepted" if self.accepted else "refused"
        out = {
            "input_check": decision if self.enforced else f"{decision} (not enforced)",
            "input_kind": self.kind,
            "input_failed": "|".join(self.failed),
        }
        for name in CHECKS:
            c = self.checks.get(name)
            ok = c is not None and c.score is not None and math.isfinite(c.score)
            out[f"input_{name}"] = f"{c.score:.6f}" if ok else ""  # type: ignore[union-attr]
        return out

    def error(self, subject: str = "The image") -> NotAFrontalCXRError:
        """The refusal as an exception: "<subject> does not look like a frontal chest X-ray: <reason>"."""
        return NotAFrontalCXRError(f"{subject} does not look like a frontal chest X-ray: {self.reason}", self)

    def warning(self) -> str:
        """The warning a result gets when the check is not enforced (``check_input=False``)."""
        if self.accepted:
            return "input check off (check_input=False): this image was not validated as a frontal chest X-ray"
        return (
            "input check off (check_input=False): the check would have refused this image (it does not look like a "
            f"frontal chest X-ray: {self.reason}); the result is not meaningful"
        )
