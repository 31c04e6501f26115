"""Does bf16 (or int8) change what the patch classifier says? fp32 vs the faster arithmetic on real chest X-rays.

The pipeline may classify patches under bf16 autocast only where that leaves the answers unchanged: the same final
label as fp32 on at least 99 % of real images and a mean absolute probability difference of at most 0.01. This script
measures both on the held-out test split (or any manifest rows), with the shipped segmentation model and a trained
patch classifier, and writes the numbers to a JSON file.

For every image: one :meth:`CXRPipeline.prepare` (segmentation always fp32), then :meth:`CXRPipeline.analyze` twice
with the same seed and K, once with ``precision="fp32"`` and once with ``precision="bf16"``; the patches are
identical, so any difference is the arithmetic's.

Measured per image and averaged:

* ``label_agreement``: share of images whose majority-vote label is the same;
* ``mean_abs_dprob_patch``: mean over images of mean |p_bf16 - p_fp32| over the K x C patch probabilities;
* ``mean_abs_dprob_image``: the same for the image-level mean probabilities (C per image);
* ``vote_changes``: mean number of patches (out of K) whose own argmax changed;
* ``saliency_max_abs_diff``: mean over images of max |S_bf16 - S_fp32| of the predicted class's eq. 5 map;
* the classification time of both (``classify`` stage, ms).

With ``--segmentation-bf16`` the comparison is end to end instead: the whole pipeline in fp32 (segmentation and
classifier, models as loaded) against the fast path (bf16 segmentation, bf16 classifier with folded batch norms), each
with its own ``prepare``. A slightly different lung mask moves every patch, so patch-level differences mean nothing
there; the rule is checked on the image label and the image-level mean probabilities, and the records add the lung
and heart Dice between the two label maps, |ΔCTR| and both segmentation times. ``cxr_hub.runtime.numerics.
SEGMENTATION_BF16_VALIDATED`` may be set only after this passes.

Usage::

    .venv/bin/python benchmarks/precision_agreement.py --classifier models/cxr-patch-resnet18 \
        [--manifest ../shared/data/cxr/manifest.csv] [--task label4] [--split classification:test] [--limit 100] \
        [--k 100] [--json docs/results/precision_agreement_label4.json] [--segmentation-bf16] \
        [--global-classifier models/cxr-global-resnet18] [--sampling stable]

With ``--global-classifier`` the global classifier's label and image probabilities are compared too (``global_*``
fields), under the same rule but reported apart: it sees the whole masked image, so it reacts to the mask's outline
differently from the patch vote.

With ``--fast int8`` the faster arithmetic is the int8 backbone (:mod:`cxr_hub.runtime.int8`; the classifiers'
configs must carry a calibration, ``python -m training.calibrate_int8``) instead of bf16, in both modes; the same
rule decides ``cxr_hub.runtime.int8.INT8_VALIDATED`` (same patches) and ``cxr_hub.runtime.numerics.
INT8_WITH_BF16_SEGMENTATION_VALIDATED`` (end to end with bf16 segmentation).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

#: The rule for enabling bf16: label agreement at least this, mean |Δp| at most this.
MIN_LABEL_AGREEMENT = 0.99
MAX_MEAN_ABS_DPROB = 0.01


def passes_rule(label_agreement: float, mean_abs_dprob: float) -> bool:
    """The project's rule for a faster arithmetic: enough labels kept and probabilities barely moved."""
    return bool(label_agreement >= MIN_LABEL_AGREEMENT and mean_abs_dprob <= MAX_MEAN_ABS_DPROB)


def image_probabilities(result: Any, field: str = "probabilities") -> np.ndarray:
    """(C,) per-class values of a :class:`cxr_hub.PipelineResult` in class order (``field``: "probabilities" for the
    patch vote's mean probabilities, "global_probabilities" for the global classifier, "vote_fraction")."""
    values = getattr(result, field)
    return np.array([values[c] for c in result.class_names])


