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
    Qwen2Config,
)

VOCAB = 1024
FAMILIES = ("gpt2", "opt", "llama", "gemma3", "qwen2")


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
    if family == "qwen2":  # q/k/v biases without an output bias; a sliding-window layer as Qwen2 allows
        return Qwen2Config(
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
            intermediate_size=64, max_position_embeddings=256, use_sliding_window=True, sliding_window=8,
            max_window_layers=2, **common,
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


def tokenizer_for(family: str):
    """The offline fixture tokenizer paired with a family: SentencePiece-style with BOS for
    Llama/Gemma, byte-level BPE without BOS for GPT-2/OPT."""
    from tokenizers_fixture import make_bpe_tokenizer, make_metaspace_tokenizer

    tok = make_metaspace_tokenizer() if family in ("llama", "gemma3") else make_bpe_tokenizer()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def save_tiny_model_dir(family: str, path) -> str:
    """Save a tiny model with its fixture tokenizer as a local HF directory; returns the path."""
    import copy

    model = copy.deepcopy(tiny_model(family))
    model.save_pretrained(path)
    tokenizer_for(family).save_pretrained(path)
    return str(path)


def loaded_tiny_model(family: str):
    """A `LoadedModel` around the cached tiny model (no files)."""
    from factrecall.tasks.adapters import adapter_for_config
    from factrecall.tasks.models import LoadedModel

    model = tiny_model(family)
    adapter = adapter_for_config(model.config)
    return LoadedModel(model_id=f"tiny-{family}", source="test", file_sha256=None, model=model,
                       tokenizer=tokenizer_for(family), adapter=adapter, dims=adapter.dims(model.config),
                       dtype=torch.float32, device=torch.device("cpu"))


def tiny_spec(path, model_dir, tolerance: str = "") -> str:
    """A reproduction spec "tiny" at ``path``: the model at ``model_dir``, paper.capital at shots 0 and 1, 10 prompts
    (``tolerance``: a [tolerance] table appended); returns the path as text."""
    path.write_text(f"""name = "tiny"
description = "tiny random model"
models = ["{model_dir}"]
shots = [0, 1]
[settings]
max_prompts = 10
n_boot = 50
batch_size = 5
[[relations]]
name = "paper.capital"
domain = "factual"
{tolerance}""")
    return str(path)


def every_prompt_answered(mp) -> None:
    """Test seam: treat every prompt as answered correctly. Claims are judged on the prompts a model answers
    (docs/METHOD.md §10) and random weights answer none, so without this every claim of a tiny model is "not
    tested"; with it the analyses and rules run on every prompt. ``mp``: a pytest MonkeyPatch (in-process only)."""
    import numpy as np

    from factrecall.tasks import claims, heads_stage, mlp_stage

    everyone = lambda capture, n: np.ones(n, dtype=bool)  # noqa: E731
    mp.setattr(heads_stage, "correct_prompts", everyone)
    mp.setattr(mlp_stage, "correct_prompts", everyone)
    real = claims._last_layer_deltas

    def deltas(up):
        out = real(up)
        return None if out is None else (out[0], np.ones_like(out[1]), out[2])

    mp.setattr(claims, "_last_layer_deltas", deltas)
