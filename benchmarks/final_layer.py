"""Step 4 (final layer) on the capital prompts, 2 threads.

    python benchmarks/final_layer.py [--model smollm2-135m] [--n 225] [--rows 6]

Prints the time of the whole final-layer stage for one partition (clean pass with the logit lens,
the mitigation grid (up to 31 rows per prompt), controls, plain text, tables and plots), and the speed-up of re-running only
the last layer at END over a whole forward pass with hooks for the same mitigation rows, both measured
in this process on the same prompts (`--rows` alphas of the `heads` variant).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=225)
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from factrecall.flows.runner import run_stage
    from factrecall.tasks.final_layer_stage import FinalLayerConfig, clean_pass
    from factrecall.tasks.capture import right_pad
    from factrecall.tasks.final_layer import mitigated_end_resid, mitigation_hooks
    from factrecall.tasks.models import load_model
    from factrecall.tasks.path_patching import EndRunner
    from factrecall.tasks.prompts import build_prompts
    from factrecall.tasks.relations import paper_capital
    from factrecall.tasks.tokenization import length_sorted_batches, tokenize_prompts

    lm = load_model(args.model)
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        out = run_stage(root, "final_layer", lm, paper_capital(), 0,
                        FinalLayerConfig(max_prompts=args.n, batch_size=args.batch_size), "bench").summary
        t_stage = time.perf_counter() - t
    print(f"{lm.model_id}: final-layer stage, paper.capital shot 0, {out['n_prompts']} prompts, {args.threads} threads: "
          f"{t_stage:.1f} s (capture stage included); verdict {out['verdict']}, "
          f"Δp {out['delta_p']:+.4f} [{out['delta_p_lo']:+.4f}, {out['delta_p_hi']:+.4f}]")

    prompts = tokenize_prompts(lm.tokenizer, build_prompts(paper_capital(), 0, 0, max_prompts=args.n), lm.max_length)
    runner = EndRunner(lm)
    res = clean_pass(lm, runner, prompts, args.batch_size)
    H, R = lm.dims.n_heads, args.rows
    alphas = torch.linspace(0, 0.9, R)
    scales = torch.ones(R, H)
    scales[:, : H // 2] = alphas[:, None]  # half the heads scaled: a stand-in for the suppressor set
    t = time.perf_counter()
    for start in range(0, len(prompts), args.batch_size):
        part = res.inputs.take(slice(start, start + args.batch_size))
        B = len(part)
        x = mitigated_end_resid(runner, part, scales.expand(B, R, H), torch.ones(B, R), None)
        runner.logits(x.reshape(B * R, -1))
    fast = time.perf_counter() - t
    t = time.perf_counter()
    for r in range(R):
        with mitigation_hooks(lm, scales[r]):
            for _, batch in length_sorted_batches(prompts, args.batch_size):
                ids, mask = right_pad([list(p.input_ids) for p in batch], lm.pad_id, lm.device)
                with torch.inference_mode():
                    lm.model(input_ids=ids, attention_mask=mask, use_cache=False,
                             logits_to_keep=(mask.sum(1) - 1)[:, None])
    slow = time.perf_counter() - t
    print(f"mitigation rows ({R} alphas x {len(prompts)} prompts): END re-run of the last layer {fast:.2f} s, "
          f"whole forward with hooks {slow:.2f} s: {slow / fast:.1f}x faster")


if __name__ == "__main__":
    main()
