"""Tiny randomly initialised backbones built from the real transformers config classes."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A seeded 2-layer Llama (vocab 64, hidden 32) in eval mode."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, **overrides,
    )
    return LlamaForCausalLM(cfg).eval()
