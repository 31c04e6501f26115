"""Does a classifier look at the lungs or at the hospital? The shortcut report of a shipped classifier.

The classes of our data come from different collections (normal films from JSRT, NIH and a few from Cohen; every
bacterial and COVID-19 film from Cohen), so a classifier can score well by recognising the collection. This report
measures that, for one classifier and one segmentation model:

1. **accuracy per source and class** on the classification test split, read from ``python -m cxr_hub evaluate``'s
   ``predictions.csv`` (``--predictions``): above all the Cohen normals, the only normal films of the collection
   that holds the disease classes;
2. **saliency inside the lungs**: the mean share of the predicted class's probabilistic Grad-CAM inside the segmented
   lungs (the same CSV);
3. **a source probe**: a multinomial logistic model on the classifier's pooled features (the mean over K lung patches
   of layer4's global average pool, or the global model's pooled features), fitted to tell the collections apart
   among the normal films of every split, scored by 5-fold cross-validation grouped by patient. Balanced accuracy
   near chance (1 / number of sources) means the features carry little of the collection; near 1, they carry it.
   The same probe on the lungs' gray-level histogram (16 bins of the preprocessed image inside the lung mask) is
   the baseline: how much the collection shows in the pixels themselves.

Leave-one-source-out training (train without JSRT normals, test on them; the same for NIH) needs training runs and
lives with the classifier training (:mod:`training.train_classifier`).

Usage (``training.results_tables`` names each row by its file, ``docs/results/shortcuts_<model folder>.json``; a
global model is scored on the CSV's ``global_prediction`` column)::

    python -m training.shortcut_report --classifier models/cxr-patch-resnet18 \
        --segmentation models/cxr-lung-seg-unet --predictions docs/results/label4_test/predictions.csv \
        --out docs/results/shortcuts_cxr-patch-resnet18.json
    python -m training.shortcut_report --classifier models/cxr-global-resnet18 \
        --segmentation models/cxr-lung-seg-unet --predictions docs/results/label4_test/predictions.csv \
        --prediction-column global_prediction --out docs/results/shortcuts_cxr-global-resnet18.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_hub.evaluation.classification_metrics import accuracy_by_group

#: Folds of the probe's cross-validation (grouped by patient, stratified by source as far as groups allow).
FOLDS = 5
#: L2 weight of the probe (features are standardised first).
PROBE_L2 = 0.01
#: Bins of the lung gray-level histogram baseline.
HIST_BINS = 16


def accuracy_by_source_and_class(
    predictions: Sequence[Mapping[str, str]], column: str = "prediction"
) -> dict[str, dict[str, Any]]:
    """Accuracy per ``"source/label"`` of an evaluate ``predictions.csv`` (rows with ``source``, ``label`` and the
    ``column`` of predictions: ``prediction`` for the patch model, ``global_prediction`` for the global one), with
    the count; ``"all/label"`` pools the sources."""
    labels = [r["label"] for r in predictions]
    predicted = [r[column] for r in predictions]
    by_source = accuracy_by_group(labels, predicted, [f"{r['source']}/{r['label']}" for r in predictions])
    pooled = accuracy_by_group(labels, predicted, [f"all/{r['label']}" for r in predictions])
    return dict(sorted({**by_source, **pooled}.items()))


def saliency_share(predictions: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """Mean and SD of the ``saliency_in_lung`` column (finite values), per source and overall."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in predictions:
        v = float(r.get("saliency_in_lung") or "nan")
        if math.isfinite(v):
            by[r["source"]].append(v)
            by["all"].append(v)
    return {k: {"n": len(v), "mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in sorted(by.items())}


def grouped_folds(sources: Sequence[str], groups: Sequence[str], folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """A fold number per sample: whole patients (groups) go to one fold, each source spread over the folds.

    Patients are shuffled (seeded) within their source and dealt round-robin, so every fold holds about the same
    share of each source.
    """
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[str]] = defaultdict(list)
    for patient, src in dict(zip(groups, sources, strict=True)).items():
        by_source[src].append(patient)
    fold_of: dict[str, int] = {}
    for src in sorted(by_source):
        patients = sorted(by_source[src])
        rng.shuffle(patients)
        for i, p in enumerate(patients):
            fold_of[p] = i % folds
    return np.array([fold_of[g] for g in groups])


def probe(features: np.ndarray, sources: Sequence[str], groups: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """Cross-validated source probe: balanced accuracy, per-source recall, chance level.

    Args:
        features: (N, D) one row per film.
        sources: (N,) the collection of each film.
        groups: (N,) patient ids (a patient's films stay in one fold).

    Returns:
        ``{"balanced_accuracy", "chance", "recall": {source: r}, "n": {source: count}, "folds"}``.
    """
    from training.calibrate_validity import fit_logistic

    names = sorted(set(sources))
    if len(names) < 2:
        raise ValueError(f"A source probe needs films of at least two sources, got {names}.")
    y = np.array([names.index(s) for s in sources])
    fold = grouped_folds(sources, groups, seed=seed)
    predicted = np.empty_like(y)
    for f in range(FOLDS):
        test = fold == f
        if not test.any():
            continue
        train = ~test
        mu, sd = features[train].mean(0), features[train].std(0) + 1e-6
        xt, xs = (features[train] - mu) / sd, (features[test] - mu) / sd
        counts = np.bincount(y[train], minlength=len(names)).astype(np.float64)
        weights = (1.0 / np.maximum(counts, 1))[y[train]]  # every source weighs the same
        w, b = fit_logistic(xt, y[train], len(names), weights * len(weights) / weights.sum(), PROBE_L2)
        predicted[test] = np.argmax(xs @ w.T + b, axis=1)
    recall = {n: float(np.mean(predicted[y == i] == i)) for i, n in enumerate(names)}
    return {
        "balanced_accuracy": float(np.mean(list(recall.values()))),
        "chance": 1.0 / len(names),
        "recall": recall,
        "n": {n: int((y == i).sum()) for i, n in enumerate(names)},
        "folds": FOLDS,
    }


def lung_histogram(preprocessed: np.ndarray, lung_mask: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Normalised histogram of the preprocessed gray levels (0..255) inside the lungs, (bins,) float64.

    Args:
        preprocessed: (H, W) the preprocessed film; lung_mask: (H, W) bool, the same size.
    """
    values = preprocessed[lung_mask.astype(bool)]
    hist, _ = np.histogram(values, bins=bins, range=(0.0, 255.0))
    return hist / max(hist.sum(), 1)


def pooled_features(pipe: Any, prepared: Any, k: int, seed: int = 0, use_global: bool = False) -> np.ndarray:
    """The classifier's pooled layer4 features of one film, (D,) float64.

    A patch model: the mean over ``k`` lung patches (the pipeline's sampler, ``seed``) of each patch's global average
    pool. A global model (``use_global``: the pipeline's global classifier): the global average pool of the whole
    masked frame.
    """
    import torch

    from cxr_hub.patches import crop_patches

    with torch.inference_mode():
        if use_global:
            model = pipe.global_classifier
            x = torch.as_tensor(pipe.global_frame(prepared), dtype=torch.float32)[None, None]
        else:
            model, cfg = pipe.classifier_model, pipe.classifier_config
            sample = pipe.sample_patches(prepared, k=k, seed=seed)
            frame_t = torch.as_tensor(prepared.frame, dtype=torch.float32)
            x = crop_patches(frame_t, sample.boxes_1024, cfg.input_size)
        maps = model.forward_features(x.to(pipe.device)).float()
        return maps.mean((2, 3)).mean(0).cpu().numpy().astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: writes the report JSON and prints its summary."""
    from tqdm import tqdm

    from cxr_hub.presets import default_folder
    from training.data import read_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", required=True, help="classifier folder (patch or global)")
    parser.add_argument("--segmentation", default=str(default_folder("segmentation")))
    parser.add_argument("--predictions", help="predictions.csv of `python -m cxr_hub evaluate` for this classifier")
    parser.add_argument(
        "--prediction-column",
        default="prediction",
        help="column of --predictions to score: prediction (patch model) or global_prediction (global model)",
    )
    parser.add_argument("--data", help="data folder (default: CXR_DATA, else ../shared/data/cxr)")
    parser.add_argument("--k", type=int, default=32, help="patches pooled per film for the probe (default: 32)")
    parser.add_argument("--limit", type=int, help="at most N films per source for the probe (quick checks)")
    parser.add_argument("--out", required=True, help="report JSON")
    parser.add_argument("--num-threads", type=int, default=None)
    args = parser.parse_args(argv)

    import torch

    from cxr_hub.pipeline import CXRPipeline

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    report: dict[str, Any] = {"classifier": args.classifier, "segmentation": args.segmentation}
    if args.predictions:
        with open(args.predictions, newline="") as f:
            predictions = list(csv.DictReader(f))
        report["accuracy_by_source_and_class"] = accuracy_by_source_and_class(predictions, args.prediction_column)
        if args.prediction_column == "prediction":  # the CSV's saliency is the patch model's
            report["saliency_in_lung"] = saliency_share(predictions)
    _, rows = read_rows(args.data)
    normals = [r for r in rows if r.label4 == "normal"]
    if args.limit:
        per: dict[str, list[Any]] = defaultdict(list)
        for r in normals:
            per[r.source].append(r)
        normals = [r for v in per.values() for r in v[: args.limit]]
    # fp32 and no input check: the probe reads features of curated films, as the classifier was trained on them
    mode = json.loads((Path(args.classifier) / "config.json").read_text()).get("mode", "patch")
    # a global model is loaded as the pipeline's global classifier, which needs a patch classifier beside it
    patch, global_ = (
        (args.classifier, None) if mode == "patch" else (str(default_folder("label4/patch")), args.classifier)
    )
    pipe = CXRPipeline.from_pretrained(
        args.segmentation, patch, global_, precision="fp32", segmentation_precision="fp32", check_input=False
    )
    feats, hists, sources, groups = [], [], [], []
    for r in tqdm(normals, desc="normal films", unit="img"):
        prepared = pipe.prepare(r.image)
        feats.append(pooled_features(pipe, prepared, args.k, use_global=global_ is not None))
        hists.append(lung_histogram(prepared.preprocessed, prepared.lung_mask))
        sources.append(r.source)
        groups.append(r.patient_id)
    report["source_probe_normals"] = {
        "features": probe(np.stack(feats), sources, groups),
        "lung_histogram_baseline": probe(np.stack(hists), sources, groups),
        "films": "normal films of every split (the classifier trained on some of them: the probe reads what its "
        "features encode, not what it learned to predict)",
        "patches_per_film": args.k,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    p = report["source_probe_normals"]
    print(
        f"source probe on normals: features {p['features']['balanced_accuracy']:.3f}, lung histogram "
        f"{p['lung_histogram_baseline']['balanced_accuracy']:.3f} (chance {p['features']['chance']:.3f})"
    )
    if "accuracy_by_source_and_class" in report:
        for k, v in report["accuracy_by_source_and_class"].items():
            print(f"  {k}: {v['accuracy']:.1%} of {v['n']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
