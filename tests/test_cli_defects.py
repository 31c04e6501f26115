"""The command line's contract, one defect at a time: fast start, one-line errors, checks before work, privacy.

Every command's error paths run with inputs under directories named like patients; their names must never reach
stdout or stderr. Tiny random models (tests/conftest.py), synthetic images, offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO_ROOT, synthetic_cxr, write_synthetic_manifest
from PIL import Image

from cxr_hub import cli
from cxr_hub.cli import main as cli_main
from cxr_hub.cli import preprocess

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PATIENT = "Doe_Johnathan_PID-98765"  # a directory that names a patient
STUDY = "Doe_Jane_1970"  # a folder of films that names a patient
NEEDLES = ("Doe_Johnathan", "PID-98765", "Doe_Jane")


def run_in_process(code: str) -> dict[str, Any]:
    """Runs ``code`` in a fresh interpreter and returns the JSON it prints last."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------ start-up


def test_help_and_a_missing_input_import_neither_torch_nor_transformers() -> None:
    # cxr_hub/__init__.py imports the models (and so torch) for the Auto-class registration; the CLI's own part is
    # measured without it, by loading the package's modules under a bare package object.
    code = f"""
import contextlib, io, json, sys, time, types
pkg = types.ModuleType("cxr_hub"); pkg.__path__ = [{str(REPO_ROOT / "cxr_hub")!r}]; sys.modules["cxr_hub"] = pkg
from cxr_hub.cli import main
out = {{}}
for argv in (["--help"], ["predict", "/nonexistent/{PATIENT}/x.png", "--out", "/nonexistent/o"]):
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as o, contextlib.redirect_stderr(io.StringIO()) as e:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    out[argv[0]] = [code, time.perf_counter() - start, o.getvalue() + e.getvalue()]
out["heavy"] = sorted(m for m in ("torch", "transformers", "cv2") if m in sys.modules)
print(json.dumps(out))
"""
    result = run_in_process(code)
    assert result["heavy"] == []
    assert result["--help"][0] == 0 and "model-card" in result["--help"][2]
    code_, _, text = result["predict"]
    assert code_ == 2 and "was not found" in text and PATIENT not in text


def test_python_m_cxr_hub_help_imports_no_torch_and_import_cxr_hub_still_registers() -> None:
    # the real entry point, not a bare package: python -m cxr_hub imports the package while sys.argv[0] == "-m"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cxr_hub", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "model-card" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert "cxr_hub" in imported and not imported & {"torch", "transformers", "cv2"}
    code = """
import json
import cxr_hub
from transformers import AutoConfig, AutoModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
cfg = CONFIG_MAPPING["cxr_unet"](base_channels=4)
print(json.dumps({"model": type(AutoModel.from_config(cfg)).__name__, "lazy": cxr_hub.CXRPipeline.__name__}))
"""
    assert run_in_process(code) == {"model": "UNetForSemanticSegmentation", "lazy": "CXRPipeline"}


def test_command_list_matches_each_commands_own_help() -> None:
    parser = cli.build_parser()  # every module: their own help
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == {name: text for name, (_, text) in cli.COMMANDS.items()}


