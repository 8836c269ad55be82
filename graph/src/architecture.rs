//! What the one decoder builder reads: each family's config said as shapes and options.
//!
//! | option | gpt2 | llama | qwen3 |
//! |---|---|---|---|
//! | positions | learned table | RoPE (Llama 3 scaling) | RoPE |
//! | norm | LayerNorm | RMSNorm | RMSNorm, and of each head's q and k |
//! | attention | kv heads = heads, q/k/v bias optional, output bias | grouped kv heads, no bias | grouped, own head_dim |
//! | feed-forward | GELU(tanh), biases | SwiGLU, no bias | SwiGLU |
//! | weights | `[in, out]` (Conv1D) | `[out, in]` (nn.Linear) | `[out, in]` |

use crate::config::{Family, GptConfig, ModelConfig, ParameterCount, LAYER_NORM_EPS};
use crate::llama::{inverse_frequencies, LlamaConfig};
use crate::names::{ModuleNames, GPT2_MODULES, LLAMA_MODULES};
use crate::qwen3::Qwen3Config;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    /// Mean and biased variance, scale and shift.
    LayerNorm { eps: f32 },
    /// Root mean square, scale only.
    RmsNorm { eps: f32 },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Positions {
    /// A `[context, emb]` table added to the token embeddings.
    Learned,
    /// Rotary embeddings of queries and keys, one angle per position for each pair of
    /// dimensions: `position * inverse_frequencies[i]`.
    Rope { inverse_frequencies: Vec<f32> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedForward {
    /// `down(gelu_tanh(up x))`, with biases.
    GeluTanh { hidden: usize },
    /// `down(silu(gate x) * up x)`, without biases.
    SwiGlu { hidden: usize },
}

/// How a checkpoint stores a projection's matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[in, out]`, GPT-2's Conv1D: `y = x W`.
    InputsByOutputs,
    /// `[out, in]`, PyTorch's `nn.Linear`: `y = x W^T`.
    OutputsByInputs,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    pub family: Family,
    pub vocab_size: usize,
    pub context_length: usize,
    pub emb_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads (the cache holds these): `n_heads` for GPT-2, `n_kv_groups` otherwise.
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub qkv_bias: bool,
    /// Biases on the attention's output projection and on the feed-forward.
    pub projection_bias: bool,
    pub qk_norm: bool,
    pub norm: Norm,
    pub positions: Positions,
    pub feed_forward: FeedForward,
    pub layout: WeightLayout,
    pub names: ModuleNames,
    /// GPT-2 scales the init of projections into the residual stream by `1/sqrt(2 n_layers)`.
    pub scaled_residual_init: bool,
}

impl Architecture {
    pub fn of(config: &ModelConfig) -> Architecture {
        match config {
            ModelConfig::Gpt2(c) => Architecture::gpt2(c),
            ModelConfig::Llama(c) => Architecture::llama(c),
            ModelConfig::Qwen3(c) => Architecture::qwen3(c),
        }
    }

    fn gpt2(c: &GptConfig) -> Architecture {
        Architecture {
            family: Family::Gpt2,
            vocab_size: c.vocab_size,
            context_length: c.context_length,
            emb_dim: c.emb_dim,
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            n_kv_heads: c.n_heads,
            head_dim: c.head_dim(),
            qkv_bias: c.qkv_bias,
            projection_bias: true,
            qk_norm: false,
            norm: Norm::LayerNorm { eps: LAYER_NORM_EPS },
            positions: Positions::Learned,
            feed_forward: FeedForward::GeluTanh { hidden: c.ffn_dim() },
            layout: WeightLayout::InputsByOutputs,
            names: GPT2_MODULES,
            scaled_residual_init: true,
        }
    }

    fn llama(c: &LlamaConfig) -> Architecture {
        let head_dim = c.head_dim();
        Architecture {
            family: Family::Llama,
            vocab_size: c.vocab_size,
            context_length: c.context_length,
            emb_dim: c.emb_dim,
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_groups,
            head_dim,
            qkv_bias: false,
            projection_bias: false,
            qk_norm: false,
            norm: Norm::RmsNorm { eps: c.rms_norm_eps as f32 },
            positions: Positions::Rope {
                inverse_frequencies: inverse_frequencies(
                    head_dim,
                    c.rope_base,
                    c.rope_freq.as_ref(),
                ),
            },
            feed_forward: FeedForward::SwiGlu { hidden: c.hidden_dim },
            layout: WeightLayout::OutputsByInputs,
            names: LLAMA_MODULES,
            scaled_residual_init: false,
        }
    }

    fn qwen3(c: &Qwen3Config) -> Architecture {
        Architecture {
            family: Family::Qwen3,
            vocab_size: c.vocab_size,
            context_length: c.context_length,
            emb_dim: c.emb_dim,
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_groups,
            head_dim: c.head_dim,
            qkv_bias: false,
            projection_bias: false,
            qk_norm: c.qk_norm,
            norm: Norm::RmsNorm { eps: c.rms_norm_eps as f32 },
            positions: Positions::Rope {
                inverse_frequencies: inverse_frequencies(c.head_dim, c.rope_base, None),
            },
            feed_forward: FeedForward::SwiGlu { hidden: c.hidden_dim },
            layout: WeightLayout::OutputsByInputs,
            names: LLAMA_MODULES,
            scaled_residual_init: false,
        }
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Every weight, counted as transformers counts them (its modules hold exactly these).
    pub fn parameter_count(&self) -> ParameterCount {
        let e = self.emb_dim;
        let (q_dim, kv_dim) = (self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim);
        let norm = |dim: usize| match self.norm {
            Norm::LayerNorm { .. } => 2 * dim,
            Norm::RmsNorm { .. } => dim,
        };
        let bias = |present: bool, dim: usize| if present { dim } else { 0 };
        let attention = e * q_dim
            + 2 * e * kv_dim
            + q_dim * e
            + bias(self.qkv_bias, q_dim + 2 * kv_dim)
            + bias(self.projection_bias, e)
            + if self.qk_norm { 2 * self.head_dim } else { 0 };
        let feed_forward = match self.feed_forward {
            FeedForward::GeluTanh { hidden } => {
                2 * e * hidden + bias(self.projection_bias, hidden + e)
            }
            FeedForward::SwiGlu { hidden } => 3 * e * hidden,
        };
        ParameterCount {
            token_embedding: self.vocab_size * e,
            position_embedding: match self.positions {
                Positions::Learned => self.context_length * e,
                Positions::Rope { .. } => 0,
            },
            per_block_attention: attention,
            per_block_feed_forward: feed_forward,
            per_block_norms: 2 * norm(e),
            n_blocks: self.n_layers,
            final_norm: norm(e),
            output_head: e * self.vocab_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PRESETS;

    #[test]
    fn gpt2_counts_as_the_books_formula() {
        for (name, ..) in PRESETS {
            for qkv_bias in [false, true] {
                let config = GptConfig { qkv_bias, ..GptConfig::preset(name).unwrap() };
                let count = ModelConfig::from(&config).parameter_count();
                assert_eq!(count, ParameterCount::of(&config), "{name}");
            }
        }
    }

    /// The parameters transformers counts for the published configs: `sum(p.numel() for p in
    /// model.parameters())` of `LlamaForCausalLM` / `Qwen3ForCausalLM` built on the meta device
    /// from each HF config.json's values (transformers 5.24; scripts/family_parameter_counts.py).
    #[test]
    fn presets_count_as_transformers() {
        let expected = [
            ("llama3.2-1b", 1_235_814_400, 1_498_482_688),
            ("llama3.2-3b", 3_212_749_824, 3_606_752_256),
            ("qwen3-0.6b", 596_049_920, 751_632_384),
            ("qwen3-1.7b", 1_720_574_976, 2_031_739_904),
        ];
        for (name, tied, untied) in expected {
            let mut config = ModelConfig::preset(name).unwrap();
            assert!(config.head_tied(), "{name} ties its head");
            assert_eq!(config.parameters(), tied, "{name}");
            config.set_head_tied(false);
            assert_eq!(config.parameters(), untied, "{name} untied");
        }
    }
}
