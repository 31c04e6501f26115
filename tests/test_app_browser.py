"""A real browser drives the app: Playwright with Debian's Chromium (headless, no sandbox, no background networking).

Upload an example, press Analyse, move the K slider, see the outputs change, save a screenshot. Skips with a clear
reason where Chromium (``apt-get install chromium``) or the ``playwright`` package is missing; never downloads a
browser (``playwright install`` is not needed: Playwright's Python driver talks to the system Chromium).

Also a script, for the documentation's screenshot with whatever models the environment points to::

    python tests/test_app_browser.py --out docs/figures/app_screenshot.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "covid19_cohen_2168a917.jpg"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 120_000  # a loaded 2-core CI machine may take a while for the first analysis
# every layer of the annotated segmentation (base image + one image per structure and the patch boxes)
SEGMENTATION_SOURCES = "() => Array.from(document.querySelectorAll('#segmentation img'), i => i.src).join(' ')"


def chromium_path() -> str | None:
    """Debian's Chromium, or ``CHROMIUM`` from the environment; None when absent."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(page: Any, url: str, k_new: int = 37) -> dict[str, str]:
    """Uploads the example, presses Analyse, sets K to ``k_new`` and waits for the outputs to follow.

    Returns:
        the summary text and the segmentation image's address before and after the K change.
    """
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#analyse-button").wait_for(state="visible", timeout=TIMEOUT_MS)
    page.locator("#image-input input[type=file]").set_input_files(str(EXAMPLE))
    page.locator("#preview img").first.wait_for(state="visible", timeout=TIMEOUT_MS)
    page.locator("#analyse-button").click()
    summary = page.locator("#summary")
    page.wait_for_function(
        "() => /patches/.test(document.querySelector('#summary')?.innerText || '')", timeout=TIMEOUT_MS
    )
    page.locator("#segmentation img").first.wait_for(state="visible", timeout=TIMEOUT_MS)
    before = {"summary": summary.inner_text(), "segmentation": page.evaluate(SEGMENTATION_SOURCES)}
    # the slider's number box: typing a value and leaving the box is the slider's "release"
    box = page.locator("#k-slider input[type=number]")
    box.fill(str(k_new))
    box.press("Enter")
    box.blur()
    page.wait_for_function(
        f"() => /\\b{k_new}\\b/.test(document.querySelector('#summary')?.innerText || '')", timeout=TIMEOUT_MS
    )
    # the base image is the same picture (same cached file); the patch-box layer is new
    changed = f"(old) => ({SEGMENTATION_SOURCES})() !== old"
    page.wait_for_function(changed, arg=before["segmentation"], timeout=TIMEOUT_MS)
    after = {"summary": summary.inner_text(), "segmentation": page.evaluate(SEGMENTATION_SOURCES)}
    return {
        "summary_before": before["summary"],
        "summary_after": after["summary"],
        "segmentation_before": before["segmentation"],
        "segmentation_after": after["segmentation"],
    }


def run_browser(url: str, screenshot: Path, k_new: int = 37) -> dict[str, str]:
    """Starts Chromium, drives the app at ``url``, saves a full-page screenshot; returns :func:`drive`'s texts."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    assert executable is not None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            seen = drive(page, url, k_new)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return seen


def launch(demo: Any) -> str:
    import app

    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_kwargs())
    return f"http://127.0.0.1:{port}/"


@pytest.mark.slow
def test_browser_upload_analyse_move_k(tmp_path: Path) -> None:
    if chromium_path() is None:
        pytest.skip("Chromium not found (/usr/bin/chromium or $CHROMIUM): apt-get install chromium to run this test")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (see requirements.txt)")
    import torch
    from test_app import env_for, save_tiny_models

    import app
    from cxr_hub.demo import CXRApp

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    models = save_tiny_models(tmp_path / "models")
    engine = CXRApp(env_for(models, "seg", "clf4", "glob4"), tmp_path / "none", device="cpu")
    demo = app.build_demo(engine)
    try:
        url = launch(demo)
        shot = tmp_path / "app_browser.png"
        seen = run_browser(url, shot, k_new=37)
    finally:
        demo.close()
        torch.set_num_threads(n)
    assert "of 100 patches" in seen["summary_before"]
    assert "of 37 patches" in seen["summary_after"]
    assert seen["segmentation_before"] != seen["segmentation_after"]  # new patch boxes drawn
    assert shot.is_file() and shot.stat().st_size > 10_000


def main(argv: list[str] | None = None) -> int:
    """Screenshot for the docs with the models the environment / ``models/`` provide (no tiny test models)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "figures" / "app_screenshot.png")
    parser.add_argument("--k", type=int, default=60)
    parser.add_argument("--width", type=int, default=1100, help="longer side of the saved PNG (kept small)")
    args = parser.parse_args(argv)
    if chromium_path() is None:
        print("Chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO_ROOT))
    from PIL import Image

    import app
    from cxr_hub.demo import CXRApp

    demo = app.build_demo(CXRApp(device="cpu"))
    try:
        raw = args.out.with_suffix(".raw.png")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        seen = run_browser(launch(demo), raw, k_new=args.k)
    finally:
        demo.close()
    img = Image.open(raw)
    img.thumbnail((args.width, args.width * 4))
    img.convert("P", palette=Image.Palette.ADAPTIVE, colors=192).save(args.out, optimize=True)
    raw.unlink()
    print(seen["summary_after"])
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
