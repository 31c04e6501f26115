"""RESULTS.md and README tables (training/results_tables.py): rendering from evaluate-style metrics, the paper's
numbers from cxr_hub/data/paper_tables.json, and the committed files being up to date with the measured ones."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT

from cxr_hub.evaluation.classification_metrics import accuracy_by_group, classification_report
from cxr_hub.paper import format_number, generated_blocks, paper_row
from training import results_tables as rt

LABELS = ["normal", "bacterial", "tuberculosis", "viral_covid"]


def _metrics() -> dict:
    truth = ["normal", "normal", "viral_covid", "viral_covid", "bacterial"]
    pred = ["normal", "viral_covid", "viral_covid", "viral_covid", "viral_covid"]
    rep = classification_report(truth, pred, LABELS, ["p1", "p2", "p3", "p4", "p5"], n_boot=50)
    rep["accuracy_by_source"] = accuracy_by_group(truth, pred, ["jsrt", "nih", "cohen", "cohen", "cohen"])
    rep["saliency_in_lung_mean"] = 0.8
    rep["global"] = classification_report(truth, ["normal"] * 5, LABELS, ["p1", "p2", "p3", "p4", "p5"], n_boot=50)
    return rep


def test_tables_show_measured_values_the_papers_and_absent_classes(tmp_path, capsys):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(_metrics()))
    assert rt.main(["--label4", str(path)]) == 0
    text = capsys.readouterr().out
    assert "| **ours**, patch | 5 | 60.0 [" in text  # accuracy 3/5 with its bootstrap CI
    for model in ("patch", "global"):  # the paper's Table X rows, every column, from the data file
        row = paper_row("table_x_macro_metrics_percent", model)
        assert f"| paper, {model} | – | " + " | ".join(format_number(row[k]) for k in rt.MACRO) + " |" in text
    xi = paper_row("table_xi_sensitivity_percent", "patch")
    assert f"| tuberculosis | absent (n = 0) | {format_number(xi['tuberculosis'])} |" in text
    assert "cohen" in text and "66.7 (n = 3)" in text  # 2 of 3 Cohen images right
    assert "Mean share of the patch model's saliency inside the lungs: 80.0 %" in text
    # the differences in words: our F1 of 20.0 (1/5 bacterial wrong, ...) is far below the paper's
    f1 = 100 * _metrics()["f1"]
    assert f"- patch, macro F1: {rt.compare(f1, paper_row('table_x_macro_metrics_percent', 'patch')['f1'])}" in text
    assert "points lower**" in text
    assert "no tuberculosis images in our data" in text


def test_label3_table_xii_columns_come_from_the_paper_file(tmp_path, capsys):
    labels = ["normal", "pneumonia", "covid"]
    truth = ["normal", "pneumonia", "covid", "covid"]
    rep = classification_report(truth, ["normal", "covid", "covid", "covid"], labels, ["a", "b", "c", "d"], n_boot=20)
    rep["accuracy_by_source"] = accuracy_by_group(truth, truth, ["nih", "nih", "cohen", "cohen"])
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(rep))
    assert rt.main(["--label3", str(path)]) == 0
    text = capsys.readouterr().out
    patch, covidnet = (paper_row("table_xii_vs_covidnet_percent", w) for w in ("patch", "covidnet"))
    row = f"| covid | 2 | 100.0 | {format_number(patch['sens_covid19'])} | {format_number(covidnet['sens_covid19'])} |"
    assert row in text
    assert f"covid sensitivity: {rt.compare(100.0, patch['sens_covid19'])}" in text


@pytest.mark.parametrize(
    ("ours", "paper", "unit", "expected"),
    [
        (51.7, 77.0, "points", "ours 51.7, paper 77.0: ours **25.3 points lower**"),
        (98.7, 89.0, "points", "ours 98.7, paper 89.0: ours **9.7 points higher**"),
        (70.5, 71.0, "points", "ours 70.5, paper 71.0: about the same"),
        (0.894, 0.950, "", "ours 0.894, paper 0.950: ours **0.056 lower**"),
        (None, 81.0, "points", "no value of ours, paper 81.0"),
    ],
)
def test_compare_says_plainly_which_way(ours, paper, unit, expected):
    digits = 1 if unit else 3
    assert rt.compare(ours, paper, unit, digits) == expected


def test_pct_handles_undefined():
    assert rt.pct(None) == "–" and rt.pct(0.125) == "12.5"


def test_update_text_replaces_only_generated_sections_and_names_missing_markers():
    text = "intro 1.0\n\n<!-- generated:a -->\nold\n<!-- /generated:a -->\n\noutro\n"
    new = rt.update_text(text, {"a": "new body"}, ["a"])
    assert generated_blocks(new) == {"a": "new body\n"} and new.startswith("intro 1.0") and new.endswith("outro\n")
    assert rt.update_text(new, {"a": "new body"}, ["a"]) == new  # idempotent
    with pytest.raises(ValueError, match="generated:b"):
        rt.update_text(text, {"a": "x", "b": "y"}, ["a", "b"])
    with pytest.raises(ValueError, match="not rendered"):
        rt.update_text(text, {"b": "y"}, [])


def test_wrap_markdown_keeps_tables_and_wraps_prose():
    table = "| a | b |\n|---|---|\n| " + "x " * 80 + "| y |"
    prose = "word " * 60
    out = rt.wrap_markdown(f"{table}\n\n{prose}\n\n- " + "item " * 40)
    parts = out.split("\n\n")
    assert parts[0] == table
    assert all(len(line) <= 120 for line in parts[1].split("\n")) and parts[1].count("\n") >= 2
    assert parts[2].startswith("- ") and all(line.startswith("  ") for line in parts[2].split("\n")[1:])


def _committed_files() -> rt.ResultFiles:
    files = rt.ResultFiles()
    for name in ("label4", "label3", "biomarkers", "ablations", "segmentation"):
        if not (files.root / getattr(files, name)).is_file():
            pytest.skip(f"measured file {getattr(files, name)} absent")
    if not (files.root / "models" / "cxr-patch-resnet18" / "training_config.json").is_file():
        pytest.skip("shipped models absent")
    return files


def test_results_and_readme_are_rendered_from_the_measured_files():
    """Every generated section of RESULTS.md and README.md equals what the measured files give now."""
    files = _committed_files()
    assert rt.check_files(files) == [], "run: python -m training.results_tables --write"
    for name, expected in (("RESULTS.md", rt.RESULTS_SECTIONS), ("README.md", rt.README_SECTIONS)):
        assert list(generated_blocks((REPO_ROOT / name).read_text())) == list(expected), name


def test_readme_shipped_models_agree_with_the_metrics_files():
    files = _committed_files()
    block = generated_blocks((REPO_ROOT / "README.md").read_text())["shipped-models"]
    m4, m3 = files.load("label4"), files.load("label3")
    patch_row = next(line for line in block.split("\n") if line.startswith("| [`models/cxr-patch-resnet18`]"))
    assert f"accuracy **{rt.pct(m4['accuracy'])} %**, macro F1 **{rt.pct(m4['f1'])}**" in patch_row
    called, right, n = rt.predicted_as(m4, "bacterial")
    assert f"{called} films called bacterial, {right} correctly ({right} of {n} bacterial films)" in patch_row
    assert "never predicted" not in block or called == 0
    global_row = next(line for line in block.split("\n") if line.startswith("| [`models/cxr-global-resnet18`]"))
    assert f"accuracy {rt.pct(m4['global']['accuracy'])} %, macro F1 {rt.pct(m4['global']['f1'])}" in global_row
    covidx = next(line for line in block.split("\n") if line.startswith("| [`models/cxr-patch-resnet18-covidx`]"))
    sens = m3["per_class"]["covid"]["sensitivity"]
    assert f"macro F1 {rt.pct(m3['f1'])}, COVID-19 sensitivity {rt.pct(sens)} %" in covidx
    assert f"accuracy {rt.pct(m3['accuracy'])} %" in covidx
    cohen = m4["accuracy_by_source"]["cohen"]["accuracy"]
    assert f"{rt.pct(cohen, 0)} % of the Cohen films right" in " ".join(block.split())
    # every shipped segmentation model has its row, with its own measured JSRT lung Jaccard
    for name, report in files.load("segmentation")["models"].items():
        row = next(line for line in block.split("\n") if line.startswith(f"| [`models/{name}`]"))
        seg = report["runs"]["jsrt_val_with_preprocessing"]["jaccard"]
        assert f"lung Jaccard **{seg['lung']['mean']:.3f} ± {seg['lung']['std']:.3f}**" in row


def test_results_biomarker_tables_are_the_stats_of_the_app_reference():
    """RESULTS.md's biomarker table and the app's reference file show the same run's per-class values."""
    files = _committed_files()
    from cxr_hub.demo import load_biomarker_reference

    ref = load_biomarker_reference()
    block = generated_blocks((REPO_ROOT / "RESULTS.md").read_text())["biomarkers"]
    first = block.split("\n\n")[1]  # the all-views mean ± SD table, right under its heading
    rows = {line.split(" | ")[0].strip("| "): line for line in first.split("\n")}
    stats = files.load("biomarkers")
    assert ref is not None and ref["n"] == stats["all_views"]["n_by_class"]
    for cls in ("normal", "bacterial", "viral_covid"):
        assert ref["values"]["cardiothoracic_ratio"][cls] in rows[cls]
        assert ref["values"]["lung_std_intensity"][cls] in rows[cls]


