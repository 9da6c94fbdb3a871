"""The trainable VLM: registry encoder -> MLP2xGelu projector -> language model.

Two language models plug in behind the same small interface (embed ids, run embeddings):

- :class:`TinyDecoder`: a from-scratch decoder-only transformer (token + learned position
  embeddings, pre-norm causal blocks, tied LM head) with :class:`CharCodec` over
  :class:`~explorer.train.data.CharTokenizer`. CPU-feasible; the default.
- :class:`HFCausalLM`: a local transformers causal-LM directory (``from_pretrained`` with
  ``local_files_only``; nothing is downloaded) with its own tokenizer via :class:`HFCodec`.

Sequence layout, LLaVA style, left-padded so that batched greedy decoding appends at the end::

    [pad ... pad] [visual tokens x N] [prompt_1] [answer_1 <eos>] [prompt_2] [answer_2 <eos>] ...

The loss covers answer tokens (and their ``<eos>``) only. Position ids count real tokens, so
padding never shifts positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import VisionEncoder
from ..models.projector import MLP2xGelu
from .data import CharTokenizer

from explorer.checks import check_int, check_number, is_number, require

IGNORE_INDEX = -100



# --------------------------------------------------------------------------------------------
# text codecs: how turns become token ids for a given language model


class TextCodec(Protocol):
    vocab_size: int
    pad_id: int
    eos_id: int

    def prompt_ids(self, text: str, first: bool) -> list[int]: ...

    def answer_ids(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class CharCodec:
    """Prompt = ``[<bos>] question <sep>`` (``<bos>`` on the first turn), answer = ``answer <eos>``."""

    def __init__(self, tokenizer: CharTokenizer) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.pad_id = tokenizer.pad_id
        self.eos_id = tokenizer.eos_id

    def prompt_ids(self, text: str, first: bool) -> list[int]:
        bos = [self.tokenizer.bos_id] if first else []
        return bos + self.tokenizer.encode(text) + [self.tokenizer.sep_id]

    def answer_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text) + [self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)


class HFCodec:
    """A transformers tokenizer: prompt = ``[bos] text "\\n"``, answer = ``text <eos>``."""

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("invalid tokenizer: it has no eos_token; set one (e.g. tokenizer.eos_token = '</s>') "
                             "so that generation can stop")
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id
        self.bos_id = tokenizer.bos_token_id

    def prompt_ids(self, text: str, first: bool) -> list[int]:
        bos = [int(self.bos_id)] if first and self.bos_id is not None else []
        return bos + list(self.tokenizer(text + "\n", add_special_tokens=False)["input_ids"])

    def answer_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + [self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class ChatCodec(HFCodec):
    """A transformers tokenizer with its chat template (LLaVA-1.5 / FastVLM conversation format).

    A conversation is rendered turn by turn with ``apply_chat_template``; the text each new
    message adds to the rendering is that message's segment. User segments (with the template's
    system prompt and headers, and the generation prompt) are context; an assistant segment is
    trained on its answer tokens and the template's end-of-turn token (the tokenizer's eos,
    ``<|im_end|>`` for ChatML models such as Qwen2 and SmolLM2), which is also where generation
    stops. Whatever the template adds after the end-of-turn token (a newline) opens the next
    user segment.
    """

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("invalid lm_chat_template=True: this tokenizer has no chat template")
        self.eos_text = tokenizer.convert_ids_to_tokens(self.eos_id)

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def encode_turns(self, turns: Sequence[tuple[str, str]], final_answer: bool) -> tuple[list[int], list[int]]:
        messages: list[dict[str, str]] = []
        ids: list[int] = []
        labels: list[int] = []
        rendered = ""
        for k, (question, answer) in enumerate(turns):
            messages.append({"role": "user", "content": question})
            text = self._render(messages, True)
            if not text.startswith(rendered):
                raise ValueError("chat template does not render conversations incrementally; "
                                 "use lm_chat_template=False")
            prompt = self._ids(text[len(rendered):])
            ids += prompt
            labels += [IGNORE_INDEX] * len(prompt)
            rendered = text
            if k < len(turns) - 1 or final_answer:
                messages.append({"role": "assistant", "content": answer})
                text = self._render(messages, False)
                ans = self.answer_ids(answer)
                ids += ans
                labels += ans
                # the answer and its end-of-turn token are now rendered; the rest opens the next turn
                marker = text.find(self.eos_text, len(rendered))
                rendered = text[: marker + len(self.eos_text)] if marker >= 0 else text
        return ids, labels


# --------------------------------------------------------------------------------------------
# language models


@dataclass(frozen=True)
class DecoderConfig:
    """Size of the from-scratch decoder."""

    vocab_size: int
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    max_len: int = 512  # visual + text tokens
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden", "layers", "heads", "max_len"):
            check_int(f"lm_{name}" if name != "vocab_size" else name, getattr(self, name), low=1)
        require(self.hidden % self.heads == 0, "lm_heads", self.heads, f"a divisor of lm_hidden={self.hidden}")
        check_number("lm_mlp_ratio", self.mlp_ratio, low=0, low_open=True)
        require(is_number(self.dropout) and 0.0 <= self.dropout < 1.0, "lm_dropout", self.dropout, "a number in [0, 1)")


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        inner = int(cfg.hidden * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.hidden, inner), nn.GELU(), nn.Linear(inner, cfg.hidden))
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=drop)
        x = x + F.dropout(self.proj(att.transpose(1, 2).reshape(b, t, c)), drop, self.training)
        return x + F.dropout(self.mlp(self.ln2(x)), drop, self.training)


class TinyDecoder(nn.Module):
    """Decoder-only transformer trained from scratch (GPT-2 style, tied embeddings)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden = cfg.hidden
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight
        self.apply(self._init)
        for block in self.blocks:  # scaled residual init keeps deep stacks stable
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tok(ids)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        t = embeds.shape[1]
        if t > self.cfg.max_len:
            raise ValueError(f"sequence of {t} tokens exceeds lm_max_len={self.cfg.max_len}; raise lm_max_len")
        causal = torch.ones(t, t, dtype=torch.bool, device=embeds.device).tril()
        allowed = causal[None] & mask[:, None, :].bool()
        allowed = allowed | torch.eye(t, dtype=torch.bool, device=embeds.device)[None]  # pad rows see themselves
        x = embeds + self.pos(positions)
        for block in self.blocks:
            x = block(x, allowed[:, None])
        return self.head(self.norm(x))


