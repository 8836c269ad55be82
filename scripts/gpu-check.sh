#!/usr/bin/env bash
# The CUDA path of `gptc generate --runtime ort`, run on a machine with a GPU (BENCHMARKS.md,
# "CUDA"): greedy ids and every step's logits of gpt2-small on ONNX Runtime's CUDA provider,
# float32 and float16, against tract on the same machine's CPU; then `gptc bench` on CUDA.
# Needs ORT_DYLIB_PATH set to onnxruntime-gpu's libonnxruntime.so and CUDA 13's libraries (and
# cuDNN 9) on LD_LIBRARY_PATH.
#
# Usage: scripts/gpu-check.sh GPTC OUT_DIR [DEVICE]   (DEVICE: cuda, the default, or cpu to try
# the script on a machine without a GPU)
set -euo pipefail
gptc=$1
out=$2
device=${3:-cuda}
mkdir -p "$out"

run() {
    local name=$1
    shift
    "$gptc" generate "Hello, I am" --max-new-tokens 20 --json --with-logits "$@" \
        >"$out/$name.json" 2>"$out/$name.err" || { cat "$out/$name.err"; return 1; }
    echo "$name: $(tail -1 "$out/$name.err")"
}
run tract --runtime tract
run ort-f32 --runtime ort --device "$device"
run ort-f16 --runtime ort --device "$device" --dtype f16

${PYTHON:-python3} - "$out" <<'PY'
import json, sys
import numpy as np
out = sys.argv[1]
load = lambda name: json.load(open(f"{out}/{name}.json"))
tract = load("tract")
expected = np.array(tract["step_logits"])
print("tract ids  ", tract["output_ids"])
for name, tolerance in [("ort-f32", 1e-4), ("ort-f16", 5e-3)]:
    run = load(name)
    logits = np.array(run["step_logits"])
    # Compare the steps both took while their ids agreed (later steps see different inputs).
    same = next((i for i, (a, b) in enumerate(zip(run["output_ids"], tract["output_ids"])) if a != b), len(run["output_ids"]))
    steps = min(same + 1, len(logits))
    error = np.abs(logits[:steps] - expected[:steps]).max() / np.abs(expected[:steps]).max()
    verdict = "ok" if error < tolerance else "FAIL"
    print(f"{name:<8} {run['runtime']:<9} ids equal: {run['output_ids'] == tract['output_ids']}, "
          f"max relative logit error over {steps} steps {error:.2e} (tolerance {tolerance:g}): {verdict}")
PY

"$gptc" generate "Hi" --runtime ort --device auto --max-new-tokens 2 2>&1 | tail -1
for dtype in f32 f16; do
    "$gptc" bench --ort --device "$device" --no-tract --plain-tokens 0 --dtype "$dtype" --json \
        | tee "$out/bench-$dtype.txt"
done

# gpt2-xl in float16 (3.1 GB, past protobuf's 2 GiB): compiled in memory, handed to ONNX Runtime
# as external data in a temporary folder.
if [ "$device" = cuda ]; then
    "$gptc" generate "Hello, I am" --preset gpt2-xl --dtype f16 --runtime ort --device cuda \
        --max-new-tokens 64 --ignore-eos 2>&1 | tail -1
fi
