"""The final layer's plain-text cost: whole forward passes against re-running the last layer alone.

    python benchmarks/text_control.py [--model smollm2-135m] [--alphas 6] [--threads 2]

The mitigation changes only the last layer, so after one whole pass per passage (recording the last layer's
input) every α of the cost curve re-runs just the last layer, the final norm and the unembedding. Prints the
time of the α passes both ways over the shipped corpus, measured in this process, their ratio, and the
largest difference of log p between the two (they are the same computation: expect 0).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alphas", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from factrecall.tasks.control_text import load_passages, passage_ids, text_logprobs
    from factrecall.tasks.models import load_model

    lm = load_model(args.model)
    rows = passage_ids(lm, load_passages())
    recorded: list = []
    text_logprobs(lm, rows, record=recorded)
    H = lm.dims.n_heads
    scales = [torch.full((H,), float(a)) for a in torch.linspace(0.0, 0.9, args.alphas)]

    def run(**kw):
        t = time.perf_counter()
        out = [text_logprobs(lm, rows, head_scale=s, **kw)[0] for s in scales]
        return time.perf_counter() - t, out

    whole_t, whole = run()
    fast_t, fast = run(last_inputs=recorded)
    diff = max(float((a - b).abs().max()) for a, b in zip(whole, fast))
    n = sum(len(r) for r in rows)
    print(f"{lm.model_id}: {len(rows)} passages, {n} tokens, {args.alphas} alphas, {args.threads} threads, "
          f"{lm.dims.n_layers} layers, vocabulary {lm.model.config.vocab_size}")
    print(f"whole forward passes {whole_t:.2f} s; last layer alone {fast_t:.2f} s; speed-up {whole_t / fast_t:.2f}x; "
          f"max |log p difference| {diff:.1e}")


if __name__ == "__main__":
    main()
