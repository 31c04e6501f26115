"""Pack the classifier training data for a GPU machine that cannot see the shared data.

The device tool carries at most 64 MiB of ignored paths, and the shared data (146 MB of originals) does not travel.
What a classifier run needs is much smaller: the cached lung-masked 1024 frames (outside the lungs is flat 0, which
JPEG compresses almost for free) and the lung masks. This script writes, under the git-ignored ``.pack/classifier``:

* ``frames/<id>.jpg`` — the lung-masked uint8 frame as a gray JPEG; the quality is the highest (in steps of 5,
  between ``--min-quality`` and 95) whose total fits ``--max-mb``;
* ``masks/<id>.png`` — the lung mask as a lossless 1-bit PNG (the reader masks the decoded JPEG again with it, so
  JPEG ringing never leaks outside the lungs and patch centres are exactly the cached ones);
* ``pack.json`` — format, preprocessing, segmentation fingerprint, JPEG quality, sizes, and one entry per row
  (id, source, patient, labels, view, split and the two file names).

Rows come from the project's patient-level ``classification`` split, so the GPU run trains, validates and tests on
exactly the patients a local run would. Read a pack with ``python -m training.train_classifier --pack DIR``.

Usage:
    python -m training.pack_classifier_data [--task all|label4|label3] [--max-mb 56] [--out .pack/classifier]
        [--segmentation models/cxr-lung-seg-unet] [--data DIR] [--split-file F] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cxr_hub.manifest import ManifestRow
from training.classifier_data import (
    DEFAULT_CACHE_DIR,
    DEFAULT_PACK_DIR,
    DEFAULT_SEGMENTATION,
    PACK_FORMAT,
    TASKS,
    build_cache,
    encode_jpeg,
    encode_mask_png,
    masked_frame,
    read_cached,
    safe_name,
)

MAX_QUALITY = 95
QUALITY_STEP = 5
#: Images encoded to estimate the quality before the full pass (spread evenly over the rows).
ESTIMATE_SAMPLE = 48


def _choose_quality(
    frames: Sequence[np.ndarray], n_total: int, budget: int, overhead: int, min_quality: int
) -> tuple[int, int]:
    """Highest quality (step 5) whose estimated total (sample mean x ``n_total``) fits ``budget`` bytes.

    Returns:
        ``(quality, estimated total bytes)``; ``min_quality`` when nothing fits (the caller checks the real size).
    """
    quality = MAX_QUALITY
    estimate = 0
    while True:
        per = float(np.mean([len(encode_jpeg(f, quality)) for f in frames])) if frames else 0.0
        estimate = int(per * n_total) + overhead
        if estimate <= budget or quality - QUALITY_STEP < min_quality:
            return quality, estimate
        quality -= QUALITY_STEP


def write_pack(
    rows: Sequence[ManifestRow],
    split: dict[str, str],
    cache_folder: Path,
    out: str | Path,
    *,
    max_mb: float = 56.0,
    min_quality: int = 40,
    meta: dict[str, Any] | None = None,
    failures: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes a pack of the cached frames of ``rows`` to ``out`` (replacing an earlier pack there).

    Args:
        rows: rows to pack (each must be cached in ``cache_folder``, else it is listed in ``failures``).
        split: image id → split name ("train" / "val" / "test").
        cache_folder: a folder written by :func:`training.classifier_data.build_cache`.
        out: pack folder.
        max_mb: budget for the whole pack in MiB (frames + masks + pack.json).
        min_quality: lowest JPEG quality tried.
        meta: the cache's meta (preprocessing, segmentation fingerprint), copied into ``pack.json``.
        failures: ids that could not be cached, with the reason (recorded in ``pack.json``).
        progress: show tqdm bars.

    Returns:
        The ``pack.json`` content.

    Raises:
        ValueError: even ``min_quality`` does not fit the budget.
    """
    out = Path(out)
    budget = int(max_mb * 1024 * 1024)
    failures = dict(failures or {})
    items: list[tuple[ManifestRow, np.ndarray, np.ndarray]] = []
    for r in tqdm(rows, desc="reading cache", unit="img", disable=not progress):
        cached = read_cached(cache_folder, r.id)
        if cached is None:
            failures.setdefault(r.id, "not cached")
            continue
        frame, mask = cached
        items.append((r, masked_frame(frame, mask), mask))
    if not items:
        raise ValueError("Nothing to pack: none of the rows is cached.")
    masks_png = [encode_mask_png(m) for _, _, m in items]
    overhead = sum(len(b) for b in masks_png) + 400 * len(items) + 4096  # masks + pack.json entries
    sample_idx = np.linspace(0, len(items) - 1, min(ESTIMATE_SAMPLE, len(items))).round().astype(int)
    quality, _ = _choose_quality([items[i][1] for i in sample_idx], len(items), budget, overhead, min_quality)
    while True:
        jpegs = [encode_jpeg(f, quality) for _, f, _ in tqdm(items, desc=f"JPEG q{quality}", disable=not progress)]
        total = sum(len(b) for b in jpegs) + overhead
        if total <= budget:
            break
        if quality - QUALITY_STEP < min_quality:
            raise ValueError(
                f"The pack needs {total / 2**20:.1f} MiB even at JPEG quality {quality}, over --max-mb {max_mb}: "
                "pack one task (--task label4) or lower --min-quality."
            )
        quality -= QUALITY_STEP  # the sample underestimated: step down and encode again

    if out.exists():
        shutil.rmtree(out)  # a smaller pack must not keep the files of an earlier, larger one
    (out / "frames").mkdir(parents=True)
    (out / "masks").mkdir()
    entries = []
    for (r, _, _), jpg, png in zip(items, jpegs, masks_png, strict=True):
        name = safe_name(r.id)
        (out / "frames" / f"{name}.jpg").write_bytes(jpg)
        (out / "masks" / f"{name}.png").write_bytes(png)
        entries.append(
            {
                "id": r.id,
                "source": r.source,
                "patient_id": r.patient_id,
                "label4": r.label4,
                "label3": r.label3,
                "view": r.view,
                "split": split.get(r.id, ""),
                "frame": f"frames/{name}.jpg",
                "mask": f"masks/{name}.png",
            }
        )
    meta = dict(meta or {})
    pack = {
        "format": PACK_FORMAT,
        "image_size": int(meta.get("image_size", items[0][1].shape[-1])),
        "do_equalize": meta.get("do_equalize", True),
        "gamma": meta.get("gamma", 0.5),
        "segmentation": meta.get("segmentation"),
        "segmentation_fingerprint": meta.get("segmentation_fingerprint"),
        "jpeg_quality": quality,
        "frames": "lung-masked uint8 frames (0 outside the lungs), gray JPEG; re-masked with masks/ when read",
        "masks": "lung masks at image_size, 1-bit PNG (lossless)",
        "frame_bytes": sum(len(b) for b in jpegs),
        "mask_bytes": sum(len(b) for b in masks_png),
        "failures": failures,
        "rows": entries,
    }
    (out / "pack.json").write_text(json.dumps(pack, indent=1) + "\n")
    pack["total_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return pack


def main(argv: list[str] | None = None) -> int:
    """CLI: cache (if needed) and pack the rows of the classification split."""
    from training.data import DEFAULT_SPLIT_FILE, load_or_create_splits, read_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="data folder (default: env CXR_DATA, else ../shared/data/cxr)")
    parser.add_argument("--segmentation", default=DEFAULT_SEGMENTATION, help="segmentation model folder")
    parser.add_argument("--split-file", default=str(DEFAULT_SPLIT_FILE), help="patient-level split JSON")
    parser.add_argument("--task", default="all", choices=(*TASKS, "all"), help="rows labelled for this task")
    parser.add_argument("--out", default=DEFAULT_PACK_DIR, help="pack folder (default: %(default)s, git-ignored)")
    parser.add_argument("--max-mb", type=float, default=56.0, help="size budget in MiB (default: %(default)s)")
    parser.add_argument("--min-quality", type=int, default=40, help="lowest JPEG quality (default: %(default)s)")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--device", help="device for the segmentation model while caching")
    parser.add_argument("--limit", type=int, help="only the first N rows of each split (smoke runs)")
    args = parser.parse_args(argv)

    _, rows = read_rows(args.data)
    split = load_or_create_splits(rows, args.split_file)["classification"]
    tasks = TASKS if args.task == "all" else (args.task,)
    rows = [r for r in rows if any(r.label(t) for t in tasks) and split.get(r.id)]
    if args.limit:
        rows = [r for name in ("train", "val", "test") for r in [r for r in rows if split[r.id] == name][: args.limit]]
    try:
        cache = build_cache(rows, args.segmentation, args.cache_dir, image_size=args.image_size, device=args.device)
    except FileNotFoundError as exc:
        print(f"error: {exc}")
        return 2
    pack = write_pack(
        rows, split, cache.folder, args.out, max_mb=args.max_mb, min_quality=args.min_quality, meta=cache.meta,
        failures=cache.failures,
    )  # fmt: skip
    n = len(pack["rows"])
    print(
        f"packed {n} images into {args.out}: {pack['total_bytes'] / 2**20:.1f} MiB "
        f"(frames {pack['frame_bytes'] / 2**20:.1f} MiB at JPEG quality {pack['jpeg_quality']}, "
        f"masks {pack['mask_bytes'] / 2**20:.1f} MiB), budget {args.max_mb} MiB; {len(pack['failures'])} skipped"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
