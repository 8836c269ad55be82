"""Writes the fixtures of tests/book_checkpoints.rs: checkpoints saved by PyTorch itself from
models with the module structure of *Build a Large Language Model (From Scratch)* (chapter 4's
GPTModel, and the bonus Llama3Model and Qwen3Model), tiny and seeded, in every form a reader of
the book saves them, with the logits of each model's own forward and the ids of the book's
`generate_text_simple`. The Rust tests read only what this writes; they need no torch.

Outside CI; torch, transformers and safetensors installed apart:
    python -m venv .venv-torch && .venv-torch/bin/pip install torch transformers safetensors numpy
    .venv-torch/bin/python scripts/make_book_checkpoints.py [OUT_DIR]
OUT_DIR defaults to tests/fixtures/book. Same torch, same bytes: every model is seeded, and the
script asserts what the tests rely on (greedy choices far from ties, mappings that reproduce
transformers' forward).
"""

import copy
import json
import os
import pathlib
import sys
import zipfile

import torch
import torch.nn as nn
from safetensors.torch import save_file

# --------------------------------------------------------------------------------------------
# Chapter 4: GPTModel, as the book writes it.


class LayerNorm(nn.Module):
    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        norm_x = (x - mean) / torch.sqrt(var + self.eps)
        return self.scale * norm_x + self.shift


class GELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(
            torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))))


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x):
        return self.layers(x)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        assert d_out % num_heads == 0
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer(
            "mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        b, num_tokens, d_in = x.shape
        keys = self.W_key(x)
        queries = self.W_query(x)
        values = self.W_value(x)
        keys = keys.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        queries = queries.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = values.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        attn_scores = queries @ keys.transpose(2, 3)
        mask_bool = self.mask.bool()[:num_tokens, :num_tokens]
        attn_scores.masked_fill_(mask_bool, -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)
        context_vec = (attn_weights @ values).transpose(1, 2)
        context_vec = context_vec.contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context_vec)


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], context_length=cfg["context_length"],
            num_heads=cfg["n_heads"], dropout=cfg["drop_rate"], qkv_bias=cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        shortcut = x
        x = self.norm1(x)
        x = self.att(x)
        x = self.drop_shortcut(x)
        x = x + shortcut
        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)
        x = self.drop_shortcut(x)
        return x + shortcut


class GPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):
        batch_size, seq_len = in_idx.shape
        tok_embeds = self.tok_emb(in_idx)
        pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = tok_embeds + pos_embeds
        x = self.drop_emb(x)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Chapter 4's greedy loop, as the book writes it."""
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits = model(idx_cond)
        logits = logits[:, -1, :]
        probas = torch.softmax(logits, dim=-1)
        idx_next = torch.argmax(probas, dim=-1, keepdim=True)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


# --------------------------------------------------------------------------------------------
# The bonus chapters: Llama 3.2 and Qwen3, as the book's standalone notebooks write them.


