"""float32 (the reference) against bfloat16: capture and path patching on one model, same prompts, same process.

    python benchmarks/dtype_speed.py [--model qwen2.5-coder-1.5b] [--n 32] [--threads 2] [--batch-size 8]

For each dtype it loads the model, times (best of --repeats) the END capture of the capital prompts with
their ledgers, and one path-patching sweep (subject-corrupted means, then every head and MLP as sender).
It prints the speed-up of bfloat16 over float32 and what bfloat16 costs in accuracy against the float32
reference: the worst ledger error (|DLA sum - logit| / max(1, |logit|), METHOD.md §9), the largest
difference of the heads' mean path-patching effects (effect%, METHOD.md §4), their rank correlation, and
the overlap of the 10 heads with the largest |effect|.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from factrecall.tasks.capture_stage import capture_prompts
    from factrecall.tasks.heads_stage import corrupted_means, patch_all
    from factrecall.tasks.models import load_model
    from factrecall.tasks.prompts import build_prompts
    from factrecall.tasks.relations import paper_capital
    from factrecall.tasks.tokenization import tokenize_prompts

    def best(fn):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    results = {}
    for dtype in ("float32", "bfloat16"):
        t = time.perf_counter()
        lm = load_model(args.model, dtype=dtype)
        load = time.perf_counter() - t
        tok = lambda v: tokenize_prompts(lm.tokenizer, build_prompts(paper_capital(), 0, 0, (v,), args.n),  # noqa: E731
                                         lm.max_length)
        clean, corrupt = tok("clean"), tok("subject_corrupt")

        def capture():
            worst = 0.0
            for part in capture_prompts(lm, clean, args.batch_size):
                for led in getattr(part, "ledgers", {}).values():  # the last part is the model's, without ledgers
                    worst = max(worst, float((led.error / led.model_logit.abs().clamp(min=1.0)).max()))
            return worst

        def patching():
            means = corrupted_means(lm, corrupt, args.batch_size)
            (res,) = patch_all(lm, clean, means, [], args.batch_size)
            return res.effect_pct()[0].double().mean(0)  # [L, H] mean effect% of each head (the stored statistic)

        t_cap, ledger_error = best(capture)
        t_patch, effects = best(patching)
        results[dtype] = dict(load=load, capture=t_cap, patch=t_patch, ledger=ledger_error, effects=effects)
        print(f"{lm.model_id}: load {load:.1f} s, capture {t_cap:.1f} s, path patching {t_patch:.1f} s "
              f"({args.n} prompts, {args.threads} threads); worst ledger error {ledger_error:.2e}", flush=True)
        del lm

    f32, bf16 = results["float32"], results["bfloat16"]
    print(f"bfloat16 speed-up over float32: capture {f32['capture'] / bf16['capture']:.2f}x, "
          f"path patching {f32['patch'] / bf16['patch']:.2f}x")
    a, b = f32["effects"].flatten(), bf16["effects"].flatten()
    rank = lambda x: x.argsort().argsort().double()  # noqa: E731
    rho = float(torch.corrcoef(torch.stack([rank(a), rank(b)]))[0, 1])
    top = lambda x: set(x.abs().topk(10).indices.tolist())  # noqa: E731
    print(f"mean head effect%, bfloat16 vs float32: max |difference| {float((a - b).abs().max()):.3f} points "
          f"(largest |effect| {float(a.abs().max()):.2f}); Spearman {rho:.4f}; top-10 heads shared "
          f"{len(top(a) & top(b))}/10")


if __name__ == "__main__":
    main()