def compare_precisions(pipe: Any, prepared: Any, k: int, seed: int, fast: str = "bf16") -> dict[str, Any]:
    """fp32 vs ``fast`` ("bf16" or "int8") analysis of one prepared image (same patches).

    Args:
        pipe: a :class:`cxr_hub.CXRPipeline` with a patch classifier (its ``precision`` is restored afterwards).
        prepared: from ``pipe.prepare``.
        k: patches.
        seed: sampler seed.
        fast: the classifier precision compared with fp32.

    Returns:
        Per-image comparison: both labels, |Δp| statistics, changed patch votes, saliency differences (max and mean
        absolute difference and Pearson correlation of the predicted class's eq. 5 map), timings.
    """
    before = pipe.precision
    results = {}
    try:
        for precision in ("fp32", fast):
            pipe.precision = precision
            results[precision] = pipe.analyze(prepared, k=k, seed=seed)
    finally:
        pipe.precision = before
    a, b = results["fp32"], results[fast]
    pa, pb = a.patch_probabilities.astype(np.float64), b.patch_probabilities.astype(np.float64)
    ia, ib = image_probabilities(a), image_probabilities(b)
    sal_a, sal_b = a.saliency[a.label], b.saliency.get(a.label)
    return {
        "label_fp32": a.label,
        f"label_{fast}": b.label,
        "same_label": a.label == b.label,
        "mean_abs_dprob_patch": float(np.abs(pa - pb).mean()),
        "max_abs_dprob_patch": float(np.abs(pa - pb).max()),
        "mean_abs_dprob_image": float(np.abs(ia - ib).mean()),
        "vote_changes": int((pa.argmax(1) != pb.argmax(1)).sum()),
        "saliency_max_abs_diff": float(np.abs(sal_a - sal_b).max()) if sal_b is not None else None,
        "saliency_mean_abs_diff": float(np.abs(sal_a - sal_b).mean()) if sal_b is not None else None,
        "saliency_correlation": _correlation(sal_a, sal_b) if sal_b is not None else None,
        "classify_ms_fp32": a.timings["classify"],
        f"classify_ms_{fast}": b.timings["classify"],
        **_global_comparison(a, b, fast),
    }


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two maps (None when one is constant)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _global_comparison(a: Any, b: Any, name: str) -> dict[str, Any]:
    """Label and |Δp| of the global classifier between two results (empty when the pipeline has none)."""
    if a.global_label is None or b.global_label is None:
        return {}
    ga, gb = image_probabilities(a, "global_probabilities"), image_probabilities(b, "global_probabilities")
    return {
        "global_label_fp32": a.global_label,
        f"global_label_{name}": b.global_label,
        "global_same_label": a.global_label == b.global_label,
        "global_mean_abs_dprob": float(np.abs(ga - gb).mean()),
    }