def compute_rope_params(head_dim, theta_base=10_000, context_length=4096, freq_config=None,
                        dtype=torch.float32):
    assert head_dim % 2 == 0
    inv_freq = 1.0 / (theta_base ** (
        torch.arange(0, head_dim, 2, dtype=dtype)[: (head_dim // 2)].float() / head_dim))
    if freq_config is not None:
        low_freq_wavelen = freq_config["original_context_length"] / freq_config["low_freq_factor"]
        high_freq_wavelen = freq_config["original_context_length"] / freq_config["high_freq_factor"]
        wavelen = 2 * torch.pi / inv_freq
        inv_freq_llama = torch.where(
            wavelen > low_freq_wavelen, inv_freq / freq_config["factor"], inv_freq)
        smooth_factor = (freq_config["original_context_length"] / wavelen
                         - freq_config["low_freq_factor"]) / (
            freq_config["high_freq_factor"] - freq_config["low_freq_factor"])
        smoothed_inv_freq = ((1 - smooth_factor) * (inv_freq / freq_config["factor"])
                             + smooth_factor * inv_freq)
        is_medium_freq = (wavelen <= low_freq_wavelen) & (wavelen >= high_freq_wavelen)
        inv_freq = torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)
    positions = torch.arange(context_length, dtype=dtype)
    angles = positions[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=1)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    batch_size, num_heads, seq_len, head_dim = x.shape
    x1 = x[..., : head_dim // 2]
    x2 = x[..., head_dim // 2:]
    cos = cos[:seq_len, :].unsqueeze(0).unsqueeze(0)
    sin = sin[:seq_len, :].unsqueeze(0).unsqueeze(0)
    rotated = torch.cat((-x2, x1), dim=-1)
    return ((x * cos) + (rotated * sin)).to(dtype=x.dtype)


class SwiGLU(nn.Module):
    """The bonus chapters' FeedForward: fc3(silu(fc1(x)) * fc2(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.fc1 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], dtype=cfg["dtype"], bias=False)
        self.fc2 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], dtype=cfg["dtype"], bias=False)
        self.fc3 = nn.Linear(cfg["hidden_dim"], cfg["emb_dim"], dtype=cfg["dtype"], bias=False)

    def forward(self, x):
        return self.fc3(nn.functional.silu(self.fc1(x)) * self.fc2(x))


class RMSNorm(nn.Module):
    """Qwen3's: `scale` (and `shift` when asked), computed in float32."""

    def __init__(self, emb_dim, eps=1e-6, bias=False, qwen3_compatible=True):
        super().__init__()
        self.eps = eps
        self.qwen3_compatible = qwen3_compatible
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim)) if bias else None

    def forward(self, x):
        input_dtype = x.dtype
        if self.qwen3_compatible:
            x = x.to(torch.float32)
        variance = x.pow(2).mean(dim=-1, keepdim=True)
        norm_x = x * torch.rsqrt(variance + self.eps)
        norm_x = norm_x * self.scale
        if self.shift is not None:
            norm_x = norm_x + self.shift
        return norm_x.to(input_dtype)


class GroupedQueryAttention(nn.Module):
    def __init__(self, d_in, num_heads, num_kv_groups, head_dim=None, qk_norm=False, dtype=None):
        super().__init__()
        assert num_heads % num_kv_groups == 0
        self.num_heads = num_heads
        self.num_kv_groups = num_kv_groups
        self.group_size = num_heads // num_kv_groups
        if head_dim is None:
            head_dim = d_in // num_heads
        self.head_dim = head_dim
        self.d_out = num_heads * head_dim
        self.W_query = nn.Linear(d_in, self.d_out, bias=False, dtype=dtype)
        self.W_key = nn.Linear(d_in, num_kv_groups * head_dim, bias=False, dtype=dtype)
        self.W_value = nn.Linear(d_in, num_kv_groups * head_dim, bias=False, dtype=dtype)
        self.out_proj = nn.Linear(self.d_out, d_in, bias=False, dtype=dtype)
        if qk_norm:
            self.q_norm = RMSNorm(head_dim, eps=1e-6)
            self.k_norm = RMSNorm(head_dim, eps=1e-6)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, mask, cos, sin):
        b, num_tokens, _ = x.shape
        queries = self.W_query(x)
        keys = self.W_key(x)
        values = self.W_value(x)
        queries = queries.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys = keys.view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)
        values = values.view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)
        if self.q_norm:
            queries = self.q_norm(queries)
        if self.k_norm:
            keys = self.k_norm(keys)
        queries = apply_rope(queries, cos, sin)
        keys = apply_rope(keys, cos, sin)
        keys = keys.repeat_interleave(self.group_size, dim=1)
        values = values.repeat_interleave(self.group_size, dim=1)
        attn_scores = queries @ keys.transpose(2, 3)
        attn_scores = attn_scores.masked_fill(mask, -torch.inf)
        attn_weights = torch.softmax(attn_scores / self.head_dim ** 0.5, dim=-1)
        context = (attn_weights @ values).transpose(1, 2).reshape(b, num_tokens, self.d_out)
        return self.out_proj(context)


