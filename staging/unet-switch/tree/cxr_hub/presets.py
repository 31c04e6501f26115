"""One table of the shipped models: folder, role, label set and environment variable.

Every command, the app, evaluation and training read the default models from :data:`SHIPPED`; no model path is
written anywhere else. The pipeline's default segmentation network is ``SHIPPED["segmentation"]``: switching it to
another trained network (``SHIPPED["segmentation/fcdensenet103"]``, say) is a one-line change here, followed by
re-measuring everything that depends on the masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MODELS_DIR", "REPO_ROOT", "SHIPPED", "ShippedModel", "default_folder", "repo_relative_folder"]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Folder of the shipped models in a checkout (absent in a wheel installed without the repository).
MODELS_DIR = REPO_ROOT / "models"


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model.

    Attributes:
        folder: folder name under ``models/``.
        role: ``"segmentation"``, ``"patch"`` or ``"global"``.
        label_set: ``"label4"`` / ``"label3"`` for classifiers, None for segmentation.
        env: environment variable that overrides the folder in the app (a folder or a Hub repo id).
    """

    folder: str
    role: str
    label_set: str | None
    env: str

    @property
    def path(self) -> Path:
        """The folder in this checkout (it may not exist outside the repository)."""
        return MODELS_DIR / self.folder


SHIPPED: dict[str, ShippedModel] = {
    # the pipeline's default segmentation: the one setting every command, the app and training read
    "segmentation": ShippedModel("cxr-lung-seg-unet", "segmentation", None, "CXR_HUB_SEGMENTATION"),
    "segmentation/unet": ShippedModel("cxr-lung-seg-unet", "segmentation", None, "CXR_HUB_SEGMENTATION"),
    # a documented alternative (the paper's network, see its card); use it with --segmentation or the env variable
    "segmentation/fcdensenet103": ShippedModel(
        "cxr-lung-seg-fcdensenet103", "segmentation", None, "CXR_HUB_SEGMENTATION"
    ),
    "label4/patch": ShippedModel("cxr-patch-resnet18", "patch", "label4", "CXR_HUB_CLASSIFIER"),
    "label4/global": ShippedModel("cxr-global-resnet18", "global", "label4", "CXR_HUB_GLOBAL_CLASSIFIER"),
    "label3/patch": ShippedModel("cxr-patch-resnet18-covidx", "patch", "label3", "CXR_HUB_CLASSIFIER_LABEL3"),
}


def default_folder(key: str) -> Path:
    """The checkout folder of ``SHIPPED[key]`` (absolute, so commands work from any directory).

    Raises:
        KeyError: unknown key; the message lists the known ones.
    """
    if key not in SHIPPED:
        raise KeyError(f"Unknown shipped model {key!r}; known: {sorted(SHIPPED)}.")
    return SHIPPED[key].path


def repo_relative_folder(key: str) -> str:
    """``"models/<folder>"`` of ``SHIPPED[key]``: what training scripts (run from the repository root) record in their
    configs, so a saved config names the model the same way on every machine."""
    return str(default_folder(key).relative_to(REPO_ROOT))
