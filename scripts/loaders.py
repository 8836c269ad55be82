"""Loaders no one here wrote, on gptc's model folder, as a user would point them at it.

usage: loaders.py GPTC WORKDIR   (run by scripts/test.sh in .venv-loaders; see loaders-env.sh)

For a tiny config and for gpt2-small, `gptc export -o DIR/` writes a folder; then
- onnxruntime-genai's `Model(folder)` and its tokenizer, and
- transformers.js (Node, offline) with its tokenizer from the folder,
each encode "Hello, I am" to gptc's ids and generate 20 greedy tokens equal to
`gptc generate --model DIR --json`'s. transformers' tokenizer loaded from the folder gives gptc's
ids for a few hundred varied strings. (optimum needs PyTorch: scripts/optimum_check.py, in a
venv of its own.)

For Llama and Qwen3, the tiny transformers checkpoints of tests/fixtures/families (with their
tokenizers) are exported with `--weights CHECKPOINT -o DIR/`; gptc's tokenizer (`gptc generate
--model DIR`, `gptc tokenize --tokenizer DIR/tokenizer.json`) and each loader's encode a prompt to
transformers' ids (recorded in the checkpoint's expected.json), and each loader generates gptc's
greedy ids.
"""

import json
import os
import pathlib
import subprocess
import sys

import onnxruntime_genai as og
from transformers import AutoTokenizer

PROMPT = "Hello, I am"
NEW_TOKENS = 20
TINY = ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"]
SCRIPTS = pathlib.Path(__file__).resolve().parent
FAMILIES = SCRIPTS.parent / "tests" / "fixtures" / "families"
# (checkpoint, the prompt: one of the texts its expected.json has transformers' ids for)
FAMILY_CHECKPOINTS = [("llama-tied-bf16", "hello, i am"), ("llama-untied-f32-sharded", "the cat sat on the mat"),
                      ("qwen3-tied-f32", "hello, i am"), ("qwen3-untied-bf16-sharded", "the cat sat on the mat")]

passed, failed, known_count = 0, 0, 0


def check(ok, what):
    global passed, failed
    print(("ok  " if ok else "FAIL") + " " + what, flush=True)
    if ok:
        passed += 1
    else:
        failed += 1


def known(ok, what, why):
    """A difference of a loader's own, with its evidence: `ok` is the difference itself, so a
    loader that stops differing (or differs otherwise) shows as a failure to look at."""
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


def gptc_generate(gptc, folder, prompt, runtime="tract"):
    out = run(gptc, "generate", prompt, "--model", folder, "--json",
              "--max-new-tokens", str(NEW_TOKENS), "--runtime", runtime)
    row = json.loads(out)
    return row["prompt_ids"], row["output_ids"]


def genai_generate(folder, prompt, prompt_ids=None):
    """genai's tokenizer's ids for `prompt`, and the greedy ids genai generates from
    `prompt_ids` (default: its tokenizer's)."""
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    encoded = [int(i) for i in tokenizer.encode(prompt)]
    ids = encoded if prompt_ids is None else prompt_ids
    params = og.GeneratorParams(model)
    # gptc's greedy loop goes on past an end id: so must this one.
    params.set_search_options(do_sample=False, max_length=len(ids) + NEW_TOKENS,
                              min_length=len(ids) + NEW_TOKENS)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    return encoded, [int(i) for i in generator.get_sequence(0)][len(ids):]


def transformers_js_generate(folder, prompt):
    out = run("node", SCRIPTS / "js" / "generate.mjs", folder, prompt, str(NEW_TOKENS))
    row = json.loads(out.strip().splitlines()[-1])
    return row["prompt_ids"], row["output_ids"]


def end_ids(folder):
    """The ids that end generation, as the folder's generation_config.json says them."""
    eos = json.loads((pathlib.Path(folder) / "generation_config.json").read_text())["eos_token_id"]
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def same_until_end(ids, expected, eos):
    """The loaders suppress end ids until their minimum length (gptc's greedy loop goes on past
    them, its next ids then chosen after an end): equal up to gptc's first end id."""
    k = next((i for i, t in enumerate(expected) if t in eos), len(expected))
    return ids[:k] == expected[:k] and len(ids) == len(expected)


