"""Load test of the Gradio app: N concurrent gradio_client users for a bounded time, valid and invalid uploads mixed.

Starts ``app.py`` as its own process on 127.0.0.1 (a random free port), waits until it answers, then runs ``--users``
threads (default 16), each with its own ``gradio_client.Client``, calling ``/analyze`` back to back for
``--seconds`` (default 60). Each call uploads, with probability ``--invalid-fraction``, a hostile file (the corpus in
``tests/data/bad_inputs/``: corrupt, truncated, bombs, constant, ...) and otherwise an example X-ray from
``examples/`` with a random K and seed (so some calls reuse the app's segmentation cache and some do not).

Printed at the end (and written with ``--json``):

* latency p50 / p95 (all answered calls, and valid analyses alone), throughput (answered calls per second);
* outcomes: ``ok``; ``refused`` (a ``gr.Error`` for a hostile file: expected); and every unexpected kind by name:
  ``valid_input_refused`` (a gr.Error for an example image), ``invalid_input_accepted``, ``server_exception``
  (an exception other than gr.Error inside the app), ``timeout``, ``ConnectionError``, ...;
* peak RSS of the server process (Linux ``VmHWM``), and its RSS once the models were loaded;
* how many uploads were left on disk after the server stopped (should be 0: a privacy check).

It stops by itself: no new call starts after ``--seconds``; calls still queued get ``--drain-seconds`` (default 120)
to finish and count as ``timeout`` after that; the server is then terminated. Models: the app's own discovery
(``models/`` and the ``CXR_HUB_*`` variables), or ``--random`` for random full-size models (see bench_app.py).

Usage::

    nice -n 19 .venv/bin/python benchmarks/load_test.py [--seconds 60] [--users 16] [--random] [--json out.json]
    .venv/bin/python benchmarks/load_test.py --seconds 10 --users 4      # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

EXAMPLES_DIR = REPO_ROOT / "examples"
CORPUS_DIR = REPO_ROOT / "tests" / "data" / "bad_inputs"
GENERIC_ERROR = "has raised an exception but has not enabled verbose error reporting"


@dataclass
class Outcome:
    """One call: what was sent, how it ended, how long it took."""

    valid: bool
    kind: str
    seconds: float
    message: str = ""


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident set size of a process in KiB; empty where /proc is missing."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def start_server(port: int, env: dict[str, str], log_path: Path, device: str | None) -> subprocess.Popen:
    log = log_path.open("wb")
    command = [sys.executable, str(REPO_ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        command + (["--device", device] if device else []),
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until the app answers HTTP 200 at ``url``; raises if it exits or does not answer in time."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before answering (see its log)")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the app did not answer at {url} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout`` s; returns True when the server had to be killed.

    The app purges its uploads on the way out; on a busy machine that takes a while, and a kill would leave them on
    disk (and be counted as a privacy failure), so the wait is generous.
    """
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True


