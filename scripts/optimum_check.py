"""Hugging Face optimum on gptc's model folder: `ORTModelForCausalLM.from_pretrained(folder)`
with the tokenizer from the same folder, no other file, no network.

optimum needs PyTorch, which PyPI ships only with its CUDA packages (~3 GB), so this runs in a
venv of its own, outside the test command:

    python3 -m venv .venv-optimum
    .venv-optimum/bin/pip install "optimum-onnx[onnxruntime]==0.1.0"
    .venv-optimum/bin/python scripts/optimum_check.py target/release/gptc "$(mktemp -d)"

For a tiny config and gpt2-small: "Hello, I am" encodes to gptc's ids, 20 greedy tokens equal
`gptc generate --json`'s, and a left-padded batch of two prompts gives each prompt's own ids.
For the tiny Llama and Qwen3 checkpoints of tests/fixtures/families (exported with `--weights
CHECKPOINT -o DIR/`, with their tokenizers): the prompts encode to transformers' ids (recorded in
the checkpoint's expected.json) in optimum's tokenizer and gptc's, and optimum's greedy ids, alone
and in a left-padded batch, are gptc's.
"""

import json
import os
from importlib.metadata import version
import pathlib
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

from optimum.onnxruntime import ORTModelForCausalLM  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

NEW_TOKENS = 20
PROMPTS = ["Hello, I am", "The cat sat on the mat and"]
TINY = ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"]
FAMILIES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "families"
FAMILY_CHECKPOINTS = ["llama-tied-bf16", "llama-untied-f32-sharded", "qwen3-tied-f32",
                      "qwen3-untied-bf16-sharded"]
# Two of the texts each checkpoint's expected.json has transformers' ids for.
FAMILY_PROMPTS = ["hello, i am", "the cat sat on the mat"]
passed, failed, known_count = 0, 0, 0


def check(ok, what):
    global passed, failed
    print(("ok  " if ok else "FAIL") + " " + what, flush=True)
    passed, failed = passed + ok, failed + (not ok)


def known(ok, what, why):
    """A failure of optimum's own, with its evidence: `ok` says the failure is that one, so an
    optimum that stops failing (or fails otherwise) shows as a failure to look at."""
    global known_count
    print(("known" if ok else "FAIL") + f" {what}: {why}", flush=True)
    if ok:
        known_count += 1
    else:
        check(False, what)


def run(*args):
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed: {out.stderr}")
    return out.stdout


def end_ids(folder):
    """The ids that end generation, as the folder's generation_config.json says them."""
    eos = json.loads((pathlib.Path(folder) / "generation_config.json").read_text())["eos_token_id"]
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def same_until_end(ids, expected, eos):
    """The loaders suppress end ids until their minimum length (gptc's greedy loop goes on past
    them, its next ids then chosen after an end): equal up to gptc's first end id."""
    k = next((i for i, t in enumerate(expected) if t in eos), len(expected))
    return ids[:k] == expected[:k] and len(ids) == len(expected)


def families(gptc, work):
    for name in FAMILY_CHECKPOINTS:
        checkpoint = FAMILIES / name
        expected = json.loads((checkpoint / "expected.json").read_text())
        cases = {c["text"]: c["ids"] for c in expected["tokenizer"]["texts"]}
        folder = work / name
        run(gptc, "export", "--weights", checkpoint, "-o", f"{folder}/")
        rows = [json.loads(l) for l in run(gptc, "generate", *FAMILY_PROMPTS, "--model", folder,
                                           "--json", "--max-new-tokens", str(NEW_TOKENS)).splitlines()]
        for prompt, row in zip(FAMILY_PROMPTS, rows):
            check(row["prompt_ids"] == cases[prompt],
                  f"{name}: gptc's prompt ids {row['prompt_ids']} == transformers' {cases[prompt]}")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = ORTModelForCausalLM.from_pretrained(folder)
        ids = tokenizer(FAMILY_PROMPTS[0], return_tensors="pt")
        check(ids["input_ids"][0].tolist() == cases[FAMILY_PROMPTS[0]],
              f"{name}: optimum's tokenizer gives transformers' prompt ids")
        config = json.loads((folder / "config.json").read_text())
        own_head_dim = config["head_dim"] != config["hidden_size"] // config["num_attention_heads"]
        try:
            out = model.generate(**ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 do_sample=False)
        except Exception as error:
            message = str(error).strip().splitlines()
            # optimum-onnx sizes the empty cache of the first step as hidden_size /
            # num_attention_heads for every model_type but a few (modeling_decoder.py), not
            # head_dim: a Qwen3 whose heads are wider (every published one) fails there.
            known(own_head_dim and "Got invalid dimensions for input: past_key_values" in message[0],
                  f"{name}: optimum generates",
                  f"optimum-onnx {version('optimum-onnx')} sizes the empty past as hidden_size / "
                  f"num_attention_heads = {config['hidden_size'] // config['num_attention_heads']}, "
                  f"not head_dim = {config['head_dim']}: {' '.join(message)}")
            continue
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        eos = end_ids(folder)
        check(same_until_end(new, rows[0]["output_ids"], eos),
              f"{name}: optimum greedy ids {new[:6]}... == gptc's")
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        batch = tokenizer(FAMILY_PROMPTS, return_tensors="pt", padding=True)
        out = model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
        width = batch["input_ids"].shape[1]
        for row, expected_row in enumerate(rows):
            new = out[row, width:].tolist()
            check(same_until_end(new, expected_row["output_ids"], eos),
                  f"{name}: optimum left-padded batch, row {row}: ids == gptc's")


def main():
    gptc, work = sys.argv[1], pathlib.Path(sys.argv[2])
    families(gptc, work)
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
    print(f"optimum: {passed} passed, {failed} failed, {known_count} known failures of optimum")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
