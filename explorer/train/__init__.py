"""Training engine: the text-rich proxy task, LLaVA-format data, the VLM and its trainer.

Import the submodules directly (``explorer.train.config``, ``.trainer``, ``.checkpoints``,
``.data``, ...); ``train``, ``TrainConfig`` and ``TrainResult`` are re-exported lazily so that
importing the package stays cheap.
"""
from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name == "TrainConfig":
        from .config import TrainConfig

        return TrainConfig
    if name in __all__:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'explorer.train' has no attribute {name!r}")
