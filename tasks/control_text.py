"""Plain-text control for the mitigation (METHOD.md §7): what a last-layer intervention costs on prose.

The corpus ships in ``factrecall.data`` (``control-text/passages.jsonl``, sources and licences in
data/NOTICE.md). The measure is the log-probability of every next token of every passage (the
tokenizer's default special tokens; each passage its own sequence), with and without the intervention.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from contextlib import contextmanager, nullcontext
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


@contextmanager
def _recording_last_input(lm: LoadedModel, into: list):
    """Within the block, each forward of ``lm.model`` appends what its second-to-last layer returned (the
    input of the last layer) to ``into``."""
    layers = lm.adapter.layer_modules(lm.model)
    if len(layers) < 2:
        yield
        return
    handle = layers[-2].register_forward_hook(lambda module, args, output: into.append(_clone(output)))
    try:
        yield
    finally:
        handle.remove()


def _clone(output):
    return output.clone() if isinstance(output, torch.Tensor) else type(output)(
        o.clone() if isinstance(o, torch.Tensor) else o for o in output)


@contextmanager
def _replaying(lm: LoadedModel, last_input):
    """Within the block, the layers before the last one do not compute: each returns ``last_input`` (what the
    second-to-last layer returned for this very input, recorded by ``_recording_last_input``), so a forward
    pass re-runs only the last layer, the final norm and the unembedding. The model builds its masks and
    position embeddings as usual. Exact: the last layer sees the same input as in a whole forward pass."""
    layers = lm.adapter.layer_modules(lm.model)[:-1]
    for layer in layers:  # an instance attribute shadows the class's forward; nn.Module.__call__ calls it
        layer.forward = lambda *args, **kwargs: _clone(last_input)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@torch.inference_mode()
def text_logprobs(lm: LoadedModel, rows: list[torch.Tensor], head_scale: torch.Tensor | None = None,
                  mlp_alpha: float = 1.0, mlp_tokens: list[torch.Tensor] | None = None,
                  last_inputs: list | None = None, record: list | None = None, with_top1: bool = True,
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(log p of every next token `[N]`, concatenated over passages; each passage's top-1 tokens `[T]`, or an
    empty list with ``with_top1=False``: the argmax over the vocabulary costs as much as a tenth of a pass).

    `head_scale [H]` and `mlp_alpha` with `mlp_tokens` (a token per position of each passage, e.g. the
    unmitigated top-1) apply the last-layer mitigation (`final_layer.mitigation_hooks`). The mitigation
    changes the last layer only, so a pass without it can ``record`` each passage's last-layer input and
    later passes re-run the last layer alone from those ``last_inputs`` (`_replaying`; the same numbers).
    """
    norm = final_norm_of(lm)
    w_u, _ = unembedding(lm)
    logprobs, top1 = [], []
    for i, ids in enumerate(rows):
        dirs = (token_directions(w_u, mlp_tokens[i].to(lm.device), norm)[None]
                if mlp_tokens is not None else None)
        prefix = (_replaying(lm, last_inputs[i]) if last_inputs  # (empty for a one-layer model: nothing to skip)
                  else _recording_last_input(lm, record) if record is not None else nullcontext())
        with prefix, mitigation_hooks(lm, head_scale, mlp_alpha, dirs):
            logits = lm.model(input_ids=ids[None].to(lm.device), use_cache=False).logits[0].double()
        lp = torch.log_softmax(logits[:-1], dim=-1)
        logprobs.append(lp.gather(1, ids[1:, None].to(lm.device))[:, 0].float().cpu())
        if with_top1:
            top1.append(logits.argmax(-1).cpu())
    return torch.cat(logprobs), top1
