"""Whole forward passes with edits at END (METHOD.md §6 causal checks). Pure apart from hooks.

Two kinds of edit, both at each row's END position only (right padding; END = the row's last prompt token,
``end`` when the row carries more tokens after the prompt); everything downstream, attention included, runs
normally, so later layers recompute from the edited residual:
- additive, ``edits``: a vector `[B, d]` added to one module's output,
  ("mlp_out", l): the MLP contribution of layer l (e.g. minus the task-aware component c removes c);
  ("out_proj", l): the attention output projection of layer l before any sandwich norm;
- replacement, ``replace``: a layer's heads' z at END (the input of the output projection, `[B, H, d_head]`)
  *set* to given values where ``mask [B, H]`` is true, so each chosen head's output at END is exactly its value
  in another run (activation patching; METHOD.md §6's argument swap). Adding the difference of two runs' head
  outputs instead is not the same when the chosen heads span layers: a later chosen head recomputes from the
  edited residual, so after an additive edit it no longer carries the other run's output.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .capture import _first_tensor, right_pad
from .models import LoadedModel

EDIT_POINTS = ("mlp_out", "out_proj")


@contextmanager
def _edit_hooks(lm: LoadedModel, B: int, T: int, end: torch.Tensor,
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
        H, d_head = z_new.shape[1], z_new.shape[2]

        def hook(module, args):
            z = args[0].clone()
            at_end = z[rows, end].reshape(B, H, d_head)
            at_end = torch.where(mask[:, :, None], z_new.to(z.dtype), at_end)
            z[rows, end] = at_end.reshape(B, H * d_head)
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
    with _edit_hooks(lm, B, T, end, edits, replace or {}):
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=end[:, None]).logits
    return logits[:, -1].float()


@torch.inference_mode()
def top1_after_end(lm: LoadedModel, input_ids: list[list[int]], end: list[int],
                   edits: dict[tuple[str, int], torch.Tensor] | None = None,
                   replace: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """Top-1 token `[B, K]` at positions end[i] .. end[i] + K - 1 of each row (K = the longest row's tokens after
    its END, plus one; -1 beyond a row's last token), with the edits applied at each row's END position ``end[i]``.
    A row is a prompt followed by tokens fed as given (teacher forcing): position end[i] + k predicts the token
    after the k-th of them."""
    ids, mask = right_pad(input_ids, lm.pad_id, lm.device)
    B, T = ids.shape
    end_t = torch.tensor(end, device=ids.device)
    length = mask.sum(1)
    K = int((length - end_t).max())
    pos = end_t[:, None] + torch.arange(K, device=ids.device)[None, :]  # [B, K]
    valid = pos < length[:, None]
    with _edit_hooks(lm, B, T, end_t, edits or {}, replace or {}):
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False,
                          logits_to_keep=pos.clamp(max=T - 1)).logits  # [B, K, V]
    top = logits.argmax(-1)
    return torch.where(valid, top, torch.full_like(top, -1))
