"""Command-line entry point: ``python -m cxr_hub <command>`` (or ``cxr-hub <command>``).

What lives here: one thin module per command (``preprocess``, ``predict``, ``evaluate``, ``evaluate_segmentation``,
``biomarkers``, ``hub`` for ``push`` and ``model-card``), each parsing its arguments, calling a library function and
printing; :mod:`cxr_hub.cli.batch` and :mod:`cxr_hub.cli.names`, the batch CSV and file-naming rules of ``predict``
(shared with :mod:`cxr_hub.ray_batch`); and, in this file, :func:`main`, :func:`build_parser`, :data:`COMMANDS` and
the rules every command follows. What it may import: every layer below it (:mod:`cxr_hub.evaluation`,
:mod:`cxr_hub.hub`, :mod:`cxr_hub.pipeline` and the method's modules). Within the package only ``cxr_hub.__main__``,
:mod:`cxr_hub.ray_batch` (the Ray engine writes the rows of :mod:`cxr_hub.cli.batch`) and the deprecated aliases of
the old module paths import it.

Each command lives in its own module and registers itself through an ``add_parser(subparsers)`` function, so the
CLI grows without one file knowing every command's options. :data:`COMMANDS` names each command's module and
one-line help, so that only the module of the command being run is imported: ``--help`` and a mistyped command
import no torch or transformers.

Two rules hold for every command, here in one place:

* **Errors are one line.** An input error (:class:`cxr_hub.CXRInputError`, a missing file) prints ``error: ...`` and
  exits with 2; Ctrl-C prints ``interrupted`` and exits with 130 (a batch ``predict`` continues with ``--resume``).
* **Inputs are named by file name only.** Directory names can carry patient names, and a terminal log is an output
  too: while a command runs, every line it prints has the directories of its input paths (IMAGE, FOLDER,
  ``--manifest``, ...) cut out, ``<dir>/scan.dcm`` becoming ``scan.dcm`` and the directory alone ``<input folder>``.
  Messages are written that way in the first place; this is the net under them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

#: command → (module of cxr_hub.cli that registers it, the one-line help of the command list), in listing order.
COMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": ("preprocess", "apply the paper's preprocessing to one image and write PNGs"),
    "predict": (
        "predict",
        "classify a chest X-ray (result.json + overlay PNGs) or a folder of them (one CSV row per image)",
    ),
    "evaluate-segmentation": (
        "evaluate_segmentation",
        "score a segmentation model against a manifest's masks (Jaccard/Dice, worst cases, under-segmentation)",
    ),
    "evaluate": (
        "evaluate",
        "run the full pipeline on a labelled manifest and score the classifier (metrics.json, predictions.csv)",
    ),
    "push": ("hub", "upload an exported model folder to the Hugging Face Hub"),
    "model-card": ("hub", "re-render README.md of an exported model folder"),
    "biomarkers": (
        "biomarkers",
        "lung intensity, cardiothoracic ratio and lung area by class, with normality and rank-sum tests",
    ),
}

#: Attributes of a command's parsed arguments that hold input paths (their directories never reach the terminal).
INPUT_ARGUMENTS = ("image", "folder", "manifest", "metrics", "training", "template", "split_file")

#: What a redacted directory reads as.
INPUT_FOLDER = "<input folder>"


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """Builds the top-level parser.

    Args:
        commands: commands whose options are registered (their modules are imported); the others are listed with
            their one-line help only. None: every command (imports every command module).

    Returns:
        The parser; ``parse_args`` sets ``func`` to the handler of a registered command.
    """
    wanted = list(COMMANDS) if commands is None else [c for c in commands if c in COMMANDS]
    parser = argparse.ArgumentParser(prog="python -m cxr_hub", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = list(dict.fromkeys(COMMANDS[c][0] for c in wanted))
    for name, (module, help_text) in COMMANDS.items():
        if name in sub.choices:
            continue
        if module in modules:
            importlib.import_module(f".{module}", __package__).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the first argument that is not an option), if it is a known one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code (0 ok, 2 bad input or usage, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command = _command_of(argv)
        args = build_parser([command] if command else []).parse_args(argv)
        with redacted_output(input_paths(args)):
            try:
                return int(args.func(args) or 0)
            except Exception as exc:
                if not _is_user_error(exc):
                    raise
                # expected user errors get one line, not a traceback
                print(f"error: {exc}", file=sys.stderr)
                return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    if "cxr_hub.models.image_processing_cxr" not in sys.modules:
        return False  # CXRInputError was never imported, so it cannot be this one
    from ..io import CXRInputError

    return isinstance(exc, CXRInputError)


# ---------------------------------------------------------------------------------------------------- redaction


def input_paths(args: argparse.Namespace) -> list[str]:
    """The input paths among a command's parsed arguments (see :data:`INPUT_ARGUMENTS`)."""
    values = [getattr(args, name, None) for name in INPUT_ARGUMENTS]
    return [str(v) for v in values if isinstance(v, (str, os.PathLike)) and str(v)]


