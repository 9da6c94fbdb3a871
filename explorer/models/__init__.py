"""Pure-torch model zoo: vision encoders, the projector and LLM architecture specs."""
from .base import VisionEncoder
from .registry import build_encoder, list_encoders, register_encoder

# Importing the family modules registers their builders.
from . import fastvithd  # noqa: F401,E402
from . import vit  # noqa: F401,E402
from . import convnext  # noqa: F401,E402
from . import hf_vision  # noqa: F401,E402
from . import cambrian  # noqa: F401,E402

__all__ = ["VisionEncoder", "build_encoder", "list_encoders", "register_encoder"]