class SwigluBlock(nn.Module):
    def __init__(self, cfg, qwen3):
        super().__init__()
        self.att = GroupedQueryAttention(
            d_in=cfg["emb_dim"], num_heads=cfg["n_heads"], num_kv_groups=cfg["n_kv_groups"],
            head_dim=cfg.get("head_dim"), qk_norm=cfg.get("qk_norm", False), dtype=cfg["dtype"])
        self.ff = SwiGLU(cfg)
        if qwen3:
            self.norm1 = RMSNorm(cfg["emb_dim"], eps=1e-6)
            self.norm2 = RMSNorm(cfg["emb_dim"], eps=1e-6)
        else:
            self.norm1 = nn.RMSNorm(cfg["emb_dim"], eps=1e-5, dtype=cfg["dtype"])
            self.norm2 = nn.RMSNorm(cfg["emb_dim"], eps=1e-5, dtype=cfg["dtype"])

    def forward(self, x, mask, cos, sin):
        shortcut = x
        x = self.norm1(x)
        x = self.att(x, mask, cos, sin)
        x = x + shortcut
        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)
        return x + shortcut


class SwigluModel(nn.Module):
    """Llama3Model (qwen3=False) and Qwen3Model (qwen3=True): same names but the norms'."""

    def __init__(self, cfg, qwen3):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"], dtype=cfg["dtype"])
        self.trf_blocks = nn.ModuleList([SwigluBlock(cfg, qwen3) for _ in range(cfg["n_layers"])])
        if qwen3:
            self.final_norm = RMSNorm(cfg["emb_dim"])
        else:
            self.final_norm = nn.RMSNorm(cfg["emb_dim"], eps=1e-5, dtype=cfg["dtype"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False,
                                  dtype=cfg["dtype"])
        head_dim = cfg.get("head_dim") or cfg["emb_dim"] // cfg["n_heads"]
        cos, sin = compute_rope_params(head_dim=head_dim, theta_base=cfg["rope_base"],
                                       context_length=cfg["context_length"],
                                       freq_config=cfg.get("rope_freq"))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.cfg = cfg

    def forward(self, in_idx):
        x = self.tok_emb(in_idx)
        num_tokens = x.shape[1]
        mask = torch.triu(torch.ones(num_tokens, num_tokens, dtype=torch.bool), diagonal=1)
        for block in self.trf_blocks:
            x = block(x, mask, self.cos, self.sin)
        x = self.final_norm(x)
        return self.out_head(x.to(self.out_head.weight.dtype))


# --------------------------------------------------------------------------------------------
# Fixtures.

GPT_CONFIG = {"vocab_size": 96, "context_length": 16, "emb_dim": 16, "n_heads": 4,
              "n_layers": 2, "drop_rate": 0.1, "qkv_bias": False}
LOGIT_IDS = [[5, 17, 42, 88, 3, 64, 12], [90, 1, 33, 7, 51, 60, 2]]
PROMPT = [11, 47, 5, 70, 29, 83]
# Past the context (16): the last tokens come from windows that dropped the prompt's start.
NEW_TOKENS = 14
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def f32_list(tensor):
    """Nine significant digits: every float32 value round-trips exactly."""
    return json.loads(json.dumps(tensor.tolist(), default=float),
                      parse_float=lambda s: float(f"{float(s):.9g}"))


def perturb(model, seed):
    """Untrained norms are ones and zeros: noise makes every tensor say where it went."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((torch.randn(p.shape, generator=g) * 0.2).to(p.dtype))


def float_copy(model):
    """The model's own forward over its stored values, in float32: what the reader must give."""
    return copy.deepcopy(model).float().eval()


def witness(model, cfg, ids=LOGIT_IDS, prompt=PROMPT, new_tokens=NEW_TOKENS):
    """Logits of the model's forward on fixed ids, and generate_text_simple's ids, with a check
    that every greedy choice is far from a tie (so float32 rounding cannot flip it)."""
    model = float_copy(model)
    with torch.no_grad():
        logits = model(torch.tensor(ids))
    out = generate_text_simple(model, torch.tensor([prompt]), new_tokens, cfg["context_length"])
    for step in range(new_tokens):
        window = out[:, : len(prompt) + step][:, -cfg["context_length"]:]
        with torch.no_grad():
            last = model(window)[0, -1]
        top = torch.topk(last, 2).values
        margin = float((top[0] - top[1]) / last.abs().max())
        assert margin > 1e-3, f"greedy step {step} is a near tie ({margin})"
    return {"ids": ids, "logits": f32_list(logits), "prompt": prompt,
            "context_size": cfg["context_length"], "greedy": out[0, len(prompt):].tolist()}


def gpt_fixtures(out):
    gpt = out / "gpt2"
    gpt.mkdir(parents=True, exist_ok=True)
    expected = {}
    (gpt / "config.json").write_text(json.dumps(GPT_CONFIG, indent=1) + "\n")

    torch.manual_seed(123)
    model = GPTModel(GPT_CONFIG)
    perturb(model, 1)
    model.eval()

    # Chapter 5's two save forms.
    torch.save(model.state_dict(), gpt / "model.pth")
    expected["model.pth"] = dict(witness(model, GPT_CONFIG), config="config.json")
    save_file(model.state_dict(), gpt / "model.safetensors")
    expected["model.safetensors"] = dict(witness(model, GPT_CONFIG), config="config.json")

    trained = copy.deepcopy(model)
    trained.train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=0.01, weight_decay=0.1)
    batch = torch.tensor([PROMPT + [1, 2, 3]])
    logits = trained(batch[:, :-1])
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    trained.eval()
    torch.save({"model_state_dict": trained.state_dict(),
                "optimizer_state_dict": optimizer.state_dict()},
               gpt / "model_and_optimizer.pth")
    expected["model_and_optimizer.pth"] = dict(witness(trained, GPT_CONFIG), config="config.json")

    # Half precisions: the mask buffer is converted too, as `model.to(dtype)` does.
    for name, dtype in [("model_fp16.pth", torch.float16), ("model_bf16.pth", torch.bfloat16)]:
        low = copy.deepcopy(model).to(dtype)
        torch.save(low.state_dict(), gpt / name)
        expected[name] = dict(witness(low, GPT_CONFIG), config="config.json")

    # Views: q, k and v (weights and biases) slices of one storage at offsets; the first
    # feed-forward weight a transposed view; out_proj a view with a column stride of 2; a
    # negated view (`_neg_view`, stored un-negated with a flag); token embedding and head
    # one shared storage (tied).
    cfg = dict(GPT_CONFIG, qkv_bias=True)
    (gpt / "config_qkv_bias.json").write_text(json.dumps(cfg, indent=1) + "\n")
    torch.manual_seed(7)
    views = GPTModel(cfg)
    perturb(views, 2)
    views.out_head.weight = views.tok_emb.weight
    views.eval()
    e = cfg["emb_dim"]
    g = torch.Generator().manual_seed(3)
    state = views.state_dict()
    for i in range(cfg["n_layers"]):
        p = f"trf_blocks.{i}.att."
        qkv = torch.randn(3 * e, e, generator=g) * 0.3
        qkv_bias = torch.randn(3 * e, generator=g) * 0.1
        for k, part in enumerate(["W_query", "W_key", "W_value"]):
            state[p + part + ".weight"] = qkv[k * e:(k + 1) * e]
            state[p + part + ".bias"] = qkv_bias[k * e:(k + 1) * e]
        wide = torch.randn(e, 2 * e, generator=g) * 0.3
        state[p + "out_proj.weight"] = wide[:, ::2]
        ff_in = torch.randn(e, 4 * e, generator=g) * 0.3
        state[f"trf_blocks.{i}.ff.layers.0.weight"] = ff_in.t()
    state["final_norm.shift"] = (torch.randn(e, generator=g) * 0.1)._neg_view()
    views.load_state_dict(state)
    assert state["trf_blocks.0.att.W_key.weight"].storage_offset() == e * e
    assert not state["trf_blocks.0.ff.layers.0.weight"].is_contiguous()
    torch.save(state, gpt / "model_views.pth")
    expected["model_views.pth"] = dict(witness(views, cfg), config="config_qkv_bias.json")

    # A tied model saved as is: out_head.weight and tok_emb.weight share one storage.
    torch.manual_seed(9)
    tied = GPTModel(GPT_CONFIG)
    perturb(tied, 4)
    tied.out_head.weight = tied.tok_emb.weight
    tied.eval()
    torch.save(tied.state_dict(), gpt / "model_tied.pth")
    expected["model_tied.pth"] = dict(witness(tied, GPT_CONFIG), config="config.json",
                                      tied=True)

    (gpt / "expected.json").write_text(json.dumps(expected) + "\n")


