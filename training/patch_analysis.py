"""How many patches does the vote need, and what do correctly classified patches look like? (K ablation, Fig. 5)

One pass per image over ``k_max`` patches (drawn with ``default_rng(seed)`` as
``CXRPipeline(sampling="joint").analyze`` does, by the same sampler and cropper; the recorded results used this
mode, the training sampler), then two analyses of the same patch probabilities:

* **K ablation** (not in the paper): for each K in ``--ks``, the image's label is the majority vote of K patches. The
  sampler's draws are prefix-stable (the first K of a ``k_max`` draw are exactly the K-patch draw of the same seed),
  so the *first* K patches are what the pipeline would vote on with that seed; this gives the ``seed`` row. For K
  below ``k_max``, the ``k_max`` patches also hold ``k_max // K`` disjoint K-patch sets: scoring each set gives a mean
  ± SD of the metrics over independent draws, i.e. how much a result at that K depends on luck.
* **Patch intensity distributions** (the paper's Fig. 5): for the patches whose own argmax equals the image's true
  class ("correctly classified patches"), the mean (inter-patch) and the standard deviation (intra-patch) of the
  gray levels of the patch's lung pixels (preprocessed frame, [0, 255]). Per class: mean ± SD, Kolmogorov–Smirnov
  normality and pairwise Wilcoxon rank-sum tests (:mod:`cxr_hub.evaluation.stats`), as for the per-image biomarkers.

Inputs are the training cache (``training/classifier_data.py``): the lung-masked 1024 frames the pipeline computes.

Usage::

    python -m training.patch_analysis --classifier models/cxr-patch-resnet18 --task label4 \
        [--split test] [--k-max 200] [--ks 1,5,10,25,50,100,200] [--seed 0] [--amp auto] \
        --out docs/figures/patch_analysis_label4
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cxr_hub import PatchClassifierForImageClassification, image_processor_for, patches
from cxr_hub.evaluation.classification_metrics import classification_report, json_ready
from cxr_hub.evaluation.stats import compare_classes, normality_markdown, pairwise_markdown, summary_markdown
from training.classifier_data import ClassifierData, load_task_splits
from training.runtime import autocast_dtype

DEFAULT_KS = (1, 5, 10, 25, 50, 100, 200)
PATCH_STATS = {"patch_mean": ("patch mean intensity (inter-patch)", 1), "patch_sd": ("patch intensity SD (intra)", 1)}


def patch_probabilities(
    model: PatchClassifierForImageClassification,
    data: ClassifierData,
    k: int,
    seed: int,
    amp: torch.dtype | None = None,
    chunk: int = 100,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax probabilities and lung-pixel intensity statistics of ``k`` patches per image.

    Args:
        model: a patch classifier (``config.mode == "patch"``).
        data: cached lung-masked frames of the images.
        k: patches per image, drawn with ``default_rng(seed)`` per image (the pipeline's rule).
        seed: sampler seed.
        amp: autocast dtype, or None for fp32.
        chunk: patches per forward pass.

    Returns:
        ``(probs, means, sds)``: float32 (N, k, C) probabilities, float32 (N, k) mean and (N, k) standard deviation of
        each patch's lung gray levels in [0, 255] (NaN for a patch without lung pixels, which the sampler never
        produces: every centre is a lung pixel).
    """
    cfg = model.config
    processor = image_processor_for(cfg)
    device = next(model.parameters()).device
    n, c = len(data), cfg.num_labels
    probs = np.zeros((n, k, c), np.float32)
    means = np.full((n, k), np.nan, np.float32)
    sds = np.full((n, k), np.nan, np.float32)
    model.eval()
    for i in tqdm(range(n), desc="patches", unit="img"):
        # centres where the pipeline draws them for this classifier (deeper than its centre margin, if any)
        region = patches.patch_center_region(data.masks[i], cfg.center_margin_pixels())
        _, boxes = patches.sample_patch_boxes(region, k, cfg.patch_size, np.random.default_rng(seed))
        frame = torch.from_numpy(data.frames[i]).to(device)
        for j, (x0, y0, x1, y1) in enumerate(boxes):
            lung = data.masks[i, y0:y1, x0:x1]
            if lung.any():
                values = data.frames[i, y0:y1, x0:x1][lung].astype(np.float64)
                means[i, j], sds[i, j] = values.mean(), values.std()
        with torch.inference_mode():
            for start in range(0, k, chunk):
                x01 = patches.crop_patches(frame, boxes[start : start + chunk], cfg.input_size) / 255.0
                x = processor.normalize(x01 * 255.0).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    logits = model(x).logits.float()
                probs[i, start : start + len(x)] = torch.softmax(logits, -1).cpu().numpy()
    return probs, means, sds


