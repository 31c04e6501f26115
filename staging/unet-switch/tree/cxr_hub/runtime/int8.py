"""int8 classifiers on the CPU: post-training static quantisation with calibration that ships in the config.

The patch vote's cost on a CPU is K ResNet-18 forward passes. On x86 CPUs with int8 dot-product instructions (VNNI,
AMX) PyTorch's quantised convolutions run them about 2.4x faster than bf16 autocast on this project's 2-core CPU
(``benchmarks/README.md``; whether this CPU has them: :func:`cxr_hub.runtime.hardware.cpu_has_int8`). This module
builds that int8 network from a trained classifier:

* the backbone (everything up to ResNet layer4, :meth:`forward_features`) is quantised with PyTorch's FX graph-mode
  post-training quantisation (``torch.ao.quantization.quantize_fx``, x86 backend: per-channel int8 weights, uint8
  activations, conv + batch norm + ReLU fused);
* the head (global average pooling + linear) stays fp32 and is the model's own, so probabilities come from the usual
  head and the probabilistic Grad-CAM maps follow from the (dequantised) int8 features exactly as in fp32.

**Calibration travels in the config.** Static quantisation needs each activation's scale and zero point, measured
once on real inputs (:func:`calibrate_int8`). They are a few dozen numbers, stored as ``config.int8_calibration``
(JSON: no pickle, no extra file; it reaches a Hub user with ``config.json``). :func:`quantize_int8` rebuilds the int8
network from them at load time (1-3 s for ResNet-18 on a 2-core CPU). The activation names come from FX tracing, so
a calibration made with another architecture or a torch version that traces differently is refused with a message
that says how to re-calibrate (``python -m training.calibrate_int8``).

Why FX and not ``torchao``: ``torchao``'s CPU int8 path (PT2E) runs fast only after ``torch.compile``, which needs a
C++ toolchain and minutes of compilation at start-up; the FX API produces eager oneDNN/FBGEMM int8 kernels. PyTorch
marks the FX API as deprecated in favour of ``torchao``; moving is a change inside this module only.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .hardware import INT8_ENGINE, int8_available

__all__ = [
    "INT8_VALIDATED",
    "Int8CalibrationError",
    "Int8Classifier",
    "calibrate_int8",
    "quantize_int8",
]

#: Whether ``precision="auto"`` may use int8 for a classifier whose config carries a calibration: set only after the
#: check on real films met the project's rule (>= 99 % same label as fp32, mean |Δp| <= 0.01), and a calibration in
#: a config is what opts a classifier in, kept only when that model's own check passes. The engine passed with the
#: label4 patch classifier trained on FC-DenseNet103 masks (171 / 172 test films, mean |Δp| 0.0022;
#: ``benchmarks/precision_agreement.py --fast int8``). Its successor on the U-Net's masks failed (169 / 171: 98 / 99
#: on the first 100 films, 71 / 72 on the rest, each change a near tie; mean |Δp| 0.0046 and 0.0055;
#: ``docs/results/int8_agreement_label4.json``, ``int8_agreement_label4_rest72.json``), so it ships without a
#: calibration, as the global and label3 models do: no shipped classifier runs int8 under "auto" today.
INT8_VALIDATED = True

#: Format version of ``config.int8_calibration``.
CALIBRATION_FORMAT = 1


class Int8CalibrationError(ValueError):
    """A classifier's int8 calibration is missing or does not match the network it is applied to."""


