"""Does dense voting give the label exact patch voting gives? Measured on real chest X-rays.

``CXRPipeline(voting="dense")`` reads every patch's logits from one fully convolutional pass over the frame instead of
classifying K cropped patches (:mod:`cxr_hub.dense`). The project ships it as an option only with a measured
agreement: the same final label as exact voting on at least 95 % of real films. This script measures it on the
held-out test split (or any manifest rows) with the shipped models, one ``prepare`` per film and then
``analyze(k, seed)`` in both modes (the pipeline's default precision), and writes the numbers to a JSON file.

Per film: both labels and the true label, |Δ| of the mean probabilities and of the vote fractions, the
classification time of both. Summary: label agreement (the rule), accuracy of each mode against the truth, mean
|Δp|, median times.

Usage::

    .venv/bin/python benchmarks/dense_agreement.py --classifier models/cxr-patch-resnet18 \
        [--manifest ../shared/data/cxr/manifest.csv] [--task label4] [--split classification:test] [--limit 100] \
        [--k 100] [--json docs/results/dense_agreement_label4.json]   # --limit 0 (default): every selected film
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, Path(__file__).resolve().parent):  # run as a script from anywhere
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

#: The rule for shipping dense voting as an option: same final label as exact voting on at least this share.
MIN_LABEL_AGREEMENT = 0.95


def compare_voting(pipe: Any, prepared: Any, k: int, seed: int) -> dict[str, Any]:
    """Exact vs dense voting on one prepared image (the pipeline's ``voting`` is restored afterwards).

    Returns:
        Per-image record: both labels, |Δ| of mean probabilities and vote fractions, classification times (ms; the
        dense time is a fresh pass, its feature cache cleared first).
    """
    from precision_agreement import image_probabilities

    before = pipe.voting
    results = {}
    try:
        for mode in ("exact", "dense"):
            pipe.voting = mode
            prepared.patch_cache.clear()
            results[mode] = pipe.analyze(prepared, k=k, seed=seed)
    finally:
        pipe.voting = before
    a, b = results["exact"], results["dense"]
    pa, pb = image_probabilities(a), image_probabilities(b)
    va, vb = image_probabilities(a, "vote_fraction"), image_probabilities(b, "vote_fraction")
    return {
        "label_exact": a.label,
        "label_dense": b.label,
        "same_label": a.label == b.label,
        "mean_abs_dprob_image": float(np.abs(pa - pb).mean()),
        "max_abs_dvote_fraction": float(np.abs(va - vb).max()),
        "classify_ms_exact": a.timings["classify"],
        "classify_ms_dense": b.timings["classify"],
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Averages of :func:`compare_voting` records (with ``truth``), accuracies and the verdict."""
    n = len(records)
    if n == 0:
        raise ValueError("No image was compared.")
    agreement = sum(r["same_label"] for r in records) / n
    return {
        "n": n,
        "label_agreement": agreement,
        "accuracy_exact": sum(r["label_exact"] == r["truth"] for r in records) / n,
        "accuracy_dense": sum(r["label_dense"] == r["truth"] for r in records) / n,
        "mean_abs_dprob_image": float(statistics.fmean(r["mean_abs_dprob_image"] for r in records)),
        "mean_max_abs_dvote_fraction": float(statistics.fmean(r["max_abs_dvote_fraction"] for r in records)),
        "classify_ms_exact_median": statistics.median(r["classify_ms_exact"] for r in records),
        "classify_ms_dense_median": statistics.median(r["classify_ms_dense"] for r in records),
        "passes": bool(agreement >= MIN_LABEL_AGREEMENT),
        "rule": f"same final label as exact voting on >= {MIN_LABEL_AGREEMENT:.0%} of the films",
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns 0 when the comparison ran (whatever its verdict), 2 on bad input."""
    from precision_agreement import comparison_parser, selected_rows, write_report
    from tqdm import tqdm

    from cxr_hub.io import CXRInputError
    from cxr_hub.pipeline import CXRPipeline

    args = comparison_parser(__doc__.splitlines()[0], default_limit=0).parse_args(argv)
    rows = selected_rows(args)
    if rows is None:
        return 2
    pipe = CXRPipeline.from_pretrained(
        args.segmentation, args.classifier, device="cpu", reuse_patches=False, sampling=args.sampling
    )
    records: list[dict[str, Any]] = []
    start = time.time()
    for row in tqdm(rows, desc="exact vs dense", unit="img"):
        try:
            prepared = pipe.prepare(row.image)
        except CXRInputError as exc:
            tqdm.write(f"skipped {row.id}: {exc}")
            continue
        record = compare_voting(pipe, prepared, args.k, args.seed)
        record.update(id=row.id, truth=row.label(args.task), source=row.source)
        records.append(record)
    write_report(summarise(records), records, args, precision=pipe.precision, seconds=round(time.time() - start, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
