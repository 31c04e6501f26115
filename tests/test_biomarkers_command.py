"""``python -m cxr_hub biomarkers`` on a synthetic manifest: files, values, AP supine exclusion, failures, --resume."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import synthetic_label_map, write_synthetic_manifest
from torch import nn

from cxr_hub import CXRPipeline, FCDenseNetForSemanticSegmentation
from cxr_hub.cli import main
from cxr_hub.evaluation.biomarker_statistics import is_ap_supine
from cxr_hub.evaluation.biomarker_study import CSV_COLUMNS, run_biomarkers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABEL4 = ["normal", "bacterial", "tuberculosis", "viral_covid"]


class PatternSegmenter(nn.Module):
    """Stands in for a trained segmentation model: logits spelling ``synthetic_label_map`` at any input size."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.calls = 0

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        self.calls += 1
        h, w = pixel_values.shape[-2:]
        lab = torch.from_numpy(synthetic_label_map(h, w).astype(np.int64))
        logits = 10.0 * nn.functional.one_hot(lab, 4).permute(2, 0, 1)[None].float()
        return SimpleNamespace(logits=logits.to(pixel_values.device))


def _set_views(manifest, views: dict[str, str]) -> None:
    """Rewrites the manifest's ``view`` column for the given ids."""
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["view"] = views.get(r["id"], r["view"])
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def tiny_seg_folder(tmp_path, tiny_fcdensenet_config):
    """A saved tiny random FC-DenseNet whose head favours the lungs (a random one may segment no lung at all)."""
    torch.manual_seed(0)
    seg = FCDenseNetForSemanticSegmentation(tiny_fcdensenet_config)
    with torch.no_grad():
        seg.classifier.weight.mul_(0.1)
        seg.classifier.bias.copy_(torch.tensor([0.0, 0.0, 4.0, 4.0]))
    seg.save_pretrained(tmp_path / "seg")
    return tmp_path / "seg"


def test_is_ap_supine():
    assert is_ap_supine("AP Supine") and is_ap_supine("ap supine") and is_ap_supine("SUPINE")
    assert not any(is_ap_supine(v) for v in ("AP", "PA", "PA?", ""))


