"""How the networks run on this machine, kept out of the method.

* :mod:`~cxr_hub.runtime.hardware`: what the CPU can do (bf16, int8 dot products), probed once.
* :mod:`~cxr_hub.runtime.numerics`: the numeric policy, which picks fp32, bf16 or int8 for each network with the
  reason, and builds the derived networks it needs.
* :mod:`~cxr_hub.runtime.fusion`: batch norms folded into convolutions (the bf16 path).
* :mod:`~cxr_hub.runtime.int8`: the int8 backbone from the calibration in a classifier's config.

Imports only torch and its own modules (no other part of cxr_hub): the pipeline imports it, never the reverse.
"""

from .hardware import cpu_has_bf16, cpu_has_int8, cpuinfo, int8_available
from .numerics import CLASSIFIER_PRECISIONS, PRECISIONS, Numerics, NumericsPolicy

__all__ = [
    "CLASSIFIER_PRECISIONS",
    "PRECISIONS",
    "Numerics",
    "NumericsPolicy",
    "cpu_has_bf16",
    "cpu_has_int8",
    "cpuinfo",
    "int8_available",
]
