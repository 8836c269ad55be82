"""The benchmark of record: gptc (tract and ort from Rust) and ONNX Runtime's own Python package
on the same exported file, in one run, so ratios are taken on one machine state.

usage: .venv/bin/python scripts/bench.py [--int4] [--rounds N] [extra gptc bench flags]
(run scripts/python-env.sh first). With --rounds N, every variant is measured N times in turn
and the median of each ratio over the rounds is printed at the end: on a shared host, one
runtime measured while the machine is slow moves a single run's ratios by 20-30%.
Needs ORT_DYLIB_PATH (scripts/python-env.sh prints it) for the Rust ort runtime.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent


def python_ort(path, prefill_lengths, new_tokens):
    start = time.perf_counter()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - start
    inputs = {i.name: i for i in session.get_inputs()}
    _, heads, _, head_dim = inputs["past_key_values.0.key"].shape
    layers = sum(1 for n in inputs if n.endswith(".key"))
    names = [o.name for o in session.get_outputs()]

    def step(ids, past, start_pos):
        n = len(ids)
        feed = {
            "input_ids": np.array([ids], np.int64),
            "attention_mask": np.ones((1, start_pos + n), np.int64),
            "position_ids": np.arange(start_pos, start_pos + n, dtype=np.int64)[None, :],
            **past,
        }
        out = dict(zip(names, session.run(names, feed)))
        past = {k.replace("present", "past_key_values"): v for k, v in out.items() if k.startswith("present.")}
        return int(np.argmax(out["logits"][0, -1])), past

    empty = {f"past_key_values.{i}.{p}": np.zeros((1, heads, 0, head_dim), np.float32)
             for i in range(layers) for p in ("key", "value")}
    prompt = lambda n: [(i * 7919) % 50000 for i in range(n)]
    prefill_ms = []
    for n in prefill_lengths:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            step(prompt(n), empty, 0)
            times.append(time.perf_counter() - t)
        prefill_ms.append((n, sorted(times)[2] * 1e3))
    ids = prompt(16)
    token, past = step(ids, empty, 0)
    stamps = [time.perf_counter()]
    for _ in range(new_tokens - 1):
        pos = len(ids)
        ids.append(token)
        token, past = step([token], past, pos)
        stamps.append(time.perf_counter())
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return {"runtime": "python-ort", "load_s": load_s, "prefill_ms": prefill_ms, "decode_tokens_per_s": decode}


def bench_variant(gptc, flags):
    """gptc bench (tract and ort from Rust) and python-ort on one exported file."""
    with tempfile.TemporaryDirectory() as work:
        out = subprocess.run([str(gptc), "bench", "--ort", "--json", "--dir", work, *flags],
                             capture_output=True, text=True, check=True).stdout
        lines = out.strip().splitlines()
        print("\n".join(lines[:-1]))
        summary = json.loads(lines[-1])
        path = next(Path(work).glob("gptc-bench-*.onnx"))
        lengths = [n for n, _ in summary["runtimes"][0]["prefill_ms"]]
        py = python_ort(path, lengths, 128)
    print(f"{'python-ort':<10}  load {py['load_s']:.2f} s")
    for n, ms in py["prefill_ms"]:
        print(f"{'python-ort':<10}  prefill {n:>5} tokens: {ms:8.1f} ms (median of 5)")
    print(f"{'python-ort':<10}  decode after 16 tokens, KV cache: {py['decode_tokens_per_s']:.1f} tokens/s")
    bound = summary["bandwidth_bound_tokens_per_s"]
    print(f"\nratios in this run ({summary['weights_read_per_token_mb']:.0f} MB read per token, "
          f"bandwidth bound {bound:.1f} tokens/s):")
    for r in summary["runtimes"] + [py]:
        print(f"  {r['runtime']:<10} decode {r['decode_tokens_per_s']:6.1f} tokens/s = "
              f"{r['decode_tokens_per_s'] / py['decode_tokens_per_s']:.2f}x python-ort, "
              f"{r['decode_tokens_per_s'] / bound:.2f}x the bandwidth bound; prefill "
              + ", ".join(f"{n}: {ms / pms:.2f}x python-ort's time" for (n, ms), (_, pms) in zip(r["prefill_ms"], py["prefill_ms"])))
    ratios = {}
    for r in summary["runtimes"]:
        ratios[(r["runtime"], "decode, x python-ort's rate")] = r["decode_tokens_per_s"] / py["decode_tokens_per_s"]
        for (n, ms), (_, pms) in zip(r["prefill_ms"], py["prefill_ms"]):
            ratios[(r["runtime"], f"prefill {n}, x python-ort's time")] = ms / pms
    return {r["runtime"]: r["decode_tokens_per_s"] for r in summary["runtimes"] + [py]}, ratios


def main():
    """With --int4, the float32 file and the 4-bit one (gptc's default accuracy level) in one
    run, and the int4/float32 decode ratio of each runtime."""
    gptc = ROOT / "target" / "release" / "gptc"
    args = sys.argv[1:]
    rounds = 1
    if "--rounds" in args:
        at = args.index("--rounds")
        rounds = int(args[at + 1])
        args = args[:at] + args[at + 2:]
    flags = [a for a in args if a != "--int4"]
    variants = [("float32", flags)]
    if "--int4" in args:
        variants.append(("int4", [*flags, "--quantize", "int4"]))
    all_ratios = {name: [] for name, _ in variants}
    for round_number in range(rounds):
        rates = {}
        for name, variant_flags in variants:
            print(f"== {name}" + (f", round {round_number + 1} of {rounds}" if rounds > 1 else ""))
            rates[name], ratios = bench_variant(gptc, variant_flags)
            all_ratios[name].append(ratios)
        if "int4" in rates:
            print("\nint4 against float32, decode, same run:")
            for runtime, rate in rates["int4"].items():
                print(f"  {runtime:<10} {rate:6.1f} vs {rates['float32'][runtime]:6.1f} tokens/s = "
                      f"{rate / rates['float32'][runtime]:.2f}x")
            print(f"  gptc ort int4 = {rates['int4']['ort-cpu'] / rates['int4']['python-ort']:.2f}x python-ort int4; "
                  f"tract int4 = {rates['int4']['tract'] / rates['int4']['ort-cpu']:.2f}x gptc ort int4")
    if rounds > 1:
        print(f"\nmedians over {rounds} rounds (each ratio taken within its round):")
        for name, per_round in all_ratios.items():
            for key in per_round[0]:
                values = sorted(r[key] for r in per_round)
                shown = ", ".join(f"{v:.2f}" for v in values)
                print(f"  {name:<8} {key[0]:<8} {key[1]:<32} median {values[len(values) // 2]:.2f}x  ({shown})")


if __name__ == "__main__":
    main()
