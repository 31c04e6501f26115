"""``python -m cxr_hub predict DIR --out results.csv``: batch rows, crash safety, ``--resume``, privacy of rows.

A real ``python -m cxr_hub`` process is killed with SIGKILL after its first row reaches the disk; the run is then
resumed and compared with an uninterrupted one. Tiny random models (tests/conftest.py), synthetic images, offline.
"""

from __future__ import annotations

import csv
import io
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

from cxr_hub.cli import batch
from cxr_hub.cli import main as cli_main
from cxr_hub.io import CXRInputError

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
    with path.open(newline="", encoding="utf-8") as f:
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
    assert batch.is_batch(folder, "outputs/predict") and batch.is_batch(folder / "img0.png", "r.CSV")
    assert not batch.is_batch(folder / "img0.png", "outputs/predict")
    assert [p.name for p in batch.batch_inputs(folder)] == sorted(["broken.png", *IMAGES])
    assert batch.batch_inputs(folder / "img0.png") == [folder / "img0.png"]
    with pytest.raises(CXRInputError, match="not found") as err:
        batch.batch_inputs(tmp_path / "missing")
    assert str(tmp_path) not in str(err.value)  # a folder's own name can be a patient's


def broken_tiff() -> bytes:
    """A TIFF with one header byte changed: PIL raised ``TypeError: Missing dimensions`` on it, not CXRInputError."""
    buf = io.BytesIO()
    Image.fromarray(synthetic_cxr(np.random.default_rng(7), 128, 112)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    data[8] = 0xFF
    return bytes(data)


def test_one_bad_file_never_stops_a_batch_and_resume_gets_past_it(tmp_path: Path, tiny_model_folders) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(8)
    Image.fromarray(synthetic_cxr(rng, 128, 112)).save(folder / "a.png")
    Image.fromarray(synthetic_cxr(rng, 128, 112)).save(folder / "c.png")
    (folder / "broken.tif").write_bytes(broken_tiff())
    try:  # a name that is not valid UTF-8, as Linux allows (bytes path)
        with open(os.fsencode(folder) + b"/bad\xffname.jpg", "wb") as f:
            Image.fromarray(synthetic_cxr(rng, 128, 112)).save(f, format="JPEG")
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take file names that are not UTF-8")
    out = tmp_path / "out.csv"
    args = predict_args(folder, out, tiny_model_folders, k="4")
    assert cli_main(args) == 0
    full = out.read_bytes()
    rows = read_rows(out)  # the CSV is valid UTF-8 (read_rows decodes it strictly)
    by_name = {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    assert sorted(by_name) == sorted(["a.png", "bad\\xffname.jpg", "broken.tif", "c.png"])  # escaped as \xff
    assert by_name["broken.tif"]["status"] == "error" and "could not be decoded" in by_name["broken.tif"]["error"]
    assert by_name["broken.tif"]["k"] == "4" and by_name["broken.tif"]["seed"] == "3"  # error rows record settings
    assert all(by_name[n]["status"] == "ok" for n in ("a.png", "bad\\xffname.jpg", "c.png"))
    # resume from the first three rows (the escaped name among them): matched, not analysed again
    lines = full.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:4]))
    assert cli_main([*args, "--resume"]) == 0
    assert out.read_bytes() == full


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--k", "0", "--k 0"),
        ("--seed", "-1", "--seed -1"),
        ("--saliency-classes", "nope", "--saliency-classes nope"),
        ("--patch-size", "0", "--patch-size 0"),
        ("--patch-size", "5000", "--patch-size 5000"),
        ("--chunk-size", "0", "--chunk-size 0"),
    ],
)
def test_bad_batch_options_are_one_line_errors_before_anything_is_written(
    tmp_path: Path, tiny_model_folders, capfd, option: str, value: str, named: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(synthetic_cxr(np.random.default_rng(1), 128, 112)).save(folder / "a.png")
    out = tmp_path / "out" / "results.csv"
    assert cli_main([*predict_args(folder, out, tiny_model_folders, k="4"), option, value]) == 2
    err = capfd.readouterr().err
    assert err.startswith(f"error: {named}:") and err.count("\n") == 1, err  # one line, naming the option
    assert not out.exists() and not out.parent.exists()  # so a corrected rerun is not refused
    assert cli_main(predict_args(folder, out, tiny_model_folders, k="4")) == 0


def test_resume_refuses_a_csv_made_with_other_settings(tmp_path: Path, tiny_model_folders, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(synthetic_cxr(np.random.default_rng(i), 128, 112)).save(folder / f"img{i}.png")
    out = tmp_path / "out.csv"
    assert cli_main(predict_args(folder, out, tiny_model_folders, k="4")) == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2]))  # interrupted after one image
    before = out.read_bytes()
    capsys.readouterr()
    for other in (["--k", "5"], ["--seed", "4"], ["--patch-size", "32"]):
        assert cli_main([*predict_args(folder, out, tiny_model_folders, k="4"), *other, "--resume"]) == 2
        err = capsys.readouterr().err
        assert "--k 4 --patch-size 64 --seed 3" in err and "other --out" in err and err.count("\n") == 1
        assert out.read_bytes() == before
    assert cli_main([*predict_args(folder, out, tiny_model_folders, k="4"), "--resume"]) == 0
    assert len(read_rows(out)) == 3
