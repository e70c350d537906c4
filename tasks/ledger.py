"""The exact decomposition of END logits into component contributions (METHOD.md §2).

Proof sketch. The residual entering the final norm is x = sum_c c (embeddings, every head's output,
every output-projection bias, every MLP output; Gemma's sandwich norms linearised at their real
scale). With the final norm's scale frozen at its real value sigma = sqrt(var(x) + eps) (LayerNorm,
centred) or sqrt(mean(x^2) + eps) (RMSNorm), the norm is linear in x:
    norm(x) = g * center(x) / sigma + b = sum_c g * center(c) / sigma + b,
because centring is linear. Hence for any token w,
    logit(w) = norm(x) . W_U[:, w] + b_U[w] = sum_c DLA(c, w) + b . W_U[:, w] + b_U[w].
A soft-capped model applies cap * tanh(logit / cap) after this sum. The ledger checks this identity
against the HF model's own logits for every prompt and every attributed token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .capture import EndCapture


@dataclass(frozen=True)
class ComponentLabel:
    name: str  # "embed", "pos_embed", "L{l}.H{h}", "L{l}.attn_bias", "L{l}.mlp", "final_norm_bias", "unembed_bias"
    layer: int | None
    head: int | None


@dataclass
class Components:
    vectors: torch.Tensor  # [batch, component, d_model], residual-stream contributions at END
    labels: list[ComponentLabel]


@dataclass
class Ledger:
    dla: torch.Tensor  # [batch, component + 2]: the components' DLA, then final-norm bias, unembedding bias
    labels: list[ComponentLabel]
    dla_sum: torch.Tensor  # [batch] pre-cap logit rebuilt from the terms
    model_logit: torch.Tensor  # [batch] the HF model's logit (post-cap)
    error: torch.Tensor  # [batch] |cap(dla_sum) - model_logit|
    rtol: float = 1e-3
    scale: torch.Tensor | None = None  # [batch] |top-1 logit| of the prompt; set in lower precision only

    def tolerance(self) -> torch.Tensor:
        """``rtol * max(1, |logit|)`` in float32; ``rtol * max(1, |logit|, |top-1 logit|)`` in lower precision."""
        bound = self.model_logit.abs().clamp(min=1.0)
        return self.rtol * (bound if self.scale is None else torch.maximum(bound, self.scale))

    def bound_text(self, i: int) -> str:
        """The bound of prompt ``i`` in words, e.g. "0.03 * max(1, |logit|, |top-1 logit| 16.5)"."""
        top = f", |top-1 logit| {float(self.scale[i]):.3g}" if self.scale is not None else ""
        return f"{self.rtol} * max(1, |logit|{top})"

    def holds(self) -> torch.Tensor:
        return self.error <= self.tolerance()


LEDGER_RTOL = 1e-3  # error <= 1e-3 * max(1, |logit|), float32 (METHOD.md §2)
# Lower-precision runs compute the model in that precision, so the float32 decomposition of its
# components differs from its logits by rounding: measured worst 1.1e-2 relative on smollm2-135m in
# bfloat16 (1.1e-6 in float32). Their tolerance is stated separately (METHOD.md §9), and relative to the
# prompt's logit scale: rounding in the residual stream and the unembedding is relative to the size of the
# residual, which sets the top-1 logit, not to the attributed token's own logit (a subject logit near 0 broke
# an absolute 3e-2 on Qwen2.5-Coder-1.5B in bfloat16 with an error of 0.036 at a top-1 logit of ~16; the error
# over max(1, |logit|, |top-1 logit|) is at most 6.3e-3 on its 923 stored prompts, the same for every token role).
LEDGER_RTOL_BY_DTYPE = {torch.float32: LEDGER_RTOL, torch.float16: 2e-2, torch.bfloat16: 3e-2}


def ledger_rtol(dtype: torch.dtype) -> float:
    return LEDGER_RTOL_BY_DTYPE.get(dtype, LEDGER_RTOL)


def ledger_scales_with_prompt(dtype: torch.dtype) -> bool:
    """Whether the ledger's tolerance is relative to the prompt's top-1 logit too (lower precision only)."""
    return dtype != torch.float32


def stack_components(cap: EndCapture) -> Components:
    """Every additive residual component at END, in model order, with labels."""
    vectors, labels = [cap.embed], [ComponentLabel("embed", None, None)]
    if cap.pos_embed is not None:
        vectors.append(cap.pos_embed)
        labels.append(ComponentLabel("pos_embed", None, None))
    n_layers, n_heads = cap.head_out.shape[1], cap.head_out.shape[2]
    for l in range(n_layers):
        for h in range(n_heads):
            vectors.append(cap.head_out[:, l, h])
            labels.append(ComponentLabel(f"L{l}.H{h}", l, h))
        vectors.append(cap.attn_bias[:, l])
        labels.append(ComponentLabel(f"L{l}.attn_bias", l, None))
        vectors.append(cap.mlp_out[:, l])
        labels.append(ComponentLabel(f"L{l}.mlp", l, None))
    return Components(torch.stack(vectors, 1), labels)


def norm_scale(x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """sigma `[batch]` of `x [batch, d]`: sqrt(var + eps) for LayerNorm, sqrt(mean(x^2) + eps) for RMSNorm."""
    if kind == "layernorm":
        return torch.sqrt(x.var(-1, unbiased=False) + eps)
    return torch.sqrt(x.pow(2).mean(-1) + eps)


def center(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Subtract the mean over d_model for LayerNorm; identity for RMSNorm."""
    return x - x.mean(-1, keepdim=True) if kind == "layernorm" else x


