"""``predict --engine ray`` (cxr_hub.ray_batch): the same rows as the single-process batch, faults, resume, the CLI.

The Ray tests run on a local Ray instance on this machine (2 CPUs, bound to loopback), with the tiny random models
of tests/conftest.py and synthetic films; each is bounded by an alarm. Where Ray is not installed they skip and the
rest (inputs, refusals, the actor's rows called in-process, "the default path never imports Ray") still runs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, synthetic_cxr
from PIL import Image

# Before Ray is imported anywhere in this process: a local instance then takes 127.0.0.1 as its node address and
# binds its servers there (loopback only); see cxr_hub.ray_batch.cluster._connect.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from cxr_hub import ray_batch
from cxr_hub.cli import build_parser
from cxr_hub.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGES = [f"img{i}.png" for i in range(7)]
K, SEED = "20", "3"
RAY_REASON = "Ray Data is not installed (pip install 'cxr-hub[ray]', or the ray[data] line of requirements.txt)"


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fails the block with TimeoutError after ``seconds`` (SIGALRM: the driver waits in Python, so it lands)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"the Ray run took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def make_folder(root: Path) -> Path:
    """Seven synthetic films and one corrupt PNG, in a folder whose name must never reach an output."""
    folder = root / "Doe_Jane_study"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in IMAGES:
        Image.fromarray(synthetic_cxr(rng, 160, 144)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    return folder


def predict_args(source: Path, out: Path, models: tuple[Path, Path], *extra: str) -> list[str]:
    seg, clf = models
    return [
        "predict", str(source), "--out", str(out), "--segmentation", str(seg), "--classifier", str(clf),
        "--device", "cpu", "--k", K, "--seed", SEED, *extra,
    ]  # fmt: skip


def spec(models: tuple[Path, Path]) -> ray_batch.PipelineSpec:
    seg, clf = models
    return ray_batch.PipelineSpec(segmentation=str(seg), classifier=str(clf), k=int(K), seed=int(SEED), device="cpu")


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory, tiny_model_folders) -> tuple[Path, Path]:
    """(the folder of films, the single-process ``predict`` CSV of it: the reference every Ray run must equal)."""
    root = tmp_path_factory.mktemp("ray_films")
    folder = make_folder(root)
    reference = root / "single_process.csv"
    assert cli_main(predict_args(folder, reference, tiny_model_folders)) == 0
    return folder, reference


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[object]:
    """A local Ray instance for the module: 2 CPUs, loopback only, no dashboard."""
    ray = pytest.importorskip("ray", reason=RAY_REASON)
    pytest.importorskip("ray.data", reason=RAY_REASON)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    assert ray.util.get_node_ip_address() == "127.0.0.1", "the test instance must listen on loopback only"
    yield ray
    if started:
        ray.shutdown()


def cells(path: Path) -> list[list[str]]:
    header, rows = ray_batch.read_results(path)
    return [header, *rows]


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def run_cli(argv: list[str]) -> int:
    """``python -m cxr_hub predict ... --engine ray`` in-process: through cxr_hub.cli.predict once it registers the Ray
    options (its ``predict`` then dispatches to :func:`cxr_hub.ray_batch.run_ray_predict`), else directly."""
    parser = build_parser(["predict"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["predict"]
    wired = any("--engine" in a.option_strings for a in sub._actions)
    if not wired:
        ray_batch.add_ray_arguments(sub)
    args = parser.parse_args(argv)
    return cli_main(argv) if wired else ray_batch.run_ray_predict(args)


# --------------------------------------------------------------------------------------------- without Ray


def test_default_predict_never_imports_ray(tmp_path: Path, tiny_model_folders) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(synthetic_cxr(np.random.default_rng(1), 128, 112)).save(folder / "a.png")
    code = (
        "import sys\n"
        "from cxr_hub import ray_batch\n"
        "from cxr_hub.cli import main\n"
        f"rc = main({predict_args(folder, tmp_path / 'out.csv', tiny_model_folders)!r})\n"
        "assert rc == 0, rc\n"
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out.csv").read_text().count("\n") == 2


def test_inputs_from_a_folder_a_manifest_and_a_list(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    assert [p.name for p in ray_batch.list_inputs(folder)] == sorted(["broken.png", *IMAGES])
    listing = tmp_path / "paths.txt"
    listing.write_text(f"# films\nDoe_Jane_study/img3.png\n\n{folder / 'img1.png'}\nDoe_Jane_study/gone.png\n")
    assert ray_batch.list_inputs(listing) == [folder / "img3.png", folder / "img1.png", folder / "gone.png"]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,image\na,Doe_Jane_study/img2.png\nb,Doe_Jane_study/img0.png\n")
    assert ray_batch.list_inputs(manifest) == [folder / "img2.png", folder / "img0.png"]
    assert ray_batch.list_inputs(folder / "img4.png") == [folder / "img4.png"]
    (tmp_path / "bad.csv").write_text("name\nx\n")
    with pytest.raises(ray_batch.RayPredictError, match="manifest") as err:
        ray_batch.list_inputs(tmp_path / "bad.csv")
    assert str(tmp_path) not in str(err.value)
    with pytest.raises(ray_batch.RayPredictError, match="not found") as err:
        ray_batch.list_inputs(tmp_path / "Doe_Jane_missing")
    assert "Doe_Jane" not in str(err.value)


def test_refusals_before_any_work(tmp_path: Path, tiny_model_folders, capsys) -> None:
    folder = make_folder(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "img0.png").write_bytes((folder / "img0.png").read_bytes())
    inputs = [folder / "img0.png", folder / "img1.png", other / "img0.png"]
    with pytest.raises(ray_batch.RayPredictError, match=r"img0\.png.*unique"):
        ray_batch.predict_on_ray(inputs, tmp_path / "r.parquet", spec(tiny_model_folders))
    with pytest.raises(ray_batch.RayPredictError, match=r"\.parquet or \.csv"):
        ray_batch.predict_on_ray(inputs[:2], tmp_path / "r.json", spec(tiny_model_folders))
    with pytest.raises(ray_batch.RayPredictError, match="--gpus-per-worker"):
        ray_batch.predict_on_ray(
            inputs[:2], tmp_path / "r.csv", spec(tiny_model_folders), ray_batch.RayOptions(gpus_per_worker=-1)
        )
    existing = tmp_path / "done.csv"
    existing.write_text("file,status\n")
    with pytest.raises(ray_batch.RayPredictError, match="--resume"):
        ray_batch.predict_on_ray(inputs[:2], existing, spec(tiny_model_folders))
    assert existing.read_text() == "file,status\n" and not ray_batch.parts_folder(existing).exists()
    # the CLI: one line on stderr, exit code 2, nothing written
    assert (
        run_cli(
            [*predict_args(folder, tmp_path / "x.parquet", tiny_model_folders), "--engine", "ray", "--workers", "0"]
        )
        == 2
    )
    assert "--workers 0" in capsys.readouterr().err
    assert (
        run_cli(
            [*predict_args(tmp_path / "Doe_Jane_gone", tmp_path / "x.parquet", tiny_model_folders), "--engine", "ray"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "not found" in err and "Doe_Jane" not in err
    assert not (tmp_path / "x.parquet").exists()


def test_actor_rows_in_process(films: tuple[Path, Path], tiny_model_folders) -> None:
    """The actor called without Ray: the reference's cells, an error row for a failing film, no directory names."""
    pa = pytest.importorskip("pyarrow", reason=RAY_REASON)
    folder, reference = films
    header, *expected = csv_rows(reference)
    settings = {"k": K, "patch_size": "64", "seed": SEED}
    actor = ray_batch.PipelineActor(spec(tiny_model_folders), header, settings, device="cpu", threads=1)
    names = ["broken.png", "img0.png"]
    batch = pa.table({"path": [os.fsencode(folder / n) for n in names], "file": names})
    out = actor(batch)
    rows = [list(r) for r in zip(*(out.column(c).to_pylist() for c in header), strict=True)]
    assert rows == expected[:2]
    assert set(out.column(ray_batch.WORKER_COLUMN).to_pylist()) == {f"{socket.gethostname()}:{os.getpid()}"}

    def fail(image: object, **kwargs: object) -> None:
        raise RuntimeError(f"cannot open {folder / 'img1.png'} in {folder}")

    actor.pipe.prepare = fail  # an unexpected failure on one film: a row with the error, the run goes on
    row = dict(zip(header, actor.row(folder / "img1.png", "img1.png"), strict=True))
    assert row["status"] == "error" and row["k"] == K and "RuntimeError" in row["error"] and "img1.png" in row["error"]
    assert str(folder) not in row["error"] and "Doe_Jane" not in row["error"]


