"""The paper's training ablations on our data, at one reduced budget: run them, then tabulate and plot them.

Each ablation trains a new label4 classifier with ``training/train_classifier.py`` and scores it on the test split
from the training inputs (``evaluate_test``: K patches voted per film, bootstrap CIs over patients, per-film
predictions). Every run shares one recipe and one budget, so runs differ only in the ablated factor:

* **Patch size** (the paper's Table XVII): patches of 112, 224 or 448 pixels cut from the 1024 frame, each resized
  to the network's 224 input (equal compute per patch; the field of view changes).
* **Lung mask** (Table XVI): lung-masked frames (the paper) against whole frames (``--no-lung-masked``; patch centres
  still lie in the lungs, and ``config.lung_masked = False`` makes the pipeline feed such a model unmasked frames).
* **Training-set size** (Fig. 12): 100 / 50 / 30 / 10 % of each class's training patients (nested subsets), for the
  patch and the global classifier. ``draws_per_epoch`` stays at the full set's size, so every run takes the same
  number of optimiser steps whatever its data.
* **Segmentation network** (Table XIV): U-Net and FC-DenseNet67 trained on JSRT/SCR with the shipped recipe at a
  reduced budget (``SEGMENTATION_BUDGET``: at most 8 epochs and 55 minutes on one thread), each feeding its own lung
  masks to a classifier trained at ``BUDGET``; the reference is ``patch224``, whose masks come from the shipped
  FC-DenseNet103 (18 epochs, 100 minutes on two threads: a larger budget, stated in the table with each network's
  validation Jaccard). A pending run trains its segmentation network first (``runs/ablation/seg-ARCH``), then the
  classifier builds that network's frame cache (the cache key hashes the segmentation weights).

Budget (``BUDGET``): from scratch (no ImageNet here), Adam lr 3e-4, no L1, 12 epochs of 80 steps of 16 patches in
patch mode (960 steps) and 24 epochs of 40 steps of 16 images in global mode (960 steps), validation votes over 10
patches, test votes over K = 50. This is about half the shipped models' budget: the absolute numbers sit below
theirs, and one seed per setting means differences of a few points are noise — the tables carry bootstrap CIs and
an exact McNemar test of each run against its reference on the same films.

Usage:
    python -m training.ablations run [--only NAME ...] [--jobs 2] [--dry-run]
    python -m training.ablations collect [--out docs/results/ablations] [--figures docs/figures]

``run`` starts the pending runs (those without ``runs/ablation/NAME/test_metrics.json``), ``--jobs`` at a time,
each on one torch thread, logging to ``runs/ablation/logs/NAME.log``. ``collect`` reads the finished runs and
writes ``ablations.json``, ``tables.md`` and the plots.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_hub.evaluation.stats import markdown_table, mcnemar_exact
from cxr_hub.presets import repo_relative_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS = Path("runs/ablation")
#: Train images of the full label4 training split: each run's draws per epoch (equal steps for every fraction).
FULL_TRAIN_IMAGES = 633

#: Recipe shared by every ablation run (train_classifier CLI options).
BUDGET: tuple[str, ...] = (
    "--label-set",
    "label4",
    "--lr",
    "3e-4",
    "--l1",
    "0",
    "--val-patches",
    "10",
    "--num-patches",
    "50",
    "--early-stopping-patience",
    "100",
    "--num-threads",
    "1",
    "--seed",
    "0",
)
PATCH_EPOCHS, GLOBAL_EPOCHS = 12, 24
#: Recipe of the Table XIV segmentation networks (train_segmentation CLI options; the rest is the shipped recipe).
SEGMENTATION_BUDGET: tuple[str, ...] = ("--epochs", "8", "--max-minutes", "55", "--num-threads", "1", "--seed", "0")
#: The shipped segmentation network (the reference runs' masks).
SHIPPED_SEGMENTATION = repo_relative_folder("segmentation")


def segmentation_dir(arch: str) -> Path:
    """Folder of an ablation's segmentation network (its exported model is ``export/`` inside)."""
    return RUNS / f"seg-{arch}"


def segmentation_command(arch: str) -> list[str]:
    """The train_segmentation command of an ablation's segmentation network."""
    run_dir = segmentation_dir(arch)
    return [
        sys.executable,
        "-m",
        "training.train_segmentation",
        "--arch",
        arch,
        *SEGMENTATION_BUDGET,
        "--run-dir",
        str(run_dir),
        "--out",
        str(run_dir / "export"),
    ]


