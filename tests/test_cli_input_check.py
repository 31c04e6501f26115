"""The input-validity check through ``python -m cxr_hub predict``: one image, a mixed folder, ``--no-input-check``.

Tiny random models (tests/conftest.py) carry no calibration, so only the image checks run: a colour photograph and a
blank image are refused, synthetic films pass. What is tested is the plumbing: the refusal's message and exit code,
each refused file's row with its scores, the override's warning.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_cxr
from PIL import Image
from test_input_check import colour_photo

from cxr_hub.cli import batch
from cxr_hub.cli import main as cli_main
from cxr_hub.validity import CSV_COLUMNS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mixed_folder(root: Path) -> Path:
    folder = root / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(synthetic_cxr(rng, 160, 144)).save(folder / "film.png")
    Image.fromarray(colour_photo()).save(folder / "photo.jpg", quality=95)
    # nearly constant (an exactly constant image is refused by load_image, before the check)
    Image.fromarray((128 + rng.integers(0, 2, (160, 144))).astype(np.uint8)).save(folder / "blank.png")
    return folder


def run(args: list[str], models: tuple[Path, Path]) -> int:
    seg, clf = models
    return cli_main([*args, "--segmentation", str(seg), "--classifier", str(clf), "--device", "cpu", "--k", "8"])


def rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return {r["file"]: r for r in csv.DictReader(f)}


def test_batch_header_carries_the_checks_columns_before_the_warnings() -> None:
    header = batch.batch_columns(["a", "b"])
    at = header.index("input_check")
    assert tuple(header[at : at + len(CSV_COLUMNS)]) == CSV_COLUMNS
    assert header[at + len(CSV_COLUMNS) :] == ["warnings", "error"]


def test_a_mixed_folder_records_each_refusal_and_goes_on(tmp_path: Path, tiny_model_folders) -> None:
    out = tmp_path / "results.csv"
    assert run(["predict", str(mixed_folder(tmp_path)), "--out", str(out)], tiny_model_folders) == 0
    got = rows(out)
    assert got["film.png"]["status"] == "ok" and got["film.png"]["input_check"] == "accepted"
    assert got["film.png"]["label"] and got["film.png"]["input_colour"]  # scored, not only decided
    photo = got["photo.jpg"]
    assert photo["status"] == "error" and photo["input_check"] == "refused" and photo["input_kind"] == "colour"
    assert "colour" in photo["input_failed"].split("|") and float(photo["input_colour"]) > 0
    assert "does not look like a frontal chest X-ray" in photo["error"] and photo["label"] == ""
    blank = got["blank.png"]
    assert blank["status"] == "error" and blank["input_check"] == "refused"
    assert blank["input_failed"] and blank["input_kind"]
    assert photo["k"] == blank["k"] == "8"  # settings recorded on refused rows too


def test_no_input_check_lets_it_through_with_a_warning(tmp_path: Path, tiny_model_folders) -> None:
    out = tmp_path / "results.csv"
    folder = mixed_folder(tmp_path)
    assert run(["predict", str(folder), "--out", str(out), "--no-input-check"], tiny_model_folders) == 0
    photo = rows(out)["photo.jpg"]
    assert photo["status"] == "ok" and photo["label"]
    assert photo["input_check"] == "refused (not enforced)" and photo["input_kind"] == "colour"
    assert "input check" in photo["warnings"].lower() or "frontal" in photo["warnings"]


def test_one_refused_image_is_one_line_and_exit_code_2(tmp_path: Path, tiny_model_folders, capsys) -> None:
    photo = tmp_path / "holiday.jpg"
    Image.fromarray(colour_photo()).save(photo, quality=95)
    out = tmp_path / "out"
    assert run(["predict", str(photo), "--out", str(out)], tiny_model_folders) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "frontal" in err and "holiday.jpg" in err
    assert not out.exists()  # nothing written for a refused input


def test_one_image_with_the_override_reports_the_check(tmp_path: Path, tiny_model_folders, capsys) -> None:
    photo = tmp_path / "holiday.jpg"
    Image.fromarray(colour_photo()).save(photo, quality=95)
    out = tmp_path / "out"
    assert run(["predict", str(photo), "--out", str(out), "--no-input-check"], tiny_model_folders) == 0
    printed = capsys.readouterr().out
    assert "input check: refused (not enforced)" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["input_check"]["kind"] == "colour" and result["pipeline"]["check_input"] is False
    assert any("frontal" in w or "input check" in w.lower() for w in result["warnings"])
