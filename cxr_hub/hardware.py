"""Deprecated: moved to :mod:`cxr_hub.runtime.hardware`."""

import warnings

from .runtime.hardware import cpuinfo

__all__ = ["cpuinfo"]

warnings.warn(
    "cxr_hub.hardware moved to cxr_hub.runtime.hardware; the old path goes away in a later release.",
    DeprecationWarning,
    stacklevel=2,
)
