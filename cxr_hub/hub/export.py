"""Hub-ready export folders and uploads: library functions with no argument parsing and no printing.

* :func:`export_hub_folder` writes ``save_pretrained`` output (safetensors only), the image processor and the card
  (:func:`cxr_hub.hub.cards.render_model_card`);
* :func:`validate_hub_folder` checks such a folder (config, safetensors, card front matter, no pickles, remote code);
* :func:`push_to_hub` checks a folder and uploads it (or, with ``dry_run=True``, only lists what it would send);
  :func:`list_upload_files` and :func:`skipped_upload_files` say what is sent and what never is (hidden files and
  files named like credentials).

The commands ``push`` and ``model-card`` that call these are :mod:`cxr_hub.cli.hub`.
"""

from __future__ import annotations

import fnmatch
import glob
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# A Hub folder must hold safetensors only: PICKLE_SUFFIXES are the formats that unpickle (and can run code) on load.
from ..loading import PICKLE_SUFFIXES, pickle_checkpoints
from .cards import render_model_card

__all__ = [
    "CREDENTIAL_PATTERNS",
    "IGNORE_PATTERNS",
    "PICKLE_SUFFIXES",
    "export_hub_folder",
    "list_upload_files",
    "push_to_hub",
    "skipped_upload_files",
    "validate_hub_folder",
]

# A superset of huggingface_hub's DEFAULT_IGNORE_PATTERNS, so the dry-run listing equals what upload_folder sends.
IGNORE_PATTERNS: tuple[str, ...] = (
    ".git",
    ".git/*",
    "*/.git",
    "**/.git/**",
    ".cache/*",
    "*/.cache/*",
    "**/.cache/**",
    "__pycache__/*",
    "*/__pycache__/*",
    "*.pyc",
    ".ipynb_checkpoints/*",
    "*/.ipynb_checkpoints/*",
    ".DS_Store",
    "*/.DS_Store",
    *(f"*{suffix}" for suffix in sorted(PICKLE_SUFFIXES)),
)

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"


