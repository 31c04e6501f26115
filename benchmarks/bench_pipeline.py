"""Benchmark of CXRPipeline ("GPU patch voting"): ms per stage for K in {10, 100, 400} against two baselines.

Baselines, both with the same preprocessing, segmentation, patches and eq. 5 pasting as the pipeline, fp32,
contiguous memory format (the authors' setting):

* (a) authors' style: one patch per forward pass, and an autograd Grad-CAM (hooks + backward) per patch;
* (b) batched autograd Grad-CAM: patches in chunks of ``--chunk-size`` through forward + backward.

Both are lower bounds of the real thing: the class to explain is given (no second forward pass to find it first).

Usage::

    .venv/bin/python benchmarks/bench_pipeline.py            # full run, random-init full-size models
    .venv/bin/python benchmarks/bench_pipeline.py --quick    # K = 10 only, smoke test
    .venv/bin/python benchmarks/bench_pipeline.py --segmentation DIR --classifier DIR --repeats 3

Random-init models (unless folders are given): FC-DenseNet103 at 256, ResNet-18 at 224, 1024 frame. The random
segmentation's 1x1 classifier bias is tilted towards the lung labels so patches can be placed; timings do not
depend on where the lung is. Memory: peak resident set size of this process (``resource.getrusage``, everything:
interpreter, torch, models, image, all pipeline runs up to K = 400, measured before any baseline runs) and
tracemalloc's peak of Python-heap allocations (numpy arrays included; torch CPU tensors are NOT tracked by
tracemalloc) during the K = 400 pipeline runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = ("load", "preprocess", "segment", "biomarkers", "sample", "classify", "saliency", "total")
TARGETS = {"saliency_overhead": 0.30, "speedup_a": 6.0, "speedup_b": 8.0, "peak_rss_gb": 3.0}


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def build_models(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """Segmentation and patch classifier: loaded from folders, or random-init full-size models."""
    from transformers import AutoModel

    import cxr_hub  # noqa: F401  (registers the Auto classes)
    from cxr_hub import (
        FCDenseNetConfig,
        FCDenseNetForSemanticSegmentation,
        PatchClassifierConfig,
        PatchClassifierForImageClassification,
    )

    if args.segmentation and args.classifier:
        seg = AutoModel.from_pretrained(args.segmentation).eval()
        clf = AutoModel.from_pretrained(args.classifier).eval()
        return seg, clf, f"trained: {args.segmentation}, {args.classifier}"
    torch.manual_seed(0)
    seg = FCDenseNetForSemanticSegmentation(FCDenseNetConfig()).eval()
    with torch.no_grad():
        seg.classifier.bias.copy_(torch.tensor([0.0, 0.0, 0.5, 0.5]))  # lungs exist, so patches can be placed
    clf = PatchClassifierForImageClassification(PatchClassifierConfig()).eval()
    return seg, clf, "random init: FC-DenseNet103 (256), ResNet-18 (224 input, 1024 frame)"


def time_pipeline(pipe: Any, image: Path, k: int, repeats: int) -> dict[str, float]:
    """Median ms per stage over ``repeats`` full pipeline calls."""
    runs = [pipe(image, k=k, seed=0).timings for _ in range(repeats)]
    return {s: statistics.median(r.get(s, 0.0) for r in runs) for s in STAGES}


def baseline_ms(
    pipe: Any, model: torch.nn.Module, prepared: Any, k: int, style: str, chunk: int, max_patches: int
) -> tuple[float, int]:
    """ms for patch classification + Grad-CAM + eq. 5 of one baseline ("a": per patch, "b": batched autograd).

    Both baselines do the same work for every patch (or chunk), so at most ``max_patches`` patches are run and the
    forward/backward time is scaled linearly to k; the eq. 5 paste is always run for all k patches.

    Returns:
        ``(ms, patches_measured)``.
    """
    from baselines import reference_gradcam

    from cxr_hub.patches import crop_patches, sample_patch_boxes
    from cxr_hub.preprocessing import resize_image
    from cxr_hub.saliency import probabilistic_gradcam

    cfg = pipe.classifier_config
    _, boxes = sample_patch_boxes(prepared.frame_mask, k, cfg.patch_size, np.random.default_rng(0))
    frame = torch.from_numpy(prepared.frame)
    step = 1 if style == "a" else chunk
    n = min(k, max(step, max_patches - max_patches % step))
    cams = []
    start = time.perf_counter()
    for i in range(0, n, step):
        x = crop_patches(frame, boxes[i : min(i + step, n)], cfg.input_size)
        # reference_gradcam's forward with autograd is the vote's forward (its softmax is negligible)
        cams.append(reference_gradcam(model, x, 0))
    network_ms = (time.perf_counter() - start) * 1e3 * k / n
    cam = torch.cat(cams)
    cam = cam.repeat((k + n - 1) // n, 1, 1)[:k]
    start = time.perf_counter()
    maps = probabilistic_gradcam(cam, torch.full((k,), 0.5), boxes, prepared.frame.shape)
    resize_image(maps, prepared.original_size)
    return network_ms + (time.perf_counter() - start) * 1e3, n


def reference_gradcam_warmup(pipe: Any, model: torch.nn.Module, chunk: int) -> None:
    """One untimed autograd pass per batch shape, so oneDNN's kernel setup is not billed to the baselines."""
    from baselines import reference_gradcam

    side = pipe.classifier_config.input_size
    for b in (1, chunk):
        reference_gradcam(model, torch.zeros(b, 1, side, side), 0)


