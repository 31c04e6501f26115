"""Which manifest rows an evaluation scores: by a saved split and by source (shared by every study here).

Plain functions on :class:`cxr_hub.manifest.ManifestRow` lists; they read the split JSON that ``training/data.py``
writes and nothing else, so choosing rows never loads a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..manifest import ManifestRow

__all__ = ["select_rows"]


def select_rows(
    rows: Sequence[ManifestRow],
    split_file: str | Path | None = None,
    split: str | None = None,
    sources: Iterable[str] | None = None,
) -> list[ManifestRow]:
    """Filters manifest rows by a saved split (``"segmentation:val"``) and by source.

    Args:
        rows: the manifest's rows (:func:`cxr_hub.manifest.read_manifest`).
        split_file: split JSON made by ``training/data.py`` (``{"splits": {group: {row id: name}}}``).
        split: ``GROUP:NAME`` to keep, e.g. ``"classification:test"``; None keeps every row.
        sources: keep only rows of these sources; None (or empty) keeps every source.

    Returns:
        The kept rows, in their input order.

    Raises:
        ValueError: ``split`` without ``split_file``, or a ``split`` that is not ``GROUP:NAME`` of the file.
    """
    selected = list(rows)
    if split:
        if not split_file:
            raise ValueError("--split needs --split-file (a split JSON made by training/data.py).")
        group, _, name = split.partition(":")
        splits = json.loads(Path(split_file).read_text())["splits"]
        if group not in splits or not name:
            raise ValueError(f"--split must look like GROUP:NAME with GROUP in {sorted(splits)}, got {split!r}.")
        selected = [r for r in selected if splits[group].get(r.id) == name]
    if sources:
        wanted = set(sources)
        selected = [r for r in selected if r.source in wanted]
    return selected
