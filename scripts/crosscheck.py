"""Cross-check gptc's exports with clients no one here wrote: the `onnx` package's checker
and shape inference, and ONNX Runtime's Python package.

For every variant (plain, KV cache, last-token logits, external data, float16, 4-bit weights) of a tiny config
and of gpt2-small, and for a tiny Hugging Face checkpoint written here: export with gptc, run
onnx.checker (full check) and strict shape inference, then generate greedily in Python ONNX
Runtime from the same prompt ids and compare ids and every step's logits with what
`gptc generate --json --with-logits` printed, on tract and on ort. The imported model's first
logits are also checked against a NumPy GPT-2 forward that reads the checkpoint itself.

usage: python crosscheck.py PATH/TO/gptc WORK_DIR
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort

TOLERANCE = 1e-4
# Runtimes round float16 differently (accumulation order and width); see tests/float16.rs.
F16_TOLERANCE = 5e-3
NEW_TOKENS = 6
PROMPT = "Hello, I am"
TINY = ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"]
VARIANTS = {
    "plain": ["--no-kv-cache"],
    "plain-last": ["--no-kv-cache", "--last-token-logits"],
    "cache": [],
    "cache-last": ["--last-token-logits"],
    "cache-external": ["--external-data"],
    "cache-f16": ["--dtype", "f16"],
    # 4-bit weights at accuracy level 0 (float32 compute): tract and ONNX Runtime alike.
    "cache-int4-exact": ["--quantize", "int4", "--accuracy-level", "0"],
    # gptc's default level 4 lets ONNX Runtime quantize activations to int8, which tract does
    # not: only ONNX Runtime against itself (BENCHMARKS.md measures the difference).
    "cache-int4": ["--quantize", "int4"],
    # A tied table stored once in 4 bits: GatherBlockQuantized looks rows up from the head's
    # MatMulNBits weights.
    "cache-int4-tied-exact": ["--quantize", "int4", "--accuracy-level", "0", "--tie-weights"],
    "cache-int4-tied": ["--quantize", "int4", "--tie-weights"],
}
# 4-bit logits: the same weights, summed in other orders by other kernels.
INT4_TOLERANCE = 1e-3
HF_CONFIG = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 64, "n_embd": 64,
             "n_layer": 2, "n_head": 4, "layer_norm_epsilon": 1e-5}


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
        dtype = np.float16 if inputs["past_key_values.0.key"].type == "tensor(float16)" else np.float32
        past = {f"past_key_values.{i}.{p}": np.zeros((1, heads, 0, head_dim), dtype)
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


def write_hf_checkpoint(folder, seed):
    """A GPT2LMHeadModel checkpoint as Hugging Face stores it: config.json and model.safetensors
    (written here byte by byte, per the safetensors format), Conv1D weights [in, out], a fused
    c_attn, the `transformer.` prefix, and no lm_head (tied to wte)."""
    rng = np.random.default_rng(seed)
    e, layers, vocab, ctx = HF_CONFIG["n_embd"], HF_CONFIG["n_layer"], HF_CONFIG["vocab_size"], HF_CONFIG["n_positions"]
    shapes = {"wte.weight": (vocab, e), "wpe.weight": (ctx, e), "ln_f.weight": (e,), "ln_f.bias": (e,)}
    for i in range(layers):
        for name, shape in [("ln_1.weight", (e,)), ("ln_1.bias", (e,)), ("attn.c_attn.weight", (e, 3 * e)),
                            ("attn.c_attn.bias", (3 * e,)), ("attn.c_proj.weight", (e, e)), ("attn.c_proj.bias", (e,)),
                            ("ln_2.weight", (e,)), ("ln_2.bias", (e,)), ("mlp.c_fc.weight", (e, 4 * e)),
                            ("mlp.c_fc.bias", (4 * e,)), ("mlp.c_proj.weight", (4 * e, e)), ("mlp.c_proj.bias", (e,))]:
            shapes[f"h.{i}.{name}"] = shape
    # Biases and norms away from 0 and 1, so a mix-up of any two tensors shows in the logits.
    tensors = {name: (rng.standard_normal(shape) * (0.5 if len(shape) == 1 else 0.1)).astype(np.float32)
               for name, shape in shapes.items()}
    header, offset = {}, 0
    for name, t in tensors.items():
        header[f"transformer.{name}"] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    with open(folder / "model.safetensors", "wb") as f:
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for t in tensors.values():
            f.write(t.tobytes())
    return tensors


def numpy_gpt2_logits(w, ids):
    """GPT-2's forward in NumPy, straight from the checkpoint's tensors (last position)."""
    e, heads = HF_CONFIG["n_embd"], HF_CONFIG["n_head"]
    eps = HF_CONFIG["layer_norm_epsilon"]

    def norm(x, prefix):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[f"{prefix}.weight"] + w[f"{prefix}.bias"]

    t = len(ids)
    x = w["wte.weight"][ids] + w["wpe.weight"][np.arange(t)]
    causal = np.tril(np.ones((t, t), bool))
    for i in range(HF_CONFIG["n_layer"]):
        h = norm(x, f"h.{i}.ln_1")
        qkv = h @ w[f"h.{i}.attn.c_attn.weight"] + w[f"h.{i}.attn.c_attn.bias"]
        q, k, v = (part.reshape(t, heads, -1).transpose(1, 0, 2) for part in np.split(qkv, 3, axis=-1))
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(e // heads), -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        context = (scores / scores.sum(-1, keepdims=True)) @ v
        a = context.transpose(1, 0, 2).reshape(t, e)
        x = x + a @ w[f"h.{i}.attn.c_proj.weight"] + w[f"h.{i}.attn.c_proj.bias"]
        h = norm(x, f"h.{i}.ln_2")
        h = h @ w[f"h.{i}.mlp.c_fc.weight"] + w[f"h.{i}.mlp.c_fc.bias"]
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
        x = x + h @ w[f"h.{i}.mlp.c_proj.weight"] + w[f"h.{i}.mlp.c_proj.bias"]
    return norm(x, "ln_f")[-1] @ w["wte.weight"].T


def compare(gptc, path, tolerance, runtimes=("tract", "ort"), python_path=None):
    """gptc on tract and on ort against Python ONNX Runtime on the same file (or on
    `python_path`); returns the Python run's first-step logits."""
    for runtime in runtimes:
        printed = json.loads(run([gptc, "generate", PROMPT, "--model", str(path), "--json",
                                  "--with-logits", "--max-new-tokens", str(NEW_TOKENS),
                                  "--runtime", runtime]))
        ids, logits = python_ort_greedy(python_path or path, printed["prompt_ids"], NEW_TOKENS)
        assert ids == printed["output_ids"], f"{path.name} {runtime}: ids {printed['output_ids']} vs Python ORT {ids}"
        for step, (mine, theirs) in enumerate(zip(printed["step_logits"], logits)):
            mine = np.asarray(mine, np.float32)
            err = np.abs(mine - theirs).max() / np.abs(theirs).max()
            assert err < tolerance, f"{path.name} {runtime} step {step}: relative error {err}"
        print(f"ok  {path.name:28} {runtime:5} ids {ids}")
    return printed["prompt_ids"], logits[0]


