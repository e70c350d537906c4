"""Declarative per-family adapters: where each component lives and which conventions it follows.

One `FamilyAdapter` per model family (GPT-2, OPT, Llama, Gemma 3, Qwen2). Module paths are dotted paths
relative to the `*ForCausalLM` root (for the model) or to one decoder layer (for per-layer modules).
Nothing outside this file may branch on the architecture: code asks the adapter.

Conventions every adapter states:
- `norm_kind`: "layernorm" (centre, divide by sqrt(var + eps), gain, bias) or "rmsnorm" (divide by
  sqrt(mean(x^2) + eps), gain, no bias).
- `gain_offset`: the effective gain is `gain_offset + weight` (Gemma stores w and applies 1 + w).
- `out_proj_kind`: "linear" (weight `[d_model, H*d_head]`) or "conv1d" (GPT-2, weight `[H*d_head, d_model]`).
- `attn_post_norm`: a norm applied to the whole attention output before it joins the residual
  (Gemma's sandwich norm); head outputs are linearised at its real scale (METHOD.md §2).
- `mlp_out`: the module whose output is exactly what the MLP adds to the residual stream.
- q/k/v projection biases (Qwen2, Llama with attention_bias) need no entry: a head's value bias is part of
  its z (attention weights sum to 1, so b_v passes through unchanged) and therefore of that head's output
  z[h] @ W_O[h] in the ledger; only the output projection's bias (`out_proj.bias`) is a separate term.
- `mlp_chain`: the per-layer modules that, applied in order to the residual after attention, give that
  contribution (pre-MLP norm, MLP, and Gemma's post-MLP norm). Used to re-run MLPs at END alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn


class UnsupportedModelError(ValueError):
    """The model's architecture or configuration is outside what factrecall can decompose."""


