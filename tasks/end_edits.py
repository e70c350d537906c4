"""Whole forward passes with edits at END (METHOD.md §6 causal checks). Pure apart from hooks.

Two kinds of edit, both at each row's END position only (right padding; END = the row's last prompt token,
``end`` when the row carries more tokens after the prompt); everything downstream, attention included, runs
normally, so later layers recompute from the edited residual:
- additive, ``edits``: a vector `[B, d]` added to one module's output,
  ("mlp_out", l): the MLP contribution of layer l (e.g. minus the task-aware component c removes c);
  ("out_proj", l): the attention output projection of layer l before any sandwich norm;
- replacement, ``replace``: a layer's heads' z (the input of the output projection) *set* to given values where
  ``mask [B, H]`` is true, at END (`[B, H, d_head]`) or at END and the K - 1 positions after it (`[B, K, H,
  d_head]`, for tokens fed after the prompt), so each chosen head's output there is exactly its value in another
  run (activation patching; METHOD.md §6's argument swap). Adding the difference of two runs' head outputs
  instead is not the same when the chosen heads span layers: a later chosen head recomputes from the edited
  residual, so after an additive edit it no longer carries the other run's output.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .capture import _first_tensor, right_pad
from .models import LoadedModel

EDIT_POINTS = ("mlp_out", "out_proj")


@contextmanager
def _edit_hooks(lm: LoadedModel, B: int, T: int, end: torch.Tensor, length: torch.Tensor,
                edits: dict[tuple[str, int], torch.Tensor],
                replace: dict[int, tuple[torch.Tensor, torch.Tensor]]):
    adapter = lm.adapter
    rows = torch.arange(B, device=end.device)
    layers = adapter.layer_modules(lm.model)
    handles = []

    def add_at_end(vec: torch.Tensor, flat: bool):
        def hook(module, args, output):
            out = _first_tensor(output)
            view = (out.reshape(B, T, -1) if flat else out).clone()
            view[rows, end] += vec.to(view.dtype)
            new = view.reshape(out.shape)
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
        return hook

    def set_z(z_new: torch.Tensor, mask: torch.Tensor):
        z_new = z_new if z_new.dim() == 4 else z_new[:, None]  # [B, K, H, d_head]
        K, H, d_head = z_new.shape[1], z_new.shape[2], z_new.shape[3]

        def hook(module, args):
            z = args[0].clone()
            for k in range(K):
                pos = end + k
                ok = pos < length  # a row with fewer tokens after END than K - 1
                r, p = rows[ok], pos[ok]
                here = z[r, p].reshape(len(r), H, d_head)
                here = torch.where(mask[ok][:, :, None], z_new[ok, k].to(z.dtype), here)
                z[r, p] = here.reshape(len(r), H * d_head)
            return (z,) + tuple(args[1:])
        return hook

    def check_layer(layer: int) -> None:
        if not 0 <= layer < len(layers):
            raise ValueError(f"layer {layer} outside the model's {len(layers)} layers")

    for (point, layer), vec in edits.items():
        if point not in EDIT_POINTS:
            raise ValueError(f"unknown edit point {point!r}; choose from {EDIT_POINTS}")
        check_layer(layer)
        path = adapter.mlp_out if point == "mlp_out" else adapter.out_proj
        module = adapter.layer_part(layers[layer], path)
        flat = point == "mlp_out" and adapter.mlp_out_flat
        handles.append(module.register_forward_hook(add_at_end(vec.to(lm.device), flat)))
    for layer, (z_new, mask) in replace.items():
        check_layer(layer)
        module = adapter.layer_part(layers[layer], adapter.out_proj)
        handles.append(module.register_forward_pre_hook(set_z(z_new.to(lm.device), mask.to(lm.device))))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def end_logits_with_edits(lm: LoadedModel, input_ids: list[list[int]],
                          edits: dict[tuple[str, int], torch.Tensor],
                          replace: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """Logits `[B, V]` at END with every edit applied (no edits = the model's own logits). ``replace`` maps a
    layer to (z `[B, H, d_head]`, mask `[B, H]` bool): those heads' z at END are set to the given values."""
    ids, mask = right_pad(input_ids, lm.pad_id, lm.device)
    B, T = ids.shape
    end = mask.sum(1) - 1
    with _edit_hooks(lm, B, T, end, mask.sum(1), edits, replace or {}):
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=end[:, None]).logits
    return logits[:, -1].float()


@torch.inference_mode()
def logits_after_end(lm: LoadedModel, input_ids: list[list[int]], end: list[int],
                     edits: dict[tuple[str, int], torch.Tensor] | None = None,
                     replace: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `[B, K, V]` at positions end[i] .. end[i] + K - 1 of each row (K = the longest row's tokens after its
    END, plus one) and which of them exist `[B, K]` (bool). A row is a prompt followed by tokens fed as given
    (teacher forcing): position end[i] + k predicts the token after the k-th of them. Additive edits apply at END;
    a replacement's z `[B, K', H, d_head]` at END .. END + K' - 1 (where the row has those positions)."""
    ids, mask = right_pad(input_ids, lm.pad_id, lm.device)
    B, T = ids.shape
    end_t = torch.tensor(end, device=ids.device)
    length = mask.sum(1)
    K = int((length - end_t).max())
    pos = end_t[:, None] + torch.arange(K, device=ids.device)[None, :]  # [B, K]
    valid = pos < length[:, None]
    with _edit_hooks(lm, B, T, end_t, length, edits or {}, replace or {}):
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False,
                          logits_to_keep=pos.clamp(max=T - 1)).logits  # [B, K, V]
    return logits.float(), valid


def top1_after_end(lm: LoadedModel, input_ids: list[list[int]], end: list[int],
                   edits: dict[tuple[str, int], torch.Tensor] | None = None,
                   replace: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """``logits_after_end``'s top-1 token `[B, K]` at each position (-1 beyond a row's last token)."""
    logits, valid = logits_after_end(lm, input_ids, end, edits, replace)
    top = logits.argmax(-1)
    return torch.where(valid, top, torch.full_like(top, -1))


@torch.inference_mode()
def z_after_end(lm: LoadedModel, input_ids: list[list[int]], end: list[int], K: int) -> torch.Tensor:
    """Every layer's heads' z `[B, K, L, H*d_head]` (float32) at positions end[i] .. end[i] + K - 1 of each row (a
    position beyond the row repeats its last one): the values a replacement sets in another run."""
    ids, mask = right_pad(input_ids, lm.pad_id, lm.device)
    B = ids.shape[0]
    last = mask.sum(1) - 1
    pos = torch.minimum(torch.tensor(end, device=ids.device)[:, None] + torch.arange(K, device=ids.device), last[:, None])
    rows = torch.arange(B, device=ids.device)[:, None]
    store: dict[int, torch.Tensor] = {}
    handles = []
    for l, layer in enumerate(lm.adapter.layer_modules(lm.model)):
        module = lm.adapter.layer_part(layer, lm.adapter.out_proj)
        handles.append(module.register_forward_pre_hook(
            lambda m, args, l=l: store.__setitem__(l, args[0][rows, pos].float())))
    try:
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([store[l] for l in range(len(store))], 2)
