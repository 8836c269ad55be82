#!/usr/bin/env python3
"""Writes the tiny Llama and Qwen3 checkpoints the tests import, with transformers' own answers.

Each checkpoint is a folder written by transformers' `save_pretrained` (config.json,
generation_config.json, safetensors: sharded or not, bfloat16 or float32, tied or with its own
`lm_head.weight`) from a seeded random init, and `expected.json` beside it: transformers' logits
(float32 forward) on fixed ids, once unpadded and once as a left-padded batch, and the ids its
greedy `generate` picks. The tests hold gptc's graph and its reference forward to these.

Run from the repository root, in an environment with torch, transformers and safetensors:
    python scripts/make_family_checkpoints.py [tests/fixtures/families]
"""

import json
import shutil
import sys
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

VOCAB = 128
# Prompts of several lengths; the left-padded batch holds the first two, padded to the longest.
PROMPTS = [[3, 101, 59, 26, 123, 58, 97], [100, 18, 28]]
NEW_TOKENS = 12
PAD = 0
# Wider than the usual 0.02: with small blocks, a tied model's greedy choice is the last token
# again (its embedding dotted with itself), which tests little.
INIT_STD = 0.2


def llama_config(tied: bool) -> LlamaConfig:
    # Llama 3's frequency scaling from 32 positions: with head_dim 16 and base 10,000, the
    # wavelengths span all three bands (kept under 8, stretched over 32, blended between).
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=10_000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=INIT_STD,
    )


def qwen3_config(tied: bool) -> Qwen3Config:
    # head_dim 32 while hidden / heads is 16: q_proj is [128, 64], o_proj [64, 128].
    return Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=128,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        attention_bias=False,
        initializer_range=INIT_STD,
    )


# (folder, model class, config, dtype written, max_shard_size or None)
CHECKPOINTS = [
    ("llama-tied-bf16", LlamaForCausalLM, llama_config(True), torch.bfloat16, None),
    ("llama-untied-f32-sharded", LlamaForCausalLM, llama_config(False), torch.float32, "60KB"),
    ("qwen3-tied-f32", Qwen3ForCausalLM, qwen3_config(True), torch.float32, None),
    ("qwen3-untied-bf16-sharded", Qwen3ForCausalLM, qwen3_config(False), torch.bfloat16, "60KB"),
]


def left_padded(prompts):
    width = max(len(p) for p in prompts)
    ids = [[PAD] * (width - len(p)) + p for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    positions = [[max(i - (width - len(p)), 0) for i in range(width)] for p in prompts]
    return ids, mask, positions


def floats(tensor):
    # Nine significant digits tell every float32 apart, in half the text of a double's repr.
    return [float(f"{x:.9g}") for x in tensor.flatten().tolist()]


def answers(model) -> dict:
    """transformers' logits and greedy ids, computed in float32 from the saved weights."""
    out = {}
    with torch.no_grad():
        single = torch.tensor(PROMPTS[:1])
        logits = model(input_ids=single).logits
        out["ids"] = PROMPTS[0]
        out["logits"] = {"shape": list(logits.shape), "values": floats(logits)}
        ids, mask, positions = left_padded(PROMPTS)
        padded = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions),
        ).logits
        out["padded"] = {
            "ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            # Padded positions' logits mean nothing; the tests compare the others.
            "logits": {"shape": list(padded.shape), "values": floats(padded)},
        }
        generated = model.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=None,
        )
        out["greedy"] = {
            "prompts": PROMPTS,
            "new_tokens": NEW_TOKENS,
            "ids": [row[len(ids[0]) :] for row in generated.tolist()],
        }
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/families")
    root.mkdir(parents=True, exist_ok=True)
    for seed, (name, cls, config, dtype, shard) in enumerate(CHECKPOINTS):
        torch.manual_seed(1000 + seed)
        model = cls(config).eval()
        # Norm scales are ones at init: perturb them, so a norm read wrongly shows in the logits.
        with torch.no_grad():
            for key, param in model.named_parameters():
                if "norm" in key:
                    param.add_(0.1 * torch.randn_like(param))
        folder = root / name
        if folder.exists():
            shutil.rmtree(folder)
        model.to(dtype)
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(folder, **kwargs)
        # The answers come from the weights as saved (rounded to bfloat16 where saved so),
        # computed in float32: the precision gptc's float32 graph computes in.
        reloaded = cls.from_pretrained(folder, dtype=torch.float32).eval()
        expected = answers(reloaded)
        expected["written_by"] = {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "dtype": str(dtype).removeprefix("torch."),
            "sharded": shard is not None,
        }
        (folder / "expected.json").write_text(json.dumps(expected) + "\n")
        files = sorted(p.name for p in folder.iterdir())
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{name}: {size / 1024:.0f} KiB, {files}")


if __name__ == "__main__":
    main()
