"""Plain-text control for the mitigation (METHOD.md §7): what a last-layer intervention costs on prose.

The corpus ships in ``factrecall.data`` (``control-text/passages.jsonl``, sources and licences in
data/NOTICE.md). The measure is the log-probability of every next token of every passage (the
tokenizer's default special tokens; each passage its own sequence), with and without the intervention.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .final_layer import mitigation_hooks, token_directions
from .models import LoadedModel
from .readout import final_norm_of, unembedding

CORPUS = "control-text/passages.jsonl"


@dataclass(frozen=True)
class Passage:
    id: str
    source: str
    license: str
    text: str


def corpus_path() -> Path:
    return Path(str(importlib.resources.files("factrecall.data"))) / CORPUS


def load_passages() -> list[Passage]:
    with corpus_path().open(encoding="utf-8") as f:
        return [Passage(**json.loads(line)) for line in f if line.strip()]


def corpus_hash() -> str:
    return hashlib.sha256(corpus_path().read_bytes()).hexdigest()


def passage_ids(lm: LoadedModel, passages: list[Passage]) -> list[torch.Tensor]:
    """Token ids `[T]` of each passage (truncated to the model's context)."""
    rows = [lm.tokenizer(p.text)["input_ids"] for p in passages]
    limit = lm.max_length
    return [torch.tensor(r[:limit] if limit else r, dtype=torch.long) for r in rows]


@torch.inference_mode()
def text_logprobs(lm: LoadedModel, rows: list[torch.Tensor], head_scale: torch.Tensor | None = None,
                  mlp_alpha: float = 1.0, mlp_tokens: list[torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(log p of every next token `[N]`, concatenated over passages; each passage's top-1 tokens `[T]`).

    `head_scale [H]` and `mlp_alpha` with `mlp_tokens` (a token per position of each passage, e.g. the
    unmitigated top-1) apply the last-layer mitigation (`final_layer.mitigation_hooks`).
    """
    norm = final_norm_of(lm)
    w_u, _ = unembedding(lm)
    logprobs, top1 = [], []
    for i, ids in enumerate(rows):
        dirs = (token_directions(w_u, mlp_tokens[i].to(lm.device), norm)[None]
                if mlp_tokens is not None else None)
        with mitigation_hooks(lm, head_scale, mlp_alpha, dirs):
            logits = lm.model(input_ids=ids[None].to(lm.device), use_cache=False).logits[0].double()
        lp = torch.log_softmax(logits[:-1], dim=-1)
        logprobs.append(lp.gather(1, ids[1:, None].to(lm.device))[:, 0].float().cpu())
        top1.append(logits.argmax(-1).cpu())
    return torch.cat(logprobs), top1
