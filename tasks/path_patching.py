"""Exact path patching at END with every head's query, key and value frozen (METHOD.md §4, §9).

Protocol (the paper's): a sender's output at END (a head's, or an MLP's) is replaced by its mean over
the corrupted prompts; every head's q, k, v keep their clean values; MLPs run freely; the effect is
read on the metric M = logit(y) - mean_vocab(logits) at END.

Why re-running only END's MLPs is exact. Frozen q, k, v fix every head's z (its attention-weighted
values) at every position, so every attention output everywhere is clean except the sender's at END.
Positions before END never see END (causal attention) and their MLPs see clean residuals, so they stay
clean. At END the residual differs from the sender onward, and that difference can only pass through
END's MLPs (and norms) in the sender's layer and above; each later attention contribution is its clean
value. Hence
    x = resid_pre[l_s] + attn'(l_s);  x += MLP_{l_s}(x);  for l > l_s: x += attn[l]; x += MLP_l(x)
with attn' the sender-patched attention contribution (for a Gemma sandwich norm, the post-attention
norm is re-applied to the patched projection output), then M from the final norm and unembedding.
Because M is linear in the unembedding, mean_vocab(logits) = norm(x) . mean_w W_U[w] (+ mean bias) and
no full vocabulary projection is needed (unless the model soft-caps its logits).
`full_forward_patch` implements the same protocol with hooks in a whole forward pass: the slow
reference the tests compare against.

Shapes: `[batch, ...]` END position only; `senders` are every (layer, head) plus every MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import get_module
from .capture import EndCapture, _first_tensor, right_pad
from .models import LoadedModel
from .readout import unembedding


@dataclass
class SenderMeans:
    """Each sender's replacement output at END: the mean over corrupted prompts (`[L, H, d]`, `[L, d]`),
    or one value per clean prompt of the batch (`[B, L, H, d]`, `[B, L, d]`, e.g. the same prompt with
    its relation word corrupted)."""

    head_raw: torch.Tensor  # raw per-head projection (before any sandwich norm)
    mlp_out: torch.Tensor  # MLP contribution

    def head(self, layer: int) -> torch.Tensor:
        """`[1 or B, H, d]`"""
        return self.head_raw[:, layer] if self.head_raw.dim() == 4 else self.head_raw[layer][None]

    def mlp(self, layer: int) -> torch.Tensor:
        """`[1 or B, d]`"""
        return self.mlp_out[:, layer] if self.mlp_out.dim() == 3 else self.mlp_out[layer][None]


@dataclass
class PatchResult:
    m_clean: torch.Tensor  # [B] M recomputed at END from the clean quantities
    m_heads: torch.Tensor  # [B, L, H] M with head (l, h) patched
    m_mlps: torch.Tensor  # [B, L] M with MLP l patched

    def effect_pct(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-prompt effect% = 100 (M_patched - M_clean) / M_clean for heads `[B, L, H]` and MLPs `[B, L]`."""
        base = self.m_clean
        return (100 * (self.m_heads - base[:, None, None]) / base[:, None, None],
                100 * (self.m_mlps - base[:, None]) / base[:, None])


def sender_means(captures: list[EndCapture]) -> SenderMeans:
    """Average raw head outputs and MLP outputs at END over every corrupted prompt in `captures`."""
    head = torch.cat([c.head_raw for c in captures]).double().mean(0)
    mlp = torch.cat([c.mlp_out for c in captures]).double().mean(0)
    return SenderMeans(head.float(), mlp.float())


