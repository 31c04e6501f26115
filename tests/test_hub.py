"""Model cards, Hub export folders and (offline) pushes: ``cxr_hub.hub``.

The model here is a one-conv stand-in defined in this file, so the tests depend neither on the project's real model
classes nor on the network: every Hub call is monkeypatched.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import PretrainedConfig, PreTrainedModel

from cxr_hub import hub
from cxr_hub.cli import hub as cli_hub

SEG_METRICS = {
    "dataset": {"name": "JSRT/SCR", "type": "jsrt", "split": "validation"},
    "values": {"jaccard_lung": 0.9512345, "dice_heart": 0.91, "num_images": 50},
}
FLAT_METRICS = {"accuracy": 0.875, "f1_macro": 0.8125}


class TinyConfig(PretrainedConfig):
    model_type = "cxr_fcdensenet"

    def __init__(self, growth_rate: int = 4, image_size: int = 32, **kwargs: Any) -> None:
        self.growth_rate = growth_rate
        self.image_size = image_size
        super().__init__(**kwargs)


class TinyModel(PreTrainedModel):
    config_class = TinyConfig
    base_model_prefix = "tiny"

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.conv(pixel_values)


def front_matter(card: str) -> dict[str, Any]:
    """Parses the YAML between the first two ``---`` lines."""
    lines = card.splitlines()
    assert lines[0] == "---"
    end = lines.index("---", 1)
    return yaml.safe_load("\n".join(lines[1:end]))


def card_body(card: str) -> str:
    lines = card.splitlines()
    return "\n".join(lines[lines.index("---", 1) + 1 :])


@pytest.fixture
def config() -> TinyConfig:
    return TinyConfig(id2label={0: "background", 1: "lung"})


@pytest.fixture
def model(config: TinyConfig) -> TinyModel:
    torch.manual_seed(0)
    return TinyModel(config).eval()


@pytest.fixture
def exported(model: TinyModel, tmp_path: Path) -> Path:
    return hub.export_hub_folder(model, tmp_path / "tiny-seg", metrics=SEG_METRICS, repo_id="me/tiny-seg")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the Hub must not be contacted")

    for name in ("upload_folder", "create_repo", "create_branch"):
        monkeypatch.setattr(huggingface_hub, name, boom)


# --------------------------------------------------------------------------------------------------------------------
# render_model_card
# --------------------------------------------------------------------------------------------------------------------


def test_card_front_matter_carries_exactly_the_metrics(config: TinyConfig) -> None:
    card = hub.render_model_card(config, metrics=SEG_METRICS, repo_id="me/tiny-seg")
    meta = front_matter(card)
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-segmentation"
    assert {"medical-imaging", "chest-x-ray", "covid-19", "research-only", "cxr_fcdensenet"} <= set(meta["tags"])
    assert meta["datasets"] == ["jsrt"]
    assert meta["metrics"] == list(SEG_METRICS["values"])

    (entry,) = meta["model-index"]
    assert entry["name"] == "tiny-seg"
    (result,) = entry["results"]
    assert result["task"]["type"] == "image-segmentation"
    assert result["dataset"] == {"type": "jsrt", "name": "JSRT/SCR", "split": "validation"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == SEG_METRICS["values"]
    assert all(m["name"] == m["type"] for m in result["metrics"])
    # the table shows every metric too
    body = card_body(card)
    assert "| JSRT/SCR | validation | jaccard_lung | 0.9512 |" in body
    assert "| JSRT/SCR | validation | num_images | 50 |" in body


def test_read_card_metrics_reads_back_the_first_result(config: TinyConfig, tmp_path: Path) -> None:
    from cxr_hub.hub.card_metrics import read_card_metrics

    other = {"dataset": {"type": "x", "name": "other"}, "values": {"jaccard_lung": 0.5}}
    (tmp_path / "README.md").write_text(hub.render_model_card(config, metrics=[SEG_METRICS, other]))
    assert read_card_metrics(tmp_path) == {k: float(v) for k, v in SEG_METRICS["values"].items()}
    # no card, a card without model-index, broken YAML, a repo id not in the local cache: nothing, never an error
    assert read_card_metrics(tmp_path / "missing") == {}
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# no results\n")
    assert read_card_metrics(tmp_path) == {}
    (tmp_path / "README.md").write_text("---\nmodel-index: [unclosed\n---\n")
    assert read_card_metrics(tmp_path) == {}
    assert read_card_metrics("nobody-here/not-a-cached-repo") == {}


def test_card_accepts_flat_metrics(config: TinyConfig) -> None:
    meta = front_matter(hub.render_model_card(config, metrics=FLAT_METRICS, model_name="m"))
    assert meta["metrics"] == list(FLAT_METRICS)
    (result,) = meta["model-index"][0]["results"]
    assert {m["type"]: m["value"] for m in result["metrics"]} == FLAT_METRICS
    assert result["dataset"]["type"] == "unspecified"  # never invented
    assert "datasets" not in meta


def test_card_accepts_numpy_and_torch_scalars(config: TinyConfig) -> None:
    import numpy as np

    metrics = {"a": np.float32(0.5), "b": np.int64(3), "c": torch.tensor(0.25).item()}
    meta = front_matter(hub.render_model_card(config, metrics=metrics))
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"a": 0.5, "b": 3, "c": 0.25}
    assert type(values["b"]) is int


def test_card_several_evaluation_sets(config: TinyConfig) -> None:
    other = {"dataset": {"name": "Montgomery", "type": "montgomery", "split": "test"}, "values": {"jaccard_lung": 0.9}}
    meta = front_matter(hub.render_model_card(config, metrics=[SEG_METRICS, other]))
    results = meta["model-index"][0]["results"]
    assert [r["dataset"]["name"] for r in results] == ["JSRT/SCR", "Montgomery"]
    assert meta["datasets"] == ["jsrt", "montgomery"]
    assert meta["metrics"] == ["jaccard_lung", "dice_heart", "num_images"]


@pytest.mark.parametrize(
    "metrics",
    [
        {"accuracy": "0.9"},
        {"accuracy": None},
        {"accuracy": True},
        {"accuracy": float("nan")},
        {"dataset": {"name": "x"}, "values": {"accuracy": [0.9]}},
        {"dataset": {"name": "x", "typo": 1}, "values": {"accuracy": 0.9}},
        {"dataset": "x", "values": {"accuracy": 0.9}, "extra": 1},
    ],
)
def test_card_rejects_bad_metrics(config: TinyConfig, metrics: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"metric|Metric|dataset|keys"):
        hub.render_model_card(config, metrics=metrics)


def test_card_non_numeric_message_is_clear(config: TinyConfig) -> None:
    with pytest.raises(ValueError, match=r"'accuracy' has the non-numeric value 'high'"):
        hub.render_model_card(config, metrics={"accuracy": "high"})


def test_card_without_metrics_says_not_yet_evaluated(config: TinyConfig) -> None:
    card = hub.render_model_card(config)
    meta = front_matter(card)
    assert "model-index" not in meta
    assert "metrics" not in meta
    assert "not yet been evaluated" in card_body(card)
    assert "| Metric |" not in card


def test_card_sections_and_clinical_notice(config: TinyConfig) -> None:
    card = hub.render_model_card(config, metrics=SEG_METRICS, repo_id="me/tiny-seg", revision="abc123")
    body = card_body(card)
    assert "not for clinical use" in body.lower()
    assert "**Intended use: research and education only. NOT for clinical use.**" in body
    for heading in (
        "## Model summary",
        "## Intended use",
        "## Out-of-scope use",
        "## How to use",
        "## Training data",
        "## Evaluation",
        "## Limitations and biases",
        "## Citation",
    ):
        assert heading in body
    assert "**growth_rate**: 4" in body and "**image_size**: 32" in body
    assert "0: background, 1: lung" in body
    assert "trust_remote_code=True" in body and 'revision = "me/tiny-seg", "abc123"' in body
    assert "AutoImageProcessor" in body and "import cxr_hub" in body
    assert "see the training section" in body.lower()
    assert "10.1109/TMI.2020.2993291" in body and "Oh, Yujin and Park, Sangjoon and Ye, Jong Chul" in body
    assert "2688--2700" in body
    for word in ("tuberculosis", "Pediatric", "AP versus PA", "shortcuts"):
        assert word in body


def test_card_code_snippets_are_valid_python(config: TinyConfig) -> None:
    body = card_body(hub.render_model_card(config, repo_id="me/x"))
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)
    assert len(blocks) == 2
    for block in blocks:
        ast.parse(block)


@pytest.mark.parametrize(
    ("model_type", "tag"),
    [
        ("cxr_fcdensenet", "image-segmentation"),
        ("cxr_unet", "image-segmentation"),
        ("cxr_patch_classifier", "image-classification"),
        ("something_else", "image-classification"),
    ],
)
def test_pipeline_tag_from_model_type(model_type: str, tag: str) -> None:
    meta = front_matter(hub.render_model_card({"model_type": model_type}))
    assert meta["pipeline_tag"] == tag
    assert model_type in meta["tags"]


def test_card_classifier_fields_and_untrained_classes() -> None:
    config = {
        "model_type": "cxr_patch_classifier",
        "id2label": {"0": "normal", "1": "bacterial", "2": "tuberculosis", "3": "viral_covid"},
        "trained_classes": ["normal", "bacterial", "viral_covid"],
        "mode": "patch",
        "patch_size": 224,
        "num_patches": 100,
        "image_size": 1024,
    }
    body = card_body(hub.render_model_card(config))
    assert "**num_patches**: 100" in body and "**mode**: patch" in body
    assert "**untrained classes**: tuberculosis" in body
    assert "AutoModelForImageClassification" in body


def test_card_overrides_license_datasets_tags_training(config: TinyConfig) -> None:
    card = hub.render_model_card(
        config,
        license="cc-by-nc-4.0",
        datasets=["my/dataset"],
        tags=["fc-densenet"],
        training={"description": "Trained on 247 JSRT images.", "epochs": 30, "datasets": ["ignored/here"]},
    )
    meta = front_matter(card)
    assert meta["license"] == "cc-by-nc-4.0"
    assert meta["datasets"] == ["my/dataset"]
    assert "fc-densenet" in meta["tags"]
    body = card_body(card)
    assert "Trained on 247 JSRT images." in body and "- **epochs**: 30" in body


def test_card_yaml_survives_awkward_strings(config: TinyConfig) -> None:
    metrics = {"dataset": {"name": 'a: "b" # c\n---', "type": "x"}, "values": {"acc: top-1 #": 0.5}}
    meta = front_matter(hub.render_model_card(config, metrics=metrics, model_name="- name: [x]"))
    assert meta["model-index"][0]["name"] == "- name: [x]"
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == 'a: "b" # c\n---'
    assert meta["metrics"] == ["acc: top-1 #"]


def test_unknown_placeholder_raises(config: TinyConfig, tmp_path: Path) -> None:
    (tmp_path / "custom.md").write_text("# ${model_name}\nNOT for clinical use. ${no_such_thing}\n")
    with pytest.raises(ValueError, match=r"Unknown placeholder.*\$\{no_such_thing\}"):
        hub.render_model_card(config, template="custom", template_dir=tmp_path)
    # supplying it through extra makes the same template render
    card = hub.render_model_card(config, template="custom", template_dir=tmp_path, extra={"no_such_thing": "ok$1"})
    assert "NOT for clinical use. ok$1" in card


def test_invalid_dollar_raises(config: TinyConfig, tmp_path: Path) -> None:
    path = tmp_path / "dollar.md"
    path.write_text("NOT for clinical use. Costs $5.\n")
    with pytest.raises(ValueError, match=r"Invalid '\$'.*line 1"):
        hub.render_model_card(config, template=path)
    path.write_text("NOT for clinical use. Costs $$5.\n")
    assert "Costs $5." in hub.render_model_card(config, template=path)


def test_template_lookup_order(config: TinyConfig, tmp_path: Path) -> None:
    # empty folder: the built-in template
    card = hub.render_model_card(config, template_dir=tmp_path, model_name="seg")
    assert "not for clinical use" in card.lower() and "## Limitations and biases" in card
    # template.md beats the built-in, <model_name>.md beats template.md
    (tmp_path / "template.md").write_text("GENERIC ${model_name}. NOT for clinical use.\n")
    assert "GENERIC seg." in hub.render_model_card(config, template_dir=tmp_path, model_name="seg")
    (tmp_path / "seg.md").write_text("PER-MODEL ${model_type}. NOT for clinical use.\n")
    assert "PER-MODEL cxr_fcdensenet." in hub.render_model_card(config, template_dir=tmp_path, model_name="seg")
    # model_name defaults to the repo name
    assert "PER-MODEL" in hub.render_model_card(config, template_dir=tmp_path, repo_id="me/seg")
    with pytest.raises(ValueError, match="not found"):
        hub.render_model_card(config, template="missing", template_dir=tmp_path)


def test_template_must_keep_notice_and_not_bring_front_matter(config: TinyConfig, tmp_path: Path) -> None:
    (tmp_path / "bad.md").write_text("# ${model_name}\nfine for anything\n")
    with pytest.raises(ValueError, match="not for clinical use"):
        hub.render_model_card(config, template="bad", template_dir=tmp_path)
    (tmp_path / "fm.md").write_text("---\nlicense: mit\n---\nNOT for clinical use\n")
    with pytest.raises(ValueError, match="front matter"):
        hub.render_model_card(config, template="fm", template_dir=tmp_path)


def test_repository_template_and_builtin_render(config: TinyConfig, tmp_path: Path) -> None:
    assert (hub.MODEL_CARDS_DIR / "template.md").is_file()
    for kwargs in ({}, {"template_dir": tmp_path}):  # repository file, then the built-in fallback
        card = hub.render_model_card(config, metrics=SEG_METRICS, **kwargs)
        assert front_matter(card)["model-index"]
        assert "NOT for clinical use" in card and "2993291" in card and "jaccard_lung" in card_body(card)


# --------------------------------------------------------------------------------------------------------------------
# export_hub_folder
# --------------------------------------------------------------------------------------------------------------------


def test_export_writes_safetensors_config_and_card(exported: Path) -> None:
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= names
    assert not [n for n in names if Path(n).suffix in hub.PICKLE_SUFFIXES]
    meta = front_matter((exported / "README.md").read_text())
    assert meta["model-index"][0]["name"] == "tiny-seg"
    assert json.loads((exported / "config.json").read_text())["model_type"] == "cxr_fcdensenet"


def test_export_saves_image_processor(model: TinyModel, tmp_path: Path) -> None:
    from transformers.image_processing_utils import BaseImageProcessor

    out = hub.export_hub_folder(model, tmp_path / "m", image_processor=BaseImageProcessor())
    assert (out / "preprocessor_config.json").is_file()


def test_export_fp16_storage_loads_as_float32(model: TinyModel, tmp_path: Path) -> None:
    out = hub.export_hub_folder(model, tmp_path / "half", dtype="float16")
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118 (safe_open API)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched

    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        for kwargs in ({"dtype": torch.float32}, {}):
            loaded = TinyModel.from_pretrained(out, **kwargs).eval()
            assert {p.dtype for p in loaded.parameters()} == {torch.float32}
            torch.testing.assert_close(loaded(x), expected, atol=1e-2, rtol=1e-2)


def test_export_refuses_pickles_and_bad_dtype(model: TinyModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="safetensors only"):
        hub.export_hub_folder(model, tmp_path / "a", safe_serialization=False)
    with pytest.raises(ValueError, match="storage dtype"):
        hub.export_hub_folder(model, tmp_path / "b", dtype="int8")
    stale = tmp_path / "c"
    stale.mkdir()
    (stale / "pytorch_model.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError, match=r"pytorch_model\.bin"):
        hub.export_hub_folder(model, stale)


def test_export_card_error_writes_nothing(model: TinyModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        hub.export_hub_folder(model, tmp_path / "never", metrics={"acc": "n/a"})
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------------------------------------------------
# push_to_hub
# --------------------------------------------------------------------------------------------------------------------


def test_push_dry_run_lists_files_offline(exported: Path, no_network: None) -> None:
    (exported / "__pycache__").mkdir()
    (exported / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    files = hub.push_to_hub(exported, "me/tiny-seg", dry_run=True)
    assert files == ["README.md", "config.json", "model.safetensors"]


def test_push_calls_hub_with_folder_repo_and_revision(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: dict[str, Any] = {}

    def record(name: str) -> Any:
        def fn(*args: Any, **kwargs: Any) -> None:
            calls[name] = (args, kwargs)

        return fn

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(huggingface_hub, name, record(name))
    files = hub.push_to_hub(exported, "me/tiny-seg", revision="v1", private=True, commit_message="msg")
    assert files == ["README.md", "config.json", "model.safetensors"]

    _, upload = calls["upload_folder"]
    assert upload["repo_id"] == "me/tiny-seg" and upload["revision"] == "v1"
    assert Path(upload["folder_path"]) == exported and upload["commit_message"] == "msg"
    assert upload["repo_type"] == "model" and "*.bin" in upload["ignore_patterns"]
    args, create = calls["create_repo"]
    assert args == ("me/tiny-seg",) and create["exist_ok"] is True and create["private"] is True
    assert calls["create_branch"][1]["branch"] == "v1"


def test_push_without_revision_or_create_repo(exported: Path, monkeypatch: pytest.MonkeyPatch, no_network) -> None:
    import huggingface_hub

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: seen.append(kw))
    hub.push_to_hub(exported, "me/tiny-seg", create_repo=False)
    assert seen[0]["revision"] is None


def test_hub_call_signatures_match_installed_package() -> None:
    import inspect

    import huggingface_hub

    upload = inspect.signature(huggingface_hub.upload_folder).parameters
    assert {"repo_id", "folder_path", "revision", "commit_message", "token", "repo_type", "ignore_patterns"} <= set(
        upload
    )
    create = inspect.signature(huggingface_hub.create_repo).parameters
    assert {"token", "private", "repo_type", "exist_ok"} <= set(create)
    branch = inspect.signature(huggingface_hub.create_branch).parameters
    assert {"branch", "token", "repo_type", "exist_ok"} <= set(branch)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "pytorch_model.bin").write_bytes(b"x"), r"pickle.*pytorch_model\.bin"),
        (lambda d: (d / "sub").mkdir() or (d / "sub" / "opt.pt").write_bytes(b"x"), r"pickle.*sub/opt\.pt"),
        (lambda d: (d / "config.json").unlink(), "config.json"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
        (lambda d: (d / "README.md").unlink(), "README.md"),
        (lambda d: (d / "README.md").write_text("---\nkey: [unclosed\n---\n"), "front matter"),
    ],
)
def test_push_refuses_incomplete_or_pickled_folders(exported: Path, no_network: None, breakage, message: str) -> None:
    breakage(exported)
    for dry_run in (True, False):
        with pytest.raises(ValueError, match=message):
            hub.push_to_hub(exported, "me/tiny-seg", dry_run=dry_run)


def test_push_accepts_sharded_safetensors(exported: Path, no_network: None) -> None:
    (exported / "model.safetensors").rename(exported / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {"conv.weight": "model-00001-of-00001.safetensors"}}
    (exported / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "model-00001-of-00001.safetensors" in hub.push_to_hub(exported, "me/x", dry_run=True)
    index["weight_map"]["conv.bias"] = "model-00002-of-00002.safetensors"
    (exported / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="missing safetensors shards"):
        hub.push_to_hub(exported, "me/x", dry_run=True)


def test_push_checks_auto_map_code_files(exported: Path, no_network: None) -> None:
    config = json.loads((exported / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_tiny.TinyConfig", "AutoModel": "other/repo--modeling.M"}
    (exported / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"configuration_tiny\.py"):
        hub.push_to_hub(exported, "me/x", dry_run=True)
    (exported / "configuration_tiny.py").write_text("")
    assert "configuration_tiny.py" in hub.push_to_hub(exported, "me/x", dry_run=True)


def test_push_rejects_bad_repo_id(exported: Path, no_network: None) -> None:
    with pytest.raises(ValueError, match="namespace/name"):
        hub.push_to_hub(exported, "no-namespace", dry_run=True)


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def hub_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr_hub")
    cli_hub.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def run_hub_cli(argv: list[str]) -> int:
    args = hub_parser().parse_args(argv)
    return int(args.func(args))


def test_cli_push_dry_run(exported: Path, no_network: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_hub_cli(["push", str(exported), "--repo-id", "x/y", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Would upload 3 file(s)" in out and "x/y@main" in out
    for name in ("README.md", "config.json", "model.safetensors"):
        assert name in out


def test_cli_push_refusal_exit_code(exported: Path, no_network: None, capsys: pytest.CaptureFixture[str]) -> None:
    (exported / "pytorch_model.bin").write_bytes(b"x")
    assert run_hub_cli(["push", str(exported), "--repo-id", "x/y", "--dry-run"]) == 2
    assert "pickle" in capsys.readouterr().err


def test_cli_push_never_prints_token(
    exported: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(huggingface_hub, name, lambda *a, **k: None)
    assert run_hub_cli(["push", str(exported), "--repo-id", "x/y", "--revision", "r", "--private"]) == 0
    captured = capsys.readouterr()
    assert "Uploaded 3 file(s)" in captured.out
    assert "hf_secret_token_value" not in captured.out + captured.err


def test_cli_model_card_rerenders_readme(exported: Path, tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(FLAT_METRICS))
    # The test's config class is not registered with AutoConfig: the command falls back to config.json's fields.
    args = ["model-card", str(exported), "--metrics", str(metrics), "--repo-id", "me/r"]
    assert run_hub_cli([*args, "--overwrite"]) == 0
    card = (exported / "README.md").read_text()
    meta = front_matter(card)
    assert meta["pipeline_tag"] == "image-segmentation"
    assert {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]} == FLAT_METRICS
    assert "**growth_rate**: 4" in card
    assert run_hub_cli(["model-card", str(exported), "--overwrite"]) == 0
    assert "not yet been evaluated" in (exported / "README.md").read_text()


def test_cli_model_card_never_replaces_a_card_without_overwrite(exported: Path, tmp_path: Path, capsys) -> None:
    """`model-card FOLDER` on a curated card used to replace its measured numbers by "not yet evaluated"."""
    before = (exported / "README.md").read_text()
    assert run_hub_cli(["model-card", str(exported)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (exported / "README.md").read_text() == before
    elsewhere = tmp_path / "new_card.md"
    assert run_hub_cli(["model-card", str(exported), "--output", str(elsewhere)]) == 0
    assert "not yet been evaluated" in elsewhere.read_text() and (exported / "README.md").read_text() == before
    assert run_hub_cli(["model-card", str(exported), "--output", str(elsewhere)]) == 2  # the output is a card too


def _evaluate_report() -> dict[str, Any]:
    """A metrics.json as `python -m cxr_hub evaluate` writes it (the report plus the keys evaluate adds)."""
    from cxr_hub.evaluation.classification_metrics import accuracy_by_group, classification_report

    labels = ["normal", "bacterial", "tuberculosis", "viral_covid"]
    truth = ["normal"] * 4 + ["bacterial"] * 3 + ["viral_covid"] * 5
    pred = ["normal", "normal", "normal", "viral_covid", "normal", "bacterial", "viral_covid", *["viral_covid"] * 5]
    patients = [f"p{i // 2}" for i in range(len(truth))]
    report = classification_report(truth, pred, labels, patients, n_boot=50, seed=0, untrained=["tuberculosis"])
    report["accuracy_by_source"] = accuracy_by_group(truth, pred, ["jsrt"] * 4 + ["cohen"] * 8)
    report["selection"] = {"manifest": "/data/cxr/manifest.csv", "split": "classification:test", "limit": None}
    report["global"] = classification_report(truth, truth, labels, patients, n_boot=50, seed=0)
    return report


def test_model_card_reads_what_evaluate_writes(tmp_path: Path) -> None:
    report = _evaluate_report()
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(report))
    folder = tmp_path / "clf"
    folder.mkdir()
    config = {"model_type": "cxr_patch_classifier", "label_set": "label4", "mode": "patch"}
    (folder / "config.json").write_text(json.dumps(config))
    card_path = tmp_path / "card.md"
    assert run_hub_cli(["model-card", str(folder), "--metrics", str(path), "--output", str(card_path)]) == 0
    result = front_matter(card_path.read_text())["model-index"][0]["results"][0]
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values["accuracy"] == round(report["accuracy"], 4) and values["macro_f1"] == round(report["f1"], 4)
    assert values["sensitivity_normal"] == 0.75 and "sensitivity_tuberculosis" not in values  # n = 0: left out
    assert values["accuracy_source_jsrt"] == 0.75 and values["accuracy_ci95_low"] <= values["accuracy"]
    assert result["dataset"]["split"] == "test" and "classification:test" in result["dataset"]["name"]
    global_card = tmp_path / "global.md"
    args = ["model-card", str(folder), "--metrics", str(path), "--global", "--output", str(global_card)]
    assert run_hub_cli([*args, "--dataset-name", "held-out films"]) == 0
    result = front_matter(global_card.read_text())["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in result["metrics"]}["accuracy"] == 1.0
    assert result["dataset"]["name"] == "held-out films"


def test_card_metrics_from_segmentation_report() -> None:
    report = {
        "n": 50,
        "jaccard": {"lung": {"mean": 0.8941, "std": 0.03, "n": 50}, "heart": {"mean": 0.7532, "std": 0.06, "n": 50}},
        "dice": {"lung": {"mean": 0.944, "std": 0.02, "n": 50}},
        "selection": {"manifest": "m.csv", "split": "segmentation:val"},
    }
    card = hub.card_metrics_from_report(report)
    assert card["values"] == {"jaccard_lung": 0.8941, "jaccard_heart": 0.7532, "dice_lung": 0.944, "num_images": 50}
    assert card["dataset"]["split"] == "val"
    assert hub.card_metrics_from_report(FLAT_METRICS) is None  # not a report: used as it is
    with pytest.raises(ValueError, match="global"):
        hub.card_metrics_from_report(report, part="global")


def test_model_card_of_the_shipped_classifier_from_its_committed_evaluation(tmp_path: Path) -> None:
    """The exact command that failed: the committed evaluate output of the shipped classifier."""
    from conftest import REPO_ROOT

    metrics, model = REPO_ROOT / "docs/results/label4_test/metrics.json", REPO_ROOT / "models/cxr-patch-resnet18"
    if not (metrics.is_file() and (model / "config.json").is_file()):
        pytest.skip("the shipped classifier or its evaluation is not in this checkout")
    out = tmp_path / "card.md"
    assert run_hub_cli(["model-card", str(model), "--metrics", str(metrics), "--output", str(out)]) == 0
    values = {m["type"]: m["value"] for m in front_matter(out.read_text())["model-index"][0]["results"][0]["metrics"]}
    assert values["accuracy"] == round(json.loads(metrics.read_text())["accuracy"], 4)


CREDENTIALS = [".env", "sub/.env.local", "server.pem", "deploy.key", "sub/id_rsa", "credentials.json", "token"]
HIDDEN = [".hidden_notes.txt", ".secrets_dir/data.bin.txt", "sub/.DS_Store_like"]


def _with_credentials(folder: Path) -> None:
    for rel in [*CREDENTIALS, *HIDDEN, "tokenizer_config.json", "sub/notes.md"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text("hf_secret_value")


def test_push_never_sends_hidden_files_or_credentials(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.utils import filter_repo_objects

    _with_credentials(exported)
    expected = ["README.md", "config.json", "model.safetensors", "sub/notes.md", "tokenizer_config.json"]
    assert hub.list_upload_files(exported) == expected
    skipped = dict(hub.skipped_upload_files(exported))
    assert set(skipped) == set(CREDENTIALS) | set(HIDDEN)
    assert skipped[".env"] == "looks like a credential" and skipped[".hidden_notes.txt"] == "hidden"
    assert hub.push_to_hub(exported, "me/x", dry_run=True) == expected

    import huggingface_hub

    seen: dict[str, Any] = {}
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: seen.update(kw))
    assert hub.push_to_hub(exported, "me/x", create_repo=False) == expected
    # what upload_folder would send with those patterns, from the folder itself
    every = sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file())
    assert list(filter_repo_objects(every, ignore_patterns=seen["ignore_patterns"])) == expected


def test_cli_push_dry_run_says_what_it_skipped(exported: Path, no_network: None, capsys) -> None:
    _with_credentials(exported)
    assert run_hub_cli(["push", str(exported), "--repo-id", "x/y", "--dry-run"]) == 0
    out = capsys.readouterr().out
    listed, _, skipped = out.partition("Skipped")
    assert ".env" not in listed and "id_rsa" not in listed and "tokenizer_config.json" in listed
    assert f"Skipped {len(CREDENTIALS) + len(HIDDEN)} file(s)" in out
    assert ".env  (looks like a credential)" in skipped and "hf_secret_value" not in out


def test_cli_model_card_errors(tmp_path: Path, exported: Path) -> None:
    assert run_hub_cli(["model-card", str(tmp_path)]) == 2  # no config.json
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert run_hub_cli(["model-card", str(exported), "--metrics", str(bad)]) == 2


@pytest.mark.skipif(
    importlib.util.find_spec("cxr_hub.cli.predict") is None, reason="cxr_hub.cli.predict not written yet"
)
def test_top_level_cli_push_dry_run(exported: Path, no_network: None) -> None:
    from cxr_hub.cli import main

    assert main(["push", str(exported), "--repo-id", "x/y", "--dry-run"]) == 0