def test_ctrl_c_is_one_line_and_exit_code_130(monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(preprocess, "run_preprocess", interrupted)
    assert cli_main(["preprocess", "x.png"]) == 130
    captured = capfd.readouterr()
    assert captured.err == "interrupted\n" and captured.out == ""


def test_model_loading_shows_no_progress_bars(tiny_model_folders, capfd) -> None:
    from transformers import AutoModelForSemanticSegmentation
    from transformers.utils import logging as hf_logging

    from cxr_hub.loading import load_model

    before = hf_logging.set_tqdm_hook(None)
    hf_logging.set_tqdm_hook(before)
    load_model(tiny_model_folders[0], AutoModelForSemanticSegmentation)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.set_tqdm_hook(before) is before  # put back as it was: other bars are not silenced
    for _ in hf_logging.tqdm(range(2), desc="a bar of someone else's"):
        pass
    assert "a bar of someone else's" in capfd.readouterr().err or not hf_logging.is_progress_bar_enabled()


def test_input_errors_come_before_any_model_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    from cxr_hub.pipeline import CXRPipeline

    def no_models(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the models were loaded before the input was checked")

    monkeypatch.setattr(CXRPipeline, "from_pretrained", no_models)
    (tmp_path / "empty.png").write_bytes(b"")
    cases = [("empty.png", "out", "empty (0 bytes)"), ("missing.png", "out", "was not found")]
    cases += [("missing.png", "out.csv", "was not found"), ("gone/", "out.csv", "was not found")]  # batches
    for image, out, message in cases:
        assert cli_main(["predict", str(tmp_path / image), "--out", str(tmp_path / out)]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / out).exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--size", "0"), ("--size", "100000"), ("--gamma", "0"), ("--gamma", "-1"), ("--gamma", "nan")],
)
def test_preprocess_checks_its_options(tmp_path: Path, capfd, option: str, value: str) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(synthetic_cxr(np.random.default_rng(0))).save(image)
    out = tmp_path / "out"
    assert cli_main(["preprocess", str(image), "--out", str(out), option, value]) == 2
    err = capfd.readouterr().err
    assert err.startswith(f"error: {option} {value}: must be") and err.count("\n") == 1, err
    assert not out.exists()
    assert cli_main(["preprocess", str(image), "--out", str(out)]) == 0  # the defaults are inside the bounds


# ------------------------------------------------------------------------------------------ evaluate-segmentation


def test_evaluate_segmentation_finds_its_default_model_from_any_directory(tmp_path: Path, monkeypatch) -> None:
    from cxr_hub.evaluation.segmentation import load_segmentation_model
    from cxr_hub.presets import default_folder

    if not (default_folder("segmentation") / "config.json").is_file():
        pytest.skip("the shipped segmentation model is not in this checkout")
    import argparse

    from cxr_hub.cli import evaluate_segmentation

    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    evaluate_segmentation.add_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate-segmentation", "--manifest", "m.csv", "--out", "o"])
    assert Path(args.segmentation) == default_folder("segmentation") and Path(args.segmentation).is_absolute()
    assert load_segmentation_model(args.segmentation, "cpu").config.model_type == "cxr_fcdensenet"


@pytest.mark.parametrize(
    "breakage",
    [["--segmentation", "{tmp}/missing_model"], ["--split", "segmentation:val"], ["--source", "nowhere"]],
    ids=["missing-model", "split-without-file", "nothing-selected"],
)
def test_evaluate_segmentation_errors_leave_no_output_folder(tmp_path: Path, capfd, breakage: list[str]) -> None:
    manifest = write_synthetic_manifest(tmp_path / "data", n=2)
    out = tmp_path / "out"
    argv = ["evaluate-segmentation", "--manifest", str(manifest), "--out", str(out)]
    assert cli_main([*argv, *(b.format(tmp=tmp_path) for b in breakage)]) == 2
    err = capfd.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------- evaluate


class Row:
    def __init__(self, id: str, label: str) -> None:
        self.id, self._label = id, label

    def label(self, task: str) -> str:
        return self._label


def test_limit_takes_a_stratified_deterministic_subset() -> None:
    from cxr_hub.evaluation.classification import stratified_subset

    # sorted by source, as the real manifest is: the first 20 rows are all normal
    rows = [Row(f"jsrt{i}", "normal") for i in range(60)] + [Row(f"cohen{i}", "viral_covid") for i in range(30)]
    rows += [Row(f"nih{i}", "bacterial") for i in range(9)] + [Row("tb0", "tuberculosis")]
    subset = stratified_subset(rows, 20, "label4")
    counts = {c: sum(r.label("") == c for r in subset) for c in ("normal", "viral_covid", "bacterial", "tuberculosis")}
    assert counts == {"normal": 12, "viral_covid": 6, "bacterial": 1, "tuberculosis": 1}  # every class present
    assert [r.id for r in subset] == [r.id for r in stratified_subset(rows, 20, "label4")]  # deterministic
    assert subset == [r for r in rows if r in subset]  # in manifest order
    assert [r.id for r in stratified_subset(list(reversed(rows)), 20, "label4")] == [r.id for r in reversed(subset)]
    assert [r.id for r in subset if r.label("") == "normal"] != [f"jsrt{i}" for i in range(12)]  # not the first ones
    assert stratified_subset(rows, 500, "label4") == rows


def _split_file(path: Path, manifest: Path) -> Path:
    from cxr_hub.manifest import read_manifest

    rows = read_manifest(manifest)
    split = {r.id: "test" if r.patient_id == "p1" else "train" for r in rows}
    path.write_text(json.dumps({"seed": 0, "splits": {"classification": split}}))
    return path


def test_evaluate_scores_the_test_split_by_default_and_warns_about_training_films(
    tmp_path: Path, tiny_model_folders, capsys
) -> None:
    from cxr_hub.evaluation.classification import DEFAULT_SPLIT_FILE, _split_selection
    from cxr_hub.manifest import read_manifest

    manifest = write_synthetic_manifest(tmp_path / "data", n=6)
    split_file = _split_file(tmp_path / "split.json", manifest)
    rows = read_manifest(manifest)
    chosen, info, notes = _split_selection(rows, split_file, None)
    assert {r.patient_id for r in chosen} == {"p1"} and info["split"] == "classification:test" and not notes
    chosen, info, notes = _split_selection(rows, split_file, "all")
    assert len(chosen) == 6 and info["training_films_scored"] == 4 and "overstate" in notes[0]
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        _split_selection(rows, tmp_path / "missing.json", None)
    # the project's split file does not cover a synthetic manifest: every row, said plainly
    chosen, info, notes = _split_selection(rows, None, None)
    assert len(chosen) == 6 and info["split"] is None and "every labelled row" in notes[0]
    assert DEFAULT_SPLIT_FILE == REPO_ROOT / "training" / "splits" / "splits_seed0.json"

    seg, clf = tiny_model_folders
    common = ["--segmentation", str(seg), "--classifier", str(clf), "--k", "4", "--n-boot", "10", "--device", "cpu"]
    base = ["evaluate", "--manifest", str(manifest), "--task", "label4", "--split-file", str(split_file), *common]
    assert cli_main([*base, "--out", str(tmp_path / "test")]) == 0
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["selection"]["split"] == "classification:test"
    assert metrics["selection"]["training_films_scored"] == 0 and "warning" not in capsys.readouterr().err
    assert cli_main([*base, "--split", "all", "--limit", "3", "--out", str(tmp_path / "all")]) == 0
    metrics = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["selection"]["split"] == "all" and metrics["selection"]["limit"] == 3
    assert metrics["selection"]["training_films_scored"] >= 1
    assert any("overstate" in n for n in metrics["notes"])
    assert "training or validation films" in capsys.readouterr().err


def test_evaluate_from_the_readme_uses_the_projects_split(cxr_data: Path) -> None:
    from cxr_hub.evaluation.classification import DEFAULT_SPLIT_FILE, _split_selection
    from cxr_hub.manifest import read_manifest

    if not DEFAULT_SPLIT_FILE.is_file():
        pytest.skip("training/splits/splits_seed0.json is not in this checkout")
    rows = [r for r in read_manifest(cxr_data / "manifest.csv") if r.label("label4")]
    chosen, info, notes = _split_selection(rows, None, None)
    assert info["split"] == "classification:test" and info["training_films_scored"] == 0 and not notes
    assert 0 < len(chosen) < len(rows)


# --------------------------------------------------------------------------------------------------------- privacy


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Inputs under directories named like patients, and an output place outside them."""
    root = tmp_path_factory.mktemp("privacy")
    patient = root / "Patients" / PATIENT
    study = root / "Patients" / STUDY
    patient.mkdir(parents=True)
    study.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(synthetic_cxr(rng, 160, 144)).save(patient / "good.png")
    Image.fromarray(synthetic_cxr(rng, 160, 144)).save(study / "img0.png")
    (patient / "x.dcm").write_bytes(b"junk" * 40)
    (study / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    manifest = write_synthetic_manifest(patient / "data", n=2)
    model = patient / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "cxr_fcdensenet"}))
    (model / "README.md").write_text("a curated card\n")
    (patient / "bad.json").write_text("{not json")
    (root / "other.csv").write_text("id,score\nx,1\n")
    return {"root": root, "patient": patient, "study": study, "manifest": manifest, "model": model}


# (id, argv, exit code): {P} is the patient's directory, {S} the study folder, {M} the models, {out} a fresh output
CASES: list[tuple[str, str, int]] = [
    ("preprocess-missing", "preprocess {P}/missing.dcm --out {out}", 2),
    ("preprocess-corrupt", "preprocess {P}/x.dcm --out {out}", 2),
    ("preprocess-directory", "preprocess {P} --out {out}", 2),
    ("preprocess-size", "preprocess {P}/good.png --size 0 --out {out}", 2),
    ("preprocess-gamma", "preprocess {P}/good.png --gamma 0 --out {out}", 2),
    ("predict-missing", "predict {P}/missing.png --out {out} {M}", 2),
    ("predict-corrupt", "predict {P}/x.dcm --out {out} {M}", 2),
    ("predict-k", "predict {P}/good.png --out {out} {M} --k 0", 2),
    ("predict-saliency", "predict {P}/good.png --saliency-classes x --out {out} {M}", 2),
    ("predict-no-model", "predict {P}/good.png --classifier {root}/none --out {out}", 2),
    ("batch-missing", "predict {S}_x/ --out {out}.csv {M}", 2),
    ("batch-seed", "predict {S}/ --seed -1 --out {out}.csv {M}", 2),
    ("batch-exists", "predict {S} --out {root}/other.csv {M}", 2),
    ("batch-columns", "predict {S} --resume --out {root}/other.csv {M}", 2),
    ("batch-with-a-refused-file", "predict {S} --out {out}.csv {M}", 0),
    ("batch-csv-inside-the-study", "predict {S} --out {S}/{name}.csv {M}", 0),
    ("evaluate-segmentation-no-manifest", "evaluate-segmentation --manifest {P}/none/manifest.csv --out {out}", 2),
    (
        "evaluate-segmentation-no-model",
        "evaluate-segmentation --manifest {manifest} --segmentation {root}/no --out {out}",
        2,
    ),
    ("evaluate-segmentation-split", "evaluate-segmentation --manifest {manifest} --split a:b --out {out}", 2),
    ("evaluate-no-manifest", "evaluate --manifest {P}/none/manifest.csv --task label4 --out {out} {M}", 2),
    ("evaluate-no-model", "evaluate --manifest {manifest} --task label4 --classifier {root}/none --out {out}", 2),
    ("evaluate-no-rows", "evaluate --manifest {manifest} --task label3 --out {out} {M}", 2),
    ("evaluate-split-file", "evaluate --manifest {manifest} --task label4 --split-file {P}/no.json --out {out} {M}", 2),
    ("biomarkers-no-manifest", "biomarkers --manifest {P}/none/manifest.csv --out {out}", 2),
    ("model-card-no-config", "model-card {P}", 2),
    ("model-card-exists", "model-card {model}", 2),
    ("model-card-bad-metrics", "model-card {model} --metrics {P}/bad.json --output {out}.md", 2),
    ("push-incomplete", "push {model} --repo-id me/x --dry-run", 2),
    ("push-not-a-folder", "push {P}/none --repo-id me/x --dry-run", 2),
]


@pytest.mark.parametrize(("argv", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_no_command_prints_the_directory_of_its_input(
    world: dict[str, Path], tiny_model_folders, tmp_path: Path, capfd, argv: str, code: int
) -> None:
    seg, clf = tiny_model_folders
    models = f"--segmentation {seg} --classifier {clf} --device cpu --k 4"
    values = {"P": world["patient"], "S": world["study"], "root": world["root"], "manifest": world["manifest"]}
    values |= {"model": world["model"], "out": tmp_path / "out", "name": tmp_path.name, "M": models}
    assert cli_main(argv.format(**values).split()) == code
    captured = capfd.readouterr()
    text = captured.out + captured.err
    if code:
        assert "error: " in captured.err and "Traceback" not in text
    leaked = [n for n in NEEDLES if n in text]
    assert not leaked, f"{leaked} in:\n{text}"


def test_redaction_keeps_file_names_and_other_folders() -> None:
    redact = cli.redactor([f"/data/{PATIENT}/scan.dcm", f"/data/Patients/{STUDY}/"])
    text = f"File '/data/{PATIENT}/scan.dcm' is corrupt; see /data/{PATIENT}. /data/{PATIENT}_2/x stays."
    assert redact(text) == f"File 'scan.dcm' is corrupt; see {cli.INPUT_FOLDER}. /data/{PATIENT}_2/x stays."
    assert redact(f"wrote /data/Patients/{STUDY}/results.csv") == "wrote results.csv"
    assert cli.redactor([]) is None


def test_the_lazy_public_names_are_the_listed_ones() -> None:
    import cxr_hub

    assert sorted(cxr_hub.__all__) == sorted([*cxr_hub._EXPORTS, "__version__"])
    for name in cxr_hub.__all__:
        assert getattr(cxr_hub, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = cxr_hub.nope
