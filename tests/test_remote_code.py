"""Saved folders load with trust_remote_code in a process where ``cxr_hub`` cannot be imported at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cxr_hub import (
    CXRImageProcessor,
    FCDenseNetForSemanticSegmentation,
    PatchClassifierForImageClassification,
    UNetForSemanticSegmentation,
)

# Runs in a fresh interpreter: a meta-path finder makes "import cxr_hub" fail even though the package is installed
# (editable installs add finders and path entries we cannot simply drop from sys.path).
CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cxr_hub" or name.startswith("cxr_hub."):
                raise ImportError("cxr_hub is blocked in this process")
    sys.meta_path.insert(0, Block())
    sys.path = [p for p in sys.path if p not in ("", ".") and not p.endswith("/main")]
    try:
        import cxr_hub  # noqa: F401
        raise SystemExit("cxr_hub was importable")
    except ImportError:
        pass
    import numpy as np, torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, {auto}
    folder, x_path, out_path = sys.argv[1:4]
    x = torch.from_numpy(np.load(x_path))
    results = {{}}
    for auto in (AutoModel, {auto}):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        assert "cxr_hub" not in type(model).__module__, type(model).__module__
        with torch.no_grad():
            results[auto.__name__] = model(x).logits.numpy().tolist()
    proc = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    image = np.load(x_path.replace("x.npy", "image.npy"))
    results["pixel_values"] = proc(image, return_tensors="np")["pixel_values"].tolist()
    results["config_type"] = type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__
    results["modules"] = sorted(m for m in sys.modules if m.startswith("cxr_hub"))
    json.dump(results, open(out_path, "w"))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config_fixture", "model_cls", "auto_name"),
    [
        ("tiny_fcdensenet_config", FCDenseNetForSemanticSegmentation, "AutoModelForSemanticSegmentation"),
        ("tiny_unet_config", UNetForSemanticSegmentation, "AutoModelForSemanticSegmentation"),
        ("tiny_classifier_config", PatchClassifierForImageClassification, "AutoModelForImageClassification"),
    ],
)
def test_trust_remote_code_without_cxr_hub(request, tmp_path, cxr_image, config_fixture, model_cls, auto_name):
    config = request.getfixturevalue(config_fixture)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor = CXRImageProcessor(size=64, gamma=0.5, image_mean=0.45, image_std=0.3)
    processor.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    for target in saved["auto_map"].values():
        assert (folder / f"{target.split('.')[0]}.py").is_file(), target
    assert json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]["AutoImageProcessor"]

    x = torch.randn(2, 1, 64, 64)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "image.npy", cxr_image)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")  # fresh copy of the remote code, no stale cache
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(auto=auto_name), str(folder), str(tmp_path / "x.npy"), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["modules"] == []
    assert result["config_type"] == type(config).__name__
    with torch.no_grad():
        ref = model(x).logits.numpy()
    for key in ("AutoModel", auto_name):
        np.testing.assert_array_equal(np.asarray(result[key], dtype=np.float32), ref)
    np.testing.assert_array_equal(
        np.asarray(result["pixel_values"], dtype=np.float32), processor(cxr_image, return_tensors="np")["pixel_values"]
    )
