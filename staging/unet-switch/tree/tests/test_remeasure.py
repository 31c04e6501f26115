"""training/remeasure.py: the table of every step that re-measures a committed number, its selection and its runner.

Offline and fast: no model is loaded and no real step runs. Each step's command is parsed by its own tool's parser
(its ``main`` is called with ``ArgumentParser.parse_args`` stopped right after parsing), its files must be committed
today, every committed measurement must be written by a step or listed as not re-measured, the order must put every
writer before its readers, and the runner is exercised on a fake table of ``python -c`` steps.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import inspect
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import REPO_ROOT

from cxr_hub import presets
from cxr_hub.presets import SHIPPED, ShippedModel, repo_relative_folder
from training import remeasure
from training.remeasure import DEPENDENCIES, SelectionError, Step, select, steps

#: The steps that re-render documents from the measured files: they must come last.
RENDERING = ("results_tables", "refresh_card_label4_patch", "refresh_card_label4_global", "refresh_card_label3_patch")
#: Committed folders that hold measurements (each file must be a step's output or listed as not re-measured).
MEASURED_PREFIXES = ("docs/results/", "docs/figures/", "docs/segmentation/", "cxr_hub/data/")
#: Committed files under those folders that hold no number: prose.
PROSE = ("docs/segmentation/README.md",)


def names(chosen: list[Step]) -> list[str]:
    return [s.name for s in chosen]


@functools.cache
def tracked_files() -> frozenset[str] | None:
    """The files git tracks in this checkout (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return frozenset(p for p in out.decode().split("\0") if p)


# ---------------------------------------------------------------------------------------------- the tools' parsers


class Parsed(BaseException):  # not an error: the signal that parsing succeeded
    """Raised from ``parse_args`` once it parsed; a BaseException, so no ``except Exception`` in a tool swallows it."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


@functools.cache
def script_module(path: str) -> ModuleType:
    """A script of the repository (benchmarks/x.py, tests/x.py) imported under a name of its own."""
    name = "remeasure_checked_" + Path(path).stem
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing look a module up by name while it runs
    spec.loader.exec_module(module)
    return module


def parse_with_its_tool(step: Step, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The namespace the step's own tool makes of its arguments (the tool's ``main`` stops right after parsing).

    ``python -m cxr_hub`` has an importable parser (:func:`cxr_hub.cli.build_parser`); every other tool builds its
    parser inside ``main`` (or a ``parse_args`` helper), so ``main`` is called with ``parse_args`` patched to raise
    :class:`Parsed` once the real one returned: nothing after parsing runs, so nothing is loaded or written.
    """
    args = list(step.args)
    if args[:2] == ["-m", "cxr_hub"]:
        from cxr_hub.cli import build_parser

        return build_parser([args[2]]).parse_args(args[2:])
    call: Callable[[], Any]
    if args[0] == "-m":
        call = functools.partial(importlib.import_module(args[1]).main, args[2:])
    else:
        main = script_module(args[0]).main
        if inspect.signature(main).parameters:
            call = functools.partial(main, args[1:])
        else:  # benchmarks/ray_throughput.py parses sys.argv
            monkeypatch.setattr(sys, "argv", args)
            call = main
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    with pytest.raises(Parsed) as info:
        call()
    return info.value.namespace


def same_value(parsed: Any, given: str) -> bool:
    """Whether the parsed option holds the string given on the command line (converted as argparse did)."""
    if isinstance(parsed, list):
        return any(same_value(p, given) for p in parsed)
    if parsed is None:
        return False
    return type(parsed)(given) == parsed


@pytest.mark.parametrize("step", steps(), ids=lambda s: s.name)
def test_every_command_is_accepted_by_its_tools_parser(step, monkeypatch, capsys):
    try:
        namespace = parse_with_its_tool(step, monkeypatch)
    except SystemExit as exc:  # argparse refused it: say what it said
        pytest.fail(f"{step.command()} was refused (exit {exc.code}): {capsys.readouterr().err.strip()}")
    # every option given with a value lands in the attribute of its own name (no abbreviation matched another one)
    tokens = list(step.args[2:] if step.args[0] == "-m" else step.args[1:])
    for option, value in zip(tokens, [*tokens[1:], None], strict=True):
        if not option.startswith("--") or value is None or value.startswith("--"):
            continue
        dest = option[2:].replace("-", "_")
        assert hasattr(namespace, dest), f"{step.name}: {option} is not an option of its tool"
        assert same_value(getattr(namespace, dest), value), f"{step.name}: {option} {value} parsed as {namespace}"


def test_a_command_its_tool_refuses_fails_the_check(monkeypatch):
    bad = Step("bad", frozenset({"segmentation"}), ("-m", "training.results_tables", "--no-such-option"), (), 0.1)
    with pytest.raises(SystemExit):
        parse_with_its_tool(bad, monkeypatch)


# ------------------------------------------------------------------------------------------- files and model paths


def test_every_file_a_step_names_is_committed_today():
    tracked = tracked_files()
    for step in steps():
        for path in (*step.outputs, *step.inputs, *step.quoted_in):
            assert (REPO_ROOT / path).is_file(), f"{step.name}: {path} does not exist"
            if tracked is not None:
                assert path in tracked, f"{step.name}: {path} is not committed"


def test_every_committed_measurement_is_written_by_a_step_or_listed_as_not_remeasured():
    tracked = tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout")
    written = {o for s in steps() for o in s.outputs}
    elsewhere = remeasure.not_remeasured()
    measured = {p for p in tracked if p.startswith(MEASURED_PREFIXES) and p not in PROSE}
    measured |= {p for p in tracked if p.startswith("models/") and p.count("/") == 2 and p.endswith("/README.md")}
    assert sorted(measured - written - set(elsewhere)) == []
    assert not written & set(elsewhere), "a file is both re-measured and listed as not re-measured"
    assert all(p in tracked for p in elsewhere)


def test_every_model_path_comes_from_presets_shipped():
    source = Path(remeasure.__file__).read_text(encoding="utf-8")
    for model in SHIPPED.values():
        assert model.folder not in source, f"{model.folder} is typed in training/remeasure.py"
    folders = {repo_relative_folder(key) for key in SHIPPED}
    for step in steps():
        for token in (*step.args, *step.outputs, *step.inputs, *step.quoted_in):
            if token.startswith("models/"):
                assert "/".join(token.split("/")[:2]) in folders, f"{step.name}: {token} is not a shipped folder"
    assert remeasure.not_remeasured()  # its commands are built from SHIPPED too (the source check above covers it)


def test_the_table_follows_a_switch_of_the_default_segmentation(monkeypatch):
    # a switch: the other shipped segmentation model becomes the default, today's stays as the documented alternative
    # (fcdn: the default before the switch, unet: after it; the names are those of the first switch, U-Net for FCDN)
    fcdn = SHIPPED["segmentation"]
    unet = next(m for m in SHIPPED.values() if m.role == "segmentation" and m.folder != fcdn.folder)
    for key in [k for k, m in SHIPPED.items() if m.role == "segmentation" and k != "segmentation"]:
        monkeypatch.delitem(presets.SHIPPED, key)
    monkeypatch.setitem(presets.SHIPPED, "segmentation", unet)
    monkeypatch.setitem(presets.SHIPPED, "segmentation/unet", unet)
    monkeypatch.setitem(presets.SHIPPED, "segmentation/fcdensenet103", fcdn)
    table = {s.name: s for s in steps()}
    new, old = f"models/{unet.folder}", f"models/{fcdn.folder}"
    for step in table.values():
        args = list(step.args)
        if "--segmentation" in args and not step.name.startswith("validity_targets"):
            assert args[args.index("--segmentation") + 1] == new, step.name
    assert table["validity_targets"].outputs == ("docs/results/validity_targets.json",)
    assert "--segmentation" in table["validity_targets"].args and new in table["validity_targets"].args
    renamed = table[f"validity_targets_{fcdn.folder}"]
    assert renamed.outputs == (f"docs/results/validity_targets_{fcdn.folder}.json",) and old in renamed.args
    assert f"validity_targets_{unet.folder}" not in table  # one folder under two keys is measured once
    report = list(table["segmentation_report"].args)
    assert [report[i + 1] for i, a in enumerate(report) if a == "--model"] == [new, old]
    # and without the alternative, only the default is measured
    monkeypatch.delitem(presets.SHIPPED, "segmentation/fcdensenet103")
    assert [s.name for s in steps() if s.name.startswith("validity_targets")] == ["validity_targets"]


def test_the_table_follows_a_renamed_classifier(monkeypatch):
    old = SHIPPED["label4/patch"]
    monkeypatch.setitem(
        presets.SHIPPED, "label4/patch", ShippedModel("cxr-patch-resnet18-v2", "patch", "label4", old.env)
    )
    table = {s.name: s for s in steps()}
    everything = [t for s in table.values() for t in (*s.args, *s.outputs, *s.inputs)]
    assert not any(t == f"models/{old.folder}" or t.startswith(f"models/{old.folder}/") for t in everything)
    assert "docs/results/shortcuts_cxr-patch-resnet18-v2.json" in table["shortcuts_label4_patch"].outputs
    assert "models/cxr-patch-resnet18-v2/config.json" in table["calibrate_int8_label4_patch"].outputs


# -------------------------------------------------------------------------------------------------------- the order


def test_every_file_is_written_before_it_is_read_and_by_one_step():
    table = steps()
    writer: dict[str, int] = {}
    for i, step in enumerate(table):
        for path in step.outputs:
            assert path not in writer, f"{path} is written by {table[writer[path]].name} and {step.name}"
            writer[path] = i
    for i, step in enumerate(table):
        for path in step.inputs:
            if path in writer:
                assert writer[path] < i, f"{step.name} reads {path} before {table[writer[path]].name} writes it"


def test_the_order_the_measurements_need():
    order = names(list(steps()))

    def before(a: str, b: str) -> None:
        assert order.index(a) < order.index(b), f"{a} must run before {b}"

    before("calibrate_validity", "calibrate_int8_label4_patch")  # calibration films go through the input check
    for reader in ("evaluate_label4", "evaluate_label3", "biomarkers", "validity_targets", "bench_app"):
        before("calibrate_validity", reader)
    for reader in ("int8_label4", "int8_end_to_end_label4", "evaluate_label4", "bench_pipeline", "ray_throughput"):
        before("calibrate_int8_label4_patch", reader)
    for check in ("precision_bf16_label4", "segmentation_bf16_label4", "int8_label4", "int8_end_to_end_label4"):
        before(check, "evaluate_label4")  # the evaluations measure the arithmetic the checks validate
    before("evaluate_label4", "shortcuts_label4_patch")
    before("evaluate_label4", "shortcuts_label4_global")
    before("evaluate_label3", "shortcuts_label3_patch")
    before("biomarkers", "app_screenshot")  # the screenshot shows the reference values
    before("ablations_collect", "results_tables")
    assert tuple(order[-len(RENDERING) :]) == RENDERING


# ---------------------------------------------------------------------------------------------------- the selection


def test_changed_segmentation_selects_every_step_that_depends_on_the_masks():
    table = steps()
    chosen = names(select(table, ["segmentation"]))
    # every untrained step depends on the masks, directly or (the cards) through the files the evaluations rewrite
    direct = [s.name for s in table if "segmentation" in s.depends_on and not s.trains]
    through_files = [s.name for s in table if "segmentation" not in s.depends_on]
    assert through_files == ["refresh_card_label4_patch", "refresh_card_label4_global", "refresh_card_label3_patch"]
    assert chosen == [s.name for s in table if s.name in {*direct, *through_files}]
    for name in (
        "calibrate_validity",
        "segmentation_report",
        "biomarkers",
        "evaluate_label3",
        "calibrate_int8_label4_patch",
    ):
        assert name in chosen
    assert not any(s.trains for s in select(table, ["segmentation"]))


def test_a_classifier_change_selects_what_it_changes_and_what_reads_those_files():
    table = steps()
    assert names(select(table, ["label3_patch"])) == [
        "evaluate_label3",
        "shortcuts_label3_patch",
        "results_tables",
        "refresh_card_label3_patch",
    ]
    # the global model: its own steps, and through the re-written label4 predictions and metrics the patch model's
    # shortcut report and card (they read those files)
    assert names(select(table, ["label4_global"])) == [
        "precision_bf16_label4",
        "evaluate_label4",
        "shortcuts_label4_patch",
        "shortcuts_label4_global",
        "bench_app",
        "load_test",
        "app_screenshot",
        "results_tables",
        "refresh_card_label4_patch",
        "refresh_card_label4_global",
    ]
    patch = names(select(table, ["label4_patch"]))
    assert patch[0] == "calibrate_int8_label4_patch"
    assert {"int8_label4", "evaluate_label4", "patch_analysis", "refresh_card_label4_patch"} <= set(patch)
    assert not {"calibrate_validity", "biomarkers", "evaluate_label3", "segmentation_report"} & set(patch)


def test_all_is_every_model_and_training_runs_only_when_asked():
    table = steps()
    everything = select(table, ["all"])
    assert everything == select(table, list(DEPENDENCIES))
    assert names(everything) == [s.name for s in table if not s.trains]
    trains = [s.name for s in table if s.trains]
    assert trains == ["ablations_run", "ablations_collect"]
    assert names(select(table, ["all"], include_training=True)) == [s.name for s in table]
    assert names(select(table, only=["ablations_run"])) == ["ablations_run"]  # named: asked for explicitly
    assert names(select(table, ["segmentation"], only=["ablations_collect", "biomarkers"])) == [
        "biomarkers",
        "ablations_collect",
    ]


def test_only_and_from():
    table = steps()
    assert names(select(table, only=["results_tables", "biomarkers"])) == ["biomarkers", "results_tables"]
    assert names(select(table, ["label3_patch"], start="results_tables")) == [
        "results_tables",
        "refresh_card_label3_patch",
    ]
    # --from keeps the closure of the whole selection: the cards still follow the evaluations that ran before
    assert names(select(table, ["segmentation"], start="refresh_card_label4_patch")) == list(RENDERING[1:])
    # a step outside the selection starts at its place in the table
    assert names(select(table, ["label3_patch"], start="biomarkers")) == names(select(table, ["label3_patch"]))
    with pytest.raises(SelectionError, match="not selected by --changed label3_patch"):
        select(table, ["label3_patch"], only=["biomarkers"])
    with pytest.raises(SelectionError, match="unknown step 'nope'"):
        select(table, ["segmentation"], start="nope")
    with pytest.raises(SelectionError, match="unknown --changed"):
        select(table, ["weights"])
    with pytest.raises(SelectionError, match="say what changed"):
        select(table)


def test_dry_run_prints_the_plan_and_runs_nothing(monkeypatch, capsys):
    def no_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a dry run started a process")

    monkeypatch.setattr(remeasure.subprocess, "run", no_run)
    assert remeasure.main(["--changed", "segmentation", "--dry-run"]) == 0
    out = capsys.readouterr().out
    chosen = select(steps(), ["segmentation"])
    total = sum(s.minutes for s in chosen)
    assert f"{len(chosen)} step(s), about {total:.0f} min" in out
    for step in chosen:
        assert step.name in out and step.command() in out
    assert "Left out (they train): ablations_run, ablations_collect" in out
    assert "int8_global_agreement_label4_all172.json" in out  # what the table cannot repeat is said every time
    assert remeasure.main(["--changed", "label3_patch", "--dry-run"]) == 0
    assert "Left out" not in capsys.readouterr().out  # no training step depends on the label3 model


def test_the_cli_refuses_an_empty_or_unknown_selection(capsys):
    with pytest.raises(SystemExit) as exc:
        remeasure.main([])
    assert exc.value.code == 2 and "say what changed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        remeasure.main(["--changed", "weights"])


# -------------------------------------------------------------------------------------------------------- the runner


def fake_table(marker: Path, second_fails: bool = True) -> tuple[Step, ...]:
    seg = frozenset({"segmentation"})
    code = "import sys; print('second out'); print('second err', file=sys.stderr)"
    return (
        Step("first", seg, ("-c", "import os; print('first ran', os.environ.get('CXR_HUB_SEGMENTATION'))"), (), 0.1),
        Step("second", seg, ("-c", code + ("; sys.exit(3)" if second_fails else "")), (), 0.1),
        Step("third", seg, ("-c", f"open({str(marker)!r}, 'w').close()"), (), 0.1),
    )


def test_the_runner_logs_each_step_and_stops_at_the_first_failure(monkeypatch, tmp_path, capsys):
    marker = tmp_path / "third_ran"
    logs = tmp_path / "logs"
    monkeypatch.setattr(remeasure, "steps", lambda: fake_table(marker))
    monkeypatch.setenv("CXR_HUB_SEGMENTATION", "/somewhere/else")  # a step must measure the shipped models
    assert remeasure.main(["--changed", "segmentation", "--log-dir", str(logs)]) == 1
    out, err = capsys.readouterr()
    assert "[1/3] first" in out and "[2/3] second" in out and "[3/3]" not in out
    first = (logs / "first.log").read_text()
    assert first.startswith("# ") and "first ran None" in first  # the command on top; CXR_HUB_* not passed on
    second = (logs / "second.log").read_text()
    assert "second out" in second and "second err" in second  # stdout and stderr in the one log
    assert not (logs / "third.log").exists() and not marker.exists()
    assert "step 'second' failed (exit code 3" in err
    assert str(logs / "second.log") in err
    assert f"python -m training.remeasure --changed segmentation --log-dir {logs} --from second" in err

    # fixed, continue from the failed step: the first step does not run again, the rest does
    (logs / "first.log").unlink()
    monkeypatch.setattr(remeasure, "steps", lambda: fake_table(marker, second_fails=False))
    assert remeasure.main(["--changed", "segmentation", "--log-dir", str(logs), "--from", "second"]) == 0
    assert not (logs / "first.log").exists() and marker.exists()
    assert "all 2 step(s) done" in capsys.readouterr().out


def test_a_check_that_did_not_pass_stops_the_run_before_the_next_step(monkeypatch, tmp_path, capsys):
    seg = frozenset({"segmentation"})
    table = (
        Step("check", seg, ("-c", "pass"), (), 0.1, verify=lambda root: "the labels moved"),
        Step("evaluate", seg, ("-c", "pass"), (), 0.1),
    )
    monkeypatch.setattr(remeasure, "steps", lambda: table)
    assert remeasure.main(["--changed", "segmentation", "--log-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "step 'check' failed (its check did not pass: the labels moved)" in err
    assert "--from evaluate" in err  # the check ran: continue after it, once its gate is dealt with
    assert not (tmp_path / "evaluate.log").exists()
    # a check that exits 0 without a readable verdict stops the run too
    missing = remeasure._passes("docs/results/no_such_check.json", "SOME_GATE")
    table = (Step("check", seg, ("-c", "pass"), (), 0.1, verify=missing), table[1])
    assert remeasure.main(["--changed", "segmentation", "--log-dir", str(tmp_path)]) == 1
    assert "its verdict could not be read" in capsys.readouterr().err


def test_the_agreement_verdict_is_read_from_the_json(tmp_path):
    path = "docs/results/check.json"
    (tmp_path / "docs/results").mkdir(parents=True)
    verify = remeasure._passes(path, "SOME_GATE")
    for summary, problem in (
        ({"passes": True}, None),
        ({"passes": True, "global_passes": True}, None),
        ({"passes": False, "rule": "r"}, "passes = false"),
        ({"passes": True, "global_passes": False}, "global_passes = false"),
    ):
        (tmp_path / path).write_text(json.dumps({"summary": summary, "images": []}))
        result = verify(tmp_path)
        assert result is None if problem is None else (problem in result and "SOME_GATE" in result)
    # the shipped checks' committed verdicts all passed
    for step in steps():
        if step.verify:
            assert step.verify(REPO_ROOT) is None, step.name