def _spellings(path: str) -> set[str]:
    """The ways a message may spell ``path``: as typed, normalised, with ~ expanded, absolute, symlinks resolved."""
    out = {path.rstrip("/") or path, os.path.normpath(path), os.path.expanduser(path)}
    out |= {os.path.abspath(p) for p in list(out)}
    with suppress(OSError, RuntimeError):  # a symlink loop: the other spellings still apply
        out.add(str(Path(path).expanduser().resolve()))
    return {p for p in out if p not in ("", ".", os.sep)}


def input_folders(paths: Iterable[str]) -> list[str]:
    """Every spelling of the folders whose names messages about ``paths`` must not show, longest first.

    A folder input (an existing directory, or a path typed with a trailing ``/``) counts itself; a file (or a path
    that does not exist) counts the folder it is in.
    """
    folders: set[str] = set()
    for path in paths:
        if path.endswith(os.sep) or Path(path).expanduser().is_dir():
            folders |= _spellings(path)
        else:
            folders |= {os.path.dirname(p) for p in _spellings(path)} - {"", ".", os.sep}
    return sorted(folders, key=lambda f: (-len(f), f))


def redactor(paths: Iterable[str]) -> Callable[[str], str] | None:
    """A function that cuts the folders of :func:`input_folders` out of a text; None when there is none.

    A folder followed by ``/`` is dropped, leaving the name under it; alone it becomes :data:`INPUT_FOLDER`. So
    ``/data/Doe_Jane/scan.dcm`` reads ``scan.dcm``; ``/data/Doe_Jane_2`` (another folder) is left alone.
    """
    folders = input_folders(paths)
    if not folders:
        return None
    sep = re.escape(os.sep)
    # a folder alone ends where no name character follows (a full stop ending a sentence is not one)
    pattern = re.compile("(?:" + "|".join(map(re.escape, folders)) + f")(?:({sep})|(?![\\w-]|\\.[\\w-]))")
    return lambda text: pattern.sub(lambda m: "" if m.group(1) else INPUT_FOLDER, text)


class _RedactingStream:
    """A text stream that writes through to ``stream`` with a :func:`redactor` applied; everything else delegates."""

    def __init__(self, stream: TextIO, redact: Callable[[str], str]) -> None:
        self._stream = stream
        self._redact = redact

    def write(self, text: str) -> int:
        return self._stream.write(self._redact(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def redacted_output(paths: Iterable[str]) -> Iterator[None]:
    """Within the block, ``sys.stdout`` and ``sys.stderr`` never show the folders of ``paths`` (:func:`redactor`)."""
    redact = redactor(paths)
    if redact is None:
        yield
        return
    saved = sys.stdout, sys.stderr
    sys.stdout = _RedactingStream(saved[0], redact)  # type: ignore[assignment]
    sys.stderr = _RedactingStream(saved[1], redact)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