class EndRunner:
    """Re-runs END's MLP chains and final readout for many residual vectors at once."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        adapter = lm.adapter
        self.layers = adapter.layer_modules(lm.model)
        self.chains = [[adapter.layer_part(layer, p) for p in adapter.mlp_chain] for layer in self.layers]
        self.post_norms = (
            [adapter.layer_part(layer, adapter.attn_post_norm) for layer in self.layers]
            if adapter.attn_post_norm else None
        )
        self.final_norm = get_module(lm.model, adapter.final_norm, adapter.family)
        head = lm.model.get_output_embeddings()
        self.w_u = head.weight.detach()
        # the readout runs in float32 whatever the model's dtype: converted once per model, not on every call (a
        # bfloat16 model's [vocab, d] copy per call cost 4.5x the readout itself: 1.5B, 150k vocab)
        self.w_u_f32 = unembedding(lm)[0]
        self.b_u = head.bias.detach() if getattr(head, "bias", None) is not None else None
        self.mean_w = self.w_u_f32.mean(0)
        self.mean_b = self.b_u.float().mean() if self.b_u is not None else 0.0

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        out = x.to(self.lm.dtype)
        for module in self.chains[layer]:
            out = _first_tensor(module(out))
        return out.float()

    def attn_with_delta(self, cap: EndCapture, layer: int, delta: torch.Tensor) -> torch.Tensor:
        """Attention contribution of `layer` at END when the projection output changes by `delta [B, ..., d]`."""
        return self.attn_contribution(layer, cap.proj_out[:, layer], cap.attn_out[:, layer], delta)

    def attn_contribution(self, layer: int, proj_out: torch.Tensor, attn_out: torch.Tensor,
                          delta: torch.Tensor) -> torch.Tensor:
        """Same from the layer's clean projection output and attention contribution at END (`[B, d]` each)."""
        shape = (proj_out.shape[0],) + (1,) * (delta.dim() - 2) + (proj_out.shape[-1],)
        if self.post_norms is None:
            return attn_out.reshape(shape) + delta
        raw = proj_out.reshape(shape) + delta
        return _first_tensor(self.post_norms[layer](raw.to(self.lm.dtype))).float()

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Full logits `[N, V]` (soft-capped if the model caps) of final residuals `x [N, d]`: the final
        norm recomputes its own scale for each row, exactly as the model's readout does."""
        normed = _first_tensor(self.final_norm(x.to(self.lm.dtype))).float()
        logits = normed @ self.w_u_f32.T
        if self.b_u is not None:
            logits = logits + self.b_u.float()
        cap = self.lm.dims.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def metric(self, x: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
        """M at END for final residuals `x [N, d]` and answer ids `answer [N]`."""
        if self.lm.dims.logit_softcap is not None:
            logits = self.logits(x)
            return logits.gather(1, answer[:, None])[:, 0] - logits.mean(1)
        normed = _first_tensor(self.final_norm(x.to(self.lm.dtype))).float()
        direction = self.w_u_f32[answer] - self.mean_w
        bias = (self.b_u[answer].float() - self.mean_b) if self.b_u is not None else 0.0
        return (normed * direction).sum(-1) + bias


@torch.inference_mode()
def patch_end(runner: EndRunner, cap: EndCapture, answer: torch.Tensor, means: SenderMeans) -> PatchResult:
    """Every head and every MLP as sender, batched: rows for all senders share each layer's MLP call.

    Rows are added layer by layer (a sender's row joins at its own layer), so the MLP of layer l runs
    once on all rows whose sender is at or below l.
    """
    B, L, H, d = cap.head_raw.shape
    x = torch.empty(0, d, device=cap.resid_pre.device)
    prompt_of = torch.empty(0, dtype=torch.long, device=x.device)
    for l in range(L):
        if len(x):
            x = x + cap.attn_out[prompt_of, l]
        delta = means.head(l) - cap.head_raw[:, l]  # [B, H, d]
        heads = cap.resid_pre[:, l, None] + runner.attn_with_delta(cap, l, delta)  # [B, H, d]
        x = torch.cat([x, heads.reshape(B * H, d)])
        prompt_of = torch.cat([prompt_of, torch.arange(B, device=x.device).repeat_interleave(H)])
        x = x + runner.mlp(l, x)
        mlp_rows = cap.resid_pre[:, l] + cap.attn_out[:, l] + means.mlp(l)
        x = torch.cat([x, mlp_rows])
        prompt_of = torch.cat([prompt_of, torch.arange(B, device=x.device)])
    m = runner.metric(x, answer[prompt_of])
    # Row order: for each layer l, B*H head rows (prompt-major) then B MLP rows.
    m_heads = torch.empty(B, L, H, device=x.device)
    m_mlps = torch.empty(B, L, device=x.device)
    start = 0
    for l in range(L):
        m_heads[:, l] = m[start : start + B * H].reshape(B, H)
        start += B * H
        m_mlps[:, l] = m[start : start + B]
        start += B
    return PatchResult(clean_metric(runner, cap, answer), m_heads, m_mlps)


@torch.inference_mode()
def patch_one(runner: EndRunner, cap: EndCapture, answer: torch.Tensor, means: SenderMeans,
              layer: int, head: int | None) -> torch.Tensor:
    """M `[B]` with a single sender patched (head `head` of `layer`, or its MLP when head is None)."""
    B, L, H, d = cap.head_raw.shape
    if head is None:
        x = cap.resid_pre[:, layer] + cap.attn_out[:, layer] + means.mlp(layer)
    else:
        delta = torch.zeros(B, H, d, device=cap.head_raw.device)
        delta[:, head] = means.head(layer)[:, head] - cap.head_raw[:, layer, head]
        x = cap.resid_pre[:, layer] + runner.attn_with_delta(cap, layer, delta.sum(1, keepdim=True))[:, 0]
        x = x + runner.mlp(layer, x)
    for l in range(layer + 1, L):
        x = x + cap.attn_out[:, l]
        x = x + runner.mlp(l, x)
    return runner.metric(x, answer)


@torch.inference_mode()
def patch_set(runner: EndRunner, cap: EndCapture, answer: torch.Tensor, means: SenderMeans,
              heads: list[tuple[int, int]]) -> torch.Tensor:
    """M `[B]` with every head in `heads` patched together (q, k, v still frozen everywhere)."""
    B, L, H, d = cap.head_raw.shape
    x = None
    for l in range(L):
        chosen = [h for (layer, h) in heads if layer == l]
        if x is None and not chosen:
            continue
        if x is None:
            x = cap.resid_pre[:, l]
        delta = torch.zeros(B, 1, d, device=cap.head_raw.device)
        for h in chosen:
            delta[:, 0] += means.head(l)[:, h] - cap.head_raw[:, l, h]
        x = x + (runner.attn_with_delta(cap, l, delta)[:, 0] if chosen else cap.attn_out[:, l])
        x = x + runner.mlp(l, x)
    return runner.metric(cap.final_resid if x is None else x, answer)


@torch.inference_mode()
def clean_metric(runner: EndRunner, cap: EndCapture, answer: torch.Tensor) -> torch.Tensor:
    """M `[B]` from the clean END quantities through the same final readout (equals the model's M)."""
    return runner.metric(cap.final_resid, answer)


@torch.inference_mode()
def full_forward_patch(lm: LoadedModel, input_ids: list[list[int]], answer: torch.Tensor,
                       sender: tuple[int, int | None] | None, means: SenderMeans | None) -> torch.Tensor:
    """Reference: M `[B]` from a whole forward pass with every head's z frozen to its clean value
    at every position (i.e. q, k, v frozen) and the sender's output at END set to its mean.

    `sender=None` freezes everything and patches nothing (must reproduce the clean logits).
    """
    adapter, model = lm.adapter, lm.model
    ids, mask = right_pad(input_ids, lm.pad_id, lm.device)
    end = mask.sum(1) - 1
    rows = torch.arange(len(input_ids), device=ids.device)
    layers = adapter.layer_modules(model)
    clean_z: dict[int, torch.Tensor] = {}
    handles = []
    for l, layer in enumerate(layers):
        out_proj = adapter.layer_part(layer, adapter.out_proj)
        handles.append(out_proj.register_forward_pre_hook(
            lambda m, args, l=l: clean_z.__setitem__(l, args[0].detach().clone())))
    try:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()

    d_head, n_heads = lm.dims.d_head, lm.dims.n_heads

    def frozen(l):
        def hook(module, args):
            z = clean_z[l].clone()
            if sender is not None and sender[0] == l and sender[1] is not None:
                w = adapter.out_proj_weight(module, n_heads, d_head)[sender[1]]  # [d_head, d]
                target = means.head_raw[l, sender[1]]  # raw mean output [d]: solve z_h W = target
                z_h = torch.linalg.lstsq(w.T.double(), target.double()[:, None]).solution[:, 0].to(z.dtype)
                z[rows, end, sender[1] * d_head : (sender[1] + 1) * d_head] = z_h
            return (z,) + tuple(args[1:])
        return hook

    def mlp_patch(l):
        def hook(module, args, output):
            out = _first_tensor(output)
            flat = adapter.mlp_out_flat
            view = out.reshape(len(input_ids), -1, out.shape[-1]) if flat else out
            view = view.clone()
            view[rows, end] = means.mlp_out[l].to(view.dtype)
            new = view.reshape(out.shape)
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
        return hook

    for l, layer in enumerate(layers):
        handles.append(adapter.layer_part(layer, adapter.out_proj).register_forward_pre_hook(frozen(l)))
        if sender is not None and sender[0] == l and sender[1] is None:
            handles.append(adapter.layer_part(layer, adapter.mlp_out).register_forward_hook(mlp_patch(l)))
    try:
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False,
                           logits_to_keep=end[:, None]).logits[:, -1].float()
    finally:
        for h in handles:
            h.remove()
    return logits.gather(1, answer[:, None])[:, 0] - logits.mean(1)
