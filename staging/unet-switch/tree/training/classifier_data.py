"""Classifier data: lung-masked 1024 frames, cached once, from the shared data or from a device pack.

The classifiers train on exactly what the pipeline feeds them at inference: the paper's preprocessing (histogram
equalisation + gamma 0.5) of the original image resized to ``image_size`` (1024), multiplied by the lung mask that
the shipped segmentation model finds. Both come from :meth:`cxr_hub.CXRPipeline.prepare` — the same code path as
inference, so masks are exactly the pipeline's — and are cached once per image under
``data_cache/classifier/<key>/<id>.npz``:

* ``frame``: uint8 (S, S), the preprocessed image resized to S (unmasked; rounding to uint8 changes a gray level by
  at most 0.5 of 255, i.e. 0.008 after normalisation with std 0.25);
* ``mask``: the lung mask at S, bit-packed.

``<key>`` hashes the segmentation model (its ``config.json`` *and* weights: retraining changes masks without
changing the config) and the preprocessing (S, equalisation, gamma), so a new model or setting never reuses stale
masks. Rows the pipeline rejects (no lung found) are recorded in ``failures.json`` there and skipped.

A *pack* (``training/pack_classifier_data.py``) holds the same frames lung-masked as JPEG plus 1-bit PNG masks and a
``pack.json`` with the rows and their split, for GPU machines that cannot see the shared data: :func:`load_pack`
reads it back into the same :class:`ClassifierData`.

Usage (build the cache before a training run or a pack, on the machine that has the data):
    python -m training.classifier_data [--segmentation models/cxr-lung-seg-unet] [--task all]
        [--data DIR] [--image-size 1024] [--limit N]
    python -m training.classifier_data --pack .pack/classifier     # summary of a pack
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxr_hub.manifest import ManifestRow
from cxr_hub.models import LABEL_SETS
from cxr_hub.preprocessing import resize_image, resize_label_map
from cxr_hub.presets import repo_relative_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEGMENTATION = repo_relative_folder("segmentation")  # recorded in training configs: repo-relative
DEFAULT_CACHE_DIR = "data_cache"
DEFAULT_PACK_DIR = ".pack/classifier"
TASKS = ("label4", "label3")
PACK_FORMAT = 1
CACHE_FORMAT = 1


@dataclass
class ClassifierData:
    """Lung-masked classifier frames of one split, in memory.

    Attributes:
        ids: image ids, length N.
        labels: int64 (N,) class indices into ``class_names``.
        class_names: the task's classes (``LABEL_SETS[task]``, tuberculosis included for label4).
        sources: image source of each row (``jsrt``, ``cohen``, ``nih``...).
        patients: patient id of each row.
        frames: uint8 (N, S, S) preprocessed frames, 0 gray level outside the lungs.
        masks: bool (N, S, S) lung masks in the same frame (patch centres are drawn from them).
        views: projection of each row (PA, AP, ...), may be empty strings.
    """

    ids: list[str]
    labels: np.ndarray
    class_names: list[str]
    sources: list[str]
    patients: list[str]
    frames: np.ndarray
    masks: np.ndarray
    views: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (
            len(self.labels) == len(self.sources) == len(self.patients) == len(self.frames) == len(self.masks) == n
        ):
            raise ValueError("ClassifierData fields must all have one entry per image.")
        if self.frames.shape != self.masks.shape:
            raise ValueError(f"frames {self.frames.shape} and masks {self.masks.shape} differ in shape.")
        if not self.views:
            self.views = [""] * n

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_size(self) -> int:
        """Side S of the frames."""
        return int(self.frames.shape[-1])

    def label_names(self) -> list[str]:
        """Class name of each row."""
        return [self.class_names[i] for i in self.labels]

    def class_counts(self) -> dict[str, int]:
        """Images per class (every class of the task, zeros included)."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {c: int(n) for c, n in zip(self.class_names, counts, strict=True)}

    def subset(self, index: Sequence[int] | np.ndarray) -> ClassifierData:
        """The rows at ``index`` (arrays copied only where numpy must)."""
        idx = np.asarray(index, dtype=np.int64)
        return ClassifierData(
            ids=[self.ids[i] for i in idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            sources=[self.sources[i] for i in idx],
            patients=[self.patients[i] for i in idx],
            frames=self.frames[idx],
            masks=self.masks[idx],
            views=[self.views[i] for i in idx],
        )


def task_rows(rows: Sequence[ManifestRow], task: str) -> list[ManifestRow]:
    """Rows with a label for ``task`` ("label4" or "label3")."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    return [r for r in rows if r.label(task)]


def masked_frame(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 frame with 0 gray level outside the lung, as the pipeline's frame before normalisation."""
    return np.where(mask, frame, 0).astype(np.uint8)


def global_frames(data: ClassifierData, size: int, lung_mask: bool = True) -> np.ndarray:
    """The global classifier's inputs: whole masked frames resized to ``size`` (area averaging), float32 [0, 255].

    The mask is resized with nearest neighbour and applied again after resizing, as the pipeline does for its global
    classifier (which resizes from the original image rather than from the 1024 frame; the difference is a
    fraction of a gray level inside the lung). ``lung_mask=False`` (frames loaded unmasked) skips the mask.

    Returns:
        float32 (N, size, size).
    """
    out = np.empty((len(data), size, size), np.float32)
    for i in range(len(data)):
        resized = resize_image(data.frames[i].astype(np.float32), size)
        out[i] = resized * resize_label_map(data.masks[i], size) if lung_mask else resized
    return out


def fraction_subset(data: ClassifierData, fraction: float, seed: int = 0) -> ClassifierData:
    """A patient-level, class-stratified share of ``data`` (the training-set-size ablation, the paper's Fig. 12).

    Patients are grouped by the class of their first image; within each class they are shuffled once with
    ``default_rng(seed)`` and the first ``ceil(fraction * n)`` are kept (at least one per present class). The same
    seed gives nested subsets: the 10 % patients are among the 30 %, those among the 50 %.

    Args:
        data: the training images.
        fraction: share of each class's patients to keep, in (0, 1].
        seed: shuffle seed.

    Returns:
        The kept images, in their original order.

    Raises:
        ValueError: ``fraction`` outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if fraction == 1.0:
        return data
    patient_class: dict[str, int] = {}
    for patient, label in zip(data.patients, data.labels, strict=True):
        patient_class.setdefault(patient, int(label))
    keep: set[str] = set()
    for c in sorted(set(patient_class.values())):
        members = sorted(p for p, k in patient_class.items() if k == c)
        order = np.random.default_rng([seed, c]).permutation(len(members))
        keep.update(members[j] for j in order[: max(1, math.ceil(fraction * len(members)))])
    return data.subset([i for i, p in enumerate(data.patients) if p in keep])


def concatenate(parts: Sequence[ClassifierData]) -> ClassifierData:
    """The rows of several :class:`ClassifierData` of one task, in order.

    Raises:
        ValueError: no parts, or parts of different tasks (class names) or frame sizes.
    """
    if not parts:
        raise ValueError("concatenate needs at least one ClassifierData.")
    names = parts[0].class_names
    if any(p.class_names != names for p in parts) or len({p.frames.shape[1:] for p in parts}) > 1:
        raise ValueError("concatenate needs parts of one task and one frame size.")
    return ClassifierData(
        ids=[i for p in parts for i in p.ids],
        labels=np.concatenate([p.labels for p in parts]),
        class_names=list(names),
        sources=[s for p in parts for s in p.sources],
        patients=[s for p in parts for s in p.patients],
        frames=np.concatenate([p.frames for p in parts]),
        masks=np.concatenate([p.masks for p in parts]),
        views=[v for p in parts for v in p.views],
    )


def hold_out_source_normals(
    splits: Mapping[str, ClassifierData], source: str, normal: str = "normal"
) -> tuple[dict[str, ClassifierData], ClassifierData]:
    """Leave-one-source-out for normals: the normal films of ``source`` leave every split and form one held-out set.

    A normal film of a collection the classifier never saw must still be called normal; if the classifier learnt
    "this collection's look means normal", it fails here. The held-out set takes that source's normals of all splits
    (none of them was trained on), so the estimate rests on every such film rather than on the test split alone.

    Args:
        splits: ``{"train": ..., "val": ..., "test": ...}``.
        source: the collection to hold out (``jsrt``, ``nih``, ...).
        normal: the normal class's name.

    Returns:
        ``(splits without those films, the held-out films)``.

    Raises:
        ValueError: no normal film of that source in any split (the choices are listed).
    """
    kept: dict[str, ClassifierData] = {}
    held: list[ClassifierData] = []
    for name, data in splits.items():
        normal_id = data.class_names.index(normal)
        out = (data.labels == normal_id) & (np.asarray(data.sources) == source)
        kept[name] = data.subset(np.flatnonzero(~out))
        if out.any():
            held.append(data.subset(np.flatnonzero(out)))
    if not held:
        sources = sorted(
            {s for d in splits.values() for s, y in zip(d.sources, d.label_names(), strict=True) if y == normal}
        )
        raise ValueError(f"No {normal} film of source {source!r} to hold out; sources with {normal} films: {sources}.")
    return kept, concatenate(held)


# --------------------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------------------


def require_segmentation(folder: str | Path) -> Path:
    """The segmentation model folder, or a FileNotFoundError that says how to get one."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"No segmentation model at {path} (no config.json). The classifiers train on lung-masked images, and the "
            "masks come from the shipped segmentation model: train it with `python -m training.train_segmentation`, "
            "pass --segmentation DIR (a save_pretrained folder), or train from a pack made elsewhere with --pack DIR."
        )
    return path


