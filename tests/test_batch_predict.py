"""``python -m cxr_hub predict DIR --out results.csv``: batch rows, crash safety, ``--resume``, privacy of rows.

A real ``python -m cxr_hub`` process is killed with SIGKILL after its first row reaches the disk; the run is then
resumed and compared with an uninterrupted one. Tiny random models (tests/conftest.py), synthetic images, offline.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, synthetic_cxr
from PIL import Image

from cxr_hub import commands
from cxr_hub.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Enough patches that one image takes a noticeable fraction of a second: the kill lands between rows.
K = "300"
IMAGES = ["img0.png", "img1.png", "img2.png", "img3.jpg", "img4.png"]


def make_folder(root: Path) -> Path:
    """Five synthetic X-rays, one corrupt PNG, and files a batch must not visit (sub-folder, hidden, text)."""
    folder = root / "Doe_Jane_study"  # a directory name that must never reach the CSV
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in IMAGES:
        Image.fromarray(synthetic_cxr(rng, 160, 144)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes((folder / "img0.png").read_bytes())
    (folder / "sub").mkdir()
    (folder / "sub" / "deeper.png").write_bytes((folder / "img0.png").read_bytes())
    return folder


def predict_args(folder: Path, out: Path, models: tuple[Path, Path], *extra: str, k: str = K) -> list[str]:
    seg, clf = models
    return [
        "predict", str(folder), "--out", str(out), "--segmentation", str(seg), "--classifier", str(clf),
        "--device", "cpu", "--k", k, "--seed", "3", *extra,
    ]  # fmt: skip


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def data_rows(path: Path) -> int:
    return max(0, len(read_rows(path)) - 1) if path.exists() else 0


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, tiny_model_folders) -> None:
    folder = make_folder(tmp_path)
    killed = tmp_path / "killed.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxr_hub", *predict_args(folder, killed, tiny_model_folders)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while data_rows(killed) < 1:
            assert proc.poll() is None, "the batch run ended before writing a row"
            assert time.monotonic() < deadline, "no row appeared within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    interrupted = read_rows(killed)
    assert 1 <= len(interrupted) - 1 < len(IMAGES) + 1, "the kill must land mid-run"

    # a second run without --resume refuses to overwrite; with --resume it finishes the job
    assert cli_main(predict_args(folder, killed, tiny_model_folders)) == 2
    assert cli_main(predict_args(folder, killed, tiny_model_folders, "--resume")) == 0
    reference = tmp_path / "reference.csv"
    assert cli_main(predict_args(folder, reference, tiny_model_folders)) == 0

    rows = read_rows(killed)
    assert rows == read_rows(reference)
    assert rows[: len(interrupted)] == interrupted  # resume appended; it rewrote nothing that was whole
    names = [r[0] for r in rows[1:]]
    assert names == sorted(["broken.png", *IMAGES])  # every image exactly once, nothing from sub/, hidden or .txt
    by_name = {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    assert by_name["broken.png"]["status"] == "error" and "broken.png" in by_name["broken.png"]["error"]
    assert all(by_name[n]["status"] == "ok" and by_name[n]["label"] for n in IMAGES)
    assert sum(int(by_name["img0.png"][f"votes_{c}"]) for c in ("normal", "bacterial", "tuberculosis", "viral_covid"))
    text = killed.read_text()
    assert str(tmp_path) not in text and "Doe_Jane" not in text  # file names only, no directory components


def test_torn_last_row_is_dropped_on_resume(tmp_path: Path, tiny_model_folders) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(synthetic_cxr(np.random.default_rng(1), 128, 112)).save(folder / "a.png")
    Image.fromarray(synthetic_cxr(np.random.default_rng(2), 128, 112)).save(folder / "b.png")
    out = tmp_path / "out.csv"
    args = predict_args(folder, out, tiny_model_folders, k="4")
    assert cli_main(args) == 0
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)
    # as if the process died in the middle of writing b.png's row
    out.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    assert cli_main([*args, "--resume"]) == 0
    assert out.read_bytes() == full


def test_resume_refuses_a_csv_with_other_columns(tmp_path: Path, tiny_model_folders, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(synthetic_cxr(np.random.default_rng(1), 128, 112)).save(folder / "a.png")
    out = tmp_path / "out.csv"
    out.write_text("id,score\nx,1\n")
    assert cli_main([*predict_args(folder, out, tiny_model_folders), "--resume"]) == 2
    assert "columns" in capsys.readouterr().err and out.read_text() == "id,score\nx,1\n"


def test_batch_mode_selection_and_inputs(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    assert commands.is_batch(folder, "outputs/predict") and commands.is_batch(folder / "img0.png", "r.CSV")
    assert not commands.is_batch(folder / "img0.png", "outputs/predict")
    assert [p.name for p in commands.batch_inputs(folder)] == sorted(["broken.png", *IMAGES])
    assert commands.batch_inputs(folder / "img0.png") == [folder / "img0.png"]
    with pytest.raises(commands.CXRInputError, match="not found"):
        commands.batch_inputs(tmp_path / "missing")
