"""The input-validity check's decisions: :class:`InputValidator` applies the thresholds to the measurements and
words each refusal for the user (what was seen, and what to upload instead).

Imports numpy and the other modules of :mod:`cxr_hub.validity` (report, calibration, image_measures,
segmentation_measures); the pipeline imports this.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import Calibration, ImageThresholds, load_validity_file, model_fingerprint
from .image_measures import measure_image
from .report import IMAGE_CHECKS, CheckScore, Measurements, ValidityReport
from .segmentation_measures import decision_features, measure_segmentation

#: The refusal's words for each kind the learned model can name (what was seen; what to upload instead).
_KIND_REASONS = {
    "lateral": "it looks like a lateral (side) view; upload a frontal (PA or AP) film",
    "ct": "it looks like a CT or MR slice, not a radiograph; upload a frontal (PA or AP) chest X-ray",
    "rotated": "it looks rotated; turn it upright (neck at the top, as the film is read) and upload it again",
    "inverted": (
        "it looks inverted (a negative: lungs bright, bones dark); save it with normal polarity (air dark, bone "
        "bright) and upload it again"
    ),
    "crop": "it looks like part of a chest film (a crop); upload the whole frontal film, with both lungs in view",
    "photo": "it looks like a photograph, not a radiograph; upload a frontal (PA or AP) chest X-ray",
    "graphic": "it looks like a drawing, chart, text or screenshot, not a radiograph; upload the film itself",
    "noise": "it looks like noise, with no anatomy in it; upload a frontal (PA or AP) chest X-ray",
}


def _fmt(v: float) -> str:
    """A limit as the reports show it: 3 significant digits ("0.05", "1.2e+03")."""
    return f"{v:.3g}"


class InputValidator:
    """Runs the checks with one set of thresholds (and, when calibrated, one segmentation model's calibration).

    Args:
        image_thresholds: the image checks' limits.
        calibration: the segmentation model's calibration, or None: the image checks only.
    """

    def __init__(self, image_thresholds: ImageThresholds, calibration: Calibration | None) -> None:
        self.image_thresholds = image_thresholds
        self.calibration = calibration

    @classmethod
    def for_segmentation(cls, model: Any, calibration: Calibration | str | Path | None = None) -> InputValidator:
        """The validator for a segmentation model: its calibration from :data:`VALIDITY_FILE`, found by
        :func:`model_fingerprint` (none found → image checks only).

        Args:
            model: the segmentation network.
            calibration: a :class:`Calibration` to use as it is (tests, experiments), or another validity file to
                look the model up in; None → :data:`VALIDITY_FILE`.
        """
        path = calibration if isinstance(calibration, (str, Path)) else None
        image, calibrations = load_validity_file(path)
        if isinstance(calibration, Calibration):
            return cls(image, calibration)
        fingerprint = model_fingerprint(model)
        found = next((c for c in calibrations if c.segmentation.get("fingerprint") == fingerprint), None)
        return cls(image, found)

    # -- the two phases the pipeline calls

    def check_image(self, image: np.ndarray, colour: float | None) -> ValidityReport:
        """The image checks (before the segmentation): :func:`measure_image`, then :meth:`decide_image`."""
        start = time.perf_counter()
        report = self.decide_image(measure_image(image, colour))
        report.ms = (time.perf_counter() - start) * 1e3
        return report

    def decide_image(self, s: Mapping[str, float]) -> ValidityReport:
        """The image checks' decision from :func:`measure_image`'s measurements (``colour`` NaN: unknown)."""
        t = self.image_thresholds
        colour = None if not math.isfinite(s["colour"]) else s["colour"]
        checks = {
            "colour": CheckScore(
                "colour",
                colour,
                colour is None or colour <= t.colour_share_max,
                f"<= {_fmt(t.colour_share_max)}",
            ),
            "size": CheckScore("size", s["min_side"], s["min_side"] >= t.min_side, f">= {t.min_side}"),
            "aspect": CheckScore("aspect", s["aspect"], s["aspect"] <= t.aspect_max, f"<= {_fmt(t.aspect_max)}"),
            "blank": CheckScore("blank", s["blank"], s["blank"] <= t.blank_share_max, f"<= {_fmt(t.blank_share_max)}"),
            "structure": CheckScore(
                "structure", s["structure"], s["structure"] >= t.structure_min, f">= {_fmt(t.structure_min)}"
            ),
        }
        report = ValidityReport(checks=checks, features=dict(s))
        h, w = int(s["height"]), int(s["width"])
        reasons = {
            "colour": (
                f"it is a colour image ({s['colour']:.0%} of its pixels are strongly coloured), and X-rays are gray; "
                "upload the radiograph itself as a grayscale PNG, JPEG or DICOM (an X-ray saved in colour: convert "
                "it to grayscale first)"
            ),
            "size": (
                f"it is only {w} x {h} pixels, too small to show the anatomy; upload the film with at least "
                f"{t.min_side} pixels on its shorter side"
            ),
            "aspect": (
                f"its sides are {s['aspect']:.1f} : 1, far from a chest film's shape; upload one whole film, not a "
                "strip, a collage or a screenshot of several images"
            ),
            "blank": (
                f"{s['blank']:.0%} of it is one flat gray level, as on a blank image or a page of text on a plain "
                "background; upload the radiograph itself"
            ),
            # most of a page of fine print is its plain background; noise has none
            "structure": (
                "it shows almost no structure once reduced to 32 x 32 pixels, as fine text or lines on a plain "
                "background do (a document or a screenshot); upload the radiograph itself"
                if s["blank"] > 0.5
                else "it shows almost no structure once reduced to 32 x 32 pixels: it looks like noise, with no "
                "anatomy in it; upload a frontal (PA or AP) chest X-ray"
            ),
        }
        for name in IMAGE_CHECKS:
            if not checks[name].passed:
                report.kind, report.reason = name, reasons[name]
                break
        return report

    def check_segmentation(self, report: ValidityReport, gray: np.ndarray, probs: np.ndarray) -> ValidityReport:
        """Adds the anatomy, polarity, orientation and learned checks to an image report (after the segmentation).

        Args:
            report: from :meth:`check_image` (modified and returned).
            gray: (S, S) segmentation input as gray levels in [0, 255].
            probs: (4, S, S) softmax of the segmentation logits.
        """
        start = time.perf_counter()
        # measured even without a calibration: what a new segmentation model's calibration is fitted on
        report = self.decide_segmentation(report, measure_segmentation(gray, probs))
        report.ms += (time.perf_counter() - start) * 1e3
        return report

    def decide_segmentation(self, report: ValidityReport, m: Measurements) -> ValidityReport:
        """The segmentation checks' decision from :func:`measure_segmentation`'s measurements, added to ``report``."""
        cal = self.calibration
        report.measurements = m
        if cal is None:
            report.features.update(m.scalars)
            report.notes.append(
                "anatomy, polarity, orientation and learned checks not run: no input-validity calibration for this "
                "segmentation model (calibrate it with python -m training.calibrate_validity --segmentation MODEL)"
            )
            return report
        # the image measurements are features of the learned model too
        feats = {**report.features, **decision_features(m, cal)}
        report.features.update(feats)
        report.calibration = cal.name
        t = cal.thresholds
        # the probability-weighted (soft) areas and centroids: they move smoothly with the segmentation
        between, low = feats["s_heart_between"], feats["s_heart_low"]
        heart = bool(feats["heart_present"]) and math.isfinite(feats["heart_between"])
        checks = {
            "lung_share": CheckScore(
                "lung_share",
                feats["lung_share"],
                t.lung_share_min <= feats["lung_share"] <= t.lung_share_max,
                f"{_fmt(t.lung_share_min)} .. {_fmt(t.lung_share_max)}",
            ),
            "lung_balance": CheckScore(
                "lung_balance",
                feats["s_balance"],
                feats["s_balance"] >= t.lung_balance_min,
                f">= {_fmt(t.lung_balance_min)}",
            ),
            "lung_sides": CheckScore(
                "lung_sides",
                feats["s_sides"],
                feats["s_sides"] >= t.lung_sides_min,
                f">= {_fmt(t.lung_sides_min)}",
            ),
            "heart_between": CheckScore(
                "heart_between",
                between if heart else None,
                not heart or t.heart_between_min <= between <= t.heart_between_max,
                f"{_fmt(t.heart_between_min)} .. {_fmt(t.heart_between_max)}",
            ),
            "heart_low": CheckScore(
                "heart_low", low if heart else None, not heart or low >= t.heart_low_min, f">= {_fmt(t.heart_low_min)}"
            ),
            "polarity": CheckScore(
                "polarity", feats["polarity"], feats["polarity"] >= t.polarity_min, f">= {_fmt(t.polarity_min)}"
            ),
            "orientation": CheckScore(
                "orientation",
                feats["orientation"],
                feats["orientation"] <= t.orientation_max,
                f"<= {_fmt(t.orientation_max)}",
            ),
        }
        if not heart:
            report.notes.append("no heart segmented: the heart position checks pass without a score")
        if cal.model is not None:
            report.probabilities = cal.model.probabilities(feats)
            p = report.probabilities["frontal"]
            checks["frontal_model"] = CheckScore(
                "frontal_model", p, p >= t.frontal_probability_min, f">= {_fmt(t.frontal_probability_min)}"
            )
        report.checks.update(checks)
        if report.accepted:  # an image check that already failed keeps its wording
            report.kind, report.reason = self._segmentation_reason(report, feats)
        return report

    def _segmentation_reason(self, report: ValidityReport, feats: Mapping[str, float]) -> tuple[str, str]:
        """(kind, reason) of the first failing segmentation check, worded for the user; ("frontal", "") if none.

        The learned model names what the input looks like, so it words the refusal when it refuses; orientation and
        polarity give the specific fix (with the angle); the anatomy rules come last.
        """
        c = report.checks
        angle = int(feats.get("orientation_angle", 90))  # counter-clockwise, as np.rot90 and PIL's rotate turn
        seen, fix = {
            90: ("by 90° counter-clockwise", "turn it 90° clockwise"),
            180: ("by 180° (upside down)", "turn it by 180°"),
            270: ("by 90° clockwise", "turn it 90° counter-clockwise"),
        }.get(angle, (f"by {angle}°", "turn it upright"))
        rotated = f"it looks rotated {seen}; {fix} so the neck is at the top, and upload it again"
        if "frontal_model" in c and not c["frontal_model"].passed:
            probs = {k: v for k, v in report.probabilities.items() if k != "frontal"}
            kind = max(probs, key=probs.__getitem__)
            if kind == "rotated" and not c["orientation"].passed:
                return kind, rotated
            return kind, _KIND_REASONS[kind]
        if not c["orientation"].passed:  # first: on a rotated film the lung labels, hence polarity, mean little
            return "rotated", rotated
        if not c["polarity"].passed:
            return "inverted", _KIND_REASONS["inverted"]
        share = feats["lung_share"]
        t = self.calibration.thresholds if self.calibration is not None else None
        if not c["lung_share"].passed and t is not None:
            side = "too little" if share < t.lung_share_min else "too much"
            return "anatomy", (
                f"{side} of it was segmented as lung ({share:.0%}; frontal films show {t.lung_share_min:.0%} to "
                f"{t.lung_share_max:.0%}); upload a whole frontal (PA or AP) chest X-ray"
            )
        if not c["lung_balance"].passed:
            return "anatomy", (
                f"it does not show two lungs of similar size (the smaller is {feats['s_balance']:.0%} of the "
                "larger), as a lateral view or a crop would; upload a frontal (PA or AP) film with both lungs in view"
            )
        if not c["lung_sides"].passed:
            return "anatomy", (
                "its lungs are not one on each side of the midline, as on a frontal film; upload a frontal (PA or AP) "
                "chest X-ray, upright and not mirrored"
            )
        if not c["heart_between"].passed or not c["heart_low"].passed:
            return "anatomy", (
                "the heart is not where a frontal film shows it (between the lungs, low); upload a frontal (PA or "
                "AP) chest X-ray"
            )
        return "frontal", ""

    def settings(self) -> dict[str, Any]:
        """What the validator checks with: the image thresholds and the calibration's model and thresholds."""
        cal = self.calibration
        return {
            "image_thresholds": asdict(self.image_thresholds),
            "calibration": None if cal is None else dict(cal.segmentation),
            "anatomy_thresholds": None if cal is None else asdict(cal.thresholds),
            "learned_model": cal is not None and cal.model is not None,
        }
