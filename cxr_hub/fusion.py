"""Deprecated: moved to :mod:`cxr_hub.runtime.fusion`."""

import warnings

from .runtime.fusion import conv_bn_pairs, fold_batchnorm

__all__ = ["conv_bn_pairs", "fold_batchnorm"]

warnings.warn(
    "cxr_hub.fusion moved to cxr_hub.runtime.fusion; the old path goes away in a later release.",
    DeprecationWarning,
    stacklevel=2,
)
