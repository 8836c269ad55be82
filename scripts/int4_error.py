"""What 4-bit weights cost in accuracy, against the same model in float32: the relative logit
error (max |int4 - f32| / max |f32|), teacher-forced top-1 agreement over 256 positions, and
perplexity on held-out text. Reported, not asserted (BENCHMARKS.md).

usage: .venv/bin/python scripts/int4_error.py GPTC WORK_DIR [gptc export flags...]
e.g. the random-init gpt2-small: `--preset gpt2-small`; a trained checkpoint (from
scripts/train_small_gpt2.py): `--weights DIR`. Held-out text: DIR/held_out.json when the flags
name a checkpoint folder holding one, else the last part of CPython's pydoc topics.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import onnxruntime as ort

POSITIONS = 256


def run(args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=True).stdout


def logits_of(path, ids, context):
    """Teacher-forced logits for every position, window by window of the model's context."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(ids), context):
        window = np.array([ids[start:start + context]], np.int64)
        out.append(session.run(["logits"], {"input_ids": window})[0][0])
    return np.concatenate(out)


def perplexity(logits, ids):
    shifted = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(np.exp(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean()))


def main():
    gptc, work, flags = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
    work.mkdir(parents=True, exist_ok=True)
    weights = flags[flags.index("--weights") + 1] if "--weights" in flags else None
    held_out = pathlib.Path(weights or "-") / "held_out.json"
    if weights and held_out.is_file():
        ids = json.loads(held_out.read_text())
    else:
        import pydoc_data.topics as topics
        text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
        (work / "text.json").write_text(json.dumps([text[-20000:]]))
        ids = json.loads(run([gptc, "tokenize", "--json-file", work / "text.json"]))[0]
    ids = ids[:POSITIONS]
    paths = {}
    for name, extra in [("float32", []), ("int4, accuracy level 4", ["--quantize", "int4"]),
                        ("int4, accuracy level 0", ["--quantize", "int4", "--accuracy-level", "0"])]:
        paths[name] = work / f"{name.split(',')[0]}-{len(paths)}.onnx"
        run([gptc, "export", *flags, "--no-kv-cache", *extra, "-o", paths[name]])
    context = int(run([gptc, "inspect", "--model", paths["float32"]])
                  .split("config: ")[1].split("context ")[1].split()[0])
    reference = logits_of(paths["float32"], ids, context)
    print(f"{' '.join(flags)}: {len(ids)} positions, context {context}, "
          f"float32 perplexity {perplexity(reference, np.array(ids)):.2f}")
    results = {}
    for name, path in paths.items():
        if name == "float32":
            continue
        logits = results[name] = logits_of(path, ids, context)
        error = np.abs(logits - reference).max() / np.abs(reference).max()
        agree = (logits.argmax(-1) == reference.argmax(-1)).mean()
        print(f"  {name}: relative logit error {error:.2e}, top-1 agreement {agree:.3f}, "
              f"perplexity {perplexity(logits, np.array(ids)):.2f}")
    exact, fast = results["int4, accuracy level 0"], results["int4, accuracy level 4"]
    print(f"  level 4 against level 0 (ONNX Runtime's int8 activations alone): relative error "
          f"{np.abs(fast - exact).max() / np.abs(exact).max():.2e}, top-1 agreement "
          f"{(fast.argmax(-1) == exact.argmax(-1)).mean():.3f}")


if __name__ == "__main__":
    main()
