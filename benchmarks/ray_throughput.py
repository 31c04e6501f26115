"""Throughput of ``predict --engine ray`` (1 and 2 workers) against the single-process batch ``predict``, same films.

One run, on this machine, with the shipped models (``models/``) and 40 films: the first 40 of a deterministic,
stratified selection from the curated data's ``manifest.csv`` (strata = (source, label4) among labelled films,
each stratum sorted by id, taken round-robin), else the example images of ``examples/`` repeated under distinct
names. The films are linked into one temporary folder so that both engines see the same SOURCE.

Four configurations, each run ``--rounds`` times (default 2) in an order reversed every round, because on a shared
machine the other jobs' load drifts; each configuration's least disturbed round (highest steady throughput) is the one
compared:

* ``single_process``: ``python -m cxr_hub predict FOLDER --out x.csv`` as a subprocess (the real command: interpreter
  start, imports, model loading, the films), with torch's default threads (the whole machine); the CSV is polled
  every 10 ms, so each row's time is known (a row is written the moment its film is done).
* ``single_process_1_thread``: the same with ``OMP_NUM_THREADS=1``, what one Ray worker of 1 CPU gets.
* ``ray_1_worker`` / ``ray_2_workers``: :func:`cxr_hub.ray_batch.predict_on_ray` on a new local Ray instance of all
  the cores (started and shut down inside the call, as the CLI does), workers of 1 CPU, ``--batch-size`` films per
  task (default 4).

Reported for each: the wall time of the whole command, the start-up (to the first film's start: Ray, the actors'
imports, model loading; for the single process, the first row less one film's time) and the steady throughput once
films are being made (single process: rows after the first / time from the first to the last row; Ray: films / time
from the first film's start to the last film's end on the workers, stamped by the workers themselves, since rows
reach the driver in bursts). For Ray also each film's own time in the worker (reading, pipeline, row) and the rest
of a worker's share of that span (``idle_s_per_film_per_worker``): scheduling and transfer, the per-film overhead
that Ray itself adds; and the worker's CPU time per film, which the other jobs' load does not inflate, against the
CPU time per film of the same pipeline in this process. Every Ray row of the first round is compared with the
single-process row of the same film (identical text, or not). A stage profile (``CXRPipeline`` timings of 10 films
on 1 thread) says how much of a film's time is network, the part a GPU worker speeds up, and how much is CPU work
around it.

Usage::

    nice -n 10 .venv/bin/python benchmarks/ray_throughput.py [--films 40] [--json docs/results/ray_throughput.json]

The machine's load average is recorded at the start and the end: on a shared machine every number depends on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from cxr_hub import ray_batch  # noqa: E402
from cxr_hub.presets import default_folder  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("CXR_DATA", REPO_ROOT.parent / "shared" / "data" / "cxr"))
NETWORK_STAGES = ("segment", "classify", "saliency", "global")


def select_films(data: Path, n: int) -> tuple[list[Path], str]:
    """The first ``n`` films of the stratified selection (see the module docstring), and where they came from."""
    manifest = data / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("label4")]
        strata: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
        for r in sorted(rows, key=lambda r: r["id"]):
            strata[(r["source"], r["label4"])].append(r)
        keys = sorted(strata)
        picked: list[Path] = []
        depth = 0
        while len(picked) < n and any(depth < len(strata[k]) for k in keys):
            picked += [data / strata[k][depth]["image"] for k in keys if depth < len(strata[k])]
            depth += 1
        return picked[:n], f"curated data: stratified by (source, label4) over {len(keys)} strata"
    examples = sorted((REPO_ROOT / "examples").glob("*.jpg"))
    return [examples[i % len(examples)] for i in range(n)], f"examples/ repeated ({len(examples)} films)"


def link_folder(films: list[Path], root: Path) -> Path:
    """A folder of symlinks to ``films`` under unique names (a repeated example gets a prefix)."""
    folder = root / "films"
    folder.mkdir()
    seen: dict[str, int] = defaultdict(int)
    for film in films:
        seen[film.name] += 1
        name = film.name if seen[film.name] == 1 else f"r{seen[film.name]}_{film.name}"
        (folder / name).symlink_to(film.resolve())
    return folder


def data_rows(path: Path) -> int:
    if not path.exists():
        return 0
    return max(0, path.read_bytes().count(b"\n") - 1)


def run_single_process(folder: Path, out: Path, models: dict[str, Path], threads: int | None) -> dict[str, Any]:
    """The real CLI in a subprocess; the CSV polled for the first and last row's times."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    argv = [sys.executable, "-m", "cxr_hub", "predict", str(folder), "--out", str(out)]
    argv += ["--segmentation", str(models["segmentation"]), "--classifier", str(models["classifier"]), "--seed", "0"]
    n = len(list(folder.iterdir()))
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = last = None
    seen = 0
    while proc.poll() is None:
        rows = data_rows(out)
        now = time.perf_counter() - start
        if rows and first is None:
            first = now
        if rows > seen:
            seen, last = rows, now
        time.sleep(0.01)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"single-process predict failed: {proc.stderr.read().decode()[-2000:]}")
    if data_rows(out) > seen:  # rows written between the last poll and the exit
        last = wall
    first = wall if first is None else first
    last = wall if last is None else last
    record = summarise(n, wall, first, last, first_rows=1)
    # start-up comparable with Ray's: the first row, less the time of that one film
    record["startup_s"] = round(first - (record["per_film_s_steady"] or 0.0), 2)
    return record