class HFCausalLM(nn.Module):
    """A local transformers causal LM driven through ``inputs_embeds``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.hidden = int(model.config.hidden_size)

    @classmethod
    def from_dir(cls, path: Union[str, Path], chat_template: bool = False) -> tuple["HFCausalLM", HFCodec]:
        """Load a local transformers directory, or a ``.gguf`` file (transformers' GGUF loading:
        weights dequantised to fp32, tokenizer and chat template read from the file; needs the
        ``gguf`` and ``accelerate`` packages). Nothing is downloaded."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ValueError(f"invalid lm_path={str(path)!r}: no such GGUF file")
            where: dict[str, Any] = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
        elif (path / "config.json").is_file():
            where = {"pretrained_model_name_or_path": str(path)}
        else:
            raise ValueError(f"invalid lm_path={str(path)!r}: neither a local transformers model directory "
                             "(with config.json) nor a .gguf file; nothing is downloaded")
        tokenizer = AutoTokenizer.from_pretrained(**where, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(**where, local_files_only=True, dtype=torch.float32)
        codec = ChatCodec(tokenizer) if chat_template else HFCodec(tokenizer)
        return cls(model), codec

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions, use_cache=False)
        return out.logits


# --------------------------------------------------------------------------------------------
# the VLM


@dataclass
class Batch:
    """Left-padded model inputs built from images and turns."""

    embeds: torch.Tensor  # [B, L, H]
    mask: torch.Tensor  # [B, L] bool, True on real tokens
    positions: torch.Tensor  # [B, L]
    labels: Optional[torch.Tensor]  # [B, L] token to predict at each position, IGNORE_INDEX elsewhere


def normalize_answer(text: str) -> str:
    """Exact match compares lower-cased text with runs of whitespace collapsed."""
    return " ".join(text.lower().split())


