"""Every step that re-measures a committed number after a model change, in the order they must run, and a runner.

The project's rule: when weights change, every number that describes them (model cards, RESULTS.md, the app's
reference values, benchmarks, calibrations) is re-measured in the same change. :func:`steps` is the one table of what
produces each committed measurement: the command (run from the repository root with this interpreter; every model
folder comes from :data:`cxr_hub.presets.SHIPPED`), the committed files it writes and reads, which model changes make
it stale, and roughly how long it took on the project's 2-core CPU. The table's order is the order the steps must run
in (a test checks that every file a step reads is written, if at all, by an earlier step); the comments say why.

A step is selected when one of the models it depends on changed (``--changed``), or when an earlier selected step
re-writes a file it reads (the closure: a re-run evaluation re-runs the shortcut reports and the cards that read it).
Steps that train (the ablations: hours) run only with ``--include-training`` or when named with ``--only``.

Usage::

    python -m training.remeasure --changed segmentation --dry-run          # the plan: commands, files, minutes
    python -m training.remeasure --changed label4_patch --changed label4_global
    python -m training.remeasure --changed all --from evaluate_label4     # continue after a failed step
    python -m training.remeasure --only biomarkers results_tables          # just these (table order)
    python -m training.remeasure --changed all --include-training --log-dir runs/remeasure

Each step's stdout and stderr go to ``LOG_DIR/NAME.log``; the runner stops at the first step that fails (or whose
agreement check ran but did not pass: the pipeline's reduced-precision defaults rest on those) and says how to
continue. It does not edit prose: the plan lists the documents that quote these numbers by hand, the precision gates
in ``cxr_hub/runtime/`` and the measurements this table cannot repeat (:func:`not_remeasured`).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cxr_hub.presets import SHIPPED, repo_relative_folder

__all__ = [
    "DEPENDENCIES",
    "SelectionError",
    "Step",
    "StepError",
    "format_plan",
    "main",
    "not_remeasured",
    "run_steps",
    "select",
    "steps",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: one folder per training experiment that was measured but not shipped (README.md and its JSON)
EXPERIMENTS = "docs/results/experiments"
#: What a step can depend on → the :data:`cxr_hub.presets.SHIPPED` key of that model.
DEPENDENCIES: dict[str, str] = {
    "segmentation": "segmentation",  # the pipeline's default segmentation: every mask
    "label4_patch": "label4/patch",
    "label4_global": "label4/global",
    "label3_patch": "label3/patch",
}
ALL = "all"
DEFAULT_LOG_DIR = "runs/remeasure"

# The data and split every committed measurement was made on, spelled as the recorded runs spell them (metrics.json
# and stats.json record "../shared/data/cxr/manifest.csv": commands run from the repository root).
MANIFEST = "../shared/data/cxr/manifest.csv"
SPLIT_FILE = "training/splits/splits_seed0.json"
TEST_SPLIT = "classification:test"
VALIDITY = "cxr_hub/data/validity.json"
BIOMARKER_REFERENCE = "cxr_hub/data/biomarker_reference.json"
LABEL4_TEST = "docs/results/label4_test"
LABEL3_TEST = "docs/results/label3_test"


@dataclass(frozen=True)
class Step:
    """One command that re-measures committed files.

    Attributes:
        name: identifier (``--only``, ``--from``, the log file's name).
        depends_on: the models (keys of :data:`DEPENDENCIES`) whose change makes this step's files stale.
        args: the command after the interpreter: ``("-m", "module", ...)`` or ``("path/to/script.py", ...)``, run
            from the repository root.
        outputs: committed files the step (re)writes, relative to the repository root.
        minutes: rough wall-clock minutes on the project's 2-core CPU (where the docs say what it took; else
            estimated, and the table's comment says from what).
        inputs: committed files the step reads that other steps write (they order the table and drive the closure).
        trains: the step trains networks (hours): selected only when asked for explicitly.
        nice: niceness the step ran at when its committed numbers were measured (the file records it).
        quoted_in: documents that quote the step's numbers by hand (outside generated sections): to update after it.
        note: what to know before running it.
        verify: called with the repository root after the step exited 0; returns why its result must stop the run
            (an agreement check that ran but did not pass), or None.
    """

    name: str
    depends_on: frozenset[str]
    args: tuple[str, ...]
    outputs: tuple[str, ...]
    minutes: float
    inputs: tuple[str, ...] = ()
    trains: bool = False
    nice: int = 0
    quoted_in: tuple[str, ...] = ()
    note: str = ""
    verify: Callable[[Path], str | None] | None = field(default=None, compare=False, repr=False)

    def argv(self, python: str = sys.executable) -> list[str]:
        """The command line with ``python`` as the interpreter (the niceness is applied by the runner)."""
        return [python, *self.args]

    def command(self, python: str = "python") -> str:
        """The command as one would type it in a shell at the repository root."""
        prefix = f"nice -n {self.nice} " if self.nice else ""
        return prefix + shlex.join(self.argv(python))


class SelectionError(ValueError):
    """The options name an unknown model or step, or steps the ``--changed`` selection does not hold."""


class StepError(RuntimeError):
    """A step failed: its exit code was not 0, its :attr:`Step.verify` found a problem, or Ctrl-C stopped it.

    Attributes:
        step: the step.
        log: its log file.
        reason: what went wrong, in words.
        continue_from: the step to continue with once the cause is fixed (None: nothing is left to run).
        interrupted: Ctrl-C stopped it.
    """

    def __init__(
        self, step: Step, log: Path, reason: str, continue_from: str | None, *, interrupted: bool = False
    ) -> None:
        super().__init__(f"step {step.name!r} failed: {reason}")
        self.step = step
        self.log = log
        self.reason = reason
        self.continue_from = continue_from
        self.interrupted = interrupted


def _deps(*names: str) -> frozenset[str]:
    unknown = set(names) - set(DEPENDENCIES)
    if unknown:  # a typo in the table must not silently drop a step from every selection
        raise ValueError(f"unknown dependencies {sorted(unknown)}; known: {list(DEPENDENCIES)}")
    return frozenset(names)


def _model(dependency: str) -> str:
    """``models/<folder>`` of a dependency's shipped model (repo-relative: the steps run from the repository root)."""
    return repo_relative_folder(DEPENDENCIES[dependency])


def _segmentation_models() -> list[str]:
    """Every shipped segmentation folder, the pipeline's default first, each once (two keys may name one folder)."""
    keys = ["segmentation", *(k for k, m in SHIPPED.items() if m.role == "segmentation" and k != "segmentation")]
    return list(dict.fromkeys(repo_relative_folder(k) for k in keys))


def _folder_name(model_path: str) -> str:
    return Path(model_path).name


def _passes(path: str, gate: str) -> Callable[[Path], str | None]:
    """A :attr:`Step.verify` that reads an agreement JSON of ``benchmarks/precision_agreement.py``.

    The script exits 0 whatever its verdict; the verdict is ``summary.passes`` (and ``summary.global_passes`` when a
    global classifier was compared). A failed verdict stops the run: the steps after it (evaluations, cards,
    benchmarks) measure the pipeline's "auto" arithmetic, which ``gate`` allows only because this check passed.
    """

    def verify(root: Path) -> str | None:
        summary = json.loads((root / path).read_text(encoding="utf-8"))["summary"]
        failed = [key for key in ("passes", "global_passes") if summary.get(key) is False]
        if not failed:
            return None
        return (
            f"{path} says {', '.join(f'{key} = false' for key in failed)} (rule: {summary.get('rule')}). The "
            f"pipeline's default arithmetic rests on this check ({gate}): turn that default off, or fix the cause, "
            "before the evaluations measure it"
        )

    return verify


def _argv(command: str) -> tuple[str, ...]:
    """A step's arguments from one shell-like line (paths interpolated with :func:`shlex.quote`)."""
    return tuple(shlex.split(command))


def steps() -> tuple[Step, ...]:
    """The table, in the order the steps must run, with the model folders :data:`~cxr_hub.presets.SHIPPED` names now.

    Returns:
        Every step (training steps included; :func:`select` decides which run).
    """
    q = shlex.quote
    seg = _model("segmentation")
    seg_models = _segmentation_models()
    p4, g4, p3 = _model("label4_patch"), _model("label4_global"), _model("label3_patch")
    p4_config = f"{p4}/config.json"  # carries the int8 calibration that "auto" runs the patch classifier with
    table: list[Step] = []

    # ---- 1. Calibrations: files that every later step reads through the pipeline. -------------------------------
    # The input check runs inside CXRPipeline.prepare for evaluate, biomarkers, the int8 calibration, the agreement
    # checks and the benchmarks; without a calibration for the new segmentation model it checks the image only, so
    # other films would be refused or let through. Hence first.
    table.append(
        Step(
            "calibrate_validity",
            _deps("segmentation"),
            _argv(f"-m training.calibrate_validity --segmentation {q(seg)}"),
            (VALIDITY,),
            # no doc states its time: ~2,770 corpus images (docs/results/validity_targets.json, rates.all) each
            # segmented once, ~0.75 s in bf16 (benchmarks/README.md: 1,485 ms fp32 per film, bf16 about 2x faster);
            # a re-fit on a warm measurement cache takes seconds (the script's docstring)
            minutes=35,
            quoted_in=("README.md",),  # Input check: the cross-validation refusal rates
        )
    )
    # The patch classifier's int8 calibration is drawn from patches of the segmentation's masks, and "auto" runs the
    # classifier in int8 from it: after validity (calibration films go through the check), before everything that
    # classifies patches. Only the label4 patch model ships one (RESULTS.md, Precision; the global model failed its
    # int8 check and the label3 model was never checked: see not_remeasured()).
    table.append(
        Step(
            "calibrate_int8_label4_patch",
            _deps("segmentation", "label4_patch"),
            _argv(f"-m training.calibrate_int8 --classifier {q(p4)} --segmentation {q(seg)}"),
            (p4_config,),
            # no doc states its time: 24 training films through fp32 segmentation (1,363 ms median, RESULTS.md,
            # Precision) and 32 patches each, then quantisation (1-3 s, benchmarks/README.md)
            minutes=3,
            inputs=(VALIDITY,),
            quoted_in=("benchmarks/README.md",),
            note="The calibration opts the classifier into int8 under precision 'auto'; the int8 checks below decide "
            "whether it may keep it.",
        )
    )

    # ---- 2. Segmentation alone: no classifier involved. ----------------------------------------------------------
    runs = (
        "jsrt_val_with_preprocessing",
        "jsrt_val_without_preprocessing",
        "cohen_test_with_preprocessing",
        "cohen_test_without_preprocessing",
        "undersegmentation_label4",
    )
    table.append(
        Step(
            "segmentation_report",
            _deps("segmentation"),
            _argv("-m training.segmentation_report " + " ".join(f"--model {q(m)}" for m in seg_models)),
            (
                "docs/segmentation/table_v.json",
                "docs/segmentation/table_v.md",
                *(
                    f"docs/segmentation/{_folder_name(m)}/{run}/{f}"
                    for m in seg_models
                    for run in runs
                    for f in ("metrics.json", "per_image.csv")
                ),
                *(f"docs/segmentation/{_folder_name(m)}/ctr_bland_altman.png" for m in seg_models),
                *(f"{m}/README.md" for m in seg_models),  # it re-renders each segmentation model's card
            ),
            # no doc states its time: per model 50 + 50 JSRT and 84 + 84 Cohen films plus 172 under-segmentation
            # films, at 1,485 / 785 ms per film (FC-DenseNet103 / U-Net, benchmarks/README.md, segmentation_speed)
            minutes=20,
            quoted_in=("RESULTS.md",),  # the segmentation targets paragraph below Table V
            note="Models reported by an earlier run stay in table_v.json: remove one that left SHIPPED by hand.",
        )
    )
    # One report per shipped segmentation model. The script names the default's file validity_targets.json and the
    # others' validity_targets_<folder>.json, so switching the default renames both: both are re-measured.
    for i, m in enumerate(seg_models):
        name = "validity_targets" if i == 0 else f"validity_targets_{_folder_name(m)}"
        out = f"docs/results/{name}.json"
        table.append(
            Step(
                name,
                _deps("segmentation"),
                _argv(f"benchmarks/validity_targets.py --segmentation {q(m)} --json {q(out)}"),
                (out,),
                # no doc states its time: decisions come from calibrate_validity's measurement cache; 150 films are
                # re-run end to end (--end-to-end 150) at about 1-2 s each
                minutes=5,
                inputs=(VALIDITY,),
                quoted_in=("README.md",),  # Input check: the targets table
                note=""
                if i == 0
                else "Reads data_cache/validity/<fingerprint> of this model; where that cache is missing the whole "
                "corpus is measured first (about as long as calibrate_validity).",
            )
        )
    table.append(
        Step(
            "segmentation_speed",
            _deps("segmentation"),  # speeds are reported as ratios to the pipeline's default
            _argv(
                "benchmarks/segmentation_speed.py --rounds 5 --threads 2 --json docs/results/bench_segmentation.json"
            ),
            ("docs/results/bench_segmentation.json",),
            # benchmarks/README.md (segmentation_speed.py): 1,485 + 785 ms per film, 4 films, 5 rounds + a warm-up
            minutes=2,
            quoted_in=("benchmarks/README.md", "RESULTS.md"),
            note="A timing: run it on an otherwise idle machine.",
        )
    )
    # The app's reference values come from the same run as RESULTS.md's biomarker tables (--reference-json).
    biomarker_dir = "docs/figures/biomarkers_label4"
    table.append(
        Step(
            "biomarkers",
            _deps("segmentation"),
            _argv(
                f"-m cxr_hub biomarkers --manifest {q(MANIFEST)} --task label4 --segmentation {q(seg)} "
                f"--out {biomarker_dir} --reference-json {BIOMARKER_REFERENCE}"
            ),
            (
                *(
                    f"{biomarker_dir}/{f}"
                    for f in (
                        "biomarkers.csv",
                        "stats.json",
                        "tables.md",
                        "run_config.json",
                        "scatter_intensity.png",
                        "mean_sd_by_class.png",
                    )
                ),
                BIOMARKER_REFERENCE,
            ),
            minutes=45,  # RESULTS.md, Biomarkers: "907 labelled films; 45 min on the 2-core CPU"
            inputs=(VALIDITY,),
            quoted_in=("RESULTS.md",),  # "Do our data agree with the paper?"
        )
    )

    # ---- 3. Agreement checks of the reduced-precision defaults. --------------------------------------------------
    # Before the evaluations: those (and the cards, benchmarks and RESULTS.md) measure precision "auto", i.e. the
    # arithmetic these checks validate; a check that fails stops the run (verify) so its gate can change first.
    # Minutes: the "seconds" each committed JSON records.
    int8_gate = "cxr_hub.runtime.int8.INT8_VALIDATED and the calibration in the classifier's config"
    checks = (
        # name, also depends on, options, minutes, JSON, the default it validates
        # bf16 classifiers with folded batch norms, same patches and masks, patch and global model (970 s)
        (
            "precision_bf16_label4",
            ("label4_patch", "label4_global"),
            f"--global-classifier {q(g4)} --limit 100",
            16,
            "docs/results/precision_agreement_label4.json",
            "the bf16 path of precision 'auto' (cxr_hub.runtime.numerics)",
        ),
        # all fp32 against bf16 segmentation + bf16 classifier, end to end (906 s)
        (
            "segmentation_bf16_label4",
            ("label4_patch",),
            "--segmentation-bf16 --limit 100",
            15,
            "docs/results/segmentation_bf16_agreement_label4.json",
            "cxr_hub.runtime.numerics.SEGMENTATION_BF16_VALIDATED",
        ),
        # int8 patch vote, same patches, first 100 test films (1,247 s with the global model of the time; the global
        # model ships without a calibration now, so it is not compared here: see not_remeasured())
        (
            "int8_label4",
            ("label4_patch",),
            "--fast int8 --limit 100",
            21,
            "docs/results/int8_agreement_label4.json",
            int8_gate,
        ),
        # the other 72 test films (730 s)
        (
            "int8_label4_rest72",
            ("label4_patch",),
            "--fast int8 --skip 100 --limit 0",
            12,
            "docs/results/int8_agreement_label4_rest72.json",
            int8_gate,
        ),
        # all fp32 against bf16 segmentation + int8 classifier, end to end (1,180 s)
        (
            "int8_end_to_end_label4",
            ("label4_patch",),
            "--fast int8 --segmentation-bf16 --limit 100",
            20,
            "docs/results/int8_end_to_end_label4.json",
            "cxr_hub.runtime.numerics.INT8_WITH_BF16_SEGMENTATION_VALIDATED",
        ),
    )
    for name, deps, options, minutes, out, gate in checks:
        int8 = "--fast int8" in options
        table.append(
            Step(
                name,
                _deps("segmentation", *deps),
                _argv(
                    f"benchmarks/precision_agreement.py --classifier {q(p4)} --segmentation {q(seg)} {options} "
                    f"--json {out}"
                ),
                (out,),
                minutes=minutes,
                inputs=(VALIDITY, *((p4_config,) if int8 else ())),
                quoted_in=(
                    "RESULTS.md",
                    "benchmarks/README.md",
                    *((f"{p4}/README.md", "cxr_hub/runtime/int8.py") if int8 else ()),
                    "cxr_hub/runtime/numerics.py",
                ),
                verify=_passes(out, gate),
            )
        )

    # ---- 4. Evaluations on the test split, and what reads their predictions. -------------------------------------
    # No doc states the evaluations' time. label4: 172 films, fp32 segmentation (a global model is loaded) + int8
    # patches + the global model, ~1.2 s per film on an idle machine (benchmarks/README.md, K = 100 with fp32
    # segmentation) and up to 3 s under load; label3: 242 films in bf16, ~1.3 s each.
    split = f"--split-file {SPLIT_FILE} --split {TEST_SPLIT}"
    table.append(
        Step(
            "evaluate_label4",
            _deps("segmentation", "label4_patch", "label4_global"),
            _argv(
                f"-m cxr_hub evaluate --manifest {q(MANIFEST)} --task label4 --segmentation {q(seg)} --classifier "
                f"{q(p4)} --global-classifier {q(g4)} {split} --out {LABEL4_TEST}"
            ),
            tuple(f"{LABEL4_TEST}/{f}" for f in ("metrics.json", "predictions.csv", "confusion_matrix.png")),
            minutes=10,
            inputs=(VALIDITY, p4_config),
            quoted_in=("RESULTS.md",),  # "Against the targets", "How much of this is the draw"
        )
    )
    table.append(
        Step(
            "evaluate_label3",
            _deps("segmentation", "label3_patch"),
            _argv(
                f"-m cxr_hub evaluate --manifest {q(MANIFEST)} --task label3 --segmentation {q(seg)} --classifier "
                f"{q(p3)} {split} --out {LABEL3_TEST}"
            ),
            tuple(f"{LABEL3_TEST}/{f}" for f in ("metrics.json", "predictions.csv", "confusion_matrix.png")),
            minutes=8,
            inputs=(VALIDITY,),
            quoted_in=("RESULTS.md",),
        )
    )
    # The shortcut reports read the evaluations' predictions.csv, so they come after them. No doc states their time:
    # the source probe runs 412 normal films through fp32 segmentation (~1.4 s) and, for a patch model, 32 fp32
    # patches (~0.7 s, benchmarks/README.md int8 probe: 2,265 ms per 100).
    shortcuts = (
        ("shortcuts_label4_patch", "label4_patch", p4, LABEL4_TEST, "", 15),
        # the global model's column of the same CSV (its committed report has the global accuracies, no saliency)
        ("shortcuts_label4_global", "label4_global", g4, LABEL4_TEST, "--prediction-column global_prediction ", 10),
        ("shortcuts_label3_patch", "label3_patch", p3, LABEL3_TEST, "", 15),
    )
    for name, dep, classifier, test_dir, extra, minutes in shortcuts:
        out = f"docs/results/shortcuts_{_folder_name(classifier)}.json"  # results_tables names the row by the file
        table.append(
            Step(
                name,
                _deps("segmentation", dep),
                _argv(
                    f"-m training.shortcut_report --classifier {q(classifier)} --segmentation {q(seg)} "
                    f"--predictions {test_dir}/predictions.csv {extra}--out {q(out)}"
                ),
                (out,),
                minutes=minutes,
                inputs=(f"{test_dir}/predictions.csv",),
                quoted_in=("RESULTS.md",),  # "What it says"
            )
        )
    patch_dir = "docs/figures/patch_analysis_label4"
    table.append(
        Step(
            "patch_analysis",
            _deps("segmentation", "label4_patch"),  # reads the training cache of the default segmentation's masks
            _argv(f"-m training.patch_analysis --classifier {q(p4)} --task label4 --amp auto --out {patch_dir}"),
            tuple(
                f"{patch_dir}/{f}"
                for f in ("patch_analysis.json", "patch_analysis.md", "k_ablation.png", "patch_intensity.png")
            ),
            minutes=7,  # RESULTS.md, K ablation: "(7 min)"; patch_analysis.json: 420 s
            quoted_in=("RESULTS.md",),  # the K ablation and Fig. 5 tables are typed there
            note="Frames come from the training cache (data_cache/classifier), built on first use with the default "
            "segmentation: about 20 min more where no training run has built it for these masks.",
        )
    )

    # ---- 5. Timings: after the correctness numbers, each on an otherwise idle machine. ---------------------------
    timing = "A timing: run it on an otherwise idle machine (benchmarks/README.md)."
    table.append(
        Step(
            "bench_pipeline",
            _deps("segmentation", "label4_patch"),
            _argv(
                f"benchmarks/bench_pipeline.py --segmentation {q(seg)} --classifier {q(p4)} --repeats 3 "
                "--json docs/results/bench_pipeline.json"
            ),
            ("docs/results/bench_pipeline.json",),
            # benchmarks/README.md: "about 4-5 minutes on 2 busy cores" at --repeats 1; 3 repeats of the pipeline
            minutes=10,
            inputs=(VALIDITY, p4_config),
            quoted_in=("benchmarks/README.md", "README.md"),
            note=timing,
        )
    )
    # The app loads the label4 choice: segmentation, patch and global model (docs/app.md).
    app_models = _deps("segmentation", "label4_patch", "label4_global")
    table.append(
        Step(
            "bench_app",
            app_models,
            _argv("benchmarks/bench_app.py --repeats 3 --json docs/results/bench_app.json"),
            ("docs/results/bench_app.json",),
            # docs/app.md: models load in 3.1 s, a first analysis 2.39 s, a slider change 0.76 s; 3 of each + warm-up
            minutes=2,
            inputs=(VALIDITY, p4_config),
            quoted_in=("docs/app.md", "benchmarks/README.md", "README.md"),
            note=timing,
        )
    )
    table.append(
        Step(
            "load_test",
            app_models,
            _argv("benchmarks/load_test.py --seconds 60 --users 16 --json docs/results/load_test.json"),
            ("docs/results/load_test.json",),
            minutes=3,  # benchmarks/README.md, load_test.py: "60 s + drain (86.8 s)", plus the app's start
            inputs=(VALIDITY, p4_config),
            quoted_in=("benchmarks/README.md", "README.md"),
            note="Exits 1 on any unexpected outcome (a server exception, a valid film refused, an upload left).",
        )
    )
    table.append(
        Step(
            "ray_throughput",
            _deps("segmentation", "label4_patch"),  # predict's default models
            _argv("benchmarks/ray_throughput.py --films 40 --rounds 2 --json docs/results/ray_throughput.json"),
            ("docs/results/ray_throughput.json",),
            minutes=15,  # benchmarks/README.md, ray_throughput.py: "40 films, 2 rounds: about 15 minutes here"
            inputs=(VALIDITY, p4_config),
            nice=10,  # ray_throughput.json records "nice": 10
            quoted_in=("benchmarks/README.md", "README.md"),
            note=timing,
        )
    )
    # The screenshot shows the biomarker panel with the app's reference values: after the biomarkers step.
    table.append(
        Step(
            "app_screenshot",
            app_models,
            _argv("tests/test_app_browser.py --out docs/figures/app_screenshot.png --k 60"),
            ("docs/figures/app_screenshot.png",),
            minutes=2,  # no doc states its time: one app start, one analysis and one slider move in a browser
            inputs=(VALIDITY, p4_config, BIOMARKER_REFERENCE),
            quoted_in=("docs/app.md",),  # the caption describes what it shows
            note="Needs Debian's Chromium and the playwright package (exit 2 without Chromium).",
        )
    )

    # ---- 6. Training ablations: hours, only when asked for. ------------------------------------------------------
    table.append(
        Step(
            "ablations_run",
            _deps("segmentation"),  # every run trains on the default segmentation's masks (its reference rows)
            _argv("-m training.ablations run --jobs 2"),
            (),  # runs/ablation/ (git-ignored); ablations_collect writes the committed tables
            # 427 classifier-minutes (the "minutes" of docs/results/ablations/ablations.json) + 2 x 55 minutes of
            # segmentation training (RESULTS.md, Table XIV), one thread each; --jobs 2 halves the wall time
            minutes=540,
            trains=True,
            note="Starts only the runs without runs/ablation/NAME/test_metrics.json: move runs/ablation aside first. "
            "training/ablations.py labels its reference masks FC-DenseNet103 whatever SHIPPED['segmentation'] is.",
        )
    )
    # collect only tabulates, but what it tabulates is ablations_run's: without a fresh run it would re-tabulate stale
    # runs (or none at all, writing empty tables over the committed ones), so it is a training step too.
    table.append(
        Step(
            "ablations_collect",
            _deps("segmentation"),
            _argv("-m training.ablations collect --out docs/results/ablations --figures docs/figures"),
            (
                "docs/results/ablations/ablations.json",
                "docs/results/ablations/tables.md",
                "docs/figures/ablation_training_size.png",
                "docs/figures/ablation_patch_size_mask.png",
                "docs/figures/ablation_segmentation.png",
            ),
            minutes=1,  # no doc states it: it reads the finished runs and draws three plots
            trains=True,
            quoted_in=("RESULTS.md",),  # the ablation tables and their discussion are typed there
        )
    )

    # ---- 7. Rendered documents, last: they read what every step above wrote. -------------------------------------
    metrics4, metrics3 = f"{LABEL4_TEST}/metrics.json", f"{LABEL3_TEST}/metrics.json"
    table.append(
        Step(
            "results_tables",
            _deps(*DEPENDENCIES),  # it also renders each model's training_config.json (README's shipped models)
            _argv("-m training.results_tables --write"),
            ("RESULTS.md", "README.md"),
            minutes=0.5,  # seconds: it renders text from JSON files
            inputs=(
                metrics4,
                metrics3,
                f"{biomarker_dir}/stats.json",
                "docs/results/ablations/ablations.json",
                "docs/segmentation/table_v.json",
                *(f"docs/results/shortcuts_{_folder_name(m)}.json" for m in (p4, g4, p3)),
            ),
        )
    )
    cards = (
        ("refresh_card_label4_patch", "label4_patch", p4, metrics4, "", (metrics4, p4_config)),
        ("refresh_card_label4_global", "label4_global", g4, metrics4, " --global", (metrics4,)),
        ("refresh_card_label3_patch", "label3_patch", p3, metrics3, "", (metrics3,)),
    )
    for name, dep, folder, metrics, extra, inputs in cards:
        table.append(
            Step(
                name,
                _deps(dep),
                _argv(f"-m training.refresh_card_metrics {q(folder)} {metrics}{extra}"),
                (f"{folder}/README.md",),
                minutes=0.2,  # seconds: it rewrites one card (and its paper comparison, from config.json)
                inputs=inputs,
            )
        )
    return tuple(table)


def not_remeasured() -> dict[str, str]:
    """Committed measurements this table does not repeat, and why (what to do instead, where something can be done).

    Returns:
        ``{repo-relative path: reason}``.
    """
    p4, g4 = _model("label4_patch"), _model("label4_global")
    int8_global = "docs/results/int8_global_agreement_label4_all172.json"
    return {
        int8_global: (
            "the global classifier's int8 check needs a calibration that the shipped model does not carry (it failed "
            "this check, so it runs bf16). To check a retrained global model: "
            f"`python -m training.calibrate_int8 --classifier {g4} --films 128`, then `python "
            f"benchmarks/precision_agreement.py --classifier {p4} --global-classifier {g4} --fast int8 --k 1 --limit 0 "
            f"--json {int8_global}`; keep the calibration only if global_passes is true (else `git checkout "
            f"{g4}/config.json`)"
        ),
        "docs/results/segmentation_bf16_agreement_label4_joint_sampler.json": (
            "history: the first bf16-segmentation check with the index-based sampler of the time, the record of why "
            "the stable sampler replaced it (RESULTS.md, Precision); segmentation_bf16_label4 is the check that gates "
            "today's default"
        ),
        "docs/results/dense_agreement_label4.json": (
            "history: dense voting was removed from the package (issue #17; its code is in git history up to cafe8fb)"
        ),
        "docs/results/int8_probe_label4.json": (
            "history: the one-off int8 probe that preceded cxr_hub.runtime.int8 (benchmarks/README.md); its script is "
            "gone, int8_label4 measures its successor"
        ),
        "cxr_hub/data/paper_tables.json": "the paper's numbers, transcribed from its tables: nothing of ours",
        # records of training experiments whose weights were not shipped: they describe those runs, not a shipped model
        **{
            path.relative_to(REPO_ROOT).as_posix(): (
                "an experiment's record (its weights are not shipped); re-run the experiment as its README says"
            )
            for path in sorted((REPO_ROOT / EXPERIMENTS).glob("*/*"))
            if path.is_file()
        },
    }


#: What no step can do, printed with every plan.
BY_HAND = (
    "the prose that quotes these numbers (each step's 'quoted in' documents, outside the generated sections)",
    "the precision gates in cxr_hub/runtime/ (int8.INT8_VALIDATED, numerics.*_VALIDATED) when an agreement check fails",
    "the model cards' hand-written paragraphs (the int8 checks in the label4 cards)",
)


# ----------------------------------------------------------------------------------------------------- selection


def select(
    table: Sequence[Step],
    changed: Iterable[str] = (),
    *,
    include_training: bool = False,
    only: Sequence[str] | None = None,
    start: str | None = None,
) -> list[Step]:
    """The steps to run, in table order.

    Args:
        table: every step, in order (:func:`steps`).
        changed: models that changed (keys of :data:`DEPENDENCIES`, or ``"all"``). A step is selected when it
            depends on one of them, or when it reads a file that an earlier selected step writes.
        include_training: also the steps that train (else they are left out, and so are the files they would write).
        only: exactly these steps (by name). With ``changed`` too, each must be in its selection; naming a training
            step asks for it explicitly.
        start: drop the steps before this one in the table (to continue after a failure).

    Returns:
        The selected steps, in table order.

    Raises:
        SelectionError: an unknown model or step name, nothing to select by, or ``only`` names a step that
            ``changed`` does not select.
    """
    names = [s.name for s in table]
    wanted = set(changed)
    unknown = wanted - {*DEPENDENCIES, ALL}
    if unknown:
        raise SelectionError(f"unknown --changed {sorted(unknown)}; choose from {[*DEPENDENCIES, ALL]}")
    if ALL in wanted:
        wanted = set(DEPENDENCIES)
    for name in [*(only or ()), *([start] if start else [])]:
        if name not in names:
            raise SelectionError(f"unknown step {name!r}; the steps: {', '.join(names)}")
    if not wanted and not only:
        raise SelectionError("say what changed (--changed ...) or which steps to run (--only ...)")
    if wanted:
        chosen: list[Step] = []
        rewritten: set[str] = set()
        for step in table:  # in table order, so a step sees every file the selected steps before it re-write
            if not (step.depends_on & wanted or rewritten.intersection(step.inputs)):
                continue
            if step.trains and not (include_training or (only and step.name in only)):
                continue
            chosen.append(step)
            rewritten.update(step.outputs)
        if only:
            missing = [n for n in only if n not in {s.name for s in chosen}]
            if missing:
                raise SelectionError(
                    f"--only {' '.join(missing)}: not selected by --changed {' '.join(sorted(wanted))}"
                )
            chosen = [s for s in chosen if s.name in only]
    else:
        chosen = [s for s in table if s.name in (only or ())]
    if start:
        first = names.index(start)
        chosen = [s for s in chosen if names.index(s.name) >= first]
    return chosen


# -------------------------------------------------------------------------------------------------------- output


def _minutes(value: float) -> str:
    return f"{value:.0f}" if value >= 1 else f"{value:.1f}"


def format_plan(chosen: Sequence[Step], left_out: Sequence[str] = (), python: str = sys.executable) -> str:
    """The plan as text: a table of the steps with their estimates, then each command and the files it writes.

    Args:
        chosen: the selected steps (:func:`select`).
        left_out: training steps the selection would hold with ``include_training`` (named, so nobody forgets them).
        python: the interpreter the commands run with.
    """

    def wrapped(text: str, first: str = "     ", rest: str = "       ") -> list[str]:
        # paths break at ", " only: a path cut at its hyphens cannot be copied
        return textwrap.wrap(
            text, 120, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False, break_long_words=False
        )

    def depends(step: Step) -> str:
        if step.depends_on == frozenset(DEPENDENCIES):
            return ALL
        return ", ".join(d for d in DEPENDENCIES if d in step.depends_on)

    deps = {s.name: depends(s) for s in chosen}
    total = sum(s.minutes for s in chosen)
    name_width = max([len(s.name) for s in chosen] + [4])
    deps_width = max([len(d) for d in deps.values()] + [10])
    lines = [
        f"{len(chosen)} step(s), about {_minutes(total)} min ({total / 60:.1f} h) on the project's 2-core CPU; run "
        f"from {REPO_ROOT} with {python}.",
        "",
        f"  #  {'step':<{name_width}}  {'depends on':<{deps_width}}  {'min':>5}",
    ]
    for i, s in enumerate(chosen, 1):
        lines.append(f"{i:3d}  {s.name:<{name_width}}  {deps[s.name]:<{deps_width}}  {_minutes(s.minutes):>5}")
    lines += [f"     {'total':<{name_width}}  {'':<{deps_width}}  {_minutes(total):>5}", ""]
    for i, s in enumerate(chosen, 1):
        lines.append(f"{i:3d}  {s.name}{'  (trains)' if s.trains else ''}")
        lines.append(f"     {s.command()}")
        lines += wrapped("writes: " + (", ".join(s.outputs) if s.outputs else "nothing committed"))
        if s.quoted_in:
            lines += wrapped("quoted by hand in: " + ", ".join(s.quoted_in))
        if s.note:
            lines += wrapped("note: " + s.note)
    if left_out:
        lines += ["", f"Left out (they train): {', '.join(left_out)}; add --include-training to run them."]
    quoted = sorted({d for s in chosen for d in s.quoted_in})
    lines += ["", "Not done by any step; by hand after the run:"]
    lines += [f"  - {item}" for item in BY_HAND]
    if quoted:
        lines += wrapped(f"documents to re-read: {', '.join(quoted)}", "  - ", "    ")
    lines += ["", "Committed measurements this table does not repeat:"]
    for path, why in not_remeasured().items():
        lines += wrapped(f"{path}: {why}", "  - ", "    ")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- runner


def _step_environment() -> dict[str, str]:
    """The environment of every step: this one without the ``CXR_HUB_*`` variables.

    Those point the app and the CLI at other models or another precision; the committed numbers describe the shipped
    models at their defaults, which is what every step must measure.
    """
    dropped = sorted(k for k in os.environ if k.startswith("CXR_HUB_"))
    if dropped:
        logger.warning("not passed to the steps (they measure the shipped models' defaults): %s", ", ".join(dropped))
    return {k: v for k, v in os.environ.items() if not k.startswith("CXR_HUB_")}


def run_steps(chosen: Sequence[Step], log_dir: Path, *, python: str = sys.executable, root: Path = REPO_ROOT) -> float:
    """Runs the steps in order, each with its stdout and stderr in ``log_dir/NAME.log``.

    Args:
        chosen: the steps, in order.
        log_dir: folder of the log files (created).
        python: the interpreter.
        root: the working directory of every step (the repository root).

    Returns:
        The minutes it took.

    Raises:
        StepError: a step exited with another code than 0, its check did not pass, or Ctrl-C stopped it; the steps
            after it did not run.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    env = _step_environment()
    # the code of the tree being measured, also for scripts (benchmarks/x.py), whose sys.path[0] is their folder and
    # would otherwise import cxr_hub from wherever the package is installed (another checkout, say: training.stage)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    begin = time.monotonic()
    for i, step in enumerate(chosen, 1):
        log = log_dir / f"{step.name}.log"
        argv = step.argv(python)
        print(f"[{i}/{len(chosen)}] {step.name} (about {_minutes(step.minutes)} min), log {log}", flush=True)
        started = time.monotonic()
        with log.open("w", encoding="utf-8") as f:
            f.write(f"# {step.command(python)}\n# in {root}, started {datetime.now().isoformat(timespec='seconds')}\n")
            f.flush()
            try:
                result = subprocess.run(
                    argv,
                    cwd=root,
                    env=env,
                    stdout=f,
                    stderr=subprocess.STDOUT,  # one file, in the order the lines were written
                    preexec_fn=functools.partial(os.nice, step.nice) if step.nice and hasattr(os, "nice") else None,
                    check=False,
                )
            except KeyboardInterrupt:  # the step got the same Ctrl-C (one process group) and stopped
                raise StepError(step, log, "interrupted", step.name, interrupted=True) from None
        elapsed = (time.monotonic() - started) / 60
        following = chosen[i].name if i < len(chosen) else None
        if result.returncode != 0:
            raise StepError(step, log, f"exit code {result.returncode} after {elapsed:.1f} min", step.name)
        try:
            problem = step.verify(root) if step.verify else None
        except (OSError, ValueError, KeyError) as exc:  # the step exited 0 but left no readable verdict
            problem = f"its verdict could not be read ({exc})"
        if problem:
            raise StepError(step, log, f"its check did not pass: {problem}", following)
        print(f"    done in {elapsed:.1f} min", flush=True)
    return (time.monotonic() - begin) / 60


def _resume_command(args: argparse.Namespace, start: str) -> str:
    """The command line that continues this run at ``start`` with the same selection."""
    parts = ["python", "-m", "training.remeasure"]
    for name in args.changed or ():
        parts += ["--changed", name]
    if args.only:
        parts += ["--only", *args.only]
    if args.include_training:
        parts.append("--include-training")
    if args.log_dir != DEFAULT_LOG_DIR:
        parts += ["--log-dir", args.log_dir]
    return shlex.join([*parts, "--from", start])


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m training.remeasure", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--changed",
        action="append",
        choices=[*DEPENDENCIES, ALL],
        help="a model whose weights changed (repeatable); 'all': every one",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these steps (table order)")
    parser.add_argument("--from", dest="start", metavar="NAME", help="skip the steps before NAME in the table")
    parser.add_argument("--include-training", action="store_true", help="also the steps that train (hours)")
    parser.add_argument("--log-dir", default=DEFAULT_LOG_DIR, help="one log file per step (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry: prints the plan, then (without ``--dry-run``) runs it.

    Returns:
        0 when every step ran, 1 when one failed, 2 on bad options, 130 when interrupted.
    """
    logging.basicConfig(format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    table = steps()
    try:
        chosen = select(
            table, args.changed or (), include_training=args.include_training, only=args.only, start=args.start
        )
    except SelectionError as exc:
        parser.error(str(exc))
    left_out: list[str] = []
    if args.changed and not args.include_training and not args.only:
        with_training = select(table, args.changed, include_training=True, start=args.start)
        left_out = [s.name for s in with_training if s.trains]
    if not chosen:
        print("nothing to run: no step depends on what changed (or --from is past every selected step)")
        return 0
    print(format_plan(chosen, left_out))
    if args.dry_run:
        return 0
    print("", flush=True)
    try:
        minutes = run_steps(chosen, Path(args.log_dir))
    except StepError as exc:
        if exc.interrupted:
            print(
                f"interrupted in step {exc.step.name!r}; continue with: {_resume_command(args, exc.step.name)}",
                file=sys.stderr,
            )
            return 130
        hint = (
            f"fix the cause, then continue with: {_resume_command(args, exc.continue_from)}"
            if exc.continue_from
            else "it was the last step: nothing is left to run"
        )
        print(
            f"error: step {exc.step.name!r} failed ({exc.reason}); its output is in {exc.log}. The steps before it "
            f"finished and wrote their files; {hint}",
            file=sys.stderr,
        )
        return 1
    outputs = sorted({o for s in chosen for o in s.outputs})
    quoted = sorted({d for s in chosen for d in s.quoted_in})
    print(f"\nall {len(chosen)} step(s) done in {minutes:.1f} min. Files written (review with `git diff`):")
    print("\n".join(f"  {o}" for o in outputs))
    if quoted:
        print(f"Now update the numbers quoted by hand in: {', '.join(quoted)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
