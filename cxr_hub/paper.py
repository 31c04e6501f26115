"""The paper's published numbers (Oh, Park, Ye, IEEE TMI 2020, Tables III-XVII), read from one data file.

Every place that shows a number of the paper beside ours (the app's biomarker panel, ``RESULTS.md`` and the README
through ``training/results_tables.py``, the model cards through :mod:`cxr_hub.hub`) reads it here, so no paper number
is typed by hand anywhere. ``cxr_hub/data/paper_tables.json`` is a byte copy of the project's
``../shared/paper/tables.json`` (``tests/test_paper.py`` checks it wherever that file exists); it ships in the wheel
because the app also runs on machines and Spaces without ``../shared``.

Units are the paper's: classification metrics in percent, Jaccard indices and the cardiothoracic ratio as plain
ratios, and lung intensities as gray levels of the preprocessed image scaled to [0, 1]. Our intensities are 8-bit
gray levels of the same preprocessing, so they compare after division by :data:`INTENSITY_SCALE`
(:func:`to_paper_units`).

Example::

    from cxr_hub.paper import format_mean_sd, paper_mean_sd, paper_row

    paper_row("table_x_macro_metrics_percent", "patch")["f1"]  # the patch model's macro F1, percent
    format_mean_sd(paper_mean_sd("table_ix_cardiothoracic_ratio", "normal"))  # "mean ± SD"
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BIOMARKER_TABLES",
    "BIOMARKER_TABLES_NO_AP_SUPINE",
    "INTENSITY_BIOMARKERS",
    "INTENSITY_SCALE",
    "LABEL4_TO_PAPER",
    "PAPER_CLASS_NAMES",
    "PAPER_FILE",
    "format_mean_sd",
    "format_number",
    "generated_blocks",
    "paper_mean_sd",
    "paper_row",
    "paper_source",
    "paper_table",
    "paper_tables",
    "paper_value",
    "replace_generated",
    "strip_generated",
    "to_paper_units",
]

#: The package's copy of the paper's tables (shipped as package data).
PAPER_FILE = Path(__file__).resolve().parent / "data" / "paper_tables.json"

#: Our intensities are gray levels in [0, 255]; the paper's are the same gray levels scaled to [0, 1].
INTENSITY_SCALE = 255.0
#: Biomarkers measured in gray levels (divided by :data:`INTENSITY_SCALE` to compare with the paper).
INTENSITY_BIOMARKERS = frozenset({"lung_mean_intensity", "lung_std_intensity"})

#: Our biomarker name → the paper's table of per-class mean and SD (all views).
BIOMARKER_TABLES: dict[str, str] = {
    "lung_mean_intensity": "table_vi_lung_mean_intensity",
    "lung_std_intensity": "table_vii_lung_intensity_sd",
    "cardiothoracic_ratio": "table_ix_cardiothoracic_ratio",
}
#: The same with AP supine films excluded (the paper's Table VIII has the intensity SD only).
BIOMARKER_TABLES_NO_AP_SUPINE: dict[str, str] = {"lung_std_intensity": "table_viii_lung_intensity_sd_no_ap_supine"}

#: Our label4 class → the paper's classes it covers: the paper keeps viral and COVID-19 apart, our label4 merges them.
LABEL4_TO_PAPER: dict[str, tuple[str, ...]] = {
    "normal": ("normal",),
    "bacterial": ("bacterial",),
    "tuberculosis": ("tuberculosis",),
    "viral_covid": ("viral", "covid19"),
}
#: How the paper's class keys read in text.
PAPER_CLASS_NAMES: dict[str, str] = {
    "normal": "normal",
    "bacterial": "bacterial",
    "tuberculosis": "tuberculosis",
    "viral": "viral",
    "covid19": "COVID-19",
    "viral_covid": "viral + COVID-19",
    "pneumonia": "pneumonia",
}


@functools.cache
def _tables() -> dict[str, Any]:
    try:
        data = json.loads(PAPER_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"Cannot read the paper's tables from {PAPER_FILE} ({exc}); reinstall cxr-hub, or copy "
            "../shared/paper/tables.json there."
        ) from exc
    if not isinstance(data, dict):
        raise RuntimeError(f"{PAPER_FILE} must hold a JSON object of tables; copy ../shared/paper/tables.json there.")
    return data


def paper_tables() -> dict[str, Any]:
    """Every table of the paper's file, as a fresh copy (callers may modify it)."""
    return copy.deepcopy(_tables())


def paper_source() -> str:
    """Where the numbers come from: the paper's reference and how they were transcribed."""
    return str(_tables()["source"])


def paper_table(name: str) -> Any:
    """One table of the paper's file (a copy), e.g. ``paper_table("table_x_macro_metrics_percent")``.

    Args:
        name: a top-level key of ``paper_tables.json``.

    Returns:
        The table as stored: a dict of rows, or a plain value for single numbers.

    Raises:
        KeyError: no such table; the message lists the names there are.
    """
    tables = _tables()
    if name not in tables:
        raise KeyError(f"The paper has no table {name!r} in {PAPER_FILE.name}; use one of: {', '.join(tables)}.")
    return copy.deepcopy(tables[name])