def _global_summary(per_image: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule applied to the global classifier's records, when there are any."""
    records = [r for r in per_image if "global_same_label" in r]
    if not records:
        return {}
    agreement = sum(r["global_same_label"] for r in records) / len(records)
    dprob = float(statistics.fmean(r["global_mean_abs_dprob"] for r in records))
    return {
        "global_label_agreement": agreement,
        "global_mean_abs_dprob": dprob,
        "global_passes": passes_rule(agreement, dprob),
    }


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * float((a & b).sum()) / total


def compare_end_to_end(pipe: Any, image: Any, k: int, seed: int, fast: str = "bf16") -> dict[str, Any]:
    """All-fp32 pipeline against the fast path (bf16 segmentation, ``fast`` classifier) on one image.

    Args:
        pipe: a :class:`cxr_hub.CXRPipeline` with a patch classifier (its precisions are restored afterwards).
        image: anything ``pipe.prepare`` accepts.
        k: patches.
        seed: sampler seed.
        fast: the classifier precision of the fast path ("bf16" or "int8").

    Returns:
        Per-image comparison: labels, image-level |Δp|, lung / heart Dice of the label maps, |ΔCTR|, timings.
    """
    from cxr_hub.biomarkers import HEART, LEFT_LUNG, RIGHT_LUNG

    before = (pipe.precision, pipe.segmentation_precision)
    results = {}
    try:
        for name, (cls_p, seg_p) in (("fp32", ("fp32", "fp32")), ("fast", (fast, "bf16"))):
            pipe.precision, pipe.segmentation_precision = cls_p, seg_p
            prepared = pipe.prepare(image)
            results[name] = (prepared, pipe.analyze(prepared, k=k, seed=seed))
    finally:
        pipe.precision, pipe.segmentation_precision = before
    (pa, a), (pb, b) = results["fp32"], results["fast"]
    ia, ib = image_probabilities(a), image_probabilities(b)
    lung_a = np.isin(pa.label_map, (LEFT_LUNG, RIGHT_LUNG))
    lung_b = np.isin(pb.label_map, (LEFT_LUNG, RIGHT_LUNG))
    ctr_a, ctr_b = float(a.biomarkers.cardiothoracic_ratio), float(b.biomarkers.cardiothoracic_ratio)
    return {
        "label_fp32": a.label,
        "label_fast": b.label,
        "same_label": a.label == b.label,
        "mean_abs_dprob_image": float(np.abs(ia - ib).mean()),
        "max_abs_dprob_image": float(np.abs(ia - ib).max()),
        "lung_dice": _dice(lung_a, lung_b),
        "heart_dice": _dice(pa.label_map == HEART, pb.label_map == HEART),
        "label_map_agreement": float((pa.label_map == pb.label_map).mean()),
        "abs_dctr": abs(ctr_a - ctr_b) if np.isfinite(ctr_a) and np.isfinite(ctr_b) else None,
        "segment_ms_fp32": pa.timings["segment"],
        "segment_ms_fast": pb.timings["segment"],
        "classify_ms_fp32": a.timings["classify"],
        "classify_ms_fast": b.timings["classify"],
        **_global_comparison(a, b, "fast"),
    }


def summarise_end_to_end(per_image: list[dict[str, Any]], fast: str = "bf16") -> dict[str, Any]:
    """Averages of :func:`compare_end_to_end` records and the verdict against the rule (image-level |Δp|)."""
    n = len(per_image)
    if n == 0:
        raise ValueError("No image was compared.")

    def values(key: str) -> list[float]:
        return [r[key] for r in per_image if r[key] is not None]

    agreement = sum(r["same_label"] for r in per_image) / n
    dprob = float(statistics.fmean(values("mean_abs_dprob_image")))
    return {
        "n": n,
        "comparison": "all fp32 vs bf16 segmentation + "
        + ("bf16 classifier with folded batch norms" if fast == "bf16" else f"{fast} classifier"),
        "label_agreement": agreement,
        "mean_abs_dprob_image": dprob,
        "max_abs_dprob_image": max(values("max_abs_dprob_image")),
        "lung_dice_mean": float(statistics.fmean(values("lung_dice"))),
        "lung_dice_min": min(values("lung_dice")),
        "heart_dice_mean": float(statistics.fmean(values("heart_dice"))) if values("heart_dice") else None,
        "label_map_agreement_mean": float(statistics.fmean(values("label_map_agreement"))),
        "abs_dctr_mean": float(statistics.fmean(values("abs_dctr"))) if values("abs_dctr") else None,
        "abs_dctr_max": max(values("abs_dctr")) if values("abs_dctr") else None,
        "segment_ms_fp32_median": statistics.median(values("segment_ms_fp32")),
        "segment_ms_fast_median": statistics.median(values("segment_ms_fast")),
        "classify_ms_fp32_median": statistics.median(values("classify_ms_fp32")),
        "classify_ms_fast_median": statistics.median(values("classify_ms_fast")),
        "passes": passes_rule(agreement, dprob),
        "rule": f"label agreement >= {MIN_LABEL_AGREEMENT} and mean |dp| (image) <= {MAX_MEAN_ABS_DPROB}",
        **_global_summary(per_image),
    }


def summarise(per_image: list[dict[str, Any]], fast: str = "bf16") -> dict[str, Any]:
    """Averages of :func:`compare_precisions` records and the verdict against the rule."""
    n = len(per_image)
    if n == 0:
        raise ValueError("No image was compared.")

    def mean(key: str) -> float:
        values = [r[key] for r in per_image if r[key] is not None]
        return float(statistics.fmean(values)) if values else float("nan")

    agreement = sum(r["same_label"] for r in per_image) / n
    dprob = mean("mean_abs_dprob_patch")
    return {
        "n": n,
        "label_agreement": agreement,
        "mean_abs_dprob_patch": dprob,
        "max_abs_dprob_patch": max(r["max_abs_dprob_patch"] for r in per_image),
        "mean_abs_dprob_image": mean("mean_abs_dprob_image"),
        "mean_vote_changes": mean("vote_changes"),
        "mean_saliency_max_abs_diff": mean("saliency_max_abs_diff"),
        "mean_saliency_mean_abs_diff": mean("saliency_mean_abs_diff"),
        "mean_saliency_correlation": mean("saliency_correlation"),
        "min_saliency_correlation": min(
            (r["saliency_correlation"] for r in per_image if r.get("saliency_correlation") is not None), default=None
        ),
        "classify_ms_fp32_median": statistics.median(r["classify_ms_fp32"] for r in per_image),
        f"classify_ms_{fast}_median": statistics.median(r[f"classify_ms_{fast}"] for r in per_image),
        "passes": passes_rule(agreement, dprob),
        "rule": f"label agreement >= {MIN_LABEL_AGREEMENT} and mean |dp| (patch) <= {MAX_MEAN_ABS_DPROB}",
        **_global_summary(per_image),
    }


def comparison_parser(description: str, default_limit: int = 100) -> argparse.ArgumentParser:
    """The options every real-film comparison script shares (models, manifest, split, limit, K, seed, JSON)."""
    from cxr_hub.evaluation.classification import DEFAULT_SEGMENTATION
    from cxr_hub.patches import DEFAULT_SAMPLING, SAMPLING_MODES

    default_manifest = REPO_ROOT.parent / "shared" / "data" / "cxr" / "manifest.csv"
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--classifier", required=True, help="trained patch classifier folder")
    parser.add_argument("--segmentation", default=str(REPO_ROOT / DEFAULT_SEGMENTATION))
    parser.add_argument("--manifest", default=str(default_manifest))
    parser.add_argument("--task", default="label4", choices=("label4", "label3"))
    parser.add_argument("--split-file", default=str(REPO_ROOT / "training" / "splits" / "splits_seed0.json"))
    parser.add_argument("--split", default="classification:test", help="GROUP:NAME of the split file ('' = all)")
    parser.add_argument(
        "--limit", type=int, default=default_limit, help="at most this many images, 0 = all (default: %(default)s)"
    )
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N selected rows (default: 0)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sampling",
        default=DEFAULT_SAMPLING,
        choices=SAMPLING_MODES,
        help="patch sampler of the pipeline (default: %(default)s, the pipeline's default)",
    )
    parser.add_argument("--json", help="write the summary and per-image records here")
    return parser