def run_ray(folder: Path, out: Path, models: dict[str, Path], workers: int, batch_size: int) -> dict[str, Any]:
    """:func:`predict_on_ray` on a new local instance of this machine's cores; batch arrivals stamped."""
    spec = ray_batch.PipelineSpec(segmentation=str(models["segmentation"]), classifier=str(models["classifier"]))
    options = ray_batch.RayOptions(
        address="local", workers=workers, cpus_per_worker=1, batch_size=batch_size, local_cpus=os.cpu_count()
    )
    stamps: list[tuple[float, int]] = []
    start = time.perf_counter()

    def stamp(event: ray_batch.BatchProgress) -> None:
        stamps.append((time.perf_counter() - start, event.done))

    summary = ray_batch.predict_on_ray(ray_batch.list_inputs(folder), out, spec, options, progress=stamp)
    wall = time.perf_counter() - start
    n = summary.inputs
    span = summary.films_seconds or float("nan")
    return {
        "films": n,
        "wall_s": round(wall, 2),
        "first_row_s": round(stamps[0][0], 2),
        "startup_s": round(summary.startup_seconds or float("nan"), 2),
        "films_per_s_end_to_end": round(n / wall, 4),
        # the pool's throughput while it runs: films / (first film's start .. last film's end, on the workers)
        "films_per_s_steady": round(n / span, 4),
        "per_film_s_steady": round(span / n, 3),
        # a worker's own time per film (reading, pipeline, row), and the rest of each worker's share of the span
        "worker_s_per_film": round(summary.compute_seconds / n, 3),
        "worker_cpu_s_per_film": round(summary.cpu_seconds / n, 3),
        "idle_s_per_film_per_worker": round(span * workers / n - summary.compute_seconds / n, 3),
        "workers": workers,
        "cpus_per_worker": 1,
        "batch_size": batch_size,
        "worker_processes": len(summary.workers),
        "duplicates": summary.duplicates,
        "missing": summary.missing,
        "worker_settings": summary.worker_settings,
    }


def summarise(n: int, wall: float, first: float, last: float, first_rows: int) -> dict[str, Any]:
    steady = (n - first_rows) / (last - first) if last > first and n > first_rows else None
    return {
        "films": n,
        "wall_s": round(wall, 2),
        "first_row_s": round(first, 2),
        "films_per_s_end_to_end": round(n / wall, 4),
        "films_per_s_steady": None if steady is None else round(steady, 4),
        "per_film_s_steady": None if steady is None else round(1 / steady, 3),
    }


