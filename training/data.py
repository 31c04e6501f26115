"""Data layer shared by every training and evaluation script: data location, patient-level splits, datasets.

The split is made once with a fixed seed and saved to a JSON file (``training/splits/splits_seed0.json`` by
default), so every script and every machine uses the same split. Splits are by ``patient_id``: several images can
show one patient, and an image's twin in another split would leak.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cxr_hub.io import load_image
from cxr_hub.manifest import ManifestRow, load_label_map, read_manifest
from cxr_hub.preprocessing import preprocess_cxr, resize_image, resize_label_map

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPLIT_FILE = REPO_ROOT / "training" / "splits" / "splits_seed0.json"
SEGMENTATION_FRACTIONS = {"train": 0.8, "val": 0.2}
CLASSIFICATION_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def resolve_data_root(data: str | Path | None = None) -> Path:
    """The data folder: ``data`` if given, else env ``CXR_DATA``, else ``../shared/data/cxr`` beside the repo."""
    root = Path(data) if data else Path(os.environ.get("CXR_DATA", REPO_ROOT.parent / "shared" / "data" / "cxr"))
    if not (root / "manifest.csv").is_file():
        raise FileNotFoundError(
            f"No manifest.csv in {root}. Pass --data DIR or set CXR_DATA to a folder in the cxr-hub manifest format."
        )
    return root


def patient_split(
    rows: Sequence[ManifestRow],
    fractions: Mapping[str, float],
    seed: int,
    stratify: Callable[[ManifestRow], str] | None = None,
) -> dict[str, str]:
    """Assigns every row to a split so that all images of one patient share a split.

    Patients are grouped by stratum (e.g. their label), shuffled with ``seed`` and dealt out by the fractions within
    each stratum, so class proportions stay close to the whole set's.

    Args:
        rows: manifest rows.
        fractions: split name → fraction (summing to 1), in the order splits are filled.
        seed: shuffling seed.
        stratify: a row's stratum (e.g. its label), or None; a patient takes its first image's stratum.

    Returns:
        image id → split name.
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {dict(fractions)}.")
    by_patient: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        by_patient[r.patient_id].append(r)
    strata: dict[str, list[str]] = defaultdict(list)
    for pid, prs in sorted(by_patient.items()):
        strata[stratify(prs[0]) if stratify else ""].append(pid)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    names = list(fractions)
    for key in sorted(strata):
        pids = strata[key]
        rng.shuffle(pids)
        n = len(pids)
        # cumulative rounding keeps every split's share as close as possible to its fraction
        bounds = np.round(np.cumsum([fractions[s] for s in names]) * n).astype(int)
        start = 0
        for name, stop in zip(names, bounds, strict=True):
            for pid in pids[start:stop]:
                for r in by_patient[pid]:
                    assignment[r.id] = name
            start = stop
    return assignment


def make_splits(rows: Sequence[ManifestRow], seed: int = 0) -> dict[str, dict[str, str]]:
    """The project's splits.

    - ``segmentation``: images with SCR masks (JSRT), 80 % train / 20 % validation, by patient.
    - ``classification``: images with a ``label4`` or ``label3`` label, 70 / 10 / 20 % train / val / test by patient,
      stratified by (label4 or label3, source) so each source's classes are represented in every split.
    """
    seg_rows = [r for r in rows if r.mask is not None and r.mask_source == "scr"]
    clf_rows = [r for r in rows if r.label4 or r.label3]
    return {
        "segmentation": patient_split(seg_rows, SEGMENTATION_FRACTIONS, seed),
        "classification": patient_split(
            clf_rows, CLASSIFICATION_FRACTIONS, seed, stratify=lambda r: f"{r.label4 or r.label3}|{r.source}"
        ),
    }


def manifest_fingerprint(rows: Sequence[ManifestRow]) -> str:
    """A short hash of the ids and patients, to notice a split file made for another manifest."""
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r.id):
        h.update(f"{r.id}\t{r.patient_id}\n".encode())
    return h.hexdigest()[:16]


