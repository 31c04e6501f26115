"""Cross-database segmentation validation (the paper's Table V, extended) and each model's card metrics.

For every ``--model`` (default: the shipped default and the documented alternative, :data:`cxr_hub.presets.SHIPPED`),
evaluates at each mask's original resolution, as the pipeline segments with that model (with the post-processing
:func:`cxr_hub.postprocessing.clean_label_map` where its config asks for it):
  1. the JSRT/SCR validation split (lung, heart, each lung; the training convention),
  2. the Cohen films with v7labs lung polygons of the **classification test split** (patients never trained on), strict
     and convention-aware (our lung plus our heart inside the polygon, against the polygon: v7labs counts the lung
     behind the heart as lung, SCR as heart),
each **with** the paper's preprocessing (as trained) and **without** it (min-max scaling only), with a Wilcoxon
signed-rank test on the paired per-image lung Jaccard; every score also the other way round (same inference: without
the clean-up for a model that applies it, with it for one that does not; how many pixels it changes); the
cardiothoracic ratio from predicted masks
against the SCR masks on JSRT validation (mean absolute error, Bland-Altman plot); under-segmentation per class. The
paper's numbers come from :mod:`cxr_hub.paper`, never retyped.

Usage:
    python -m training.segmentation_report [--model DIR ...] [--out docs/segmentation] [--data DIR] [--limit N]
        [--no-card]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from cxr_hub.evaluation.metrics import CONVENTION_AWARE_LUNG
from cxr_hub.evaluation.segmentation import ctr_agreement, evaluate_segmentation, load_segmentation_model
from cxr_hub.paper import format_mean_sd, paper_table
from cxr_hub.presets import SHIPPED
from training.data import DEFAULT_SPLIT_FILE, load_or_create_splits, read_rows
from training.train_segmentation import budget_text, describe_training

#: Models reported by default: every shipped segmentation network.
DEFAULT_MODELS = tuple(str(m.path) for m in SHIPPED.values() if m.role == "segmentation")
#: Evaluation sets: name → (label, evaluate_segmentation selection).
SETS: dict[str, tuple[str, dict[str, Any]]] = {
    "jsrt_val": ("JSRT/SCR validation", {"split": "segmentation:val"}),
    "cohen_test": ("Cohen/v7labs, classification test split", {"split": "classification:test", "sources": ["cohen"]}),
}


def _per_image(folder: Path, key: str = "jaccard_lung") -> dict[str, float]:
    with (folder / "per_image.csv").open() as f:
        return {r["id"]: float(r[key]) for r in csv.DictReader(f) if r.get(key) not in (None, "")}


def paired_wilcoxon(with_pre: dict[str, float], without_pre: dict[str, float]) -> dict[str, Any]:
    """Wilcoxon signed-rank test on per-image lung Jaccard of the same images under two conditions."""
    ids = sorted(set(with_pre) & set(without_pre))
    a = np.array([with_pre[i] for i in ids])
    b = np.array([without_pre[i] for i in ids])
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 2 or np.allclose(a, b):
        return {"n": len(a), "p_value": None, "median_difference": 0.0}
    stat = wilcoxon(a, b)
    return {
        "n": len(a),
        "statistic": float(stat.statistic),
        "p_value": float(stat.pvalue),
        "median_difference": float(np.median(a - b)),
    }


def _fmt(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("n", 0) == 0:
        return "—"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def bland_altman_plot(per_image_csv: Path, out_png: Path) -> None:
    """Bland-Altman plot of the predicted vs reference CTR in an ``evaluate_segmentation`` per-image CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with per_image_csv.open() as f:
        pairs = [
            (float(r["ctr_predicted"]), float(r["ctr_reference"]))
            for r in csv.DictReader(f)
            if r.get("ctr_predicted") not in (None, "", "nan") and r.get("ctr_reference") not in (None, "", "nan")
        ]
    pairs = [p for p in pairs if np.isfinite(p).all()]
    if not pairs:
        return
    agreement = ctr_agreement(pairs)
    means = np.array([(a + b) / 2 for a, b in pairs])
    diffs = np.array([a - b for a, b in pairs])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(means, diffs, s=12)
    lo, hi = agreement["limits_of_agreement"]
    for y, style in ((agreement["mean_difference"], "-"), (lo, "--"), (hi, "--")):
        ax.axhline(y, color="grey", linestyle=style, linewidth=1)
    ax.set_xlabel("mean of predicted and reference CTR")
    ax.set_ylabel("predicted − reference CTR")
    ax.set_title(f"CTR agreement, JSRT validation (n = {agreement['n']}, MAE {agreement['mae']:.3f})", fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def report_model(model_dir: str, out: Path, manifest: Path, split_file: str, limit: int | None) -> dict[str, Any]:
    """Every evaluation of one model; writes its runs under ``out`` and returns the summary for the table.

    Each run segments once and scores the prediction before and after the clean-up.
    """
    model = load_segmentation_model(model_dir)
    runs: dict[str, dict[str, Any]] = {}
    for name, (_, sel) in SETS.items():
        for key, pre in ((f"{name}_with_preprocessing", "model"), (f"{name}_without_preprocessing", "none")):
            runs[key] = evaluate_segmentation(
                manifest,
                out / key,
                segmentation=model,
                preprocessing=pre,
                postprocess=None,  # as the pipeline does for this model
                split_file=split_file,
                limit=limit,
                undersegmentation=False,
                **sel,
            )
    under_metrics = evaluate_segmentation(
        manifest,
        out / "undersegmentation_label4",
        segmentation=model,
        task="label4",
        limit=limit,
        postprocess=None,
        split_file=split_file,
        split="classification:test",
    )
    under = under_metrics["undersegmentation"]
    under["images"] = "label4 images of the classification test split"
    tests = {
        name: paired_wilcoxon(
            _per_image(out / f"{name}_with_preprocessing"), _per_image(out / f"{name}_without_preprocessing")
        )
        for name in SETS
    }
    bland_altman_plot(out / "jsrt_val_with_preprocessing" / "per_image.csv", out / "ctr_bland_altman.png")
    return {
        "model": model_dir,
        "architecture": getattr(model.config, "preset", None) or model.config.model_type,
        "runs": {
            k: {
                m: v[m]
                for m in ("n", "jaccard", "dice", "postprocessing", "ctr_agreement", "heart_share_of_reference_lung")
            }
            for k, v in runs.items()
        },
        "wilcoxon_lung_jaccard": tests,
        "undersegmentation": under,
        "ctr": runs["jsrt_val_with_preprocessing"]["ctr_agreement"],
        # what the convention-aware Cohen score cannot see: how much of the polygons' lung we call heart
        "heart_share_of_polygon_lung": {
            k: runs[f"cohen_test_{k}_preprocessing"]["heart_share_of_reference_lung"] for k in ("with", "without")
        },
        # CTR from our masks on the classification test split, per source and class (normals: the paper's 0.45)
        "ctr_predicted_by_source_and_label": under_metrics["ctr_predicted_by_source_and_label"],
    }


def other_way(post: dict[str, Any]) -> dict[str, Any]:
    """The scores of an evaluation's ``postprocessing`` entry the other way (without the clean-up when the pipeline
    applies it, with it when it does not)."""
    return post["scores_without"] if post["applied"] else post["scores_with"]


def render_table(models: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown for ``table_v.md``: our numbers per model beside the paper's (read from :mod:`cxr_hub.paper`)."""
    t5 = paper_table("table_v_segmentation_jaccard")
    t13 = paper_table("table_xiii_lung_jaccard_by_network")
    lines = [
        "## Table V, extended (Jaccard, mean ± SD; each model as the pipeline segments with it)",
        "",
        "| model | data | preprocessing | n | lung | lung, convention-aware | heart | left lung | right lung |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        for set_name, (label, _) in SETS.items():
            for cond in ("with", "without"):
                r = m["runs"][f"{set_name}_{cond}_preprocessing"]
                j = r["jaccard"]
                lines.append(
                    f"| {name} | {label} | {cond} | {r['n']} | {_fmt(j.get('lung'))} | "
                    f"{_fmt(j.get(CONVENTION_AWARE_LUNG))} | {_fmt(j.get('heart'))} | {_fmt(j.get('left_lung'))} | "
                    f"{_fmt(j.get('right_lung'))} |"
                )
    lines += [
        "",
        "The paper (Table V, FC-DenseNet103; Table XIII by network; NLM Montgomery is the paper's cross-database set,",
        "which we do not have: our cross-database set is the Cohen/v7labs test split):",
        "",
        "| paper | data | lung | heart |",
        "|---|---|---|---|",
        f"| FC-DenseNet103 | JSRT, preprocessed | {format_mean_sd(t5['jsrt_preprocessed']['lung'])} | "
        f"{format_mean_sd(t5['jsrt_preprocessed']['heart'])} |",
        f"| FC-DenseNet103 | NLM Montgomery, preprocessed | {format_mean_sd(t5['nlm_mc_preprocessed']['lung'])} | — |",
        f"| FC-DenseNet103 | NLM Montgomery, original | {format_mean_sd(t5['nlm_mc_original']['lung'])} | — |",
    ]
    for net in ("unet", "fcdensenet103"):
        lines.append(
            f"| {net} (Table XIII) | JSRT / NLM Montgomery | {format_mean_sd(t13[net]['jsrt'])} / "
            f"{format_mean_sd(t13[net]['nlm_mc'])} | — |"
        )
    lines += ["", "## Post-processing and preprocessing", ""]
    lines += [
        "The pipeline applies the clean-up (`cxr_hub.postprocessing.clean_label_map`) to a model whose config asks",
        'for it; every number above is as the pipeline segments. The "other way" columns give the same inference',
        "scored the other way: without the clean-up for a model that applies it, with it for one that does not.",
        "",
        "| model | data | clean-up in the pipeline | pixels the clean-up changes (share of labelled pixels) | images "
        "changed | lung, other way | convention-aware, other way | heart, other way | Wilcoxon with vs without "
        "preprocessing |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        for set_name, (label, _) in SETS.items():
            post = m["runs"][f"{set_name}_with_preprocessing"]["postprocessing"]
            raw = other_way(post)["jaccard"]
            t = m["wilcoxon_lung_jaccard"][set_name]
            p = "n/a" if t["p_value"] is None else f"{t['p_value']:.2g}"
            share = post["changed_share_of_labelled_pixels"]
            lines.append(
                f"| {name} | {label} | {'yes' if post['applied'] else 'no'} | {share['mean']:.4f} ± "
                f"{share['std']:.4f} | {post['images_changed']} | "
                f"{_fmt(raw.get('lung'))} | {_fmt(raw.get(CONVENTION_AWARE_LUNG))} | {_fmt(raw.get('heart'))} | "
                f"median {t['median_difference']:+.4f}, p = {p} (n = {t['n']}) |"
            )
    lines += ["", "## Cardiothoracic ratio from predicted masks vs SCR masks (JSRT validation)", ""]
    lines += ["| model | n | MAE | mean difference | 95 % limits of agreement |", "|---|---|---|---|---|"]
    for name, m in models.items():
        c = m["ctr"]
        lo, hi = c["limits_of_agreement"]
        lines.append(f"| {name} | {c['n']} | {c['mae']:.4f} | {c['mean_difference']:+.4f} | {lo:+.4f} to {hi:+.4f} |")
    lines += [
        "",
        "## Heart on films whose masks have none (Cohen/v7labs test split)",
        "",
        "Share of the polygons' lung that the model labels heart (the lung behind the heart is part of it, so the",
        "right value is small but not zero); the convention-aware Jaccard counts that heart as lung and cannot see it.",
        "",
        "| model | with preprocessing | without |",
        "|---|---|---|",
    ]
    for name, m in models.items():
        h = m.get("heart_share_of_polygon_lung")
        if h:
            lines.append(f"| {name} | {_fmt(h['with'])} | {_fmt(h['without'])} |")
    ctr_paper = paper_table("table_ix_cardiothoracic_ratio")
    lines += [
        "",
        "## Cardiothoracic ratio from our masks (label4 images of the classification test split)",
        "",
        f"No reference masks here: a plausibility check. The paper's normals: {format_mean_sd(ctr_paper['normal'])}"
        " (its own data: adult PA films, mostly).",
        "",
        "| model | source / class | n | CTR (mean ± SD) |",
        "|---|---|---|---|",
    ]
    for name, m in models.items():
        for group, v in (m.get("ctr_predicted_by_source_and_label") or {}).items():
            lines.append(f"| {name} | {group} | {v['n']} | {_fmt(v)} |")
    paper_under = paper_table("under_segmentation")
    lines += [
        "",
        "## Under-segmentation (label4 images of the classification test split)",
        "",
        f"Ours: predicted lung area below 75 % of the normal films' median; the paper: {paper_under['definition']}.",
        "",
        "| model | class | n | under-segmented | share | paper (under-segmented / n) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        for cls, v in m["undersegmentation"]["per_class"].items():
            pu = paper_under.get(cls)
            paper_txt = f"{pu[0]} / {pu[1]}" if pu else "—"
            lines.append(f"| {name} | {cls} | {v['n']} | {v['undersegmented']} | {v['share']:.1%} | {paper_txt} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Runs every evaluation for every model, writes table_v.md/json, and re-renders the model cards."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="segmentation model folder (repeatable; default: shipped)")
    parser.add_argument("--out", default="docs/segmentation")
    parser.add_argument("--data")
    parser.add_argument("--split-file", default=str(DEFAULT_SPLIT_FILE))
    parser.add_argument("--limit", type=int, help="at most N images per evaluation (quick checks)")
    parser.add_argument("--no-card", action="store_true", help="do not re-render the model cards")
    args = parser.parse_args(argv)

    root, rows = read_rows(args.data)
    load_or_create_splits(rows, args.split_file)
    manifest = root / "manifest.csv"
    out = Path(args.out)
    # models reported by an earlier run into the same folder stay in the table (one model can be re-run alone)
    previous = out / "table_v.json"
    models: dict[str, dict[str, Any]] = json.loads(previous.read_text())["models"] if previous.is_file() else {}
    for model_dir in args.model or DEFAULT_MODELS:
        name = Path(model_dir).name
        models[name] = report_model(model_dir, out / name, manifest, args.split_file, args.limit)
        if not args.no_card:
            _render_card(Path(model_dir), models[name])
    (out / "table_v.json").write_text(json.dumps({"models": models}, indent=2) + "\n")
    lines = render_table(models)
    (out / "table_v.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _render_card(folder: Path, summary: dict[str, Any]) -> None:
    """Re-renders the Hub folder's README with the measured metrics and the training summary."""
    from transformers import AutoConfig

    from cxr_hub.hub import render_model_card

    config = AutoConfig.from_pretrained(folder)
    saved = json.loads((folder / "training_config.json").read_text())
    runs = summary["runs"]
    jsrt = runs["jsrt_val_with_preprocessing"]
    post = jsrt["postprocessing"]
    jsrt_other = other_way(post)
    cohen, cohen_nopre = runs["cohen_test_with_preprocessing"], runs["cohen_test_without_preprocessing"]

    def mean(run: dict[str, Any], metric: str, structure: str) -> float:
        return round(run[metric][structure]["mean"], 4)

    metrics = [
        {
            "dataset": {"name": "JSRT/SCR (held-out validation patients)", "type": "jsrt-scr", "split": "validation"},
            "values": {
                "jaccard_lung": mean(jsrt, "jaccard", "lung"),
                "jaccard_heart": mean(jsrt, "jaccard", "heart"),
                "jaccard_left_lung": mean(jsrt, "jaccard", "left_lung"),
                "jaccard_right_lung": mean(jsrt, "jaccard", "right_lung"),
                "dice_lung": mean(jsrt, "dice", "lung"),
                "dice_heart": mean(jsrt, "dice", "heart"),
                (
                    "jaccard_lung_without_postprocessing" if post["applied"] else "jaccard_lung_with_postprocessing"
                ): mean(jsrt_other, "jaccard", "lung"),
                "ctr_mean_absolute_error": round(summary["ctr"]["mae"], 4),
            },
        },
        {
            "dataset": {
                "name": "COVID-19 image data collection (Cohen) with v7labs lung polygons",
                "type": "cohen-v7labs",
                "split": "classification test split (patients never trained on)",
            },
            "values": {
                "jaccard_lung": mean(cohen, "jaccard", "lung"),
                "jaccard_lung_convention_aware": mean(cohen, "jaccard", CONVENTION_AWARE_LUNG),
                "jaccard_lung_convention_aware_without_preprocessing": mean(
                    cohen_nopre, "jaccard", CONVENTION_AWARE_LUNG
                ),
                "dice_lung": mean(cohen, "dice", "lung"),
                "heart_share_of_polygon_lung": round(cohen["heart_share_of_reference_lung"]["mean"], 4),
            },
        },
    ]
    s = saved["summary"]
    training = {
        "description": describe_training(saved["config"], saved["summary"].get("data")),
        "architecture": saved["config"]["arch"],
        "budget": budget_text(s),
        "optimiser": f"Adam lr {saved['config']['lr']}, batch {saved['config']['batch_size']}, "
        f"lr x{saved['config']['plateau_factor']} when the training loss plateaus",
        "class_weights (background, heart, left lung, right lung)": s["class_weights"],
        "preprocessing": "float32 → histogram equalisation → gamma 0.5 → 256×256 (the paper's section II-A)",
        "post-processing": (
            "cxr_hub.postprocessing.clean_label_map (largest region per lung on its side, heart between the lungs, "
            "holes filled); applied by the pipeline and in every metric above"
            if post["applied"]
            else "none: the pipeline uses this model's masks as they come (the config asks for no clean-up); "
            "docs/segmentation/table_v.md shows what cxr_hub.postprocessing.clean_label_map would change"
        ),
        "storage": "weights stored in float16, loaded as float32; metrics measured on the loaded float32 model",
        "convention note": "v7labs polygons include the lung behind the heart, SCR masks do not: the strict Cohen "
        "number measures a different delineation as well as a different database; the convention-aware one counts "
        "our heart inside the polygon as lung.",
        "heart on other hospitals' films": (
            f"on the Cohen test films the strict lung Jaccard is {mean(cohen, 'jaccard', 'lung'):.3f} and the "
            f"convention-aware one {mean(cohen, 'jaccard', CONVENTION_AWARE_LUNG):.3f}: the gap is lung (inside the "
            f"polygons) that this model labels heart, {cohen['heart_share_of_reference_lung']['mean']:.1%} of the "
            "polygons' lung on average (the lung behind the heart is part of it). Cardiothoracic ratios on such films "
            "can read high; check the overlay."
        ),
        "full report": "docs/segmentation/table_v.md",
    }
    card = render_model_card(
        config,
        metrics=metrics,
        model_name=folder.name,
        training=training,
        datasets=["jsrt", "scr", "cohen-covid-chestxray"],
    )
    (folder / "README.md").write_text(card)


if __name__ == "__main__":
    raise SystemExit(main())
