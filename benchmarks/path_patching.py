"""Exact path-patching sweep (every head and MLP as sender) on smollm2-135m, 2 threads.

    python benchmarks/path_patching.py [--model smollm2-135m] [--n 225] [--subset 32]

Prints the time of one full batched sweep over the capital prompts (subject-corruption means), and
the speed-up of batched senders over one sender at a time, both measured in this process on the same
`--subset` prompts (one-at-a-time over all 225 prompts would take several times longer).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=225)
    ap.add_argument("--subset", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from factrecall.tasks.heads_stage import corrupted_means, patch_all
    from factrecall.tasks.capture import capture_batch
    from factrecall.tasks.models import load_model
    from factrecall.tasks.path_patching import EndRunner, full_forward_patch, patch_end, patch_one
    from factrecall.tasks.prompts import build_prompts
    from factrecall.tasks.relations import paper_capital
    from factrecall.tasks.tokenization import tokenize_prompts

    lm = load_model(args.model)
    tok = lambda v: tokenize_prompts(lm.tokenizer, build_prompts(paper_capital(), 0, 0, (v,), args.n), lm.max_length)  # noqa: E731
    clean, corrupt = tok("clean"), tok("subject_corrupt")
    L, H = lm.dims.n_layers, lm.dims.n_heads
    t = time.perf_counter()
    means = corrupted_means(lm, corrupt, args.batch_size)
    t_means = time.perf_counter() - t
    t = time.perf_counter()
    patch_all(lm, clean, means, [], args.batch_size)
    t_sweep = time.perf_counter() - t
    print(f"{lm.model_id}: {len(clean)} prompts x ({L * H} heads + {L} MLPs) senders, {args.threads} threads")
    print(f"corrupted means ({len(corrupt)} prompts): {t_means:.1f} s; full batched sweep (incl. clean capture): "
          f"{t_sweep:.1f} s; total {t_means + t_sweep:.1f} s")

    subset = clean[: args.subset]
    cap = capture_batch(lm.model, lm.adapter, lm.dims, [list(p.input_ids) for p in subset], lm.tokenizer.pad_token_id)
    answer = torch.tensor([p.answer_token_id for p in subset])
    runner = EndRunner(lm)
    t = time.perf_counter()
    patch_end(runner, cap, answer, means)
    batched = time.perf_counter() - t
    t = time.perf_counter()
    for layer in range(L):
        patch_one(runner, cap, answer, means, layer, None)
        for head in range(H):
            patch_one(runner, cap, answer, means, layer, head)
    single = time.perf_counter() - t
    print(f"{len(subset)} prompts, all senders: batched {batched:.2f} s, one sender at a time {single:.2f} s, "
          f"speed-up {single / batched:.1f}x")
    ids = [list(p.input_ids) for p in subset]
    senders = [(layer, layer % H) for layer in range(0, L, 3)]
    t = time.perf_counter()
    for sender in senders:
        full_forward_patch(lm, ids, answer, sender, means)
    per_sender = (time.perf_counter() - t) / len(senders)
    print(f"full forward pass per sender (reference protocol, {len(senders)} senders timed): {per_sender:.2f} s each, "
          f"{per_sender * (L * H + L):.0f} s for all senders: batched END-only is {per_sender * (L * H + L) / batched:.0f}x faster")


if __name__ == "__main__":
    main()
