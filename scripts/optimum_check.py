"""Hugging Face optimum on gptc's model folder: `ORTModelForCausalLM.from_pretrained(folder)`
with the tokenizer from the same folder, no other file, no network.

optimum needs PyTorch, which PyPI ships only with its CUDA packages (~3 GB), so this runs in a
venv of its own, outside the test command:

    python3 -m venv .venv-optimum
    .venv-optimum/bin/pip install "optimum-onnx[onnxruntime]==0.1.0"
    .venv-optimum/bin/python scripts/optimum_check.py target/release/gptc "$(mktemp -d)"

For a tiny config and gpt2-small: "Hello, I am" encodes to gptc's ids, 20 greedy tokens equal
`gptc generate --json`'s, and a left-padded batch of two prompts gives each prompt's own ids.
"""

import json
import os
import pathlib
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

from optimum.onnxruntime import ORTModelForCausalLM  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

NEW_TOKENS = 20
PROMPTS = ["Hello, I am", "The cat sat on the mat and"]
TINY = ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"]
passed, failed = 0, 0


def check(ok, what):
    global passed, failed
    print(("ok  " if ok else "FAIL") + " " + what, flush=True)
    passed, failed = passed + ok, failed + (not ok)


def run(*args):
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed: {out.stderr}")
    return out.stdout


def main():
    gptc, work = sys.argv[1], pathlib.Path(sys.argv[2])
    for name, config in [("tiny", TINY), ("gpt2-small", ["--preset", "gpt2-small"])]:
        folder = work / name
        run(gptc, "export", *config, "-o", f"{folder}/")
        rows = [json.loads(l) for l in run(gptc, "generate", *PROMPTS, "--model", folder, "--json",
                                           "--max-new-tokens", str(NEW_TOKENS)).splitlines()]
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = ORTModelForCausalLM.from_pretrained(folder)
        ids = tokenizer(PROMPTS[0], return_tensors="pt")
        check(ids["input_ids"][0].tolist() == rows[0]["prompt_ids"],
              f"{name}: optimum's tokenizer gives gptc's prompt ids")
        # Untrained weights may pick end-of-text: gptc's greedy loop goes on, so must this one.
        out = model.generate(**ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        check(new == rows[0]["output_ids"], f"{name}: optimum greedy ids {new[:6]}... == gptc's")

        tokenizer.padding_side = "left"
        tokenizer.pad_token = tokenizer.eos_token
        batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
        out = model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id)
        width = batch["input_ids"].shape[1]
        for row, expected in enumerate(rows):
            new = out[row, width:].tolist()
            check(new == expected["output_ids"],
                  f"{name}: optimum left-padded batch, row {row}: ids == gptc's")
    print(f"optimum: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