_STORAGE_DTYPES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def export_hub_folder(
    model: Any,
    out_dir: str | Path,
    *,
    image_processor: Any | None = None,
    metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    training: Mapping[str, Any] | str | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    safe_serialization: bool = True,
    dtype: str | None = None,
    template: str | Path | None = None,
    template_dir: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a Hub-ready folder: safetensors weights + ``config.json``, the image processor, and ``README.md``.

    Over 80 lines only for documenting its thirteen arguments; the code is one sequence (card first, then weights,
    processor, pickle check, card), kept together so its order stays visible.

    Args:
        model: a ``transformers`` ``PreTrainedModel``.
        out_dir: destination folder (created if needed; existing files of the same names are overwritten).
        image_processor: saved with ``save_pretrained`` when given (``preprocessor_config.json``).
        metrics: measured metrics for the card (see :func:`render_model_card`).
        training: training data description for the card.
        model_name: card title; defaults to the folder name.
        repo_id: Hub repository id shown in the card's snippets.
        license: the Hub license id.
        safe_serialization: must stay True: pickle checkpoints are never written.
        dtype: storage dtype of floating-point weights (``"float16"`` or ``"bfloat16"``; None keeps the model's).
            The config still says float32, so ``from_pretrained`` loads float32 parameters.
        template: card template (path or name), see :func:`render_model_card`.
        template_dir: folder of card templates.
        extra: extra template placeholders.

    Returns:
        The folder path.

    Raises:
        ValueError: ``safe_serialization=False``, an unknown ``dtype``, or a card problem (raised before any file
            is written).
        RuntimeError: pickle checkpoints are present in the folder after saving (e.g. left by an older export).
    """
    if not safe_serialization:
        raise ValueError("cxr-hub exports safetensors only; pickle checkpoints can run code when loaded.")
    storage = None
    if dtype is not None:
        key = str(dtype).removeprefix("torch.")
        if key == "float32":
            storage = None
        elif key in _STORAGE_DTYPES:
            storage = _STORAGE_DTYPES[key]
        else:
            raise ValueError(f"Unsupported storage dtype {dtype!r}; use 'float16', 'bfloat16' or None.")
    out = Path(out_dir)
    # The card is rendered first so that a template or metrics error leaves no half-written folder behind.
    card = render_model_card(
        model.config,
        metrics=metrics,
        template=template,
        model_name=model_name or out.resolve().name,
        repo_id=repo_id,
        training=training,
        extra=extra,
        license=license,
        template_dir=template_dir,
    )
    out.mkdir(parents=True, exist_ok=True)
    if storage is None:
        model.save_pretrained(out)
    else:
        import torch

        torch_dtype = getattr(torch, storage)
        # Casting the state dict (not the model) leaves the caller's model untouched and keeps config.dtype as the
        # model's own (float32), which is what from_pretrained uses by default.
        state_dict = {
            k: (v.detach().to(torch_dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()
        }
        model.save_pretrained(out, state_dict=state_dict)
        config_path = out / "config.json"
        config_json = json.loads(config_path.read_text(encoding="utf-8"))
        if config_json.get("dtype") != "float32":
            config_json["dtype"] = "float32"
            config_path.write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if image_processor is not None:
        image_processor.save_pretrained(out)
    pickles = pickle_checkpoints(out)
    if pickles:
        raise RuntimeError(f"Pickle checkpoint(s) found in {out}: {pickles}. Remove them; only safetensors ship.")
    (out / "README.md").write_text(card, encoding="utf-8")
    return out


def _auto_map_modules(auto_map: Any) -> set[str]:
    refs: list[str] = []
    for value in (auto_map or {}).values():
        refs.extend(v for v in (value if isinstance(value, list | tuple) else [value]) if isinstance(v, str))
    # "other/repo--module.Class" points at code in another repository: nothing to check locally.
    return {ref.rsplit(".", 1)[0] for ref in refs if "--" not in ref and "." in ref}


def validate_hub_folder(folder: str | Path) -> Path:
    """Checks that a folder is a complete, pickle-free cxr-hub Hub folder.

    Args:
        folder: the folder written by :func:`export_hub_folder`.

    Returns:
        The folder as a Path.

    Raises:
        ValueError: it is not a folder, lacks ``config.json``, safetensors weights (``model.safetensors`` or a
            complete sharded index) or ``README.md`` (with parseable front matter), holds pickle checkpoints, or
            its ``auto_map`` names code files that are missing.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder.")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json; export it with export_hub_folder / save_pretrained first.")
    if not (path / SAFETENSORS_NAME).is_file():
        index = path / SAFETENSORS_INDEX_NAME
        if not index.is_file():
            raise ValueError(f"{path} has no {SAFETENSORS_NAME} (nor a sharded {SAFETENSORS_INDEX_NAME}).")
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{index} is not a valid safetensors index: {exc}") from exc
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ValueError(f"{path} is missing safetensors shards listed in its index: {missing}.")
    readme = path / "README.md"
    if not readme.is_file():
        raise ValueError(f"{path} has no README.md; write one with `python -m cxr_hub model-card {path}`.")
    text = readme.read_text(encoding="utf-8")
    if text.startswith("---"):
        parts = text.split("---", 2)
        try:
            if len(parts) < 3 or not isinstance(yaml.safe_load(parts[1]) or {}, dict):
                raise ValueError("front matter is not a mapping")
        except (yaml.YAMLError, ValueError) as exc:
            raise ValueError(f"{readme} has invalid YAML front matter: {exc}") from exc
    pickles = pickle_checkpoints(path)
    if pickles:
        raise ValueError(f"{path} contains pickle checkpoint(s) {pickles}; remove them, only safetensors are pushed.")
    for name in ("config.json", "preprocessor_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            auto_map = json.loads(file.read_text(encoding="utf-8")).get("auto_map")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file} is not valid JSON: {exc}") from exc
        missing = sorted(m + ".py" for m in _auto_map_modules(auto_map) if not (path / f"{m}.py").is_file())
        if missing:
            raise ValueError(
                f"{file} auto_map needs {missing}, which are not in {path} (trust_remote_code would fail)."
            )
    return path


#: File names (matched case-insensitively against every part of a path) that look like credentials: never uploaded.
CREDENTIAL_PATTERNS: tuple[str, ...] = (
    ".env",
    ".env.*",
    "*.env",
    ".netrc",
    "_netrc",
    ".git-credentials",
    ".pypirc",
    ".npmrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "credentials*",
    "*credentials.json",
    "*secret*",
    "token",
    "token.*",
    "token_*",
    "token-*",
    "*.token",
    "*_token",
    "*_token.*",
)


def _skip_reason(rel: str) -> str | None:
    """Why a file (relative POSIX path) is never uploaded, or None: hidden, or named like a credential."""
    parts = rel.split("/")
    if any(fnmatch.fnmatch(part.lower(), pattern) for part in parts for pattern in CREDENTIAL_PATTERNS):
        return "looks like a credential"
    if any(part.startswith(".") for part in parts):
        return "hidden"
    return None


def _folder_files(folder: str | Path) -> list[str]:
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.glob("**/*") if p.is_file())