def test_parquet_cells_round_trip() -> None:
    pytest.importorskip("pyarrow", reason=RAY_REASON)
    header = ["file", "status", "votes_a", "probability_a", "cardiothoracic_ratio", "k", "warnings", "error"]
    rows = [
        ["a.png", "ok", "7", "0.123457", "", "100", "w1 | w2", ""],
        ["b.png", "error", "", "", "", "100", "", "File 'b.png' is broken"],
    ]
    table = ray_batch.cells_to_table(header, rows)
    assert str(table.schema.field("votes_a").type) == "int64"
    assert str(table.schema.field("probability_a").type) == "double"
    assert table.column("probability_a").to_pylist() == [0.123457, None]
    assert ray_batch.table_to_cells(table, header) == rows
    with pytest.raises(ray_batch.RayPredictError, match="votes_a"):
        ray_batch.cells_to_table(header, [["c.png", "ok", "many", "", "", "1", "", ""]])


# ------------------------------------------------------------------------------------------------- on Ray


def test_cli_on_ray_writes_the_single_process_csv(
    tmp_path: Path, films: tuple[Path, Path], tiny_model_folders, capsys
) -> None:
    """Two workers, through the CLI functions; the CSV is byte-identical to the single-process run's."""
    pytest.importorskip("ray.data", reason=RAY_REASON)
    folder, reference = films
    out = tmp_path / "results.csv"
    argv = [*predict_args(folder, out, tiny_model_folders), "--engine", "ray", "--workers", "2", "--batch-size", "2"]
    with deadline(100):
        assert run_cli(argv) == 0
    assert out.read_bytes() == reference.read_bytes()
    assert "7 analysed, 1 refused" in capsys.readouterr().out
    text = out.read_text()
    assert "Doe_Jane" not in text and str(tmp_path) not in text
    assert not ray_batch.parts_folder(out).exists()
    assert run_cli(argv) == 2  # an existing output is never overwritten without --resume
    assert "--resume" in capsys.readouterr().err


