"""CXRPipeline end to end on tiny random models (offline), and the ``predict`` CLI."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from baselines import reference_gradcam  # benchmarks/: the textbook Grad-CAM oracle
from conftest import synthetic_cxr
from torch import nn

from cxr_hub import (
    CXRInputError,
    FCDenseNetForSemanticSegmentation,
    PatchClassifierConfig,
    PatchClassifierForImageClassification,
)
from cxr_hub.cli import main as cli_main
from cxr_hub.patches import patch_center_region
from cxr_hub.pipeline import FRAME_FIELDS, CXRPipeline, NoClassifierError, PatchSample, PipelineResult, PreparedImage

CLASSES = ["normal", "bacterial", "tuberculosis", "viral_covid"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx + 0.5) / w - cx) ** 2 / rx**2 + ((yy + 0.5) / h - cy) ** 2 / ry**2 < 1


def chest_labels(h: int, w: int, lung_scale: float = 1.0) -> np.ndarray:
    """Label map in relative coordinates: two lung ellipses and a heart between them."""
    lab = np.zeros((h, w), dtype=np.int64)
    lab[ellipse(h, w, 0.3, 0.5, 0.15 * lung_scale, 0.3 * lung_scale)] = 2
    lab[ellipse(h, w, 0.7, 0.5, 0.15 * lung_scale, 0.3 * lung_scale)] = 3
    lab[ellipse(h, w, 0.5, 0.65, 0.12, 0.12)] = 1
    return lab


class PatternSegmenter(nn.Module):
    """Stands in for a trained segmentation model: logits that spell a fixed label pattern at any input size."""

    def __init__(self, config, pattern) -> None:
        super().__init__()
        self.config = config
        self.pattern = pattern
        self.calls = 0

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        self.calls += 1
        h, w = pixel_values.shape[-2:]
        lab = torch.from_numpy(self.pattern(h, w))
        logits = 10.0 * nn.functional.one_hot(lab, 4).permute(2, 0, 1)[None].float()
        return SimpleNamespace(logits=logits.to(pixel_values.device))


def _classifier(config: PatchClassifierConfig, seed: int = 0) -> PatchClassifierForImageClassification:
    torch.manual_seed(seed)
    model = PatchClassifierForImageClassification(config)
    # larger head weights than the init: distinct class probabilities and non-empty Grad-CAM maps
    model.classifier.weight.data.normal_(0, 0.5)
    return model.eval()


@pytest.fixture
def classifier(tiny_classifier_config):
    return _classifier(tiny_classifier_config)


@pytest.fixture
def global_classifier():
    return _classifier(PatchClassifierConfig(mode="global", input_size=64), seed=1)


@pytest.fixture
def pipe(tiny_fcdensenet_config, classifier):
    # fp32: the exactness tests below compare against fp32 references ("auto" is bf16 on CPUs with native bf16)
    return CXRPipeline(
        PatternSegmenter(tiny_fcdensenet_config, chest_labels), classifier, device="cpu", chunk_size=3, precision="fp32"
    )


@pytest.fixture
def image() -> np.ndarray:
    return synthetic_cxr(np.random.default_rng(0), 200, 180)


def test_result_fields_shapes_and_ranges(tiny_fcdensenet_config, classifier, global_classifier, image):
    pipe = CXRPipeline(PatternSegmenter(tiny_fcdensenet_config, chest_labels), classifier, global_classifier)
    r = pipe(image, k=10, seed=0, saliency_classes="all")
    assert isinstance(r, PipelineResult)
    assert r.device == "cpu" and r.k == 10 and r.patch_size == 64 and r.image_size == (200, 180)
    assert r.class_names == CLASSES and r.label in CLASSES
    assert sum(r.votes.values()) == 10 and r.votes[r.label] == max(r.votes.values())
    assert sum(r.vote_fraction.values()) == pytest.approx(1.0)
    assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert r.patch_probabilities.shape == (10, 4) and r.patch_probabilities.dtype == np.float32
    np.testing.assert_allclose(r.patch_probabilities.sum(1), 1, atol=1e-5)
    assert r.probabilities["normal"] == pytest.approx(float(r.patch_probabilities[:, 0].mean()), abs=1e-6)
    # segmentation at the original size
    assert r.label_map.shape == (200, 180) and r.label_map.dtype == np.uint8
    assert set(np.unique(r.label_map)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(r.lung_mask, np.isin(r.label_map, [2, 3]))
    assert (r.label_map == chest_labels(200, 180)).mean() > 0.95  # the 64 px pattern, upsampled
    # boxes: exact size in the 256 frame, scaled to original pixels
    assert r.patch_boxes_1024.shape == (10, 4) and r.patch_boxes.shape == (10, 4)
    assert (r.patch_boxes_1024[:, 2:] - r.patch_boxes_1024[:, :2] == 64).all()
    np.testing.assert_allclose(r.patch_boxes[:, 2] - r.patch_boxes[:, 0], 64 * 180 / 256)
    np.testing.assert_allclose(r.patch_boxes[:, 3] - r.patch_boxes[:, 1], 64 * 200 / 256)
    assert (r.patch_boxes >= 0).all() and (r.patch_boxes[:, [2, 3]] <= [180, 200]).all()
    # saliency for every class, at the original size, in [0, 1]
    assert list(r.saliency) == CLASSES and list(r.saliency_in_lung) == CLASSES
    for name, m in r.saliency.items():
        assert m.shape == (200, 180) and m.dtype == np.float32
        assert m.min() >= 0 and m.max() <= 1 + 1e-6
        share = r.saliency_in_lung[name]
        assert (0 <= share <= 1) or (math.isnan(share) and m.max() == 0)
    assert r.saliency[r.label].max() > 0
    # global classifier
    assert r.global_label in CLASSES
    assert sum(r.global_probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert r.global_label in r.global_saliency and set(r.global_saliency) == set(CLASSES)
    for m in r.global_saliency.values():
        assert m.shape == (200, 180) and m.min() >= 0 and m.max() <= 1 + 1e-6
    # biomarkers and timings
    assert 0.3 < r.biomarkers.cardiothoracic_ratio < 0.7
    assert 0.2 < r.biomarkers.lung_area_fraction < 0.4
    assert 0 <= r.biomarkers.lung_mean_intensity <= 255
    for stage in ("load", "preprocess", "segment", "sample", "classify", "saliency", "global", "total"):
        assert r.timings[stage] >= 0
    assert r.warnings == []


def test_same_seed_same_result_other_seed_other_boxes(pipe, image):
    a = pipe(image, k=12, seed=3, saliency_classes="all")
    b = pipe(image, k=12, seed=3, saliency_classes="all")
    c = pipe(image, k=12, seed=4)
    assert a.votes == b.votes and a.label == b.label
    np.testing.assert_array_equal(a.patch_boxes_1024, b.patch_boxes_1024)
    np.testing.assert_array_equal(a.patch_probabilities, b.patch_probabilities)
    for name in CLASSES:
        np.testing.assert_array_equal(a.saliency[name], b.saliency[name])
    assert not np.array_equal(a.patch_boxes_1024, c.patch_boxes_1024)


def test_default_sampler_keeps_the_patches_when_the_mask_changes_slightly(pipe, image):
    """sampling="stable" (the default): a few lung pixels more or less leave almost every patch where it was."""
    assert pipe.settings()["sampling"] == "stable"
    prepared = pipe.prepare(image)
    a = pipe.sample_patches(prepared, k=50, seed=2)
    grown = pipe.prepare(image)
    assert grown.frame_mask is not prepared.frame_mask
    ys, xs = np.nonzero(grown.frame_mask)
    grown.frame_mask[ys.max() + 1 : ys.max() + 5, xs.min() : xs.min() + 40] = True  # 160 pixels below the lung
    b = pipe.sample_patches(grown, k=50, seed=2)
    kept = len({tuple(x) for x in a.boxes_1024} & {tuple(x) for x in b.boxes_1024})
    assert kept >= 45
    pipe.sampling = "joint"  # indexing the lung pixels: the same change moves nearly every patch
    try:
        a, b = pipe.sample_patches(prepared, k=50, seed=2), pipe.sample_patches(grown, k=50, seed=2)
    finally:
        pipe.sampling = "stable"
    assert len({tuple(x) for x in a.boxes_1024} & {tuple(x) for x in b.boxes_1024}) < 25


def test_prepare_then_analyze_equals_call(pipe, image):
    prepared = pipe.prepare(image)
    assert isinstance(prepared, PreparedImage)
    calls = pipe.segmentation_model.calls
    r1 = pipe.analyze(prepared, k=9, seed=1)
    r2 = pipe.analyze(prepared, k=9, seed=1, saliency_classes=["normal", 3])
    assert pipe.segmentation_model.calls == calls  # analyze never segments again
    full = pipe(image, k=9, seed=1)
    assert r1.votes == full.votes
    np.testing.assert_array_equal(r1.saliency[r1.label], full.saliency[full.label])
    assert list(r2.saliency) == ["normal", "viral_covid"]
    assert r1.timings["analyze"] <= r1.timings["total"]


def test_frames_follow_the_image_processors(pipe, image):
    """Preprocessing once per image and finishing each frame with ``frame_from_preprocessed`` equals the processors'
    own preprocess_one."""
    prepared = pipe.prepare(image)
    expected = pipe.frame_processor.preprocess_one(image, prepared.lung_mask)
    np.testing.assert_allclose(prepared.frame, expected, atol=1e-5)
    seg_proc = pipe.segmentation_processor
    seg_input = seg_proc.frame_from_preprocessed(prepared.preprocessed)
    np.testing.assert_allclose(seg_input, seg_proc.preprocess_one(image), atol=1e-5)
    assert seg_input.shape == (64, 64)
    assert prepared.frame.shape == (256, 256) and prepared.frame_mask.shape == (256, 256)
    # outside the lung the frame holds the normalised zero gray level
    zero = (0 - pipe.classifier_config.image_mean) / pipe.classifier_config.image_std
    np.testing.assert_allclose(prepared.frame[~prepared.frame_mask], zero)


def test_sampled_centres_lie_in_the_lung(pipe, image):
    prepared = pipe.prepare(image)
    r = pipe.analyze(prepared, k=200, seed=5)
    cx, cy = r.patch_centers_1024[:, 0], r.patch_centers_1024[:, 1]
    assert prepared.frame_mask[cy, cx].all()
    b = r.patch_boxes_1024
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 256).all()


def test_sampled_centres_keep_the_classifiers_centre_margin(pipe, image):
    """A classifier trained with patch_center_margin gets its patches drawn the same way by the pipeline."""
    prepared = pipe.prepare(image)
    region = patch_center_region(prepared.frame_mask, 16)
    assert 0 < region.sum() < prepared.frame_mask.sum()
    saved = pipe.frame_config.patch_center_margin
    pipe.frame_config.patch_center_margin = 0.25  # of the 64 px patch: 16 px
    try:
        sample = pipe.sample_patches(prepared, k=200, seed=5)
        wider = pipe.sample_patches(prepared, k=200, patch_size=96, seed=5)  # the margin scales with the patch
    finally:
        pipe.frame_config.patch_center_margin = saved
    cx, cy = sample.centers_1024[:, 0], sample.centers_1024[:, 1]
    assert region[cy, cx].all()
    deeper = patch_center_region(prepared.frame_mask, 24)
    assert deeper[wider.centers_1024[:, 1], wider.centers_1024[:, 0]].all()


def test_patch_size_other_than_trained_is_flagged_and_cropped_at_that_size(pipe, image):
    r = pipe(image, k=6, patch_size=96)
    assert (r.patch_boxes_1024[:, 2:] - r.patch_boxes_1024[:, :2] == 96).all()
    assert any("patch size 96 differs" in w and "64" in w for w in r.warnings)
    assert r.saliency[r.label].shape == (200, 180)
    with pytest.raises(ValueError, match="patch_size"):
        pipe(image, k=2, patch_size=300)


def test_untrained_classes_are_listed(tiny_fcdensenet_config, image):
    config = PatchClassifierConfig(
        image_size=256, patch_size=64, input_size=64, num_patches=4, trained_classes=["normal", "viral_covid"]
    )
    pipe = CXRPipeline(PatternSegmenter(tiny_fcdensenet_config, chest_labels), _classifier(config))
    r = pipe(image)
    assert r.k == 4  # K from the config
    assert any("never trained" in w and "bacterial, tuberculosis" in w for w in r.warnings)


def test_saliency_class_selection(pipe, image):
    prepared = pipe.prepare(image)
    assert list(pipe.analyze(prepared, k=4).saliency) == [pipe.analyze(prepared, k=4).label]
    assert list(pipe.analyze(prepared, k=4, saliency_classes="bacterial,normal").saliency) == ["bacterial", "normal"]
    with pytest.raises(ValueError, match="Unknown saliency class"):
        pipe.analyze(prepared, k=4, saliency_classes="covid")


def test_empty_saliency_selection_computes_no_maps(
    tiny_fcdensenet_config, classifier, global_classifier, image, monkeypatch
):
    """saliency_classes=[] or "": no saliency at all (no Grad-CAM computed, patch or global), the same vote."""
    import cxr_hub.pipeline.analyze as analyze_module

    seg = PatternSegmenter(tiny_fcdensenet_config, chest_labels)
    # chunks of 3: the first 6 of the 7 patches go into the patch cache
    pipe = CXRPipeline(seg, classifier, global_classifier, precision="fp32", chunk_size=3)
    prepared = pipe.prepare(image)
    fresh = CXRPipeline(seg, classifier, precision="fp32", chunk_size=3, reuse_patches=False)
    reference = fresh.analyze(fresh.prepare(image), k=7, seed=2, saliency_classes="all")

    def no_gradcam(*args, **kwargs):
        raise AssertionError("a Grad-CAM map was computed although no saliency class was asked for")

    monkeypatch.setattr(analyze_module, "gradcam_from_features", no_gradcam)
    for empty in ([], (), "", " , "):
        r = pipe.analyze(prepared, k=7, seed=2, saliency_classes=empty)
        assert r.saliency == {} and r.saliency_in_lung == {} and r.global_saliency == {}
        assert r.votes == reference.votes and r.global_label in CLASSES
        np.testing.assert_array_equal(r.patch_probabilities, reference.patch_probabilities)
        d = r.to_dict(include_maps=True)
        assert d["saliency_classes"] == [] and d["saliency"] == {}
        json.dumps(d, allow_nan=False)
    assert pipe(image, k=3, saliency_classes=[]).saliency == {}  # __call__ too
    monkeypatch.undo()
    # the patch cache filled without maps does not poison a later call that wants them
    assert any(entry[2] is None for entry in prepared.patch_cache.values())
    again = pipe.analyze(prepared, k=7, seed=2, saliency_classes="all")
    for name in CLASSES:
        np.testing.assert_array_equal(again.saliency[name], reference.saliency[name])


def test_seed_none_records_the_seed_it_drew(pipe, image):
    prepared = pipe.prepare(image)
    a, b = pipe.analyze(prepared, k=6, seed=None), pipe.analyze(prepared, k=6, seed=None)
    for r in (a, b):
        assert type(r.seed) is int and 0 <= r.seed < 2**32
        assert json.loads(json.dumps(r.to_dict()))["seed"] == r.seed
    assert a.seed != b.seed  # fresh entropy each time (a collision has probability 2**-32)
    replay = pipe.analyze(prepared, k=6, seed=a.seed)
    np.testing.assert_array_equal(replay.patch_boxes_1024, a.patch_boxes_1024)
    np.testing.assert_array_equal(replay.patch_probabilities, a.patch_probabilities)
    sample = pipe.sample_patches(prepared, k=6, seed=None)
    assert type(sample.seed) is int
    np.testing.assert_array_equal(pipe.sample_patches(prepared, k=6, seed=sample.seed).boxes_1024, sample.boxes_1024)


def test_integer_like_seed_k_and_patch_size_are_normalised_others_refused(pipe, image):
    prepared = pipe.prepare(image)
    r = pipe.analyze(prepared, k=np.int64(5), patch_size=np.int32(64), seed=np.int64(3))
    assert (type(r.seed), type(r.k), type(r.patch_size)) == (int, int, int) and (r.seed, r.k) == (3, 5)
    json.dumps(r.to_dict(), allow_nan=False)
    np.testing.assert_array_equal(r.patch_boxes_1024, pipe.analyze(prepared, k=5, seed=3).patch_boxes_1024)
    for seed in (True, -1, 2.5, 3.0, "3", np.float64(1)):
        with pytest.raises(ValueError, match="seed"):
            pipe.analyze(prepared, k=5, seed=seed)
    for k in (2.7, 3.0, True, "4"):
        with pytest.raises(ValueError, match=r"\bk\b.*integer"):
            pipe.analyze(prepared, k=k)
        with pytest.raises(ValueError, match=r"\bk\b.*integer"):
            pipe.sample_patches(prepared, k=k)
    with pytest.raises(ValueError, match=r"patch_size.*integer"):
        pipe.analyze(prepared, k=5, patch_size=64.5)


def test_no_lung_raises_a_clear_input_error(tiny_fcdensenet_config, classifier, image):
    pipe = CXRPipeline(PatternSegmenter(tiny_fcdensenet_config, lambda h, w: np.zeros((h, w), np.int64)), classifier)
    with pytest.raises(CXRInputError, match="frontal"):
        pipe(image)


def test_background_favouring_segmentation_model_raises(tiny_fcdensenet_config, classifier, image):
    torch.manual_seed(0)
    seg = FCDenseNetForSemanticSegmentation(tiny_fcdensenet_config)
    with torch.no_grad():
        seg.classifier.weight.zero_()
        seg.classifier.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    with pytest.raises(CXRInputError, match="No lung found"):
        CXRPipeline(seg, classifier)(image)


def test_too_little_lung_warns_but_works(tiny_fcdensenet_config, classifier, image):
    small = PatternSegmenter(tiny_fcdensenet_config, lambda h, w: chest_labels(h, w, lung_scale=0.25))
    r = CXRPipeline(small, classifier)(image, k=5)
    assert r.biomarkers.lung_area_fraction < 0.05
    assert any("too little lung" in w and "unreliable" in w for w in r.warnings)
    assert r.lung_mask[r.patch_boxes[:, 1:4:2].mean(1).astype(int), r.patch_boxes[:, 0:3:2].mean(1).astype(int)].any()


def test_lung_touching_the_border(tiny_fcdensenet_config, classifier, image):
    def border(h: int, w: int) -> np.ndarray:
        lab = np.zeros((h, w), np.int64)
        lab[:, : w // 5] = 2
        lab[: h // 6, -w // 5 :] = 3
        return lab

    r = CXRPipeline(PatternSegmenter(tiny_fcdensenet_config, border), classifier)(image, k=50, seed=2)
    b = r.patch_boxes_1024
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 256).all() and (b[:, 2:] - b[:, :2] == 64).all()
    assert any("no heart" in w for w in r.warnings) and math.isnan(r.biomarkers.cardiothoracic_ratio)


def test_batched_saliency_equals_per_patch_autograd(pipe, image):
    """Chunked, channels_last voting pass + backward-free maps equal a textbook Grad-CAM of each patch."""
    prepared = pipe.prepare(image)
    r = pipe.analyze(prepared, k=7, seed=0)
    probs, cams = pipe.classify_patches(prepared.frame, r.patch_boxes_1024)
    model = pipe.classifier_model
    from cxr_hub.patches import crop_patches

    x = crop_patches(torch.from_numpy(prepared.frame), r.patch_boxes_1024, 64)
    ref = reference_gradcam(model, x, list(range(4)), normalize=False)
    torch.testing.assert_close(cams, ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.softmax(model(x).logits, -1), rtol=1e-4, atol=1e-5)


def test_to_dict_is_json_serialisable(pipe, image):
    r = pipe(image, k=5, saliency_classes="all")
    d = r.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert "label_map" not in d and len(text) < 20_000
    assert d["label"] == r.label and len(d["patch_boxes"]) == 5
    full = r.to_dict(include_maps=True)
    json.dumps(full, allow_nan=False)
    assert np.array(full["label_map"]).shape == (200, 180)


def test_constructor_validation(tiny_fcdensenet_config, classifier, global_classifier):
    seg = PatternSegmenter(tiny_fcdensenet_config, chest_labels)
    with pytest.raises(ValueError, match="precision"):
        CXRPipeline(seg, classifier, precision="fp16")
    with pytest.raises(ValueError, match="mode"):
        CXRPipeline(seg, global_classifier)
    with pytest.raises(ValueError, match="mode"):
        CXRPipeline(seg, classifier, classifier)
    with pytest.raises(TypeError):
        CXRPipeline(seg, seg)


# ------------------------------------------------------------------------------------------ segmentation-only mode


def test_segmentation_only_prepares_and_samples_like_the_full_pipeline(
    tiny_fcdensenet_config, tiny_classifier_config, pipe, image
):
    seg = PatternSegmenter(tiny_fcdensenet_config, chest_labels)
    only = CXRPipeline(seg, frame_config=tiny_classifier_config, device="cpu")
    assert not only.has_classifier and only.classifier_model is None and only.classifier_config is None
    assert only.class_names == [] and only.frame_config is tiny_classifier_config
    prepared, full_prepared = only.prepare(image), pipe.prepare(image)
    for name in ("preprocessed", "label_map", "lung_mask", "frame", "frame_mask"):
        np.testing.assert_array_equal(getattr(prepared, name), getattr(full_prepared, name))
    assert prepared.biomarkers.to_dict() == full_prepared.biomarkers.to_dict()
    # same sampler, same seed → the boxes the classifier would use
    sample = only.sample_patches(prepared, k=9, patch_size=48, seed=5)
    assert isinstance(sample, PatchSample) and (sample.k, sample.patch_size, sample.seed) == (9, 48, 5)
    r = pipe.analyze(full_prepared, k=9, patch_size=48, seed=5)
    np.testing.assert_array_equal(sample.boxes_1024, r.patch_boxes_1024)
    np.testing.assert_array_equal(sample.centers_1024, r.patch_centers_1024)
    np.testing.assert_array_equal(sample.boxes, r.patch_boxes)
    np.testing.assert_array_equal(pipe.sample_patches(full_prepared, 9, 48, 5).boxes_1024, r.patch_boxes_1024)
    defaults = only.sample_patches(prepared)  # K and patch size from the frame config
    assert defaults.k == 8 and (defaults.boxes_1024[:, 2:] - defaults.boxes_1024[:, :2] == 64).all()
    with pytest.raises(ValueError, match="k must be"):
        only.sample_patches(prepared, k=0)
    with pytest.raises(ValueError, match="patch_size"):
        only.sample_patches(prepared, patch_size=300)
    # classification refuses, clearly, and before any segmentation
    calls = seg.calls
    with pytest.raises(NoClassifierError, match="no classifier loaded") as err:
        only.analyze(prepared, k=2)
    assert isinstance(err.value, RuntimeError)
    with pytest.raises(NoClassifierError, match="no classifier loaded"):
        only(image, k=2)
    with pytest.raises(NoClassifierError, match="no classifier loaded"):
        only.classify_patches(prepared.frame, sample.boxes_1024)
    assert seg.calls == calls


def test_segmentation_only_default_frame_is_the_papers(tiny_fcdensenet_config, image):
    only = CXRPipeline(PatternSegmenter(tiny_fcdensenet_config, chest_labels), device="cpu")
    paper = PatchClassifierConfig()
    assert {f: getattr(only.frame_config, f) for f in FRAME_FIELDS} == {f: getattr(paper, f) for f in FRAME_FIELDS}
    prepared = only.prepare(image)
    assert prepared.frame.shape == (1024, 1024) and prepared.preprocess_params == (True, 0.5)
    sample = only.sample_patches(prepared, seed=0)
    assert sample.k == 100 and (sample.boxes_1024[:, 2:] - sample.boxes_1024[:, :2] == 224).all()


def test_frame_config_validation(tiny_fcdensenet_config, tiny_classifier_config, classifier, global_classifier):
    seg = PatternSegmenter(tiny_fcdensenet_config, chest_labels)
    # agreeing configs are fine; the classifier's config is the one used
    same = PatchClassifierConfig(**{f: getattr(tiny_classifier_config, f) for f in FRAME_FIELDS})
    assert CXRPipeline(seg, classifier, frame_config=same).frame_config is classifier.config
    with pytest.raises(ValueError, match=r"frame_config disagrees.*image_size: classifier 256 vs frame_config 1024"):
        CXRPipeline(seg, classifier, frame_config=PatchClassifierConfig())
    with pytest.raises(TypeError, match="frame_config must be a PatchClassifierConfig with mode='patch'"):
        CXRPipeline(seg, frame_config=global_classifier.config)
    with pytest.raises(ValueError, match="global classifier needs a patch classifier"):
        CXRPipeline(seg, None, global_classifier)


def _save_models(tmp_path, tiny_fcdensenet_config, classifier):
    torch.manual_seed(0)
    seg = FCDenseNetForSemanticSegmentation(tiny_fcdensenet_config)
    with torch.no_grad():  # random weights, lungs favoured so the label map has lung (and some heart)
        seg.classifier.bias.copy_(torch.tensor([0.0, 0.0, 0.5, 0.5]))
    seg.save_pretrained(tmp_path / "seg")
    classifier.save_pretrained(tmp_path / "clf")
    return tmp_path / "seg", tmp_path / "clf"


def test_from_pretrained_and_predict_cli(tmp_path, tiny_fcdensenet_config, classifier, image, capsys):
    seg_dir, clf_dir = _save_models(tmp_path, tiny_fcdensenet_config, classifier)
    pipe = CXRPipeline.from_pretrained(seg_dir, clf_dir, device="cpu", chunk_size=4)
    assert not pipe.classifier_model.training and pipe.chunk_size == 4
    only = CXRPipeline.from_pretrained(seg_dir, device="cpu", frame_config=classifier.config)
    assert not only.has_classifier and only.prepare(image).frame.shape == (256, 256)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "cxr.png")
    out = tmp_path / "out"
    code = cli_main(
        [
            "predict", str(tmp_path / "cxr.png"), "--segmentation", str(seg_dir), "--classifier", str(clf_dir),
            "--k", "6", "--saliency-classes", "all", "--out", str(out), "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["k"] == 6 and result["label"] in CLASSES and "cxr.png" not in json.dumps(result)
    assert result["pipeline"]["sampling"] == "stable"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "segmentation.png" in pngs and len([p for p in pngs if p.startswith("saliency_")]) == 4
    assert Image.open(out / "segmentation.png").size == (180, 200)
    assert "label:" in capsys.readouterr().out


def test_predict_cli_missing_models_exits_2(tmp_path, capsys, image, monkeypatch):
    from PIL import Image

    from cxr_hub.cli import predict as commands

    Image.fromarray(image).save(tmp_path / "cxr.png")
    code = cli_main(["predict", str(tmp_path / "cxr.png"), "--classifier", str(tmp_path / "nope")])
    assert code == 2
    assert "--classifier" in capsys.readouterr().err
    # no default model folders (an installation outside the repository): a clear message, never random weights
    monkeypatch.setattr(commands, "DEFAULT_SEGMENTATION", tmp_path / "models" / "seg")
    monkeypatch.setattr(commands, "DEFAULT_CLASSIFIER", tmp_path / "models" / "clf")
    code = cli_main(["predict", str(tmp_path / "cxr.png"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not exist" in err and "--segmentation" in err and "--classifier" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tiny_fcdensenet_config, tiny_classifier_config, image):
    """On CUDA (bf16 autocast by default) the vote and maps agree with the CPU fp32 run up to bf16 rounding."""
    seg = PatternSegmenter(tiny_fcdensenet_config, chest_labels)
    cpu = CXRPipeline(seg, _classifier(tiny_classifier_config), device="cpu")(image, k=16, saliency_classes="all")
    gpu_pipe = CXRPipeline(seg, _classifier(tiny_classifier_config), device="cuda")
    gpu = gpu_pipe(image, k=16, saliency_classes="all")
    assert gpu.device.startswith("cuda")
    np.testing.assert_array_equal(gpu.patch_boxes_1024, cpu.patch_boxes_1024)
    np.testing.assert_allclose(gpu.patch_probabilities, cpu.patch_probabilities, atol=0.05)
    for name in CLASSES:
        assert np.abs(gpu.saliency[name] - cpu.saliency[name]).mean() < 0.05


def test_segmentation_clean_up_follows_the_model_config(tiny_fcdensenet_config, classifier, image):
    import copy

    def with_island(h: int, w: int) -> np.ndarray:
        lab = chest_labels(h, w)
        lab[: h // 20, : w // 20] = 1  # a heart speck in the corner, far from the lungs
        return lab

    plain = CXRPipeline(PatternSegmenter(tiny_fcdensenet_config, with_island), classifier, precision="fp32")
    assert (plain.prepare(image).label_map[:3, :3] == 1).all()  # no clean-up unless the model asks for it
    config = copy.deepcopy(tiny_fcdensenet_config)
    config.postprocessing = "clean_label_map"
    cleaned = CXRPipeline(PatternSegmenter(config, with_island), classifier, precision="fp32").prepare(image)
    assert (cleaned.label_map[:3, :3] == 0).all() and (cleaned.label_map == 1).any()
    config.postprocessing = "something-new"
    with pytest.raises(ValueError, match="Upgrade cxr-hub"):
        CXRPipeline(PatternSegmenter(config, with_island), classifier, precision="fp32").prepare(image)


# ------------------------------------------------------------------------------------------------ input check


def test_input_check_runs_in_prepare_and_its_override_warns(tiny_fcdensenet_config, classifier, image):
    from cxr_hub import NotAFrontalCXRError

    seg = PatternSegmenter(tiny_fcdensenet_config, chest_labels)
    pipe = CXRPipeline(seg, classifier, device="cpu", precision="fp32")
    assert pipe.check_input is True and pipe.settings()["check_input"] is True
    r = pipe(image, k=4, seed=0)
    assert r.input_check is not None and r.input_check.accepted and r.warnings == []
    assert r.to_dict()["input_check"]["checks"]["size"]["score"] == min(image.shape)
    rgb = np.zeros((200, 180, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, np.arange(180, dtype=np.uint8)[None, :]  # a colour picture
    calls = seg.calls
    with pytest.raises(NotAFrontalCXRError, match="colour image") as err:
        pipe(rgb, k=4, seed=0)
    assert isinstance(err.value, CXRInputError) and seg.calls == calls  # refused before the segmentation
    off = CXRPipeline(seg, classifier, device="cpu", precision="fp32", check_input=False)
    r = off(rgb, k=4, seed=0)
    assert r.label in CLASSES and r.input_check.enforced is False and not r.input_check.accepted
    assert any(w.startswith("input check off (check_input=False)") and "colour image" in w for w in r.warnings)
    assert any(w.startswith("input check off") for w in off(image, k=4, seed=0).warnings)  # on every result