def identical_rows(a: Path, b: Path) -> int:
    """How many films have the very same row text in both outputs."""
    header_a, rows_a = ray_batch.read_results(a)
    header_b, rows_b = ray_batch.read_results(b)
    assert header_a == header_b, "the two outputs do not have the same columns"
    by_name = {r[0]: r for r in rows_b}
    return sum(by_name.get(r[0]) == r for r in rows_a)


def stage_profile(films: list[Path], models: dict[str, Path], n: int = 10) -> dict[str, Any]:
    """Median stage times (ms) of ``n`` films on 1 torch thread, and the share of the network stages."""
    import statistics

    import torch

    from cxr_hub import CXRPipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = CXRPipeline.from_pretrained(models["segmentation"], models["classifier"], device="cpu")
        pipe(films[0], seed=0)  # warm-up: one-time int8 / batch-norm folding work
        timings, cpu = [], []
        for film in films[:n]:
            tick = time.process_time()
            timings.append(pipe(film, seed=0).timings)
            cpu.append(time.process_time() - tick)
    finally:
        torch.set_num_threads(threads)
    stages = sorted({k for t in timings for k in t} - {"analyze", "total"})
    median = {k: round(statistics.median(t.get(k, 0.0) for t in timings), 1) for k in stages}
    total = statistics.median(t["total"] for t in timings)
    network = sum(median.get(k, 0.0) for k in NETWORK_STAGES)
    return {
        "films": len(timings),
        "median_ms": median,
        "median_total_ms": round(total, 1),
        "network_share": round(network / sum(median.values()), 3),
        # CPU time per film: the cost whatever else the machine runs (wall times above include the wait for a core)
        "cpu_s_per_film_mean": round(statistics.mean(cpu), 3),
        "settings": pipe.settings(),
    }


CONFIGS = ("single_process", "single_process_1_thread", "ray_1_worker", "ray_2_workers")


def run_config(name: str, folder: Path, out: Path, models: dict[str, Path], batch_size: int) -> dict[str, Any]:
    if name.startswith("single_process"):
        threads = 1 if name.endswith("1_thread") else None
        return run_single_process(folder, out, models, threads) | {"torch_threads": threads or "default"}
    return run_ray(folder, out, models, 1 if name == "ray_1_worker" else 2, batch_size)