def test_killed_worker_is_restarted_and_no_row_is_lost_or_doubled(
    ray_instance, tmp_path: Path, films: tuple[Path, Path], tiny_model_folders
) -> None:
    """One worker, SIGKILLed when its first rows arrive: the run only ends if Ray restarts it and retries."""
    folder, reference = films
    killed: list[int] = []

    def kill_first_worker(event: ray_batch.BatchProgress) -> None:
        if not killed:
            assert event.done < event.todo, "the kill must land mid-run"
            (host, pid), *_ = event.workers
            assert host == socket.gethostname() and pid != os.getpid()  # a worker process of our local instance
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = tmp_path / "results.parquet"
    options = ray_batch.RayOptions(workers=1, batch_size=1, flush_rows=1)
    with deadline(100):
        summary = ray_batch.predict_on_ray(
            ray_batch.list_inputs(folder), out, spec(tiny_model_folders), options, progress=kill_first_worker
        )
    assert killed
    assert cells(out) == csv_rows(reference)  # every film exactly once, with the single-process row
    assert (summary.ok, summary.errors, summary.missing, summary.duplicates) == (len(IMAGES), 1, 0, 0)
    pids = [int(w.rpartition(":")[2]) for w in summary.workers]
    assert killed[0] in pids and len(pids) == 2, "rows must come from the killed worker and its replacement"


def test_interrupted_run_resumes_from_its_parts(
    ray_instance, tmp_path: Path, films: tuple[Path, Path], tiny_model_folders, monkeypatch
) -> None:
    """Ctrl-C after the first batch keeps that batch; --resume makes only the rest; the result equals one run.

    The resumed run takes the Ray Client (``ray://``) path: the dataset runs in an actor on the cluster, never here.
    """
    folder, reference = films
    listing = tmp_path / "films.txt"  # a text file of paths, in the folder's order
    listing.write_text("".join(f"{p}\n" for p in ray_batch.list_inputs(folder)))
    out = tmp_path / "results.parquet"
    options = ray_batch.RayOptions(workers=1, batch_size=3, flush_rows=1)

    def interrupt(event: ray_batch.BatchProgress) -> None:
        raise KeyboardInterrupt

    with deadline(100), pytest.raises(KeyboardInterrupt):
        ray_batch.predict_on_ray(
            ray_batch.list_inputs(listing), out, spec(tiny_model_folders), options, progress=interrupt
        )
    parts = ray_batch.parts_folder(out)
    assert not out.exists() and len(list(parts.glob("part-*.parquet"))) == 1
    with pytest.raises(ray_batch.RayPredictError, match="--resume"):
        ray_batch.predict_on_ray(ray_batch.list_inputs(listing), out, spec(tiny_model_folders), options)
    with pytest.raises(ray_batch.RayPredictError, match="--seed 4"):  # a resume must not mix settings
        ray_batch.predict_on_ray(
            ray_batch.list_inputs(listing),
            out,
            ray_batch.PipelineSpec(**{**spec(tiny_model_folders).__dict__, "seed": 4}),
            options,
            resume=True,
        )
    with monkeypatch.context() as client:
        client.setattr(ray_instance.util.client.ray, "is_connected", lambda: True)

        def not_here(*args: object) -> None:
            raise AssertionError("through Ray Client the dataset must run on the cluster, not in the client")

        client.setattr(ray_batch.cluster, "_dataset", not_here)
        with deadline(100):
            summary = ray_batch.predict_on_ray(
                ray_batch.list_inputs(listing), out, spec(tiny_model_folders), options, resume=True
            )
    assert 1 <= summary.skipped < len(IMAGES) + 1
    assert summary.ok + summary.errors == len(IMAGES) + 1 - summary.skipped  # only the films without a row ran
    assert cells(out) == csv_rows(reference) and not parts.exists()
    again = ray_batch.predict_on_ray(
        ray_batch.list_inputs(listing), out, spec(tiny_model_folders), options, resume=True
    )
    assert (again.skipped, again.ok + again.errors) == (len(IMAGES) + 1, 0) and cells(out) == csv_rows(reference)
