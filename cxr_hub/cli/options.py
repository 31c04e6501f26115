"""Option types and defaults that several commands share (``predict``, ``evaluate``, the Ray engine).

Importing this module imports nothing heavy: the patch sampler names live with torch in :mod:`cxr_hub.patches`,
which is imported only when an option needs them, so parsing a command line stays fast.
"""

from __future__ import annotations

import argparse

__all__ = ["default_sampling", "sampling_mode"]


def sampling_mode(value: str) -> str:
    """argparse ``type`` of ``--sampling``: a patch sampler name of :data:`cxr_hub.patches.SAMPLING_MODES`.

    A type rather than ``choices``: the list lives with torch in :mod:`cxr_hub.patches`, which is imported only when
    the option is given, so parsing a command line stays fast.

    Args:
        value: the option's text.

    Returns:
        ``value``, a known sampler name.

    Raises:
        argparse.ArgumentTypeError: an unknown sampler (argparse turns it into a usage error, exit code 2).
    """
    from ..patches import SAMPLING_MODES

    if value not in SAMPLING_MODES:
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(SAMPLING_MODES)})")
    return value


def default_sampling() -> str:
    """The pipeline's default patch sampler (``--sampling`` left out)."""
    from ..patches import DEFAULT_SAMPLING

    return DEFAULT_SAMPLING
