"""The parts of the cross-hospital segmentation recipe: partial-label loss, augmentation, clean-up, shipped presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import synthetic_cxr, synthetic_label_map

from cxr_hub.postprocessing import clean_label_map
from cxr_hub.presets import SHIPPED, default_folder
from training.augment import AugmentConfig, augment_pair, photometric
from training.losses import (
    ALL_CLASSES,
    HeartAtlas,
    allowed_from_labels,
    allowed_from_v7labs,
    heart_atlas,
    partial_label_loss,
)
from training.train_segmentation import convention_aware_lung_jaccard

# ------------------------------------------------------------------------------------------- partial-label loss


def test_partial_loss_exact_values():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).view(1, 4, 1, 1).repeat(1, 1, 1, 3)
    # pixel 0: only class 3; pixel 1: heart or left lung; pixel 2: everything allowed
    allowed = torch.tensor([[[0b1000, 0b0110, ALL_CLASSES]]])
    loss = partial_label_loss(logits, allowed)
    expected = (-math.log(0.4) - math.log(0.2 + 0.3) - math.log(1.0)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_partial_loss_is_cross_entropy_for_full_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    labels = torch.randint(0, 4, (2, 5, 6), generator=g)
    allowed = torch.from_numpy(allowed_from_labels(labels.numpy()))
    weights = [0.5, 2.0, 1.0, 1.5]
    ce = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(weights))
    assert partial_label_loss(logits, allowed, weights).item() == pytest.approx(ce.item(), rel=1e-5)


def test_partial_loss_gradients_only_push_down_ruled_out_classes():
    logits = torch.zeros(1, 4, 1, 2, requires_grad=True)
    allowed = torch.tensor([[[0b0110, ALL_CLASSES]]])  # heart or left lung; anything
    partial_label_loss(logits, allowed).backward()
    grad = logits.grad[0, :, 0]
    # ruled-out classes (background, right lung) are pushed down, the allowed ones up, by the same amount each
    assert grad[0, 0] > 0 and grad[3, 0] > 0
    assert grad[1, 0] < 0 and grad[2, 0] < 0 and grad[1, 0] == pytest.approx(grad[2, 0].item())
    assert torch.all(grad[:, 1] == 0)  # an unconstrained pixel teaches nothing


def test_partial_loss_ignores_pixels_with_no_allowed_class():
    logits = torch.randn(1, 4, 1, 2)
    with_ignored = partial_label_loss(logits, torch.tensor([[[0b0001, 0]]]))
    alone = partial_label_loss(logits[..., :1], torch.tensor([[[0b0001]]]))
    assert with_ignored.item() == pytest.approx(alone.item())


def test_allowed_from_v7labs_sets():
    poly = synthetic_label_map(64, 64)
    poly[poly == 1] = 0  # v7labs: no heart
    allowed = allowed_from_v7labs(poly, unknown_band=0)
    assert set(np.unique(allowed[poly == 2])) == {0b0110}  # left lung or heart
    assert set(np.unique(allowed[poly == 3])) == {0b1010}  # right lung or heart
    assert set(np.unique(allowed[poly == 0])) == {0b0011}  # background or heart
    band = allowed_from_v7labs(poly, unknown_band=1) == ALL_CLASSES
    assert band.any() and not band[32, 0] and not band[32, 19]  # only near the borders


def test_heart_atlas_maps_hearts_into_each_films_lung_box():
    labels = np.zeros((1, 40, 40), np.uint8)
    labels[0, 10:30, 10:18] = 2  # left lung (image right)
    labels[0, 10:30, 22:30] = 3
    labels[0, 20:30, 16:24] = 1  # heart: lower half, middle of the box
    atlas = heart_atlas(labels, grid=20, margin=0.0)
    # the box is rows 10..29, cols 10..29: the heart fills its rows 10..19 and cols 6..13 on a 20-grid
    expected = np.zeros((20, 20), bool)
    expected[10:20, 6:14] = True
    assert np.array_equal(atlas.grid, expected)
    # a film whose lungs span twice the box: the region doubles with it
    big = np.zeros((80, 80), bool)
    big[20:60, 20:60] = True
    region = atlas.region(big)
    assert region[40:60, 32:48].all() and region.sum() == 20 * 16
    assert atlas.region(np.zeros((8, 8), bool)) is None
    # a margin dilates the union
    assert heart_atlas(labels, grid=20, margin=0.1).grid.sum() > expected.sum()
    with pytest.raises(ValueError, match="square"):
        HeartAtlas(np.zeros((3, 4), bool))


def test_allowed_from_v7labs_keeps_the_heart_inside_the_atlas():
    poly = np.zeros((40, 40), np.uint8)
    poly[10:30, 10:19] = 2
    poly[10:30, 21:30] = 3
    grid = np.zeros((20, 20), bool)
    grid[10:, 5:15] = True  # the lower middle of the lung box
    allowed = allowed_from_v7labs(poly, unknown_band=0, atlas=HeartAtlas(grid))
    heart_bit = 0b0010
    assert allowed[12, 12] == 0b0100  # upper left lung: left lung only, no heart
    assert allowed[25, 17] == 0b0110  # lower medial left lung: lung or heart
    assert allowed[5, 20] == 0b0001  # above the box: background only
    assert allowed[25, 20] == 0b0011  # between the lungs, low: background or heart
    # the unknown band keeps every class but the heart outside the atlas
    banded = allowed_from_v7labs(poly, unknown_band=1, atlas=HeartAtlas(grid))
    assert banded[10, 12] == ALL_CLASSES & ~heart_bit
    # no polygons: no box, the heart stays allowed everywhere
    assert set(np.unique(allowed_from_v7labs(np.zeros((8, 8), np.uint8), 0, HeartAtlas(grid)))) == {0b0011}


# ------------------------------------------------------------------------------------------------- augmentation


def test_augment_moves_image_and_labels_together():
    rng = np.random.default_rng(0)
    image = synthetic_cxr(rng, 96, 96).astype(np.float32)
    labels = synthetic_label_map(96, 96)
    cfg = AugmentConfig(p_blur=0, p_sharpen=0, p_noise=0, p_jpeg=0, p_resample=0, max_gamma=0, contrast=(1, 1))
    cfg = AugmentConfig(**{**cfg.__dict__, "brightness": 0.0})
    for seed in range(5):
        img, lab = augment_pair(image, labels, np.random.default_rng(seed), cfg)
        assert img.shape == image.shape and img.dtype == np.float32 and lab.dtype == np.uint8
        assert set(np.unique(lab)) <= {0, 1, 2, 3}
        # the dark synthetic lungs stay under the lung labels
        assert img[np.isin(lab, (2, 3))].mean() < img[lab == 0].mean()


def test_augment_is_seeded_and_keeps_range():
    image = synthetic_cxr(np.random.default_rng(1), 64, 64).astype(np.float32)
    labels = allowed_from_labels(synthetic_label_map(64, 64))
    a = augment_pair(image, labels, np.random.default_rng(7), fill_label=1)
    b = augment_pair(image, labels, np.random.default_rng(7), fill_label=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].min() >= 0 and a[0].max() <= 255
    assert set(np.unique(a[1])) <= {1, 2, 4, 8}  # one-class bitmasks, background-only where padded
    out = photometric(image, np.random.default_rng(3), AugmentConfig(p_jpeg=1.0, p_resample=1.0))
    assert out.shape == image.shape and not np.array_equal(out, image)


# ------------------------------------------------------------------------------------------------- clean-up


def test_cleanup_removes_islands_and_fills_holes():
    lab = synthetic_label_map(128, 112)
    clean, report = clean_label_map(lab)
    assert np.array_equal(clean, lab) and report.removed == 0 and report.filled == 0
    dirty = lab.copy()
    dirty[5:9, 5:9] = 2  # a "left lung" island above the clavicles on the wrong side
    dirty[120:124, 50:54] = 1  # a heart speck below the lungs
    dirty[60:63, 30:33] = 0  # a hole in the right lung
    clean, report = clean_label_map(dirty)
    assert np.array_equal(clean, lab)
    assert report.removed == 32 and report.filled == 9
    assert report.changed_fraction == pytest.approx(41 / np.count_nonzero(dirty))


def test_cleanup_keeps_each_lung_on_its_side():
    lab = synthetic_label_map(128, 112)
    swapped = lab.copy()
    # a big wrongly labelled "right lung" blob on the image's right, smaller than the true right lung
    swapped[10:20, 80:100] = 3
    clean, _ = clean_label_map(swapped)
    assert not (clean[10:20, 80:100] == 3).any()
    assert np.array_equal(clean == 3, lab == 3)


def test_cleanup_rejects_bad_maps():
    with pytest.raises(ValueError, match="2-D"):
        clean_label_map(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="values"):
        clean_label_map(np.full((4, 4), 7, np.uint8))


def test_convention_aware_lung_jaccard_counts_heart_inside_polygons():
    pred = synthetic_label_map(64, 64)
    poly = pred.copy()
    poly[pred == 1] = 2  # the polygon includes the lung behind our heart
    inside = convention_aware_lung_jaccard(pred, poly)
    strict = np.count_nonzero(np.isin(pred, (2, 3))) / np.count_nonzero(np.isin(poly, (2, 3)))
    assert inside == pytest.approx(1.0) and strict < 1.0


# --------------------------------------------------------------------------------------------------- presets


def test_one_default_segmentation_setting():
    assert default_folder("segmentation") == SHIPPED["segmentation"].path
    assert SHIPPED["segmentation"].path.is_absolute()
    with pytest.raises(KeyError, match="known"):
        default_folder("nope")


def test_pipeline_commands_and_app_read_the_preset():
    from cxr_hub import demo
    from cxr_hub.cli import predict as commands
    from cxr_hub.evaluation import segmentation as evaluation

    seg = SHIPPED["segmentation"]
    assert seg.path == commands.DEFAULT_SEGMENTATION
    assert str(seg.path) == evaluation.DEFAULT_SEGMENTATION
    assert seg.folder == demo.SEGMENTATION_FOLDER and seg.env == demo.SEGMENTATION_ENV


# ------------------------------------------------------------------------------------- evaluation with clean-up


def test_evaluation_reports_postprocessing_and_convention_aware_lung(tmp_path, tiny_fcdensenet_config):
    from conftest import write_synthetic_manifest

    from cxr_hub import FCDenseNetForSemanticSegmentation
    from cxr_hub.evaluation.metrics import CONVENTION_AWARE_LUNG
    from cxr_hub.evaluation.segmentation import evaluate_segmentation

    torch.manual_seed(0)
    model = FCDenseNetForSemanticSegmentation(tiny_fcdensenet_config).eval()
    manifest = write_synthetic_manifest(tmp_path / "data", n=6)
    raw = evaluate_segmentation(manifest, tmp_path / "raw", segmentation=model, undersegmentation=False)
    clean = evaluate_segmentation(
        manifest, tmp_path / "clean", segmentation=model, undersegmentation=False, postprocess=True
    )
    # a tiny FC-DenseNet's config asks for no clean-up: by default it is scored raw, and the clean-up the other way
    assert raw["postprocessing"]["applied"] is False and "scores_with" in raw["postprocessing"]
    assert clean["postprocessing"]["applied"] and clean["postprocessing"]["changed_share_of_labelled_pixels"]["n"] == 6
    # the same inference either way round: the raw run's "with" scores are the clean run's headline, and back
    assert raw["postprocessing"]["scores_with"]["jaccard"] == clean["jaccard"]
    assert clean["postprocessing"]["scores_without"]["jaccard"] == raw["jaccard"]
    # a random tiny network leaves islands: the clean-up changes something on at least one film
    assert clean["postprocessing"]["images_changed"] >= 1
    # convention-aware lung only where the reference has no heart (the v7labs-style "beta" source)
    assert raw["by_source"]["beta"]["jaccard"][CONVENTION_AWARE_LUNG]["n"] == 3
    assert CONVENTION_AWARE_LUNG not in raw["by_source"]["alpha"]["jaccard"]


def test_segmentation_report_table_reads_the_paper_file():
    from cxr_hub.paper import format_mean_sd, paper_table
    from training.segmentation_report import SETS, render_table

    stats = {"mean": 0.5, "std": 0.1, "n": 2}
    run = {
        "n": 2,
        "jaccard": {"lung": stats, "heart": stats},
        "dice": {},
        "postprocessing": {
            "applied": True,
            "changed_share_of_labelled_pixels": stats,
            "images_changed": 1,
            "scores_without": {"jaccard": {"lung": stats}},
        },
    }
    runs = {f"{s}_{c}": run for s in SETS for c in ("with_preprocessing", "without_preprocessing")}
    summary = {
        "runs": runs,
        "wilcoxon_lung_jaccard": {s: {"n": 2, "p_value": 0.5, "median_difference": 0.01} for s in SETS},
        "undersegmentation": {"per_class": {"normal": {"n": 2, "undersegmented": 0, "share": 0.0}}},
        "ctr": {"n": 2, "mae": 0.01, "mean_difference": 0.0, "limits_of_agreement": [-0.02, 0.02]},
    }
    text = "\n".join(render_table({"m": summary}))
    assert format_mean_sd(paper_table("table_v_segmentation_jaccard")["jsrt_preprocessed"]["lung"]) in text
    assert format_mean_sd(paper_table("table_xiii_lung_jaccard_by_network")["unet"]["nlm_mc"]) in text
    assert "| m | 2 | 0.0100 |" in text


def test_warm_start_chain_states_the_total_budget(tmp_path):
    import json

    from training.train_segmentation import SegTrainConfig, budget_text, describe_training, total_budget

    # a first run saved before the heart constraint existed (its config has no atlas fields)
    first = {
        "config": {"lr": 5e-4, "augment": "strong", "partial_labels": True},
        "summary": {"epochs_run": 20, "minutes": 70.0},
    }
    (tmp_path / "training_config.json").write_text(json.dumps(first))
    config = SegTrainConfig(init_from=str(tmp_path), lr=1e-4)
    summary = {"epochs_run": 5, "minutes": 20.5, "device": "cpu", "autocast": "bfloat16", "best_epoch": 4}
    summary["total_budget"] = total_budget(config, summary)
    assert summary["total_budget"]["epochs"] == 25 and summary["total_budget"]["minutes"] == 90.5
    assert summary["total_budget"]["runs"] == 2
    text = budget_text(summary)
    assert (
        "25 epochs (20 at lr 0.0005 (heart allowed anywhere) then 5 at lr 0.0001 (heart atlas + at most 10% of a "
        "polygon's lung)), 90.5 min" in text
    )
    assert describe_training({"init_from": str(tmp_path), "augment": True}).startswith("Warm-started from")
    assert total_budget(SegTrainConfig(), summary)["runs"] == 1


def test_ctr_agreement_bland_altman_numbers():
    from cxr_hub.evaluation.segmentation import ctr_agreement

    a = ctr_agreement([(0.50, 0.45), (0.40, 0.42), (0.48, 0.48)])
    assert a["n"] == 3 and a["mae"] == pytest.approx((0.05 + 0.02 + 0.0) / 3)
    assert a["mean_difference"] == pytest.approx(0.01)
    sd = float(np.std([0.05, -0.02, 0.0], ddof=1))
    assert a["limits_of_agreement"] == pytest.approx([0.01 - 1.96 * sd, 0.01 + 1.96 * sd])
    assert ctr_agreement([]) == {"n": 0}


def test_heart_share_penalty_is_a_hinge_on_the_expected_share_inside_the_lungs():
    from training.losses import heart_share_penalty

    # one image, 4 pixels: 2 inside a polygon (left lung or heart), 1 outside (background or heart), 1 unknown
    allowed = torch.tensor([[[0b0110, 0b0110, 0b0011, ALL_CLASSES]]])
    logits = torch.full((1, 4, 1, 4), -20.0)
    logits[0, 1, 0, :] = 20.0  # the heart everywhere: share 1 inside the lungs
    assert heart_share_penalty(logits, allowed, 0.25).item() == pytest.approx(0.75, abs=1e-6)
    logits[0, 1, 0, 1] = -20.0
    logits[0, 2, 0, 1] = 20.0  # one of the two lung pixels left lung: share 0.5
    assert heart_share_penalty(logits, allowed, 0.25).item() == pytest.approx(0.25, abs=1e-6)
    assert heart_share_penalty(logits, allowed, 0.6).item() == 0.0  # within the limit
    # only the heart inside the lungs counts: the heart outside (pixel 2) and in the band (pixel 3) do not
    soft = torch.zeros(1, 4, 1, 4)
    soft[0, 1] = 2.0  # not saturated, so gradients are visible
    soft.requires_grad_(True)
    heart_share_penalty(soft, allowed, 0.25).backward()
    assert torch.all(soft.grad[0, :, 0, 2:] == 0) and soft.grad[0, 1, 0, 0] > 0 > soft.grad[0, 2, 0, 0]
    # an image without lung pixels adds nothing
    assert heart_share_penalty(torch.zeros(1, 4, 1, 2), torch.tensor([[[0b0011, 0b0001]]]), 0.0).item() == 0.0
