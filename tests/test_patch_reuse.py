"""Re-use of patch results across K changes (CXRPipeline reuse_patches): fewer patches classified, same answer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_cxr
from test_pipeline import PatternSegmenter, _classifier, chest_labels

from cxr_hub import CXRPipeline
from cxr_hub.pipeline import PATCH_CACHE_ENTRIES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingPipeline(CXRPipeline):
    """Counts the patches that actually go through the classifier."""

    classified = 0

    def classify_patches(self, frame, boxes):
        self.classified += len(boxes)
        return super().classify_patches(frame, boxes)


def _pipes(config, classifier):
    seg = PatternSegmenter(config, chest_labels)
    reuse = CountingPipeline(seg, classifier, device="cpu", chunk_size=4)
    fresh = CountingPipeline(seg, classifier, device="cpu", chunk_size=4, reuse_patches=False)
    return reuse, fresh


def _same(a, b) -> None:
    assert a.label == b.label and a.votes == b.votes
    np.testing.assert_array_equal(a.patch_probabilities, b.patch_probabilities)
    np.testing.assert_array_equal(a.patch_boxes_1024, b.patch_boxes_1024)
    for name in a.saliency:
        np.testing.assert_array_equal(a.saliency[name], b.saliency[name])


@pytest.mark.parametrize("ks", [(10, 23), (23, 10), (8, 8), (13, 5, 30, 30)])
def test_k_changes_reuse_patches_and_match_a_fresh_run(tiny_fcdensenet_config, tiny_classifier_config, ks):
    reuse, fresh = _pipes(tiny_fcdensenet_config, _classifier(tiny_classifier_config))
    image = synthetic_cxr(np.random.default_rng(0), 200, 180)
    prepared_reuse, prepared_fresh = reuse.prepare(image), fresh.prepare(image)
    for k in ks:
        _same(reuse.analyze(prepared_reuse, k=k, seed=3), fresh.analyze(prepared_fresh, k=k, seed=3))
    assert fresh.classified == sum(ks)
    # whole chunks of 4 are kept; only new whole chunks and each call's partial tail are computed
    expected, have = 0, 0
    for k in ks:
        full = k // 4 * 4
        expected += max(0, full - have) + (k - full)
        have = max(have, full)
    assert reuse.classified == expected < sum(ks)


def test_other_seed_patch_size_or_precision_is_not_reused(tiny_fcdensenet_config, tiny_classifier_config):
    reuse, _ = _pipes(tiny_fcdensenet_config, _classifier(tiny_classifier_config))
    prepared = reuse.prepare(synthetic_cxr(np.random.default_rng(1), 200, 180))
    reuse.analyze(prepared, k=8, seed=0)
    reuse.analyze(prepared, k=8, seed=1)
    reuse.analyze(prepared, k=8, seed=0, patch_size=48)
    assert reuse.classified == 24
    before = reuse.precision
    reuse.precision = "bf16"
    r = reuse.analyze(prepared, k=8, seed=0)
    assert reuse.classified == 32 and sum(r.votes.values()) == 8
    reuse.precision = before
    reuse.analyze(prepared, k=8, seed=0)
    assert reuse.classified == 32  # back to an entry computed before
    assert len(prepared.patch_cache) <= PATCH_CACHE_ENTRIES


def test_no_seed_means_no_reuse(tiny_fcdensenet_config, tiny_classifier_config):
    reuse, _ = _pipes(tiny_fcdensenet_config, _classifier(tiny_classifier_config))
    prepared = reuse.prepare(synthetic_cxr(np.random.default_rng(2), 200, 180))
    reuse.analyze(prepared, k=8, seed=None)
    reuse.analyze(prepared, k=8, seed=None)
    assert reuse.classified == 16 and not prepared.patch_cache


def test_cache_is_bounded(tiny_fcdensenet_config, tiny_classifier_config):
    reuse, _ = _pipes(tiny_fcdensenet_config, _classifier(tiny_classifier_config))
    prepared = reuse.prepare(synthetic_cxr(np.random.default_rng(3), 200, 180))
    for seed in range(PATCH_CACHE_ENTRIES + 3):
        reuse.analyze(prepared, k=4, seed=seed)
    assert len(prepared.patch_cache) == PATCH_CACHE_ENTRIES
