"""What this machine can do, probed once: the flags behind the "auto" arithmetic (bf16, int8), in one place.

Every probe is cached for the process and is False where it cannot be decided (no ``/proc/cpuinfo``, a torch build
without the kernels), so "auto" never picks an arithmetic that would run on a slow emulation path.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["INT8_ENGINE", "cpu_has_bf16", "cpu_has_int8", "cpuinfo", "int8_available"]

#: PyTorch quantised engine the int8 calibration and kernels are made for (oneDNN/FBGEMM on x86).
INT8_ENGINE = "x86"


@functools.cache
def cpuinfo() -> str:
    """The text of ``/proc/cpuinfo`` (Linux), read once per process; "" where it does not exist or cannot be read."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays off; Linux only.

    Elsewhere (no ``/proc/cpuinfo``, or a CPU that would emulate bf16) False: "auto" precision then stays fp32.
    """
    import torch  # here, so that probing cpuinfo alone needs no torch

    flags = cpuinfo()
    return torch.backends.mkldnn.is_available() and ("avx512_bf16" in flags or "amx_bf16" in flags)


def int8_available() -> bool:
    """Whether this PyTorch build has the x86 quantised engine (oneDNN/FBGEMM int8 kernels)."""
    import torch

    return INT8_ENGINE in torch.backends.quantized.supported_engines


@functools.cache
def cpu_has_int8() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8), where int8 pays off.

    Linux only (reads ``/proc/cpuinfo``, once); False elsewhere, so "auto" precision does not pick int8 where it
    would run on slow fallback paths.
    """
    if not int8_available():
        return False
    flags = cpuinfo()
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))