def cam_einsum_ms(pipe: Any, k: int) -> float:
    """ms of the backward-free Grad-CAM of all classes for k patches (done inside the pipeline's classify stage)."""
    from cxr_hub.saliency import gradcam_from_features

    model = pipe.classifier_model
    side = pipe.classifier_config.input_size // 32
    features = torch.rand(k, model.num_features, side, side)
    weight = model.classifier.weight.detach()
    gradcam_from_features(features, weight, list(range(weight.shape[0])), normalize=False)
    start = time.perf_counter()
    for _ in range(5):
        gradcam_from_features(features, weight, list(range(weight.shape[0])), normalize=False)
    return (time.perf_counter() - start) * 1e3 / 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmentation", help="trained segmentation model folder (default: random init)")
    parser.add_argument("--classifier", help="trained patch classifier folder (default: random init)")
    parser.add_argument("--image", default=str(REPO_ROOT / "examples" / "covid19_cohen_2168a917.jpg"))
    parser.add_argument("--quick", action="store_true", help="K = 10 only (smoke run)")
    parser.add_argument("--repeats", type=int, default=1, help="pipeline runs per K (median is reported)")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), default="auto")
    parser.add_argument("--no-bf16", action="store_true", help="skip the extra bf16-autocast run at K = 100")
    parser.add_argument(
        "--segmentation-precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="the pipeline's segmentation precision (default: the pipeline's default)",
    )
    parser.add_argument(
        "--no-other-segmentation",
        action="store_true",
        help="skip the extra K = 100 run with the other segmentation arithmetic (fp32 if the pipeline's is bf16)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--max-patches-a", type=int, default=10, help="(a): patches actually run per K, time scaled to K (10)"
    )
    parser.add_argument(
        "--max-patches-b", type=int, default=64, help="(b): patches actually run per K, whole chunks (64)"
    )
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from cxr_hub.pipeline import CXRPipeline

    ks = [10] if args.quick else [10, 100, 400]
    load_start = os.getloadavg()
    print(f"# cxr_hub pipeline benchmark — {time.strftime('%Y-%m-%d %H:%M')}")
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CUDA {'yes' if torch.cuda.is_available() else 'no'}, "
        f"python {platform.python_version()}"
    )
    print(f"load average at start (1/5/15 min): {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f}")
    seg, clf, what = build_models(args)
    baseline_model = copy.deepcopy(clf)  # fp32, contiguous: the pipeline converts its own copy to channels_last
    # no patch re-use: every timed call must classify its K patches (a repeat of the same call would hit the cache)
    pipe = CXRPipeline(
        seg,
        clf,
        device=None,
        chunk_size=args.chunk_size,
        precision=args.precision,
        segmentation_precision=args.segmentation_precision,
        reuse_patches=False,
    )
    arithmetic = pipe.settings()["classifier_arithmetic"]
    print(
        f"models: {what}; device {pipe.device}; chunk {args.chunk_size}; precision {args.precision} (classifier runs "
        f"in {arithmetic}); segmentation precision {args.segmentation_precision} (bf16: "
        f"{pipe.segmentation_numerics().bf16}); batch norms folded on the bf16 path: {pipe.fuse_batchnorm}"
    )
    print(f"image: {Path(args.image).name}; repeats per K: {args.repeats}")
    rss_loaded = _rss_mb()
    pipe(args.image, k=10, seed=0)  # warm-up: oneDNN builds its kernels on the first call of each shape

    print(f"pipeline settings: {json.dumps(pipe.settings())}")
    results: dict[str, Any] = {"ks": ks, "pipeline": {}, "a": {}, "b": {}, "pipeline_settings": pipe.settings()}
    for k in ks:
        if k == max(ks):
            tracemalloc.start()
        results["pipeline"][k] = time_pipeline(pipe, Path(args.image), k, args.repeats)
        if k == max(ks):
            _, py_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            results["tracemalloc_peak_mb"] = py_peak / 2**20
    results["peak_rss_mb"] = _peak_rss_mb()
    results["rss_after_load_mb"] = rss_loaded
    prepared = pipe.prepare(args.image)
    results["einsum_ms"] = {k: cam_einsum_ms(pipe, k) for k in ks}
    results["measured_patches"] = {"a": {}, "b": {}}
    reference_gradcam_warmup(pipe, baseline_model, args.chunk_size)
    for k in ks:
        for style, cap in (("a", args.max_patches_a), ("b", args.max_patches_b)):
            ms, n = baseline_ms(pipe, baseline_model, prepared, k, style, args.chunk_size, cap)
            results[style][k] = ms
            results["measured_patches"][style][k] = n
    bf16 = None
    if not args.no_bf16 and not args.quick and pipe.device.type == "cpu" and arithmetic != "bf16":
        pipe_bf16 = CXRPipeline(
            seg, copy.deepcopy(baseline_model), chunk_size=args.chunk_size, precision="bf16", reuse_patches=False
        )
        pipe_bf16.analyze(prepared, k=10)
        bf16 = pipe_bf16.analyze(prepared, k=100, seed=0).timings
        results["bf16_k100"] = bf16
    other_seg = None
    # the same pipeline with the segmentation in the other arithmetic, so one run shows what each costs
    other_arithmetic = "fp32" if pipe.segmentation_numerics().bf16 else "bf16"
    if not args.no_other_segmentation and not args.quick:
        pipe_other = CXRPipeline(
            seg,
            copy.deepcopy(baseline_model),
            chunk_size=args.chunk_size,
            precision=args.precision,
            segmentation_precision=other_arithmetic,
            reuse_patches=False,
        )
        pipe_other(args.image, k=10, seed=0)
        other_seg = time_pipeline(pipe_other, Path(args.image), 100, args.repeats)
        results["other_segmentation_k100"] = {"segmentation_arithmetic": other_arithmetic, **other_seg}
    load_end = os.getloadavg()
    results["loadavg"] = {"start": load_start, "end": load_end}

    # ------------------------------------------------------------------ report
    print()
    print(
        "| K | load | preprocess | segment | biomarkers | sample | classify (vote + all-class CAMs) "
        "| saliency (eq. 5) | total | (a) vote+CAM | (b) vote+CAM | ratio vote+saliency a / b "
        "| ratio whole pipeline a / b |"
    )
    print("|---|" + "---|" * 12)
    summary: dict[int, dict[str, float]] = {}
    for k in ks:
        t = results["pipeline"][k]
        ours_vs = t["classify"] + t["saliency"]
        fixed = t["total"] - ours_vs  # load + preprocess + segment + biomarkers + sample (+ overheads), shared
        a_total, b_total = fixed + results["a"][k], fixed + results["b"][k]
        summary[k] = {
            "ratio_vs_a": results["a"][k] / ours_vs,
            "ratio_vs_b": results["b"][k] / ours_vs,
            "whole_vs_a": a_total / t["total"],
            "whole_vs_b": b_total / t["total"],
        }
        s = summary[k]
        cells = [t[x] for x in STAGES[:-1]] + [t["total"], results["a"][k], results["b"][k]]
        print(
            f"| {k} | " + " | ".join(f"{c:.0f}" for c in cells)
            + f" | {s['ratio_vs_a']:.1f}x / {s['ratio_vs_b']:.1f}x | {s['whole_vs_a']:.1f}x / {s['whole_vs_b']:.1f}x |"
        )  # fmt: skip
    results["summary"] = summary
    print()
    mp = results["measured_patches"]
    print(
        "baselines: fp32, contiguous, same preprocessing/segmentation/eq. 5; network time measured on "
        + ", ".join(f"K={k}: (a) {mp['a'][k]} / (b) {mp['b'][k]} patches" for k in ks)
        + ", scaled linearly to K. Whole-pipeline ratios add the shared stages (load ... sample) to both sides."
    )
    print(
        f"memory: peak RSS {results['peak_rss_mb']:.0f} MiB (process, up to K={max(ks)}, before baselines); RSS after "
        f"model load {rss_loaded:.0f} MiB; tracemalloc peak (numpy/Python heap, not torch tensors) during K={max(ks)} "
        f"runs {results['tracemalloc_peak_mb']:.0f} MiB"
    )
    if bf16 is not None:
        print(
            f"bf16 classifier (precision='bf16'), K=100: classify {bf16['classify']:.0f} ms, saliency "
            f"{bf16['saliency']:.0f} ms (the pipeline's {arithmetic}: {results['pipeline'][100]['classify']:.0f} / "
            f"{results['pipeline'][100]['saliency']:.0f} ms)"
        )
    if other_seg is not None:
        fixed_other = other_seg["total"] - other_seg["classify"] - other_seg["saliency"]
        vs_b = (fixed_other + results["b"][100]) / other_seg["total"]
        vs_a = (fixed_other + results["a"][100]) / other_seg["total"]
        results["other_segmentation_ratios"] = {"whole_vs_a": vs_a, "whole_vs_b": vs_b}
        print(
            f"{other_arithmetic} segmentation (segmentation_precision='{other_arithmetic}'), K=100: segment "
            f"{other_seg['segment']:.0f} ms (pipeline's: {results['pipeline'][100]['segment']:.0f}), total "
            f"{other_seg['total']:.0f} ms; whole pipeline {vs_a:.2f}x faster than (a), {vs_b:.2f}x than (b) "
            "(baselines with the same segmentation)"
        )
    print(f"load average at end (1/5/15 min): {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}")

    k_ref = 100 if 100 in ks else ks[0]
    t = results["pipeline"][k_ref]
    einsum = results["einsum_ms"][k_ref]
    overhead = (t["saliency"] + einsum) / max(t["classify"] - einsum, 1e-9)
    checks = [
        (
            f"saliency adds <= 30 % to the K={k_ref} vote",
            overhead <= TARGETS["saliency_overhead"],
            f"{overhead:.1%} (eq. 5 {t['saliency']:.0f} ms + CAM einsum {einsum:.1f} ms "
            f"over a {t['classify'] - einsum:.0f} ms vote)",
        ),
        (
            f"whole pipeline >= 6x faster than (a) at K={k_ref}",
            summary[k_ref]["whole_vs_a"] >= TARGETS["speedup_a"],
            f"{summary[k_ref]['whole_vs_a']:.2f}x",
        ),
        (
            f"whole pipeline >= 8x faster than (b) at K={k_ref}",
            summary[k_ref]["whole_vs_b"] >= TARGETS["speedup_b"],
            f"{summary[k_ref]['whole_vs_b']:.2f}x",
        ),
        (
            f"peak memory at K={max(ks)} <= 3 GB",
            results["peak_rss_mb"] / 1024 <= TARGETS["peak_rss_gb"],
            f"{results['peak_rss_mb'] / 1024:.2f} GiB peak RSS",
        ),
    ]  # fmt: skip
    print()
    for name, ok, detail in checks:
        print(f"- {'PASS' if ok else 'FAIL'}: {name}: {detail}")
    results["checks"] = [{"target": n, "ok": ok, "value": d} for n, ok, d in checks]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
