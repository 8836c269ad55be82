#!/usr/bin/env python3
"""Prints the parameters transformers counts for gptc's Llama 3.2 and Qwen3 presets.

Each model is built on the meta device (no memory for weights) from the values of its HF
config.json, and counted as users count them: `sum(p.numel() for p in model.parameters())`
(a tied head once). graph/src/architecture.rs's test holds gptc's counts to these numbers.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def llama(hidden: int, layers: int, heads: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=hidden,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=LLAMA3_SCALING,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )


def qwen3(hidden: int, intermediate: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    )


PRESETS = {
    "llama3.2-1b": (LlamaForCausalLM, llama(2048, 16, 32)),
    "llama3.2-3b": (LlamaForCausalLM, llama(3072, 28, 24)),
    "qwen3-0.6b": (Qwen3ForCausalLM, qwen3(1024, 3072)),
    "qwen3-1.7b": (Qwen3ForCausalLM, qwen3(2048, 6144)),
}


def count(cls, config) -> int:
    with torch.device("meta"):
        model = cls(config)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    for name, (cls, config) in PRESETS.items():
        tied = count(cls, config)
        config.tie_word_embeddings = False
        untied = count(cls, config)
        print(f"{name}: {tied} tied, {untied} untied")


if __name__ == "__main__":
    main()
