"""The runtime layer (cxr_hub.runtime): the numeric policy's decisions and reasons, the probes, the moved paths."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from torch import nn

import cxr_hub.runtime.numerics as numerics_module
from cxr_hub.runtime import Numerics, NumericsPolicy, hardware


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"int8_calibration": None, "num_channels": 1})()


def test_policy_explains_each_segmentation_decision(monkeypatch):
    monkeypatch.setattr(numerics_module, "cpu_has_bf16", lambda: True)
    policy = NumericsPolicy(torch.device("cpu"))
    ok = policy.for_segmentation(sampling="stable", global_classifier=False)
    assert ok == Numerics("bf16", "auto: native bf16 on cpu, validated end to end") and ok.bf16
    blocked = policy.for_segmentation(sampling="joint", global_classifier=True)
    assert blocked.arithmetic == "fp32" and not blocked.bf16
    assert "stable sampler" in blocked.reason and "global classifier" in blocked.reason
    monkeypatch.setattr(numerics_module, "cpu_has_bf16", lambda: False)
    assert (
        policy.for_segmentation(sampling="stable", global_classifier=False).reason == "auto: no native bf16 on this cpu"
    )
    pinned = NumericsPolicy(torch.device("cpu"), segmentation_precision="bf16")
    assert pinned.for_segmentation(sampling="joint", global_classifier=True) == Numerics("bf16", "bf16 requested")


def test_policy_classifier_decisions_and_errors(monkeypatch):
    monkeypatch.setattr(numerics_module, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(numerics_module, "cpu_has_int8", lambda: True)
    model = _Tiny()
    policy = NumericsPolicy(torch.device("cpu"))
    assert policy.for_classifier(model) == Numerics("fp32", "auto: no native bf16 on this cpu")
    assert "no int8 calibration" in policy.int8_unavailable([("classifier", model)])["classifier"]
    assert NumericsPolicy(torch.device("cpu"), "bf16").for_classifier(model) == Numerics("bf16", "bf16 requested")
    assert NumericsPolicy(torch.device("cpu"), "bf16").network(model, 8) == (model, Numerics("bf16", "bf16 requested"))
    with pytest.raises(ValueError, match="precision must be one of"):
        NumericsPolicy(torch.device("cpu"), "fp16")
    with pytest.raises(ValueError, match="segmentation_precision must be one of"):
        NumericsPolicy(torch.device("cpu"), segmentation_precision="int8")
    with pytest.raises(ValueError, match="CPU only"):
        NumericsPolicy(torch.device("meta"), "int8").prepare_int8([("classifier", model)])
    with NumericsPolicy(torch.device("cpu")).autocast(Numerics("bf16", "")):
        assert torch.is_autocast_enabled("cpu")
    with NumericsPolicy(torch.device("cpu")).autocast(Numerics("fp32", "")):
        assert not torch.is_autocast_enabled("cpu")


def test_hardware_probes_answer_without_failing():
    assert isinstance(hardware.cpuinfo(), str)
    for probe in (hardware.cpu_has_bf16, hardware.cpu_has_int8, hardware.int8_available):
        assert probe() in (True, False)


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("cxr_hub.quantization", "cxr_hub.runtime.int8", "quantize_int8"),
        ("cxr_hub.quantization", "cxr_hub.runtime.hardware", "cpu_has_int8"),
        ("cxr_hub.fusion", "cxr_hub.runtime.fusion", "fold_batchnorm"),
        ("cxr_hub.hardware", "cxr_hub.runtime.hardware", "cpuinfo"),
    ],
)
def test_moved_modules_warn_once_and_still_work(monkeypatch, old, new, name):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
