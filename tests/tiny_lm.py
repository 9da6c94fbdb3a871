"""A tiny transformers causal LM with a real byte-level BPE tokenizer, built offline for tests."""
from __future__ import annotations

from pathlib import Path

import torch

PROMPTS = ["what is the code in the red box?", "which number is larger?",
           "what is word 3 on line 2?", "what is the price of plum?"]


def tiny_hf_lm(path: Path, arch: str = "qwen2", tie: bool = True, spare_rows: int = 0, seed: int = 0) -> Path:
    """A 2-layer ``arch`` (qwen2 | llama) with random weights, saved with its tokenizer in ``path``.

    ``spare_rows`` embedding rows beyond the tokenizer's vocabulary (Qwen2's checkpoints pad
    their embeddings this way)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(PROMPTS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)
    kind = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = kind(vocab_size=len(fast) + spare_rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=tie, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                  pad_token_id=fast.pad_token_id)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path
