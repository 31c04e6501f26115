"""The paper's tables (cxr_hub/data/paper_tables.json, read through cxr_hub.paper): the packaged copy, the loader,
the generated-section helpers, the model cards' comparison, and that no paper number is typed anywhere by hand."""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from cxr_hub import hub, paper
from cxr_hub.paper import (
    PAPER_FILE,
    format_mean_sd,
    format_number,
    generated_blocks,
    paper_mean_sd,
    paper_row,
    paper_table,
    paper_value,
    replace_generated,
    strip_generated,
    to_paper_units,
)

SHARED_TABLES = REPO_ROOT.parent / "shared" / "paper" / "tables.json"


def test_packaged_copy_equals_the_shared_file():
    if not SHARED_TABLES.is_file():
        pytest.skip(f"{SHARED_TABLES} absent (a fresh clone or a Space): the packaged copy is all there is")
    assert PAPER_FILE.read_bytes() == SHARED_TABLES.read_bytes(), (
        f"copy {SHARED_TABLES} to {PAPER_FILE}, then run python -m training.results_tables --write"
    )


def test_packaged_copy_ships_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["cxr_hub"]
    relative = PAPER_FILE.relative_to(REPO_ROOT / "cxr_hub").as_posix()
    assert any(Path(relative).match(g) for g in globs), f"add {relative} to [tool.setuptools.package-data]"


def test_loader_rows_pairs_and_errors():
    x = paper_row("table_x_macro_metrics_percent", "patch")
    assert list(x) == paper_table("table_x_macro_metrics_percent")["columns"]
    raw = json.loads(PAPER_FILE.read_text())
    assert x["f1"] == raw["table_x_macro_metrics_percent"]["patch"][3]
    assert paper_mean_sd("table_ix_cardiothoracic_ratio", "covid19") == tuple(
        raw["table_ix_cardiothoracic_ratio"]["covid19"]
    )
    assert (
        paper_value("table_v_segmentation_jaccard", "jsrt_preprocessed", "heart")
        == (raw["table_v_segmentation_jaccard"]["jsrt_preprocessed"]["heart"])
    )
    paper_table("table_x_macro_metrics_percent")["patch"][0] = -1.0  # callers get copies
    assert paper_row("table_x_macro_metrics_percent", "patch") == x
    with pytest.raises(KeyError, match=r"use one of: .*table_iii_data"):
        paper_table("table_99")
    with pytest.raises(KeyError, match=r"available: .*jsrt_preprocessed"):
        paper_value("table_v_segmentation_jaccard", "jsrt")
    with pytest.raises(ValueError, match="has no 'columns'"):
        paper_row("table_vi_lung_mean_intensity", "normal")
    with pytest.raises(ValueError, match="not a \\[mean, SD\\] pair"):
        paper_mean_sd("table_vi_lung_mean_intensity", "text")


def test_every_table_is_well_formed():
    for name, table in paper.paper_tables().items():
        if isinstance(table, dict) and "columns" in table:
            for key, row in table.items():
                if key != "columns":
                    assert len(row) == len(table["columns"]), f"{name}/{key}"
    for table in (*paper.BIOMARKER_TABLES.values(), *paper.BIOMARKER_TABLES_NO_AP_SUPINE.values()):
        for classes in paper.LABEL4_TO_PAPER.values():
            for c in classes:
                mean, sd = paper_mean_sd(table, c)
                assert 0 < sd < mean < 1, f"{table}/{c}"


def test_formatting_and_units():
    assert format_number(95) == "95" and format_number(88.94) == "88.9" and format_number(None) == "–"
    assert format_number(0.5404, 3) == "0.540" and format_mean_sd((0.5, 0.05)) == "0.500 ± 0.050"
    assert to_paper_units("lung_mean_intensity", 127.5) == 0.5 and to_paper_units("lung_std_intensity", 25.5) == 0.1
    assert to_paper_units("cardiothoracic_ratio", 0.5) == 0.5


def test_generated_sections_replace_strip_and_name_what_is_missing():
    text = "a 1.5\n<!-- generated:one hint -->\nold\n<!-- /generated:one -->\nb\n"
    assert generated_blocks(text) == {"one": "old\n"}
    new = replace_generated(text, "one", "new")
    assert new == "a 1.5\n<!-- generated:one hint -->\nnew\n<!-- /generated:one -->\nb\n"
    assert replace_generated(text, "one", "x", hint="by me").startswith("a 1.5\n<!-- generated:one by me -->\n")
    assert strip_generated(new) == "a 1.5\n\nb\n"
    with pytest.raises(ValueError, match="generated:two"):
        replace_generated(text, "two", "x")


# ------------------------------------------------------------------------------------------ the cards' comparison


def _card_config(**kw):
    base = {"model_type": "cxr_patch_classifier", "label_set": "label4", "mode": "patch"}
    base["id2label"] = {"0": "normal", "1": "bacterial", "2": "tuberculosis", "3": "viral_covid"}
    return {**base, **kw}


def test_card_comparison_reads_the_paper_and_says_which_way():
    values = {"accuracy": 0.5, "macro_f1": 0.4, "macro_precision": 0.4, "macro_recall": 0.4, "macro_specificity": 0.7}
    values |= {"sensitivity_normal": 0.999, "sensitivity_bacterial": 0.1, "sensitivity_viral_covid": 0.3}
    text = hub.paper_comparison_section(_card_config(mode="global"), {"dataset": "test split", "values": values})
    body = generated_blocks(text)["paper-comparison"]
    x = paper_row("table_x_macro_metrics_percent", "global")
    rows = {line.split(" | ")[0].strip("| "): line for line in body.split("\n") if line.startswith("| ")}
    diff = abs(40.0 - x["f1"])
    assert rows["macro F1"] == f"| macro F1 | 40.0 | {format_number(x['f1'])} | **{diff:.1f} points lower** |"
    assert "higher**" in rows["sensitivity (normal)"]  # 99.9 % is above any published sensitivity
    assert "not comparable" in rows["sensitivity (tuberculosis)"]
    assert "**Below the paper** on accuracy" in body and "Above it on sensitivity (normal)" in body