def paper_value(table: str, *keys: str) -> Any:
    """A value inside a table by its keys, e.g. ``paper_value("table_v_segmentation_jaccard", "jsrt_preprocessed",
    "lung")`` → ``[mean, sd]``.

    Raises:
        KeyError: a table or key that does not exist; the message names the keys available at that level.
    """
    value = paper_table(table)
    path = [table]
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            have = ", ".join(map(str, value)) if isinstance(value, Mapping) else type(value).__name__
            raise KeyError(f"The paper's {'/'.join(path)} has no {key!r}; available: {have}.")
        value = value[key]
        path.append(key)
    return value


def paper_row(table: str, row: str) -> dict[str, Any]:
    """One row of a table with ``columns`` (Tables III, IV, X, XI, XII, XIV, XVI, XVII) as ``{column: value}``.

    Raises:
        KeyError: no such table or row.
        ValueError: the table has no ``columns``, or the row's length does not match them.
    """
    data = paper_table(table)
    columns = data.get("columns") if isinstance(data, Mapping) else None
    if not columns:
        raise ValueError(f"The paper's {table} has no 'columns'; read it with paper_value({table!r}, ...).")
    values = paper_value(table, row)
    if not isinstance(values, Sequence) or len(values) != len(columns):
        raise ValueError(f"The paper's {table}/{row} does not have one value per column ({columns}).")
    return dict(zip(columns, values, strict=True))


def paper_mean_sd(table: str, *keys: str) -> tuple[float, float]:
    """A ``[mean, SD]`` pair of the paper, e.g. ``paper_mean_sd("table_ix_cardiothoracic_ratio", "covid19")``.

    Raises:
        KeyError: no such table or key.
        ValueError: the value there is not a pair of numbers.
    """
    value = paper_value(table, *keys)
    if not (isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int | float) for v in value)):
        raise ValueError(f"The paper's {table}/{'/'.join(keys)} is {value!r}, not a [mean, SD] pair.")
    return float(value[0]), float(value[1])


def format_number(value: float | int | None, digits: int = 1) -> str:
    """A number as the paper prints it: integers as integers, others with ``digits`` decimals; ``"–"`` for None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}"


def format_mean_sd(pair: Sequence[float] | None, digits: int = 3) -> str:
    """``"mean ± SD"`` of a pair such as :func:`paper_mean_sd` returns; ``"–"`` for None."""
    if pair is None:
        return "–"
    mean, sd = pair
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def to_paper_units(biomarker: str, value: float) -> float:
    """One of our biomarker values (or SDs) in the paper's units: gray levels / 255 for intensities, else unchanged."""
    return value / INTENSITY_SCALE if biomarker in INTENSITY_BIOMARKERS else value


# ----------------------------------------------------------------------------------------------------------------
# Generated sections: the parts of markdown files (RESULTS.md, README.md, model cards) that code renders
# ----------------------------------------------------------------------------------------------------------------

_BLOCK = re.compile(
    r"<!-- generated:(?P<name>[\w.-]+)(?P<hint>[^>]*?)-->\n(?P<body>.*?)<!-- /generated:(?P=name) -->", re.S
)


def generated_blocks(text: str) -> dict[str, str]:
    """The generated sections of a markdown text, ``{name: body}``, in order.

    A section is ``<!-- generated:NAME hint -->`` on its own line, its body, then ``<!-- /generated:NAME -->``.
    """
    return {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}


def strip_generated(text: str) -> str:
    """The text with every generated section's body removed (what a person wrote and must not hold paper numbers)."""
    return _BLOCK.sub("", text)


def replace_generated(text: str, name: str, body: str, hint: str = "") -> str:
    """``text`` with the body of the generated section ``name`` replaced by ``body``.

    Args:
        text: markdown holding the section's markers.
        name: the section's name.
        body: its new content (a final newline is added when missing).
        hint: text for the opening marker (who renders the section); the marker's existing hint is kept when empty.

    Raises:
        ValueError: the text has no such section (add its two marker lines where it belongs).
    """
    body = body if body.endswith("\n") else body + "\n"
    found = False

    def _sub(m: re.Match[str]) -> str:
        nonlocal found
        if m.group("name") != name:
            return m.group(0)
        found = True
        head = f" {hint.strip()} " if hint.strip() else m.group("hint")
        return f"<!-- generated:{name}{head}-->\n{body}<!-- /generated:{name} -->"

    out = _BLOCK.sub(_sub, text)
    if not found:
        raise ValueError(
            f"No generated section {name!r}: add the lines '<!-- generated:{name} -->' and "
            f"'<!-- /generated:{name} -->' where it belongs, then render again."
        )
    return out
