"""LLM architecture specs and random-weight builders (nothing is ever downloaded).

Prefill cost depends only on the architecture (widths, depth, heads, vocabulary), never on the
weights, so an :class:`LLMSpec` plus transformers' own architecture class with random weights is
all measurement needs. ``build_llm(spec, device="meta")`` gives a weightless model for counting
FLOPs of models too large to allocate; ``num_layers=k`` gives the truncated copy used for
layer-sampled timing.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from explorer.checks import is_int, require

ARCHS = ("qwen2", "llama")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}




@dataclass(frozen=True)
class LLMSpec:
    """The architecture facts of a decoder-only LLM that decide its prefill cost."""

    name: str
    arch: str  # "qwen2" | "llama"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    rope_theta: float
    rms_eps: float
    qkv_bias: bool  # bias on q/k/v projections (Qwen2: yes, Llama: no); o_proj and MLP never have one
    max_position: int
    hidden_act: str = "silu"

    def __post_init__(self) -> None:
        """Raise ValueError naming the first field that cannot describe a real model."""
        require(self.arch in ARCHS, "arch", self.arch, f"one of {', '.join(ARCHS)}")
        for f in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "max_position"):
            v = getattr(self, f)
            require(is_int(v) and v > 0, f, v, "a positive integer")
        require(self.hidden % self.heads == 0, "heads", self.heads, f"a divisor of hidden={self.hidden}")
        require(self.heads % self.kv_heads == 0, "kv_heads", self.kv_heads, f"a divisor of heads={self.heads}")
        require(self.rope_theta > 0, "rope_theta", self.rope_theta, "a positive number")
        require(self.rms_eps > 0, "rms_eps", self.rms_eps, "a positive number")
        if self.arch == "qwen2":
            require(self.qkv_bias is True, "qkv_bias", self.qkv_bias, "True for arch 'qwen2' (transformers' Qwen2 always has q/k/v biases)")
        else:
            require(self.qkv_bias is False, "qkv_bias", self.qkv_bias, "False for arch 'llama' (its attention_bias would also bias o_proj)")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def with_layers(self, layers: int) -> "LLMSpec":
        """The same architecture truncated (or extended) to ``layers`` decoder layers."""
        require(is_int(layers) and layers >= 1, "layers", layers, "a positive integer")
        return dataclasses.replace(self, layers=layers)

    def layer_params(self) -> int:
        """Parameters of one decoder layer (projections, their biases, MLP, two RMSNorms)."""
        h, d = self.hidden, self.head_dim
        q = h * self.heads * d + (self.heads * d if self.qkv_bias else 0)
        kv = 2 * (h * self.kv_heads * d + (self.kv_heads * d if self.qkv_bias else 0))
        o = self.heads * d * h
        mlp = 3 * h * self.intermediate
        return q + kv + o + mlp + 2 * h

    def num_params(self, layers: int | None = None) -> int:
        """Parameter count of the causal-LM (tied embeddings counted once), optionally with ``layers`` layers."""
        layers = self.layers if layers is None else layers
        embed = self.vocab * self.hidden
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return embed + layers * self.layer_params() + self.hidden + head

    def to_hf_config(self, num_layers: int | None = None) -> Any:
        """transformers' config object for this spec (optionally with ``num_layers`` layers)."""
        layers = self.layers if num_layers is None else num_layers
        common: dict[str, Any] = dict(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position,
            rms_norm_eps=self.rms_eps,
            tie_word_embeddings=self.tied_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": float(self.rope_theta)},
            use_cache=False,
        )
        if self.arch == "qwen2":
            from transformers import Qwen2Config

            return Qwen2Config(use_sliding_window=False, **common)
        from transformers import LlamaConfig

        return LlamaConfig(attention_bias=False, mlp_bias=False, head_dim=self.head_dim, **common)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


