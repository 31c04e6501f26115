"""The package's import graph flows one way: no module of cxr_hub imports from a layer above its own.

Layers, bottom to top (``../shared/DESIGN.md``; README, "Layout"):

0. ``models``: ships with the weights and imports only itself (``trust_remote_code``);
1. the method's vocabulary and infrastructure: io, loading, preprocessing, patches, saliency, biomarkers,
   postprocessing, validity, visualize, presets, paper, manifest, and ``runtime`` (how the networks run);
2. ``pipeline``: the method;
3. ``evaluation``, ``hub``, ``demo``: libraries built on the method (no argparse, no Gradio);
4. ``cli`` and ``ray_batch`` (the ``predict --engine ray`` engine, which shares the batch CSV format with ``cli``).

Imports under ``if TYPE_CHECKING:`` are annotations only and do not count. The deprecated modules that forward an
old path to a new one (``cxr_hub.commands``, ...) sit above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cxr_hub"

LAYERS: dict[str, int] = {
    "models": 0,
    **dict.fromkeys(
        (
            "io",
            "loading",
            "preprocessing",
            "patches",
            "saliency",
            "biomarkers",
            "postprocessing",
            "validity",
            "visualize",
            "presets",
            "paper",
            "manifest",
            "runtime",
            "data",
        ),
        1,
    ),
    "pipeline": 2,
    **dict.fromkeys(("evaluation", "hub", "demo"), 3),
    **dict.fromkeys(("cli", "ray_batch"), 4),
}
#: old module paths kept as forwarding shims (they import their new home, which is fine at any layer)
SHIMS = {"commands", "classification", "biomarker_analysis", "stats", "metrics", "quantization", "fusion", "hardware"}


def _part(path: Path) -> str:
    """The top-level part of cxr_hub a file belongs to ("pipeline" for cxr_hub/pipeline/core.py)."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _runtime_imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, imported top-level part of cxr_hub) for every import that runs (TYPE_CHECKING blocks skipped)."""
    tree = ast.parse(path.read_text() if source is None else source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    rel = path.relative_to(PACKAGE)
    package = ["cxr_hub", *rel.parts[:-1]]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "cxr_hub" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def _modules() -> list[Path]:
    """Every module of cxr_hub except the package's own ``__init__`` (lazy exports) and ``__main__``."""
    root = {PACKAGE / "__init__.py", PACKAGE / "__main__.py"}
    return sorted(p for p in PACKAGE.rglob("*.py") if p not in root)


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(p) for p in _modules()} - SHIMS
    assert parts <= set(LAYERS), f"give these a layer in tests/test_layers.py: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_layer_above(path):
    part = _part(path)
    if part in SHIMS:
        return
    above = [
        f"line {line}: cxr_hub.{target} (layer {LAYERS[target]})"
        for line, target in _runtime_imports(path)
        if target in LAYERS and LAYERS[target] > LAYERS[part]
    ]
    assert not above, f"{path.relative_to(PACKAGE)} (layer {LAYERS[part]}) imports from above: {above}"


def test_models_import_only_themselves():
    """What ships beside the weights runs without cxr_hub: its files import each other relatively, nothing else."""
    for path in (PACKAGE / "models").glob("*.py"):
        assert {target for _, target in _runtime_imports(path)} <= {"models"}, path.name


def test_the_import_reader_sees_relative_absolute_and_skips_type_checking():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from ..pipeline import CXRPipeline\n"
        "from . import arguments\n"
        "import cxr_hub.cli\n"
        "if TYPE_CHECKING:\n"
        "    from ..demo import CXRApp\n"
    )
    found = _runtime_imports(PACKAGE / "validity" / "fake.py", source)
    assert found == [(2, "pipeline"), (3, "validity"), (4, "cli")]
