"""training.refresh_card_metrics: a re-run evaluation replaces exactly the card's end-to-end numbers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from training.refresh_card_metrics import main, refresh_card

REPO_ROOT = Path(__file__).resolve().parents[1]
CARD = REPO_ROOT / "models" / "cxr-patch-resnet18" / "README.md"
METRICS = REPO_ROOT / "docs" / "results" / "label4_test" / "metrics.json"


@pytest.fixture
def card_and_metrics():
    if not (CARD.is_file() and METRICS.is_file()):
        pytest.skip("shipped card or its evaluation absent")
    return CARD.read_text(encoding="utf-8"), json.loads(METRICS.read_text())


def _results(card: str) -> list[dict]:
    return yaml.safe_load(card.split("---\n")[1])["model-index"][0]["results"]


def test_refresh_with_the_same_numbers_is_a_no_op(card_and_metrics):
    card, metrics = card_and_metrics
    assert refresh_card(card, metrics) == card


def test_refresh_replaces_only_the_end_to_end_block(card_and_metrics, tmp_path):
    card, metrics = card_and_metrics
    changed = copy.deepcopy(metrics)
    changed["accuracy"] = 0.123456
    changed["per_class"]["normal"]["sensitivity"] = 0.5
    changed.pop("global", None)
    new = refresh_card(card, changed)
    old_results, new_results = _results(card), _results(new)
    values = {m["type"]: m["value"] for m in new_results[0]["metrics"]}
    assert values["accuracy"] == 0.1235 and values["sensitivity_normal"] == 0.5
    assert new_results[1] == old_results[1]  # the training script's score stays
    name = new_results[0]["dataset"]["name"]
    assert f"| {name} | test | accuracy | 0.1235 |" in new
    assert f"| {name} | test | accuracy | {old_results[0]['metrics'][0]['value']} |" not in new
    # the prose after the table survives
    assert new.split("## Limitations")[1] == card.split("## Limitations")[1]
    # CLI: writes README.md in place; bad input → exit code 2
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "README.md").write_text(card, encoding="utf-8")
    (tmp_path / "m.json").write_text(json.dumps(changed))
    assert main([str(folder), str(tmp_path / "m.json")]) == 0
    assert (folder / "README.md").read_text(encoding="utf-8") == new
    assert main([str(folder), str(tmp_path / "m.json"), "--global"]) == 2  # no "global" part


def test_refresh_refuses_a_card_without_front_matter():
    with pytest.raises(ValueError, match="front matter"):
        refresh_card("# no front matter\n", {"accuracy": 0.5, "per_class": {}})


def test_a_card_fresh_from_training_gets_the_end_to_end_block_first():
    """Training writes a card with its own test score only: refreshing inserts the end-to-end result before it, keeps
    the training score (its dataset marked as the training script's) and names the model by its folder."""
    from cxr_hub.hub import evaluation_section
    from training.refresh_card_metrics import E2E_SUFFIX, TRAINING_SUFFIX

    dataset = {"type": "cxr-hub-curated", "name": "curated films, test split", "split": "test"}
    training = {"task": {"type": "image-classification"}, "dataset": dataset, "metrics": []}
    training["metrics"] = [{"type": "accuracy", "value": 0.5, "name": "accuracy"}]
    meta = {"model-index": [{"name": "export", "results": [training]}]}
    table = evaluation_section([{"dataset": dataset, "values": {"accuracy": 0.5}}])
    card = (
        f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n# card\n\n## Evaluation\n\n{table}\n\n## Limitations\n\nx\n"
    )
    metrics = {
        "accuracy": 0.75,
        "f1": 0.6,
        "precision": 0.6,
        "recall": 0.6,
        "specificity": 0.8,
        "per_class": {"normal": {"n": 3, "sensitivity": 1.0}},
    }
    new = refresh_card(card, metrics, model_name="cxr-patch-resnet18")
    front = yaml.safe_load(new.split("---\n")[1])["model-index"][0]
    assert front["name"] == "cxr-patch-resnet18"
    e2e, kept = front["results"]
    assert e2e["dataset"]["name"] == "curated films, test split" + E2E_SUFFIX
    assert {m["type"]: m["value"] for m in e2e["metrics"]}["accuracy"] == 0.75
    assert (
        kept["dataset"]["name"] == "curated films, test split" + TRAINING_SUFFIX and kept["metrics"][0]["value"] == 0.5
    )
    assert f"| curated films, test split{E2E_SUFFIX} | test | accuracy | 0.75 |" in new
    assert new.split("## Limitations")[1] == card.split("## Limitations")[1]
    # a second refresh replaces the end-to-end numbers only
    again = yaml.safe_load(refresh_card(new, {**metrics, "accuracy": 0.7}).split("---\n")[1])["model-index"][0]
    assert [r["dataset"]["name"] for r in again["results"]] == [e2e["dataset"]["name"], kept["dataset"]["name"]]