class _Features(nn.Module):
    """A classifier's :meth:`forward_features` as a module FX can trace: (B, C, s, s) → (B, F, s/32, s/32)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)


class _StoredQParams(torch.ao.quantization.observer.ObserverBase):
    """Stands in for a calibrated activation observer: returns the stored scale and zero point, observes nothing."""

    def __init__(self, like: nn.Module, scale: float, zero_point: int) -> None:
        super().__init__(dtype=like.dtype, is_dynamic=False)
        self.qscheme = like.qscheme
        self.quant_min, self.quant_max = like.quant_min, like.quant_max
        self.register_buffer("scale", torch.tensor([float(scale)]))
        self.register_buffer("zero_point", torch.tensor([int(zero_point)], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.zero_point


@contextlib.contextmanager
def _torch_ao_deprecations_handled() -> Any:
    """Keeps PyTorch's two deprecation notices about its quantisation API away from cxr-hub's users.

    They say that ``torch.ao.quantization`` and quantised tensors will move to ``torchao``; nothing a caller of the
    pipeline can act on. The project pins torch, and ``tests/test_quantization.py`` fails when the API stops working,
    which is where the move gets made. Only these two messages, only while this module calls the API.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        yield


def _example(config: Any) -> torch.Tensor:
    size = int(config.input_size)
    return torch.zeros(2, int(getattr(config, "num_channels", 1)), size, size)


def qconfig_mapping() -> Any:
    """PyTorch's default x86 static int8 recipe for a ResNet backbone, spelled without the deprecated argument.

    Activations: uint8, histogram observer, range 0..127 (what ``reduce_range=True`` means: headroom against int16
    accumulation overflow on CPUs without VNNI); weights: int8 per output channel, symmetric. The same numbers as
    ``get_default_qconfig_mapping("x86")``, whose ``reduce_range`` spelling warns on every observer.
    """
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

    qconfig = QConfig(
        activation=HistogramObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=127),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
    )
    return QConfigMapping().set_global(qconfig)


def _prepared(model: nn.Module) -> torch.fx.GraphModule:
    """The model's backbone with activation observers (fp32 CPU copy, eval mode, contiguous memory)."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    if not int8_available():
        raise RuntimeError(
            f"This PyTorch build has no {INT8_ENGINE!r} quantised engine "
            f"(available: {torch.backends.quantized.supported_engines}); use precision 'bf16' or 'fp32'."
        )
    torch.backends.quantized.engine = INT8_ENGINE
    backbone = copy.deepcopy(model.backbone).float().cpu().eval().to(memory_format=torch.contiguous_format)
    with _torch_ao_deprecations_handled():
        return prepare_fx(_Features(backbone), qconfig_mapping(), (_example(model.config),))


def _observers(prepared: nn.Module) -> dict[str, nn.Module]:
    """Every activation observer by the name the graph calls it (FX shares one observer under several names where an
    op keeps its input's quantisation, e.g. max pooling, so duplicates are kept)."""
    return {
        name: module
        for name, module in prepared.named_modules(remove_duplicate=False)
        if "." not in name and isinstance(module, torch.ao.quantization.observer.ObserverBase)
    }


def calibrate_int8(model: nn.Module, batches: Iterable[torch.Tensor], description: str = "") -> dict[str, Any]:
    """Measures the activation ranges of ``model``'s backbone on real inputs; the result goes in the config.

    Args:
        model: a :class:`cxr_hub.PatchClassifierForImageClassification` (patch or global mode), trained.
        batches: (B, C, S, S) float inputs normalised like the model's training inputs (patches of lung-masked
            frames for a patch classifier, whole masked images for a global one), S = ``config.input_size``.
        description: what the calibration data were (stored with the numbers, shown in the model card).

    Returns:
        JSON-ready dict for ``config.int8_calibration``: engine, torch version, format, description, and each
        activation observer's ``[scale, zero_point]``.

    Raises:
        ValueError: ``batches`` was empty.
    """
    prepared = _prepared(model)
    seen = 0
    with torch.inference_mode():
        for x in batches:
            prepared(x.float().cpu().contiguous())
            seen += len(x)
    if not seen:
        raise ValueError("calibrate_int8 got no input batches: pass patches (or images) of real training films.")
    qparams = {}
    for name, observer in _observers(prepared).items():
        scale, zero_point = observer.calculate_qparams()
        qparams[name] = [float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])]
    return {
        "format": CALIBRATION_FORMAT,
        "engine": INT8_ENGINE,
        "torch": torch.__version__.split("+")[0],
        "inputs": seen,
        "description": description,
        "activations": qparams,
    }