@dataclass(frozen=True)
class FamilyAdapter:
    family: str
    model_types: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str
    attn: str
    out_proj: str
    mlp_out: str
    norm_kind: Literal["layernorm", "rmsnorm"]
    pos_embed: str | None = None
    unembed: str = "lm_head"
    out_proj_kind: Literal["linear", "conv1d"] = "linear"
    attn_post_norm: str | None = None
    mlp_out_flat: bool = False  # module output is [batch*seq, d_model] instead of [batch, seq, d_model]
    mlp_chain: tuple[str, ...] = ()
    gain_offset: float = 0.0
    norm_eps_attr: str = "eps"
    bos_rule: str = "tokenizer default"
    check_config: Callable[[object], None] = field(default=lambda config: None, compare=False)

    # ---- lookups that fail loudly -------------------------------------------------------------
    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        layers = get_module(model, self.layers, self.family)
        return list(layers)

    def layer_part(self, layer: nn.Module, path: str) -> nn.Module:
        return get_module(layer, path, self.family)

    def norm_parameters(self, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """(effective gain `[d_model]`, bias `[d_model]` or None, eps) of a norm module, float32."""
        weight = getattr(norm, "weight", None)
        if weight is None:
            raise UnsupportedModelError(f"{self.family}: norm {type(norm).__name__} has no weight")
        eps = getattr(norm, self.norm_eps_attr, None)
        if eps is None:
            raise UnsupportedModelError(
                f"{self.family}: norm {type(norm).__name__} has no attribute {self.norm_eps_attr!r}"
            )
        gain = weight.detach().float() + self.gain_offset
        bias = getattr(norm, "bias", None)
        return gain, (None if bias is None else bias.detach().float()), float(eps)

    def out_proj_weight(self, out_proj: nn.Module, n_heads: int, d_head: int) -> torch.Tensor:
        """Output projection as `[head, d_head, d_model]` float32, so o[h] = z[h] @ W[h]."""
        w = out_proj.weight.detach().float()
        if self.out_proj_kind == "conv1d":  # [H*d_head, d_model]
            return w.reshape(n_heads, d_head, w.shape[1])
        return w.T.reshape(n_heads, d_head, w.shape[0])  # Linear: [d_model, H*d_head]

    def dims(self, config) -> "ModelDims":
        n_heads = int(config.num_attention_heads)
        d_model = int(config.hidden_size)
        d_head = getattr(config, "head_dim", None) or d_model // n_heads
        softcap = getattr(config, "final_logit_softcapping", None)
        return ModelDims(
            n_layers=int(config.num_hidden_layers),
            n_heads=n_heads,
            d_model=d_model,
            d_head=int(d_head),
            logit_softcap=None if softcap is None else float(softcap),
        )


@dataclass(frozen=True)
class ModelDims:
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    logit_softcap: float | None


def get_module(root: nn.Module, path: str, family: str = "model") -> nn.Module:
    """`root.<path>` or an error that names the missing piece (tuned-lens style: fail loudly)."""
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise UnsupportedModelError(
                f"{family} adapter expects module {path!r} but {type(module).__name__} has no "
                f"{part!r}; this checkpoint's layout differs from the {family} family"
            )
        module = getattr(module, part)
    return module


def _check_opt(config) -> None:
    if not getattr(config, "do_layer_norm_before", True):
        raise UnsupportedModelError(
            "OPT with do_layer_norm_before=False (post-norm, e.g. facebook/opt-350m) is not supported: "
            "its residual stream is not a sum of component outputs; use a pre-norm size "
            "(opt-125m, opt-1.3b, opt-2.7b, ...)"
        )
    if getattr(config, "word_embed_proj_dim", config.hidden_size) != config.hidden_size:
        raise UnsupportedModelError(
            "OPT with word_embed_proj_dim != hidden_size (project_in/project_out, e.g. opt-350m) is not supported"
        )


def _check_llama(config) -> None:
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        raise UnsupportedModelError("Llama with pretraining_tp > 1 is not supported; set pretraining_tp=1")


ADAPTERS: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        family="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        embed="transformer.wte",
        pos_embed="transformer.wpe",
        final_norm="transformer.ln_f",
        attn="attn",
        out_proj="attn.c_proj",
        out_proj_kind="conv1d",
        mlp_out="mlp",
        mlp_chain=("ln_2", "mlp"),
        norm_kind="layernorm",
        bos_rule="tokenizer default (GPT-2 adds no BOS)",
    ),
    FamilyAdapter(
        family="opt",
        model_types=("opt",),
        layers="model.decoder.layers",
        embed="model.decoder.embed_tokens",
        pos_embed="model.decoder.embed_positions",
        final_norm="model.decoder.final_layer_norm",
        attn="self_attn",
        out_proj="self_attn.out_proj",
        mlp_out="fc2",
        mlp_out_flat=True,
        mlp_chain=("final_layer_norm", "fc1", "activation_fn", "fc2"),
        norm_kind="layernorm",
        bos_rule="tokenizer default (OPT prepends </s>)",
        check_config=_check_opt,
    ),
    FamilyAdapter(
        family="llama",
        model_types=("llama",),
        layers="model.layers",
        embed="model.embed_tokens",
        final_norm="model.norm",
        attn="self_attn",
        out_proj="self_attn.o_proj",
        mlp_out="mlp",
        mlp_chain=("post_attention_layernorm", "mlp"),  # Llama's "post_attention_layernorm" is the pre-MLP norm
        norm_kind="rmsnorm",
        norm_eps_attr="variance_epsilon",
        bos_rule="tokenizer default (Llama prepends <s>)",
        check_config=_check_llama,
    ),
    FamilyAdapter(
        family="gemma3",
        model_types=("gemma3_text",),
        layers="model.layers",
        embed="model.embed_tokens",  # Gemma3TextScaledWordEmbedding: output already scaled by sqrt(d)
        final_norm="model.norm",
        attn="self_attn",
        out_proj="self_attn.o_proj",
        attn_post_norm="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",  # sandwich norm: the normed MLP output joins the residual
        mlp_chain=("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm"),
        norm_kind="rmsnorm",
        gain_offset=1.0,
        bos_rule="tokenizer default (Gemma prepends <bos>)",
    ),
)
# Qwen2 has Llama's layout and norms; its q/k/v projections carry biases (the value bias stays in each head's z:
# see the module docstring) and its output projection none.
_LLAMA = next(a for a in ADAPTERS if a.family == "llama")
ADAPTERS += (dataclasses.replace(_LLAMA, family="qwen2", model_types=("qwen2",), check_config=lambda config: None,
                                 bos_rule="tokenizer default (Qwen2 adds no BOS)"),)


def supported_families() -> str:
    return ", ".join(f"{a.family} ({'/'.join(a.model_types)})" for a in ADAPTERS)


def adapter_for_config(config) -> FamilyAdapter:
    """The adapter for an HF config, after checking the config is one we can decompose exactly."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            adapter.check_config(config)
            return adapter
    raise UnsupportedModelError(
        f"model_type {model_type!r} is not supported; supported families: {supported_families()}"
    )