def votes(probs: np.ndarray) -> np.ndarray:
    """Majority-vote class of each image from (N, K, C) patch probabilities (the pipeline's tie-break)."""
    return np.array([patches.majority_vote(p)[0] for p in probs], dtype=np.int64)


def k_ablation(
    probs: np.ndarray, data: ClassifierData, ks: Sequence[int], untrained: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Metrics of the K-patch vote for each K: the seed's first K patches, and mean ± SD over disjoint K-sets.

    Args:
        probs: (N, k_max, C) patch probabilities (first K = the pipeline's K-patch draw).
        data: the images (labels, class names).
        ks: values of K, each at most k_max.
        untrained: classes without training images (noted in the reports).

    Returns:
        One record per K: ``k``, ``accuracy``, ``f1`` (macro), ``sensitivity`` per class of the first-K vote, and
        ``sets``, ``accuracy_mean/sd``, ``f1_mean/sd`` over the ``k_max // K`` disjoint sets.
    """
    names = data.class_names
    truth = data.label_names()
    k_max = probs.shape[1]
    out = []
    for k in ks:
        if not 1 <= k <= k_max:
            raise ValueError(f"K={k} is outside 1 … k_max={k_max}.")
        sets = []
        for s in range(k_max // k):
            pred = votes(probs[:, s * k : (s + 1) * k])
            rep = classification_report(truth, [names[p] for p in pred], names, untrained=untrained)
            sets.append(rep)
        first = sets[0]
        acc = np.array([r["accuracy"] for r in sets])
        f1 = np.array([r["f1"] if r["f1"] is not None else np.nan for r in sets])
        out.append(
            {
                "k": int(k),
                "accuracy": first["accuracy"],
                "f1": first["f1"],
                "sensitivity": {c: m["sensitivity"] for c, m in first["per_class"].items() if m["n"]},
                "sets": len(sets),
                "accuracy_mean": float(acc.mean()),
                "accuracy_sd": float(acc.std()),
                "f1_mean": float(np.nanmean(f1)),
                "f1_sd": float(np.nanstd(f1)),
            }
        )
    return out


def correct_patch_stats(
    probs: np.ndarray, means: np.ndarray, sds: np.ndarray, data: ClassifierData
) -> dict[str, dict[str, list[float]]]:
    """Intensity statistics of the correctly classified patches, grouped by the image's true class.

    Returns:
        ``{"patch_mean": {class: [...]}, "patch_sd": {class: [...]}}`` (classes without such patches: empty list).
    """
    names = data.class_names
    correct = probs.argmax(-1) == data.labels[:, None]
    out: dict[str, dict[str, list[float]]] = {key: {c: [] for c in names} for key in PATCH_STATS}
    for i, label in enumerate(data.labels):
        keep = correct[i] & np.isfinite(means[i])
        out["patch_mean"][names[label]].extend(means[i][keep].tolist())
        out["patch_sd"][names[label]].extend(sds[i][keep].tolist())
    return out


def _plot(ablation: list[dict[str, Any]], stats: dict[str, dict[str, list[float]]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    ks = [r["k"] for r in ablation]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    for key, label in (("accuracy", "accuracy"), ("f1", "macro F1")):
        mean = np.array([r[f"{key}_mean"] for r in ablation])
        sd = np.array([r[f"{key}_sd"] for r in ablation])
        ax.errorbar(ks, mean, yerr=sd, marker="o", capsize=3, label=f"{label} (mean ± SD over disjoint K-sets)")
    ax.set_xscale("log")
    ax.set_xlabel("K (patches voted)")
    ax.set_ylabel("test metric")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "k_ablation.png")
    plt.close(fig)
    files.append("k_ablation.png")

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=110)
    for ax, (key, (title, _)) in zip(axes, PATCH_STATS.items(), strict=True):
        for c, values in stats[key].items():
            if values:
                ax.hist(values, bins=40, alpha=0.5, density=True, label=f"{c} (n={len(values)})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("gray level [0, 255]")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "patch_intensity.png")
    plt.close(fig)
    files.append("patch_intensity.png")
    return files


def _ablation_markdown(ablation: list[dict[str, Any]], names: Sequence[str]) -> str:
    present = [c for c in names if any(c in r["sensitivity"] for r in ablation)]
    lines = [
        "| K | accuracy (seed) | macro F1 (seed) | "
        + " | ".join(f"sens. {c}" for c in present)
        + " | disjoint sets | accuracy mean ± SD | macro F1 mean ± SD |",
        "|---" * (6 + len(present)) + "|",
    ]
    for r in ablation:
        sens = " | ".join("–" if r["sensitivity"].get(c) is None else f"{r['sensitivity'][c]:.3f}" for c in present)
        lines.append(
            f"| {r['k']} | {r['accuracy']:.3f} | {r['f1']:.3f} | {sens} | {r['sets']} | "
            f"{r['accuracy_mean']:.3f} ± {r['accuracy_sd']:.3f} | {r['f1_mean']:.3f} ± {r['f1_sd']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", required=True, help="trained patch classifier folder")
    parser.add_argument("--task", default="label4", choices=("label4", "label3"))
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--k-max", type=int, default=200)
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="comma-separated K values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--amp",
        default="none",
        help="none (fp32, the default here), bf16, or auto: bf16 on a CPU with native bf16 (the committed run), else "
        "fp32. The pipeline's own default (precision 'auto') runs classifiers in bf16 on such CPUs, or in int8 where "
        "the CPU has int8 dot products and the classifier's config carries a calibration; this script has no int8",
    )
    parser.add_argument("--cache-dir", default="data_cache")
    parser.add_argument("--limit", type=int, help="at most this many images (smoke runs)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    if max(ks) > args.k_max:
        raise SystemExit(f"--ks has K={max(ks)} above --k-max {args.k_max}")

    model = PatchClassifierForImageClassification.from_pretrained(args.classifier).eval()
    if model.config.mode != "patch":
        raise SystemExit(f"{args.classifier} is a {model.config.mode} classifier; this analysis needs a patch model")
    model = model.to(memory_format=torch.channels_last)
    cfg = model.config
    try:
        splits, _ = load_task_splits(
            args.task,
            cache_dir=args.cache_dir,
            image_size=cfg.image_size,
            do_equalize=cfg.do_equalize,
            gamma=cfg.gamma,
            limit=args.limit,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    data = splits[args.split]
    amp = autocast_dtype(args.amp, torch.device("cpu"))
    start = time.time()
    probs, means, sds = patch_probabilities(model, data, args.k_max, args.seed, amp)
    untrained = [c for c in data.class_names if c not in cfg.trained_classes]
    ablation = k_ablation(probs, data, ks, untrained)
    stats = correct_patch_stats(probs, means, sds, data)
    names = data.class_names
    results = {key: compare_classes(stats[key], names) for key in PATCH_STATS}
    titles = {k: v[0] for k, v in PATCH_STATS.items()}
    digits = {k: v[1] for k, v in PATCH_STATS.items()}
    n_patches = {c: len(stats["patch_mean"][c]) for c in names}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = _plot(ablation, stats, out)
    counts = data.class_counts()
    md = [
        f"# Patch analysis: {args.classifier}, {args.task}, {args.split} split",
        "",
        f"{len(data)} images ({', '.join(f'{c} {n}' for c, n in counts.items() if n)}); {args.k_max} patches per "
        f"image drawn with seed {args.seed}; precision {'fp32' if amp is None else str(amp).replace('torch.', '')}. "
        + (f"Untrained (absent) classes: {', '.join(untrained)}." if untrained else ""),
        "",
        "## K ablation",
        "",
        "Seed columns: the vote of the first K patches (what the pipeline returns with this seed). Mean ± SD: over "
        "the disjoint K-patch sets in the draw (independent draws of K patches).",
        "",
        _ablation_markdown(ablation, names),
        "",
        "## Intensity of correctly classified patches (Fig. 5)",
        "",
        "Gray levels of each patch's lung pixels in the preprocessed frame, [0, 255]. n counts patches.",
        "",
        summary_markdown(results, names, titles, digits, n_patches),
        "",
        "Kolmogorov–Smirnov normality (standardised values vs N(0, 1)):",
        "",
        normality_markdown(results, names, titles),
        "",
        "Wilcoxon rank-sum p-values (uncorrected; * p < 0.05, ** p < 0.01, *** p < 0.001). With thousands of "
        "patches per class almost any difference is 'significant': read the means, not only the stars.",
        "",
        pairwise_markdown(results, titles),
        "",
    ]
    (out / "patch_analysis.md").write_text("\n".join(md))
    payload = {
        "classifier": str(args.classifier),
        "task": args.task,
        "split": args.split,
        "n_images": len(data),
        "k_max": args.k_max,
        "seed": args.seed,
        "precision": "fp32" if amp is None else str(amp).replace("torch.", ""),
        "k_ablation": ablation,
        "patch_intensity": results,
        "files": files,
        "seconds": round(time.time() - start, 1),
    }
    (out / "patch_analysis.json").write_text(json.dumps(json_ready(payload), indent=1, allow_nan=False) + "\n")
    print("\n".join(md[6:12]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
