"""Saving behaviour shared by every cxr-hub model (ships with the weights for ``trust_remote_code``)."""

from __future__ import annotations

from typing import Any


class AutoMapMixin:
    """Adds an ``AutoModel`` entry to ``auto_map`` beside the task-specific one on save.

    ``register_for_auto_class`` records one Auto class; users also reach for plain ``AutoModel``, which must load the
    same class. The key is only written when the class is registered for remote code (``_auto_class`` set).
    """

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_auto_class", None) is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map["AutoModel"] = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)
