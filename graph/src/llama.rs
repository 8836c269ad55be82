//! Llama 3.2, with the keys of the book's `LLAMA32_CONFIG_1B` and its RoPE frequency scaling.

use serde::{Deserialize, Serialize};

use crate::config::{check_dims_fit, check_positive, WeightDtype};
use crate::{Error, Result};

/// Llama 3's hyper-parameters, the book's keys, plus HF's `tie_word_embeddings` and
/// `rms_norm_eps`. `n_kv_groups` is the number of key/value heads: each serves
/// `n_heads / n_kv_groups` query heads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub context_length: usize,
    pub emb_dim: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    /// The SwiGLU feed-forward's inner width (HF's `intermediate_size`).
    pub hidden_dim: usize,
    pub n_kv_groups: usize,
    pub rope_base: f64,
    pub dtype: WeightDtype,
    /// Llama 3's rescaling of the RoPE frequencies; absent, plain RoPE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_freq: Option<RopeFrequencyScaling>,
    /// The head shares the token embedding's matrix, as every Llama 3.2 size does (the book
    /// loads the embedding into its head when a checkpoint has no `lm_head.weight`).
    #[serde(default = "tied")]
    pub tie_word_embeddings: bool,
    #[serde(default = "llama_rms_norm_eps")]
    pub rms_norm_eps: f64,
}

/// The book's `rope_freq` (HF's `rope_scaling` of `rope_type` llama3): wavelengths longer than
/// `original_context_length / low_freq_factor` are stretched by `factor`, shorter than
/// `original_context_length / high_freq_factor` kept, and those between blended smoothly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeFrequencyScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_context_length: usize,
}

fn tied() -> bool {
    true
}

fn llama_rms_norm_eps() -> f64 {
    1e-5
}

/// The Llama 3.2 sizes, by the names users type: (name, emb_dim, n_layers, n_heads).
/// Shared by both: vocabulary 128,256, 8 kv heads, SwiGLU width 8,192, context 131,072,
/// RoPE base 500,000 with factor 32 scaling from 8,192 positions, tied head (HF's config.json).
pub const PRESETS: [(&str, usize, usize, usize); 2] =
    [("llama3.2-1b", 2048, 16, 32), ("llama3.2-3b", 3072, 28, 24)];

impl LlamaConfig {
    pub fn preset(name: &str) -> Option<LlamaConfig> {
        let &(_, emb_dim, n_layers, n_heads) = PRESETS.iter().find(|p| p.0 == name)?;
        Some(LlamaConfig {
            vocab_size: 128_256,
            context_length: 131_072,
            emb_dim,
            n_heads,
            n_layers,
            hidden_dim: 8192,
            n_kv_groups: 8,
            rope_base: 500_000.0,
            dtype: WeightDtype::BFloat16,
            rope_freq: Some(RopeFrequencyScaling {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context_length: 8192,
            }),
            tie_word_embeddings: true,
            rms_norm_eps: 1e-5,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.emb_dim / self.n_heads
    }

    pub fn validate(&self) -> Result<()> {
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
            ("emb_dim", self.emb_dim),
            ("n_heads", self.n_heads),
            ("n_layers", self.n_layers),
            ("hidden_dim", self.hidden_dim),
            ("n_kv_groups", self.n_kv_groups),
        ])?;
        if !self.emb_dim.is_multiple_of(self.n_heads) {
            return Err(Error::Config(format!(
                "emb_dim ({}) must be divisible by n_heads ({})",
                self.emb_dim, self.n_heads
            )));
        }
        check_rope(self.n_heads, self.n_kv_groups, self.head_dim(), self.rope_base)?;
        check_eps(self.rms_norm_eps)?;
        if let Some(scaling) = &self.rope_freq {
            scaling.validate()?;
        }
        check_dims_fit(&[self.vocab_size, self.context_length, self.emb_dim, self.hidden_dim])
    }
}

