"""What a run trains and how: the VLM, its starting weights, what is trainable, the optimiser,
the learning-rate schedule and the autocast precision.

AdamW (no decay on biases, norms and embeddings), linear warmup then cosine decay to
``min_lr_ratio * lr``, autocast (bf16 / fp16) only on CUDA.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..models.registry import build_encoder
from .checkpoints import latest_checkpoint, load_checkpoint
from .config import TrainConfig, resolve_lm_path
from .data import ASCII_CHARS, PROXY_CHARS, CharTokenizer
from .vlm import VLM, CharCodec, DecoderConfig, HFCausalLM, TinyDecoder

#: (encoder, projector, LM) trainable.
Flags = tuple[bool, bool, bool]


def load_encoder_weights(encoder: nn.Module, path: str) -> None:
    """Our own state dict (strict), or an official FastViT checkpoint (ml-fastvlm / MobileCLIP layout)."""
    from .pretrained import FastViT, load_pretrained, read_state_dict

    state = read_state_dict(path)
    if set(state) == set(encoder.state_dict()):
        encoder.load_state_dict(state)
        return
    if not isinstance(encoder, FastViT):
        result = encoder.load_state_dict(state, strict=False)
        raise ValueError(f"invalid encoder_weights={path!r}: does not fit {type(encoder).__name__} "
                         f"(missing {result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]})")
    load_pretrained(encoder, state)


def build_vlm(config: TrainConfig) -> VLM:
    """Encoder from the registry, projector, and the configured language model."""
    encoder = build_encoder(config.encoder, **config.encoder_knobs)
    if config.encoder_weights is not None:
        load_encoder_weights(encoder, config.encoder_weights)
    if config.lm == "hf":
        assert config.lm_path is not None
        lm, codec = HFCausalLM.from_dir(resolve_lm_path(config.lm_path), chat_template=config.lm_chat_template)
        return VLM(encoder, lm, codec)
    chars = PROXY_CHARS if config.data == "proxy" else ASCII_CHARS
    tokenizer = CharTokenizer(chars=chars, lowercase=config.data == "proxy")
    decoder = TinyDecoder(DecoderConfig(vocab_size=tokenizer.vocab_size, hidden=config.lm_hidden,
                                        layers=config.lm_layers, heads=config.lm_heads,
                                        mlp_ratio=config.lm_mlp_ratio, max_len=config.lm_max_len,
                                        dropout=config.lm_dropout))
    return VLM(encoder, decoder, CharCodec(tokenizer))


def _checkpoint_of(field: str, source: str) -> Path:
    path = Path(source)
    found = latest_checkpoint(path) if path.is_dir() else path
    if found is None:
        raise ValueError(f"invalid {field}={source!r}: no checkpoint in that directory")
    return found


def init_weights(model: VLM, config: TrainConfig, verbose: bool) -> None:
    """Start from ``init_from`` (the same architecture, strict) or ``inherit_from`` (a larger variant)."""
    if config.init_from is not None:
        model.load_state_dict(load_checkpoint(_checkpoint_of("init_from", config.init_from))["model"])
    if config.inherit_from is None:
        return
    from .inherit import inherit_state

    report = inherit_state(model, load_checkpoint(_checkpoint_of("inherit_from", config.inherit_from))["model"])
    if report.inherited == 0:
        raise ValueError(f"invalid inherit_from={config.inherit_from!r}: no tensor of that run fits this model")
    if verbose and report.fresh:
        print(f"inherit_from: {report.inherited} tensors inherited ({report.exact} whole), "
              f"{len(report.fresh)} left at init: {list(report.fresh)[:5]}")


def check_sequence_room(model: VLM, config: TrainConfig) -> None:
    """The scratch decoder's positions must hold the visual tokens and a short exchange."""
    if config.lm != "scratch":
        return
    needed = model.encoder.num_tokens(config.resolution) + 64
    if needed > config.lm_max_len:
        raise ValueError(f"invalid lm_max_len={config.lm_max_len}: {config.encoder} at {config.resolution} px "
                         f"gives {needed - 64} visual tokens; allow at least {needed}")


def trainable_flags(config: TrainConfig) -> Flags:
    """(encoder, projector, LM) trained: stage ``projector`` trains the projector only."""
    if config.stage == "projector":
        return False, True, False
    return not config.freeze_encoder, True, not config.freeze_lm


def set_modes(model: VLM, flags: Flags) -> None:
    """Train mode for trained parts; frozen parts stay in eval (BatchNorm statistics fixed)."""
    for module, flag in zip((model.encoder, model.projector, model.lm), flags):
        module.train(flag)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; biases, norms and embeddings without weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name or name.endswith(("tok.weight", "pos.weight")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=tuple(config.betas))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup from 0 to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRFactor:
    """Picklable schedule callable for LambdaLR (:func:`lr_factor` with the run's numbers)."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.warmup, self.total, self.min_ratio)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(config.warmup_steps, config.max_steps,
                                                                 config.min_lr_ratio))


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for plain fp32."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def precision_name(amp_dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