class Evil:
    """What a hostile .pth holds: unpickling it would call os.system."""

    def __reduce__(self):
        return (os.system, ("echo a hostile checkpoint ran this",))


class TinyModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)


def hostile_fixtures(out):
    bad = out / "hostile"
    bad.mkdir(parents=True, exist_ok=True)
    small = {"tok_emb.weight": torch.arange(6.0).view(2, 3), "pos_emb.weight": torch.ones(4)}
    torch.save(small, bad / "small.pth")
    # torch.save pickles __reduce__'s callable as a global: `posix system` (os.system).
    torch.save({"tok_emb.weight": torch.zeros(2, 2), "payload": Evil()}, bad / "foreign_global.pth")
    # A whole module pickled (torch.save(model)): its class is a global of the user's code.
    torch.save(TinyModule(), bad / "whole_module.pth")
    # torch < 1.6's format (still written with _use_new_zipfile_serialization=False).
    torch.save(small, bad / "legacy.pth", _use_new_zipfile_serialization=False)
    # A storage entry shorter than the tensors its pickle declares: small.pth with data/0 cut.
    with zipfile.ZipFile(bad / "small.pth") as source:
        with zipfile.ZipFile(bad / "short_storage.pth", "w", zipfile.ZIP_STORED) as target:
            for info in source.infolist():
                data = source.read(info)
                if info.filename.endswith("/data/0"):
                    data = data[: len(data) // 2]
                target.writestr(info.filename, data)
    # Entries compressed with deflate: not what torch.save writes (it refuses to load them too).
    with zipfile.ZipFile(bad / "small.pth") as source:
        with zipfile.ZipFile(bad / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                target.writestr(info.filename, source.read(info))


def hf_check(model, cfg, mapping, hf_model):
    """Loads the book's tensors into transformers' model under `mapping` and asserts that
    transformers' forward gives the book's logits: the mapping is the whole difference."""
    state = {mapping[k]: v.float() for k, v in model.state_dict().items()}
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    hf_model.eval()
    ids = torch.tensor(LOGIT_IDS)
    with torch.no_grad():
        ours = float_copy(model)(ids)
        theirs = hf_model(ids).logits
    err = float((ours - theirs).abs().max() / ours.abs().max())
    assert err < 1e-5, f"transformers' forward differs by {err}"
    return {name: list(t.shape) for name, t in hf_model.state_dict().items()}


def swiglu_mapping(cfg, qwen3):
    """The book's names onto transformers' (LlamaForCausalLM, Qwen3ForCausalLM)."""
    norm = "scale" if qwen3 else "weight"
    m = {"tok_emb.weight": "model.embed_tokens.weight",
         f"final_norm.{norm}": "model.norm.weight", "out_head.weight": "lm_head.weight"}
    for i in range(cfg["n_layers"]):
        b, h = f"trf_blocks.{i}.", f"model.layers.{i}."
        for book, hf in [("att.W_query", "self_attn.q_proj"), ("att.W_key", "self_attn.k_proj"),
                         ("att.W_value", "self_attn.v_proj"), ("att.out_proj", "self_attn.o_proj"),
                         ("ff.fc1", "mlp.gate_proj"), ("ff.fc2", "mlp.up_proj"),
                         ("ff.fc3", "mlp.down_proj")]:
            m[f"{b}{book}.weight"] = f"{h}{hf}.weight"
        m[f"{b}norm1.{norm}"] = f"{h}input_layernorm.weight"
        m[f"{b}norm2.{norm}"] = f"{h}post_attention_layernorm.weight"
        if qwen3 and cfg["qk_norm"]:
            m[f"{b}att.q_norm.scale"] = f"{h}self_attn.q_norm.weight"
            m[f"{b}att.k_norm.scale"] = f"{h}self_attn.k_norm.weight"
    return m


def swiglu_fixtures(out):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    # Llama 3.2's RoPE scaling (factor 32, low 1, high 4, 8192): with head_dim 8 and base
    # 500,000 the four frequencies fall in all three of its bands.
    llama = {"vocab_size": 96, "context_length": 16, "emb_dim": 32, "n_heads": 4,
             "n_layers": 2, "hidden_dim": 48, "n_kv_groups": 2, "rope_base": 500_000.0,
             "dtype": "float32",
             "rope_freq": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_context_length": 8192}}
    # Qwen3: head_dim (16) is not emb_dim / n_heads (8); weights in bfloat16 as the book's
    # config has them, the RMSNorm scales in float32 (the book's RMSNorm takes no dtype).
    qwen3 = {"vocab_size": 96, "context_length": 16, "emb_dim": 32, "n_heads": 4,
             "n_layers": 2, "hidden_dim": 48, "head_dim": 16, "qk_norm": True, "n_kv_groups": 2,
             "rope_base": 1_000_000.0, "dtype": "bfloat16"}
    for family, cfg, is_qwen3, seed in [("llama3", llama, False, 31), ("qwen3", qwen3, True, 37)]:
        folder = out / family
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        torch.manual_seed(seed)
        model = SwigluModel(dict(cfg, dtype=DTYPES[cfg["dtype"]]), is_qwen3)
        perturb(model, seed)
        model.eval()
        torch.save(model.state_dict(), folder / "model.pth")
        mapping = swiglu_mapping(cfg, is_qwen3)
        assert set(mapping) == set(model.state_dict()), set(mapping) ^ set(model.state_dict())
        common = dict(vocab_size=cfg["vocab_size"], hidden_size=cfg["emb_dim"],
                      intermediate_size=cfg["hidden_dim"], num_hidden_layers=cfg["n_layers"],
                      num_attention_heads=cfg["n_heads"], num_key_value_heads=cfg["n_kv_groups"],
                      max_position_embeddings=cfg["context_length"], tie_word_embeddings=False)
        if is_qwen3:
            hf = Qwen3ForCausalLM(Qwen3Config(
                **common, head_dim=cfg["head_dim"], rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_base"]}))
        else:
            f = cfg["rope_freq"]
            hf = LlamaForCausalLM(LlamaConfig(
                **common, rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "llama3", "rope_theta": cfg["rope_base"],
                                 "factor": f["factor"], "low_freq_factor": f["low_freq_factor"],
                                 "high_freq_factor": f["high_freq_factor"],
                                 "original_max_position_embeddings":
                                     f["original_context_length"]}))
        hf_shapes = hf_check(model, cfg, mapping, hf)
        expected = dict(witness(model, cfg), config="config.json",
                        book_to_hf=mapping, hf_shapes=hf_shapes,
                        book_shapes={k: list(v.shape) for k, v in model.state_dict().items()},
                        book_dtypes={k: str(v.dtype).removeprefix("torch.")
                                     for k, v in model.state_dict().items()})
        forms = {"model.pth": expected}

        # The other save forms, as for GPTModel: safetensors of the same state dict, and
        # chapter 5's model and optimizer after one training step.
        save_file(model.state_dict(), folder / "model.safetensors")
        forms["model.safetensors"] = dict(witness(model, cfg), config="config.json")
        trained = copy.deepcopy(model)
        trained.train()
        optimizer = torch.optim.AdamW(trained.parameters(), lr=0.01, weight_decay=0.1)
        batch = torch.tensor([PROMPT + [1, 2, 3]])
        logits = trained(batch[:, :-1]).float()
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trained.eval()
        torch.save({"model_state_dict": trained.state_dict(),
                    "optimizer_state_dict": optimizer.state_dict()},
                   folder / "model_and_optimizer.pth")
        forms["model_and_optimizer.pth"] = dict(witness(trained, cfg), config="config.json")
        (folder / "expected.json").write_text(json.dumps(forms) + "\n")


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/book")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    gpt_fixtures(out)
    hostile_fixtures(out)
    swiglu_fixtures(out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1024:.0f} KiB) with torch {torch.__version__}")


if __name__ == "__main__":
    main()