impl RopeFrequencyScaling {
    fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(format!("rope_freq: {msg}")));
        let positive = [
            ("factor", self.factor),
            ("low_freq_factor", self.low_freq_factor),
            ("high_freq_factor", self.high_freq_factor),
        ];
        if let Some((name, value)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return fail(format!("{name} must be a positive number, got {value}"));
        }
        // The blend between the two bands divides by their difference.
        if self.high_freq_factor <= self.low_freq_factor {
            return fail(format!(
                "high_freq_factor ({}) must exceed low_freq_factor ({})",
                self.high_freq_factor, self.low_freq_factor
            ));
        }
        if self.original_context_length == 0 {
            return fail("original_context_length must be at least 1".into());
        }
        Ok(())
    }
}

/// The attention's constraints shared by the RoPE families.
pub(crate) fn check_rope(
    n_heads: usize,
    n_kv_groups: usize,
    head_dim: usize,
    rope_base: f64,
) -> Result<()> {
    let fail = |msg: String| Err(Error::Config(msg));
    if !n_heads.is_multiple_of(n_kv_groups) {
        return fail(format!(
            "n_heads ({n_heads}) must be divisible by n_kv_groups ({n_kv_groups}): each key/value head serves a whole group of query heads"
        ));
    }
    // RoPE turns pairs of dimensions (the first half against the second).
    if !head_dim.is_multiple_of(2) {
        return fail(format!("the head dimension ({head_dim}) must be even for RoPE"));
    }
    if !(rope_base.is_finite() && rope_base > 1.0) {
        return fail(format!("rope_base must be a number above 1, got {rope_base}"));
    }
    check_dims_fit(&[n_heads.saturating_mul(head_dim)])
}

pub(crate) fn check_eps(eps: f64) -> Result<()> {
    if eps.is_finite() && eps > 0.0 && (eps as f32) > 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!("rms_norm_eps must be a small positive number, got {eps}")))
    }
}

/// RoPE's angle per position for each of the `head_dim / 2` pairs of dimensions,
/// `rope_base^(-2i / head_dim)`, with Llama 3's rescaling when given (transformers'
/// `_compute_llama3_parameters`, the book's `compute_rope_params`). Computed in f64 and rounded
/// once: the graph stores them as constants.
pub fn inverse_frequencies(
    head_dim: usize,
    rope_base: f64,
    scaling: Option<&RopeFrequencyScaling>,
) -> Vec<f32> {
    let plain = (0..head_dim / 2).map(|i| rope_base.powf(-((2 * i) as f64) / head_dim as f64));
    let Some(scaling) = scaling else { return plain.map(|f| f as f32).collect() };
    let original = scaling.original_context_length as f64;
    let low_freq_wavelength = original / scaling.low_freq_factor;
    let high_freq_wavelength = original / scaling.high_freq_factor;
    plain
        .map(|frequency| {
            let wavelength = 2.0 * std::f64::consts::PI / frequency;
            let scaled = if wavelength > low_freq_wavelength {
                frequency / scaling.factor
            } else if wavelength < high_freq_wavelength {
                frequency
            } else {
                let smooth = (original / wavelength - scaling.low_freq_factor)
                    / (scaling.high_freq_factor - scaling.low_freq_factor);
                (1.0 - smooth) * frequency / scaling.factor + smooth * frequency
            };
            scaled as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_frequencies_fall_geometrically_from_one() {
        let f = inverse_frequencies(8, 10_000.0, None);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.1).abs() < 1e-7 && (f[3] - 0.001).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn llama3_scaling_keeps_high_stretches_low_and_blends_between() {
        let scaling = RopeFrequencyScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context_length: 64,
        };
        let plain = inverse_frequencies(32, 10_000.0, None);
        let scaled = inverse_frequencies(32, 10_000.0, Some(&scaling));
        let mut bands = [0; 3];
        for (&p, &s) in plain.iter().zip(&scaled) {
            let wavelength = 2.0 * std::f32::consts::PI / p;
            if wavelength < 16.0 {
                assert_eq!(s, p);
                bands[0] += 1;
            } else if wavelength > 64.0 {
                assert!((s - p / 8.0).abs() <= 1e-7 * p, "{s} vs {p}");
                bands[2] += 1;
            } else {
                assert!(s < p && s > p / 8.0, "{s} vs {p}");
                bands[1] += 1;
            }
        }
        assert!(bands.iter().all(|&n| n > 0), "every band tested: {bands:?}");
    }
}
