"""Modules moved by the package layout of issue #17: the old paths still work for one release, with one warning.

Each old module is a shim that re-exports the new home's objects (the same objects, not copies) and warns once, at
import, naming the new path; nothing in the repository imports an old path, and the new packages import one way
(``cli`` may import ``evaluation`` and ``hub``; those two never import ``cli``).
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings

import pytest
from conftest import REPO_ROOT

#: old module → (the new module named in its warning, {name: the module that now defines it}).
MOVED = {
    "cxr_hub.commands": (
        "cxr_hub.cli.predict",
        {
            "run_predict": "cxr_hub.cli.predict",
            "DEFAULT_SEGMENTATION": "cxr_hub.cli.predict",
            "run_preprocess": "cxr_hub.cli.preprocess",
            "batch_columns": "cxr_hub.cli.batch",
            "atomic_write": "cxr_hub.cli.batch",
            "sampling_mode": "cxr_hub.cli.options",
        },
    ),
    "cxr_hub.classification": (
        "cxr_hub.evaluation.classification",
        {
            "classification_report": "cxr_hub.evaluation.classification_metrics",
            "json_ready": "cxr_hub.evaluation.classification_metrics",
            "evaluate_classification": "cxr_hub.evaluation.classification",
            "DEFAULT_CLASSIFIERS": "cxr_hub.evaluation.classification",
            "run_evaluate": "cxr_hub.cli.evaluate",
        },
    ),
    "cxr_hub.biomarker_analysis": (
        "cxr_hub.evaluation.biomarker_study",
        {
            "run_biomarkers": "cxr_hub.evaluation.biomarker_study",
            "CSV_COLUMNS": "cxr_hub.evaluation.biomarker_study",
            "render_tables": "cxr_hub.evaluation.biomarker_statistics",
            "reference_from_report": "cxr_hub.evaluation.biomarker_statistics",
            "run_biomarkers_command": "cxr_hub.cli.biomarkers",
        },
    ),
    "cxr_hub.stats": ("cxr_hub.evaluation.stats", {"compare_classes": "cxr_hub.evaluation.stats"}),
    "cxr_hub.metrics": ("cxr_hub.evaluation.metrics", {"structure_scores": "cxr_hub.evaluation.metrics"}),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_warns_once_and_re_exports_the_new_objects(old: str, monkeypatch) -> None:
    new, names = MOVED[old]
    for name in names.values():
        importlib.import_module(name)  # the new homes first: only the shim's own warning is counted
    monkeypatch.delitem(sys.modules, old, raising=False)  # a fresh import of the shim, restored afterwards
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    ours = [w for w in caught if issubclass(w.category, DeprecationWarning) and old in str(w.message)]
    assert len(ours) == 1 and new in str(ours[0].message)
    for name, home in names.items():
        assert getattr(module, name) is getattr(sys.modules[home], name), name
    assert set(names) <= set(module.__all__)


def test_the_cli_names_of_the_former_hub_and_evaluation_modules_still_resolve_with_a_warning() -> None:
    import cxr_hub.evaluation
    import cxr_hub.hub
    from cxr_hub.cli import evaluate_segmentation, hub

    with pytest.warns(DeprecationWarning, match=r"cxr_hub\.cli\.hub\.add_parser"):
        assert cxr_hub.hub.add_parser is hub.add_parser
    with pytest.warns(DeprecationWarning, match=r"cxr_hub\.cli\.evaluate_segmentation"):
        assert cxr_hub.evaluation.add_parser is evaluate_segmentation.add_parser
    with pytest.raises(AttributeError):
        cxr_hub.hub.no_such_name  # noqa: B018


def _imports(path) -> set[str]:
    """The absolute module names a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def test_nothing_imports_an_old_path_and_evaluation_and_hub_never_import_the_cli() -> None:
    shims = {REPO_ROOT / "cxr_hub" / f"{old.rpartition('.')[2]}.py" for old in MOVED}
    files = [p for d in ("cxr_hub", "training", "benchmarks", "tests") for p in (REPO_ROOT / d).rglob("*.py")]
    files += [REPO_ROOT / "app.py"]
    offenders = []
    for path in files:
        if path in shims or path == REPO_ROOT / "tests" / "test_moved_modules.py":
            continue
        names = _imports(path)
        offenders += [f"{path.relative_to(REPO_ROOT)}: {old}" for old in MOVED if old in names]
        layer = path.relative_to(REPO_ROOT).parts[:2]
        if layer in {("cxr_hub", "evaluation"), ("cxr_hub", "hub")}:
            offenders += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if n.startswith("cxr_hub.cli")]
    assert not offenders, offenders
