"""Cross-check gptc's exports with clients no one here wrote: the `onnx` package's checker
and shape inference, and ONNX Runtime's Python package.

For every variant (plain, KV cache, last-token logits) of a tiny config and of gpt2-small:
export with gptc, run onnx.checker (full check) and strict shape inference, then generate
greedily in Python ONNX Runtime from the same prompt ids and compare ids and every step's
logits with what `gptc generate --json --with-logits` printed, on tract and on ort.

usage: python crosscheck.py PATH/TO/gptc WORK_DIR
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

TOLERANCE = 1e-4
NEW_TOKENS = 6
PROMPT = "Hello, I am"
TINY = ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"]
VARIANTS = {
    "plain": ["--no-kv-cache"],
    "plain-last": ["--no-kv-cache", "--last-token-logits"],
    "cache": [],
    "cache-last": ["--last-token-logits"],
}


def run(args):
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def python_ort_greedy(path, prompt_ids, new_tokens):
    """The book's greedy loop on ONNX Runtime, feeding the cache back when the model has one."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    ids = list(prompt_ids)
    logits_seen = []
    past = None
    if "past_key_values.0.key" in inputs:
        _, heads, _, head_dim = inputs["past_key_values.0.key"].shape
        layers = sum(1 for n in inputs if n.endswith(".key"))
        past = {f"past_key_values.{i}.{p}": np.zeros((1, heads, 0, head_dim), np.float32)
                for i in range(layers) for p in ("key", "value")}
    fed = 0
    for _ in range(new_tokens):
        if past is None:
            feed = {"input_ids": np.array([ids], np.int64)}
        else:
            new = ids[fed:]
            feed = {
                "input_ids": np.array([new], np.int64),
                "attention_mask": np.ones((1, len(ids)), np.int64),
                "position_ids": np.arange(fed, len(ids), dtype=np.int64)[None, :],
                **past,
            }
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, feed)))
        if past is not None:
            past = {k.replace("present", "past_key_values"): v for k, v in outputs.items() if k.startswith("present.")}
            fed = len(ids)
        last = outputs["logits"][0, -1]
        logits_seen.append(last)
        ids.append(int(np.argmax(last)))
    return ids[len(prompt_ids):], logits_seen


def check_file(path):
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    declared = {o.name: o for o in model.graph.output}
    for out in inferred.graph.output:
        assert out.type == declared[out.name].type, f"{path.name}: {out.name} inferred {out.type}"


def main():
    gptc, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    checked = 0
    for size, size_flags in [("tiny", TINY), ("gpt2-small", ["--preset", "gpt2-small"])]:
        for variant, flags in VARIANTS.items():
            if size == "gpt2-small" and variant == "plain-last":
                continue  # the same graph as plain but for the last slice; tiny covers it
            path = work / f"{size}-{variant}.onnx"
            run([gptc, "export", "-o", str(path), *size_flags, *flags])
            check_file(path)
            for runtime in ["tract", "ort"]:
                printed = json.loads(run([gptc, "generate", PROMPT, "--model", str(path), "--json",
                                          "--with-logits", "--max-new-tokens", str(NEW_TOKENS),
                                          "--runtime", runtime]))
                ids, logits = python_ort_greedy(path, printed["prompt_ids"], NEW_TOKENS)
                assert ids == printed["output_ids"], f"{path.name} {runtime}: ids {printed['output_ids']} vs Python ORT {ids}"
                for step, (mine, theirs) in enumerate(zip(printed["step_logits"], logits)):
                    mine = np.asarray(mine, np.float32)
                    err = np.abs(mine - theirs).max() / np.abs(theirs).max()
                    assert err < TOLERANCE, f"{path.name} {runtime} step {step}: relative error {err}"
                checked += 1
                print(f"ok  {path.name:28} {runtime:5} ids {ids}")
            path.unlink()
    print(f"crosscheck: {checked} passed, 0 failed")


if __name__ == "__main__":
    main()