def load_or_create_splits(
    rows: Sequence[ManifestRow], split_file: str | Path = DEFAULT_SPLIT_FILE, seed: int = 0
) -> dict[str, dict[str, str]]:
    """Loads the saved split, or makes and saves it on first use.

    Raises:
        ValueError: the saved split was made for a different manifest (ids or patients changed).
    """
    path = Path(split_file)
    fingerprint = manifest_fingerprint(rows)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("manifest_fingerprint") != fingerprint:
            raise ValueError(
                f"{path} was made for another manifest (fingerprint {saved.get('manifest_fingerprint')} != "
                f"{fingerprint}). Pass --split-file with a new path to make a split for this data."
            )
        return saved["splits"]
    splits = make_splits(rows, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"seed": seed, "manifest_fingerprint": fingerprint, "splits": splits}
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return splits


def rows_in_split(rows: Sequence[ManifestRow], splits: Mapping[str, str], name: str) -> list[ManifestRow]:
    """The rows assigned to split ``name`` in one of the split maps."""
    return [r for r in rows if splits.get(r.id) == name]


def segmentation_arrays(
    rows: Sequence[ManifestRow], size: int = 256, preprocess: bool = True, cache_dir: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loads, preprocesses and resizes images with their label maps.

    Args:
        rows: rows with masks.
        size: output side (the paper: 256).
        preprocess: the paper's histogram equalisation + gamma (False: min-max scaling only).
        cache_dir: where to keep an ``.npz`` of the arrays between runs (keyed by ids, size and preprocessing).

    Returns:
        images float32 (N, size, size) in [0, 255] and labels uint8 (N, size, size).
    """
    key = hashlib.sha256(("|".join(r.id for r in rows) + f"|{size}|{preprocess}").encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"seg_{size}_{'pre' if preprocess else 'raw'}_{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            return z["images"], z["labels"]
    images = np.empty((len(rows), size, size), np.float32)
    labels = np.empty((len(rows), size, size), np.uint8)
    for i, r in enumerate(tqdm(rows, desc=f"loading {size}px images", unit="img")):
        if r.mask is None:
            raise ValueError(f"Row {r.id} has no mask.")
        img = load_image(r.image)
        lab = load_label_map(r.mask)
        if lab.shape != img.shape:
            raise ValueError(f"Row {r.id}: mask {lab.shape} and image {img.shape} differ in size.")
        pre = preprocess_cxr(img, equalize=preprocess, gamma=0.5 if preprocess else None)
        images[i] = resize_image(pre, size)
        labels[i] = resize_label_map(lab, size)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, images=images, labels=labels)
    return images, labels


def random_affine(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    max_rotate: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    max_shift: float = 0.06,
    max_gamma: float = 0.2,
    fill_label: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Applies one random rotation/scale/shift to an image and its label map (nearest for labels) plus a mild gamma.

    No horizontal flips: they would swap the patient's left and right lungs and move the heart.

    Args:
        image: (H, W) float32 in [0, 255].
        labels: (H, W) uint8 label map.
        rng: random generator.
        fill_label: label value of pixels brought in from outside the label map (0: background; 1 for a bitmask of
            allowed classes, :mod:`training.losses`).

    Returns:
        The transformed (image, labels), same shapes and dtypes.
    """
    h, w = image.shape
    angle = rng.uniform(-max_rotate, max_rotate)
    s = rng.uniform(*scale)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, s)
    m[:, 2] += rng.uniform(-max_shift, max_shift, 2) * (w, h)
    img = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    lab = cv2.warpAffine(
        labels, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=fill_label
    )
    g = float(np.exp(rng.uniform(-max_gamma, max_gamma)))
    img = (255.0 * np.power(np.clip(img, 0, 255) / 255.0, g)).astype(np.float32)
    return img, lab


def read_rows(data: str | Path | None = None) -> tuple[Path, list[ManifestRow]]:
    """Resolves the data folder and reads its manifest."""
    root = resolve_data_root(data)
    return root, read_manifest(root / "manifest.csv")
