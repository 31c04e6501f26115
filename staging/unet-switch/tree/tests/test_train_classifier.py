"""The classifier training loop, its data cache and the device pack, on tiny models and synthetic data."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_synthetic_manifest

import cxr_hub.patches
from cxr_hub import (
    CXRPipeline,
    FCDenseNetForSemanticSegmentation,
    PatchClassifierConfig,
    PatchClassifierForImageClassification,
    image_processor_for,
)
from cxr_hub.manifest import read_manifest
from training import train_classifier as tc
from training.classifier_data import (
    ClassifierData,
    build_cache,
    hold_out_source_normals,
    load_cached_data,
    load_pack,
    masked_frame,
    read_cached,
    require_segmentation,
    write_cached,
)
from training.data import manifest_fingerprint
from training.pack_classifier_data import write_pack

LABEL4 = ["normal", "bacterial", "tuberculosis", "viral_covid"]
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The training options that are model config parameters (one name for each idea, #17).
MODEL_OPTIONS = {
    "label_set",
    "mode",
    "backbone",
    "image_size",
    "patch_size",
    "input_size",
    "num_patches",
    "patch_center_margin",
    "lung_masked",
    "gamma",
    "do_equalize",
    "image_mean",
    "image_std",
    "drop_rate",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ellipses(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return (((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1) | (
        ((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    )


def synthetic_data(n: int = 6, size: int = 256, seed: int = 0, labels: list[int] | None = None) -> ClassifierData:
    """Masked uint8 frames whose texture depends on the class; no tuberculosis (index 2) unless asked."""
    rng = np.random.default_rng(seed)
    labels = labels if labels is not None else [[0, 1, 3][i % 3] for i in range(n)]
    mask = _ellipses(size)
    frames = []
    for lab in labels:
        base = 60 + 50 * lab + rng.normal(0, 20, (size, size))
        frames.append(masked_frame(np.clip(base, 0, 255).astype(np.uint8), mask))
    return ClassifierData(
        ids=[f"img{i}" for i in range(len(labels))],
        labels=np.asarray(labels, dtype=np.int64),
        class_names=list(LABEL4),
        sources=["alpha" if i % 2 == 0 else "beta" for i in range(len(labels))],
        patients=[f"p{i // 2}" for i in range(len(labels))],
        frames=np.stack(frames),
        masks=np.stack([mask] * len(labels)),
    )


def _config(tmp_path, **kw) -> tc.ClassifierTrainConfig:
    base = dict(
        image_size=256,
        patch_size=64,
        input_size=64,
        num_patches=4,
        val_patches=3,
        batch_size=4,
        lr=1e-3,
        epochs=3,
        max_steps_per_epoch=1,
        augment=False,
        overfit_one_batch=True,
        amp="none",
        device="cpu",
        run_dir=str(tmp_path / "run"),
        out=str(tmp_path / "out"),
    )
    return tc.ClassifierTrainConfig(**(base | kw))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["patch", "global"])
def test_loss_goes_down_and_checkpoints(tmp_path, mode):
    data = synthetic_data()
    summary = tc.train(_config(tmp_path, mode=mode), data, data.subset([0, 1, 2]))
    losses = [h["train_loss"] for h in summary["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert all(h["train_l1"] > 0 for h in summary["history"])  # the L1 penalty is part of the loss
    assert summary["trained_classes"] == ["normal", "bacterial", "viral_covid"]
    assert summary["untrained_classes"] == ["tuberculosis"]
    best = PatchClassifierForImageClassification.from_pretrained(tmp_path / "run" / "best")
    assert best.config.mode == mode and best.config.trained_classes == ["normal", "bacterial", "viral_covid"]
    assert best.config.id2label == dict(enumerate(LABEL4))  # the class stays in the head
    assert (tmp_path / "run" / "last" / "training_state.pt").is_file()
    json.dumps(summary)  # saved beside the model: it must serialise


@pytest.mark.slow
def test_training_resumes(tmp_path):
    data = synthetic_data()
    kw = dict(overfit_one_batch=False, augment=True)
    first = tc.train(_config(tmp_path, epochs=1, **kw), data, data.subset([0, 1, 2]))
    resumed = tc.train(_config(tmp_path, epochs=2, **kw), data, data.subset([0, 1, 2]), resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == first["history"][0]
    # the summary's minutes cover both runs (the first up to its last checkpoint); this run's alone are kept apart
    first_epochs = sum(h["seconds"] for h in first["history"]) / 60
    assert resumed["minutes_this_run"] + first_epochs <= resumed["minutes"] + 0.01
    assert resumed["minutes"] <= first["minutes"] + resumed["minutes_this_run"] + 0.01
    with pytest.raises(SystemExit, match="nothing to resume"):
        tc.train(_config(tmp_path / "other", epochs=1), data, data, resume=True)


@pytest.mark.slow
def test_select_by_loss_or_the_last_epoch(tmp_path):
    data = synthetic_data()
    val = data.subset([0, 1, 2])
    kw = dict(epochs=3, overfit_one_batch=False, augment=True)
    summary = tc.train(_config(tmp_path, select="loss", **kw), data, val)
    losses = [h["val_loss"] for h in summary["history"]]
    assert summary["selected_by"] == "loss" and summary["best_epoch"] == 1 + int(np.argmin(losses))
    # best/ holds only the chosen epoch: the other criterion cannot be applied afterwards
    with pytest.raises(SystemExit, match="chosen by loss"):
        tc.train(_config(tmp_path, select="macro_f1", **kw), data, val, resume=True)
    # the final epoch can: last/ is always kept
    again = tc.train(_config(tmp_path, select="last", **kw), data, val, resume=True)
    assert again["best_epoch"] == 3 and again["best_validation"] is not None and len(again["history"]) == 3
    with pytest.raises(SystemExit):
        tc.parse_config(["--select", "best"])


def test_cosine_schedule_decays_after_its_start_and_resumes_on_the_same_rates(tmp_path):
    config = tc.ClassifierTrainConfig(lr=3e-4, epochs=100, lr_schedule="cosine", lr_decay_start=40)
    rates = [tc.epoch_lr(config, e) for e in range(1, 101)]
    assert rates[:40] == [3e-4] * 40  # constant up to the start
    assert all(a > b for a, b in itertools.pairwise(rates[39:]))  # then strictly down
    assert rates[-1] == pytest.approx(3e-6) and rates[69] == pytest.approx((3e-4 + 3e-6) / 2)
    assert {tc.epoch_lr(tc.ClassifierTrainConfig(lr=1e-3), e) for e in (1, 50, 100)} == {1e-3}
    # the optimiser runs each epoch at the schedule's rate, also after a resume (its saved state had the old rate)
    data = synthetic_data()
    kw = dict(lr=1e-3, lr_schedule="cosine", lr_decay_start=1, lr_min_factor=0.1)
    tc.train(_config(tmp_path, epochs=1, **kw), data, data.subset([0, 1, 2]))
    resumed = tc.train(_config(tmp_path, epochs=3, **kw), data, data.subset([0, 1, 2]), resume=True)
    assert [h["lr"] for h in resumed["history"]] == pytest.approx([1e-3, 5.5e-4, 1e-4])
    for bad in (["--lr-schedule", "step"], ["--lr-decay-start", "-1"], ["--lr-min-factor", "2"]):
        with pytest.raises(SystemExit):
            tc.parse_config(bad)


@pytest.mark.slow
def test_training_and_validation_use_the_pipeline_sampler(tmp_path, monkeypatch):
    calls = {"sample": [], "crop": 0, "vote": 0}
    sample, crop, vote = cxr_hub.patches.sample_patch_boxes, cxr_hub.patches.crop_patches, cxr_hub.patches.majority_vote

    def spy_sample(mask, k, patch_size, rng=None, mode="joint"):
        calls["sample"].append((mask.shape, k, patch_size))
        return sample(mask, k, patch_size, rng, mode=mode)

    def spy_crop(*a, **kw):
        calls["crop"] += 1
        return crop(*a, **kw)

    def spy_vote(*a, **kw):
        calls["vote"] += 1
        return vote(*a, **kw)

    monkeypatch.setattr(cxr_hub.patches, "sample_patch_boxes", spy_sample)
    monkeypatch.setattr(cxr_hub.patches, "crop_patches", spy_crop)
    monkeypatch.setattr(cxr_hub.patches, "majority_vote", spy_vote)
    data = synthetic_data()
    tc.train(_config(tmp_path, epochs=1, overfit_one_batch=False), data, data.subset([0, 1]))
    assert calls["sample"] and all(shape == (256, 256) and p == 64 for shape, _, p in calls["sample"])
    assert [k for _, k, _ in calls["sample"][-2:]] == [3, 3]  # validation: one call per image, K = val_patches
    assert calls["crop"] >= 4 + 2 and calls["vote"] == 2  # 4 training draws (batch 4, P = 1) + 2 validation images


def test_epoch_draws_are_balanced_deterministic_and_in_the_lung():
    data = synthetic_data(n=8, labels=[0, 0, 0, 0, 0, 0, 1, 3])
    config = tc.ClassifierTrainConfig(image_size=256, patch_size=64, input_size=64, patches_per_image=2)
    maker = tc.InputMaker(data, config, torch.device("cpu"))
    a, b = tc.epoch_draws(maker, config, 1), tc.epoch_draws(maker, config, 1)
    assert [i for i, _ in a] == [i for i, _ in b]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
    assert [i for i, _ in tc.epoch_draws(maker, config, 2)] != [i for i, _ in a]
    assert len(a) == 8 and all(boxes.shape == (2, 4) for _, boxes in a)
    centres = np.concatenate([(bx[:, :2] + 32) for _, bx in a])
    assert data.masks[0][centres[:, 1], centres[:, 0]].all()
    p = tc.class_balanced_probabilities(data.labels, 4)
    np.testing.assert_allclose(p, [1 / 18] * 6 + [1 / 3, 1 / 3])
    x, y = tc.make_batch(maker, a[:3], None)
    assert x.shape == (6, 1, 64, 64) and y.tolist() == [int(data.labels[i]) for i, _ in a[:3] for _ in range(2)]
    zero = (0 - config.image_mean) / config.image_std
    assert torch.isclose(x.min(), torch.tensor(zero)) or x.min() >= zero  # outside the lung: 0 gray, normalised


def test_class_and_source_balanced_sampling_weighs_each_source_of_a_class_alike():
    labels = np.array([0, 0, 0, 0, 1, 1])
    sources = ["nih", "nih", "nih", "jsrt", "cohen", "cohen"]
    p = tc.class_source_balanced_probabilities(labels, sources, 4)
    # class 0: nih (3 films) and jsrt (1) each 1/4 of the draws; class 1: cohen 1/2
    np.testing.assert_allclose(p, [1 / 12, 1 / 12, 1 / 12, 1 / 4, 1 / 4, 1 / 4])
    data = synthetic_data(n=8, labels=[0, 0, 0, 0, 0, 0, 1, 3])
    config = tc.ClassifierTrainConfig(
        image_size=256, patch_size=64, input_size=64, source_balanced=True, draws_per_epoch=4000
    )
    draws = tc.epoch_draws(tc.InputMaker(data, config, torch.device("cpu")), config, 1)
    normal = [data.sources[i] for i, _ in draws if data.labels[i] == 0]
    # the normals of the two synthetic sources are drawn equally often (3 films each here, so as class-balanced)
    assert abs(normal.count("alpha") - normal.count("beta")) < 0.1 * len(normal)


def test_scanner_augment_changes_only_chosen_patches_and_keeps_the_outside_black():
    rng = np.random.default_rng(0)
    x = torch.rand(6, 1, 64, 64)
    inside = torch.zeros(6, 1, 64, 64, dtype=torch.bool)
    inside[:, :, 8:56, 8:56] = True
    x = torch.where(inside, x, torch.zeros_like(x))
    out = tc.scanner_augment(x, inside, rng, share=1.0)
    assert out.shape == x.shape and (out[~inside] == 0).all() and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)
    assert torch.equal(tc.scanner_augment(x, inside, np.random.default_rng(0), share=0.0), x)
    # the maker cuts the masks of the same boxes as the patches
    data = synthetic_data(n=3)
    config = tc.ClassifierTrainConfig(image_size=256, patch_size=64, input_size=64, scanner_augment=1.0)
    maker = tc.InputMaker(data, config, torch.device("cpu"))
    boxes = maker.patch_boxes(0, 2, np.random.default_rng(1))
    masks = maker.patch_masks(0, boxes)
    assert masks.dtype == torch.bool and masks.shape == (2, 1, 64, 64)
    assert torch.equal(masks, maker.patches01(0, boxes) > 0) or masks.sum() >= (maker.patches01(0, boxes) > 0).sum()
    x_aug, _ = tc.make_batch(maker, [(0, boxes)], np.random.default_rng(2))
    zero = (0 - config.image_mean) / config.image_std
    assert torch.allclose(x_aug[~masks], torch.tensor(zero))  # outside the lung still black after the augmentation


def test_hold_out_source_normals_takes_that_sources_normals_out_of_every_split():
    data = synthetic_data(n=12)  # labels cycle normal, bacterial, viral_covid; sources alternate alpha, beta
    splits = {"train": data.subset(range(6)), "val": data.subset([6, 7, 8]), "test": data.subset([9, 10, 11])}
    kept, held = hold_out_source_normals(splits, "alpha")
    assert held.label_names() == ["normal"] * len(held) and set(held.sources) == {"alpha"}
    expected = [i for i in range(12) if data.labels[i] == 0 and data.sources[i] == "alpha"]
    assert held.ids == [f"img{i}" for i in expected] and len(held) == 2  # img0 (train) and img6 (val)
    for name, part in kept.items():
        assert not set(part.ids) & set(held.ids) and len(part) + sum(i in splits[name].ids for i in held.ids) == len(
            splits[name]
        )
    np.testing.assert_array_equal(held.frames[1], data.frames[6])
    assert "beta" in {
        s for s, y in zip(kept["train"].sources, kept["train"].label_names(), strict=True) if y == "normal"
    }
    with pytest.raises(ValueError, match="sources with normal films"):
        hold_out_source_normals(splits, "gamma")


def test_patch_center_margin_reaches_the_sampler_and_the_model_config(tmp_path):
    data = synthetic_data(n=3)
    config = _config(tmp_path, patch_center_margin=0.25)  # of a 64 px patch: 16 px
    maker = tc.InputMaker(data, config, torch.device("cpu"))
    boxes = maker.patch_boxes(0, 300, np.random.default_rng(0))
    centres = boxes[:, :2] + 32  # boxes of the centred 64 px patches (none is shifted: the lungs are far from edges)
    region = cxr_hub.patches.patch_center_region(data.masks[0], 16)
    assert region[centres[:, 1], centres[:, 0]].all() and region.sum() < data.masks[0].sum()
    model = tc.build_model(config, ["normal", "bacterial", "viral_covid"])
    assert model.config.patch_center_margin == 0.25 and model.config.center_margin_pixels() == 16
    with pytest.raises(SystemExit, match="patch-center-margin"):
        tc.parse_config(["--patch-center-margin", "0.7"])


def test_jitter_keeps_the_outside_at_zero_and_l1_params():
    x = torch.rand(4, 1, 8, 8)
    x[:, :, :2] = 0
    out = tc.jitter(x, np.random.default_rng(0))
    assert (out[:, :, :2] == 0).all() and out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)
    model = tc.build_model(tc.ClassifierTrainConfig(image_size=256, patch_size=64, input_size=64), ["normal"])
    assert model.config.trained_classes == ["normal"]
    params = tc.l1_parameters(model)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(params) == len(convs) and all(p.ndim > 1 for p in params)  # weights only: no bias, no batch norm


def test_pretrained_imagenet_is_loaded_or_explained(monkeypatch):
    config = tc.ClassifierTrainConfig(image_size=256, patch_size=64, input_size=64, pretrained="imagenet")
    loaded = []
    monkeypatch.setattr(PatchClassifierForImageClassification, "load_imagenet_weights", lambda self: loaded.append(1))
    tc.build_model(config, ["normal"])
    tc.build_model(config, ["normal"], load_pretrained=False)  # resuming: the checkpoint replaces them
    assert loaded == [1]

    def offline(self):
        raise OSError("no internet")

    monkeypatch.setattr(PatchClassifierForImageClassification, "load_imagenet_weights", offline)
    with pytest.raises(SystemExit, match="--pretrained none"):
        tc.build_model(config, ["normal"])


def test_cli_overrides_and_validation(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 7\nlr: 0.001\n")
    config, resume = tc.parse_config(["--config", str(cfg), "--lr", "0.002", "--mode", "global", "--no-augment"])
    assert (config.epochs, config.lr, config.mode, config.augment, resume) == (7, 0.002, "global", False, False)
    assert str(config.resolved_out()) == "models/cxr-global-resnet18"
    assert str(tc.parse_config(["--label-set", "label3"])[0].resolved_out()) == "models/cxr-patch-resnet18-covidx"
    assert tc.parse_config([])[0].resolved_out().name == "cxr-patch-resnet18"
    for bad in (["--label-set", "label5"], ["--pretrained", "places365"], ["--mode", "tiles"]):
        with pytest.raises(SystemExit):
            tc.parse_config(bad)


def test_model_options_have_the_model_configs_names_types_and_defaults():
    config = tc.ClassifierTrainConfig()
    options = config.model_options()
    assert set(options) == MODEL_OPTIONS
    model_default = PatchClassifierConfig()
    parameters = inspect.signature(PatchClassifierConfig.__init__).parameters
    types = {f.name: f.type for f in dataclasses.fields(config)}
    for name, value in options.items():
        assert value == parameters[name].default == getattr(model_default, name), name
        assert types[name] == parameters[name].annotation, name  # the CLI parses what the model config takes


def test_build_model_config_holds_the_training_options():
    changed = dict(
        label_set="label3",
        mode="global",
        image_size=512,
        patch_size=112,
        input_size=128,
        num_patches=7,
        patch_center_margin=0.25,
        lung_masked=False,
        gamma=0.7,
        do_equalize=False,
        image_mean=0.4,
        image_std=0.3,
        drop_rate=0.2,
    )
    config = tc.ClassifierTrainConfig(**changed)
    model_config = tc.build_model(config, ["normal", "covid"]).config
    for name, value in config.model_options().items():
        assert getattr(model_config, name) == value, name
    assert model_config.trained_classes == ["normal", "covid"] and list(model_config.label2id) == [
        "normal",
        "pneumonia",
        "covid",
    ]
    defaults = tc.build_model(tc.ClassifierTrainConfig(), ["normal"]).config.to_dict()
    assert defaults == PatchClassifierConfig(trained_classes=["normal"]).to_dict()


def test_old_option_names_still_work_with_a_deprecation_warning(tmp_path):
    with pytest.warns(DeprecationWarning) as caught:
        config, _ = tc.parse_config(["--task", "label3", "--no-lung-mask"])
    assert (config.label_set, config.lung_masked) == ("label3", False)
    assert {str(w.message) for w in caught} == {
        "--task is deprecated: use --label-set",
        "--[no-]lung-mask is deprecated: use --[no-]lung-masked",
    }
    assert all(w.filename == tc.__file__ for w in caught)  # blamed on parse_config: python -m shows it
    old = tmp_path / "old.yaml"
    old.write_text("task: label3\nlung_mask: false\n")
    with pytest.warns(DeprecationWarning) as caught:
        config, _ = tc.parse_config(["--config", str(old)])
    assert (config.label_set, config.lung_masked) == ("label3", False)
    assert {str(w.message) for w in caught} == {
        f"{old}: 'task' is deprecated: use 'label_set'",
        f"{old}: 'lung_mask' is deprecated: use 'lung_masked'",
    }
    with pytest.warns(DeprecationWarning) as caught:  # the command line overrides the file, whatever the names
        config, _ = tc.parse_config(["--config", str(old), "--label-set", "label4", "--lung-masked"])
    assert (config.label_set, config.lung_masked) == ("label4", True) and len(caught) == 2
    with pytest.warns(DeprecationWarning, match="--task"):  # both names, one value: fine
        assert tc.parse_config(["--task", "label3", "--label-set", "label3"])[0].label_set == "label3"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current names never warn
        config, _ = tc.parse_config(["--label-set", "label3", "--no-lung-masked"])
    assert (config.label_set, config.lung_masked) == ("label3", False)


def test_old_and_new_names_that_disagree_are_an_error(tmp_path):
    for argv in (["--task", "label3", "--label-set", "label4"], ["--no-lung-mask", "--lung-masked"]):
        with pytest.raises(SystemExit, match=r"deprecated name of .* disagree"):
            tc.parse_config(argv)
    both = tmp_path / "both.yaml"
    both.write_text("task: label3\nlabel_set: label4\n")
    with pytest.raises(SystemExit, match=r"both\.yaml: 'task' is the deprecated name of 'label_set'"):
        tc.parse_config(["--config", str(both)])


def test_saved_configs_are_read_under_old_and_new_names():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a saved file is a record, not a spelling to fix: no warning
        old = tc.ClassifierTrainConfig.from_saved({"task": "label3", "lung_mask": False, "patch_size": 112})
    new = tc.ClassifierTrainConfig.from_saved(dataclasses.asdict(old))
    assert old == new and (new.label_set, new.lung_masked, new.patch_size) == ("label3", False, 112)
    with pytest.raises(ValueError, match="disagree"):
        tc.ClassifierTrainConfig.from_saved({"task": "label3", "label_set": "label4"})
    with pytest.raises(ValueError, match="no_such_option"):
        tc.ClassifierTrainConfig.from_saved({"no_such_option": 1})


@pytest.mark.parametrize("name", ["cxr-patch-resnet18", "cxr-global-resnet18", "cxr-patch-resnet18-covidx"])
def test_shipped_training_configs_rebuild_the_shipped_model_configs(name):
    """The shipped models' ``training_config.json`` files keep their old keys (``task``); read, they give back the
    options of the shipped ``config.json``."""
    folder = REPO_ROOT / "models" / name
    if not (folder / "training_config.json").is_file():
        pytest.skip(f"{name} absent")
    saved = json.loads((folder / "training_config.json").read_text())["config"]
    assert "task" in saved and "label_set" not in saved  # the files as shipped: not rewritten
    config = tc.ClassifierTrainConfig.from_saved(saved)
    shipped = PatchClassifierConfig.from_json_file(folder / "config.json")
    assert config.model_options() == {k: getattr(shipped, k) for k in MODEL_OPTIONS}


# ------------------------------------------------------------------------------------------------- cache and pack


def _lung_segmenter(tmp_path, tiny_fcdensenet_config):
    """A saved tiny FC-DenseNet that labels lung everywhere it is unsure (random weights, strong lung bias)."""
    torch.manual_seed(0)
    seg = FCDenseNetForSemanticSegmentation(tiny_fcdensenet_config)
    with torch.no_grad():
        seg.classifier.weight.mul_(0.1)
        seg.classifier.bias.copy_(torch.tensor([0.0, 0.0, 4.0, 4.0]))
    seg.save_pretrained(tmp_path / "seg")
    return tmp_path / "seg"


def _manifest_with_split(tmp_path):
    manifest = write_synthetic_manifest(tmp_path / "data", n=9)
    rows = read_manifest(manifest)
    split = {r.id: ("train" if r.patient_id in ("p0", "p1", "p2") else "val" if r.patient_id == "p3" else "test")
             for r in rows}  # fmt: skip
    payload = {"seed": 0, "manifest_fingerprint": manifest_fingerprint(rows), "splits": {"classification": split}}
    (tmp_path / "split.json").write_text(json.dumps(payload))
    return manifest, rows, split


def test_missing_segmentation_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_segmentation"):
        require_segmentation(tmp_path / "nope")


@pytest.mark.slow
def test_cached_frames_equal_the_pipeline_frames(tmp_path, tiny_fcdensenet_config, tiny_classifier_config):
    seg_dir = _lung_segmenter(tmp_path, tiny_fcdensenet_config)
    _, rows, _ = _manifest_with_split(tmp_path)
    result = build_cache(rows[:2], seg_dir, tmp_path / "cache", image_size=256, progress=False)
    assert result.built == 2 and not result.failures
    again = build_cache(rows[:2], seg_dir, tmp_path / "cache", image_size=256, progress=False)
    assert again.built == 0 and again.reused == 2 and again.folder == result.folder
    seg = FCDenseNetForSemanticSegmentation.from_pretrained(seg_dir)
    pipe = CXRPipeline(seg, PatchClassifierForImageClassification(tiny_classifier_config), device="cpu")
    cfg = tiny_classifier_config
    for row in rows[:2]:
        prepared = pipe.prepare(row.image)
        frame, mask = read_cached(result.folder, row.id)
        np.testing.assert_array_equal(mask, prepared.frame_mask)  # exactly the pipeline's mask
        train_input = image_processor_for(cfg).normalize(masked_frame(frame, mask).astype(np.float32))
        # uint8 rounding: at most half a gray level
        np.testing.assert_allclose(train_input, prepared.frame, atol=0.5 / 255 / cfg.image_std + 1e-5)
    data, missing = load_cached_data(rows[:3], "label4", result.folder)
    assert len(data) == 2 and missing == [rows[2].id]


def test_pack_round_trip(tmp_path):
    manifest = write_synthetic_manifest(tmp_path / "data", n=4)
    rows = read_manifest(manifest)
    rng = np.random.default_rng(0)
    cache = tmp_path / "cache"
    cache.mkdir()
    mask = _ellipses(128)
    frames = {}
    for r in rows:
        frames[r.id] = np.clip(rng.normal(120, 30, (128, 128)), 0, 255).astype(np.uint8)
        write_cached(cache, r.id, frames[r.id], mask)
    split = {r.id: s for r, s in zip(rows, ["train", "train", "val", "test"], strict=True)}
    meta = {"image_size": 128, "do_equalize": True, "gamma": 0.5, "segmentation_fingerprint": "abc"}
    pack = write_pack(rows, split, cache, tmp_path / "pack", max_mb=1.0, meta=meta, progress=False)
    assert pack["total_bytes"] <= 2**20 and 40 <= pack["jpeg_quality"] <= 95
    splits, read_meta = load_pack(tmp_path / "pack", "label4")
    assert read_meta["segmentation_fingerprint"] == "abc"
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "val": 1, "test": 1}
    for data in splits.values():
        for i, image_id in enumerate(data.ids):
            np.testing.assert_array_equal(data.masks[i], mask)  # masks are lossless
            assert (data.frames[i][~mask] == 0).all()  # re-masked: no JPEG ringing outside the lungs
            diff = np.abs(data.frames[i].astype(int) - masked_frame(frames[image_id], mask).astype(int))[mask]
            assert diff.mean() < 12, diff.mean()  # JPEG of noise: lossy, but close
    with pytest.raises(ValueError, match="max-mb"):
        write_pack(rows, split, cache, tmp_path / "pack2", max_mb=0.01, meta=meta, progress=False)


@pytest.mark.slow
def test_main_end_to_end_from_data_and_from_pack(tmp_path, tiny_fcdensenet_config):
    seg_dir = _lung_segmenter(tmp_path, tiny_fcdensenet_config)
    manifest, rows, split = _manifest_with_split(tmp_path)
    common = [
        "--image-size", "256", "--patch-size", "64", "--input-size", "64", "--num-patches", "4",
        "--val-patches", "2", "--epochs", "1", "--batch-size", "2", "--no-augment", "--amp", "none",
        "--device", "cpu", "--n-boot", "20", "--lr", "1e-3",
    ]  # fmt: skip
    out = tmp_path / "models" / "clf"
    code = tc.main(
        [
            "--data", str(manifest.parent), "--split-file", str(tmp_path / "split.json"), "--segmentation",
            str(seg_dir), "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"),
            "--out", str(out), *common,
        ]
    )  # fmt: skip
    assert code == 0
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "training_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["trained_classes"] == ["normal", "bacterial", "viral_covid"] and config["num_patches"] == 4
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == 256
    saved = json.loads((out / "training_config.json").read_text())
    assert saved["data"]["counts"]["train"] == {"normal": 2, "bacterial": 2, "tuberculosis": 0, "viral_covid": 2}
    assert saved["test"]["n"] == 1 and saved["test"]["k"] == 4 and "ci95" in saved["test"]
    card = (out / "README.md").read_text()
    assert "from scratch" in card.lower() and "tuberculosis" in card and "not for clinical use" in card.lower()
    assert "accuracy_source_" in card  # accuracy per source in the card's metrics
    assert (out / "model.safetensors").stat().st_size < 25 * 2**20  # fp16 ResNet-18
    exported = PatchClassifierForImageClassification.from_pretrained(out).eval()
    best = PatchClassifierForImageClassification.from_pretrained(tmp_path / "run" / "best").eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x).logits, best(x).logits, atol=2e-2, rtol=2e-2)  # fp16 storage

    # the same data through a pack, as on a GPU machine without the shared data
    cache_folder = next((tmp_path / "cache" / "classifier").iterdir())
    meta = json.loads((cache_folder / "meta.json").read_text())
    write_pack(rows, split, cache_folder, tmp_path / "pack", max_mb=2.0, meta=meta, progress=False)
    out2 = tmp_path / "models" / "clf2"
    code = tc.main(
        ["--pack", str(tmp_path / "pack"), "--run-dir", str(tmp_path / "run2"), "--out", str(out2), "--no-test-eval",
         *common]
    )  # fmt: skip
    assert code == 0
    saved2 = json.loads((out2 / "training_config.json").read_text())
    assert saved2["data"]["counts"] == saved["data"]["counts"] and "pack" in saved2["data"]["source"]
    assert saved2["test"] is None

    # a finished run re-exported from its final epoch (--resume --select last): no training, last/ is exported
    out3 = tmp_path / "models" / "clf3"
    code = tc.main(
        ["--pack", str(tmp_path / "pack"), "--run-dir", str(tmp_path / "run2"), "--out", str(out3), "--no-test-eval",
         "--resume", "--select", "last", *common]
    )  # fmt: skip
    assert code == 0
    saved3 = json.loads((out3 / "training_config.json").read_text())
    assert saved3["summary"]["selected_by"] == "last" and saved3["summary"]["best_epoch"] == 1
    assert len(saved3["summary"]["history"]) == 1  # nothing was trained again
    last = PatchClassifierForImageClassification.from_pretrained(tmp_path / "run2" / "last").eval()
    with torch.no_grad():
        got = PatchClassifierForImageClassification.from_pretrained(out3).eval()(x).logits
        torch.testing.assert_close(got, last(x).logits, atol=2e-2, rtol=2e-2)