LLM_CATALOG: dict[str, LLMSpec] = {
    "qwen2-0.5b": LLMSpec("qwen2-0.5b", "qwen2", hidden=896, layers=24, heads=14, kv_heads=2,
                          intermediate=4864, vocab=151936, tied_embeddings=True, rope_theta=1e6,
                          rms_eps=1e-6, qkv_bias=True, max_position=32768),
    "qwen2-1.5b": LLMSpec("qwen2-1.5b", "qwen2", hidden=1536, layers=28, heads=12, kv_heads=2,
                          intermediate=8960, vocab=151936, tied_embeddings=True, rope_theta=1e6,
                          rms_eps=1e-6, qkv_bias=True, max_position=32768),
    "qwen2-7b": LLMSpec("qwen2-7b", "qwen2", hidden=3584, layers=28, heads=28, kv_heads=4,
                        intermediate=18944, vocab=152064, tied_embeddings=False, rope_theta=1e6,
                        rms_eps=1e-6, qkv_bias=True, max_position=32768),
    "vicuna-7b": LLMSpec("vicuna-7b", "llama", hidden=4096, layers=32, heads=32, kv_heads=32,
                         intermediate=11008, vocab=32000, tied_embeddings=False, rope_theta=1e4,
                         rms_eps=1e-5, qkv_bias=False, max_position=4096),
    # Llama-3-8B (Cambrian-1-8B's LLM): meta-llama/Meta-Llama-3-8B config.json: hidden 4096,
    # 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256, rope_theta 500000,
    # rms_norm_eps 1e-5, untied embeddings, max_position_embeddings 8192.
    "llama3-8b": LLMSpec("llama3-8b", "llama", hidden=4096, layers=32, heads=32, kv_heads=8,
                         intermediate=14336, vocab=128256, tied_embeddings=False, rope_theta=5e5,
                         rms_eps=1e-5, qkv_bias=False, max_position=8192),
    # SmolVLM-256M's language model (HuggingFaceTB/SmolVLM-256M-Instruct config.json, text_config:
    # SmolLM2-135M, hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate 1536, rope_theta
    # 100000, rms_norm_eps 1e-5, tied embeddings, vocab 49280 with the image tokens added).
    "smollm2-135m": LLMSpec("smollm2-135m", "llama", hidden=576, layers=30, heads=9, kv_heads=3,
                            intermediate=1536, vocab=49280, tied_embeddings=True, rope_theta=1e5,
                            rms_eps=1e-5, qkv_bias=False, max_position=8192),
}


