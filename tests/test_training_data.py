"""Patient-level splits (no leaks), the manifest reader and the segmentation data helpers."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from conftest import synthetic_label_map, write_synthetic_manifest

from cxr_hub.manifest import ManifestRow, read_manifest
from training.data import (
    load_or_create_splits,
    make_splits,
    patient_split,
    random_affine,
    segmentation_arrays,
)


def _rows(n_patients: int, images_per_patient: int = 3) -> list[ManifestRow]:
    rows = []
    for p in range(n_patients):
        for k in range(images_per_patient):
            rows.append(
                ManifestRow(
                    id=f"p{p}_{k}",
                    image=None,
                    mask=None,
                    mask_source="",
                    source="s",
                    patient_id=f"p{p}",  # type: ignore[arg-type]
                    label4=["normal", "viral_covid"][p % 2],
                    label3="",
                    view="PA",
                )
            )
    return rows


def _assert_no_patient_in_two_splits(rows, assignment):
    splits_of = defaultdict(set)
    for r in rows:
        if r.id in assignment:
            splits_of[r.patient_id].add(assignment[r.id])
    leaks = {p: s for p, s in splits_of.items() if len(s) > 1}
    assert not leaks, f"patients in two splits: {leaks}"


def test_patient_split_keeps_patients_together_and_fractions():
    rows = _rows(50)
    assignment = patient_split(rows, {"train": 0.8, "val": 0.2}, seed=0, stratify=lambda r: r.label4)
    assert set(assignment) == {r.id for r in rows}
    _assert_no_patient_in_two_splits(rows, assignment)
    val_patients = {r.patient_id for r in rows if assignment[r.id] == "val"}
    assert len(val_patients) == 10
    # stratified: both classes in validation
    assert {r.label4 for r in rows if assignment[r.id] == "val"} == {"normal", "viral_covid"}
    assert patient_split(rows, {"train": 0.8, "val": 0.2}, seed=0, stratify=lambda r: r.label4) == assignment
    assert patient_split(rows, {"train": 0.8, "val": 0.2}, seed=1, stratify=lambda r: r.label4) != assignment
    with pytest.raises(ValueError, match="sum to 1"):
        patient_split(rows, {"train": 0.5}, seed=0)


def test_split_file_is_saved_and_guards_against_another_manifest(tmp_path):
    rows = _rows(20)
    path = tmp_path / "split.json"
    first = load_or_create_splits(rows, path)
    assert json.loads(path.read_text())["splits"] == first
    assert load_or_create_splits(rows, path) == first
    with pytest.raises(ValueError, match="another manifest"):
        load_or_create_splits(rows[:-3], path)


def test_real_data_split_has_no_patient_leak(cxr_data):
    rows = read_manifest(cxr_data / "manifest.csv")
    splits = make_splits(rows, seed=0)
    for assignment in splits.values():
        _assert_no_patient_in_two_splits(rows, assignment)
    seg = splits["segmentation"]
    assert all(r.source == "jsrt" for r in rows if r.id in seg)
    share_val = sum(v == "val" for v in seg.values()) / len(seg)
    assert 0.18 <= share_val <= 0.22


def test_committed_split_file_matches_the_data(cxr_data):
    from training.data import DEFAULT_SPLIT_FILE

    rows = read_manifest(cxr_data / "manifest.csv")
    saved = json.loads(DEFAULT_SPLIT_FILE.read_text())
    assert saved["splits"] == make_splits(rows, seed=saved["seed"])
    for assignment in saved["splits"].values():
        _assert_no_patient_in_two_splits(rows, assignment)


def test_manifest_reader_resolves_paths_and_merges_duplicate_rows(tmp_path):
    csv_path = write_synthetic_manifest(tmp_path, n=4)
    text = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([*text, text[1]]) + "\n")  # the same film listed twice
    rows = read_manifest(tmp_path)
    assert len(rows) == 4 and rows[0].image.is_file() and rows[0].mask.is_file()
    assert rows[1].annotated_structures() == ("left_lung", "right_lung")
    csv_path.write_text("\n".join([*text, text[1].replace("p0", "p9")]) + "\n")
    with pytest.raises(ValueError, match="appears twice"):
        read_manifest(tmp_path)


def test_segmentation_arrays_and_cache(tmp_path):
    write_synthetic_manifest(tmp_path / "data", n=3)
    rows = read_manifest(tmp_path / "data")
    images, labels = segmentation_arrays(rows, size=64, cache_dir=tmp_path / "cache")
    assert images.shape == (3, 64, 64) and labels.shape == (3, 64, 64)
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 255
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert len(list((tmp_path / "cache").iterdir())) == 1
    again, _ = segmentation_arrays(rows, size=64, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again, images)


def test_random_affine_moves_image_and_labels_together(rng):
    lab = synthetic_label_map(128, 112)
    img = np.where(lab > 0, 50.0, 200.0).astype(np.float32)
    out_img, out_lab = random_affine(img, lab, rng, max_gamma=0.0)
    assert out_img.shape == img.shape and out_lab.dtype == np.uint8
    assert set(np.unique(out_lab)) <= {0, 1, 2, 3}
    # labelled pixels stay dark after the shared transform (inner pixels; borders interpolate)
    inner = out_lab > 0
    assert np.median(out_img[inner]) < 100 and np.median(out_img[~inner]) > 150


def test_out_of_budget_uses_this_runs_pace(monkeypatch):
    import training.runtime as runtime

    monkeypatch.setattr(runtime.time, "time", lambda: 600.0)  # 10 minutes after start_time=0
    assert not runtime.out_of_budget(0.0, 2, 20.0)  # 5 min/epoch: 10 + 5 <= 20
    assert runtime.out_of_budget(0.0, 1, 15.0)  # 10 min/epoch: 10 + 10 > 15
    assert not runtime.out_of_budget(0.0, 1, None)
    assert not runtime.out_of_budget(0.0, 0, 1.0)
