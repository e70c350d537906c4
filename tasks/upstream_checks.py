"""Checks that an upstream capture is the one a stage's prompts assume (docs/METHOD.md §8).

A stage may read a capture with more prompts or variants than it needs (prompt i is built the same way
whatever ``max_prompts`` is), so it reads only the clean prompts with ``prompt_id < n`` and checks that
their stored text and answer token are its own.
"""

from __future__ import annotations

__all__ = ["StoreMismatchError", "check_capture_prompts", "clean_filter", "correct_prompts"]


class StoreMismatchError(RuntimeError):
    """Stored upstream rows do not match what the stage computes from: its numbers would be wrong."""


def clean_filter(n: int) -> list[tuple]:
    """pyarrow DNF filter for the first ``n`` clean prompts."""
    return [("variant", "=", "clean"), ("prompt_id", "<", n)]


def check_capture_prompts(capture, clean) -> None:
    """Raise ``StoreMismatchError`` unless the capture holds exactly ``clean``'s prompts (text, answer token)."""
    n = len(clean)
    rows = capture.read("prompts", ["prompt_id", "text", "answer_token_id"], filters=clean_filter(n)).to_pylist()
    stored = {r["prompt_id"]: (r["text"], r["answer_token_id"]) for r in rows}
    for p in clean:
        want = (p.prompt.text, p.answer_token_id)
        if stored.get(p.prompt.prompt_id) != want:
            raise StoreMismatchError(
                f"capture {capture.result_id} does not hold prompt {p.prompt.prompt_id} as this stage builds it "
                f"({want[0]!r}); rerun `factrecall capture` for this partition")


def correct_prompts(capture, n: int) -> "np.ndarray":
    """`[n]` bool: the model answers clean prompt i correctly (the answer token is its top-1 at END), from the
    capture's own logits. The prompts a claim is judged on (docs/METHOD.md §10)."""
    import numpy as np

    t = capture.read("logits", ["prompt_id", "answer_rank"], filters=clean_filter(n))
    out = np.zeros(n, dtype=bool)
    found = np.zeros(n, dtype=bool)
    pid = t["prompt_id"].to_numpy()
    out[pid] = t["answer_rank"].to_numpy() == 0
    found[pid] = True
    if not found.all():
        raise StoreMismatchError(f"capture {capture.result_id} has no logits row for some of the first {n} prompts")
    return out
