//! The test oracle for the RoPE families: Llama 3 and Qwen3 (Llama with a head dimension of its
//! own and RMSNorm of each head's queries and keys) in plain ndarray, read off transformers'
//! `LlamaForCausalLM` / `Qwen3ForCausalLM` and written without the graph builder or its
//! architecture table. It only shares the weights' (HF) names and the config type.

use ndarray::{s, Array1, Array2, Array3, ArrayView1, ArrayView2, Axis};

use gptc_graph::llama::RopeFrequencyScaling;
use gptc_graph::{ModelConfig, TensorMap};

use super::{matrix, vector};
use gptc::{Error, Result};

/// What the forward reads of a Llama or Qwen3 config.
struct Shape {
    vocab_size: usize,
    emb_dim: usize,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    qk_norm: bool,
    rope_base: f64,
    rope_freq: Option<RopeFrequencyScaling>,
    eps: f32,
}

pub struct Reference<'w> {
    shape: Shape,
    weights: &'w TensorMap,
}

impl<'w> Reference<'w> {
    pub fn new(config: &ModelConfig, weights: &'w TensorMap) -> Result<Reference<'w>> {
        let shape = match config {
            ModelConfig::Llama(c) => Shape {
                vocab_size: c.vocab_size,
                emb_dim: c.emb_dim,
                n_layers: c.n_layers,
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_groups,
                head_dim: c.emb_dim / c.n_heads,
                qk_norm: false,
                rope_base: c.rope_base,
                rope_freq: c.rope_freq.clone(),
                eps: c.rms_norm_eps as f32,
            },
            ModelConfig::Qwen3(c) => Shape {
                vocab_size: c.vocab_size,
                emb_dim: c.emb_dim,
                n_layers: c.n_layers,
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_groups,
                head_dim: c.head_dim,
                qk_norm: c.qk_norm,
                rope_base: c.rope_base,
                rope_freq: None,
                eps: c.rms_norm_eps as f32,
            },
            ModelConfig::Gpt2(_) => {
                return Err(Error::Usage("GPT-2 has its own reference forward".into()))
            }
        };
        Ok(Reference { shape, weights })
    }

    fn matrix(&self, name: &str) -> Result<ArrayView2<'w, f32>> {
        matrix(self.weights, name)
    }

    fn vector(&self, name: &str) -> Result<ArrayView1<'w, f32>> {
        vector(self.weights, name)
    }

    /// Logits `[batch, seq, vocab]` for rows without padding, positions 0, 1, ...
    pub fn logits(&self, input_ids: &Array2<i64>) -> Result<Array3<f32>> {
        let (batch, seq) = input_ids.dim();
        let mut out = Array3::zeros((batch, seq, self.shape.vocab_size));
        for (b, ids) in input_ids.outer_iter().enumerate() {
            let hidden = self.hidden_states(ids.as_slice().expect("rows are contiguous"))?;
            out.slice_mut(s![b, .., ..]).assign(&hidden.dot(&self.output_head()?.t()));
        }
        Ok(out)
    }

    /// `lm_head.weight`, or the token embedding when the checkpoint ties them.
    fn output_head(&self) -> Result<ArrayView2<'w, f32>> {
        match self.weights.0.contains_key("lm_head.weight") {
            true => self.matrix("lm_head.weight"),
            false => self.matrix("model.embed_tokens.weight"),
        }
    }

    /// The final-norm output `[seq, emb]` of one sequence.
    fn hidden_states(&self, ids: &[i64]) -> Result<Array2<f32>> {
        let shape = &self.shape;
        let embedding = self.matrix("model.embed_tokens.weight")?;
        let mut x = Array2::<f32>::zeros((ids.len(), shape.emb_dim));
        for (t, &id) in ids.iter().enumerate() {
            if id < 0 || id as usize >= shape.vocab_size {
                return Err(Error::Usage(format!("token id {id} outside the vocabulary")));
            }
            x.row_mut(t).assign(&embedding.row(id as usize));
        }
        let angles = self.angles(ids.len());
        for i in 0..shape.n_layers {
            let p = format!("model.layers.{i}");
            let h = self.rms_norm(&x, &format!("{p}.input_layernorm.weight"))?;
            x = x + self.attention(&h, &format!("{p}.self_attn"), &angles)?;
            let h = self.rms_norm(&x, &format!("{p}.post_attention_layernorm.weight"))?;
            x = x + self.mlp(&h, &format!("{p}.mlp"))?;
        }
        self.rms_norm(&x, "model.norm.weight")
    }

    /// `x / sqrt(mean(x^2) + eps) * weight`, per row.
    fn rms_norm(&self, x: &Array2<f32>, weight: &str) -> Result<Array2<f32>> {
        let weight = self.vector(weight)?;
        let mut y = x.clone();
        for mut row in y.outer_iter_mut() {
            let mean_square = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
            let inv = 1.0 / (mean_square + self.shape.eps).sqrt();
            for (v, w) in row.iter_mut().zip(weight) {
                *v *= inv * w;
            }
        }
        Ok(y)
    }

    /// `x W^T` for an `nn.Linear` weight `[out, in]`.
    fn linear(&self, x: &Array2<f32>, name: &str) -> Result<Array2<f32>> {
        Ok(x.dot(&self.matrix(&format!("{name}.weight"))?.t()))
    }

    /// RoPE's angle of each position for each pair of dimensions, `[seq, head_dim / 2]`.
    fn angles(&self, seq: usize) -> Array2<f32> {
        let inv_freq = inverse_frequencies(&self.shape);
        Array2::from_shape_fn((seq, inv_freq.len()), |(t, i)| t as f32 * inv_freq[i])
    }

    fn attention(
        &self,
        x: &Array2<f32>,
        prefix: &str,
        angles: &Array2<f32>,
    ) -> Result<Array2<f32>> {
        let shape = &self.shape;
        let d = shape.head_dim;
        let q = self.linear(x, &format!("{prefix}.q_proj"))?;
        let k = self.linear(x, &format!("{prefix}.k_proj"))?;
        let v = self.linear(x, &format!("{prefix}.v_proj"))?;
        let prepare = |m: &Array2<f32>, head: usize, norm: &str| -> Result<Array2<f32>> {
            let mut h = m.slice(s![.., head * d..(head + 1) * d]).to_owned();
            if shape.qk_norm {
                h = self.rms_norm(&h, &format!("{prefix}.{norm}.weight"))?;
            }
            Ok(rotate(&h, angles))
        };
        let group = shape.n_heads / shape.n_kv_heads;
        let seq = x.nrows();
        let mut context = Array2::<f32>::zeros((seq, shape.n_heads * d));
        for head in 0..shape.n_heads {
            let kv_head = head / group;
            let qh = prepare(&q, head, "q_norm")?;
            let kh = prepare(&k, kv_head, "k_norm")?;
            let vh = v.slice(s![.., kv_head * d..(kv_head + 1) * d]);
            let mut scores = qh.dot(&kh.t()) / (d as f32).sqrt();
            for i in 0..seq {
                scores.slice_mut(s![i, i + 1..]).fill(f32::NEG_INFINITY);
            }
            softmax_rows(&mut scores);
            context.slice_mut(s![.., head * d..(head + 1) * d]).assign(&scores.dot(&vh));
        }
        self.linear(&context, &format!("{prefix}.o_proj"))
    }

    /// `down(silu(gate x) * up x)`.
    fn mlp(&self, x: &Array2<f32>, prefix: &str) -> Result<Array2<f32>> {
        let gate = self.linear(x, &format!("{prefix}.gate_proj"))?.mapv(|g| g / (1.0 + (-g).exp()));
        let up = self.linear(x, &format!("{prefix}.up_proj"))?;
        self.linear(&(gate * up), &format!("{prefix}.down_proj"))
    }
}

