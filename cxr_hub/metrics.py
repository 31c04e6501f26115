"""Deprecated alias of :mod:`cxr_hub.evaluation.metrics` (moved there in issue #17); removed in a later release."""

import warnings

from .evaluation.metrics import *  # noqa: F403
from .evaluation.metrics import __all__ as _names

__all__ = list(_names)

warnings.warn(
    "cxr_hub.metrics is deprecated: import from cxr_hub.evaluation.metrics instead.", DeprecationWarning, stacklevel=2
)
