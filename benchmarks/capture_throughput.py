"""Capture throughput against a plain HF forward of the same prompts, in one process.

    python benchmarks/capture_throughput.py [--model smollm2-135m] [--threads 2] [--batch-size 16] [--n 225]

Prints prompts/s for: a plain forward (no hooks, the model's default attention, full logits) of the
same right-padded batches; capture (hooks + eager attention, END rows only); capture + Arrow tables
(ledger included); and the whole partition written to a temporary store. Ratios are against the plain
forward. Also: cached model load time (fresh process) and peak RSS for a 1,000-prompt partition.
"""

from __future__ import annotations

import argparse
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

    from factrecall.flows.runner import run_stage
    from factrecall.stages import STAGES
    from factrecall.tasks.capture import capture_batch, right_pad
    from factrecall.tasks.capture_stage import CaptureConfig, capture_prompts
    from factrecall.tasks.models import load_model
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

    def plain_forward_end_logits():
        with torch.inference_mode():
            for rows in batches:
                ids, mask = right_pad(rows, pad, "cpu")
                end = mask.sum(1) - 1
                plain(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=end[:, None])

    def hooks_only():
        for rows in batches:
            capture_batch(lm.model, lm.adapter, lm.dims, rows, pad)

    def with_tables():
        for part in capture_prompts(lm, tokenized, args.batch_size):
            STAGES["capture"].encode(part)

    def whole_partition():
        with tempfile.TemporaryDirectory() as tmp:
            run_stage(tmp, "capture", lm, relation, 0, CaptureConfig(batch_size=args.batch_size), "bench", force=True)

    def best(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    base = best(plain_forward)
    print(f"model {lm.model_id}, {n} prompts (paper.capital, shot 0), batch {args.batch_size}, {args.threads} threads")
    print(f"{'':38s} {'prompts/s':>9s}  vs plain  vs plain-END")
    end_only = best(plain_forward_end_logits)
    rows = [("plain HF forward, all logits", base), ("plain HF forward, END logits only", end_only)]
    for name, fn in (("capture (hooks, eager, END)", hooks_only), ("capture + tables + ledger", with_tables),
                     ("whole partition committed to the store", whole_partition)):
        rows.append((name, best(fn)))
    for name, t in rows:
        print(f"{name:38s} {n / t:9.1f}  {base / t:7.2f}x  {end_only / t:10.2f}x")

    code = (
        "import time; t0=time.perf_counter(); import transformers, torch; "
        "from factrecall.tasks.models import load_model; t=time.perf_counter(); "
        f"load_model({args.model!r}); print(t-t0, time.perf_counter()-t)"
    )
    imports, load = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                              check=True).stdout.split()[-2:])
    print(f"cached model load in a fresh process: {load:.2f} s (plus {imports:.2f} s importing torch/transformers)")

    for n_prompts in (args.peak_prompts // 10, args.peak_prompts):
        peak, base_rss, written = _peak_rss(args, n_prompts)
        print(f"{written} prompts (lre.company_hq): peak RSS during capture {peak:.0f} MiB "
              f"(model loaded: {base_rss:.0f} MiB, +{peak - base_rss:.0f} MiB)")


_PEAK_CODE = """
import tempfile, threading, time, psutil, torch
torch.set_num_threads({threads})
from factrecall.tasks.models import load_model
from factrecall.tasks.relations import get_relation
from factrecall.flows.runner import run_stage
from factrecall.tasks.capture_stage import CaptureConfig
lm = load_model({model!r}); rel = get_relation('lre.company_hq')
proc = psutil.Process(); base = proc.memory_info().rss; peak = [base]; stop = [False]
def sample():
    while not stop[0]:
        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
with tempfile.TemporaryDirectory() as tmp:
    r = run_stage(tmp, 'capture', lm, rel, 0, CaptureConfig(max_prompts={n}, batch_size={batch}), 'bench')
stop[0] = True
print(peak[0] / 2**20, base / 2**20, r.summary['n_prompts'])
"""


def _peak_rss(args, n_prompts: int) -> tuple[float, float, int]:
    code = _PEAK_CODE.format(threads=args.threads, model=args.model, n=n_prompts, batch=args.batch_size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[-3]), float(out[-2]), int(out[-1])


if __name__ == "__main__":
    main()
