"""The app's biomarker panel: this image's values beside our per-class reference and the paper's, in one table.

Our reference is measured on this project's curated data by ``python -m cxr_hub biomarkers`` and shipped as
:data:`REFERENCE_FILE`; the paper's values (Tables VI, VII, IX) come from :mod:`cxr_hub.paper`. Nothing is typed
here, and nothing here imports gradio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..paper import BIOMARKER_TABLES, INTENSITY_SCALE, LABEL4_TO_PAPER, PAPER_CLASS_NAMES, paper_mean_sd, to_paper_units
from .names import display_name, format_number

__all__ = [
    "BIOMARKER_PANEL_NOTE",
    "BIOMARKER_REFERENCE",
    "PANEL_BIOMARKERS",
    "REFERENCE_FILE",
    "REFERENCE_PENDING",
    "biomarker_panel",
    "load_biomarker_reference",
]

#: Per-class biomarker reference values measured on this project's curated data by ``python -m cxr_hub biomarkers``
#: (the run behind RESULTS.md's tables, written by ``cxr_hub.biomarker_analysis.write_outputs``), shipped with the
#: package: ``{"description", "classes", "n", "units", "values": {biomarker: {class: "mean ± SD"}}, "stats":
#: {biomarker: {class: {"n", "mean", "sd"}}}}``. The paper's values shown beside them (Tables VI, VII, IX) come from
#: :mod:`cxr_hub.paper`, never typed here.
REFERENCE_FILE = Path(__file__).resolve().parents[1] / "data" / "biomarker_reference.json"
REFERENCE_PENDING = "no per-class reference measured yet (run python -m cxr_hub biomarkers)"


def load_biomarker_reference(path: Path | None = None) -> dict[str, Any] | None:
    """The shipped per-class biomarker reference (see :data:`REFERENCE_FILE`), or None when absent or unreadable."""
    try:
        ref = json.loads((path or REFERENCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(ref, dict) or not isinstance(ref.get("values"), dict) or not ref.get("classes"):
        return None
    return ref


BIOMARKER_REFERENCE: dict[str, Any] | None = load_biomarker_reference()

#: The biomarker panel's rows: (key, label, digits in the paper's units); lung area has no counterpart in the paper.
PANEL_BIOMARKERS: tuple[tuple[str, str, int], ...] = (
    ("cardiothoracic_ratio", "cardiothoracic ratio", 3),
    ("lung_mean_intensity", "lung mean intensity", 3),
    ("lung_std_intensity", "lung intensity spread (SD)", 3),
    ("lung_area_fraction", "lung area (share of image)", 3),
)

#: What differs between the paper's per-class values and ours, shown under the panel's table.
BIOMARKER_PANEL_NOTE = (
    "Same units on every row: intensities are gray levels of the preprocessed image (histogram equalisation, gamma "
    f"0.5) divided by {INTENSITY_SCALE:.0f}, the paper's [0, 1] scale; the cardiothoracic ratio is a plain ratio. "
    "**How the two references differ:** the paper measured its own films with its own masks; ours are this "
    "project's films with our segmentation model's masks (the ratio from the largest connected heart and lung "
    "regions), and class and collection are confounded in our data. The paper keeps viral and COVID-19 apart, "
    "while our label4 class viral/COVID-19 merges them; tuberculosis is a class of the paper only — our data have "
    "no tuberculosis images, so our models never learnt it and we have no values for it."
)


def _paper_cell(biomarker: str, paper_class: str, digits: int) -> str:
    table = BIOMARKER_TABLES.get(biomarker)
    if table is None:
        return "not in the paper"
    mean, sd = paper_mean_sd(table, paper_class)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _ours_cell(reference: Mapping[str, Any] | None, biomarker: str, cls: str, digits: int) -> str:
    stats = ((reference or {}).get("stats") or {}).get(biomarker) or {}
    s = stats.get(cls)
    if s is None:
        if reference is None or not reference.get("stats"):
            return REFERENCE_PENDING
        if not (reference.get("n") or {}).get(cls):
            return "no images in our data, so our models do not have this class"
        return "no values"
    mean, sd = to_paper_units(biomarker, s["mean"]), to_paper_units(biomarker, s["sd"])
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def biomarker_panel(markers: Any, reference: Mapping[str, Any] | None = None) -> str:
    """The app's biomarker panel: this image's values, our per-class mean ± SD and the paper's, in the same units.

    Args:
        markers: the image's :class:`cxr_hub.biomarkers.Biomarkers` (``PreparedImage.biomarkers``).
        reference: our per-class reference (default :data:`BIOMARKER_REFERENCE`, the shipped file).

    Returns:
        Markdown: one table (a row for this image, then for each class a row of ours and a row per paper class it
        covers), the note on how the references differ, and where each comes from.
    """
    ref = BIOMARKER_REFERENCE if reference is None else reference
    header = "| | " + " | ".join(label for _, label, _ in PANEL_BIOMARKERS) + " |"
    lines = [header, "|---" * (1 + len(PANEL_BIOMARKERS)) + "|"]
    image_cells = []
    for key, _, digits in PANEL_BIOMARKERS:
        value = getattr(markers, key)
        if key == "lung_area_fraction":
            left, right = markers.left_lung_area_fraction, markers.right_lung_area_fraction
            image_cells.append(
                f"{value:.{digits}f} (left {left:.{digits}f}, right {right:.{digits}f})"
                if math.isfinite(value)
                else "n/a"
            )
        else:
            image_cells.append(format_number(to_paper_units(key, value), f".{digits}f"))
    lines.append("| **this image** | " + " | ".join(image_cells) + " |")
    classes = list(ref["classes"]) if ref else list(LABEL4_TO_PAPER)
    for cls in classes:
        n = (ref or {}).get("n", {}).get(cls)
        ours = f"{display_name(cls)}, ours" + (f" (n = {n})" if n else "")
        cells = [_ours_cell(ref, key, cls, digits) for key, _, digits in PANEL_BIOMARKERS]
        if len(set(cells)) == 1 and "±" not in cells[0]:
            # one reason for the whole row (no images, nothing measured yet): say it once
            cells = [cells[0]] + ["—"] * (len(cells) - 1)
        lines.append(f"| {ours} | " + " | ".join(cells) + " |")
        for paper_class in LABEL4_TO_PAPER.get(cls, ()):
            cells = [_paper_cell(key, paper_class, digits) for key, _, digits in PANEL_BIOMARKERS]
            lines.append(f"| {PAPER_CLASS_NAMES[paper_class]}, paper | " + " | ".join(cells) + " |")
    parts = [
        "\n".join(lines),
        "This image's values come from its own segmentation (pixels of the original image, square pixels assumed); "
        "one image's value says little on its own. The paper compares such statistics between classes "
        "(Tables VI, VII, IX: mean ± SD per class).",
        BIOMARKER_PANEL_NOTE,
        f"Ours: {ref['description']}" if ref else f"Ours: {REFERENCE_PENDING}.",
        "Paper: Oh, Park, Ye, IEEE TMI 2020, Tables VI, VII and IX (cxr_hub/data/paper_tables.json).",
    ]
    parts += [f"- {w}" for w in getattr(markers, "warnings", [])]
    return "\n\n".join(parts)
