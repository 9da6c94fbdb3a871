"""Name -> builder registry for vision encoders."""
from __future__ import annotations

from typing import Any, Callable, Optional

from .base import VisionEncoder

_BUILDERS: dict[str, Callable[..., VisionEncoder]] = {}


def register_encoder(name: str) -> Callable[[Callable[..., VisionEncoder]], Callable[..., VisionEncoder]]:
    def wrap(builder: Callable[..., VisionEncoder]) -> Callable[..., VisionEncoder]:
        if name in _BUILDERS:
            raise ValueError(f"encoder {name!r} registered twice")
        _BUILDERS[name] = builder
        return builder

    return wrap


def list_encoders() -> list[str]:
    return sorted(_BUILDERS)


def encoder_builder(name: str) -> Optional[Callable[..., VisionEncoder]]:
    """The builder registered as ``name`` (its signature names the knobs it takes); None when no
    encoder is registered under that name."""
    return _BUILDERS.get(name)


def build_encoder(name: str, **knobs: Any) -> VisionEncoder:
    """Build a registered encoder in its training (multi-branch) form with the given knobs."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(list_encoders())}")
    return _BUILDERS[name](**knobs)


def build_encoder_meta(name: str, **knobs: Any) -> VisionEncoder:
    """:func:`build_encoder` on the meta device: shapes, token counts and parameter counts without
    memory or weights. A builder that does real arithmetic at build time is built on the CPU and
    then moved to meta; a bad knob raises the builder's ``ValueError`` / ``TypeError`` either way."""
    import torch

    try:
        with torch.device("meta"):
            return build_encoder(name, **knobs)
    except (ValueError, TypeError):
        raise
    except Exception:  # e.g. a builder calling .item() on a freshly made tensor
        return build_encoder(name, **knobs).to("meta")
