"""One batched forward pass that records everything the analyses need at END.

Prompts are right-padded, so every real token sits at its unpadded position and, attention being
causal, padding never influences them; END is each row's last real token. Hooks gather END rows only.
All captured tensors are float32 and indexed `[batch, ...]`, END position only:

- `embed [B, d]`, `pos_embed [B, d] | None`     token (scaled, for Gemma) and learned position embeddings
- `head_out [B, L, H, d]`                       each head's contribution to the residual (METHOD.md §2)
- `attn_bias [B, L, d]`                         the attention output-projection bias' contribution (zeros if none)
- `attn_out [B, L, d]`                          the whole attention contribution as the model added it
- `mlp_out [B, L, d]`                           each MLP's contribution to the residual
- `resid_pre, resid_post [B, L, d]`             the residual entering / leaving each layer
- `final_resid [B, d]`                          the residual entering the final norm
- `attn [B, L, H, T]`                           attention weights END -> each position (0 beyond the row's length)
- `z [B, L, H*d_head]`                          each layer's heads' z at END (the output projection's input)
- `logits [B, V]`                               the HF model's own logits at END (after soft-capping, if any)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import FamilyAdapter, ModelDims, get_module


@dataclass
class EndCapture:
    embed: torch.Tensor
    pos_embed: torch.Tensor | None
    head_out: torch.Tensor
    attn_bias: torch.Tensor
    attn_out: torch.Tensor
    proj_out: torch.Tensor
    head_raw: torch.Tensor
    mlp_out: torch.Tensor
    resid_pre: torch.Tensor
    resid_post: torch.Tensor
    final_resid: torch.Tensor
    attn: torch.Tensor
    logits: torch.Tensor
    lengths: torch.Tensor  # [B] number of real tokens per row; END = lengths - 1
    z: torch.Tensor | None = None


def _first_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _hidden_states_arg(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class _EndRecorder:
    """Forward hooks that keep only END rows; `gather` maps `[B, T, ...]` to `[B, ...]`."""

    def __init__(self, end_pos: torch.Tensor, batch: int, seq: int):
        self.end_pos = end_pos
        self.rows = torch.arange(batch, device=end_pos.device)
        self.batch, self.seq = batch, seq
        self.store: dict[str, list] = {}

    def gather(self, t: torch.Tensor, flat: bool = False) -> torch.Tensor:
        if flat:
            t = t.reshape(self.batch, self.seq, *t.shape[1:])
        if t.shape[0] == 1 and self.batch > 1:  # e.g. GPT-2 position embeddings [1, T, d]
            t = t.expand(self.batch, *t.shape[1:])
        return t[self.rows, self.end_pos].float()

    def put(self, name: str, index: int, value: torch.Tensor) -> None:
        self.store.setdefault(name, {})[index] = value


@contextmanager
def _hooks(handles: list):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def right_pad(input_ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, T]` ids and attention mask for right-padded rows."""
    seq = max(len(r) for r in input_ids)
    ids = torch.full((len(input_ids), seq), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), seq), dtype=torch.long)
    for i, row in enumerate(input_ids):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def capture_batch(
    model: nn.Module, adapter: FamilyAdapter, dims: ModelDims, input_ids: list[list[int]], pad_id: int
) -> EndCapture:
    """Run one forward pass over right-padded `input_ids` and return the END capture.

    The model must use eager attention (attention weights are read from the attention modules).
    """
    device = next(model.parameters()).device
    ids, mask = right_pad(input_ids, pad_id, device)
    batch, seq = ids.shape
    lengths = mask.sum(1)
    end_pos = lengths - 1
    rec = _EndRecorder(end_pos, batch, seq)
    handles = []

    def on_output(name, index=0, flat=False):
        def hook(module, args, output):
            rec.put(name, index, rec.gather(_first_tensor(output), flat))

        return hook

    handles.append(get_module(model, adapter.embed, adapter.family).register_forward_hook(on_output("embed")))
    if adapter.pos_embed is not None:
        pos = get_module(model, adapter.pos_embed, adapter.family)
        handles.append(pos.register_forward_hook(on_output("pos_embed")))

    for l, layer in enumerate(adapter.layer_modules(model)):

        def layer_pre(module, args, kwargs, l=l):
            rec.put("resid_pre", l, rec.gather(_hidden_states_arg(args, kwargs)))

        def z_pre(module, args, l=l):
            rec.put("z", l, rec.gather(args[0]))

        def attn_weights(module, args, output, l=l):
            weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("attention weights not returned: load the model with attn_implementation='eager'")
            rec.put("attn", l, weights[rec.rows, :, end_pos].float())  # [B, H, T]

        handles.append(layer.register_forward_pre_hook(layer_pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(on_output("resid_post", l)))
        out_proj = adapter.layer_part(layer, adapter.out_proj)
        handles.append(out_proj.register_forward_pre_hook(z_pre))
        handles.append(out_proj.register_forward_hook(on_output("proj_out", l)))
        handles.append(adapter.layer_part(layer, adapter.attn).register_forward_hook(attn_weights))
        mlp = adapter.layer_part(layer, adapter.mlp_out)
        handles.append(mlp.register_forward_hook(on_output("mlp_out", l, adapter.mlp_out_flat)))
        if adapter.attn_post_norm is not None:
            post = adapter.layer_part(layer, adapter.attn_post_norm)
            handles.append(post.register_forward_hook(on_output("attn_out", l)))

    final_norm = get_module(model, adapter.final_norm, adapter.family)
    handles.append(
        final_norm.register_forward_pre_hook(lambda m, args: rec.put("final_resid", 0, rec.gather(args[0])))
    )

    with _hooks(handles), torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=end_pos[:, None], use_cache=False)
    logits = out.logits[:, -1].float()

    def stack(name):
        parts = rec.store[name]
        return torch.stack([parts[i] for i in range(len(parts))], dim=1)

    proj_out = stack("proj_out")
    z = stack("z")
    head_out, attn_bias, head_raw = _split_heads(model, adapter, dims, z, proj_out)
    attn_out = stack("attn_out") if adapter.attn_post_norm is not None else proj_out
    return EndCapture(
        embed=rec.store["embed"][0],
        pos_embed=rec.store["pos_embed"][0] if "pos_embed" in rec.store else None,
        head_out=head_out,
        attn_bias=attn_bias,
        attn_out=attn_out,
        proj_out=proj_out,
        head_raw=head_raw,
        mlp_out=stack("mlp_out"),
        resid_pre=stack("resid_pre"),
        resid_post=stack("resid_post"),
        final_resid=rec.store["final_resid"][0],
        attn=stack("attn"),
        logits=logits,
        lengths=lengths,
        z=z,
    )


