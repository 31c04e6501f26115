"""The adversarial source head (training/adversary.py) and its use in train_classifier (#16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train_classifier import _config, synthetic_data

from training import adversary as adv
from training import train_classifier as tc

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reverse_gradient_is_the_identity_forward_and_flips_the_gradient_by_its_weight():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = adv.reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.5, -1.0, -1.5]))
    x.grad = None
    adv.reverse_gradient(x, 0.0).sum().backward()
    assert torch.equal(x.grad, torch.zeros(3))
    with pytest.raises(ValueError, match=">= 0"):
        adv.reverse_gradient(x, -1.0)


def test_weight_ramps_linearly_then_stays():
    assert [adv.adversary_weight(1.0, 4, e) for e in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert adv.adversary_weight(0.3, 0, 1) == 0.3


def test_sources_and_targets_only_for_the_heads_class():
    labels = np.array([0, 0, 1, 0, 3])
    sources = ["nih", "jsrt", "cohen", "cohen", "cohen"]
    assert adv.adversary_sources(labels, sources, 0) == ["cohen", "jsrt", "nih"]
    targets = adv.source_targets(labels, sources, 0, ["cohen", "jsrt", "nih"])
    assert targets.tolist() == [2, 1, -1, 0, -1]
    assert adv.source_targets(labels, sources, 0, ["jsrt", "nih"]).tolist() == [1, 0, -1, -1, -1]  # unknown: unseen
    with pytest.raises(ValueError, match="two sources"):
        adv.SourceAdversary(8, ["jsrt"])


def test_loss_sees_only_targeted_samples_and_the_features_get_the_reversed_gradient():
    torch.manual_seed(0)
    head = adv.SourceAdversary(6, ["a", "b"], hidden=5)
    pooled = torch.randn(4, 6, requires_grad=True)
    targets = torch.tensor([0, -1, 1, -1])
    loss, correct, seen = adv.adversary_loss(head, pooled, targets, 0.7)
    plain = F.cross_entropy(head(pooled[[0, 2]]), targets[[0, 2]])
    assert seen == 2 and 0 <= correct <= 2 and loss.item() == pytest.approx(plain.item())
    (grad_plain,) = torch.autograd.grad(plain, pooled, retain_graph=True)
    (grad_rev,) = torch.autograd.grad(loss, pooled, retain_graph=True)
    assert torch.allclose(grad_rev, -0.7 * grad_plain)
    assert torch.all(grad_rev[[1, 3]] == 0)  # samples without a target do not move
    head_grads = torch.autograd.grad(loss, list(head.parameters()))
    plain_grads = torch.autograd.grad(plain, list(head.parameters()))
    assert all(torch.allclose(a, b) for a, b in zip(head_grads, plain_grads, strict=True))  # the head is not reversed
    none, correct, seen = adv.adversary_loss(head, pooled, torch.full((4,), -1), 1.0)
    assert none.item() == 0.0 and (correct, seen) == (0, 0) and none.requires_grad


def test_a_step_through_the_reversal_makes_the_features_worse_for_the_head():
    torch.manual_seed(0)
    backbone = torch.nn.Linear(3, 4)
    head = adv.SourceAdversary(4, ["a", "b"], hidden=8)
    x = torch.randn(32, 3)
    targets = (x[:, 0] > 0).long()  # the source is readable from the input
    before = F.cross_entropy(head(backbone(x)), targets).item()
    loss, _, _ = adv.adversary_loss(head, backbone(x), targets, 1.0)
    loss.backward()
    with torch.no_grad():
        for p in backbone.parameters():
            p -= 0.05 * p.grad  # a descent step on the total loss: the backbone climbs the head's loss
    assert F.cross_entropy(head(backbone(x)), targets).item() > before


def test_draw_values_follow_the_batch_order():
    values = np.array([5, 6, 7])
    draws = [(2, np.zeros((2, 4))), (0, np.zeros((1, 4)))]
    assert tc.draw_values(values, draws).tolist() == [7, 7, 5]
    assert tc.draw_values(values, [(1, None), (2, None)]).tolist() == [6, 7]


@pytest.mark.slow
def test_training_with_the_head_records_it_saves_it_and_resumes_it(tmp_path):
    data = synthetic_data()  # normals: img0 (alpha) and img3 (beta)
    val = data.subset([0, 1, 2])
    kw = dict(source_adversary=0.5, source_adversary_ramp=2, overfit_one_batch=False, augment=True, batch_size=6)
    first = tc.train(_config(tmp_path, epochs=1, **kw), data, val)
    assert first["adversary_sources"] == ["alpha", "beta"]
    record = first["history"][0]
    assert record["adversary_weight"] == 0.25 and record["adversary_ce"] >= 0
    assert record["adversary_accuracy"] is None or 0 <= record["adversary_accuracy"] <= 1
    assert (tmp_path / "run" / "last" / adv.ADVERSARY_FILE).is_file()
    resumed = tc.train(_config(tmp_path, epochs=2, **kw), data, val, resume=True)
    assert [h["adversary_weight"] for h in resumed["history"]] == [0.25, 0.5]
    assert resumed["history"][0] == first["history"][0]
    with pytest.raises(SystemExit, match="adversarial source head"):
        tc.train(_config(tmp_path, epochs=3, overfit_one_batch=False), data, val, resume=True)
    plain = tmp_path / "plain"
    tc.train(_config(plain, epochs=1), data, val)
    with pytest.raises(SystemExit, match="without an adversarial head"):
        tc.train(_config(plain, epochs=2, source_adversary=0.5), data, val, resume=True)
    card = tc.training_card_info(_config(tmp_path, **kw), resumed, {}, None)
    assert "alpha, beta" in card["source adversary"] and "not part of this model" in card["source adversary"]


def test_the_head_needs_two_sources_and_valid_options():
    data = synthetic_data()
    data.sources[:] = ["alpha"] * len(data)
    with pytest.raises(SystemExit, match="two sources or more"):
        tc.build_adversary(tc.ClassifierTrainConfig(source_adversary=1.0), data, 8)
    assert tc.build_adversary(tc.ClassifierTrainConfig(), data, 8) is None
    config, _ = tc.parse_config(["--source-adversary", "0.3", "--source-adversary-class", "normal"])
    assert config.source_adversary == 0.3
    for bad in (
        ["--source-adversary", "-1"],
        ["--source-adversary-ramp", "-2"],
        ["--source-adversary-class", "covid"],  # a label3 class, not of label4
    ):
        with pytest.raises(SystemExit):
            tc.parse_config(bad)
    assert tc.parse_config(["--label-set", "label3", "--source-adversary-class", "covid"])[0].label_set == "label3"