@dataclass(frozen=True)
class Ablation:
    """One training run of an ablation study.

    Attributes:
        name: run name (folder under ``runs/ablation``).
        study: "patch_size", "lung_mask" or "train_fraction".
        mode: "patch" or "global".
        patch_size: patch side cut from the 1024 frame.
        lung_mask: train on lung-masked frames.
        fraction: share of training patients.
        segmentation: architecture of the segmentation network whose masks the run uses ("fcdensenet103": the
            shipped model; others are trained by the run at ``SEGMENTATION_BUDGET``).
        extra: further train_classifier options.
    """

    name: str
    study: str
    mode: str = "patch"
    patch_size: int = 224
    lung_mask: bool = True
    fraction: float = 1.0
    segmentation: str = "fcdensenet103"
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def segmentation_model(self) -> str:
        """Folder of the segmentation model whose lung masks this run trains and tests on."""
        if self.segmentation == "fcdensenet103":
            return SHIPPED_SEGMENTATION
        return str(segmentation_dir(self.segmentation) / "export")

    def args(self) -> list[str]:
        """The train_classifier command-line options of this run."""
        out = [*BUDGET, "--mode", self.mode, "--patch-size", str(self.patch_size)]
        out += ["--epochs", str(PATCH_EPOCHS if self.mode == "patch" else GLOBAL_EPOCHS)]
        if self.mode == "patch":
            out += ["--patches-per-image", "2"]
        if not self.lung_mask:
            out.append("--no-lung-masked")
        if self.fraction < 1.0:
            out += ["--train-fraction", str(self.fraction), "--draws-per-epoch", str(FULL_TRAIN_IMAGES)]
        if self.segmentation != "fcdensenet103":
            out += ["--segmentation", self.segmentation_model]
        out += ["--run-dir", str(RUNS / self.name), "--out", str(RUNS / self.name / "export"), *self.extra]
        return out

    def commands(self) -> list[list[str]]:
        """What the run executes, in order: its segmentation network's training when that is missing, then the
        classifier's."""
        cmds = []
        seg = Path(self.segmentation_model)
        if self.segmentation != "fcdensenet103" and not (seg / "model.safetensors").is_file():
            cmds.append(segmentation_command(self.segmentation))
        return [*cmds, [sys.executable, "-m", "training.train_classifier", *self.args()]]


#: Every run; ``patch224`` and ``global100`` are the references the others are compared with.
ABLATIONS: tuple[Ablation, ...] = (
    Ablation("patch224", "patch_size"),
    Ablation("patch448", "patch_size", patch_size=448),
    Ablation("patch112", "patch_size", patch_size=112),
    Ablation("nomask", "lung_mask", lung_mask=False),
    Ablation("global100", "train_fraction", mode="global"),
    Ablation("patch10", "train_fraction", fraction=0.1),
    Ablation("global10", "train_fraction", mode="global", fraction=0.1),
    Ablation("patch30", "train_fraction", fraction=0.3),
    Ablation("global30", "train_fraction", mode="global", fraction=0.3),
    Ablation("patch50", "train_fraction", fraction=0.5),
    Ablation("global50", "train_fraction", mode="global", fraction=0.5),
    Ablation("seg_fcdn67", "segmentation", segmentation="fcdensenet67"),
    Ablation("seg_unet", "segmentation", segmentation="unet"),
)
BY_NAME = {a.name: a for a in ABLATIONS}


def reference_of(run: Ablation) -> str:
    """The run a run is compared with: the full-data, masked, 224-patch run of its mode."""
    return "global100" if run.mode == "global" else "patch224"


def is_done(run: Ablation) -> bool:
    """The run has its test evaluation."""
    return (RUNS / run.name / "test_metrics.json").is_file() and (RUNS / run.name / "training_config.json").is_file()


