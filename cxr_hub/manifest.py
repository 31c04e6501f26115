"""Reading data folders in the cxr-hub manifest format (``manifest.csv`` + ``images/`` + ``masks/``).

A manifest has one row per image with at least ``id`` and ``image`` (a path relative to the manifest's folder);
optional columns: ``mask`` (label map PNG: 0 background, 1 heart, 2 left lung, 3 right lung — the patient's
left/right), ``mask_source``, ``source``, ``patient_id``, ``label4``, ``label3``, ``view``. Works for any folder in
this format, not only the project's curated data.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .io import CXRInputError

STRUCTURES = ("heart", "left_lung", "right_lung")
# Which structures each known mask source delineates; a structure a source does not annotate is never scored.
MASK_SOURCE_STRUCTURES: dict[str, tuple[str, ...]] = {
    "scr": ("heart", "left_lung", "right_lung"),
    "v7labs": ("left_lung", "right_lung"),
}


@dataclass(frozen=True)
class ManifestRow:
    """One image of a manifest; paths are absolute."""

    id: str
    image: Path
    mask: Path | None
    mask_source: str
    source: str
    patient_id: str
    label4: str
    label3: str
    view: str
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def label(self, task: str) -> str:
        """The row's label for ``task`` ("label4" or "label3"); empty when the row has none."""
        if task not in ("label4", "label3"):
            raise ValueError(f"task must be 'label4' or 'label3', got {task!r}.")
        return self.label4 if task == "label4" else self.label3

    def annotated_structures(self, label_map: np.ndarray | None = None) -> tuple[str, ...]:
        """Structures the mask delineates: from the mask source when known, else those present in the map."""
        if self.mask_source in MASK_SOURCE_STRUCTURES:
            return MASK_SOURCE_STRUCTURES[self.mask_source]
        if label_map is None:
            return STRUCTURES
        present = set(np.unique(label_map).tolist())
        return tuple(s for i, s in enumerate(STRUCTURES, start=1) if i in present)


def resolve_manifest(path: str | Path) -> Path:
    """Accepts a manifest file or a folder holding ``manifest.csv``; returns the CSV path."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.csv"
    if not p.is_file():
        raise FileNotFoundError(f"No manifest at {p}: pass a manifest.csv or a folder that contains one.")
    return p


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Reads a manifest; image and mask paths are resolved relative to the manifest's folder.

    Raises:
        FileNotFoundError: no manifest there.
        ValueError: required columns missing or duplicate ids.
    """
    csv_path = resolve_manifest(path)
    root = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"id", "image"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path} lacks the required column(s) {sorted(missing)}.")
        raw = list(reader)
    rows: list[ManifestRow] = []
    seen: dict[str, dict[str, str]] = {}
    same = ("image", "mask", "patient_id", "label4", "label3")
    known = {"id", "image", "mask", "mask_source", "source", "patient_id", "label4", "label3", "view"}
    for r in raw:
        rid = r["id"].strip()
        if rid in seen:
            # one film can be listed under two source patient ids with a merged patient_id: keep it once
            if any((seen[rid].get(c) or "").strip() != (r.get(c) or "").strip() for c in same):
                raise ValueError(f"{csv_path}: id {rid!r} appears twice with different image, mask, patient or labels.")
            continue
        seen[rid] = r
        mask = (r.get("mask") or "").strip()
        rows.append(
            ManifestRow(
                id=rid,
                image=root / r["image"].strip(),
                mask=root / mask if mask else None,
                mask_source=(r.get("mask_source") or "").strip(),
                source=(r.get("source") or "").strip() or "unknown",
                # without a patient column each image is its own patient (the only safe default for splitting)
                patient_id=(r.get("patient_id") or "").strip() or rid,
                label4=(r.get("label4") or "").strip(),
                label3=(r.get("label3") or "").strip(),
                view=(r.get("view") or "").strip(),
                extra={k: v for k, v in r.items() if k not in known and k is not None},
            )
        )
    return rows


def load_label_map(path: str | Path) -> np.ndarray:
    """Loads a label-map PNG as uint8 (H, W) with values in {0, 1, 2, 3}.

    Raises:
        CXRInputError: unreadable file or values outside 0..3.
    """
    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except (OSError, ValueError) as exc:
        raise CXRInputError(f"Could not read the mask {path}: {exc}") from exc
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.size and int(arr.max()) > 3:
        raise CXRInputError(f"Mask {path} has label values up to {int(arr.max())}; expected 0..3.")
    return arr.astype(np.uint8)
