"""Capture throughput against a plain HF forward of the same prompts, in one process.

    python benchmarks/capture_throughput.py [--model smollm2-135m] [--threads 2] [--batch-size 16] [--n 225]

Prints prompts/s for: a plain forward (no hooks, the model's default attention, full logits) of the
same right-padded batches; capture (hooks + eager attention, END rows only); capture + Arrow tables
(ledger included); and the whole partition written to a temporary store. Ratios are against the plain
forward. Also: cached model load time (fresh process) and peak RSS for a 1,000-prompt partition.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--peak-prompts", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from factrecall.flows.partition import CaptureConfig, run_partition
    from factrecall.storage.store import Store
    from factrecall.tasks.capture import capture_batch, right_pad
    from factrecall.tasks.models import load_model
    from factrecall.tasks.partition_capture import PartitionStats, capture_partition
    from factrecall.tasks.prompts import build_prompts
    from factrecall.tasks.relations import get_relation
    from factrecall.tasks.tokenization import tokenize_prompts

    lm = load_model(args.model)
    relation = get_relation("paper.capital")
    tokenized = tokenize_prompts(lm.tokenizer, build_prompts(relation, 0, 0), lm.max_length)
    n = len(tokenized)
    order = sorted(range(n), key=lambda i: len(tokenized[i].input_ids))
    batches = [[list(tokenized[i].input_ids) for i in order[s : s + args.batch_size]] for s in range(0, n, args.batch_size)]
    plain = AutoModelForCausalLM.from_pretrained(lm.model.name_or_path, dtype=torch.float32).eval()  # default attention
    pad = lm.tokenizer.pad_token_id

    def plain_forward():
        with torch.inference_mode():
            for rows in batches:
                ids, mask = right_pad(rows, pad, "cpu")
                plain(input_ids=ids, attention_mask=mask, use_cache=False)

    def hooks_only():
        for rows in batches:
            capture_batch(lm.model, lm.adapter, lm.dims, rows, pad)

    def with_tables():
        for _ in capture_partition(lm, tokenized, args.batch_size, PartitionStats()):
            pass

    def whole_partition():
        with tempfile.TemporaryDirectory() as tmp:
            run_partition(Store(tmp), lm, relation, 0, CaptureConfig(batch_size=args.batch_size), "bench")

    def best(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    base = best(plain_forward)
    print(f"model {lm.model_id}, {n} prompts, batch {args.batch_size}, {args.threads} threads")
    print(f"{'plain HF forward (baseline)':34s} {n / base:8.1f} prompts/s   1.00x")
    for name, fn in (("capture (hooks, eager, END)", hooks_only), ("capture + tables + ledger", with_tables),
                     ("whole partition written", whole_partition)):
        t = best(fn)
        print(f"{name:34s} {n / t:8.1f} prompts/s   {base / t:.2f}x")

    code = (
        "import time; t=time.perf_counter(); from factrecall.tasks.models import load_model; "
        f"load_model({args.model!r}); print(time.perf_counter()-t)"
    )
    load = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1])
    print(f"cached model load (fresh process, imports included): {load:.2f} s")

    code = (
        "import resource, tempfile, torch; torch.set_num_threads(%d)\n"
        "from factrecall.tasks.models import load_model\n"
        "from factrecall.tasks.relations import get_relation\n"
        "from factrecall.storage.store import Store\n"
        "from factrecall.flows.partition import CaptureConfig, run_partition\n"
        "lm = load_model(%r); rel = get_relation('lre.city_in_country')\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "with tempfile.TemporaryDirectory() as tmp:\n"
        "    r = run_partition(Store(tmp), lm, rel, 0, CaptureConfig(max_prompts=%d, batch_size=%d), 'bench')\n"
        "print(r.n_prompts, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    ) % (args.threads, args.model, args.peak_prompts, args.batch_size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    n_peak, before, after = int(out[-3]), int(out[-2]), int(out[-1])
    print(f"peak RSS for {n_peak} prompts: {after / 1024:.0f} MiB (after model load: {before / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
