#!/usr/bin/env python3
"""Writes the tiny Llama and Qwen3 checkpoints the tests import, with transformers' own answers.

Each checkpoint is a folder written by transformers' `save_pretrained` (config.json,
generation_config.json, safetensors: sharded or not, bfloat16 or float32, tied or with its own
`lm_head.weight`) from a seeded random init, and `expected.json` beside it: transformers' logits
(float32 forward) on fixed ids, once unpadded and once as a left-padded batch, and the ids its
greedy `generate` picks. The tests hold gptc's graph and its reference forward to these.

Each folder also holds a tokenizer as the published checkpoints ship one (tokenizer.json,
tokenizer_config.json, special_tokens_map.json, written by transformers' `save_pretrained`): a
byte-level BPE in the family's style (Llama 3: `<|begin_of_text|>` added in front; Qwen3: no BOS,
two end tokens), trained with the `tokenizers` package on a little ASCII text so that its
vocabulary fits the models' 128 ids; and, in `expected.json`, the ids transformers' tokenizer
gives for a few texts and the text it decodes them to.

Run from the repository root, in an environment with torch, transformers and safetensors:
    python scripts/make_family_checkpoints.py [tests/fixtures/families]
"""

import json
import shutil
import sys
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 128
# Prompts of several lengths; the left-padded batch holds the first two, padded to the longest.
PROMPTS = [[3, 101, 59, 26, 123, 58, 97], [100, 18, 28]]
NEW_TOKENS = 12
PAD = 0
# The tokenizers' special tokens, their ids the last of the vocabulary as in the published ones.
LLAMA_SPECIAL = {"bos": ("<|begin_of_text|>", 125), "eos": ("<|end_of_text|>", 126)}
QWEN3_SPECIAL = {"endoftext": ("<|endoftext|>", 125), "im_start": ("<|im_start|>", 126),
                 "im_end": ("<|im_end|>", 127)}
# What the tokenizers learn from (lowercase ASCII, so that 125 tokens hold the alphabet and
# some merges), and what expected.json records their ids for.
TRAINING_TEXT = [
    "the cat sat on the mat and the dog sat on the log",
    "a tiny model reads a tiny text, one token at a time.",
    "hello, i am a language model; i predict the next token!",
    "tokens, merges and bytes: 0 1 2 3 4 5 6 7 8 9",
] * 4
TOKENIZER_TEXTS = [
    "hello, i am",
    "the cat sat on the mat",
    " leading space and  two spaces",
    "line\nbreak",
    "digits 0123 456",
    "<|end_of_text|> is text here",
    "",
]
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


def tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE laid out as the family's published tokenizer.json is: a regex split,
    then byte-level characters; Llama 3's post-processor puts `<|begin_of_text|>` in front."""
    special = LLAMA_SPECIAL if family == "llama" else QWEN3_SPECIAL
    ordered = sorted(special.values(), key=lambda s: s[1])
    bpe = tokenizers.Tokenizer(models.BPE())
    # Llama 3's and Qwen3's split (contractions, letters, single digits, punctuation, spaces).
    split = Regex(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(split, behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=ordered[0][1], show_progress=False)
    bpe.train_from_iterator(TRAINING_TEXT, trainer)
    assert bpe.get_vocab_size() <= ordered[0][1], bpe.get_vocab_size()
    # Pad the learned vocabulary so that the special tokens land on their ids.
    filler = [f"<|reserved_{i}|>" for i in range(ordered[0][1] - bpe.get_vocab_size())]
    bpe.add_special_tokens(filler + [text for text, _ in ordered])
    for text, id in ordered:
        assert bpe.token_to_id(text) == id, (text, bpe.token_to_id(text), id)
    if family == "llama":
        bos, bos_id = LLAMA_SPECIAL["bos"]
        bpe.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, bos_id)]),
        ])
        return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos,
                                       eos_token=LLAMA_SPECIAL["eos"][0], model_max_length=128)
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=QWEN3_SPECIAL["im_end"][0],
                                   pad_token=QWEN3_SPECIAL["endoftext"][0], model_max_length=128)


def special_ids(config, family: str) -> None:
    """The ids config.json and generation_config.json say, as the published ones do: Llama
    3.2 one BOS and one EOS; Qwen3 BOS `<|endoftext|>` and a list of EOS in generation."""
    if family == "llama":
        config.bos_token_id = LLAMA_SPECIAL["bos"][1]
        config.eos_token_id = LLAMA_SPECIAL["eos"][1]
    else:
        config.bos_token_id = QWEN3_SPECIAL["endoftext"][1]
        config.eos_token_id = QWEN3_SPECIAL["im_end"][1]


def generation_eos(family: str):
    if family == "llama":
        return LLAMA_SPECIAL["eos"][1]
    return [QWEN3_SPECIAL["im_end"][1], QWEN3_SPECIAL["endoftext"][1]]


def published_tokenizer_class(folder: Path, family: str) -> None:
    """The class (and, for Llama, the inputs) the published checkpoints name: transformers 5
    writes its own `TokenizersBackend`, which transformers 4, and so optimum, cannot load."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.pop("backend", None)
    if family == "llama":
        # Llama 3.2's says its inputs: PreTrainedTokenizerFast would add token_type_ids.
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config["model_input_names"] = ["input_ids", "attention_mask"]
    else:
        config["tokenizer_class"] = "Qwen2Tokenizer"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def tokenizer_answers(folder: Path) -> dict:
    """transformers' tokenizer, loaded back from the folder: ids with and without the special
    tokens it adds, and the text it decodes them to."""
    loaded = AutoTokenizer.from_pretrained(folder)
    out = []
    for text in TOKENIZER_TEXTS:
        ids = loaded(text)["input_ids"]
        plain = loaded(text, add_special_tokens=False)["input_ids"]
        out.append({"text": text, "ids": ids, "ids_without_special": plain,
                    "decoded": loaded.decode(plain)})
    return {"vocab_size": len(loaded), "texts": out}


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
        family = config.model_type
        special_ids(config, family)
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
        model.generation_config.bos_token_id = config.bos_token_id
        model.generation_config.eos_token_id = generation_eos(family)
        model.save_pretrained(folder, **kwargs)
        tokenizer(family).save_pretrained(folder)
        published_tokenizer_class(folder, family)
        # The answers come from the weights as saved (rounded to bfloat16 where saved so),
        # computed in float32: the precision gptc's float32 graph computes in.
        reloaded = cls.from_pretrained(folder, dtype=torch.float32).eval()
        expected = answers(reloaded)
        expected["tokenizer"] = tokenizer_answers(folder)
        expected["written_by"] = {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "tokenizers": tokenizers.__version__,
            "dtype": str(dtype).removeprefix("torch."),
            "sharded": shard is not None,
        }
        (folder / "expected.json").write_text(json.dumps(expected) + "\n")
        files = sorted(p.name for p in folder.iterdir())
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{name}: {size / 1024:.0f} KiB, {files}")


if __name__ == "__main__":
    main()