def family_folders(gptc, work):
    """Llama and Qwen3 folders: exported from transformers' checkpoints, loaded as they are."""
    for name, prompt in FAMILY_CHECKPOINTS:
        checkpoint = FAMILIES / name
        expected = json.loads((checkpoint / "expected.json").read_text())
        case = next(c for c in expected["tokenizer"]["texts"] if c["text"] == prompt)
        folder = work / name
        run(gptc, "export", "--weights", checkpoint, "-o", f"{folder}/")
        out = run(gptc, "check", folder)
        check("side files agree" in out, f"{name}: gptc check reads the folder back")
        gptc_ids = json.loads(run(gptc, "tokenize", "--tokenizer", folder / "tokenizer.json", prompt))
        check(gptc_ids == [case["ids"]],
              f"{name}: gptc tokenize {gptc_ids[0]} == transformers' {case['ids']}")
        prompt_ids, expected_ids = gptc_generate(gptc, folder, prompt)
        check(prompt_ids == case["ids"],
              f"{name}: gptc generate's prompt ids {prompt_ids} == transformers' {case['ids']}")
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        ids = tokenizer(prompt)["input_ids"]
        check(ids == case["ids"], f"{name}: transformers' tokenizer from the folder {ids} == {case['ids']}")
        # genai generates from transformers' ids: its tokenizer differs on Llama (below).
        genai = lambda folder, prompt: genai_generate(folder, prompt, case["ids"])
        for loader, generate in [("onnxruntime-genai", genai),
                                 ("transformers.js", transformers_js_generate)]:
            try:
                prompt_ids, ids = generate(folder, prompt)
            except Exception as error:  # a loader that cannot load the folder: its own words
                check(False, f"{name}: {loader} failed: {str(error).strip().splitlines()[-1]}")
                continue
            what = f"{name}: {loader}'s tokenizer {prompt_ids} == transformers' {case['ids']}"
            bos = expected["tokenizer"]["texts"][-1]["ids"]  # the empty text: [BOS] or []
            if loader == "onnxruntime-genai" and bos:
                known(prompt_ids == case["ids"][len(bos):], what,
                      f"onnxruntime-genai {og.__version__}'s tokenizer (onnxruntime-extensions) "
                      f"leaves out the BOS {bos} that tokenizer.json's TemplateProcessing adds "
                      "(also with tokenizer_class PreTrainedTokenizerFast, LlamaTokenizer, "
                      "add_bos_token true)")
            else:
                check(prompt_ids == case["ids"], what)
            check(same_until_end(ids, expected_ids, end_ids(folder)),
                  f"{name}: {loader} greedy ids {ids[:6]}... == gptc's {expected_ids[:6]}...")


def write_checkpoint(folder):
    """A small Hugging Face GPT-2 checkpoint (config.json + model.safetensors, tied head)."""
    import numpy as np
    from safetensors.numpy import save_file
    e, layers, heads, ctx, vocab = 64, 2, 4, 64, 50257
    rng = np.random.default_rng(7)
    normal = lambda *shape: (rng.standard_normal(shape) * 0.05).astype(np.float32)
    tensors = {"wte.weight": normal(vocab, e), "wpe.weight": normal(ctx, e),
               "ln_f.weight": 1 + normal(e), "ln_f.bias": normal(e)}
    for i in range(layers):
        p = f"h.{i}."
        tensors.update({
            p + "ln_1.weight": 1 + normal(e), p + "ln_1.bias": normal(e),
            p + "attn.c_attn.weight": normal(e, 3 * e), p + "attn.c_attn.bias": normal(3 * e),
            p + "attn.c_proj.weight": normal(e, e), p + "attn.c_proj.bias": normal(e),
            p + "ln_2.weight": 1 + normal(e), p + "ln_2.bias": normal(e),
            p + "mlp.c_fc.weight": normal(e, 4 * e), p + "mlp.c_fc.bias": normal(4 * e),
            p + "mlp.c_proj.weight": normal(4 * e, e), p + "mlp.c_proj.bias": normal(e),
        })
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    config = {"model_type": "gpt2", "vocab_size": vocab, "n_positions": ctx, "n_embd": e,
              "n_layer": layers, "n_head": heads, "layer_norm_epsilon": 1e-5}
    (folder / "config.json").write_text(json.dumps(config))