def with_zero_points(source, target, accuracy_level):
    """gptc's 4-bit file as another quantizer may write it: each MatMulNBits given explicit
    zero points (7, where gptc's symmetric scheme implies 8) and the accuracy level given."""
    model = onnx.load(source)
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: a for a in node.attribute}
        n, blocks = attrs["N"].i, attrs["K"].i // 32
        name = f"{node.name}_zero_points"
        # Two 4-bit zero points a byte, blocks of a row padded to whole bytes.
        zero_points = np.full(n * ((blocks + 1) // 2), 0x77, np.uint8)
        model.graph.initializer.append(onnx.numpy_helper.from_array(zero_points, name))
        node.input.append(name)
        attrs["accuracy_level"].i = accuracy_level
    onnx.save(model, target)


def main():
    gptc, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    checked = 0
    for size, size_flags in [("tiny", TINY), ("gpt2-small", ["--preset", "gpt2-small"])]:
        for variant, flags in VARIANTS.items():
            if size == "gpt2-small" and variant in ("plain-last", "cache-external"):
                continue  # the same graphs as plain and cache; tiny covers the difference
            path = work / f"{size}-{variant}.onnx"
            run([gptc, "export", "-o", str(path), *size_flags, *flags])
            check_file(path)
            tolerance = F16_TOLERANCE if variant == "cache-f16" else (
                INT4_TOLERANCE if "int4" in variant else TOLERANCE)
            runtimes = ("ort",) if variant in ("cache-int4", "cache-int4-tied") else ("tract", "ort")
            compare(gptc, path, tolerance, runtimes)
            checked += len(runtimes)
            path.unlink()
            Path(f"{path}.data").unlink(missing_ok=True)

    # Zero points are outside gptc's own 4-bit kernel: tract must take its own float32 path for
    # them even at level 4, and so equal ONNX Runtime's exact level 0 on the same weights.
    exported = work / "tiny-int4.onnx"
    run([gptc, "export", "-o", str(exported), *TINY, "--quantize", "int4"])
    level4, level0 = work / "zero-points-level4.onnx", work / "zero-points-level0.onnx"
    with_zero_points(exported, level4, 4)
    with_zero_points(exported, level0, 0)
    compare(gptc, level4, INT4_TOLERANCE, ("tract",), python_path=level0)
    checked += 1
    for path in (exported, level4, level0):
        path.unlink()

    checkpoint = work / "hf-tiny"
    tensors = write_hf_checkpoint(checkpoint, seed=5)
    for variant, flags in [("imported", []), ("imported-f16", ["--dtype", "f16"])]:
        path = work / f"{variant}.onnx"
        run([gptc, "export", "--weights", str(checkpoint), "-o", str(path), *flags])
        check_file(path)
        tolerance = F16_TOLERANCE if "f16" in variant else TOLERANCE
        prompt_ids, first_logits = compare(gptc, path, tolerance)
        expected = numpy_gpt2_logits(tensors, np.array(prompt_ids))
        err = np.abs(first_logits - expected).max() / np.abs(expected).max()
        assert err < tolerance, f"{path.name}: relative error {err} against the NumPy forward"
        print(f"ok  {path.name:28} NumPy GPT-2 from the checkpoint, relative error {err:.1e}")
        checked += 3
        path.unlink()
    print(f"crosscheck: {checked} passed, 0 failed")


if __name__ == "__main__":
    main()
