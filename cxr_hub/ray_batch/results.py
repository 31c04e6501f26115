"""The results files: the output's format (:func:`output_format`: Parquet or CSV by its suffix), the hidden folder
of part files beside it (:func:`parts_folder`), rows of CSV cells to and from typed Arrow tables
(:func:`cells_to_table`, :func:`table_to_cells`), reading an output (:func:`read_results`), the rows and worker
settings an earlier or interrupted run left (``_read_previous``, ``_previous_settings``) and the atomic writers of
the output and of one part file (``_write_output``, ``_write_part``).

Imports :mod:`~cxr_hub.ray_batch.spec`; pyarrow and the single-process batch code on call.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .spec import OUTPUT_SUFFIXES, WORKER_SETTINGS_KEY, RayPredictError, _batch

if TYPE_CHECKING:
    import pyarrow as pa


def output_format(output: str | Path) -> str:
    """``"parquet"`` or ``"csv"``, from the suffix of ``output``.

    Raises:
        RayPredictError: another suffix.
    """
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise RayPredictError(
            f"--out {Path(output).name}: with --engine ray the output is one file ending in .parquet or .csv."
        )
    return suffix[1:]


def parts_folder(output: str | Path) -> Path:
    """The hidden folder beside ``output`` where a run keeps its flushed rows until it completes."""
    output = Path(output)
    return output.with_name(f".{output.name}.parts")


def _arrow_type(column: str, b: SimpleNamespace) -> pa.DataType:
    """The Parquet type of a batch column: votes and settings are integers, probabilities and biomarkers floats."""
    import pyarrow as pa

    if column.startswith("votes_") or column in b.settings_columns:
        return pa.int64()
    if column.startswith("probability_") or column in b.biomarker_columns:
        return pa.float64()
    return pa.string()


def cells_to_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> pa.Table:
    """Rows of CSV cells as a typed Arrow table (empty cells become nulls).

    Raises:
        RayPredictError: a cell that does not parse as its column's type.
    """
    import pyarrow as pa

    b = _batch()
    arrays = []
    for j, column in enumerate(header):
        kind = _arrow_type(column, b)
        cells = [r[j] for r in rows]
        try:
            if pa.types.is_int64(kind):
                values: list[Any] = [None if c == "" else int(c) for c in cells]
            elif pa.types.is_float64(kind):
                values = [None if c == "" else float(c) for c in cells]
            else:
                values = list(cells)
        except ValueError:
            raise RayPredictError(
                f"column {column!r} holds a value that is not a {kind}: not a cxr-hub batch output."
            ) from None
        arrays.append(pa.array(values, kind))
    return pa.Table.from_arrays(arrays, schema=pa.schema([pa.field(c, _arrow_type(c, b)) for c in header]))


def table_to_cells(table: pa.Table, header: Sequence[str]) -> list[list[str]]:
    """The inverse of :func:`cells_to_table`: floats with the single-process CSV's six decimals, nulls as ``""``.

    Exact for every value a batch writes (they were parsed from six-decimal text).
    """
    import pyarrow as pa

    columns = []
    for column in header:
        kind = table.schema.field(column).type
        values = table.column(column).to_pylist()
        if pa.types.is_floating(kind):
            cells = ["" if v is None or not math.isfinite(v) else f"{v:.6f}" for v in values]
        else:
            cells = ["" if v is None else str(v) for v in values]
        columns.append(cells)
    return [list(r) for r in zip(*columns, strict=True)] if columns else []


def read_results(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """The header and rows (as CSV cells) of a batch output, Parquet or CSV; for resuming and for comparing runs."""
    path = Path(path)
    if output_format(path) == "csv":
        import csv

        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        return (rows[0], rows[1:]) if rows else ([], [])
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.column_names, table_to_cells(table, table.column_names)


def _read_previous(
    output: Path, header: list[str], settings: dict[str, str], b: SimpleNamespace
) -> dict[str, list[str]]:
    """The rows already made (output, then parts), by row name, first seen kept; refuses another run's files."""
    import pyarrow.parquet as pq

    done: dict[str, list[str]] = {}
    sources: list[tuple[Path, list[list[str]]]] = []
    if output.exists() and output.stat().st_size:
        if output_format(output) == "csv":
            try:
                rows, _torn = b.read_rows(output, header)  # a torn last row is dropped; the final write removes it
            except ValueError as exc:
                raise RayPredictError(str(exc)) from None
        else:
            try:
                table = pq.read_table(output)
            except Exception as exc:  # pyarrow raises several types for a non-Parquet file
                raise RayPredictError(
                    f"{output} is not a readable Parquet file ({type(exc).__name__}): pass another --out, or delete it."
                ) from None
            if table.column_names != header:
                raise RayPredictError(
                    f"{output} does not have the columns of this run (other classifier classes, or not a cxr-hub "
                    "batch output). Pass another --out, or delete the file to start over."
                )
            rows = [r for r in table_to_cells(table, header) if r[1] in b.status]
        sources.append((output, rows))
    parts = parts_folder(output)
    for part in sorted(parts.glob("part-*.parquet")) if parts.is_dir() else []:
        try:
            table = pq.read_table(part)
        except Exception as exc:  # as above
            raise RayPredictError(
                f"{part.name} in {parts} is not readable ({type(exc).__name__}): delete it; its films run again."
            ) from None
        if table.column_names != header:
            raise RayPredictError(
                f"{parts} holds rows of another run (other columns): delete the folder, or pass another --out."
            )
        sources.append((parts, table_to_cells(table, header)))
    for where, rows in sources:
        problem = b.settings_problem(where, header, rows, settings)
        if problem:
            raise RayPredictError(problem)
        for row in rows:
            done.setdefault(row[0], row)
    return done


def _previous_settings(output: Path) -> list[dict[str, Any]]:
    """The worker settings recorded in an existing Parquet output (none for a CSV or a new file)."""
    if output_format(output) != "parquet" or not output.is_file():
        return []
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(output).metadata or {}
        return list(json.loads(metadata.get(WORKER_SETTINGS_KEY.encode(), b"[]")))
    except (OSError, ValueError):  # an unreadable file was refused or replaced before this point
        return []


def _write_output(path: Path, header: list[str], rows: list[list[str]], metadata: Mapping[str, str]) -> None:
    """Writes the whole output (a temporary file, then a rename); ``metadata`` goes into a Parquet file's schema."""
    b = _batch()
    if output_format(path) == "csv":
        b.rewrite_csv(path, header, rows)
        return
    import pyarrow.parquet as pq

    table = cells_to_table(header, rows)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    b.atomic_write(path, lambda f: pq.write_table(table, f))


def _write_part(parts: Path, header: list[str], rows: list[list[str]]) -> None:
    """Writes ``rows`` as one new part file in ``parts`` (a temporary name, then a rename: whole or absent)."""
    import pyarrow.parquet as pq

    parts.mkdir(parents=True, exist_ok=True)
    table = cells_to_table(header, rows)
    _batch().atomic_write(
        parts / f"part-{time.time_ns():020d}-{os.getpid()}.parquet", lambda f: pq.write_table(table, f)
    )
