"""Whole forward passes with additive edits at END (METHOD.md §6 causal checks). Pure apart from hooks.

An edit adds a vector `[B, d]` to the output of one module at each row's END position (right padding,
END = the row's last real token); everything downstream, attention included, runs normally:
- ("mlp_out", l): the MLP contribution of layer l (e.g. minus the task-aware component c removes c);
- ("out_proj", l): the attention output projection of layer l before any sandwich norm (e.g. the
  difference of two prompts' raw head outputs swaps those heads' outputs, as replacing their z would:
  the projection is linear in z).
"""

from __future__ import annotations

import torch

from .capture import _first_tensor, right_pad
from .models import LoadedModel

EDIT_POINTS = ("mlp_out", "out_proj")


@torch.inference_mode()
def end_logits_with_edits(lm: LoadedModel, input_ids: list[list[int]],
                          edits: dict[tuple[str, int], torch.Tensor]) -> torch.Tensor:
    """Logits `[B, V]` at END with every edit applied (no edits = the model's own logits)."""
    adapter = lm.adapter
    ids, mask = right_pad(input_ids, lm.pad_id, lm.device)
    B, T = ids.shape
    end = mask.sum(1) - 1
    rows = torch.arange(B, device=ids.device)
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

    for (point, layer), vec in edits.items():
        if point not in EDIT_POINTS:
            raise ValueError(f"unknown edit point {point!r}; choose from {EDIT_POINTS}")
        if not 0 <= layer < len(layers):
            raise ValueError(f"layer {layer} outside the model's {len(layers)} layers")
        path = adapter.mlp_out if point == "mlp_out" else adapter.out_proj
        module = adapter.layer_part(layers[layer], path)
        flat = point == "mlp_out" and adapter.mlp_out_flat
        handles.append(module.register_forward_hook(add_at_end(vec.to(lm.device), flat)))
    try:
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=end[:, None]).logits
    finally:
        for h in handles:
            h.remove()
    return logits[:, -1].float()