def _seg_report(jsrt: float, cohen: float, aware: float) -> dict:
    from cxr_hub.evaluation.metrics import CONVENTION_AWARE_LUNG

    def run(**parts: float) -> dict:
        return {"jaccard": {part: {"mean": v, "std": 0.01} for part, v in parts.items()}}

    return {
        "runs": {
            "jsrt_val_with_preprocessing": run(lung=jsrt),
            "cohen_test_with_preprocessing": run(**{"lung": cohen, CONVENTION_AWARE_LUNG: aware}),
        }
    }


def test_seg_note_names_the_default_and_compares_it_with_each_alternative(monkeypatch):
    """The note under the README's segmentation table follows SHIPPED["segmentation"] and the measured Jaccards."""
    import dataclasses

    from cxr_hub import presets

    seg = {"models": {"seg-a": _seg_report(0.90, 0.60, 0.80), "seg-b": _seg_report(0.95, 0.55, 0.90)}}
    monkeypatch.setitem(
        presets.SHIPPED, "segmentation", dataclasses.replace(presets.SHIPPED["segmentation"], folder="seg-b")
    )
    note = rt._seg_note(seg)
    assert note.startswith("The pipeline's default segmentation is `seg-b`")
    assert (
        "against `seg-a` its mean lung Jaccard is higher on the JSRT films (0.950 against 0.900) and on those " in note
    )
    assert "lower on other hospitals' films (0.550 against 0.600)" in note