def corpus():
    """A few hundred varied strings: English from a file every Python ships, unicode, runs of
    whitespace, digits, code, and the end-of-text token."""
    import pydoc_data.topics as topics
    text = "\n".join(topics.topics[k] for k in sorted(topics.topics))
    lines = [l for l in text.splitlines() if l.strip()]
    strings = lines[:: max(1, len(lines) // 200)][:200]
    strings += [
        "Hello, I am", " leading space", "trailing space ", "  two leading", "tabs\tand\ttabs",
        "line\nbreaks\n\n\nthree", "\r\nwindows\r\n", "    indented code():\n        pass",
        "1234567890", "3.14159 2.71828", "1,000,000 and 1 000 000", "0x1F 0b1010 1e-5",
        "naïve café résumé", "Grüße aus Köln", "日本語のテキスト", "中文文本", "한국어 텍스트",
        "Ελληνικά", "русский текст", "עברית", "العربية", "हिन्दी", "emoji 😀🎉👍🏽",
        "flags 🇫🇷🇯🇵", "ZWJ 👩‍👩‍👧", "combining e\u0301", "nbsp\u00a0here", "soft\u00adhyphen",
        "zero\u200bwidth", "math ∑∫√∞≠≤", "arrows ←→↑↓", "box ┌─┐│└┘", "quotes “curly” ‘single’",
        "dashes – — ‑", "ellipsis…", "<|endoftext|>", "text<|endoftext|>more",
        "<|endoftext|><|endoftext|>", "a <|endoftext|> b", "<|endoftext", "|endoftext|>",
        "'s 't 're 've 'm 'll 'd", "I'm you're they've he'll we'd it's",
        "CAPS lower MiXeD", "a" * 100, " " * 17, "\n" * 5, "x" + " " * 9 + "y",
        "!!!???...,,,;;;", "@#$%^&*()_+-=[]{}|\\:\";'<>?,./", "`backticks` ~tilde~",
        "https://example.com/path?query=1&x=2#frag", "user@example.com", "C:\\Windows\\System32",
        "def f(x):\n\treturn x ** 2  # square", "SELECT * FROM t WHERE id = 42;",
        '{"json": [1, 2, {"k": null}]}', "<html><body>hi</body></html>", "\x00\x01\x7f",
        "\u0080\u009f\u00ff", "\ufffd", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ﬁ ligature", "Ａｂｃ fullwidth",
    ]
    strings += [f"{n} {n * 7919} {n ** 3}" for n in range(0, 1000, 37)]
    strings += [" ".join(["word"] * n) for n in range(1, 30, 3)]
    return strings


def main():
    gptc, work = sys.argv[1], pathlib.Path(sys.argv[2])
    family_folders(gptc, work)
    # (name, export flags, the gptc runtime whose ids the loaders must give)
    variants = [
        ("tiny", TINY, "tract"),
        ("gpt2-small", ["--preset", "gpt2-small"], "tract"),
        ("tiny, external data", [*TINY, "--external-data"], "tract"),
        ("trained checkpoint", ["--weights", str(work / "checkpoint")], "tract"),
        # float16 rounds differently in tract: ONNX Runtime's own kernels are the reference.
        ("tiny, float16", [*TINY, "--dtype", "f16"], "ort"),
    ]
    write_checkpoint(work / "checkpoint")
    folders = {}
    for name, flags, runtime in variants:
        folder = work / name.replace(", ", "-").replace(" ", "-")
        folders[name] = folder
        run(gptc, "export", *flags, "-o", f"{folder}/")
        out = run(gptc, "check", folder)
        check("side files agree" in out, f"{name}: gptc check reads the folder back")
        expected_prompt, expected = gptc_generate(gptc, folder, PROMPT, runtime)
        for loader, generate in [("onnxruntime-genai", genai_generate),
                                 ("transformers.js", transformers_js_generate)]:
            prompt_ids, ids = generate(folder, PROMPT)
            check(prompt_ids == expected_prompt,
                  f"{name}: {loader}'s tokenizer {prompt_ids} == gptc's {expected_prompt}")
            check(ids == expected, f"{name}: {loader} greedy ids {ids[:6]}... == gptc's")

    strings = corpus()
    path = work / "strings.json"
    path.write_text(json.dumps(strings))
    expected = json.loads(run(gptc, "tokenize", "--allow-special", "--json-file", path))
    tokenizer = AutoTokenizer.from_pretrained(str(folders["tiny"]))
    differ = [(s, tokenizer(s)["input_ids"], e) for s, e in zip(strings, expected)
              if tokenizer(s)["input_ids"] != e]
    check(not differ, f"transformers' tokenizer from the folder gives gptc's ids for "
          f"{len(strings)} strings" + (f"; first difference: {differ[0]!r}" if differ else ""))
    roundtrip = [s for s, e in zip(strings, expected)
                 if tokenizer.decode(e) != s and "\ufffd" not in s]
    check(not roundtrip, "transformers' tokenizer decodes gptc's ids back to the text"
          + (f"; first difference: {roundtrip[0]!r}" if roundtrip else ""))

    print(f"loaders: {passed} passed, {failed} failed, {known_count} known differences")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
