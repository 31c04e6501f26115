"""Safe model loading: safetensors only; pickle checkpoints are refused unless the caller opts in explicitly.

Every loader is checked: ``CXRPipeline.from_pretrained``, the demo app's engine, ``evaluate-segmentation``'s
``load_segmentation_model`` and ``python -m cxr_hub predict``. A booby-trapped pickle proves the refusal happens
before anything is unpickled.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from cxr_hub import CXRPipeline, PatchClassifierForImageClassification
from cxr_hub.cli import main as cli_main
from cxr_hub.demo import PAPER_MODEL, CXRApp
from cxr_hub.evaluation.segmentation import load_segmentation_model
from cxr_hub.loading import ALLOW_PICKLE_ENV, UnsafeCheckpointError, load_model, pickle_checkpoints

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Trap:
    """Unpickling this runs ``Path(marker).touch()``: what a malicious checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickle_only_copy(src: Path, dst: Path) -> Path:
    """The model of ``src`` as a folder with config.json + pytorch_model.bin (a pickle) and no safetensors."""
    dst.mkdir()
    model = load_model(src)
    model.config.save_pretrained(dst)
    torch.save(model.state_dict(), dst / "pytorch_model.bin")
    return dst


def booby_trapped_copy(src: Path, dst: Path, marker: Path) -> Path:
    """A copy of a safetensors model folder plus a pickle that touches ``marker`` when it is unpickled."""
    shutil.copytree(src, dst)
    (dst / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    return dst


def test_pickle_checkpoints_lists_every_pickle_format(tmp_path: Path) -> None:
    for name in ("model.safetensors", "config.json", "a.bin", "b.PT", "sub/c.pth", "d.ckpt", ".git/e.bin"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert pickle_checkpoints(tmp_path) == ["a.bin", "b.PT", "d.ckpt", "sub/c.pth"]
    assert pickle_checkpoints(tmp_path / "missing") == []


def test_every_loader_refuses_a_pickle_before_unpickling_it(tmp_path: Path, tiny_model_folders, capsys) -> None:
    seg, clf = tiny_model_folders
    marker = tmp_path / "code_ran"
    bad_seg = booby_trapped_copy(seg, tmp_path / "seg", marker)
    bad_clf = booby_trapped_copy(clf, tmp_path / "clf", marker)

    for call in (
        lambda: CXRPipeline.from_pretrained(bad_seg, device="cpu"),
        lambda: CXRPipeline.from_pretrained(seg, bad_clf, device="cpu"),
        lambda: load_segmentation_model(bad_seg, device="cpu"),
    ):
        # why (pickles run code), which file, and how to opt in
        with pytest.raises(UnsafeCheckpointError, match=r"pytorch_model\.bin.*arbitrary code.*allow_pickle=True"):
            call()
    with pytest.raises(UnsafeCheckpointError, match="pass the model folder"):
        load_model(bad_clf / "pytorch_model.bin")  # a weights file instead of a folder

    engine = CXRApp({"CXR_HUB_SEGMENTATION": str(bad_seg)}, tmp_path / "no_models", device="cpu")
    models = engine.models(PAPER_MODEL)
    assert models.pipeline is None and any("pickle" in e and ALLOW_PICKLE_ENV in e for e in models.errors)

    image = tmp_path / "x.png"
    image.write_bytes(b"unused: the models are refused first")
    args = ["predict", str(image), "--segmentation", str(bad_seg), "--classifier", str(clf), "--out", str(tmp_path)]
    assert cli_main(args) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert not marker.exists()  # nothing was unpickled on the way


def test_opt_in_loads_a_pickle_only_folder(tmp_path: Path, tiny_model_folders) -> None:
    seg, clf = tiny_model_folders
    pickled_clf = pickle_only_copy(clf, tmp_path / "clf_bin")
    with pytest.raises(UnsafeCheckpointError):
        load_model(pickled_clf)
    loaded = load_model(pickled_clf, allow_pickle=True)
    reference = load_model(clf)
    assert isinstance(loaded, PatchClassifierForImageClassification) and not loaded.training
    for (name, a), (_, b) in zip(reference.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    pipe = CXRPipeline.from_pretrained(seg, pickled_clf, device="cpu", allow_pickle=True)
    assert pipe.has_classifier
    engine = CXRApp(
        {"CXR_HUB_SEGMENTATION": str(seg), "CXR_HUB_CLASSIFIER": str(pickled_clf), ALLOW_PICKLE_ENV: "1"},
        tmp_path / "no_models",
        device="cpu",
    )
    assert engine.allow_pickle and engine.models(PAPER_MODEL).classifier_loaded
    assert not CXRApp({ALLOW_PICKLE_ENV: "0"}).allow_pickle and CXRApp({}, allow_pickle=True).allow_pickle


def test_hub_ids_are_read_as_safetensors_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModel

    calls: list[dict] = []

    def fake_from_pretrained(source: str, **kwargs):
        calls.append({"source": source, **kwargs})
        if kwargs.get("use_safetensors") is True and source == "someone/pickle-only":
            raise OSError(f"{source} does not appear to have a file named model.safetensors")
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(AutoModel, "from_pretrained", fake_from_pretrained)
    load_model("someone/cxr-model", revision="0123abc")
    assert calls[-1] == {"source": "someone/cxr-model", "use_safetensors": True, "revision": "0123abc"}
    with pytest.raises(UnsafeCheckpointError, match="no safetensors weights"):
        load_model("someone/pickle-only")
    load_model("someone/pickle-only-trusted", allow_pickle=True)
    assert calls[-1]["use_safetensors"] is None  # transformers' default: safetensors first, then the pickle
    with pytest.raises(TypeError, match="never trusts remote code"):
        load_model("someone/cxr-model", trust_remote_code=True)
