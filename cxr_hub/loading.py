"""Safe model loading: safetensors weights only, unless the caller explicitly opts in to pickle checkpoints.

A PyTorch ``.bin``/``.pt``/``.pth``/``.ckpt`` checkpoint is a pickle, and unpickling a file can run arbitrary code.
cxr-hub writes safetensors only (:func:`cxr_hub.hub.export_hub_folder`), so every loader here
(:class:`cxr_hub.CXRPipeline.from_pretrained`, the demo app, ``evaluate-segmentation``) goes through
:func:`load_model`, which

* refuses a local model folder that holds any pickle checkpoint, before transformers reads a byte of it, with a
  message that says why and how to opt in (``allow_pickle=True``; CLI ``--allow-pickle``; app
  ``CXR_HUB_ALLOW_PICKLE=1``);
* otherwise calls ``from_pretrained(..., use_safetensors=True)``, so a Hub repo id only ever downloads and reads
  ``model.safetensors`` (or a safetensors index), never ``pytorch_model.bin``.

It never passes ``trust_remote_code``: ``import cxr_hub`` registers the model classes, so no Python file stored next
to the weights is executed either.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by transformers anyway; not needed to check a folder
    from torch import nn

__all__ = [
    "ALLOW_PICKLE_ENV",
    "PICKLE_SUFFIXES",
    "UnsafeCheckpointError",
    "allow_pickle_from_env",
    "check_no_pickles",
    "load_model",
    "pickle_checkpoints",
    "quiet_progress_bars",
]

#: Checkpoint formats that unpickle (and so can run code) on load; a cxr-hub model folder holds safetensors only.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})

#: Environment variable through which the demo app's operator opts in to pickle checkpoints ("1", "true", "yes").
ALLOW_PICKLE_ENV = "CXR_HUB_ALLOW_PICKLE"

_OPT_IN = (
    "If you trust where it came from, opt in explicitly: allow_pickle=True (CXRPipeline.from_pretrained, "
    f"CXRApp), --allow-pickle (python -m cxr_hub predict) or {ALLOW_PICKLE_ENV}=1 (the app)."
)


# transformers 5 draws a "Loading weights" bar for every from_pretrained; for cxr-hub's few small models it is noise
# on every command and in every server log. transformers.utils.logging.set_tqdm_hook (documented; it returns the
# previous hook) silences its bars while one of our loads runs, and only then: the previous hook comes back
# afterwards and warnings are untouched. Counted, so overlapping loads in several threads restore it exactly once.
_BARS_LOCK = threading.Lock()
_bars_quiet = 0
_previous_hook: Any = None


def _silent_bar(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    kwargs = {**kwargs, "disable": True}
    return _previous_hook(factory, args, kwargs) if _previous_hook is not None else factory(*args, **kwargs)


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hides transformers' progress bars (e.g. "Loading weights") for the duration of the block only."""
    global _bars_quiet, _previous_hook
    from transformers.utils import logging as hf_logging

    with _BARS_LOCK:
        if _bars_quiet == 0:
            _previous_hook = hf_logging.set_tqdm_hook(_silent_bar)
        _bars_quiet += 1
    try:
        yield
    finally:
        with _BARS_LOCK:
            _bars_quiet -= 1
            if _bars_quiet == 0:
                hf_logging.set_tqdm_hook(_previous_hook)
                _previous_hook = None


class UnsafeCheckpointError(ValueError):
    """A model source holds (or only offers) pickle weights and the caller did not opt in to loading them."""


def pickle_checkpoints(folder: str | Path) -> list[str]:
    """Pickle checkpoint files anywhere under ``folder`` (``.git`` excluded), as sorted POSIX relative paths.

    Args:
        folder: a local directory.

    Returns:
        e.g. ``["pytorch_model.bin"]``; empty when there are none (or ``folder`` is not a directory).
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES and ".git" not in p.relative_to(root).parts
    )


def check_no_pickles(source: str | Path) -> None:
    """Refuses a local model source that is a weights file or holds pickle checkpoints; reads no weights.

    The check :func:`load_model` makes before transformers reads a byte; callers that can fail for other reasons
    later (the CLI, on its inputs) make it first, so the refusal does not wait for anything else.

    Args:
        source: a local folder (a Hub repo id, which is not a local path, passes).

    Raises:
        UnsafeCheckpointError: ``source`` is a file, or a folder holding a pickle checkpoint.
    """
    path = Path(source).expanduser()
    if path.is_file():
        raise UnsafeCheckpointError(
            f"{path} is a file; pass the model folder written by save_pretrained (config.json + "
            "model.safetensors), not a weights file."
        )
    pickles = pickle_checkpoints(path)
    if pickles:
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it holds pickle checkpoint(s) {', '.join(pickles)}, and unpickling a file "
            "can run arbitrary code. cxr-hub loads safetensors weights only: convert the checkpoint (load it "
            "once where you trust it and save_pretrained(..., safe_serialization=True)) or remove the pickle "
            f"file(s). {_OPT_IN}"
        )


def load_model(source: str | Path, auto_class: Any = None, allow_pickle: bool = False, **kwargs: Any) -> nn.Module:
    """``auto_class.from_pretrained(source)`` in eval mode, reading safetensors weights only unless opted in.

    Args:
        source: a local folder written by ``save_pretrained`` or a Hub repo id.
        auto_class: a transformers Auto class (default ``transformers.AutoModel``).
        allow_pickle: also accept pickle checkpoints (``pytorch_model.bin``); only for files you trust.
        **kwargs: passed to ``from_pretrained`` (e.g. ``revision`` pinned to a reviewed commit, ``dtype``).

    Returns:
        The model, in eval mode.

    Raises:
        UnsafeCheckpointError: ``allow_pickle`` is False and the local folder holds a pickle checkpoint, ``source``
            is a single file rather than a folder, or the Hub repo has no safetensors weights.
        OSError: transformers could not find or read the model (missing folder, offline, ...).
    """
    if auto_class is None:
        from transformers import AutoModel

        auto_class = AutoModel
    if "use_safetensors" in kwargs or "trust_remote_code" in kwargs:
        raise TypeError("load_model sets use_safetensors itself and never trusts remote code; drop those arguments.")
    path = Path(source).expanduser()
    if not allow_pickle:
        check_no_pickles(path)
    try:
        with quiet_progress_bars():
            model = auto_class.from_pretrained(str(source), use_safetensors=None if allow_pickle else True, **kwargs)
    except OSError as exc:
        # transformers' own message ("Please do not set use_safetensors=True") would point the wrong way
        if not allow_pickle and "safetensors" in str(exc) and not path.is_dir():
            raise UnsafeCheckpointError(
                f"{source} offers no safetensors weights, and cxr-hub does not load pickle checkpoints by default "
                f"(unpickling can run arbitrary code). {_OPT_IN}"
            ) from exc
        raise
    return model.eval()


def allow_pickle_from_env(environ: Any) -> bool:
    """True when ``environ[ALLOW_PICKLE_ENV]`` is "1", "true" or "yes" (any case); the app's opt-in."""
    return str(environ.get(ALLOW_PICKLE_ENV, "")).strip().lower() in ("1", "true", "yes")
