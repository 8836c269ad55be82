"""Trains a small GPT-2 for a few minutes on English text every Python ships (CPython's
`pydoc_data/topics.py`), to judge 4-bit quantization on weights that mean something: random
init has nearly flat logits. Writes a Hugging Face checkpoint (config.json + model.safetensors)
that `gptc export --weights` imports, and the held-out token ids.

Outside CI; runs in the venv that has PyTorch (see scripts/optimum_check.py):
    .venv-optimum/bin/python scripts/train_small_gpt2.py target/release/gptc OUT_DIR [MINUTES]
"""

import json
import pathlib
import subprocess
import sys
import time

import pydoc_data.topics as topics
import torch
from transformers import GPT2Config, GPT2LMHeadModel

CONTEXT = 128


def main():
    gptc, out = sys.argv[1], pathlib.Path(sys.argv[2])
    minutes = float(sys.argv[3]) if len(sys.argv) > 3 else 4.0
    torch.manual_seed(0)
    torch.set_num_threads(2)
    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    out.mkdir(parents=True, exist_ok=True)
    (out / "text.json").write_text(json.dumps([text]))
    ids = json.loads(subprocess.run([gptc, "tokenize", "--json-file", str(out / "text.json")],
                                    capture_output=True, text=True, check=True).stdout)[0]
    split = int(len(ids) * 0.95)
    train, held_out = torch.tensor(ids[:split]), ids[split:]
    (out / "held_out.json").write_text(json.dumps(held_out))
    print(f"{len(ids)} tokens: {split} to train on, {len(held_out)} held out")

    config = GPT2Config(vocab_size=50257, n_positions=CONTEXT, n_embd=128, n_layer=4, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    start, step = time.time(), 0
    while time.time() - start < minutes * 60:
        starts = torch.randint(0, len(train) - CONTEXT - 1, (16,))
        batch = torch.stack([train[s:s + CONTEXT] for s in starts])
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
        step += 1
    model.save_pretrained(out, safe_serialization=True)
    print(f"trained {step} steps in {time.time() - start:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
