"""The per-image half of :class:`cxr_hub.CXRPipeline`: load → input check → preprocess → segment → frame → biomarkers.

Everything here is independent of K, patch size, seed and classes, so its result (:class:`PreparedImage`) can be
cached by an app and analysed many times.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..biomarkers import LEFT_LUNG, RIGHT_LUNG, compute_biomarkers
from ..io import ImageSource, load_image
from ..models import CXRImageProcessor, CXRInputError
from ..postprocessing import clean_label_map, uses_postprocessing
from ..preprocessing import preprocess_cxr, resize_image, resize_label_map
from ..validity import ValidityReport, source_colour_share
from .arguments import _Timer
from .results import PreparedImage


class _PrepareHalf:
    """:meth:`prepare` and :meth:`check` of :class:`cxr_hub.CXRPipeline` (which holds the models and options)."""

    def check(
        self, image: ImageSource, *, source_name: str | None = None, source: ImageSource | None = None
    ) -> ValidityReport:
        """The input-validity check alone: every check's score and the decision, nothing refused, nothing prepared.

        Loads, preprocesses and segments the image exactly as :meth:`prepare` does (the segmentation runs even when
        an image check fails, so every score is measured). For "would this be refused?" without the frame and
        biomarkers, and for calibrating the check (``training/calibrate_validity.py``).

        Args:
            image, source_name, source: as in :meth:`prepare`.

        Returns:
            The :class:`cxr_hub.validity.ValidityReport`; ``report.accepted`` is :meth:`prepare`'s decision.

        Raises:
            CXRInputError: the image cannot be read.
        """
        report = self._load_and_check(image, source_name, source, _Timer(self.device), enforce=False)[-1]
        report.enforced = self.check_input
        return report

    def _load_and_check(
        self, image: ImageSource, source_name: str | None, source: ImageSource | None, timer: _Timer, enforce: bool
    ) -> tuple[np.ndarray, np.ndarray, tuple[bool, float | None], torch.Tensor, ValidityReport]:
        """Load → image checks → preprocessing → segmentation network → segmentation checks.

        Returns ``(image, preprocessed, preprocess params, float32 logits, report)``; with ``enforce`` a failing
        check raises its :class:`cxr_hub.validity.NotAFrontalCXRError` as soon as it fails.
        """
        colour_source = image if source is None else source
        position = _position(colour_source)  # a file object: where load_image starts, so the colour check re-reads
        subject = source_name or "The image"
        with timer.stage("load"):
            img = load_image(image, source_name=source_name)
        with timer.stage("input_check"):
            chroma = self.validator.image_thresholds.colour_chroma
            report = self.validator.check_image(img, _colour_share(colour_source, position, chroma))
            report.enforced = enforce
        if enforce and not report.accepted:
            raise report.error(subject)  # before the segmentation: a refused image costs no network pass
        cls_proc, seg_proc = self.frame_processor, self.segmentation_processor
        params = (cls_proc.do_equalize, cls_proc.gamma)
        with timer.stage("preprocess"):
            pre = preprocess_cxr(img, equalize=params[0], gamma=params[1])
            seg_pre = self._preprocessed(img, seg_proc, pre, params)
            seg_input = seg_proc.frame_from_preprocessed(seg_pre)
        with timer.stage("segment"):
            x = torch.from_numpy(seg_input)[None, None].to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                with self.numerics_policy.autocast(self.segmentation_numerics()):
                    logits = self.segmentation_model(x).logits
                logits = logits.float()  # the check, upsampling and argmax in fp32 whatever the network ran in
        with timer.stage("input_check"), torch.inference_mode():
            probs = torch.softmax(logits[0], dim=0).cpu().numpy()
            gray = (seg_input * seg_proc.image_std + seg_proc.image_mean) * 255.0  # the input's gray levels, 0-255
            if gray.shape != probs.shape[1:]:
                gray = resize_image(gray, probs.shape[1:])
            report = self.validator.check_segmentation(report, gray, probs)
        report.ms = timer.ms["input_check"]  # the whole check: colour read, softmax and measurements included
        if enforce and not report.accepted:
            raise report.error(subject)
        return img, pre, params, logits, report

    def prepare(
        self, image: ImageSource, *, source_name: str | None = None, source: ImageSource | None = None
    ) -> PreparedImage:
        """Load, check, preprocess, segment and compute the classifier frame and biomarkers of one image.

        The input-validity check (:mod:`cxr_hub.validity`) runs here, before anything is classified: its image
        checks right after loading (a refusal costs no segmentation), the rest on the segmentation's output. With
        ``check_input=True`` (default) a failing check raises; otherwise the result carries a warning.

        Args:
            image: anything :func:`cxr_hub.load_image` accepts (path, bytes, file object, PIL image, array).
            source_name: how messages name the input ("The uploaded file", "File 'a.png'"); default "The image".
                Also passed to :func:`cxr_hub.load_image` for its messages about a path.
            source: where an already-decoded ``image`` array came from (the path, bytes or PIL image), so the colour
                check can read the colour that :func:`cxr_hub.load_image` turned into gray; None → ``image`` itself.

        Returns:
            PreparedImage, reusable for any number of :meth:`analyze` calls; ``input_check`` holds the check's
            scores.

        Raises:
            cxr_hub.validity.NotAFrontalCXRError: the input-validity check refused the input (a colour photograph,
                a lateral film, a CT slice, a rotated or inverted film, ...; ``exc.report`` has the scores).
            CXRInputError: unreadable image, or no lung segmented at all ("is this a frontal chest X-ray?").
        """
        timer = _Timer(self.device)
        start = time.perf_counter()
        img, pre, params, logits, report = self._load_and_check(image, source_name, source, timer, self.check_input)
        cls_proc, seg_proc = self.frame_processor, self.segmentation_processor
        with timer.stage("segment"):
            with torch.inference_mode():
                label_map = seg_proc.post_process_semantic_segmentation(logits, target_sizes=[img.shape])[0]
            label_map = label_map.astype(np.uint8)
            if uses_postprocessing(self.segmentation_model.config):
                label_map, _ = clean_label_map(label_map)
            lung_mask = (label_map == LEFT_LUNG) | (label_map == RIGHT_LUNG)
        if not lung_mask.any():
            raise CXRInputError(
                "No lung found in the segmentation: there is nothing to classify. Is this a frontal (PA/AP) chest "
                "X-ray? Lateral views, other body parts and non-radiographs cannot be analysed."
            )
        with timer.stage("preprocess"):
            # a classifier trained without the lung mask (the mask ablation) must see the unmasked frame too
            frame_mask_source = lung_mask if getattr(self.frame_config, "lung_masked", True) else None
            frame = cls_proc.frame_from_preprocessed(pre, frame_mask_source)
            frame_mask = resize_label_map(lung_mask, cls_proc.size)
        if not frame_mask.any():
            raise CXRInputError(
                "No lung left in the classifier frame after resizing the lung mask (the segmented lung is only a "
                f"few pixels). Is this a frontal chest X-ray? Lung pixels at the original size: {int(lung_mask.sum())}."
            )
        with timer.stage("biomarkers"):
            markers = compute_biomarkers(label_map, pre)
        notes: list[str] = []
        lung_fraction = float(lung_mask.mean())
        if lung_fraction < self.min_lung_fraction:
            notes.append(
                f"too little lung segmented ({lung_fraction:.1%} of the image, below {self.min_lung_fraction:.0%}): "
                "result unreliable"
            )
        notes.extend(markers.warnings)
        if not self.check_input:
            notes.append(report.warning())
        timer.ms["total"] = (time.perf_counter() - start) * 1e3
        return PreparedImage(
            image=img,
            preprocessed=pre,
            preprocess_params=params,
            label_map=label_map,
            lung_mask=lung_mask,
            frame=frame,
            frame_mask=frame_mask,
            biomarkers=markers,
            timings=timer.ms,
            warnings=notes,
            input_check=report,
        )

    @staticmethod
    def _preprocessed(
        image: np.ndarray, processor: CXRImageProcessor, cached: np.ndarray, cached_params: tuple[bool, float | None]
    ) -> np.ndarray:
        """The processor's preprocessing of ``image``, reusing ``cached`` when the parameters agree."""
        params = (processor.do_equalize, processor.gamma)
        if params == cached_params:
            return cached
        return preprocess_cxr(image, equalize=params[0], gamma=params[1])


def _position(source: Any) -> int | None:
    """The read position of a seekable file object (None for anything else, or when it cannot tell)."""
    if isinstance(source, (str, Path, bytes, bytearray, memoryview, np.ndarray)) or not hasattr(source, "read"):
        return None
    try:
        return int(source.tell()) if source.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def _colour_share(source: Any, position: int | None, chroma: float) -> float | None:
    """:func:`cxr_hub.validity.source_colour_share` of the input as given; a file object is first put back at the
    position ``load_image`` started reading from (None → no colour signal for a file object)."""
    if hasattr(source, "read") and not isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        if position is None:
            return None
        try:
            end = source.tell()
            source.seek(position)
            try:
                return source_colour_share(source, chroma)
            finally:
                source.seek(end)  # where load_image left it
        except (AttributeError, OSError, ValueError):
            return None
    return source_colour_share(source, chroma)