def user(
    index: int,
    url: str,
    valid_files: list[Path],
    invalid_files: list[Path],
    invalid_fraction: float,
    stop_at: float,
    drain_until: float,
    results: Results,
) -> None:
    """One simulated visitor: calls /analyze back to back until ``stop_at``."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    rng = random.Random(index)
    try:
        client = Client(url, verbose=False, download_files=False)
    except Exception as exc:  # counted, not raised: one user failing to connect is a result too
        results.add(Outcome(True, f"connect:{type(exc).__name__}", 0.0, str(exc)[:200]))
        return
    while time.monotonic() < stop_at:
        valid = not invalid_files or rng.random() >= invalid_fraction
        path = rng.choice(valid_files if valid else invalid_files)
        start = time.monotonic()
        try:
            job = client.submit(
                image=handle_file(str(path)),
                model="Paper 4-class model",
                k=rng.choice([10, 50, 100]),
                patch_size=224,
                seed=rng.randrange(4),
                saliency_class="predicted class",
                api_name="/analyze",
            )
            job.result(timeout=max(1.0, drain_until - time.monotonic()))
            kind, message = ("ok", "") if valid else ("invalid_input_accepted", path.name)
        except AppError as exc:
            message = str(exc)
            expected = "refused" if not valid else "valid_input_refused"
            kind = "server_exception" if GENERIC_ERROR in message else expected
        except TimeoutError as exc:
            kind, message = "timeout", str(exc)
        except Exception as exc:
            kind, message = type(exc).__name__, str(exc)
            if "timeout" in message.lower() or "Timeout" in kind:
                kind = "timeout"
        results.add(Outcome(valid, kind, time.monotonic() - start, message[:200]))
        if kind == "timeout":
            return


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarize(results: Results, elapsed: float, rss: dict[str, Any]) -> dict[str, Any]:
    outcomes = results.outcomes
    answered = [o for o in outcomes if o.kind in ("ok", "refused", "valid_input_refused", "invalid_input_accepted")]
    ok = [o.seconds for o in outcomes if o.kind == "ok"]
    kinds = Counter(o.kind for o in outcomes)
    unexpected = {k: n for k, n in kinds.items() if k not in ("ok", "refused")}
    examples: dict[str, str] = {}
    for o in outcomes:
        if o.kind in unexpected and o.kind not in examples:
            examples[o.kind] = o.message
    return {
        "calls": len(outcomes),
        "answered": len(answered),
        "elapsed_s": round(elapsed, 1),
        "throughput_per_s": round(len(answered) / elapsed, 3) if elapsed > 0 else None,
        "latency_s": {
            "all_p50": percentile([o.seconds for o in answered], 50),
            "all_p95": percentile([o.seconds for o in answered], 95),
            "ok_p50": percentile(ok, 50),
            "ok_p95": percentile(ok, 95),
        },
        "outcomes": dict(kinds),
        "expected_refusals": kinds.get("refused", 0),
        "unexpected": unexpected,
        "unexpected_examples": examples,
        "server_rss_mib": {k: round(v / 1024, 1) for k, v in rss.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long users start new calls (default 60)")
    parser.add_argument("--users", type=int, default=16, help="concurrent gradio_client users (default 16)")
    parser.add_argument("--invalid-fraction", type=float, default=0.25, help="share of hostile uploads (0.25)")
    parser.add_argument("--drain-seconds", type=float, default=120.0, help="grace for queued calls after the end")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the app to load")
    parser.add_argument("--random", action="store_true", help="random full-size models instead of models/")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="the app's device (default: its own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the users' choices")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)

    valid_files = sorted(EXAMPLES_DIR.glob("*.jpg"))
    invalid_files = sorted(p for p in CORPUS_DIR.iterdir() if p.name != "make_corpus.py") if CORPUS_DIR.is_dir() else []
    if not valid_files:
        print(f"error: no example images in {EXAMPLES_DIR}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="cxr_load_test_"))
    # Uploads are renamed copies with a trailing comment byte string after the JPEG end marker (decoders ignore it):
    # the app's example gallery puts Gradio copies of the same examples in the same cache, and only files that were
    # uploaded may count in the privacy check below.
    (tmp / "uploads").mkdir()
    uploads = []
    for f in valid_files:
        copy = tmp / "uploads" / f"upload_{f.name}"
        copy.write_bytes(f.read_bytes() + b"cxr-load-test upload")
        uploads.append(copy)
    gallery_names = {f.name for f in valid_files}
    valid_files = uploads
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    note = "the app's discovery (models/ and CXR_HUB_* variables)"
    if args.random:
        from benchmarks.bench_app import random_models

        env.update(random_models(tmp / "models"))
        note = "random full-size models (FC-DenseNet103, ResNet-18 patch + global)"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = tmp / "server.log"
    proc = start_server(port, env, log_path, args.device)
    threads: list[threading.Thread] = []
    try:
        ready_s = wait_ready(url, proc, args.startup_timeout)
        rss_loaded = rss_kib(proc.pid).get("VmRSS")
        print(f"app ready at {url} after {ready_s:.1f} s (models: {note}); {args.users} users for {args.seconds:.0f} s")
        results = Results()
        start = time.monotonic()
        stop_at, drain_until = start + args.seconds, start + args.seconds + args.drain_seconds
        for i in range(args.users):
            t = threading.Thread(
                target=user,
                args=(args.seed * 1000 + i, url, valid_files, invalid_files, args.invalid_fraction),
                kwargs={"stop_at": stop_at, "drain_until": drain_until, "results": results},
                daemon=True,  # a call stuck past the drain time must not keep the process alive
            )
            t.start()
            threads.append(t)
        for t in threads:
            t.join(timeout=max(0.0, drain_until - time.monotonic()) + 5)
        elapsed = time.monotonic() - start
        rss = rss_kib(proc.pid)
        if rss_loaded is not None:
            rss["VmRSS_after_load"] = rss_loaded
    finally:
        stop_started = time.monotonic()
        killed = stop_server(proc)
        stop_seconds = time.monotonic() - stop_started
        # a privacy check for free: Gradio's shutdown should have deleted every upload (app.py handles SIGTERM)
        left_all = sorted(p.name for p in (tmp / "gradio").glob("*/*") if p.is_file())
        # the gallery's own copies of the committed examples are public and not uploads; everything else is
        left = [name for name in left_all if name not in gallery_names]
        gallery_left = len(left_all) - len(left)
        uploads_left = len(left)
        shutil.rmtree(tmp / "gradio", ignore_errors=True)
        shutil.rmtree(tmp / "models", ignore_errors=True)
        shutil.rmtree(tmp / "uploads", ignore_errors=True)
    summary = summarize(results, elapsed, rss)
    summary["uploads_left_after_shutdown"] = uploads_left
    summary["files_left_after_shutdown"] = left  # test files only (uploaded copies and corpus files)
    summary["gallery_copies_left"] = gallery_left
    summary["shutdown"] = {"seconds": round(stop_seconds, 1), "killed": killed}
    summary.update(models=note, users=args.users, seconds=args.seconds, server_log=str(log_path))
    summary["stuck_users"] = sum(t.is_alive() for t in threads)

    lat = summary["latency_s"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} s"

    print(f"calls: {summary['calls']}, answered: {summary['answered']} in {summary['elapsed_s']} s")
    print(f"throughput: {summary['throughput_per_s']} answered calls/s")
    print(f"latency all calls: p50 {fmt(lat['all_p50'])}, p95 {fmt(lat['all_p95'])}")
    print(f"latency valid analyses: p50 {fmt(lat['ok_p50'])}, p95 {fmt(lat['ok_p95'])}")
    print(f"outcomes: {json.dumps(summary['outcomes'])}")
    print(f"expected refusals (gr.Error for hostile files): {summary['expected_refusals']}")
    print(f"unexpected: {json.dumps(summary['unexpected']) if summary['unexpected'] else 'none'}")
    for kind, message in summary["unexpected_examples"].items():
        print(f"  e.g. {kind}: {message}")
    mib = summary["server_rss_mib"]
    print(
        f"server RSS: peak {mib.get('VmHWM', 'n/a')} MiB, after model load {mib.get('VmRSS_after_load', 'n/a')} MiB, "
        f"at the end {mib.get('VmRSS', 'n/a')} MiB"
    )
    print(f"uploads left on disk after the server stopped: {uploads_left}" + (f" ({', '.join(left)})" if left else ""))
    print(f"Gradio's copies of the example gallery left in its cache (public images, not uploads): {gallery_left}")
    print(f"shutdown: {stop_seconds:.1f} s after SIGTERM" + (" (killed: it did not exit in time)" if killed else ""))
    print(f"server log: {log_path}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["unexpected"] or uploads_left else 0


if __name__ == "__main__":
    sys.exit(main())