/// transformers' default and `llama3` RoPE inits, in float32 as it computes them.
fn inverse_frequencies(shape: &Shape) -> Array1<f32> {
    let d = shape.head_dim;
    let base = shape.rope_base as f32;
    let plain = Array1::from_shape_fn(d / 2, |i| 1.0 / base.powf((2 * i) as f32 / d as f32));
    let Some(scaling) = &shape.rope_freq else { return plain };
    let factor = scaling.factor as f32;
    let (low, high) = (scaling.low_freq_factor as f32, scaling.high_freq_factor as f32);
    let old_context = scaling.original_context_length as f32;
    plain.mapv(|f| {
        let wavelength = 2.0 * std::f32::consts::PI / f;
        let smooth = (old_context / wavelength - low) / (high - low);
        if wavelength < old_context / high {
            f
        } else if wavelength > old_context / low {
            f / factor
        } else {
            (1.0 - smooth) * f / factor + smooth * f
        }
    })
}

/// `x cos + rotate_half(x) sin` for the rows of one head `[seq, d]`.
fn rotate(x: &Array2<f32>, angles: &Array2<f32>) -> Array2<f32> {
    let half = x.ncols() / 2;
    let mut y = x.clone();
    for (t, mut row) in y.axis_iter_mut(Axis(0)).enumerate() {
        for i in 0..half {
            let (cos, sin) = (angles[[t, i]].cos(), angles[[t, i]].sin());
            let (a, b) = (x[[t, i]], x[[t, i + half]]);
            row[i] = a * cos - b * sin;
            row[i + half] = b * cos + a * sin;
        }
    }
    y
}

fn softmax_rows(x: &mut Array2<f32>) {
    for mut row in x.axis_iter_mut(Axis(0)) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum: f32 = row.sum();
        row /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_turns_pairs_of_dimensions_by_their_angle() {
        // One position, angles (pi/2, 0): the first pair (x0, x2) turns a quarter, (x1, x3) not.
        let x = ndarray::arr2(&[[1.0, 2.0, 3.0, 4.0]]);
        let angles = ndarray::arr2(&[[std::f32::consts::FRAC_PI_2, 0.0]]);
        let y = rotate(&x, &angles);
        let expected = [-3.0, 2.0, 1.0, 4.0];
        for (got, want) in y.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{y:?}");
        }
    }
}
