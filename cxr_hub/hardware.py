"""What this CPU can do, read once: the flags behind the pipeline's "auto" arithmetic (bf16, int8)."""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["cpuinfo"]


@functools.cache
def cpuinfo() -> str:
    """The text of ``/proc/cpuinfo`` (Linux), read once per process; "" where it does not exist or cannot be read."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