def best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The least disturbed round of a configuration (highest steady throughput): on a shared machine the other
    jobs only ever slow a run down."""
    return max(rounds, key=lambda r: r["films_per_s_steady"] or 0.0)


def derive(result: dict[str, Any]) -> None:
    """Adds the compared numbers to a result from its measured ``runs`` and stage profile (in place)."""
    top = {name: best(result["runs"][name]) for name in CONFIGS}
    result["best"] = {name: {k: v for k, v in r.items() if k != "worker_settings"} for name, r in top.items()}
    result["ratios"] = {
        f"{r}_vs_{b}_{kind}": round(top[r][f"films_per_s_{kind}"] / top[b][f"films_per_s_{kind}"], 3)
        for r in ("ray_1_worker", "ray_2_workers")
        for b in ("single_process", "single_process_1_thread")
        for kind in ("end_to_end", "steady")
    }
    single1, ray1, ray2 = top["single_process_1_thread"], top["ray_1_worker"], top["ray_2_workers"]
    result["ray_overhead"] = {
        # what Ray itself costs a worker per film: the share of its span not spent on a film (scheduling, transfer);
        # the film's own work in the worker is the single-process code, run as it is
        "idle_s_per_film_per_worker": ray1["idle_s_per_film_per_worker"],
        "idle_share": round(ray1["idle_s_per_film_per_worker"] / ray1["worker_s_per_film"], 4),
        "startup_s_ray_1_worker": ray1["startup_s"],
        "startup_s_single_process_1_thread": single1["startup_s"],
        "startup_extra_s": round(ray1["startup_s"] - single1["startup_s"], 2),
        "two_worker_scaling": round(ray2["films_per_s_steady"] / ray1["films_per_s_steady"], 3),
        # a film's wall and CPU time in a worker, 1 and 2 workers: equal CPU, doubled wall = no free core for #2
        "worker_s_per_film": [ray1["worker_s_per_film"], ray2["worker_s_per_film"]],
        "worker_cpu_s_per_film": [ray1["worker_cpu_s_per_film"], ray2["worker_cpu_s_per_film"]],
    }
    profile = result["stage_profile_1_thread"]["median_ms"]
    cpu_ms = sum(v for k, v in profile.items() if k not in NETWORK_STAGES)
    result["on_paper"] = {
        # a 1-CPU worker with a core to itself: about 1 / (its CPU seconds per film) films per second
        "films_per_s_per_cpu_worker": round(1 / ray1["worker_cpu_s_per_film"], 3),
        # a GPU worker: the networks leave the CPU; what stays (reading, preprocessing, input check, biomarkers,
        # sampling) bounds it, as long as the GPU part is shorter. An upper bound, not measured on a GPU.
        "cpu_stages_ms_per_film": round(cpu_ms, 1),
        "films_per_s_per_gpu_worker_upper_bound": round(1000 / cpu_ms, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="curated data folder (default: %(default)s)")
    parser.add_argument("--films", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all configurations, order rotated (2)")
    parser.add_argument("--batch-size", type=int, default=ray_batch.DEFAULT_BATCH_SIZE)
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "docs" / "results" / "ray_throughput.json")
    parser.add_argument(
        "--derive-only",
        action="store_true",
        help="recompute the compared numbers of --json from its runs; measure nothing",
    )
    args = parser.parse_args()
    if args.derive_only:
        result = json.loads(args.json.read_text())
        derive(result)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("ratios", "ray_overhead", "on_paper")}, indent=2))
        return 0
    models = {"segmentation": default_folder("segmentation"), "classifier": default_folder("label4/patch")}
    films, origin = select_films(args.data, args.films)
    from importlib.metadata import version

    result: dict[str, Any] = {
        "films": len(films),
        "selection": origin,
        "film_bytes_mean": round(sum(f.stat().st_size for f in films) / len(films)),
        "models": {k: v.name for k, v in models.items()},
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "cpu_count": os.cpu_count(),
        "nice": os.nice(0),
        "python": platform.python_version(),
        # versions from the metadata: importing Ray here would pre-empt how predict_on_ray starts its local instance
        "torch": version("torch"),
        "ray": version("ray"),
        "pyarrow": version("pyarrow"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    root = Path(tempfile.mkdtemp(prefix="ray_throughput_"))
    try:
        folder = link_folder(films, root)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
        first_outputs: dict[str, Path] = {}
        for i in range(args.rounds):
            # rotated so that no configuration always runs first (or after the same neighbour) on a drifting load
            order = CONFIGS if i % 2 == 0 else tuple(reversed(CONFIGS))
            for name in order:
                out = root / f"{name}_{i}.{'csv' if name.startswith('single') else 'parquet'}"
                record = run_config(name, folder, out, models, args.batch_size)
                record["loadavg_after"] = round(os.getloadavg()[0], 2)
                rounds[name].append(record)
                first_outputs.setdefault(name, out)
                print(name, i, {k: v for k, v in record.items() if k != "worker_settings"}, flush=True)
        for name in ("ray_1_worker", "ray_2_workers"):
            for ref in ("single_process", "single_process_1_thread"):
                identical = identical_rows(first_outputs[name], first_outputs[ref])
                rounds[name][0][f"rows_identical_to_{ref}"] = identical
        result["runs"] = rounds
        result["stage_profile_1_thread"] = stage_profile(sorted(folder.iterdir()), models)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    derive(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratios", "ray_overhead", "on_paper")}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
