"""Deprecated alias of :mod:`cxr_hub.evaluation.stats` (moved there in issue #17); removed in a later release."""

import warnings

from .evaluation.stats import *  # noqa: F403
from .evaluation.stats import __all__ as _names

__all__ = list(_names)

warnings.warn(
    "cxr_hub.stats is deprecated: import from cxr_hub.evaluation.stats instead.", DeprecationWarning, stacklevel=2
)