def _spec_from_config(cfg: dict[str, Any], default_name: str) -> LLMSpec:
    model_type = cfg.get("model_type")
    require(model_type in ARCHS, "model_type", model_type, f"one of {', '.join(ARCHS)} (the architectures explorer can build)")
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ValueError(f"invalid config: missing {', '.join(missing)} (a transformers config.json needs them)")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    require(rope_type == "default", "rope_type", rope_type, "'default' (scaled RoPE variants are not modelled)")
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    theta = theta or cfg.get("rope_theta") or (1e6 if model_type == "qwen2" else 1e4)
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    head_dim = cfg.get("head_dim")
    require(head_dim in (None, hidden // heads), "head_dim", head_dim, f"hidden_size / num_attention_heads = {hidden // heads} (decoupled head sizes are not modelled)")
    if model_type == "llama":
        require(not cfg.get("attention_bias", False), "attention_bias", cfg.get("attention_bias", False), "false")
        require(not cfg.get("mlp_bias", False), "mlp_bias", cfg.get("mlp_bias", False), "false")
    return LLMSpec(
        name=str(cfg.get("_name_or_path") or default_name),
        arch=model_type,
        hidden=hidden,
        layers=int(cfg["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads),
        intermediate=int(cfg["intermediate_size"]),
        vocab=int(cfg["vocab_size"]),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rope_theta=float(theta),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        qkv_bias=model_type == "qwen2",
        max_position=int(cfg.get("max_position_embeddings", 32768)),
        hidden_act=str(cfg.get("hidden_act", "silu")),
    )


def get_llm_spec(name_or_path: Union[str, Path, LLMSpec]) -> LLMSpec:
    """A catalog name (case-insensitive), a transformers ``config.json`` (or its folder), or a spec."""
    if isinstance(name_or_path, LLMSpec):
        return name_or_path
    key = str(name_or_path).strip()
    if key.lower() in LLM_CATALOG:
        return LLM_CATALOG[key.lower()]
    path = Path(key)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid llm={key!r}: {path} is not valid JSON ({err})") from err
        default_name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.parent.name or path.stem) or "custom-llm"
        return _spec_from_config(cfg, default_name)
    raise ValueError(f"invalid llm={key!r}: one of {', '.join(LLM_CATALOG)} or a path to a "
                     "transformers config.json")


def _resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        require(dtype in _DTYPES.values(), "dtype", dtype, f"one of {', '.join(_DTYPES)}")
        return dtype
    require(dtype in _DTYPES, "dtype", dtype, f"one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _check_build_device(device: Union[str, torch.device]) -> torch.device:
    text = str(device)
    require(bool(re.fullmatch(r"cpu|meta|mps|cuda(:\d+)?", text)), "device", text, "'cpu', 'meta', 'cuda', 'cuda:N' or 'mps'")
    return torch.device(text)


def build_llm(spec: Union[LLMSpec, str], device: Union[str, torch.device] = "cpu",
              dtype: Union[str, torch.dtype] = torch.float32, num_layers: int | None = None) -> nn.Module:
    """transformers' causal-LM class (Qwen2ForCausalLM / LlamaForCausalLM) with random weights.

    ``device="meta"`` allocates nothing (for FLOP counting); ``num_layers=k`` builds a truncated
    copy with ``k`` decoder layers at real width (``0`` keeps only embeddings, final norm and
    head). SDPA attention, eval mode, no KV cache. Nothing is read from or written to disk.
    """
    spec = get_llm_spec(spec)
    torch_dtype = _resolve_dtype(dtype)
    dev = _check_build_device(device)
    if num_layers is not None:
        require(is_int(num_layers) and 0 <= num_layers, "num_layers", num_layers, "a non-negative integer")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    config = spec.to_hf_config(num_layers)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        # Always build on meta (instant), then materialise: transformers' own init draws a
        # normal sample per weight, which takes tens of seconds for a 0.5B model on 2 cores.
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch_dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    if dev.type != "meta":
        _materialise(model, dev)
    model.eval()
    model.requires_grad_(False)
    return model


_POOL_SIZE = 1 << 20


def _materialise(model: nn.Module, device: torch.device, seed: int = 0) -> None:
    """Allocate a meta-built model on ``device`` with cheap random weights and real buffers.

    Weights are a fixed 1M-value random pattern (std 0.02) tiled over each tensor: finite,
    normal-looking values are all timing needs, and tiling costs a memory copy instead of one
    RNG draw per weight. Norm weights are ones. Non-persistent buffers (RoPE inverse
    frequencies) are recomputed by rebuilding their module from the config.
    """
    model.to_empty(device=device)
    gen = torch.Generator().manual_seed(seed)
    pool_cpu = torch.randn(_POOL_SIZE, generator=gen) * 0.02
    pools: dict[torch.dtype, torch.Tensor] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            data = param.data
            if data.dim() == 1 and "Norm" in type(module).__name__:
                data.fill_(1.0)
                continue
            pool = pools.get(data.dtype)
            if pool is None:
                pool = pools[data.dtype] = pool_cpu.to(device=device, dtype=data.dtype)
            flat = data.view(-1)
            for start in range(0, flat.numel(), _POOL_SIZE):
                chunk = flat[start:start + _POOL_SIZE]
                chunk.copy_(pool[: chunk.numel()])
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if any(True for _ in child.buffers(recurse=False)):
                if not hasattr(child, "inv_freq"):
                    raise RuntimeError(f"cannot materialise buffers of {type(child).__name__}")
                with device:
                    setattr(parent, child_name, type(child)(config=model.config))
    if hasattr(model, "tie_weights"):
        model.tie_weights()
