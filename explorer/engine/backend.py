"""What the engines measure with: one object holding the measure functions and model lookups.

The default :class:`MeasureBackend` measures for real (``explorer.measure``) and looks shapes up
in the model zoo. Tests and other tools pass a backend of their own (fast fakes, a cost model);
the engines never import a measure function directly. Module-level functions keep the backend
picklable, which is what the ``process`` isolation needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from explorer.data.space import EncoderShape, encoder_shape

__all__ = ["MeasureBackend", "FixedEnvironment", "LLMInfo", "llm_info", "meta_encoder_gflops"]

#: ``llm name or config path -> (hidden width, architecture spec dict, parameters in millions)``.
LLMInfo = Callable[[str], "tuple[int, dict[str, Any], float]"]


def llm_info(llm: str) -> tuple[int, dict[str, Any], float]:
    """(hidden width, architecture spec dict, parameters in millions) of an LLM name or config."""
    from explorer.models.llm import get_llm_spec

    spec = get_llm_spec(llm)
    return spec.hidden, spec.to_dict(), spec.num_params() / 1e6


def meta_encoder_gflops(family: str, knobs: Mapping[str, Any], resolution: int) -> float:
    """Encoder GFLOPs (2 x MACs) of one image, counted on the meta device (no memory, about 1 s)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from explorer.models import build_encoder

    with torch.device("meta"):
        enc = build_encoder(family, **dict(knobs))
    enc.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        enc(torch.empty(1, 3, resolution, resolution, device="meta"))
    return counter.get_total_flops() / 1e9


def _measure_encoder(*args: Any, **kwargs: Any) -> Any:
    from explorer.measure.encoder import measure_encoder

    return measure_encoder(*args, **kwargs)


def _measure_projector(*args: Any, **kwargs: Any) -> Any:
    from explorer.measure.projector import measure_projector

    return measure_projector(*args, **kwargs)


def _measure_prefill(llm: Any, tokens: Any, *args: Any, **kwargs: Any) -> Any:
    """``measure_prefill``, or ``measure_pruned_prefill`` when ``tokens`` is a ``PrunedPrompt``."""
    from explorer.measure.prefill import measure_prefill
    from explorer.measure.pruned_prefill import PrunedPrompt, measure_pruned_prefill

    if isinstance(tokens, PrunedPrompt):
        return measure_pruned_prefill(llm, tokens.visual, tokens.text, tokens.pruning, *args, **kwargs)
    return measure_prefill(llm, tokens, *args, **kwargs)


def _current_environment(settings: Any) -> Any:
    from explorer.measure.settings import current_environment

    return current_environment(settings)


@dataclass(frozen=True)
class FixedEnvironment:
    """An environment lookup that always answers ``env`` (one lookup per run; fakes in tests)."""

    env: Any

    def __call__(self, settings: Any) -> Any:
        return self.env


@dataclass(frozen=True)
class MeasureBackend:
    """The measure functions and lookups an engine uses.

    - ``measure_encoder(name, knobs, resolution, settings) -> EncoderCost``, likewise
      ``measure_projector(in_channels, hidden, tokens, settings)`` and
      ``measure_prefill(llm, tokens, settings)`` (``explorer.measure``'s by default; for a point
      with in-LLM pruning ``tokens`` is a ``explorer.measure.pruned_prefill.PrunedPrompt``);
    - ``encoder_shape(family, knobs, resolution) -> EncoderShape`` (a meta-device build);
    - ``llm_info(llm) -> (hidden, spec dict, params_m)`` (the LLM catalog or a config.json);
    - ``environment(settings) -> Environment`` (where the values are measured);
    - ``encoder_gflops(family, knobs, resolution) -> float`` for time estimates (None: from the
      parameter count).
    ``real_models`` says whether the lookups are the model zoo's, so that a space is checked
    against the zoo when it is loaded.
    """

    measure_encoder: Callable[..., Any] = _measure_encoder
    measure_projector: Callable[..., Any] = _measure_projector
    measure_prefill: Callable[..., Any] = _measure_prefill
    encoder_shape: Callable[[str, Mapping[str, Any], int], EncoderShape] = encoder_shape
    llm_info: LLMInfo = llm_info
    environment: Callable[[Any], Any] = _current_environment
    encoder_gflops: Optional[Callable[[str, Mapping[str, Any], int], float]] = meta_encoder_gflops
    real_models: bool = True

    def measure(self, kind: str) -> Callable[..., Any]:
        """The measure function of one factor (``encoder``, ``projector`` or ``prefill``)."""
        return {"encoder": self.measure_encoder, "projector": self.measure_projector,
                "prefill": self.measure_prefill}[kind]

    def shape_fn(self) -> Optional[Callable[[str, Mapping[str, Any], int], EncoderShape]]:
        """The shape lookup to give :func:`explorer.data.space.load_space` (None: the zoo's)."""
        return None if self.real_models else self.encoder_shape

    def with_fixed_environment(self, settings: Any) -> "MeasureBackend":
        """The same backend with its environment looked up once, for ``settings``."""
        from dataclasses import replace

        return replace(self, environment=FixedEnvironment(self.environment(settings)))

    def without_estimates(self) -> "MeasureBackend":
        """The same backend without the meta-device FLOP count used for time estimates."""
        from dataclasses import replace

        return replace(self, encoder_gflops=None)
