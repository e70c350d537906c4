"""Tiny random-weight models of every supported family, built from configs (no hub access).

Biases and norm weights are perturbed away from 0/1 so that a wrong gain or bias convention shows up
in the ledger instead of cancelling out.
"""

from __future__ import annotations

import functools

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
)

VOCAB = 1024
FAMILIES = ("gpt2", "opt", "llama", "gemma3")


def tiny_config(family: str):
    common = dict(vocab_size=VOCAB)
    if family == "gpt2":
        return GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=256, bos_token_id=0, eos_token_id=0, **common)
    if family == "opt":
        return OPTConfig(
            num_hidden_layers=3, num_attention_heads=4, hidden_size=32, ffn_dim=64,
            max_position_embeddings=256, word_embed_proj_dim=32, do_layer_norm_before=True,
            pad_token_id=1, bos_token_id=2, eos_token_id=2, **common,
        )
    if family == "llama":
        return LlamaConfig(
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
            intermediate_size=64, max_position_embeddings=256, attention_bias=True, **common,
        )
    if family == "gemma3":
        return Gemma3TextConfig(
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, hidden_size=32,
            intermediate_size=64, head_dim=16, max_position_embeddings=256, sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"], **common,
        )
    raise ValueError(family)


@functools.lru_cache(maxsize=None)
def tiny_model(family: str, seed: int = 0):
    """A float32 eager-attention model with perturbed norms and biases (cached; do not mutate)."""
    torch.manual_seed(seed)
    config = tiny_config(family)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2:
                p.mul_(3.0)  # larger weights: sharper attention, bigger logits
    return model
