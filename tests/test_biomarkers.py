"""Cardiothoracic ratio, lung intensity and lung areas on synthetic label maps with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxr_hub.biomarkers import cardiothoracic_ratio, compute_biomarkers, max_row_width


def _label_map() -> np.ndarray:
    lab = np.zeros((100, 120), dtype=np.uint8)
    lab[20:80, 10:41] = 2  # left lung: columns 10..40
    lab[15:85, 80:111] = 3  # right lung: columns 80..110 → thorax 10..110 = 101 px
    lab[40:60, 45:75] = 1  # heart 30 px wide ...
    lab[50, 43:77] = 1  # ... and 34 px on its widest row
    return lab


def test_max_row_width():
    m = np.zeros((5, 10), dtype=bool)
    assert max_row_width(m) == 0
    m[1, 2] = True
    assert max_row_width(m) == 1
    m[3, [1, 8]] = True  # a gap counts: extent, not pixel count
    assert max_row_width(m) == 8


def test_cardiothoracic_ratio_known_widths():
    ratio, heart, thorax = cardiothoracic_ratio(_label_map())
    assert (heart, thorax) == (34, 101)
    assert ratio == pytest.approx(34 / 101)


def test_biomarkers_values():
    lab = _label_map()
    rng = np.random.default_rng(0)
    pre = rng.uniform(0, 255, lab.shape).astype(np.float32)
    b = compute_biomarkers(lab, pre)
    lung = (lab == 2) | (lab == 3)
    assert b.cardiothoracic_ratio == pytest.approx(34 / 101)
    assert b.lung_mean_intensity == pytest.approx(float(pre[lung].astype(np.float64).mean()))
    assert b.lung_std_intensity == pytest.approx(float(pre[lung].astype(np.float64).std()))
    assert (b.left_lung_area_px, b.right_lung_area_px) == (60 * 31, 70 * 31)
    assert b.left_lung_area_fraction == pytest.approx(60 * 31 / 12000)
    assert b.lung_area_fraction == pytest.approx((60 * 31 + 70 * 31) / 12000)
    assert b.warnings == []
    assert json.dumps(b.to_dict(), allow_nan=False)


def test_no_heart_gives_nan_and_a_warning():
    lab = _label_map()
    lab[lab == 1] = 0
    b = compute_biomarkers(lab, np.full(lab.shape, 100.0, np.float32))
    assert math.isnan(b.cardiothoracic_ratio) and b.heart_width_px == 0
    assert any("no heart" in w for w in b.warnings)
    d = b.to_dict()
    assert d["cardiothoracic_ratio"] is None
    json.dumps(d, allow_nan=False)


def test_no_lung_gives_nan_statistics():
    lab = np.zeros((20, 20), np.uint8)
    lab[5:10, 5:10] = 1
    b = compute_biomarkers(lab, np.zeros((20, 20), np.float32))
    assert math.isnan(b.cardiothoracic_ratio) and math.isnan(b.lung_mean_intensity)
    assert b.lung_area_fraction == 0
    assert len(b.warnings) == 2
    with pytest.raises(ValueError):
        compute_biomarkers(lab, np.zeros((10, 20)))


def test_cardiothoracic_ratio_ignores_stray_specks():
    """A speck labelled heart (or lung) away from the organ must not stretch its width: largest region only."""
    lab = _label_map()
    lab[5, 2] = 1  # a heart speck far left of the heart, on a row of its own
    lab[90, 115:118] = 1
    lab[50, 0] = 2  # a lung speck outside the thorax, on a row both lungs cross
    ratio, heart, thorax = cardiothoracic_ratio(lab)
    assert (heart, thorax) == (34, 101)
    assert ratio == pytest.approx(34 / 101)
    # the old definition measures every labelled pixel
    _, heart_all, thorax_all = cardiothoracic_ratio(lab, largest_only=False)
    assert heart_all == 34 and thorax_all == 111  # the lung speck at column 0 stretches the row extent to 0..110
    lab[50, 5] = 1  # a heart speck on the heart's widest row
    assert cardiothoracic_ratio(lab)[1] == 34
    assert cardiothoracic_ratio(lab, largest_only=False)[1] == 76 - 5 + 1


def test_largest_component():
    from cxr_hub.biomarkers import largest_component

    m = np.zeros((10, 10), dtype=bool)
    assert not largest_component(m).any()
    m[1:3, 1:3] = True  # 4 px
    m[5:9, 5:8] = True  # 12 px
    m[9, 9] = True  # diagonal neighbour of (8, 7)? no: (8, 7) and (9, 9) are two apart
    out = largest_component(m)
    assert out.sum() == 12 and out[5:9, 5:8].all()
    m[9, 8] = True  # 8-connected to (8, 7): joins the big region together with (9, 9)
    assert largest_component(m).sum() == 14
    with pytest.raises(ValueError, match="2-D"):
        largest_component(np.zeros((2, 2, 2), bool))
