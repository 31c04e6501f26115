"""How the CLI names an input file in its outputs and messages: by its file name only, always valid UTF-8.

Directory names can carry patient names, so a row of a batch CSV, a message and a progress line name an image by its
file name alone (the file name is the only link from a result back to its image; file names that carry patient names
must be pseudonymised before the run). A file name that is not valid UTF-8 (Linux allows any bytes in a name) is
written with each undecodable byte as a ``\\xNN`` escape (``bad\\xffname.jpg``), as Python's ``backslashreplace``
writes it; ``predict --resume`` matches that escaped form. Shared by ``preprocess``, ``predict`` and the Ray engine
(:mod:`cxr_hub.ray_batch`), so every output names a file the same way. Imports nothing of cxr_hub.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["escape", "row_name", "source_name"]


def escape(text: str) -> str:
    """``text`` as valid UTF-8: a file name's undecodable bytes (lone surrogates on Linux) become ``\\xNN``.

    Args:
        text: any text, typically a file name from the file system (``os.fsdecode``'s surrogate escapes).

    Returns:
        Text that encodes to UTF-8 without error; unchanged when it already does.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte: Python's own \\udXXX escape
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def row_name(path: Path) -> str:
    """A file's name as rows and messages write it: undecodable bytes become ``\\xNN`` (see the module docstring).

    Args:
        path: the input file.

    Returns:
        Its escaped file name, without any directory.
    """
    return escape(path.name)


def source_name(path: str | Path) -> str:
    """How messages name an input file: ``File '<name>'``, by its name only (directory names can carry patient names
    too); a folder given where a file is wanted is ``IMAGE``, not named at all (its own name can be a patient's).

    Args:
        path: the input path as given.

    Returns:
        The subject of a message about that input.
    """
    return "IMAGE" if Path(path).is_dir() else f"File '{row_name(Path(path))}'"
