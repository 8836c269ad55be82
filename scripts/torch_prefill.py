"""PyTorch's own GPT-2 small prefill time on this CPU, to set beside tract's (BENCHMARKS.md).

Builds GPT-2 small with random weights (transformers' GPT2LMHeadModel(GPT2Config()): 12 layers,
12 heads, n_embd 768, n_positions 1024, vocab 50257; nothing is downloaded), fp32, eval mode,
under torch.inference_mode() with torch.set_num_threads(os.cpu_count()), and times one forward of
a batch-1 prompt per length: 1 warm-up run, then the median of --repeats runs. Like the benchmark
of record, the forward returns the KV cache (use_cache=True) and only the last position's logits
(--all-logits computes logits for every position). --attn-implementation picks HF's attention
path: eager (default) or sdpa.

usage: .venv-torch/bin/python scripts/torch_prefill.py --json [--lengths 16,128,1024]
torch and transformers are not in scripts/requirements.txt and not part of CI; install them into
a separate venv: python3 -m venv .venv-torch && .venv-torch/bin/pip install torch transformers numpy
"""

import argparse
import json
import os
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16,128,1024", help="comma-separated prompt lengths")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per length (median)")
    parser.add_argument("--attn-implementation", default="eager", choices=["eager", "sdpa"])
    parser.add_argument("--all-logits", action="store_true", help="logits for every position")
    parser.add_argument("--json", action="store_true", help="print a final JSON line")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = GPT2Config(attn_implementation=args.attn_implementation)
    model = GPT2LMHeadModel(config).to(torch.float32).eval()
    attn = model.config._attn_implementation
    logits_to_keep = 0 if args.all_logits else 1

    results = []
    with torch.inference_mode():
        for n in lengths:
            ids = torch.randint(0, config.vocab_size, (1, n))

            def forward():
                start = time.perf_counter()
                model(input_ids=ids, use_cache=True, logits_to_keep=logits_to_keep)
                return (time.perf_counter() - start) * 1000

            forward()  # warm-up
            ms = statistics.median(forward() for _ in range(args.repeats))
            results.append([n, round(ms, 3)])
            print(f"torch       prefill {n:5d} tokens: {ms:10.1f} ms (median of {args.repeats})")

    if args.json:
        print(json.dumps({
            "runtime": "torch",
            "torch_version": torch.__version__,
            "threads": threads,
            "attn_implementation": attn,
            "all_logits": args.all_logits,
            "prefill_ms": results,
        }))


if __name__ == "__main__":
    main()
