"""The model's readout, as the attributions use it: the final norm's effective gain, bias and epsilon,
and the unembedding ``W_U [vocab, d]`` with its bias (docs/METHOD.md §2)."""

from __future__ import annotations

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


def unembedding(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_U as `[vocab, d]` float32, b_U `[vocab]` or None) from the model's output embedding."""
    head = lm.model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    return head.weight.detach().float(), None if bias is None else bias.detach().float()
