//! Qwen3 (dense), with the keys of the book's `QWEN_CONFIG_06_B`: Llama's decoder with a head
//! dimension of its own and RMSNorm of each head's queries and keys before RoPE.

use serde::{Deserialize, Serialize};

use crate::config::{check_dims_fit, check_positive, WeightDtype};
use crate::llama::{check_eps, check_rope};
use crate::Result;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub context_length: usize,
    pub emb_dim: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    /// The SwiGLU feed-forward's inner width (HF's `intermediate_size`).
    pub hidden_dim: usize,
    /// Each head's width; `n_heads * head_dim` need not equal `emb_dim`.
    pub head_dim: usize,
    /// RMSNorm of each head's queries and keys (over `head_dim`) before RoPE.
    pub qk_norm: bool,
    /// Key/value heads, each serving `n_heads / n_kv_groups` query heads.
    pub n_kv_groups: usize,
    pub rope_base: f64,
    pub dtype: WeightDtype,
    /// The head shares the token embedding's matrix, as Qwen3 0.6B to 4B do.
    #[serde(default = "tied")]
    pub tie_word_embeddings: bool,
    #[serde(default = "qwen3_rms_norm_eps")]
    pub rms_norm_eps: f64,
}

fn tied() -> bool {
    true
}

fn qwen3_rms_norm_eps() -> f64 {
    1e-6
}

/// The Qwen3 sizes that tie their head, by the names users type:
/// (name, emb_dim, hidden_dim). Shared: vocabulary 151,936, 28 layers, 16 query and 8 kv heads
/// of 128, context 40,960, RoPE base 1,000,000 (HF's config.json).
pub const PRESETS: [(&str, usize, usize); 2] =
    [("qwen3-0.6b", 1024, 3072), ("qwen3-1.7b", 2048, 6144)];

impl Qwen3Config {
    pub fn preset(name: &str) -> Option<Qwen3Config> {
        let &(_, emb_dim, hidden_dim) = PRESETS.iter().find(|p| p.0 == name)?;
        Some(Qwen3Config {
            vocab_size: 151_936,
            context_length: 40_960,
            emb_dim,
            n_heads: 16,
            n_layers: 28,
            hidden_dim,
            head_dim: 128,
            qk_norm: true,
            n_kv_groups: 8,
            rope_base: 1_000_000.0,
            dtype: WeightDtype::BFloat16,
            tie_word_embeddings: true,
            rms_norm_eps: 1e-6,
        })
    }

    pub fn validate(&self) -> Result<()> {
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
            ("emb_dim", self.emb_dim),
            ("n_heads", self.n_heads),
            ("n_layers", self.n_layers),
            ("hidden_dim", self.hidden_dim),
            ("head_dim", self.head_dim),
            ("n_kv_groups", self.n_kv_groups),
        ])?;
        check_rope(self.n_heads, self.n_kv_groups, self.head_dim, self.rope_base)?;
        check_eps(self.rms_norm_eps)?;
        check_dims_fit(&[self.vocab_size, self.context_length, self.emb_dim, self.hidden_dim])
    }
}