class VLM(nn.Module):
    """Encoder + projector + language model, with teacher-forced loss and greedy decoding."""

    def __init__(self, encoder: VisionEncoder, lm: nn.Module, codec: TextCodec) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = MLP2xGelu(encoder.out_channels, lm.hidden)
        self.lm = lm
        self.codec = codec

    def set_trainable(self, encoder: bool, projector: bool, lm: bool) -> None:
        """Freeze parts (LLaVA stage 1 trains the projector only)."""
        for module, flag in ((self.encoder, encoder), (self.projector, projector), (self.lm, lm)):
            for p in module.parameters():
                p.requires_grad_(flag)

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(images))

    def _assemble(self, visual: torch.Tensor, texts: list[list[int]], labels: Optional[list[list[int]]]) -> Batch:
        """Place each row as [pads][visual][text] by rolling right-padded rows to the right."""
        device = visual.device
        b, n, h = visual.shape
        t_max = max(len(t) for t in texts)
        length = n + t_max
        ids = torch.full((b, t_max), self.codec.pad_id, dtype=torch.long, device=device)
        lab = torch.full((b, length), IGNORE_INDEX, dtype=torch.long, device=device)
        mask = torch.zeros(b, length, dtype=torch.bool, device=device)
        for i, row in enumerate(texts):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long, device=device)
            mask[i, : n + len(row)] = True
            if labels is not None:
                lab[i, n: n + len(row)] = torch.tensor(labels[i], dtype=torch.long, device=device)
        text_emb = self.lm.embed(ids)
        embeds = torch.cat([visual.to(text_emb.dtype), text_emb], dim=1)
        shift = torch.tensor([t_max - len(row) for row in texts], device=device)
        index = (torch.arange(length, device=device)[None] - shift[:, None]) % length
        embeds = embeds.gather(1, index[..., None].expand(-1, -1, h))
        mask = mask.gather(1, index)
        lab = lab.gather(1, index)
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        return Batch(embeds, mask, positions, lab if labels is not None else None)

    def encode_turns(self, turns: Sequence[tuple[str, str]], final_answer: bool) -> tuple[list[int], list[int]]:
        """Token ids and labels of a conversation; without ``final_answer`` it ends at the last prompt."""
        if hasattr(self.codec, "encode_turns"):  # a codec with its own conversation format
            return self.codec.encode_turns(turns, final_answer)  # type: ignore[attr-defined]
        ids: list[int] = []
        labels: list[int] = []
        for k, (question, answer) in enumerate(turns):
            prompt = self.codec.prompt_ids(question, first=k == 0)
            ids += prompt
            labels += [IGNORE_INDEX] * len(prompt)
            if k < len(turns) - 1 or final_answer:
                ans = self.codec.answer_ids(answer)
                ids += ans
                labels += ans
        return ids, labels

    def loss(self, images: torch.Tensor, turns: Sequence[Sequence[tuple[str, str]]]) -> torch.Tensor:
        """Mean cross-entropy over answer tokens (teacher forcing)."""
        total, count = self.loss_sum(images, turns)
        return total / count.clamp(min=1)

    def loss_sum(self, images: torch.Tensor, turns: Sequence[Sequence[tuple[str, str]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy over answer tokens and their count (for token-weighted means
        across gradient-accumulation micro-batches and processes)."""
        encoded = [self.encode_turns(t, final_answer=True) for t in turns]
        batch = self._assemble(self.visual_tokens(images), [e[0] for e in encoded], [e[1] for e in encoded])
        logits = self.lm(batch.embeds, batch.mask, batch.positions)
        assert batch.labels is not None
        # The logit at position p predicts the token at p + 1.
        targets = batch.labels[:, 1:].reshape(-1)
        total = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets,
                                ignore_index=IGNORE_INDEX, reduction="sum")
        return total, (targets != IGNORE_INDEX).sum()

    def forward(self, images: torch.Tensor, turns: Sequence[Sequence[tuple[str, str]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss_sum` (``forward`` so that DistributedDataParallel's gradient hooks fire)."""
        return self.loss_sum(images, turns)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, turns: Sequence[Sequence[tuple[str, str]]],
                 max_new_tokens: int = 16) -> list[str]:
        """Greedy answers to the last turn of each conversation (earlier answers are given)."""
        prompts = [self.encode_turns(t, final_answer=False)[0] for t in turns]
        batch = self._assemble(self.visual_tokens(images), prompts, None)
        embeds, mask, positions = batch.embeds, batch.mask, batch.positions
        b = embeds.shape[0]
        out = torch.full((b, max_new_tokens), self.codec.eos_id, dtype=torch.long, device=embeds.device)
        done = torch.zeros(b, dtype=torch.bool, device=embeds.device)
        for step in range(max_new_tokens):
            logits = self.lm(embeds, mask, positions)[:, -1]
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.codec.eos_id), nxt)
            out[:, step] = nxt
            done |= nxt == self.codec.eos_id
            if bool(done.all()):
                break
            embeds = torch.cat([embeds, self.lm.embed(nxt[:, None]).to(embeds.dtype)], dim=1)
            mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool, device=mask.device)], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        return [self.codec.decode(row.tolist()) for row in out]