def direct_logit_attribution(
    vectors: torch.Tensor, unembed_dirs: torch.Tensor, gain: torch.Tensor, sigma: torch.Tensor, kind: str
) -> torch.Tensor:
    """DLA `[batch, component]` of `vectors [batch, component, d]` onto `unembed_dirs [batch, d]` (W_U[:, w])."""
    weighted = gain * unembed_dirs  # [batch, d]
    return torch.einsum("bnd,bd->bn", center(vectors, kind), weighted) / sigma[:, None]


def softcap(logit: torch.Tensor, cap: float | None) -> torch.Tensor:
    return logit if cap is None else cap * torch.tanh(logit / cap)


def compute_ledger(
    cap: EndCapture,
    components: Components,
    token_ids: torch.Tensor,
    w_u: torch.Tensor,
    b_u: torch.Tensor | None,
    final_gain: torch.Tensor,
    final_bias: torch.Tensor | None,
    final_eps: float,
    norm_kind: str,
    logit_softcap: float | None,
    rtol: float = LEDGER_RTOL,
    scale: torch.Tensor | None = None,
) -> Ledger:
    """Attribute the logit of `token_ids [batch]` to every component; `w_u [vocab, d]` (lm_head weight).
    ``scale [batch]``: |top-1 logit| of each prompt where the tolerance is relative to it too
    (``ledger_scales_with_prompt``), else None."""
    sigma = norm_scale(cap.final_resid, norm_kind, final_eps)
    dirs = w_u[token_ids].float()  # [batch, d]
    dla = direct_logit_attribution(components.vectors, dirs, final_gain, sigma, norm_kind)
    bias_term = (dirs @ final_bias) if final_bias is not None else torch.zeros_like(sigma)
    unembed_bias = b_u[token_ids].float() if b_u is not None else torch.zeros_like(sigma)
    terms = torch.cat([dla, bias_term[:, None], unembed_bias[:, None]], dim=1)
    labels = components.labels + [
        ComponentLabel("final_norm_bias", None, None),
        ComponentLabel("unembed_bias", None, None),
    ]
    dla_sum = terms.double().sum(1).float()
    model_logit = cap.logits.gather(1, token_ids[:, None])[:, 0]
    error = (softcap(dla_sum, logit_softcap) - model_logit).abs()
    return Ledger(terms, labels, dla_sum, model_logit, error, rtol, scale)