def selected_rows(args: argparse.Namespace) -> list[Any] | None:
    """The labelled manifest rows the options select; None (after printing why) when there are none."""
    from cxr_hub.evaluation import select_rows
    from cxr_hub.manifest import read_manifest, resolve_manifest

    try:
        manifest = resolve_manifest(args.manifest)
        rows = [r for r in read_manifest(manifest) if r.label(args.task)]
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if args.split:
        rows = select_rows(rows, args.split_file, args.split)
    rows = rows[max(args.skip, 0) :]
    rows = rows[: args.limit] if args.limit else rows
    if not rows:
        print("error: no labelled rows selected", file=sys.stderr)
        return None
    return rows


def write_report(
    summary: dict[str, Any], records: list[dict[str, Any]], args: argparse.Namespace, **extra: Any
) -> None:
    """Adds the run's settings to ``summary``, prints it, and writes summary + records to ``args.json``."""
    summary.update(
        classifier=str(args.classifier),
        task=args.task,
        split=args.split,
        skip=args.skip,
        k=args.k,
        seed=args.seed,
        sampling=args.sampling,
        **extra,
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    )
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": summary, "images": records}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns 0 when the comparison ran (whatever its verdict), 2 on bad input."""
    from tqdm import tqdm

    from cxr_hub.io import CXRInputError
    from cxr_hub.pipeline import CXRPipeline

    parser = comparison_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--segmentation-bf16",
        action="store_true",
        help="compare end to end: all fp32 vs bf16 segmentation + bf16 classifier (folded batch norms)",
    )
    parser.add_argument(
        "--fast",
        default="bf16",
        choices=("bf16", "int8"),
        help="the classifier arithmetic compared with fp32 (int8 needs a calibrated classifier, x86 CPU)",
    )
    parser.add_argument(
        "--global-classifier",
        help="also compare this global classifier's label and probabilities (the same rule, reported apart)",
    )
    args = parser.parse_args(argv)
    rows = selected_rows(args)
    if rows is None:
        return 2
    pipe = CXRPipeline.from_pretrained(
        args.segmentation,
        args.classifier,
        args.global_classifier,
        device="cpu",
        sampling=args.sampling,
        precision=args.fast,  # builds the int8 networks now, not inside the first timed analysis
    )
    records: list[dict[str, Any]] = []
    start = time.time()
    for row in tqdm(rows, desc=f"fp32 vs {args.fast}", unit="img"):
        try:
            if args.segmentation_bf16:
                record = compare_end_to_end(pipe, row.image, args.k, args.seed, args.fast)
            else:
                record = compare_precisions(pipe, pipe.prepare(row.image), args.k, args.seed, args.fast)
        except CXRInputError as exc:
            tqdm.write(f"skipped {row.id}: {exc}")
            continue
        record["id"] = row.id
        records.append(record)
    summary = summarise_end_to_end(records, args.fast) if args.segmentation_bf16 else summarise(records, args.fast)
    write_report(
        summary,
        records,
        args,
        fast=args.fast,
        global_classifier=args.global_classifier,
        seconds=round(time.time() - start, 1),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