def launch(runs: Sequence[Ablation], jobs: int, dry_run: bool = False) -> int:
    """Runs ``runs`` with at most ``jobs`` at a time (one torch thread each); returns how many failed."""
    (RUNS / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pending = list(runs)
    active: list[tuple[Ablation, subprocess.Popen[bytes], Any]] = []
    failed = 0
    while pending or active:
        while pending and len(active) < jobs:
            run = pending.pop(0)
            # one job slot runs the run's commands one after the other (segmentation network, then classifier)
            cmd = " && ".join(shlex.join(c) for c in run.commands())
            print(("would run: " if dry_run else "starting: ") + cmd, flush=True)
            if dry_run:
                continue
            log = (RUNS / "logs" / f"{run.name}.log").open("wb")
            proc = subprocess.Popen(["/bin/sh", "-c", cmd], stdout=log, stderr=subprocess.STDOUT, env=env)
            active.append((run, proc, log))
        for item in list(active):
            run, proc, log = item
            if proc.poll() is not None:
                log.close()
                active.remove(item)
                status = "finished" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                failed += proc.returncode != 0
                print(f"{run.name}: {status}; log runs/ablation/logs/{run.name}.log", flush=True)
        if active:
            time.sleep(5)
    return failed


# --------------------------------------------------------------------------------------------------------------------
# Collect
# --------------------------------------------------------------------------------------------------------------------


def load_result(run: Ablation) -> dict[str, Any] | None:
    """The run's test metrics and training summary, or None when it has not finished."""
    if not is_done(run):
        return None
    final = json.loads((RUNS / run.name / "training_config.json").read_text())
    test = final["test"]
    summary = final["summary"]
    return {
        "name": run.name,
        "study": run.study,
        "mode": run.mode,
        "patch_size": run.patch_size,
        "lung_mask": run.lung_mask,
        "fraction": run.fraction,
        "train_images": sum(final["data"]["counts"]["train"].values()),
        "n": test["n"],
        "k": test["k"],
        "accuracy": test["accuracy"],
        "accuracy_ci95": test["ci95"]["accuracy"],
        "f1": test["f1"],
        "f1_ci95": test["ci95"]["f1"],
        "sensitivity": {c: m["sensitivity"] for c, m in test["per_class"].items() if m["n"]},
        "accuracy_by_source": {s: m["accuracy"] for s, m in test["accuracy_by_source"].items()},
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "steps": summary["epochs_run"] * summary["steps_per_epoch"],
        "minutes": summary["minutes"],
        "segmentation": run.segmentation,
        "segmentation_summary": segmentation_summary(run.segmentation_model),
        "predictions": test.get("predictions"),
        "truth": test.get("truth"),
    }


def segmentation_summary(folder: str | Path) -> dict[str, Any] | None:
    """Budget and validation Jaccard of a segmentation model from its ``training_config.json`` (None if absent)."""
    path = Path(folder) / "training_config.json"
    if not path.is_file():
        return None
    final = json.loads(path.read_text())
    config, summary = final.get("config", {}), final.get("summary", {})
    jaccard = summary.get("best_validation", {}).get("jaccard", {})
    return {
        "arch": config.get("arch"),
        "epochs_run": summary.get("epochs_run"),
        "best_epoch": summary.get("best_epoch"),
        "max_minutes": config.get("max_minutes"),
        "num_threads": config.get("num_threads"),
        "val_jaccard_lung": jaccard.get("lung", {}).get("mean"),
        "val_jaccard_heart": jaccard.get("heart", {}).get("mean"),
    }


def paired_test(result: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any] | None:
    """Exact McNemar test of a run against its reference on the test films both scored (None without predictions)."""
    pa, pb, truth = result.get("predictions"), reference.get("predictions"), result.get("truth")
    if not pa or not pb or not truth:
        return None
    ids = sorted(set(pa) & set(pb) & set(truth))
    return mcnemar_exact([pa[i] == truth[i] for i in ids], [pb[i] == truth[i] for i in ids])


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "—" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def paired_vs_reference(by_name: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """:func:`paired_test` of every finished run whose reference has finished too (references themselves left out)."""
    out = {}
    for name, result in by_name.items():
        ref = reference_of(BY_NAME[name])
        if ref != name and ref in by_name:
            out[name] = paired_test(result, by_name[ref])
    return out


def result_rows(
    results: Sequence[Mapping[str, Any]], comparisons: Mapping[str, dict[str, Any] | None]
) -> list[list[str]]:
    """Table rows: setting, accuracy [CI], macro F1 [CI], per-class sensitivity, accuracy per source, paired test
    (from :func:`paired_vs_reference`)."""
    rows = []
    for r in results:
        test = comparisons.get(r["name"])
        paired = (
            "reference"
            if reference_of(BY_NAME[r["name"]]) == r["name"]
            else "—"
            if test is None
            else f"{test['a_only']} vs {test['b_only']}, p = {test['p']:.2g}{test['stars']}"
        )
        sens = r["sensitivity"]
        rows.append(
            [
                setting_name(r),
                str(r["train_images"]),
                f"{_pct(r['accuracy'])} {_ci(r['accuracy_ci95'])}",
                f"{_pct(r['f1'])} {_ci(r['f1_ci95'])}",
                _pct(sens.get("normal")),
                _pct(sens.get("bacterial")),
                _pct(sens.get("viral_covid")),
                " / ".join(_pct(r["accuracy_by_source"].get(src)) for src in ("cohen", "jsrt", "nih")),
                f"{r['best_epoch']}/{r['epochs_run']}",
                paired,
            ]
        )
    return rows


HEADER = [
    "setting",
    "train films",
    "accuracy % [95% CI]",
    "macro F1 % [95% CI]",
    "sens. normal",
    "sens. bacterial",
    "sens. viral/COVID",
    "accuracy on Cohen / JSRT / NIH films",
    "best epoch",
    "paired vs reference (right only here vs only there)",
]


def setting_name(r: Mapping[str, Any]) -> str:
    """A run's setting in words."""
    if r["study"] == "patch_size":
        return f"patch {r['patch_size']}"
    if r["study"] == "lung_mask":
        return "patch 224, lung-masked" if r["lung_mask"] else "patch 224, no lung mask"
    if r["study"] == "segmentation":
        seg = r.get("segmentation_summary") or {}
        names = {"fcdensenet103": "FC-DenseNet103", "fcdensenet67": "FC-DenseNet67", "unet": "U-Net"}
        lung, heart = seg.get("val_jaccard_lung"), seg.get("val_jaccard_heart")
        scores = "" if lung is None else f", JSRT val. Jaccard lung {lung:.3f} / heart {heart:.3f}"
        return f"{names.get(r['segmentation'], r['segmentation'])} masks ({seg.get('epochs_run', '?')} epochs{scores})"
    return f"{r['mode']}, {round(100 * r['fraction'])} % of training patients"


def study_tables(
    by_name: Mapping[str, Mapping[str, Any]], comparisons: Mapping[str, dict[str, Any] | None]
) -> dict[str, str]:
    """Markdown tables per study (a reference run appears in each study it anchors)."""
    order = {
        "patch_size": ["patch112", "patch224", "patch448"],
        "lung_mask": ["patch224", "nomask"],
        "segmentation": ["patch224", "seg_fcdn67", "seg_unet"],
        "train_fraction": [
            "patch224",
            "patch50",
            "patch30",
            "patch10",
            "global100",
            "global50",
            "global30",
            "global10",
        ],
    }
    tables = {}
    for study, names in order.items():
        results = []
        for n in names:
            if n not in by_name:
                continue
            r = dict(by_name[n])
            if study != r["study"]:  # a reference shown in another study: name it in that study's terms
                r["study"] = study
            results.append(r)
        if results:
            tables[study] = markdown_table(HEADER, result_rows(results, comparisons))
    return tables


def plot_fractions(by_name: Mapping[str, Mapping[str, Any]], path: Path) -> bool:
    """Fig. 12-style plot: test accuracy and macro F1 against the share of training patients, patch vs global."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        "patch (K-patch vote)": ["patch10", "patch30", "patch50", "patch224"],
        "global (whole image)": ["global10", "global30", "global50", "global100"],
    }
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    drawn = False
    for label, names in series.items():
        got = [by_name[n] for n in names if n in by_name]
        if not got:
            continue
        drawn = True
        x = [100 * r["fraction"] for r in got]
        for ax, key in zip(axes, ("accuracy", "f1"), strict=True):
            y = [100 * r[key] for r in got]
            lo = [max(0.0, 100 * (r[key] - r[f"{key}_ci95"][0])) for r in got]
            hi = [max(0.0, 100 * (r[f"{key}_ci95"][1] - r[key])) for r in got]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=label)
    for ax, title in zip(axes, ("test accuracy (%)", "test macro F1 (%)"), strict=True):
        ax.set_xlabel("training patients used (%)")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([10, 30, 50, 100])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Training-set size (reduced budget, from scratch, label4 test split)", fontsize=10)
    fig.tight_layout()
    if drawn:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    plt.close(fig)
    return drawn


#: Bar plots of :func:`plot_settings`: key in ``ablations.json`` → (file name, title, run → bar label).
SETTING_PLOTS: dict[str, tuple[str, str, dict[str, str]]] = {
    "settings": (
        "ablation_patch_size_mask.png",
        "Patch size and lung mask (reduced budget, label4 test split)",
        {"patch112": "patch 112", "patch224": "patch 224\n(masked)", "patch448": "patch 448", "nomask": "no mask"},
    ),
    "segmentation": (
        "ablation_segmentation.png",
        "Segmentation network feeding the classifier (reduced budget)",
        {"patch224": "FC-DenseNet103\n(shipped)", "seg_fcdn67": "FC-DenseNet67", "seg_unet": "U-Net"},
    ),
}


def plot_settings(by_name: Mapping[str, Mapping[str, Any]], path: Path, title: str, labels: Mapping[str, str]) -> bool:
    """Bar plot of accuracy and macro F1 (with 95 % CIs) for the runs in ``labels`` (run name → bar label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in labels if n in by_name]
    if not names:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    width = 0.38
    for j, key in enumerate(("accuracy", "f1")):
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        y = [100 * by_name[n][key] for n in names]
        lo = [max(0.0, 100 * (by_name[n][key] - by_name[n][f"{key}_ci95"][0])) for n in names]
        hi = [max(0.0, 100 * (by_name[n][f"{key}_ci95"][1] - by_name[n][key])) for n in names]
        ax.bar(xs, y, width, yerr=[lo, hi], capsize=3, label="accuracy" if key == "accuracy" else "macro F1")
    ax.set_xticks(range(len(names)), [labels[n] for n in names])
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def collect(out: Path, figures: Path) -> dict[str, Any]:
    """Reads the finished runs, writes ``ablations.json`` and ``tables.md`` to ``out`` and the plots to ``figures``."""
    results = [r for r in (load_result(a) for a in ABLATIONS) if r is not None]
    by_name = {r["name"]: r for r in results}
    missing = [a.name for a in ABLATIONS if a.name not in by_name]
    out.mkdir(parents=True, exist_ok=True)
    comparisons = paired_vs_reference(by_name)
    tables = study_tables(by_name, comparisons)
    titles = {
        "patch_size": "Patch size (Table XVII)",
        "lung_mask": "With vs without the lung mask (Table XVI)",
        "train_fraction": "Training-set size, patch vs global (Fig. 12)",
        "segmentation": "Segmentation network feeding the classifier (Table XIV)",
    }
    lines = [
        "<!-- written by `python -m training.ablations collect`; edit the script, not this file -->",
        "",
        "Budget for every run: trained from scratch, Adam lr 3e-4, 960 optimiser steps (patch: 12 epochs × 80 steps of "
        "16 patches; global: 24 epochs × 40 steps of 16 images), best epoch by validation macro F1, one seed. Test: "
        "the label4 test split scored from the training inputs, K = 50 patches per film. CIs: percentile bootstrap "
        "over patients. Paired test: exact McNemar against the reference run (patch 224 masked on all patients, or "
        "global on all patients) on the same films. Table XIV: U-Net and FC-DenseNet67 trained on JSRT/SCR with the "
        "shipped recipe for at most 8 epochs and 55 minutes on one thread each (the reference's FC-DenseNet103 is the "
        "shipped model: 18 epochs, 100 minutes on two threads), each network's masks used to build its own training "
        "frames and to score its own test films.",
        "",
    ]
    for study, table in tables.items():
        lines += [f"### {titles[study]}", "", table, ""]
    if missing:
        lines += [f"Not finished: {', '.join(missing)}.", ""]
    (out / "tables.md").write_text("\n".join(lines))
    plots = {
        "train_fraction": plot_fractions(by_name, figures / "ablation_training_size.png"),
        **{
            key: plot_settings(by_name, figures / filename, title, labels)
            for key, (filename, title, labels) in SETTING_PLOTS.items()
        },
    }
    slim = [{k: v for k, v in r.items() if k not in ("predictions", "truth")} for r in results]
    report = {"budget": list(BUDGET), "results": slim, "paired_vs_reference": comparisons, "missing": missing}
    report["plots"] = plots
    (out / "ablations.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI: ``run`` or ``collect``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="train the pending ablation runs")
    run_p.add_argument("--only", nargs="+", choices=sorted(BY_NAME), help="only these runs")
    run_p.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    run_p.add_argument("--dry-run", action="store_true", help="print the commands only")
    col_p = sub.add_parser("collect", help="tabulate and plot the finished runs")
    col_p.add_argument("--out", type=Path, default=Path("docs/results/ablations"))
    col_p.add_argument("--figures", type=Path, default=Path("docs/figures"))
    args = parser.parse_args(argv)
    if args.command == "run":
        if args.jobs < 1:
            parser.error("--jobs must be at least 1")
        runs = [BY_NAME[n] for n in args.only] if args.only else list(ABLATIONS)
        pending = [r for r in runs if not is_done(r)]
        if not pending:
            print("every requested run has finished; `python -m training.ablations collect` tabulates them")
            return 0
        return 1 if launch(pending, args.jobs, args.dry_run) else 0
    report = collect(args.out, args.figures)
    print(f"{len(report['results'])} run(s) tabulated in {args.out}; missing: {', '.join(report['missing']) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
