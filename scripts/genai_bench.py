#!/usr/bin/env python3
"""onnxruntime-genai's own int4 CPU models of gptc's qwen3-0.6b and llama3.2-1b shapes, timed
so that gptc's numbers can be set beside them in the same machine state (not in the test command).

`make WORK_DIR` writes, for each preset, a Hugging Face folder WORK_DIR/<preset>-hf (the published
config, seeded random init saved in bfloat16 as the published checkpoints are, and a one-token
stand-in tokenizer: the builder loads a tokenizer but the model does not use it), runs
    python -m onnxruntime_genai.models.builder -i WORK_DIR/<preset>-hf \
        -o WORK_DIR/<preset>-genai-int4 -p int4 -e cpu
(its output in WORK_DIR/<preset>-build.log) and sets the decoder's "intra_op_num_threads" to 2
in genai_config.json (the builder leaves it to onnxruntime-genai, which runs one thread).

`run WORK_DIR [--rounds N] [--prefill 16,128,1024] [--presets qwen3-0.6b,llama3.2-1b]` loads each
built model with onnxruntime_genai and prints, one line each: the model's file size in MB
(model.onnx + model.onnx.data); the prefill time of each prompt length (ids (i*7919) % 50000),
median of N rounds, from append_tokens until the first generated token is available; the
decode rate of 32 greedy new tokens after a 16-token prompt, tokens/s over the 31 steps after
the first (min_length keeps EOS from ending it early), median of N rounds. Last, one JSON line
with all of it.

The environment (Python 3.11):
    python -m venv .venv-torch
    .venv-torch/bin/pip install torch==2.15.0 transformers==5.24.0 onnxruntime-genai==0.18.0 onnx-ir==1.1.0
Run from the repository root:
    .venv-torch/bin/python scripts/genai_bench.py make WORK_DIR
    .venv-torch/bin/python scripts/genai_bench.py run WORK_DIR --rounds 5
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# gptc's presets (graph/src/qwen3.rs, graph/src/llama.rs), as the published config.json files.
PRESETS = {
    "qwen3-0.6b": dict(
        architectures=["Qwen3ForCausalLM"], vocab_size=151936, hidden_size=1024,
        intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
        tie_word_embeddings=True, attention_bias=False, bos_token_id=151643, eos_token_id=151645,
    ),
    "llama3.2-1b": dict(
        architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=2048,
        intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        bos_token_id=128000, eos_token_id=128001,
    ),
}
NEW_TOKENS = 32
DECODE_PROMPT = 16
THREADS = 2


def make(work: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models
    from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
                              Qwen3Config, Qwen3ForCausalLM)

    classes = {"qwen3-0.6b": (Qwen3Config, Qwen3ForCausalLM),
               "llama3.2-1b": (LlamaConfig, LlamaForCausalLM)}
    for preset, keys in PRESETS.items():
        hf, out = work / f"{preset}-hf", work / f"{preset}-genai-int4"
        config_class, model_class = classes[preset]
        torch.manual_seed(0)
        model = model_class(config_class(**keys)).to(torch.bfloat16).eval()
        model.save_pretrained(hf)
        del model
        tokenizer = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
        PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(hf)

        start = time.time()
        log = work / f"{preset}-build.log"
        with log.open("w") as sink:
            built = subprocess.run(
                [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o",
                 str(out), "-p", "int4", "-e", "cpu", "-c", str(work / "cache")],
                stdout=sink, stderr=subprocess.STDOUT)
        if built.returncode != 0:
            sys.exit(f"{preset}: the builder failed, see {log}")
        config_path = out / "genai_config.json"
        config = json.loads(config_path.read_text())
        config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = THREADS
        config_path.write_text(json.dumps(config, indent=4))
        print(f"{preset}: built in {time.time() - start:.0f} s -> {out}", flush=True)


def run(work: Path, rounds: int, prefill_lengths: list[int], presets: list[str]) -> None:
    import numpy as np
    import onnxruntime_genai as og

    def prompt(n: int) -> np.ndarray:
        return np.array([(i * 7919) % 50000 for i in range(n)], dtype=np.int32)

    def generator(model, length: int, total: int):
        params = og.GeneratorParams(model)
        # max_length sizes the KV cache: the builder's default is the whole context.
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        gen = og.Generator(model, params)
        return gen, prompt(length)

    def prefill_s(model, length: int) -> float:
        gen, ids = generator(model, length, length + 1)
        start = time.perf_counter()
        gen.append_tokens(ids)
        gen.generate_next_token()
        gen.get_next_tokens()
        return time.perf_counter() - start

    def decode_rate(model) -> tuple[float, list[int]]:
        gen, ids = generator(model, DECODE_PROMPT, DECODE_PROMPT + NEW_TOKENS)
        gen.append_tokens(ids)
        gen.generate_next_token()
        start = time.perf_counter()
        for _ in range(NEW_TOKENS - 1):
            gen.generate_next_token()
            gen.get_next_tokens()
        elapsed = time.perf_counter() - start
        new = gen.get_sequence(0)[DECODE_PROMPT:].tolist()
        assert len(new) == NEW_TOKENS, f"generated {len(new)} tokens, not {NEW_TOKENS}"
        return (NEW_TOKENS - 1) / elapsed, new

    summary = {"onnxruntime_genai": og.__version__, "threads": THREADS, "rounds": rounds,
               "models": {}}
    for preset in presets:
        folder = work / f"{preset}-genai-int4"
        threads = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"][
            "session_options"].get("intra_op_num_threads")
        size_mb = sum(p.stat().st_size for p in folder.glob("model.onnx*")) / 1e6
        start = time.perf_counter()
        model = og.Model(str(folder))
        load_s = time.perf_counter() - start
        print(f"{preset}: files {size_mb:.0f} MB, load {load_s:.1f} s, "
              f"intra_op_num_threads {threads}", flush=True)
        result = {"file_mb": round(size_mb, 1), "load_s": round(load_s, 2), "prefill_ms": {}}
        prefill_s(model, 16)  # warm-up, not counted
        for length in prefill_lengths:
            ms = statistics.median(prefill_s(model, length) for _ in range(rounds)) * 1e3
            result["prefill_ms"][length] = round(ms, 1)
            print(f"{preset}: prefill {length} tokens: {ms:.1f} ms "
                  f"({length / ms * 1e3:.0f} tokens/s), median of {rounds}", flush=True)
        rates, ids = [], []
        for _ in range(rounds):
            rate, ids = decode_rate(model)
            rates.append(rate)
        rate = statistics.median(rates)
        result["decode_tokens_per_s"] = round(rate, 2)
        print(f"{preset}: decode {NEW_TOKENS} tokens after {DECODE_PROMPT}: {rate:.2f} tokens/s "
              f"({1e3 / rate:.1f} ms/token), median of {rounds}; ids {ids[:8]}...", flush=True)
        summary["models"][preset] = result
        del model
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["make", "run"])
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefill", default="16,128,1024",
                        help="prompt lengths, comma-separated")
    parser.add_argument("--presets", default=",".join(PRESETS))
    args = parser.parse_args()
    if args.command == "make":
        args.work_dir.mkdir(parents=True, exist_ok=True)
        make(args.work_dir)
    else:
        run(args.work_dir, args.rounds, [int(n) for n in args.prefill.split(",")],
            args.presets.split(","))


if __name__ == "__main__":
    main()
