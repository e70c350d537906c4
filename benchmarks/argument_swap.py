"""The argument swap by replacement against the additive swap it replaced (issue 23), on smollm2-135m.

    python benchmarks/argument_swap.py [--model smollm2-135m] [--n 60] [--repeats 3]

Both swap the same head set (spanning two layers) at END of the capital prompts from their twins about another
subject, batch by batch, in this process:
- additive (the mlp stage before version 3): capture the clean and the twin prompt, then one whole forward pass
  that adds (twin - clean) head outputs to the output projection at END;
- replacement (now, as the mlp stage does it): one forward pass of the twin prompt that reads every layer's z at END
  (`z_after_end`), then one whole forward pass that sets the set heads' z at END to the twin's.
Prints the seconds of each (best of --repeats), their ratio, and how many prompts' top-1 differs between the two.
Run it alone on the machine: another job on the same cores slows both unevenly.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from factrecall.tasks.capture import capture_batch
    from factrecall.tasks.end_edits import end_logits_with_edits, top1_after_end, z_after_end
    from factrecall.tasks.models import load_model
    from factrecall.tasks.prompts import build_prompts
    from factrecall.tasks.relations import paper_capital
    from factrecall.tasks.tokenization import length_sorted_batches, tokenize_prompts

    lm = load_model(args.model)
    tok = lambda v: tokenize_prompts(lm.tokenizer, build_prompts(paper_capital(), 0, 0, (v,), args.n), lm.max_length)  # noqa: E731
    clean, twins = tok("clean"), tok("subject_corrupt")
    L, H, dh = lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_head
    heads = [(L // 2, 0), (L // 2, 3), (L // 2 + 1, 1)]
    mask = torch.zeros(L, H, dtype=torch.bool)
    for l, h in heads:
        mask[l, h] = True
    layers = sorted({l for l, _ in heads})

    def additive() -> list[int]:
        out = []
        for idx, batch in length_sorted_batches(clean, args.batch_size):
            ids = [list(p.input_ids) for p in batch]
            cap = capture_batch(lm.model, lm.adapter, lm.dims, ids, lm.pad_id)
            twin = capture_batch(lm.model, lm.adapter, lm.dims, [list(twins[i].input_ids) for i in idx], lm.pad_id)
            diff = twin.head_raw - cap.head_raw
            edits = {("out_proj", l): (mask[l][None, :, None] * diff[:, l]).sum(1) for l in layers}
            out += end_logits_with_edits(lm, ids, edits).argmax(-1).tolist()
        return out

    def replacement() -> list[int]:
        out = []
        for idx, batch in length_sorted_batches(clean, args.batch_size):
            ids = [list(p.input_ids) for p in batch]
            z = z_after_end(lm, [list(twins[i].input_ids) for i in idx], [twins[i].end_pos for i in idx], 1)
            z = z.reshape(len(idx), L, H, dh)
            replace = {l: (z[:, l], mask[l].expand(len(idx), H)) for l in layers}
            out += top1_after_end(lm, ids, [p.end_pos for p in batch], replace=replace)[:, 0].tolist()
        return out

    def best(fn):
        times, result = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t)
        return min(times), result

    t_add, top_add = best(additive)
    t_rep, top_rep = best(replacement)
    differ = sum(a != b for a, b in zip(top_add, top_rep))
    print(f"{lm.model_id}: {len(clean)} capital prompts, head set {['L%d.H%d' % lh for lh in heads]}, "
          f"{args.threads} threads, best of {args.repeats}")
    print(f"additive swap (clean + twin capture, edited pass): {t_add:.2f} s")
    print(f"replacement swap (twin z at END, edited pass):     {t_rep:.2f} s")
    print(f"replacement / additive: {t_rep / t_add:.2f}x; top-1 differs on {differ} of {len(clean)} prompts")


if __name__ == "__main__":
    main()
