"""Privacy: a DICOM's patient name, ID and birth date never leave the process, and uploads do not outlive a session.

A synthetic DICOM carrying identifiers goes through ``python -m cxr_hub predict`` (one image and a batch) and the
app's handlers; every output file, stdout/stderr line, log record, warning, JSON report and response is searched
for the identifiers (and for the identifying directory and file names where the output must not name them).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import synthetic_cxr
from test_io import make_dicom

from cxr_hub.cli import main as cli_main
from cxr_hub.demo import PAPER_LABEL as PAPER_MODEL  # the model as the UI and the API name it
from cxr_hub.demo import PREDICTED, CXRApp

gr = pytest.importorskip("gradio")
app = pytest.importorskip("app")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PHI = {"PatientName": "Zyxwert^Quilla", "PatientID": "PID-4242-SECRET", "PatientBirthDate": "19230817"}
NEEDLES = ("Zyxwert", "Quilla", "PID-4242", "SECRET", "19230817")


def phi_dicom(pixel_data: bytes | None = None) -> bytes:
    """A DX DICOM (Part 10) with identifiers in its header; ``pixel_data`` replaces the valid pixels (corrupt)."""
    pixels = (synthetic_cxr(np.random.default_rng(5), 160, 144).astype(np.uint16) * 16).astype("<u2")
    # InstitutionName: an identifier in a tag nobody thinks of
    return make_dicom(pixels, pixel_data=pixel_data, InstitutionName="Quilla Memorial", **PHI)


def assert_clean(where: str, text: str, needles: tuple[str, ...] = NEEDLES) -> None:
    found = [n for n in needles if n in text]
    assert not found, f"{found} leaked into {where}"


def files_text(folder: Path) -> dict[str, str]:
    """Every file under folder, as text (binary files decoded byte for byte, so PNG text chunks count too)."""
    return {str(p): p.read_bytes().decode("latin-1") for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def everything_captured(caplog: pytest.LogCaptureFixture):
    """Records every log record (any logger, DEBUG and up) and every warning raised during the test."""
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def test_cli_predict_never_writes_or_prints_dicom_identifiers(
    tmp_path: Path, tiny_model_folders, capfd, caplog, everything_captured
) -> None:
    seg, clf = tiny_model_folders
    studies = tmp_path / "Zyxwert_Quilla_studies"  # the directory names the patient; outputs must not
    studies.mkdir()
    (studies / "study.dcm").write_bytes(phi_dicom())
    (studies / "broken.dcm").write_bytes(phi_dicom(pixel_data=b"\x00\x01" * 10))  # too short: a refused image
    common = ["--segmentation", str(seg), "--classifier", str(clf), "--device", "cpu", "--k", "8"]
    single, batch = tmp_path / "single", tmp_path / "batch.csv"

    assert (
        cli_main(["predict", str(studies / "study.dcm"), "--out", str(single), "--saliency-classes", "all", *common])
        == 0
    )
    assert cli_main(["predict", str(studies), "--out", str(batch), *common]) == 0
    assert cli_main(["predict", str(studies / "broken.dcm"), "--out", str(tmp_path / "x"), *common]) == 2

    outputs = {**files_text(single), str(batch): batch.read_text()}
    assert len(outputs) >= 3  # result.json, segmentation.png, the saliency PNGs, the CSV
    result = json.loads((single / "result.json").read_text())
    assert result["label"] and result["biomarkers"]
    rows = batch.read_text().splitlines()
    assert rows[1].startswith("broken.dcm,error,") and rows[2].startswith("study.dcm,ok,")
    for where, text in outputs.items():
        assert_clean(where, text, (*NEEDLES, "Memorial"))
    assert_clean("the batch CSV", batch.read_text(), (str(studies), studies.name))  # file names only
    captured = capfd.readouterr()
    assert "error:" in captured.err  # the refused image said why ...
    assert_clean("stdout", captured.out, (*NEEDLES, "Memorial"))
    assert_clean("stderr", captured.err, (*NEEDLES, "Memorial"))  # ... without quoting the header
    assert_clean("log records", caplog.text + "".join(r.getMessage() for r in caplog.records))
    assert_clean("warnings", "\n".join(str(w.message) for w in everything_captured))


def test_app_handlers_never_return_identifiers(tmp_path: Path, tiny_model_folders, capfd, caplog, everything_captured):
    seg, clf = tiny_model_folders
    engine = CXRApp({"CXR_HUB_SEGMENTATION": str(seg), "CXR_HUB_CLASSIFIER": str(clf)}, tmp_path / "none", device="cpu")
    blocks = app.build_demo(engine)
    fns = {getattr(f.fn, "__name__", ""): f.fn for f in blocks.fns.values()}
    upload = tmp_path / "Zyxwert_Quilla_PID-4242-SECRET.dcm"  # the visitor's file name carries identifiers too
    upload.write_bytes(phi_dicom())

    fns["preview"](str(upload))
    outputs = fns["analyze"](str(upload), PAPER_MODEL, 10, 224, 0, PREDICTED)
    named = dict(zip(app.OUTPUT_NAMES, outputs, strict=False))
    texts: list[str] = [o for o in outputs if isinstance(o, str)]
    texts.append(json.dumps(named["result"]))
    texts += [Path(p).read_bytes().decode("latin-1") for p in named["report"]]
    assert named["result"]["label"] and len(named["report"]) == 2
    for text in texts:
        assert_clean("an app output", text, (*NEEDLES, "Memorial", str(tmp_path)))

    broken = tmp_path / "Zyxwert_Quilla.dcm"
    broken.write_bytes(phi_dicom(pixel_data=b"\x00\x01" * 10))
    for fn, args in (("preview", (str(broken),)), ("analyze", (str(broken), PAPER_MODEL, 10, 224, 0, PREDICTED))):
        with pytest.raises(gr.Error) as err:
            fns[fn](*args)
        assert err.value.message.startswith("The uploaded file")  # says what is wrong ...
        assert_clean(f"{fn}'s error", err.value.message, (*NEEDLES, str(tmp_path)))  # ... not whose file it is
    captured = capfd.readouterr()
    assert_clean("stdout/stderr", captured.out + captured.err, (*NEEDLES, "Memorial"))
    assert_clean("log records", caplog.text)
    assert_clean("warnings", "\n".join(str(w.message) for w in everything_captured))


def test_uploads_are_deleted_when_the_session_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upload_dir = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(upload_dir))
    blocks = app.build_demo(CXRApp({}, tmp_path / "none", device="cpu"))
    assert blocks.delete_cache == app.DELETE_CACHE  # Gradio's own purge: every 5 min, files older than 15 min
    preview = next(f.fn for f in blocks.fns.values() if getattr(f.fn, "__name__", "") == "preview")
    unloads = [f.fn for f in blocks.fns.values() if any(t[1] == "unload" for t in f.targets)]
    assert len(unloads) == 1

    def upload(session: str, name: str) -> Path:
        path = upload_dir / f"hash_{session}_{name}" / name  # Gradio stores each upload in its own folder
        path.parent.mkdir(parents=True)
        path.write_bytes(phi_dicom())
        preview(str(path), SimpleNamespace(session_hash=session))
        return path

    mine, theirs = upload("s1", "a.dcm"), upload("s2", "b.dcm")
    outside = tmp_path / "example.dcm"  # e.g. an example image: not an upload, never deleted
    outside.write_bytes(phi_dicom())
    preview(str(outside), SimpleNamespace(session_hash="s1"))
    unloads[0](SimpleNamespace(session_hash="s1"))
    assert not mine.exists() and not mine.parent.exists()
    assert theirs.exists() and outside.exists()
    unloads[0](SimpleNamespace(session_hash="s1"))  # a second goodbye, or a session without uploads: no error
    unloads[0](None)


@pytest.mark.slow
def test_stopping_the_app_with_sigterm_deletes_the_uploads(tmp_path: Path) -> None:
    """Containers stop the app with SIGTERM; Gradio's shutdown (which purges its upload cache) must still run."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import REPO_ROOT
    from gradio_client import Client, handle_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    upload_dir = tmp_path / "gradio"
    env = {
        **os.environ,
        "GRADIO_TEMP_DIR": str(upload_dir),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "CXR_HUB_SEGMENTATION": str(tmp_path / "no_such_model"),  # no models: starts fast, still takes uploads
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--device", "cpu"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "the app exited before answering"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the app did not answer within 180 s"
                time.sleep(0.5)
        study = tmp_path / "Zyxwert_Quilla.dcm"
        study.write_bytes(phi_dicom())
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        client.predict(handle_file(str(study)), PAPER_MODEL, 10, 224, 0, PREDICTED, api_name="/analyze")
        assert any(p.name == study.name for p in upload_dir.rglob("*")), "the upload should be in Gradio's cache"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) is not None
    finally:
        proc.kill()
        proc.wait()
    left = {p.name for p in upload_dir.rglob("*") if p.is_file() and p.stat().st_size}
    examples = {p.name for p in (REPO_ROOT / "examples").iterdir()}
    assert study.name not in left and left <= examples  # only gr.Examples' copies of the public example images