def segmentation_fingerprint(folder: str | Path) -> str:
    """16-hex hash of a segmentation model folder's ``config.json`` and weight files.

    Raises:
        FileNotFoundError: not a model folder.
    """
    path = require_segmentation(folder)
    h = hashlib.sha256()
    files = [path / "config.json", *sorted(path.glob("*.safetensors"))]
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def cache_key(seg_fingerprint: str, image_size: int, do_equalize: bool, gamma: float | None) -> str:
    """Folder name of a cache: segmentation model + preprocessing."""
    return (
        f"seg{seg_fingerprint}_s{int(image_size)}_eq{int(bool(do_equalize))}_g{gamma if gamma is not None else 'none'}"
    )


def safe_name(image_id: str) -> str:
    """A file name for an id: kept when already safe, else sanitised with a short hash (ids stay distinct)."""
    if re.fullmatch(r"[A-Za-z0-9_.+-]+", image_id) and not image_id.startswith("."):
        return image_id
    digest = hashlib.sha256(image_id.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", image_id).lstrip(".")[:80] + "_" + digest


def write_cached(folder: Path, image_id: str, frame: np.ndarray, mask: np.ndarray) -> Path:
    """Stores one image's uint8 frame and bit-packed mask (written to a temporary name, then renamed)."""
    path = folder / f"{safe_name(image_id)}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, frame=frame.astype(np.uint8), mask=np.packbits(mask.astype(bool)), shape=mask.shape)
    tmp.replace(path)  # a run killed mid-write never leaves a truncated entry behind
    return path


def read_cached(folder: Path, image_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(frame uint8 (S, S), mask bool (S, S))`` of a cached image, or None when it is not cached."""
    path = folder / f"{safe_name(image_id)}.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        shape = tuple(int(s) for s in z["shape"])
        mask = np.unpackbits(z["mask"], count=shape[0] * shape[1]).reshape(shape).astype(bool)
        return z["frame"], mask


@dataclass
class CacheResult:
    """Outcome of :func:`build_cache`: the folder, how many images were computed or reused, and the failures."""

    folder: Path
    built: int
    reused: int
    failures: dict[str, str]
    meta: dict[str, Any]


def build_cache(
    rows: Sequence[ManifestRow],
    segmentation: str | Path,
    cache_root: str | Path = DEFAULT_CACHE_DIR,
    *,
    image_size: int = 1024,
    do_equalize: bool = True,
    gamma: float | None = 0.5,
    device: str | None = None,
    progress: bool = True,
) -> CacheResult:
    """Computes (once) the preprocessed frame and lung mask of every row with :meth:`CXRPipeline.prepare`.

    The segmentation model is loaded only when some row is not cached yet.

    Args:
        rows: manifest rows (absolute image paths).
        segmentation: segmentation model folder (``save_pretrained`` output).
        cache_root: cache root; entries go to ``<cache_root>/classifier/<cache_key>/``.
        image_size: side of the classifier frame S (the paper: 1024).
        do_equalize: the classifier's histogram equalisation.
        gamma: the classifier's gamma.
        device: device of the segmentation model (default: CUDA when available).
        progress: show a tqdm bar.

    Returns:
        CacheResult; ``failures`` maps ids to the reason (e.g. no lung found), also saved in ``failures.json``.

    Raises:
        FileNotFoundError: no segmentation model at ``segmentation``.
    """
    seg_fp = segmentation_fingerprint(segmentation)
    folder = Path(cache_root) / "classifier" / cache_key(seg_fp, image_size, do_equalize, gamma)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": CACHE_FORMAT,
        "segmentation": str(segmentation),
        "segmentation_fingerprint": seg_fp,
        "image_size": int(image_size),
        "do_equalize": bool(do_equalize),
        "gamma": gamma,
        "frame": "preprocess_cxr -> resize_image to image_size -> rint -> uint8 (unmasked)",
        "mask": "CXRPipeline.prepare(...).frame_mask, np.packbits",
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    failures_path = folder / "failures.json"
    known_failures: dict[str, str] = json.loads(failures_path.read_text()) if failures_path.is_file() else {}
    todo = [r for r in rows if r.id not in known_failures and not (folder / f"{safe_name(r.id)}.npz").is_file()]
    failures = {r.id: known_failures[r.id] for r in rows if r.id in known_failures}
    if todo:
        from cxr_hub import PatchClassifierConfig
        from cxr_hub.evaluation.segmentation import load_segmentation_model
        from cxr_hub.io import CXRInputError
        from cxr_hub.pipeline import CXRPipeline

        seg = load_segmentation_model(segmentation, device)
        # fp32 whatever the pipeline's default: the cached masks are the training data of the shipped models. No input
        # check: these are curated frontal films, and the check guards uploads; a training set must not depend on
        # its calibration (it refuses a few extreme real films, e.g. a white-out ICU film)
        patch = min(224, int(image_size))  # any valid patch size: only the frame is used
        frame = PatchClassifierConfig(
            image_size=image_size, patch_size=patch, input_size=patch, do_equalize=do_equalize, gamma=gamma
        )
        # segmentation-only mode: the frame follows ``frame`` and no classifier network is built for nothing
        pipe = CXRPipeline(
            seg, None, device=seg.device, segmentation_precision="fp32", check_input=False, frame_config=frame
        )
        for row in tqdm(todo, desc=f"lung masks + {image_size}px frames", unit="img", disable=not progress):
            try:
                prepared = pipe.prepare(row.image)
            except (CXRInputError, OSError) as exc:
                failures[row.id] = str(exc)
                known_failures[row.id] = str(exc)
                failures_path.write_text(json.dumps(known_failures, indent=1, sort_keys=True) + "\n")
                continue
            frame = np.clip(np.rint(resize_image(prepared.preprocessed, image_size)), 0, 255).astype(np.uint8)
            write_cached(folder, row.id, frame, prepared.frame_mask)
    return CacheResult(folder, built=len(todo), reused=len(rows) - len(todo), failures=failures, meta=meta)


def load_cached_data(
    rows: Sequence[ManifestRow],
    task: str,
    folder: str | Path,
    class_names: Sequence[str] | None = None,
    lung_mask: bool = True,
) -> tuple[ClassifierData, list[str]]:
    """Reads the cached frames of the rows labelled for ``task`` into a :class:`ClassifierData`.

    Args:
        rows: manifest rows (those without a label for the task are ignored).
        task: "label4" or "label3".
        folder: a cache folder written by :func:`build_cache`.
        class_names: class order (default ``LABEL_SETS[task]``).
        lung_mask: zero the frames outside the lungs (the paper); False keeps them whole (the mask ablation).

    Returns:
        ``(data, missing)``: the data and the ids that are not in the cache (failures or not built).
    """
    names = list(class_names or LABEL_SETS[task])
    index = {c: i for i, c in enumerate(names)}
    kept: list[ManifestRow] = []
    frames, masks, missing = [], [], []
    for r in task_rows(rows, task):
        if r.label(task) not in index:
            raise ValueError(f"Row {r.id}: {task} label {r.label(task)!r} is not one of {names}.")
        cached = read_cached(Path(folder), r.id)
        if cached is None:
            missing.append(r.id)
            continue
        frame, mask = cached
        kept.append(r)
        frames.append(masked_frame(frame, mask) if lung_mask else frame)
        masks.append(mask)
    data = _assemble(
        [r.id for r in kept],
        [index[r.label(task)] for r in kept],
        names,
        [r.source for r in kept],
        [r.patient_id for r in kept],
        frames,
        masks,
        [r.view for r in kept],
    )
    return data, missing


def _assemble(
    ids: list[str],
    labels: list[int],
    names: list[str],
    sources: list[str],
    patients: list[str],
    frames: list[np.ndarray],
    masks: list[np.ndarray],
    views: list[str],
) -> ClassifierData:
    if frames:
        frame_arr, mask_arr = np.stack(frames), np.stack(masks)
    else:
        frame_arr, mask_arr = np.zeros((0, 1, 1), np.uint8), np.zeros((0, 1, 1), bool)
    return ClassifierData(
        ids=ids,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=names,
        sources=sources,
        patients=patients,
        frames=frame_arr,
        masks=mask_arr,
        views=views,
    )


# --------------------------------------------------------------------------------------------------------------------
# Pack (reading side; writing is training/pack_classifier_data.py)
# --------------------------------------------------------------------------------------------------------------------


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """uint8 (H, W) gray frame → baseline JPEG bytes (no chroma: gray)."""
    buf = io.BytesIO()
    Image.fromarray(frame.astype(np.uint8), mode="L").save(buf, "JPEG", quality=int(quality), optimize=True)
    return buf.getvalue()


def encode_mask_png(mask: np.ndarray) -> bytes:
    """bool (H, W) mask → 1-bit PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(bool)).convert("1").save(buf, "PNG", optimize=True)
    return buf.getvalue()


def decode_frame(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes → uint8 (H, W)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("L"), dtype=np.uint8)


def decode_mask(data: bytes) -> np.ndarray:
    """1-bit PNG bytes → bool (H, W)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("L")) > 0


def read_pack_meta(pack_dir: str | Path) -> dict[str, Any]:
    """``pack.json`` of a pack folder.

    Raises:
        FileNotFoundError: no pack there.
        ValueError: a pack format this code does not read.
    """
    path = Path(pack_dir) / "pack.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"No pack at {Path(pack_dir)} (no pack.json). Make one with `python -m training.pack_classifier_data`."
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != PACK_FORMAT:
        raise ValueError(f"{path}: pack format {meta.get('format')!r}, this code reads format {PACK_FORMAT}.")
    return meta


def load_pack(
    pack_dir: str | Path, task: str, class_names: Sequence[str] | None = None
) -> tuple[dict[str, ClassifierData], dict[str, Any]]:
    """Reads a pack into one :class:`ClassifierData` per split for ``task``.

    The JPEG frames are decoded and masked again with the lossless masks, so the gray level outside the lungs is
    exactly 0 (JPEG ringing at the lung border never leaks outside).

    Args:
        pack_dir: folder written by ``training/pack_classifier_data.py``.
        task: "label4" or "label3".
        class_names: class order (default ``LABEL_SETS[task]``).

    Returns:
        ``({split: data}, pack meta)``; splits as in the pack (train / val / test).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    root = Path(pack_dir)
    meta = read_pack_meta(root)
    names = list(class_names or LABEL_SETS[task])
    index = {c: i for i, c in enumerate(names)}
    by_split: dict[str, list[dict[str, Any]]] = {}
    for r in meta["rows"]:
        if r.get(task) and r.get("split"):
            by_split.setdefault(r["split"], []).append(r)
    out: dict[str, ClassifierData] = {}
    for split, rs in by_split.items():
        frames, masks = [], []
        for r in tqdm(rs, desc=f"reading pack ({split})", unit="img", leave=False):
            mask = decode_mask((root / r["mask"]).read_bytes())
            frames.append(masked_frame(decode_frame((root / r["frame"]).read_bytes()), mask))
            masks.append(mask)
        unknown = sorted({r[task] for r in rs} - set(index))
        if unknown:
            raise ValueError(f"Pack rows carry {task} label(s) {unknown} that are not in {names}.")
        out[split] = _assemble(
            [r["id"] for r in rs],
            [index[r[task]] for r in rs],
            names,
            [r.get("source", "unknown") for r in rs],
            [r.get("patient_id", r["id"]) for r in rs],
            frames,
            masks,
            [r.get("view", "") for r in rs],
        )
    return out, meta


# --------------------------------------------------------------------------------------------------------------------
# One call for the training script
# --------------------------------------------------------------------------------------------------------------------


def split_counts(splits: Mapping[str, ClassifierData]) -> dict[str, dict[str, int]]:
    """``{split: {class: images}}`` (every class of the task, zeros included)."""
    return {name: d.class_counts() for name, d in splits.items()}


def load_task_splits(
    task: str,
    *,
    data: str | Path | None = None,
    pack: str | Path | None = None,
    segmentation: str | Path = DEFAULT_SEGMENTATION,
    split_file: str | Path | None = None,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    image_size: int = 1024,
    do_equalize: bool = True,
    gamma: float | None = 0.5,
    device: str | None = None,
    limit: int | None = None,
    lung_mask: bool = True,
) -> tuple[dict[str, ClassifierData], dict[str, Any]]:
    """Train / val / test :class:`ClassifierData` for ``task``, from a pack or from the (cached) shared data.

    Splits are the project's patient-level ``classification`` split (``training/data.py``), so every script uses
    the same patients for training, validation and test.

    Args:
        task: "label4" or "label3".
        data: data folder (else ``CXR_DATA``, else ``../shared/data/cxr``); ignored with ``pack``.
        pack: a pack folder to read instead of the shared data (GPU machines).
        segmentation: segmentation model folder for the masks (not needed with ``pack``).
        split_file: split JSON (default ``training/splits/splits_seed0.json``); ignored with ``pack`` (the pack
            carries its split).
        cache_dir: cache root.
        image_size, do_equalize, gamma: the classifier's frame and preprocessing; a pack must match them.
        device: device for the segmentation model while caching.
        limit: at most this many images per split (smoke runs).
        lung_mask: lung-masked frames (the paper); False gives the whole frames (cache only: a pack stores masked
            frames).

    Returns:
        ``({"train", "val", "test"}, info)``; ``info`` describes the source (``kind`` "pack" or "cache", ``source``
        in words), the segmentation fingerprint, the images per class and split (``counts``) and source
        (``sources``), and the ids that could not be used (``skipped``).
    """
    info: dict[str, Any] = {"task": task}
    if pack:
        if not lung_mask:
            raise ValueError(
                "A pack stores lung-masked frames only; train without the lung mask from the shared data (no --pack)."
            )
        splits, meta = load_pack(pack, task)
        want = {"image_size": int(image_size), "do_equalize": bool(do_equalize), "gamma": gamma}
        got = {k: meta.get(k) for k in want}
        if got != want:
            raise ValueError(f"Pack {pack} was made with {got}, the training config asks for {want}.")
        info.update(
            kind="pack",
            jpeg_quality=meta.get("jpeg_quality"),
            source=f"pack {pack} (JPEG quality {meta.get('jpeg_quality')})",
            segmentation_fingerprint=meta.get("segmentation_fingerprint"),
            segmentation=meta.get("segmentation"),
            skipped=meta.get("failures", {}),
        )
    else:
        from training.data import DEFAULT_SPLIT_FILE, load_or_create_splits, read_rows, rows_in_split

        root, rows = read_rows(data)
        assignment = load_or_create_splits(rows, split_file or DEFAULT_SPLIT_FILE)["classification"]
        labelled = task_rows(rows, task)
        by_split = {name: rows_in_split(labelled, assignment, name) for name in ("train", "val", "test")}
        if limit:
            by_split = {k: v[: int(limit)] for k, v in by_split.items()}
        wanted = [r for v in by_split.values() for r in v]
        result = build_cache(
            wanted, segmentation, cache_dir, image_size=image_size, do_equalize=do_equalize, gamma=gamma, device=device
        )
        splits = {}
        skipped: dict[str, str] = dict(result.failures)
        for name, rs in by_split.items():
            splits[name], missing = load_cached_data(rs, task, result.folder, lung_mask=lung_mask)
            skipped.update({i: result.failures.get(i, "not cached") for i in missing})
        info.update(
            kind="cache",
            source=f"{root} (cached in {result.folder})",
            segmentation_fingerprint=result.meta["segmentation_fingerprint"],
            segmentation=str(segmentation),
            skipped=skipped,
        )
    if limit:
        splits = {k: v.subset(range(min(len(v), int(limit)))) for k, v in splits.items()}
    for name in ("train", "val", "test"):
        splits.setdefault(name, _assemble([], [], list(LABEL_SETS[task]), [], [], [], [], []))
    info["counts"] = split_counts(splits)
    info["sources"] = {name: dict(sorted(Counter(d.sources).items())) for name, d in splits.items()}
    return splits, info


def main(argv: list[str] | None = None) -> int:
    """CLI: build the cache (default) or summarise a pack (``--pack``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="data folder (default: env CXR_DATA, else ../shared/data/cxr)")
    parser.add_argument("--segmentation", default=DEFAULT_SEGMENTATION, help="segmentation model folder")
    parser.add_argument("--task", default="all", choices=(*TASKS, "all"), help="rows labelled for this task")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--device", help="device for the segmentation model (default: cuda when available)")
    parser.add_argument("--limit", type=int, help="only the first N labelled rows (smoke runs)")
    parser.add_argument("--pack", help="summarise this pack instead of building the cache")
    args = parser.parse_args(argv)
    if args.pack:
        tasks = TASKS if args.task == "all" else (args.task,)
        for task in tasks:
            splits, meta = load_pack(args.pack, task)
            print(f"{task}: " + json.dumps(split_counts(splits)))
        print(f"pack {args.pack}: {len(meta['rows'])} rows, JPEG quality {meta.get('jpeg_quality')}")
        return 0
    from training.data import read_rows

    _, rows = read_rows(args.data)
    rows = [r for r in rows if r.label4 or r.label3] if args.task == "all" else task_rows(rows, args.task)
    if args.limit:
        rows = rows[: args.limit]
    try:
        result = build_cache(rows, args.segmentation, args.cache_dir, image_size=args.image_size, device=args.device)
    except FileNotFoundError as exc:
        print(f"error: {exc}")
        return 2
    print(f"cache {result.folder}: {result.built} computed, {result.reused} reused, {len(result.failures)} failed")
    for i, why in sorted(result.failures.items()):
        print(f"  failed {i}: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
