"""``push`` and ``model-card``: the Hub commands, thin wrappers of :mod:`cxr_hub.hub`.

``push`` checks an exported folder and uploads it (:func:`cxr_hub.hub.push_to_hub`), printing what it sends and what
it never sends; ``model-card`` re-renders a folder's README.md (:func:`cxr_hub.hub.render_model_card`) from its
config and a metrics JSON (:func:`cxr_hub.hub.card_metrics_from_report`). Both are registered by :func:`add_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HfHubHTTPError

from ..hub import card_metrics_from_report, push_to_hub, render_model_card, skipped_upload_files

__all__ = ["add_parser"]


def _human_size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def _cmd_push(args: argparse.Namespace) -> int:
    """``push``: :func:`cxr_hub.hub.push_to_hub`, then the files sent (or, ``--dry-run``, that would be) and sizes."""
    try:
        files = push_to_hub(
            args.folder,
            args.repo_id,
            revision=args.revision,
            private=args.private,
            commit_message=args.commit_message,
            dry_run=args.dry_run,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (HfHubHTTPError, OSError) as exc:
        # Network, permission or missing-token failures: report them without a traceback (the token never appears).
        print(f"error: upload failed: {exc}", file=sys.stderr)
        return 1
    folder = Path(args.folder)
    sizes = {f: (folder / f).stat().st_size for f in files}
    target = f"{args.repo_id}@{args.revision or 'main'}"
    verb = "Would upload" if args.dry_run else "Uploaded"
    print(f"{verb} {len(files)} file(s), {_human_size(sum(sizes.values()))}, to {target}:")
    for name in files:
        print(f"  {_human_size(sizes[name]):>10}  {name}")
    skipped = skipped_upload_files(folder)
    if skipped:
        print(f"Skipped {len(skipped)} file(s), never uploaded:")
        for name, reason in skipped:
            print(f"  {name}  ({reason})")
    return 0


def _read_json(path: str | None, what: str) -> Any:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Cannot read the {what} JSON {path}: {exc}") from exc


def _cmd_model_card(args: argparse.Namespace) -> int:
    """``model-card``: :func:`cxr_hub.hub.render_model_card` of a folder's config and metrics, written to README.md."""
    folder = Path(args.folder)
    if not (folder / "config.json").is_file():
        print("error: the model folder has no config.json: pass a folder written by save_pretrained.", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else folder / "README.md"
    if output.exists() and not args.overwrite:
        # a card is curated: its measured results and hand-written sections must not vanish by accident
        print(
            f"error: {output.name} already exists and may hold measured results and hand-written sections: pass "
            "--overwrite to replace it, or --output FILE to write the new card elsewhere.",
            file=sys.stderr,
        )
        return 2
    try:
        from transformers import AutoConfig

        try:
            # no trust_remote_code: the folder's Python files would run; cxr-hub's own types are registered on import
            config: Any = AutoConfig.from_pretrained(str(folder))
        except (ValueError, KeyError, OSError, ImportError):
            # A model type that is not registered: the card needs only the raw fields.
            config = _read_json(str(folder / "config.json"), "config")
        metrics = _read_json(args.metrics, "metrics")
        if isinstance(metrics, Mapping):
            dataset = {"name": args.dataset_name, "type": "cxr-hub-manifest"} if args.dataset_name else None
            metrics = card_metrics_from_report(metrics, dataset, part="global" if args.use_global else None) or metrics
        card = render_model_card(
            config,
            metrics=metrics,
            template=args.template,
            model_name=args.model_name or folder.resolve().name,
            repo_id=args.repo_id,
            training=_read_json(args.training, "training"),
            license=args.license,
            revision=args.revision,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output.write_text(card, encoding="utf-8")
    print(f"Wrote {output}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers the ``push`` and ``model-card`` subcommands.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    push = subparsers.add_parser(
        "push",
        help="upload an exported model folder to the Hugging Face Hub",
        description="Checks an exported folder (config.json, safetensors, README.md, no pickles) and uploads it. "
        "The token comes from HF_TOKEN or `hf auth login`; it is never printed.",
    )
    push.add_argument("folder", help="folder written by cxr_hub.hub.export_hub_folder")
    push.add_argument("--repo-id", required=True, help="target repository, namespace/name")
    push.add_argument("--revision", default=None, help="branch to commit to (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--dry-run", action="store_true", help="list the files and sizes that would be sent; no upload")
    push.add_argument("--commit-message", default="Upload cxr-hub model", help="commit message")
    push.set_defaults(func=_cmd_push)

    card = subparsers.add_parser(
        "model-card",
        help="re-render README.md of an exported model folder",
        description="Renders the model card of an exported folder from its config.json and a metrics JSON (the "
        "metrics.json of evaluate or evaluate-segmentation, or card metrics). Without --metrics the card says the "
        "model is not yet evaluated. An existing card is never replaced without --overwrite.",
    )
    card.add_argument("folder", help="exported model folder (with config.json)")
    card.add_argument(
        "--metrics",
        default=None,
        help="metrics.json written by evaluate or evaluate-segmentation, or card metrics: "
        '{"dataset": {"name", "type", "split"}, "values": {name: number}} or {name: number}',
    )
    card.add_argument(
        "--global",
        dest="use_global",
        action="store_true",
        help="take the global classifier's part of an evaluate metrics.json (evaluate --global-classifier)",
    )
    card.add_argument("--dataset-name", default=None, help="dataset name on the card (default: from the metrics)")
    card.add_argument("--template", default=None, help="template name in model_cards/ or a path to a .md file")
    card.add_argument("--training", default=None, help="training description JSON (a string or a dict)")
    card.add_argument("--repo-id", default=None, help="Hub repository id shown in the usage snippets")
    card.add_argument("--revision", default=None, help="revision shown in the usage snippets")
    card.add_argument("--model-name", default=None, help="card title (default: the folder name)")
    card.add_argument("--license", default="apache-2.0", help="Hub license id (default: apache-2.0)")
    card.add_argument("--output", default=None, help="where to write the card (default: FOLDER/README.md)")
    card.add_argument(
        "--overwrite", action="store_true", help="replace an existing card (its measured and hand-written content)"
    )
    card.set_defaults(func=_cmd_model_card)