def test_cli_end_to_end_on_a_saved_model(tmp_path, tiny_seg_folder, capsys):
    manifest = write_synthetic_manifest(tmp_path / "data", n=6)
    out = tmp_path / "out"
    code = main(
        ["biomarkers", "--manifest", str(manifest), "--task", "label4", "--segmentation", str(tiny_seg_folder),
         "--device", "cpu", "--out", str(out), "--reference-json", str(tmp_path / "ref" / "reference.json")]
    )  # fmt: skip
    assert code == 0
    assert "analysed 6 images" in capsys.readouterr().out
    # the app's per-class reference file: measured numbers for present classes, None for the absent one
    from cxr_hub.demo import load_biomarker_reference

    ref = load_biomarker_reference(tmp_path / "ref" / "reference.json")
    assert ref is not None and ref["classes"] == LABEL4 and ref["n"]["normal"] == 2 and ref["task"] == "label4"
    assert ref["values"]["lung_mean_intensity"]["tuberculosis"] is None
    assert " ± " in ref["values"]["lung_mean_intensity"]["normal"] and "6 labelled images" in ref["description"]
    for name in ("biomarkers.csv", "stats.json", "tables.md", "scatter_intensity.png", "mean_sd_by_class.png"):
        assert (out / name).is_file(), name
    for png in ("scatter_intensity.png", "mean_sd_by_class.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size < 200_000
    rows = _read_csv(out / "biomarkers.csv")
    assert len(rows) == 6 and tuple(rows[0]) == CSV_COLUMNS
    assert [r["id"] for r in rows] == [f"img{i}" for i in range(6)]
    assert "patient_id" not in rows[0]
    for r in rows:
        assert 0 <= float(r["lung_mean_intensity"]) <= 255 and float(r["lung_std_intensity"]) >= 0
    stats = json.loads((out / "stats.json").read_text())  # strict JSON: parse_constant would fail on NaN
    assert stats["classes"] == LABEL4 and stats["absent_classes"] == ["tuberculosis"]
    assert stats["all_views"]["n_by_class"] == {"normal": 2, "bacterial": 2, "tuberculosis": 0, "viral_covid": 2}
    tables = (out / "tables.md").read_text()
    for c in LABEL4:
        assert f"| {c} |" in tables
    assert "| tuberculosis | 0 | absent (no images)" in tables
    assert "Absent (no images in the selection, so no numbers): tuberculosis." in tables


def test_values_exclusion_and_failures(tmp_path, tiny_fcdensenet_config):
    manifest = write_synthetic_manifest(tmp_path / "data", n=6)
    # img1 (viral_covid) and img3 (normal) become AP supine; img5 (bacterial) cannot be read
    _set_views(manifest, {"img1": "AP Supine", "img3": "AP Supine"})
    (tmp_path / "data" / "images" / "img5.png").write_bytes(b"not an image")
    seg = PatternSegmenter(tiny_fcdensenet_config)
    report = run_biomarkers(manifest, tmp_path / "out", segmentation=seg, device="cpu", progress=False)

    assert [f["id"] for f in report["failures"]] == ["img5"]  # listed, not fatal
    rows = _read_csv(tmp_path / "out" / "biomarkers.csv")
    assert [r["id"] for r in rows] == ["img0", "img1", "img2", "img3", "img4"]
    # every value is the pipeline's own biomarker of that image (the definitions are tested in test_biomarkers.py)
    pipe = CXRPipeline(PatternSegmenter(tiny_fcdensenet_config), None, device="cpu")
    for r in rows:
        b = pipe.prepare(tmp_path / "data" / "images" / f"{r['id']}.png").biomarkers
        for column in ("cardiothoracic_ratio", "lung_mean_intensity", "lung_std_intensity", "lung_area_fraction"):
            assert float(r[column]) == pytest.approx(getattr(b, column), abs=1e-5), column
        assert int(r["heart_width_px"]) == b.heart_width_px > 0
        assert 0.1 < float(r["cardiothoracic_ratio"]) < 0.6
    assert {r["id"]: r["view"] for r in rows}["img1"] == "AP Supine"

    all_views, no_supine = report["all_views"], report["excluding_ap_supine"]
    assert all_views["n_by_class"] == {"normal": 2, "bacterial": 1, "tuberculosis": 0, "viral_covid": 2}
    assert no_supine["n_by_class"] == {"normal": 1, "bacterial": 1, "tuberculosis": 0, "viral_covid": 1}
    assert report["ap_supine_by_class"] == {"normal": 1, "bacterial": 0, "tuberculosis": 0, "viral_covid": 1}
    normal = [float(r["lung_mean_intensity"]) for r in rows if r["label"] == "normal"]
    s = all_views["biomarkers"]["lung_mean_intensity"]["per_class"]["normal"]
    assert s["mean"] == pytest.approx(np.mean(normal), abs=1e-5) and s["sd"] == pytest.approx(np.std(normal), abs=1e-5)
    assert all_views["biomarkers"]["cardiothoracic_ratio"]["per_class"]["tuberculosis"] == {"n": 0, "absent": True}
    assert len(all_views["biomarkers"]["lung_std_intensity"]["pairwise"]) == 3  # normal, bacterial, viral_covid
    tables = (tmp_path / "out" / "tables.md").read_text()
    assert "AP supine films removed" in tables and "normal 1, viral_covid 1" in tables
    assert "1 image(s) could not be analysed" in tables


def test_nan_ratio_without_heart_is_an_empty_cell(tmp_path, tiny_seg_folder):
    # the lung-favoured random model segments no heart: the ratio is missing, never a number
    manifest = write_synthetic_manifest(tmp_path / "data", n=3)
    report = run_biomarkers(manifest, tmp_path / "out", segmentation=tiny_seg_folder, device="cpu", progress=False)
    rows = _read_csv(tmp_path / "out" / "biomarkers.csv")
    no_heart = [r for r in rows if r["heart_width_px"] == "0"]
    assert no_heart, "the fixture model was expected to segment no heart on some image"
    assert all(r["cardiothoracic_ratio"] == "" and "no heart" in r["warnings"] for r in no_heart)
    summary = report["all_views"]["biomarkers"]["cardiothoracic_ratio"]["per_class"]
    assert sum(s.get("n_missing", 0) for s in summary.values()) == len(no_heart)


def test_resume_skips_finished_images_and_refuses_other_settings(tmp_path, tiny_fcdensenet_config, tiny_seg_folder):
    manifest = write_synthetic_manifest(tmp_path / "data", n=6)
    out = tmp_path / "out"
    first = PatternSegmenter(tiny_fcdensenet_config)
    run_biomarkers(manifest, out, segmentation=first, limit=3, device="cpu", progress=False)
    assert first.calls == 3 and len(_read_csv(out / "biomarkers.csv")) == 3

    second = PatternSegmenter(tiny_fcdensenet_config)
    report = run_biomarkers(manifest, out, segmentation=second, resume=True, device="cpu", progress=False)
    assert second.calls == 3 and report["n_resumed"] == 3 and report["n_images"] == 6
    assert [r["id"] for r in _read_csv(out / "biomarkers.csv")] == [f"img{i}" for i in range(6)]

    with pytest.raises(ValueError, match="other settings"):  # another model must not extend this CSV
        run_biomarkers(manifest, out, segmentation=tiny_seg_folder, resume=True, device="cpu", progress=False)
    # a CSV measured with the old cardiothoracic-ratio definition must not be extended either
    config_path = out / "run_config.json"
    config = json.loads(config_path.read_text())
    assert config["segmentation_arithmetic"] == "fp32"  # statistics from the network as trained
    config["cardiothoracic_ratio"] = "every labelled pixel"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cardiothoracic_ratio"):
        run_biomarkers(
            manifest,
            out,
            segmentation=PatternSegmenter(tiny_fcdensenet_config),
            resume=True,
            device="cpu",
            progress=False,
        )

    third = PatternSegmenter(tiny_fcdensenet_config)  # without --resume everything is recomputed
    run_biomarkers(manifest, out, segmentation=third, device="cpu", progress=False)
    assert third.calls == 6


def test_errors_say_what_to_do(tmp_path, capsys):
    manifest = write_synthetic_manifest(tmp_path / "data", n=2)
    nope, out = str(tmp_path / "nope"), str(tmp_path / "o")
    code = main(["biomarkers", "--manifest", str(manifest), "--segmentation", nope, "--out", out])
    assert code == 2 and "No segmentation model" in capsys.readouterr().err
    # a task without labels is refused before any model is loaded
    code = main(["biomarkers", "--manifest", str(manifest), "--task", "label3", "--segmentation", nope, "--out", out])
    assert code == 2 and "no images with a label3 label" in capsys.readouterr().err
