"""Deprecated: moved to :mod:`cxr_hub.runtime.int8` (and the CPU probes to :mod:`cxr_hub.runtime.hardware`)."""

import warnings

from .runtime.hardware import INT8_ENGINE, cpu_has_int8, int8_available
from .runtime.int8 import INT8_VALIDATED, Int8CalibrationError, Int8Classifier, calibrate_int8, quantize_int8

__all__ = [
    "INT8_ENGINE",
    "INT8_VALIDATED",
    "Int8CalibrationError",
    "Int8Classifier",
    "calibrate_int8",
    "cpu_has_int8",
    "int8_available",
    "quantize_int8",
]

warnings.warn(
    "cxr_hub.quantization moved to cxr_hub.runtime.int8 (CPU probes: cxr_hub.runtime.hardware); the old path goes "
    "away in a later release.",
    DeprecationWarning,
    stacklevel=2,
)
