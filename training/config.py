"""Typed training configs from defaults, a YAML file and CLI overrides (shared by every training script)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_CLI_TYPES = {"int": int, "float": float, "int | None": int, "float | None": float}


def _is_bool(f: dataclasses.Field[Any]) -> bool:
    return f.type in ("bool", bool)


def _flag(name: str, boolean: bool = False) -> str:
    """The CLI spelling of a field: ``--field-name``, or ``--[no-]field-name`` for a boolean."""
    return ("--[no-]" if boolean else "--") + name.replace("_", "-")


def _add_option(parser: argparse.ArgumentParser, name: str, f: dataclasses.Field[Any], help: str | None = None) -> None:
    flag = _flag(name)
    if _is_bool(f):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
    else:
        parser.add_argument(flag, type=_CLI_TYPES.get(str(f.type), str), default=None, help=help)


def field_help(cls: type) -> dict[str, str]:
    """The comments that document each field of a dataclass, as ``--help`` texts.

    A field's text is the block of comment lines right above it plus the comment at the end of its own line, in
    source order, without the ``#``: the comments are where the configs document their fields, so ``--help`` says
    what the source says, written once.

    Args:
        cls: a dataclass whose source is available (``inspect.getsource``).

    Returns:
        field name -> text, for the fields that have a comment (others are absent).
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen app, an interactive definition): options without texts
        return {}
    lines = source.splitlines()
    comments: dict[int, str] = {}  # 1-based line -> comment text
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    body = ast.parse(source).body[0]
    out: dict[str, str] = {}
    for node in getattr(body, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments.get(line, ""))
            line -= 1
        own = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        text = " ".join(part for part in above + own if part)
        if text:
            out[node.target.id] = text
    return out


def _help_with_default(text: str | None, f: dataclasses.Field[Any]) -> str | None:
    """``text`` and the field's default (argparse's own default is None: it tells a given option from an absent one)."""
    if text:
        text = text.replace("%", "%%")  # argparse formats help texts with %: a "3 %" in a comment is no placeholder
    if f.default is dataclasses.MISSING or (text and "default" in text):  # a text that states its own default
        return text
    default = f"default: {f.default}".replace("%", "%%")
    return f"{text} ({default})" if text else default


def current_names(
    values: Mapping[str, Any],
    renamed: Mapping[str, str],
    spell: Callable[[str], str] = repr,
    where: str = "",
    warn: bool = True,
    stacklevel: int = 2,
) -> dict[str, Any]:
    """``values`` with every old field name of ``renamed`` replaced by its current name.

    Args:
        values: field values by name, old names allowed (a YAML config, parsed options, a saved config).
        renamed: old name → current name.
        spell: how messages write a name (the YAML key, or the CLI option).
        where: what messages name first (e.g. ``"cfg.yaml: "``).
        warn: one DeprecationWarning per old name used. False for saved files (e.g. a shipped model's
            ``training_config.json``), which are records, not something to fix.
        stacklevel: passed on to :func:`warnings.warn`: 2 (the default) blames the caller of this function, 3 its
            caller's caller.

    Returns:
        A new dict with current names only.

    Raises:
        ValueError: an old and its current name are both given, with different values.
    """
    out = dict(values)
    for old, new in renamed.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out and out[new] != value:
            raise ValueError(
                f"{where}{spell(old)} is the deprecated name of {spell(new)}, and they disagree ({value!r} vs "
                f"{out[new]!r}): give only {spell(new)}"
            )
        out[new] = value
        if warn:
            warnings.warn(
                f"{where}{spell(old)} is deprecated: use {spell(new)}", DeprecationWarning, stacklevel=stacklevel
            )
    return out


def parse_dataclass_config(
    cls: type[T], argv: list[str] | None, description: str, renamed: Mapping[str, str] | None = None
) -> tuple[T, bool]:
    """Builds ``cls`` from its defaults, then ``--config FILE.yaml``, then ``--field-name VALUE`` options.

    Every dataclass field except ``notes`` becomes an option (booleans get ``--x/--no-x``); its ``--help`` text is
    the field's source comment (:func:`field_help`) and its default.

    Args:
        cls: the config dataclass.
        argv: the command line (None: ``sys.argv[1:]``).
        description: the ``--help`` text.
        renamed: old field name → current name. The old option and the old YAML key keep working, with a
            DeprecationWarning blamed on the caller of this function (so ``python -m`` shows it: the caller is
            ``__main__``). Old and new names are resolved per source: in one YAML file, or on one command line, both
            with different values is an error; a current name on the command line overrides an old one in the file.

    Returns:
        (config, resume) where ``resume`` is the ``--resume`` flag.

    Raises:
        SystemExit: unknown fields in the YAML file (argparse handles unknown options), or an old and a current name
            given with different values.
    """
    renamed = dict(renamed or {})
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file with config fields")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "notes"}  # type: ignore[arg-type]

    def spell(name: str) -> str:  # an option as typed on the command line: --task, --[no-]lung-mask
        return _flag(name, _is_bool(fields[renamed.get(name, name)]))

    helps = field_help(cls)
    for f in fields.values():
        _add_option(parser, f.name, f, help=_help_with_default(helps.get(f.name), f))
    for old, new in renamed.items():
        _add_option(parser, old, fields[new], help=f"deprecated: use {spell(new)}")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    given = {k: v for k, v in vars(args).items() if k not in ("config", "resume") and v is not None}
    try:  # each source on its own: the command line overrides the file, whichever names each uses
        if args.config:
            from_file = yaml.safe_load(Path(args.config).read_text()) or {}
            values.update(current_names(from_file, renamed, where=f"{args.config}: ", stacklevel=3))
        values.update(current_names(given, renamed, spell, stacklevel=3))
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise SystemExit(f"Unknown config fields: {sorted(unknown)}")
    return cls(**values), args.resume
