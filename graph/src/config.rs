//! The model configuration: the single source of truth for every shape in the graph.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// GPT-2 hyper-parameters, with the keys of the book's `GPT_CONFIG_124M`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub context_length: usize,
    pub emb_dim: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub drop_rate: f64,
    pub qkv_bias: bool,
}

/// The four GPT-2 sizes, by the names users type.
pub const PRESETS: [(&str, usize, usize, usize); 4] = [
    // (name, emb_dim, n_layers, n_heads)
    ("gpt2-small", 768, 12, 12),
    ("gpt2-medium", 1024, 24, 16),
    ("gpt2-large", 1280, 36, 20),
    ("gpt2-xl", 1600, 48, 25),
];

pub const LAYER_NORM_EPS: f32 = 1e-5;

impl GptConfig {
    pub fn preset(name: &str) -> Result<GptConfig> {
        let &(_, emb_dim, n_layers, n_heads) =
            PRESETS.iter().find(|p| p.0 == name).ok_or_else(|| {
                let known: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                Error::Config(format!("unknown preset `{name}` (known: {})", known.join(", ")))
            })?;
        Ok(GptConfig {
            vocab_size: 50257,
            context_length: 1024,
            emb_dim,
            n_heads,
            n_layers,
            drop_rate: 0.1,
            qkv_bias: false,
        })
    }

    pub fn from_json(text: &str) -> Result<GptConfig> {
        let config: GptConfig =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("config JSON: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a config always serializes")
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(msg));
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
            ("emb_dim", self.emb_dim),
            ("n_heads", self.n_heads),
            ("n_layers", self.n_layers),
        ] {
            if value == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        if !self.emb_dim.is_multiple_of(self.n_heads) {
            return fail(format!(
                "emb_dim ({}) must be divisible by n_heads ({})",
                self.emb_dim, self.n_heads
            ));
        }
        if !(0.0..1.0).contains(&self.drop_rate) {
            return fail(format!("drop_rate must be in [0, 1), got {}", self.drop_rate));
        }
        // Every dim must fit the int64 shapes of ONNX and the i32-indexed kernels of runtimes.
        if self.vocab_size > i32::MAX as usize
            || self.context_length > i32::MAX as usize
            || self.emb_dim.saturating_mul(4) > i32::MAX as usize
        {
            return fail("a dimension exceeds 2^31".into());
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.emb_dim / self.n_heads
    }

    pub fn ffn_dim(&self) -> usize {
        4 * self.emb_dim
    }
}

/// The book's parameter accounting (chapter 4): what each part of the model holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterCount {
    pub token_embedding: usize,
    pub position_embedding: usize,
    pub per_block_attention: usize,
    pub per_block_feed_forward: usize,
    pub per_block_norms: usize,
    pub n_blocks: usize,
    pub final_norm: usize,
    pub output_head: usize,
}

impl ParameterCount {
    pub fn of(config: &GptConfig) -> ParameterCount {
        let e = config.emb_dim;
        let qkv_bias = if config.qkv_bias { 3 * e } else { 0 };
        ParameterCount {
            token_embedding: config.vocab_size * e,
            position_embedding: config.context_length * e,
            per_block_attention: 3 * e * e + qkv_bias + e * e + e,
            per_block_feed_forward: e * config.ffn_dim()
                + config.ffn_dim()
                + config.ffn_dim() * e
                + e,
            per_block_norms: 2 * 2 * e,
            n_blocks: config.n_layers,
            final_norm: 2 * e,
            output_head: e * config.vocab_size,
        }
    }

    pub fn per_block(&self) -> usize {
        self.per_block_attention + self.per_block_feed_forward + self.per_block_norms
    }

    pub fn total(&self) -> usize {
        self.token_embedding
            + self.position_embedding
            + self.n_blocks * self.per_block()
            + self.final_norm
            + self.output_head
    }

    /// With the output head sharing the token embedding's matrix, as GPT-2 does.
    pub fn total_tied(&self) -> usize {
        self.total() - self.output_head
    }

    /// Untied float32 size in the book's megabytes (2^20 bytes: 621.83 MB for GPT-2 small).
    pub fn megabytes_f32(&self) -> f64 {
        (self.total() * 4) as f64 / (1024.0 * 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_matches_the_books_accounting() {
        let count = ParameterCount::of(&GptConfig::preset("gpt2-small").unwrap());
        assert_eq!(count.total(), 163_009_536);
        assert_eq!(count.total_tied(), 124_412_160);
        assert_eq!(format!("{:.2}", count.megabytes_f32()), "621.83");
    }

    #[test]
    fn presets_match_the_gpt2_family() {
        // Untied totals from the book's formula, and the parameter counts Hugging Face reports for
        // the released checkpoints (tied, with q/k/v bias): the 124M/355M/774M/1558M of the names.
        let expected = [
            ("gpt2-small", 163_009_536, 124_439_808),
            ("gpt2-medium", 406_212_608, 354_823_168),
            ("gpt2-large", 838_220_800, 774_030_080),
            ("gpt2-xl", 1_637_792_000, 1_557_611_200),
        ];
        for (name, total, released) in expected {
            let mut config = GptConfig::preset(name).unwrap();
            assert_eq!(ParameterCount::of(&config).total(), total, "{name}");
            config.qkv_bias = true;
            assert_eq!(ParameterCount::of(&config).total_tied(), released, "{name}");
        }
    }

    #[test]
    fn rejects_bad_configs() {
        let mut c = GptConfig::preset("gpt2-small").unwrap();
        c.n_heads = 7;
        assert!(c.validate().unwrap_err().to_string().contains("divisible"));
        c.n_heads = 0;
        assert!(c.validate().unwrap_err().to_string().contains("n_heads"));
        assert!(GptConfig::preset("gpt5").is_err());
        assert!(GptConfig::from_json("{\"vocab_size\": 3}").is_err());
    }

    #[test]
    fn json_round_trips_with_the_books_keys() {
        let c = GptConfig::preset("gpt2-small").unwrap();
        let text = c.to_json();
        assert!(text.contains("\"emb_dim\":768") && text.contains("\"qkv_bias\":false"));
        assert_eq!(GptConfig::from_json(&text).unwrap(), c);
    }
}
