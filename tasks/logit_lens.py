"""Logit lens across depth at END and per-token readout statistics (METHOD.md §3, §7): pure torch.

The lens at layer l reads the residual leaving block l through the model's own final norm, with the
norm's scale recomputed for that residual, then the unembedding (and soft-capping, if the model caps).
Layer -1 is the residual entering block 0 (the embeddings). At the last layer the residual is the one
the model reads out, so the lens equals the model's logits (checked in the tests).

Shapes: `resid [B, L+1, d]` (layer -1 first), statistics `[B, L+1]`; END position only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .capture import EndCapture
from .path_patching import EndRunner


@dataclass
class TokenStats:
    """Readout statistics of one token per row (`[N]` each); rank 0 = top-1."""

    logit: torch.Tensor
    logprob: torch.Tensor
    rank: torch.Tensor
    entropy: torch.Tensor  # of the whole next-token distribution, nats
    top1: torch.Tensor  # the row's argmax token id

    @property
    def prob(self) -> torch.Tensor:
        return self.logprob.exp()

    @property
    def correct(self) -> torch.Tensor:
        return self.rank == 0


def token_stats(logits: torch.Tensor, token_ids: torch.Tensor) -> TokenStats:
    """Statistics of `token_ids [N]` under `logits [N, V]` (computed in float64 for the softmax)."""
    return token_stats_many(logits, [token_ids])[0]


def token_stats_many(logits: torch.Tensor, token_sets: list[torch.Tensor]) -> list[TokenStats]:
    """``token_stats`` of each `[N]` tensor of ``token_sets`` under the same `logits [N, V]`: the softmax, the
    entropy and the argmax over the vocabulary are computed once for all of them."""
    logits = logits.double()
    logprobs = torch.log_softmax(logits, dim=-1)
    entropy = (-(logprobs.exp() * logprobs).sum(-1)).float()
    top1 = logits.argmax(-1)
    out = []
    for token_ids in token_sets:
        target = logits.gather(1, token_ids[:, None])
        out.append(TokenStats(target[:, 0].float(), logprobs.gather(1, token_ids[:, None])[:, 0].float(),
                              (logits > target).sum(1), entropy, top1))
    return out


def runner_up(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The highest-logit token other than `token_ids [N]` under `logits [N, V]` (`[N]`)."""
    masked = logits.clone()
    masked.scatter_(1, token_ids[:, None], float("-inf"))
    return masked.argmax(-1)


def depth_residuals(cap: EndCapture) -> torch.Tensor:
    """`[B, L+1, d]`: the residual entering block 0, then the residual leaving each block."""
    return torch.cat([cap.resid_pre[:, :1], cap.resid_post], dim=1)


@torch.inference_mode()
def logit_lens(runner: EndRunner, resid: torch.Tensor, token_ids: torch.Tensor) -> TokenStats:
    """Lens statistics `[B, L+1]` of `token_ids [B, L+1]` (a token per row and layer) for `resid [B, L+1, d]`.

    One layer at a time, so memory is `[B, V]` whatever the depth.
    """
    B, depth, _ = resid.shape
    parts = [token_stats(runner.logits(resid[:, k]), token_ids[:, k]) for k in range(depth)]
    return TokenStats(*(torch.stack([getattr(p, f) for p in parts], 1)
                        for f in ("logit", "logprob", "rank", "entropy", "top1")))
