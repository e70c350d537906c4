"""The model's readout, as the attributions use it: the final norm's effective gain, bias and epsilon,
and the unembedding ``W_U [vocab, d]`` with its bias (docs/METHOD.md §2)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from .adapters import get_module
from .models import LoadedModel

__all__ = ["FinalNorm", "final_norm_of", "unembedding"]


@dataclass
class FinalNorm:
    gain: torch.Tensor  # [d] effective gain (1 + w for Gemma)
    bias: torch.Tensor | None  # [d]
    eps: float
    kind: str  # "layernorm" | "rmsnorm"


def final_norm_of(lm: LoadedModel) -> FinalNorm:
    gain, bias, eps = lm.adapter.norm_parameters(get_module(lm.model, lm.adapter.final_norm, lm.adapter.family))
    return FinalNorm(gain.to(lm.device), None if bias is None else bias.to(lm.device), eps, lm.adapter.norm_kind)


#: output embedding -> (weight's version, W_U float32, b_U float32): a lower-precision model's float32 copy is made
#: once and kept while the model lives (0.9 GB on the 1.5B in bfloat16), not on every call (stages call this per
#: batch and per mitigation row). A float32 model's W_U is its own weight: no copy.
_FLOAT32: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unembedding(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_U as `[vocab, d]` float32, b_U `[vocab]` or None) from the model's output embedding (read only)."""
    head = lm.model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    version = (head.weight._version, None if bias is None else bias._version)  # an in-place edit makes a new copy
    cached = _FLOAT32.get(head)
    if cached is None or cached[0] != version:
        cached = (version, head.weight.detach().float(), None if bias is None else bias.detach().float())
        _FLOAT32[head] = cached
    return cached[1], cached[2]