def test_card_comparison_for_label3_segmentation_and_no_counterpart():
    covid = paper_row("table_xii_vs_covidnet_percent", "patch")["sens_covid19"]
    cfg3 = _card_config(label_set="label3", id2label={"0": "normal", "1": "pneumonia", "2": "covid"})
    text = hub.paper_comparison_section(cfg3, {"sensitivity_covid": 0.5, "sensitivity_normal": 0.5})
    assert f"| sensitivity (covid) | 50.0 | {format_number(covid)} |" in text
    lung = paper_value("table_v_segmentation_jaccard", "jsrt_preprocessed", "lung")
    seg = hub.paper_comparison_section({"model_type": "cxr_fcdensenet"}, {"jaccard_lung": 0.9, "jaccard_heart": 0.8})
    assert f"| Jaccard, lung | 0.900 | {format_mean_sd(lung)} |" in seg
    assert "not evaluated yet" in hub.paper_comparison_section(_card_config(), None).lower()
    assert "no number" in hub.paper_comparison_section({"model_type": "other"}, {"accuracy": 0.5})


def test_rendered_card_has_the_comparison_section():
    card = hub.render_model_card(_card_config(), metrics={"accuracy": 0.5, "macro_f1": 0.4})
    assert "## Compared with the paper" in card and "<!-- generated:paper-comparison" in card
    assert hub.refresh_paper_comparison(card, _card_config()) == card
    new = hub.refresh_paper_comparison(card.replace("| accuracy | 50.0 |", "| accuracy | 1.0 |"), _card_config())
    assert new == card  # a hand edit inside the section is overwritten from the front matter


# ------------------------------------------------------------------------------------------------ no hand typing

_NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\d])")
#: Where a person writes text that could quote the paper: docs, cards, the app and the code that renders them.
SCANNED = [
    "RESULTS.md",
    "README.md",
    "app.py",
    "cxr_hub/demo/*.py",
    "cxr_hub/hub/*.py",
    "cxr_hub/cli/hub.py",
    "cxr_hub/paper.py",
    "cxr_hub/evaluation/biomarker_*.py",
    "cxr_hub/cli/biomarkers.py",
    "training/results_tables.py",
    "model_cards/*.md",
    "models/*/README.md",
    "tests/test_paper.py",
    "tests/test_results_tables.py",
]


def _paper_tokens() -> set[str]:
    """The paper's decimal numbers as the file prints them (numbers inside its notes' strings excluded)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', PAPER_FILE.read_text())
    # Table XV's training-set fractions (1.0, 0.5, ...) are the experiment's design, not results to quote
    design = {str(f) for f in paper_table("table_xv_segmentation_trainset_size_mc_lung_jaccard")["fraction"]}
    return set(_NUMBER.findall(without_strings)) - design


def _our_tokens() -> set[str]:
    """Every number of our measured files, in the ways our documents print them (as is and as percent)."""

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from walk(x)
        elif isinstance(v, list):
            for x in v:
                yield from walk(x)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            yield v

    out = set()
    files = glob.glob(str(REPO_ROOT / "docs" / "**" / "*.json"), recursive=True)
    files += glob.glob(str(REPO_ROOT / "models" / "*" / "training_config.json"))
    for f in files:
        for x in walk(json.loads(Path(f).read_text())):
            out |= {f"{v:.{d}f}" for v in (x, 100 * x) for d in range(4)}
    return out


def _right_after_paper(prefix: str) -> bool:
    """True when the text before a number names the paper within the same clause (``the paper's F1 of``)."""
    return re.search(r"paper[^.;\n]{0,40}$", prefix, re.I) is not None


def test_no_paper_number_is_typed_by_hand():
    """Outside the generated sections, a number of the paper may appear only where it is one of ours too, and never
    right after the word "paper" (``the paper's F1 of NN.N``): every paper number must come from paper_tables.json."""
    paper_tokens, ours = _paper_tokens(), _our_tokens()
    assert len(paper_tokens) > 50  # the scan looks for something
    found = []
    for pattern in SCANNED:
        for path in sorted(REPO_ROOT.glob(pattern)):
            for n, line in enumerate(strip_generated(path.read_text(encoding="utf-8")).split("\n"), 1):
                for m in _NUMBER.finditer(line):
                    if m.group(0) not in paper_tokens:
                        continue
                    if m.group(0) not in ours or _right_after_paper(line[: m.start()]):
                        found.append(f"{path.relative_to(REPO_ROOT)}:{n}: {m.group(0)}: {line.strip()[:100]}")
    assert not found, "paper numbers typed by hand (read them with cxr_hub.paper):\n" + "\n".join(found)


def test_the_scan_catches_a_typed_paper_number(tmp_path):
    f1 = format_number(paper_row("table_x_macro_metrics_percent", "patch")["f1"])
    line = f"the paper reports a macro F1 of {f1}"
    m = _NUMBER.search(line)
    assert m is not None and m.group(0) in _paper_tokens()
    assert _right_after_paper(line[: m.start()])
    assert not _right_after_paper("the paper. Ours: ") and not _right_after_paper("ours were ")
