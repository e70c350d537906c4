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


#: Rows (prompt x depth) of full-vocabulary logits read out at once: `[rows, V]` float64 is 300 MB at V = 150k.
#: Every readout reads the whole unembedding (`[V, d]`, 0.5-1 GB in float32 on the packaged Qwen and Gemma
#: models) however few its rows, so the lens reads many depths per call instead of one depth per call.
LENS_ROWS = 256
_FIELDS = ("logit", "logprob", "rank", "entropy", "top1")


@torch.inference_mode()
def logit_lens_many(runner: EndRunner, resid: torch.Tensor, token_sets: list[torch.Tensor],
                    max_rows: int = LENS_ROWS) -> list[TokenStats]:
    """Lens statistics `[B, L+1]` for `resid [B, L+1, d]`, one per `[B, L+1]` tensor of ``token_sets`` (a
    token per row and layer; the softmax over the vocabulary is shared by all of them).

    Depths are read out together, about ``max_rows`` rows per call (at least one depth), so memory is
    `[max_rows, V]` whatever the depth and the unembedding is read once per call.
    """
    B, depth, d = resid.shape
    per_call = max(1, max_rows // max(B, 1))
    parts: list[list[TokenStats]] = [[] for _ in token_sets]
    for k0 in range(0, depth, per_call):
        chunk = resid[:, k0 : k0 + per_call]  # [B, k, d], rows in (prompt, depth) order
        k = chunk.shape[1]
        stats = token_stats_many(runner.logits(chunk.reshape(B * k, d)),
                                 [t[:, k0 : k0 + k].reshape(B * k) for t in token_sets])
        for acc, s in zip(parts, stats):
            acc.append(s)
    return [TokenStats(*(torch.cat([getattr(s, f).reshape(B, -1) for s in acc], 1) for f in _FIELDS))
            for acc in parts]


def logit_lens(runner: EndRunner, resid: torch.Tensor, token_ids: torch.Tensor) -> TokenStats:
    """Lens statistics `[B, L+1]` of `token_ids [B, L+1]` (a token per row and layer) for `resid [B, L+1, d]`."""
    return logit_lens_many(runner, resid, [token_ids])[0]
