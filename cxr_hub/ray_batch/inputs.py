"""The films of a run: :func:`list_inputs` (SOURCE as a folder, a manifest, a text file of paths or one image) and
``_named_inputs`` (each film's absolute path and row name, refusing two films with one name).

Imports :mod:`~cxr_hub.ray_batch.spec`; :mod:`cxr_hub.manifest` and the single-process batch code on call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .spec import LIST_SUFFIXES, MANIFEST_SUFFIX, RayPredictError, _batch


def list_inputs(source: str | Path) -> list[Path]:
    """The films of SOURCE, in the order their rows are written.

    Args:
        source: a folder (its images, exactly as the single-process batch ``predict`` picks them: sorted by name,
            no sub-folders, no hidden files); a cxr-hub manifest (``.csv`` with ``id`` and ``image`` columns, paths
            relative to its folder; manifest order); a text file of paths (``.txt`` or ``.lst``: one path per line,
            relative paths against the file's folder, blank lines and ``#`` comments skipped; file order); or one
            image file.

    Returns:
        The paths. A path that does not exist is kept: its film gets an error row, like a corrupt one.

    Raises:
        RayPredictError: SOURCE does not exist, or a manifest lacks its columns (the message never names a folder).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _batch().batch_inputs(path)
    if not path.is_file():
        raise RayPredictError(
            "SOURCE was not found: pass a folder of images, a manifest (.csv) or a text file of paths (.txt)."
        )
    suffix = path.suffix.lower()
    if suffix == MANIFEST_SUFFIX:
        from ..manifest import read_manifest

        try:
            return [row.image for row in read_manifest(path)]
        except (ValueError, FileNotFoundError) as exc:
            raise RayPredictError(
                f"SOURCE is not a cxr-hub manifest: {str(exc).replace(str(path), path.name)}"
            ) from None
    if suffix in LIST_SUFFIXES:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        entries = [line.strip() for line in lines]
        return [path.parent / Path(e).expanduser() for e in entries if e and not e.startswith("#")]
    return [path]


def _named_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """``(absolute path, row name)`` of each input; refuses two films with one name (rows are keyed by the name).

    Absolute, because a worker does not run in the driver's working directory.
    """
    row_name = _batch().row_name
    named = [(Path(p).expanduser().absolute(), row_name(Path(p))) for p in inputs]
    seen: dict[str, int] = {}
    for _, name in named:
        seen[name] = seen.get(name, 0) + 1
    clashes = sorted(n for n, c in seen.items() if c > 1)
    if clashes:
        shown = ", ".join(clashes[:3]) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
        raise RayPredictError(
            f"{len(clashes)} file name(s) occur more than once among the inputs ({shown}): a row names its film by "
            "the file name alone, so names must be unique. Rename the files (pseudonyms) or run each folder apart."
        )
    return named
