"""The segmentation training loop on a tiny model and synthetic data: the loss goes down, checkpoints, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import synthetic_cxr, synthetic_label_map

from cxr_hub import FCDenseNetForSemanticSegmentation
from training.train_segmentation import SegTrainConfig, median_frequency_weights, parse_config, train


def _data(n: int = 2):
    rng = np.random.default_rng(0)
    images = np.stack([synthetic_cxr(rng, 64, 64).astype(np.float32) for _ in range(n)])
    labels = np.stack([synthetic_label_map(64, 64) for _ in range(n)])
    return images, labels


def _config(tmp_path, **kw) -> SegTrainConfig:
    base = dict(
        arch="fcdensenet56",
        image_size=64,
        run_dir=str(tmp_path / "run"),
        epochs=3,
        batch_size=2,
        lr=1e-3,
        augment="none",
        amp="none",
        seed=0,
    )
    return SegTrainConfig(**(base | kw))


@pytest.mark.slow
def test_training_loss_goes_down_and_checkpoints(tmp_path):
    images, labels = _data()
    summary = train(_config(tmp_path), images, labels, images, labels)
    losses = [h["train_loss"] for h in summary["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "last" / "training_state.pt").is_file()
    model = FCDenseNetForSemanticSegmentation.from_pretrained(tmp_path / "run" / "best")
    assert model.config.class_weights == summary["class_weights"]
    json.dumps(summary)  # the summary is saved beside the model: it must serialise


@pytest.mark.slow
def test_training_resumes(tmp_path):
    images, labels = _data()
    first = train(_config(tmp_path, epochs=1), images, labels, images, labels)
    resumed = train(_config(tmp_path, epochs=2), images, labels, images, labels, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == first["history"][0]


def test_median_frequency_weights():
    labels = np.zeros((2, 10, 10), np.uint8)
    labels[:, :5] = 2  # half the pixels
    labels[:, 5:6] = 1  # a tenth
    w = median_frequency_weights(labels)
    assert w[1] > w[0] and w[1] > w[2]
    assert w[3] == 1.0  # absent class: neutral weight


def test_cli_overrides_and_yaml(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 7\nlr: 0.001\n")
    argv = ["--config", str(cfg), "--lr", "0.002", "--arch", "unet", "--augment", "none", "--resume"]
    config, resume = parse_config([*argv, "--no-partial-labels", "--init-from", "models/x"])
    assert (config.epochs, config.lr, config.arch, config.augment, resume) == (7, 0.002, "unet", "none", True)
    assert (config.partial_labels, config.init_from) == (False, "models/x")
    with pytest.raises(SystemExit):
        parse_config(["--arch", "vgg"])
    with pytest.raises(SystemExit):
        parse_config(["--augment", "wild"])
