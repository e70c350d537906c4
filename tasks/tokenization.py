"""Prompt text -> token ids and the positions METHOD.md §1 names.

Conventions
- The tokenizer's default special tokens are used (BOS exactly as the tokenizer adds it); ``bos`` is
  True when the first id is a special token the tokenizer added. Special tokens a tokenizer appends
  at the end (EOS) are removed, so END is always the last real prompt token.
- S is found from character offsets (``return_offsets_mapping``, fast tokenizers only): the tokens whose
  offsets overlap ``prompt.subject_span``; special tokens are ignored. ``s_pos`` is the last of them,
  ``s_first_pos`` the first.
- The answer token is the first id that ``text + " " + object`` adds after the prompt's ids; the
  prompt's ids must be an exact prefix of those ids. ``object_n_tokens`` counts the added ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from factrecall.tasks.prompts import Prompt

__all__ = ["TokenizationError", "TokenizedPrompt", "tokenize_prompts"]

_BATCH = 4096


class TokenizationError(ValueError):
    """A prompt cannot be tokenized as METHOD.md §1 requires."""


@dataclass(frozen=True)
class TokenizedPrompt:
    prompt: Prompt
    input_ids: tuple[int, ...]
    end_pos: int
    s_pos: int
    s_first_pos: int
    subject_token_id: int
    answer_token_id: int
    answer_token: str
    object_n_tokens: int
    bos: bool
    object_token_ids: tuple[int, ...] = ()  # every id " " + object adds after the prompt (the first is the answer)

    @property
    def answer_in_subject(self) -> bool:
        """The answer token is one of the prompt's subject tokens (Belarus -> " Belarus"): copying the subject
        already scores as answering, so copying and swap statistics leave such prompts out (METHOD.md §10)."""
        return self.answer_token_id in self.input_ids[self.s_first_pos : self.s_pos + 1]


def _describe(p: Prompt) -> str:
    text = p.text if len(p.text) <= 120 else "..." + p.text[-117:]
    return f"{p.relation} shot={p.shot} {p.variant} prompt_id={p.prompt_id} ({text!r})"


def _strip_trailing_special(ids: list[int], special: list[int]) -> int:
    """Length of ``ids`` without the special tokens the tokenizer appended at the end."""
    n = len(ids)
    while n > 0 and special[n - 1]:
        n -= 1
    return n


def _tokenize_one(decode, p: Prompt, enc_ids, enc_off, enc_special, full_ids, full_special,
                  max_length: int | None) -> TokenizedPrompt:
    n = _strip_trailing_special(enc_ids, enc_special)
    ids = list(enc_ids[:n])
    if n == 0:
        raise TokenizationError(f"prompt {_describe(p)} gives no tokens")
    if max_length is not None and n > max_length:
        raise TokenizationError(f"prompt {_describe(p)} has {n} tokens, more than max_length={max_length}. "
                                f"Use fewer shots or a larger max_length.")
    a, b = p.subject_span
    overlap = [i for i in range(n)
               if not enc_special[i] and enc_off[i][1] > enc_off[i][0]
               and enc_off[i][0] < b and enc_off[i][1] > a]
    if not overlap:
        raise TokenizationError(f"prompt {_describe(p)}: no token overlaps the subject span {p.subject_span}")
    m = _strip_trailing_special(full_ids, full_special)
    if list(full_ids[:n]) != ids:
        raise TokenizationError(
            f"object {p.object!r} cannot be placed after prompt {p.text!r}: tokenization merges across "
            f"the boundary (the prompt's tokens are not a prefix of the tokens of prompt + ' ' + object)")
    new = full_ids[n:m]
    if not new:
        raise TokenizationError(f"object {p.object!r} adds no token after prompt {_describe(p)}")
    return TokenizedPrompt(
        prompt=p, input_ids=tuple(ids), end_pos=n - 1, s_pos=overlap[-1], s_first_pos=overlap[0],
        subject_token_id=ids[overlap[0]], answer_token_id=int(new[0]),
        answer_token=decode(int(new[0])), object_n_tokens=len(new),
        bos=bool(enc_special[0]), object_token_ids=tuple(int(t) for t in new),
    )


def tokenize_prompts(tokenizer, prompts: Sequence[Prompt], max_length: int | None) -> list[TokenizedPrompt]:
    """Tokenize prompts in batches with a fast (offset-capable) HF tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizationError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; character offsets "
            f"(return_offsets_mapping) need a fast one. Load it with use_fast=True or from tokenizer.json/GGUF.")
    out: list[TokenizedPrompt] = []
    decoded: dict[int, str] = {}

    def decode(token_id: int) -> str:
        if token_id not in decoded:
            decoded[token_id] = tokenizer.decode([token_id])
        return decoded[token_id]

    for start in range(0, len(prompts), _BATCH):
        chunk = list(prompts[start:start + _BATCH])
        enc = tokenizer([p.text for p in chunk], return_offsets_mapping=True,
                        return_special_tokens_mask=True)
        full = tokenizer([p.text + " " + p.object for p in chunk], return_special_tokens_mask=True)
        for j, p in enumerate(chunk):
            out.append(_tokenize_one(decode, p, enc["input_ids"][j], enc["offset_mapping"][j],
                                     enc["special_tokens_mask"][j], full["input_ids"][j],
                                     full["special_tokens_mask"][j], max_length))
    return out


def length_sorted_batches(prompts: Sequence[TokenizedPrompt], size: int):
    """Yield `(indices, batch)` of up to `size` prompts, shortest first, so batches need little padding."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        yield idx, [prompts[i] for i in idx]
