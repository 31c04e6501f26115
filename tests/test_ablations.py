"""The training ablations: training-set fraction, draws per epoch, the unmasked frame, the driver and its tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_cxr
from scipy import stats as sps
from test_pipeline import PatternSegmenter, _classifier, chest_labels
from test_train_classifier import _lung_segmenter, _manifest_with_split, synthetic_data

from cxr_hub import CXRPipeline, PatchClassifierConfig, PatchClassifierForImageClassification
from cxr_hub.evaluation.stats import mcnemar_exact
from training import ablations
from training import train_classifier as tc
from training.classifier_data import fraction_subset, global_frames, load_cached_data, write_cached

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------------- statistics


def test_mcnemar_exact_matches_the_binomial_test():
    # 8 films right by A only, 2 by B only: two-sided exact p = 2 * (C(10,8) + C(10,9) + C(10,10)) / 2^10
    a = [True] * 8 + [False] * 2 + [True] * 5 + [False] * 3
    b = [False] * 8 + [True] * 2 + [True] * 5 + [False] * 3
    out = mcnemar_exact(a, b)
    assert (out["n"], out["a_only"], out["b_only"]) == (18, 8, 2)
    assert out["p"] == pytest.approx(112 / 1024)
    assert out["p"] == pytest.approx(sps.binomtest(8, 10, 0.5).pvalue)
    assert out["stars"] == ""
    strong = mcnemar_exact([True] * 12, [False] * 12)
    assert strong["p"] == pytest.approx(2 * 0.5**12) and strong["stars"] == "***"
    assert mcnemar_exact([True, False], [True, False])["p"] == 1.0  # no discordant film
    with pytest.raises(ValueError, match="same images"):
        mcnemar_exact([True], [True, False])


# --------------------------------------------------------------------------------------------- training-set size


def _patient_data(per_class: dict[int, int], films_per_patient: int = 2):
    labels, patients = [], []
    for c, n_patients in per_class.items():
        for p in range(n_patients):
            labels += [c] * films_per_patient
            patients += [f"c{c}p{p}"] * films_per_patient
    data = synthetic_data(n=len(labels), size=64, labels=labels)
    data.patients = patients
    return data


def test_fraction_subset_is_patient_level_stratified_and_nested():
    data = _patient_data({0: 20, 1: 3, 3: 10})
    assert fraction_subset(data, 1.0) is data
    subsets = {f: fraction_subset(data, f, seed=0) for f in (0.1, 0.3, 0.5)}
    for f, sub in subsets.items():
        kept = set(sub.patients)
        # whole patients only: every film of a kept patient is kept
        assert len(sub) == sum(p in kept for p in data.patients) == 2 * len(kept)
        pairs = set(zip(sub.patients, sub.labels.tolist(), strict=True))
        per_class = {c: sum(lab == c for _, lab in pairs) for c in (0, 1, 3)}
        assert per_class == {c: max(1, int(np.ceil(f * n))) for c, n in {0: 20, 1: 3, 3: 10}.items()}
    assert set(subsets[0.1].patients) <= set(subsets[0.3].patients) <= set(subsets[0.5].patients)
    assert fraction_subset(data, 0.3, seed=0).ids == subsets[0.3].ids  # deterministic
    assert set(fraction_subset(data, 0.3, seed=1).patients) != set(subsets[0.3].patients)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            fraction_subset(data, bad)


def test_draws_per_epoch_sets_the_epoch_length():
    data = synthetic_data(n=6, size=256)
    for balanced in (True, False):
        config = tc.ClassifierTrainConfig(
            image_size=256, patch_size=64, input_size=64, draws_per_epoch=15, balanced_sampling=balanced
        )
        draws = tc.epoch_draws(tc.InputMaker(data, config, torch.device("cpu")), config, 1)
        assert len(draws) == 15
        if not balanced:  # whole passes over the data, then a partial one
            assert sorted(i for i, _ in draws[:12]) == sorted(list(range(6)) * 2)


def test_cli_validates_the_ablation_options():
    config, _ = tc.parse_config(["--train-fraction", "0.3", "--draws-per-epoch", "633", "--no-lung-masked"])
    assert (config.train_fraction, config.draws_per_epoch, config.lung_masked) == (0.3, 633, False)
    for bad in (["--train-fraction", "0"], ["--train-fraction", "1.2"], ["--draws-per-epoch", "0"]):
        with pytest.raises(SystemExit):
            tc.parse_config(bad)


# ----------------------------------------------------------------------------------------------------- lung mask


def test_unmasked_frames_in_the_cache_and_for_the_global_model(tmp_path):
    rng = np.random.default_rng(0)
    frame = rng.integers(1, 255, (64, 64), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 8:56] = True
    write_cached(tmp_path, "a", frame, mask)

    class Row:
        id, source, patient_id, view = "a", "s", "p", "PA"

        def label(self, task):
            return "normal"

    masked, _ = load_cached_data([Row()], "label4", tmp_path)
    whole, _ = load_cached_data([Row()], "label4", tmp_path, lung_mask=False)
    assert (masked.frames[0][~mask] == 0).all() and np.array_equal(masked.frames[0][mask], frame[mask])
    assert np.array_equal(whole.frames[0], frame) and np.array_equal(whole.masks[0], mask)
    g_masked, g_whole = global_frames(whole, 32), global_frames(whole, 32, lung_mask=False)
    assert (g_masked[0][:4] == 0).all() and (g_whole[0][:4] > 0).all()


def test_the_pipeline_feeds_an_unmasked_model_the_whole_frame(tiny_fcdensenet_config, tiny_classifier_config):
    image = synthetic_cxr(np.random.default_rng(0), 200, 180)
    seg = PatternSegmenter(tiny_fcdensenet_config, chest_labels)
    unmasked_config = PatchClassifierConfig(**{**tiny_classifier_config.to_dict(), "lung_masked": False})
    outside = {}
    for name, config in (("masked", tiny_classifier_config), ("unmasked", unmasked_config)):
        pipe = CXRPipeline(seg, _classifier(config), device="cpu", precision="fp32")
        prepared = pipe.prepare(image)
        zero = (0 - config.image_mean) / config.image_std
        outside[name] = prepared.frame[~prepared.frame_mask]
        result = pipe(image, k=6, seed=0)
        assert sum(result.votes.values()) == 6
        # patch centres come from the lungs either way
        centres = (result.patch_boxes_1024[:, :2] + result.patch_boxes_1024[:, 2:]) // 2
        assert prepared.frame_mask[centres[:, 1], centres[:, 0]].all()
    assert np.allclose(outside["masked"], zero)
    assert not np.allclose(outside["unmasked"], zero)


def test_lung_masked_round_trips_through_save_and_load(tmp_path, tiny_classifier_config):
    config = PatchClassifierConfig(**{**tiny_classifier_config.to_dict(), "lung_masked": False})
    PatchClassifierForImageClassification(config).save_pretrained(tmp_path / "m")
    assert PatchClassifierForImageClassification.from_pretrained(tmp_path / "m").config.lung_masked is False
    assert PatchClassifierConfig().lung_masked is True  # the paper's default, also for configs saved before


@pytest.mark.slow
def test_main_trains_on_a_fraction_without_the_mask(tmp_path, tiny_fcdensenet_config):
    seg_dir = _lung_segmenter(tmp_path, tiny_fcdensenet_config)
    manifest, _, _ = _manifest_with_split(tmp_path)
    out = tmp_path / "clf"
    code = tc.main(
        [
            "--data", str(manifest.parent), "--split-file", str(tmp_path / "split.json"), "--segmentation",
            str(seg_dir), "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"),
            "--out", str(out), "--image-size", "256", "--patch-size", "64", "--input-size", "64",
            "--num-patches", "3", "--val-patches", "2", "--epochs", "1", "--batch-size", "2", "--no-augment",
            "--amp", "none", "--device", "cpu", "--n-boot", "5", "--train-fraction", "0.34",
            "--draws-per-epoch", "4", "--no-lung-masked",
        ]
    )  # fmt: skip
    assert code == 0
    saved = json.loads((out / "training_config.json").read_text())
    # three training patients of three classes: stratification keeps one patient per class, so all six films
    assert saved["data"]["train_fraction"] == {"fraction": 0.34, "images": 6, "of": 6}
    assert sum(saved["data"]["counts"]["train"].values()) == 6
    assert saved["summary"]["steps_per_epoch"] == 2  # 4 draws, 1 image per step at batch 2 with 2 patches/image
    assert json.loads((out / "config.json").read_text())["lung_masked"] is False
    assert saved["config"]["lung_masked"] is False and "lung_mask" not in saved["config"]  # one name in both files
    test = saved["test"]
    assert set(test["predictions"]) == set(test["truth"]) and len(test["predictions"]) == test["n"]


# ------------------------------------------------------------------------------------------------ driver, tables


def test_every_run_has_one_budget_and_its_factor():
    names = [a.name for a in ablations.ABLATIONS]
    assert len(names) == len(set(names))
    for run in ablations.ABLATIONS:
        args = run.args()
        config, _ = tc.parse_config(args)
        assert (config.mode, config.patch_size, config.lung_masked) == (run.mode, run.patch_size, run.lung_mask)
        assert config.train_fraction == run.fraction and config.lr == 3e-4 and config.l1 == 0
        steps = ablations.FULL_TRAIN_IMAGES / (config.batch_size // config.patches_per_image)
        if run.mode == "global":
            steps = ablations.FULL_TRAIN_IMAGES / config.batch_size
        assert config.epochs * int(np.ceil(steps)) == 960  # equal optimiser steps
        if run.fraction < 1.0:
            assert config.draws_per_epoch == ablations.FULL_TRAIN_IMAGES
        assert config.run_dir == f"runs/ablation/{run.name}"
        assert config.segmentation == (
            ablations.SHIPPED_SEGMENTATION if run.segmentation == "fcdensenet103" else run.segmentation_model
        )


def test_a_segmentation_run_trains_its_network_first(tmp_path, monkeypatch):
    from training import train_segmentation as ts

    monkeypatch.setattr(ablations, "RUNS", tmp_path / "runs")
    run = ablations.BY_NAME["seg_unet"]
    seg_cmd, clf_cmd = run.commands()
    config, _ = ts.parse_config(seg_cmd[3:])
    assert (config.arch, config.epochs, config.max_minutes, config.num_threads) == ("unet", 8, 55.0, 1)
    assert config.out == str(tmp_path / "runs" / "seg-unet" / "export") == run.segmentation_model
    assert clf_cmd[2] == "training.train_classifier" and clf_cmd[clf_cmd.index("--segmentation") + 1] == config.out
    # once the network exists only the classifier runs; the reference uses the shipped network
    (tmp_path / "runs" / "seg-unet" / "export").mkdir(parents=True)
    (tmp_path / "runs" / "seg-unet" / "export" / "model.safetensors").write_bytes(b"x")
    assert [c[2] for c in run.commands()] == ["training.train_classifier"]
    assert "--segmentation" not in ablations.BY_NAME["patch224"].commands()[0]


def _fake_run(root: Path, name: str, correct: list[bool], accuracy_ci=(0.5, 0.7)) -> None:
    run = ablations.BY_NAME[name]
    ids = [f"f{i}" for i in range(len(correct))]
    truth = {i: "normal" for i in ids}
    preds = {i: ("normal" if ok else "viral_covid") for i, ok in zip(ids, correct, strict=True)}
    acc = float(np.mean(correct))
    test = {
        "n": len(ids),
        "k": 50 if run.mode == "patch" else 1,
        "accuracy": acc,
        "f1": acc / 2,
        "ci95": {"accuracy": list(accuracy_ci), "f1": [0.2, 0.4]},
        "per_class": {"normal": {"n": len(ids), "sensitivity": acc}, "tuberculosis": {"n": 0, "sensitivity": None}},
        "accuracy_by_source": {"cohen": {"n": len(ids), "accuracy": acc}},
        "predictions": preds,
        "truth": truth,
    }
    summary = {"best_epoch": 3, "epochs_run": 12, "steps_per_epoch": 80, "minutes": 10.0}
    data = {"counts": {"train": {"normal": round(633 * run.fraction), "bacterial": 0}}}
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "test_metrics.json").write_text(json.dumps(test))
    (folder / "training_config.json").write_text(json.dumps({"test": test, "summary": summary, "data": data}))


def test_collect_writes_tables_paired_tests_and_plots(tmp_path, monkeypatch):
    monkeypatch.setattr(ablations, "RUNS", tmp_path / "runs")
    reference = [True] * 15 + [False] * 5
    _fake_run(tmp_path / "runs", "patch224", reference)
    _fake_run(tmp_path / "runs", "patch448", [False] * 12 + [True] * 3 + [False] * 5)  # 12 films lost
    _fake_run(tmp_path / "runs", "patch10", reference)
    _fake_run(tmp_path / "runs", "global100", reference)
    _fake_run(tmp_path / "runs", "global10", [True] * 10 + [False] * 10)
    _fake_run(tmp_path / "runs", "seg_unet", [True] * 14 + [False] * 6)
    seg_export = tmp_path / "runs" / "seg-unet" / "export"
    seg_export.mkdir(parents=True)
    seg_summary = {
        "epochs_run": 8,
        "best_epoch": 7,
        "best_validation": {"jaccard": {"lung": {"mean": 0.9312}, "heart": {"mean": 0.8123}}},
    }
    (seg_export / "training_config.json").write_text(
        json.dumps({"config": {"arch": "unet", "max_minutes": 55.0, "num_threads": 1}, "summary": seg_summary})
    )
    report = ablations.collect(tmp_path / "out", tmp_path / "fig")
    names = {"patch224", "patch448", "patch10", "global100", "global10", "seg_unet"}
    assert {r["name"] for r in report["results"]} == names
    assert "nomask" in report["missing"]
    paired = report["paired_vs_reference"]
    assert (paired["patch448"]["a_only"], paired["patch448"]["b_only"]) == (0, 12)
    assert paired["patch448"]["p"] == pytest.approx(2 * 0.5**12)
    assert paired["global10"]["b_only"] == 5 and "patch224" not in paired
    tables = (tmp_path / "out" / "tables.md").read_text()
    assert "### Patch size (Table XVII)" in tables and "### Training-set size" in tables
    assert "patch 448 | 633 | 15.0 [50.0, 70.0]" in tables
    assert "| 15.0 / — / — |" in tables  # accuracy per source; sources without films are dashes
    assert "0 vs 12, p = 0.00049***" in tables
    assert "global, 10 % of training patients | 63 | 50.0" in tables
    assert "Not finished: " in tables and "nomask" in tables
    assert "### Segmentation network feeding the classifier (Table XIV)" in tables
    assert "U-Net masks (8 epochs, JSRT val. Jaccard lung 0.931 / heart 0.812)" in tables
    assert paired["seg_unet"]["a_only"] + paired["seg_unet"]["b_only"] >= 1
    assert (tmp_path / "fig" / "ablation_training_size.png").stat().st_size > 1000
    assert (tmp_path / "fig" / "ablation_patch_size_mask.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "ablations.json").read_text())["plots"] == {
        "train_fraction": True,
        "settings": True,
        "segmentation": True,
    }
    assert (tmp_path / "fig" / "ablation_segmentation.png").stat().st_size > 1000


def test_run_skips_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ablations, "RUNS", tmp_path / "runs")
    _fake_run(tmp_path / "runs", "patch224", [True, False])
    assert ablations.main(["run", "--only", "patch224"]) == 0
    assert "every requested run has finished" in capsys.readouterr().out
    assert ablations.main(["run", "--only", "patch224", "patch112", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would run:" in out and "--patch-size 112" in out and "--patch-size 224" not in out