def _split_heads(model, adapter: FamilyAdapter, dims: ModelDims, z, proj_out):
    """Per-head contributions `[B, L, H, d]`, bias contribution `[B, L, d]` and the raw per-head
    projections `[B, L, H, d]` (before any sandwich norm) from z `[B, L, H*d_head]`.

    Without a sandwich norm: o[h] = z[h] @ W_O[h], and sum_h o[h] + b_O = proj_out exactly.
    With one (Gemma): the post-attention norm is linearised at its real scale, so a part v of the
    projection output contributes g * v / rms(proj_out); the parts still sum to the norm's output.
    """
    batch = z.shape[0]
    heads, biases, raws = [], [], []
    for l, layer in enumerate(adapter.layer_modules(model)):
        out_proj = adapter.layer_part(layer, adapter.out_proj)
        w = adapter.out_proj_weight(out_proj, dims.n_heads, dims.d_head)  # [H, d_head, d]
        zl = z[:, l].reshape(batch, dims.n_heads, dims.d_head)
        o = torch.einsum("bhk,hkd->bhd", zl, w)
        raws.append(o)
        b = out_proj.bias.detach().float() if getattr(out_proj, "bias", None) is not None else None
        bias = torch.zeros(batch, dims.d_model, device=z.device) if b is None else b.expand(batch, dims.d_model).clone()
        if adapter.attn_post_norm is not None:
            gain, _, eps = adapter.norm_parameters(adapter.layer_part(layer, adapter.attn_post_norm))
            scale = gain / torch.sqrt(proj_out[:, l].pow(2).mean(-1, keepdim=True) + eps)  # [B, d]
            o = o * scale[:, None, :]
            bias = bias * scale
        heads.append(o)
        biases.append(bias)
    raw = torch.stack(raws, 1)
    return torch.stack(heads, 1), torch.stack(biases, 1), raw
