"""The numeric policy: which arithmetic (fp32, bf16, int8) each network of a pipeline runs in, and why.

The method (:class:`cxr_hub.CXRPipeline`) never branches on precision: it asks the policy for a network's
:class:`Numerics` and for the module to run (``policy.network(model, input_size)``), and runs that under
``policy.autocast(numerics)``. The rules, each validated on real films before it was allowed (the ``*_VALIDATED``
gates below and :data:`cxr_hub.runtime.int8.INT8_VALIDATED`):

* **Classifiers** (``precision``): "int8" when requested, or under "auto" on a CPU with int8 dot products for a
  classifier whose config carries an int8 calibration (:mod:`cxr_hub.runtime.int8`); else bf16 autocast when
  requested, or under "auto" on CUDA and on CPUs with native bf16; else fp32. On the bf16 path the network runs with
  its batch norms folded (:mod:`cxr_hub.runtime.fusion`) when ``fuse_batchnorm``; fp32 runs the model as loaded.
  bf16 is emulated (slow) on CPUs without AMX or AVX512-BF16 (:func:`cxr_hub.runtime.hardware.cpu_has_bf16`), so
  "auto" does not pick it there. Measured on the CPU: bf16 with folded batch norms gave the fp32 label on 100 of 100
  real test films, mean |Δp| 0.0003 (``docs/results/precision_agreement_label4.json``); int8:
  ``docs/results/int8_agreement_label4.json``. ``settings()`` names the arithmetic of each network and, where int8
  was asked for or possible, why it was not used.
* **Segmentation** (``segmentation_precision``): its label map decides where every patch goes, so "auto" uses bf16
  only where the end-to-end check passed: native bf16, the stable sampler, no global classifier, and in front of an
  int8 classifier only once that combination was checked. Only with the stable sampler: with the others a mask that
  differs by a few pixels moves every patch, and bf16 failed the check. Only without a global classifier: the
  global model sees the mask's outline in its whole-image input, and bf16 masks changed 4 of its 172 test labels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .fusion import fold_batchnorm
from .hardware import cpu_has_bf16, cpu_has_int8
from .int8 import INT8_VALIDATED, Int8CalibrationError, quantize_int8

__all__ = [
    "CLASSIFIER_PRECISIONS",
    "INT8_WITH_BF16_SEGMENTATION_VALIDATED",
    "PRECISIONS",
    "SEGMENTATION_BF16_VALIDATED",
    "Numerics",
    "NumericsPolicy",
]

#: Segmentation precisions (and the classifier's, which may also be "int8": :data:`CLASSIFIER_PRECISIONS`).
PRECISIONS = ("auto", "fp32", "bf16")
#: Classifier precisions: "int8" runs the backbone quantised (CPU, :mod:`cxr_hub.runtime.int8`).
CLASSIFIER_PRECISIONS = (*PRECISIONS, "int8")
#: Whether ``segmentation_precision="auto"`` may use bf16: set only after the end-to-end check on real films
#: (``benchmarks/precision_agreement.py --segmentation-bf16``) met the project's rule. It failed with the index-based
#: sampler (30 films: 1 label changed, mean |Δp| 0.0072) and passed with the stable sampler, the default
#: (100 test films: 99 same labels, the other a 48:47 vote that became 47:48; mean |Δp| 0.0010;
#: ``docs/results/segmentation_bf16_agreement_label4.json``). That check covers the patch classifier; the global
#: classifier changed 4 of 172 test labels with bf16 masks, so "auto" keeps fp32 when one is loaded.
SEGMENTATION_BF16_VALIDATED = True
#: Whether "auto" segmentation may use bf16 in front of an int8 patch classifier: set only after the end-to-end check
#: of that combination against all-fp32 met the same rule (``benchmarks/precision_agreement.py --segmentation-bf16
#: --fast int8``, ``docs/results/int8_end_to_end_label4.json``).
INT8_WITH_BF16_SEGMENTATION_VALIDATED = True


@dataclass(frozen=True)
class Numerics:
    """What one network runs in and why.

    Attributes:
        arithmetic: "fp32", "bf16" (autocast) or "int8" (the quantised backbone).
        reason: the rule that decided it, in words (for ``settings()`` and reports).
    """

    arithmetic: str
    reason: str

    @property
    def bf16(self) -> bool:
        """Whether the network runs under bf16 autocast."""
        return self.arithmetic == "bf16"


class NumericsPolicy:
    """Decides, per network, the arithmetic of one pipeline, and keeps the derived networks it builds.

    Args:
        device: where the networks run.
        precision: the classifiers' option, one of :data:`CLASSIFIER_PRECISIONS`.
        segmentation_precision: the segmentation network's option, one of :data:`PRECISIONS`.
        fuse_batchnorm: run bf16 classifiers with their batch norms folded into the convolutions.
        place: moves a derived network (a folded copy) to the device in the pipeline's memory format.

    Raises:
        ValueError: an unknown precision.
    """

    def __init__(
        self,
        device: torch.device,
        precision: str = "auto",
        segmentation_precision: str = "auto",
        fuse_batchnorm: bool = True,
        place: Callable[[nn.Module], nn.Module] = lambda model: model,
    ) -> None:
        self.device = device
        self.precision = precision  # validated by the property setters below
        self.segmentation_precision = segmentation_precision
        self.fuse_batchnorm = bool(fuse_batchnorm)
        self._place = place
        #: id(model) → (model, its batch-norm-folded copy or None when nothing could be folded)
        self._folded: dict[int, tuple[nn.Module, nn.Module | None]] = {}
        #: id(model) → (model, its int8 network or None, why not: "" when built)
        self._int8: dict[int, tuple[nn.Module, nn.Module | None, str]] = {}

    @property
    def precision(self) -> str:
        """The classifiers' option, one of :data:`CLASSIFIER_PRECISIONS` (checked when set)."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in CLASSIFIER_PRECISIONS:
            raise ValueError(f"precision must be one of {CLASSIFIER_PRECISIONS}, got {value!r}.")
        self._precision = value

    @property
    def segmentation_precision(self) -> str:
        """The segmentation network's option, one of :data:`PRECISIONS` (checked when set)."""
        return self._segmentation_precision

    @segmentation_precision.setter
    def segmentation_precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"segmentation_precision must be one of {PRECISIONS}, got {value!r}.")
        self._segmentation_precision = value

    # ------------------------------------------------------------------ int8

    def int8_auto_possible(self) -> bool:
        """Whether "auto" may pick int8 here: validated, on the CPU, and the CPU has int8 dot products."""
        return INT8_VALIDATED and self.device.type == "cpu" and cpu_has_int8()

    def prepare_int8(self, classifiers: Sequence[tuple[str, nn.Module]]) -> None:
        """Quantises the classifiers now when int8 is requested or "auto" may use it, so the first analysis does not
        pay for it (1-3 s per model on a 2-core CPU) and a bad calibration fails at load, not mid-request.

        Args:
            classifiers: ``(name for messages, model)`` pairs.

        Raises:
            ValueError: int8 requested on a device other than the CPU.
            cxr_hub.runtime.int8.Int8CalibrationError: int8 requested and a classifier cannot have it.
        """
        if self.precision == "int8":
            if self.device.type != "cpu":
                raise ValueError(f"precision 'int8' runs on the CPU only; this pipeline's device is {self.device}.")
            for name, model in classifiers:
                _, network, reason = self.int8_entry(model, name)
                if network is None:
                    raise Int8CalibrationError(reason)
        elif self.precision == "auto" and self.int8_auto_possible():
            for name, model in classifiers:
                self.int8_entry(model, name)

    def int8_entry(self, model: nn.Module, name: str = "classifier") -> tuple[nn.Module, nn.Module | None, str]:
        """The model's int8 network (built once), or None and the reason it cannot have one."""
        entry = self._int8.get(id(model))
        if entry is None or entry[0] is not model:
            try:
                if getattr(model.config, "int8_calibration", None) is None:
                    raise Int8CalibrationError(
                        f"The {name}'s config has no int8 calibration (config.int8_calibration). Calibrate it on "
                        "training films with `python -m training.calibrate_int8 --classifier FOLDER`, or use precision "
                        "'bf16' or 'fp32'."
                    )
                entry = (model, quantize_int8(model, name=name), "")
            except (Int8CalibrationError, RuntimeError) as exc:
                entry = (model, None, str(exc))
            self._int8[id(model)] = entry
        return entry

    def int8_unavailable(self, classifiers: Sequence[tuple[str, nn.Module]]) -> dict[str, str]:
        """name → why that classifier could not run in int8, for those the policy tried to quantise."""
        return {
            name: self._int8[id(model)][2]
            for name, model in classifiers
            if id(model) in self._int8 and self._int8[id(model)][1] is None
        }

    # ------------------------------------------------------------------ decisions

    def native_bf16(self) -> bool:
        """Whether bf16 is native on the device (CUDA; CPUs with AMX or AVX512-BF16)."""
        return self.device.type == "cuda" or (self.device.type == "cpu" and cpu_has_bf16())

    def _bf16_for(self, precision: str) -> Numerics:
        if precision == "bf16":
            return Numerics("bf16", "bf16 requested")
        if precision == "fp32":
            return Numerics("fp32", "fp32 requested")
        if self.native_bf16():
            return Numerics("bf16", f"auto: native bf16 on {self.device.type}")
        return Numerics("fp32", f"auto: no native bf16 on this {self.device.type}")

    def for_classifier(self, model: nn.Module) -> Numerics:
        """What a classifier runs in: "int8", "bf16" or "fp32" (see the module docstring).

        Raises:
            cxr_hub.runtime.int8.Int8CalibrationError: int8 requested and this model cannot have it.
        """
        wants_int8 = self.precision == "int8" or (self.precision == "auto" and self.int8_auto_possible())
        if self.device.type == "cpu" and wants_int8:
            _, network, reason = self.int8_entry(model)
            if network is not None:
                return Numerics("int8", "int8 requested" if self.precision == "int8" else "auto: validated int8")
            if self.precision == "int8":
                raise Int8CalibrationError(reason)
        return self._bf16_for("auto" if self.precision == "int8" else self.precision)

    def for_segmentation(
        self, *, sampling: str, global_classifier: bool, classifier: nn.Module | None = None
    ) -> Numerics:
        """What the segmentation network runs in.

        Args:
            sampling: the pipeline's patch sampler (bf16 masks were validated with "stable" only).
            global_classifier: a global classifier is loaded (it sees the mask's outline: fp32 under "auto").
            classifier: the patch classifier (in front of an int8 one, bf16 needs its own validation).
        """
        if self.segmentation_precision != "auto":
            return self._bf16_for(self.segmentation_precision)
        native = self._bf16_for("auto")
        if not native.bf16:
            return native
        blockers = []
        if not SEGMENTATION_BF16_VALIDATED:
            blockers.append("bf16 segmentation not validated")
        if sampling != "stable":
            blockers.append(f"validated with the stable sampler only (this pipeline samples {sampling!r})")
        if global_classifier:
            blockers.append("a global classifier is loaded (bf16 masks changed its labels)")
        if (
            not INT8_WITH_BF16_SEGMENTATION_VALIDATED
            and classifier is not None
            and self.for_classifier(classifier).arithmetic == "int8"
        ):
            blockers.append("not validated in front of an int8 classifier")
        if blockers:
            return Numerics("fp32", "auto: fp32 because " + "; ".join(blockers))
        return Numerics("bf16", native.reason + ", validated end to end")

    # ------------------------------------------------------------------ running

    def network(self, model: nn.Module, input_size: int) -> tuple[nn.Module, Numerics]:
        """The network a classifier call runs, and its numerics (run it under :meth:`autocast`).

        int8: the quantised network; bf16: the batch-norm-folded copy (when ``fuse_batchnorm``); fp32: the model.

        Args:
            model: the classifier as loaded.
            input_size: its input side (the folded copy is checked on an input of that size).
        """
        numerics = self.for_classifier(model)
        if numerics.arithmetic == "int8":
            return self.int8_entry(model)[1], numerics
        if not (self.fuse_batchnorm and numerics.bf16):
            return model, numerics
        entry = self._folded.get(id(model))
        if entry is None or entry[0] is not model:
            channels = int(getattr(getattr(model, "config", None), "num_channels", 1))
            generator = torch.Generator().manual_seed(0)
            example = torch.randn(2, channels, input_size, input_size, generator=generator).to(self.device)
            folded, n = fold_batchnorm(model, example, forward="forward_features")
            entry = (model, self._place(folded) if n else None)
            self._folded[id(model)] = entry
        return (entry[1] if entry[1] is not None else model), numerics

    def autocast(self, numerics: Numerics) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on the device for bf16 numerics, else nothing."""
        if not numerics.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