def skipped_upload_files(folder: str | Path) -> list[tuple[str, str]]:
    """The files :func:`push_to_hub` leaves out because they are hidden or look like credentials, with the reason.

    A model folder has no reason to hold a dotfile, and a ``.env``, ``*.pem`` or ``token`` file left there by accident
    would be published to everyone who can read the repository. ``.git`` and caches are left out too (silently, as
    :data:`IGNORE_PATTERNS` says).

    Args:
        folder: the folder to upload.

    Returns:
        Sorted ``(relative path, reason)`` pairs, reason "hidden" or "looks like a credential".
    """
    from huggingface_hub.utils import filter_repo_objects

    kept = list(filter_repo_objects(_folder_files(folder), ignore_patterns=list(IGNORE_PATTERNS)))
    return [(rel, reason) for rel in kept if (reason := _skip_reason(rel))]


def list_upload_files(folder: str | Path) -> list[str]:
    """Relative POSIX paths of the files :func:`push_to_hub` sends, filtered like ``upload_folder`` does.

    Hidden files and files named like credentials are never sent (:func:`skipped_upload_files` lists them).

    Args:
        folder: the folder to upload.

    Returns:
        Sorted relative paths.
    """
    from huggingface_hub.utils import filter_repo_objects

    kept = filter_repo_objects(_folder_files(folder), ignore_patterns=list(IGNORE_PATTERNS))
    return [rel for rel in kept if _skip_reason(rel) is None]


def _upload_ignore_patterns(folder: str | Path) -> list[str]:
    """``upload_folder``'s ignore list: IGNORE_PATTERNS, every hidden path, and each skipped file by its exact path."""
    # upload_folder lists the folder itself, so the skipped files go by name (glob-escaped) besides the generic
    # hidden-path patterns; the credential patterns are matched case-insensitively above, which fnmatchcase is not
    exact = [glob.escape(rel) for rel, _ in skipped_upload_files(folder)]
    return [*IGNORE_PATTERNS, ".*", "*/.*", *exact]


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload cxr-hub model",
    dry_run: bool = False,
    create_repo: bool = True,
) -> list[str]:
    """Uploads an exported folder to a Hub model repository (one commit).

    Args:
        folder: folder written by :func:`export_hub_folder`; checked with :func:`validate_hub_folder`.
        repo_id: ``"namespace/name"``.
        revision: branch to commit to (created from the default branch if missing); None: the default branch.
        private: create the repository as private (ignored when it already exists).
        token: Hub token; None uses huggingface_hub's usual sources (``HF_TOKEN``, the saved login).
        commit_message: the commit message.
        dry_run: only list the files that would be sent; contacts nothing.
        create_repo: create the repository if it does not exist.

    Returns:
        The relative paths of the files sent (or that would be sent); hidden files and files that look like
        credentials are never among them (:func:`skipped_upload_files`).

    Raises:
        ValueError: the folder fails validation, or ``repo_id`` is malformed.
    """
    path = validate_hub_folder(folder)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'namespace/name', got {repo_id!r}.")
    files = list_upload_files(path)
    if dry_run:
        return files

    # Looked up on the module at call time (not imported by name) so tests can monkeypatch them.
    import huggingface_hub

    if create_repo:
        # private=None lets an organisation's "private by default" setting apply when private was not asked for.
        huggingface_hub.create_repo(
            repo_id, token=token, private=True if private else None, repo_type="model", exist_ok=True
        )
    if revision is not None and not revision.startswith("refs/pr/"):
        # upload_folder fails on a branch that does not exist yet.
        huggingface_hub.create_branch(repo_id, branch=revision, token=token, repo_type="model", exist_ok=True)
    huggingface_hub.upload_folder(
        repo_id=repo_id,
        folder_path=str(path),
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        token=token,
        # A fresh list (upload_folder extends the list it is given in place) that also leaves out hidden files and
        # anything that looks like a credential.
        ignore_patterns=_upload_ignore_patterns(path),
    )
    return files