class Int8Classifier(nn.Module):
    """A classifier whose backbone runs in int8 and whose head is the original fp32 module (CPU only).

    Exposes what the pipeline uses: :meth:`forward_features` ((B, C, S, S) float → (B, F, S/32, S/32) float32
    dequantised layer4 features), :meth:`forward_head`, ``classifier`` (the linear layer, for Grad-CAM) and
    ``config``.
    """

    def __init__(self, features: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.model = model
        self.config = model.config
        self.classifier = model.classifier

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # the quantised graph takes contiguous (NCHW) float input; the kernels pick their own layout inside
        return self.features(pixel_values.float().contiguous())

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) → (B, num_labels) logits."""
        return self.forward_head(self.forward_features(pixel_values))


def _check_calibration(calibration: Any, observers: Mapping[str, nn.Module], name: str) -> dict[str, list[float]]:
    redo = (
        f"Re-calibrate the {name} on training films with `python -m training.calibrate_int8 --classifier FOLDER`, "
        "or use precision 'bf16' or 'fp32'."
    )
    if not isinstance(calibration, Mapping) or not isinstance(calibration.get("activations"), Mapping):
        raise Int8CalibrationError(f"The {name}'s config has no int8 calibration (config.int8_calibration). {redo}")
    if calibration.get("format") != CALIBRATION_FORMAT or calibration.get("engine") != INT8_ENGINE:
        raise Int8CalibrationError(
            f"The {name}'s int8 calibration is format {calibration.get('format')!r} for engine "
            f"{calibration.get('engine')!r}; this cxr_hub reads format {CALIBRATION_FORMAT} for {INT8_ENGINE!r}. {redo}"
        )
    stored = dict(calibration["activations"])
    if set(stored) != set(observers):
        raise Int8CalibrationError(
            f"The {name}'s int8 calibration ({len(stored)} activations, made with torch "
            f"{calibration.get('torch')}) does not match this network as torch {torch.__version__} traces it "
            f"({len(observers)} activations). {redo}"
        )
    for key, value in stored.items():
        ok = isinstance(value, (list, tuple)) and len(value) == 2
        if not ok or not float(value[0]) > 0:
            raise Int8CalibrationError(f"The {name}'s int8 calibration has an invalid entry {key}: {value!r}. {redo}")
    return stored


def quantize_int8(
    model: nn.Module, calibration: Mapping[str, Any] | None = None, name: str = "classifier"
) -> Int8Classifier:
    """Builds the int8 network of ``model`` from its calibration (default: ``model.config.int8_calibration``).

    Args:
        model: a trained :class:`cxr_hub.PatchClassifierForImageClassification` (left untouched).
        calibration: from :func:`calibrate_int8`; None → the model config's.
        name: how error messages name the model ("classifier", "global classifier").

    Returns:
        :class:`Int8Classifier` on the CPU in eval mode.

    Raises:
        Int8CalibrationError: no calibration, or one made for another network or torch tracing.
        RuntimeError: this PyTorch build has no x86 quantised engine.
    """
    from torch.ao.quantization.quantize_fx import convert_fx

    if calibration is None:
        calibration = getattr(model.config, "int8_calibration", None)
    prepared = _prepared(model)
    observers = _observers(prepared)
    stored = _check_calibration(calibration, observers, name)
    for key, observer in observers.items():
        scale, zero_point = stored[key]
        setattr(prepared, key, _StoredQParams(observer, scale, int(zero_point)))
    with _torch_ao_deprecations_handled():
        features = convert_fx(prepared).eval()
    return Int8Classifier(features, model).eval()
