"""Typed training configs from defaults, a YAML file and CLI overrides (shared by every training script)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_CLI_TYPES = {"int": int, "float": float, "int | None": int, "float | None": float}


def parse_dataclass_config(cls: type[T], argv: list[str] | None, description: str) -> tuple[T, bool]:
    """Builds ``cls`` from its defaults, then ``--config FILE.yaml``, then ``--field-name VALUE`` options.

    Every dataclass field except ``notes`` becomes an option (booleans get ``--x/--no-x``).

    Returns:
        (config, resume) where ``resume`` is the ``--resume`` flag.

    Raises:
        SystemExit: unknown fields in the YAML file (argparse handles unknown options).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file with config fields")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last")
    fields = [f for f in dataclasses.fields(cls) if f.name != "notes"]  # type: ignore[arg-type]
    for f in fields:
        name = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(name, type=_CLI_TYPES.get(str(f.type), str), default=None)
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        values.update(yaml.safe_load(Path(args.config).read_text()) or {})
    values.update({k: v for k, v in vars(args).items() if k not in ("config", "resume") and v is not None})
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise SystemExit(f"Unknown config fields: {sorted(unknown)}")
    return cls(**values), args.resume
