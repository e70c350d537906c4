"""The END readout (final norm + full-vocabulary unembedding in float32) on a lower-precision model: the
unembedding converted to float32 once (what ``EndRunner`` does) against converted on every call (what it did).

    python benchmarks/end_readout.py [--model qwen2.5-coder-1.5b] [--dtype bfloat16] [--rows 8] [--calls 30]

One call per depth of the logit lens is what the final-layer stage makes per batch (29 on the 1.5B). Prints
the time per call both ways, measured in this process on the same residuals, their ratio, and the largest
difference between the two logits (must be 0: the same float32 arithmetic).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from factrecall.tasks.models import load_model
    from factrecall.tasks.path_patching import EndRunner, _first_tensor

    lm = load_model(args.model, dtype=args.dtype)
    runner = EndRunner(lm)
    x = torch.randn(args.rows, lm.dims.d_model, generator=torch.Generator().manual_seed(0)) * 4

    def per_call_conversion(v):  # the readout before the fix, kept here as the baseline
        normed = _first_tensor(runner.final_norm(v.to(lm.dtype))).float()
        logits = normed @ runner.w_u.float().T
        return logits if runner.b_u is None else logits + runner.b_u.float()

    def timed(fn):
        fn(x)
        start = time.perf_counter()
        for _ in range(args.calls):
            out = fn(x)
        return (time.perf_counter() - start) / args.calls, out

    with torch.inference_mode():
        t_old, old = timed(per_call_conversion)
        t_new, new = timed(runner.logits if lm.dims.logit_softcap is None else (lambda v: runner.logits(v)))
    if lm.dims.logit_softcap is not None:
        cap = lm.dims.logit_softcap
        old = cap * torch.tanh(old / cap)
    print(f"{args.model} {args.dtype}: {args.rows} rows x {new.shape[1]} tokens, {args.calls} calls")
    print(f"  converted per call: {t_old * 1000:8.1f} ms/call")
    print(f"  converted once:     {t_new * 1000:8.1f} ms/call   ({t_old / t_new:.1f}x faster)")
    print(f"  largest |difference| of the logits: {float((old - new).abs().max()):.1e}")


if __name__ == "__main__":
    main()
