"""Per-prompt metrics from END logits (METHOD.md §3). Inputs `logits [batch, vocab]`, `answer [batch]`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LogitSummary:
    answer_logit: torch.Tensor  # [batch]
    p_answer: torch.Tensor  # [batch] softmax probability of the answer token
    answer_rank: torch.Tensor  # [batch] number of tokens with a strictly larger logit (0 = top-1)
    metric_m: torch.Tensor  # [batch] logit(y) - mean over the vocabulary of the logits (the paper's M)
    topk_ids: torch.Tensor  # [batch, k]
    topk_logits: torch.Tensor  # [batch, k]


def summarize_logits(logits: torch.Tensor, answer: torch.Tensor, k: int = 10) -> LogitSummary:
    logits = logits.float()
    answer_logit = logits.gather(1, answer[:, None])[:, 0]
    log_p = torch.log_softmax(logits, dim=-1).gather(1, answer[:, None])[:, 0]
    rank = (logits > answer_logit[:, None]).sum(1)
    top = logits.topk(min(k, logits.shape[1]), dim=1)
    return LogitSummary(
        answer_logit=answer_logit,
        p_answer=log_p.exp(),
        answer_rank=rank,
        metric_m=answer_logit - logits.mean(1),
        topk_ids=top.indices,
        topk_logits=top.values,
    )
