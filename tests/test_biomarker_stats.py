"""cxr_hub.evaluation.stats against scipy and hand-computed answers: summaries, KS normality, rank-sum tests, tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from cxr_hub.evaluation.stats import (
    class_summary,
    compare_classes,
    format_mean_sd,
    format_p,
    ks_normality,
    markdown_table,
    normality_markdown,
    pairwise_markdown,
    pairwise_rank_sums,
    rank_sum,
    significance_stars,
    summary_markdown,
)

CLASSES = ["normal", "bacterial", "tuberculosis", "viral_covid"]


@pytest.mark.parametrize(
    ("p", "stars"),
    [
        (0.5, ""),
        (0.05, ""),  # a p equal to a threshold does not earn its star
        (np.nextafter(0.05, 0), "*"),
        (0.01, "*"),
        (np.nextafter(0.01, 0), "**"),
        (0.001, "**"),
        (np.nextafter(0.001, 0), "***"),
        (0.0, "***"),
        (1.0, ""),
        (math.nan, ""),
        (None, ""),
    ],
)
def test_significance_stars_boundaries(p, stars):
    assert significance_stars(p) == stars


def test_class_summary_drops_nan_and_uses_population_sd():
    s = class_summary([1.0, 2.0, math.nan, 3.0, None, 6.0])
    assert s["n"] == 4 and s["n_missing"] == 2
    assert s["mean"] == pytest.approx(3.0)
    assert s["sd"] == pytest.approx(np.std([1, 2, 3, 6]))  # ddof = 0
    assert (s["median"], s["min"], s["max"]) == (2.5, 1.0, 6.0)
    empty = class_summary([math.nan, math.nan])
    assert empty == {"n": 0, "n_missing": 2, "no_values": True}


def test_rank_sum_identical_samples_give_p_one():
    x = [0.3, 0.1, 0.7, 0.2, 0.9]
    t = rank_sum(x, list(x))
    assert t["statistic"] == 0.0 and t["p"] == 1.0 and t["stars"] == ""


def test_rank_sum_hand_computed():
    # ranks of a: 1+2+3 = 6; E = 3*7/2 = 10.5; Var = 3*3*7/12 = 5.25 → z = -4.5/sqrt(5.25), p = 2 Φ(z) ≈ 0.0495
    t = rank_sum([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    z = -4.5 / math.sqrt(5.25)
    assert t["statistic"] == pytest.approx(z)
    assert t["p"] == pytest.approx(math.erfc(-z / math.sqrt(2)))
    assert t["p"] == pytest.approx(0.0495, abs=1e-4) and t["stars"] == "*"
    assert (t["n_a"], t["n_b"]) == (3, 3)


def test_rank_sum_shifted_normals_and_scipy_agreement():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 150), rng.normal(2, 1, 150)
    t = rank_sum(a, np.append(b, math.nan))  # the NaN is dropped, not ranked
    ref = sps.ranksums(a, b)
    assert t["statistic"] == pytest.approx(ref.statistic) and t["p"] == pytest.approx(ref.pvalue)
    assert t["statistic"] < 0 and t["p"] < 0.001 and t["stars"] == "***" and t["n_b"] == 150
    assert rank_sum([], [1.0])["skipped"]


def test_pairwise_rank_sums_covers_every_pair_in_order():
    groups = {"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0], "empty": [math.nan], "c": [1.0, 2.0, 3.0]}
    tests = pairwise_rank_sums(groups)
    assert [(t["a"], t["b"]) for t in tests] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert tests[1]["p"] == 1.0
    assert tests[0]["p"] == pytest.approx(tests[2]["p"])  # mirrored: same p


def test_ks_normality_hand_computed():
    # [-1, 0, 1] standardised with the sample SD (= 1) stays [-1, 0, 1]; D = 1/3 - Φ(-1)
    ks = ks_normality([-1.0, 0.0, 1.0])
    assert ks["statistic"] == pytest.approx(1 / 3 - 0.5 * math.erfc(1 / math.sqrt(2)))
    assert ks["n"] == 3 and ks["normal"] is True


def test_ks_normality_against_scipy():
    rng = np.random.default_rng(1)
    normal = rng.normal(50, 7, 300)
    skewed = rng.exponential(1.0, 300)
    for x in (normal, skewed):
        z = (x - x.mean()) / x.std(ddof=1)
        ref = sps.kstest(z, "norm")
        ks = ks_normality(x)
        assert ks["statistic"] == pytest.approx(ref.statistic) and ks["p"] == pytest.approx(ref.pvalue)
    assert ks_normality(normal)["normal"] is True
    assert ks_normality(skewed)["p"] < 0.001 and ks_normality(skewed)["normal"] is False


def test_ks_normality_skips_tiny_or_constant_samples():
    assert "skipped" in ks_normality([1.0, 2.0, math.nan])
    assert "p" not in ks_normality([4.0, 4.0, 4.0, 4.0])


def test_compare_classes_absent_class_gets_no_numbers():
    rng = np.random.default_rng(2)
    values = {"normal": rng.normal(0, 1, 40).tolist(), "bacterial": [], "viral_covid": rng.normal(3, 1, 40).tolist()}
    res = compare_classes(values, CLASSES)
    assert res["absent"] == ["bacterial", "tuberculosis"]
    for c in ("bacterial", "tuberculosis"):
        assert res["per_class"][c] == {"n": 0, "absent": True}
        assert c not in res["normality"]
    assert [(t["a"], t["b"]) for t in res["pairwise"]] == [("normal", "viral_covid")]
    assert res["pairwise"][0]["stars"] == "***"
    assert res["per_class"]["normal"]["mean"] == pytest.approx(np.mean(values["normal"]))
    with pytest.raises(ValueError, match="not in classes"):
        compare_classes({"covid": [1.0]}, CLASSES)


def test_format_helpers():
    assert format_p(1.23e-5) == "1.2e-05 ***"
    assert format_p(0.0312) == "0.0312 *"
    assert format_p(0.5) == "0.5"
    assert format_p(0.004, stars=False) == "0.004"
    assert format_p(None) == format_p(math.nan) == "–"
    assert format_mean_sd({"n": 2, "mean": 0.51234, "sd": 0.0456}, 3) == "0.512 ± 0.046"
    assert format_mean_sd({"n": 0, "absent": True}) == "absent"
    assert format_mean_sd({"n": 0, "no_values": True}) == "no values"


def test_markdown_table_shape_and_escaping():
    table = markdown_table(["a", "b"], [["x|y", 1], ["z", 2.5]])
    lines = table.split("\n")
    assert lines[0] == "| a | b |" and lines[1] == "|:---|---:|"
    assert lines[2] == "| x\\|y | 1 |" and len(lines) == 4
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["a", "b"], [["only one"]])


def test_rendered_tables_list_absent_classes_and_stars():
    rng = np.random.default_rng(3)
    values = {"normal": rng.normal(0, 1, 30).tolist(), "viral_covid": rng.normal(3, 1, 30).tolist()}
    values["normal"][0] = math.nan  # one image without a value: its n is shown
    results = {"m": compare_classes(values, CLASSES)}
    titles, n_images = {"m": "marker"}, {"normal": 30, "viral_covid": 30}
    summary = summary_markdown(results, CLASSES, titles, {"m": 2}, n_images)
    rows = {line.split(" | ")[0].strip("| "): line for line in summary.split("\n")[2:]}
    assert set(rows) == set(CLASSES)
    assert "absent (no images)" in rows["tuberculosis"] and "±" not in rows["tuberculosis"]
    assert "(n = 29)" in rows["normal"] and "(n =" not in rows["viral_covid"]
    normality = normality_markdown(results, CLASSES, titles)
    assert "D = " in normality and "absent" in normality
    pairwise = pairwise_markdown(results, titles)
    assert "normal vs viral_covid" in pairwise and "***" in pairwise and "tuberculosis" not in pairwise


def _saved_run(folder, rng) -> dict:
    """A biomarkers run as ``python -m cxr_hub biomarkers`` leaves it: biomarkers.csv and stats.json."""
    from cxr_hub.evaluation.biomarker_statistics import biomarker_report
    from cxr_hub.evaluation.biomarker_study import BIOMARKER_COLUMNS, _write_csv, write_outputs

    records = []
    films = [("normal", "jsrt")] * 5 + [("viral_covid", "cohen")] * 6 + [("bacterial", "cohen")] * 3
    for i, (label, source) in enumerate(films):
        rec = {"id": f"img{i}", "source": source, "view": "AP Supine" if i % 4 == 0 else "PA", "label": label}
        for c in BIOMARKER_COLUMNS:
            rec[c] = int(rng.integers(100, 900)) if c.endswith("_px") else float(rng.uniform(0.2, 0.8))
        rec["cardiothoracic_ratio"] = math.nan if i == 1 else rec["cardiothoracic_ratio"]  # no heart on one film
        rec["warnings"] = ""
        records.append(rec)
    report = biomarker_report(records, CLASSES)
    report.update(task="label4", n_images=len(records), n_resumed=0, model="models/seg", failures=[])
    report["selection"] = {"manifest": "m.csv", "split": None, "sources": None, "limit": None}
    _write_csv(folder / "biomarkers.csv", records)
    write_outputs(report, folder, plots=False)
    return report


def test_rebuild_writes_results_source_and_app_reference_from_one_report(tmp_path):
    from cxr_hub.evaluation.biomarker_statistics import reference_from_report, render_tables
    from cxr_hub.evaluation.biomarker_study import rebuild_from_csv

    original = _saved_run(tmp_path, np.random.default_rng(5))
    rebuilt = rebuild_from_csv(tmp_path, reference_json=tmp_path / "ref" / "reference.json")
    ref = json.loads((tmp_path / "ref" / "reference.json").read_text())
    assert ref == json.loads(json.dumps(reference_from_report(rebuilt)))
    assert json.loads((tmp_path / "stats.json").read_text()) == rebuilt
    assert (tmp_path / "tables.md").read_text() == render_tables(rebuilt)
    assert rebuilt["sources"] == {"cohen": 9, "jsrt": 5} and rebuilt["model"] == "models/seg"
    for b in ("cardiothoracic_ratio", "lung_mean_intensity"):
        for c in ("normal", "bacterial", "viral_covid"):
            measured = original["all_views"]["biomarkers"][b]["per_class"][c]
            # the CSV keeps 6 digits: the rebuilt numbers are the run's, to that precision
            assert ref["stats"][b][c]["mean"] == pytest.approx(measured["mean"], abs=1e-6)
            assert ref["stats"][b][c]["n"] == measured["n"]
            assert ref["values"][b][c] == format_mean_sd(measured, 3 if b == "cardiothoracic_ratio" else 1)
        assert ref["stats"][b]["tuberculosis"] is None and ref["values"][b]["tuberculosis"] is None
    assert ref["stats"]["cardiothoracic_ratio"]["normal"]["n"] == 4  # the film without a heart has no ratio
    assert ref["n"] == {"normal": 5, "bacterial": 3, "tuberculosis": 0, "viral_covid": 6}
    assert "14 labelled images" in ref["description"] and "not the paper's" in ref["description"]


def test_rebuild_says_what_to_run_when_the_run_is_missing(tmp_path):
    from cxr_hub.evaluation.biomarker_study import rebuild_from_csv

    with pytest.raises(FileNotFoundError, match="python -m cxr_hub biomarkers"):
        rebuild_from_csv(tmp_path)


def test_cli_rebuild_needs_no_manifest_and_writes_the_reference(tmp_path, capsys):
    from cxr_hub.cli import main

    _saved_run(tmp_path, np.random.default_rng(6))
    ref = tmp_path / "reference.json"
    assert main(["biomarkers", "--rebuild", "--out", str(tmp_path), "--reference-json", str(ref)]) == 0
    assert "recomputed the statistics of 14 images" in capsys.readouterr().out
    assert json.loads(ref.read_text())["n"]["viral_covid"] == 6
    assert (tmp_path / "mean_sd_by_class.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["biomarkers", "--out", str(tmp_path)]) == 2  # a new run needs its manifest
    assert "--manifest is required" in capsys.readouterr().err
