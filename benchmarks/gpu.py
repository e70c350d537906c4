"""Capture and path-patching throughput on the GPU against the CPU, in one process, on the same prompts.

    python benchmarks/gpu.py [--model smollm2-135m] [--n 225] [--batch-sizes 16,64,128] [--threads 2]

For each batch size: capture prompts/s (clean forward passes with every END quantity captured) and
path-patching prompts/s (every head and MLP as sender, END-only re-runs), on the CPU (the reference, at the
first batch size) and on CUDA, with the GPU/CPU ratio and the largest difference of M between the two
devices (float32: the same numbers to rounding). Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=225)
    ap.add_argument("--batch-sizes", default="16,64,128")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not torch.cuda.is_available():
        print(f"no CUDA device (torch {torch.__version__}, CUDA {torch.version.cuda}): nothing to measure")
        return

    from factrecall.tasks.capture import capture_batch
    from factrecall.tasks.heads_stage import corrupted_means
    from factrecall.tasks.models import load_model
    from factrecall.tasks.path_patching import EndRunner, patch_end
    from factrecall.tasks.prompts import build_prompts
    from factrecall.tasks.relations import paper_capital
    from factrecall.tasks.tokenization import length_sorted_batches, tokenize_prompts

    def measure(lm, batch_size: int):
        tok = lambda v: tokenize_prompts(lm.tokenizer, build_prompts(paper_capital(), 0, 0, (v,), args.n),  # noqa: E731
                                         lm.max_length)
        clean, corrupt = tok("clean"), tok("subject_corrupt")
        means = corrupted_means(lm, corrupt, batch_size)
        runner = EndRunner(lm)
        caps, t_capture, t_patch, metric = [], 0.0, 0.0, torch.empty(len(clean))
        for idx, batch in length_sorted_batches(clean, batch_size):
            _sync(lm.device)
            t = time.perf_counter()
            cap = capture_batch(lm.model, lm.adapter, lm.dims, [list(p.input_ids) for p in batch], lm.pad_id)
            _sync(lm.device)
            t_capture += time.perf_counter() - t
            answer = torch.tensor([p.answer_token_id for p in batch], device=lm.device)
            t = time.perf_counter()
            result = patch_end(runner, cap, answer, means)
            _sync(lm.device)
            t_patch += time.perf_counter() - t
            metric[idx] = result.m_heads.float().mean((1, 2)).cpu()
        return len(clean) / t_capture, len(clean) / t_patch, metric

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    cpu = load_model(args.model, device="cpu")
    cpu_capture, cpu_patch, cpu_metric = measure(cpu, sizes[0])
    del cpu
    gpu = load_model(args.model, device="cuda")
    name = torch.cuda.get_device_name(0)
    print(f"{gpu.model_id}, paper.capital shot 0, {args.n} prompts; CPU {args.threads} threads at batch {sizes[0]}: "
          f"capture {cpu_capture:.1f} prompts/s, path patching {cpu_patch:.2f} prompts/s")
    for batch_size in sizes:
        measure(gpu, batch_size)  # warm-up: kernels, allocator
        capture, patch, metric = measure(gpu, batch_size)
        err = (metric - cpu_metric).abs().max().item()
        print(f"{name}, batch {batch_size}: capture {capture:.1f} prompts/s ({capture / cpu_capture:.1f}x CPU), "
              f"path patching {patch:.2f} prompts/s ({patch / cpu_patch:.1f}x CPU); "
              f"largest |ΔM| GPU vs CPU {err:.2e}; peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
