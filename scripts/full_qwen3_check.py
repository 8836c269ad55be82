#!/usr/bin/env python3
"""A full-size check of the Qwen3 import, measured once for BENCHMARKS.md (not in the test command).

Writes a Qwen3ForCausalLM of Qwen3-0.6B's published shape (seeded random init, bfloat16 as the
published checkpoint, tied head) with transformers' `save_pretrained`, then runs
`gptc generate --weights DIR --ids ... --json --with-logits` on it and holds gptc to transformers'
own forward: every step's last-position logits within 1e-4 of the largest, and the same greedy
ids as transformers' `generate`. Prints the times and the largest error.

Run from the repository root, in an environment with torch and transformers:
    python scripts/full_qwen3_check.py GPTC_BINARY WORK_DIR
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

PROMPT = [9707, 11, 358, 1079, 264, 4128, 1614, 13]
NEW_TOKENS = 8


def main() -> None:
    gptc, work = sys.argv[1], Path(sys.argv[2])
    folder = work / "qwen3-0.6b-shaped"
    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_bias=False,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16).eval()
    start = time.time()
    model.save_pretrained(folder)
    print(f"save_pretrained (bfloat16): {time.time() - start:.1f} s -> {folder}")

    # transformers' answers in float32 from the checkpoint as saved, as gptc computes. Read back
    # rather than cast: casting the model cast its RoPE frequencies to bfloat16 too.
    model = Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        generated = model.generate(
            input_ids=torch.tensor([PROMPT]),
            attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0].tolist()
        logits = model(input_ids=torch.tensor([generated[:-1]])).logits[0]
    expected_ids = generated[len(PROMPT) :]
    expected_steps = logits[len(PROMPT) - 1 :]

    start = time.time()
    run = subprocess.run(
        [gptc, "generate", "--weights", str(folder), "--ids", ",".join(map(str, PROMPT)),
         "--max-new-tokens", str(NEW_TOKENS), "--json", "--with-logits"],
        capture_output=True, text=True, check=True,
    )
    print(f"gptc generate --weights (import, compile, tract): {time.time() - start:.1f} s")
    print(run.stderr.strip().splitlines()[-1])
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    steps = torch.tensor(answer["step_logits"])
    worst = max(
        float((got - want).abs().max() / want.abs().max())
        for got, want in zip(steps, expected_steps)
    )
    print(f"transformers' ids {expected_ids}")
    print(f"gptc's ids        {answer['output_ids']}")
    print(f"largest step-logit error, relative to the largest logit: {worst:.2e}")
    ok = answer["output_ids"] == expected_ids and worst <= 1e-4
    print("ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
