//! The test oracle: GPT-2's forward pass in plain ndarray, read straight off the numerics
//! contract and written without the graph builder. It only shares the weights' names.
//! Llama and Qwen3 have theirs in [`llama`].

pub mod llama;

use ndarray::{s, Array2, Array3, ArrayView1, ArrayView2, Axis};

use gptc_graph::config::LAYER_NORM_EPS;
use gptc_graph::{names, GptConfig, TensorMap};

use gptc::{Error, Result};

pub struct Reference<'w> {
    config: GptConfig,
    weights: &'w TensorMap,
}

impl<'w> Reference<'w> {
    pub fn new(config: &GptConfig, weights: &'w TensorMap) -> Reference<'w> {
        Reference { config: config.clone(), weights }
    }

    fn matrix(&self, name: &str) -> Result<ArrayView2<'w, f32>> {
        matrix(self.weights, name)
    }

    fn vector(&self, name: &str) -> Result<ArrayView1<'w, f32>> {
        vector(self.weights, name)
    }

    /// Logits `[batch, seq, vocab]` for every position of every row.
    pub fn logits(&self, input_ids: &Array2<i64>) -> Result<Array3<f32>> {
        let (batch, seq) = input_ids.dim();
        let mut out = Array3::zeros((batch, seq, self.config.vocab_size));
        for (b, ids) in input_ids.outer_iter().enumerate() {
            let hidden = self.hidden_states(ids.as_slice().expect("rows are contiguous"))?;
            out.slice_mut(s![b, .., ..]).assign(&hidden.dot(&self.output_head()?.t()));
        }
        Ok(out)
    }

    /// `lm_head.weight`, or the token embedding when the weights are tied (GPT-2's layout).
    fn output_head(&self) -> Result<ArrayView2<'w, f32>> {
        match self.weights.0.contains_key(names::OUTPUT_HEAD) {
            true => self.matrix(names::OUTPUT_HEAD),
            false => self.matrix(names::TOKEN_EMBEDDING),
        }
    }

    /// The final-LayerNorm output `[seq, emb]` of one sequence.
    fn hidden_states(&self, ids: &[i64]) -> Result<Array2<f32>> {
        let cfg = &self.config;
        if ids.len() > cfg.context_length {
            return Err(Error::Usage("sequence longer than the context".into()));
        }
        let wte = self.matrix(names::TOKEN_EMBEDDING)?;
        let wpe = self.matrix(names::POSITION_EMBEDDING)?;
        let mut x = Array2::<f32>::zeros((ids.len(), cfg.emb_dim));
        for (t, &id) in ids.iter().enumerate() {
            if id < 0 || id as usize >= cfg.vocab_size {
                return Err(Error::Usage(format!("token id {id} outside the vocabulary")));
            }
            x.row_mut(t).assign(&(&wte.row(id as usize) + &wpe.row(t)));
        }
        for i in 0..cfg.n_layers {
            let p = format!("h.{i}");
            let h = self.layer_norm(&x, &format!("{p}.ln_1"))?;
            x = x + self.attention(&h, &format!("{p}.attn"))?;
            let h = self.layer_norm(&x, &format!("{p}.ln_2"))?;
            x = x + self.feed_forward(&h, &format!("{p}.mlp"))?;
        }
        self.layer_norm(&x, "ln_f")
    }

    fn layer_norm(&self, x: &Array2<f32>, prefix: &str) -> Result<Array2<f32>> {
        let scale = self.vector(&format!("{prefix}.weight"))?;
        let shift = self.vector(&format!("{prefix}.bias"))?;
        let mut y = x.clone();
        for mut row in y.outer_iter_mut() {
            let n = row.len() as f32;
            let mean = row.sum() / n;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
            let inv_std = 1.0 / (var + LAYER_NORM_EPS).sqrt();
            for ((v, g), b) in row.iter_mut().zip(scale).zip(shift) {
                *v = (*v - mean) * inv_std * g + b;
            }
        }
        Ok(y)
    }

    fn linear(&self, x: &Array2<f32>, prefix: &str, bias: bool) -> Result<Array2<f32>> {
        let y = x.dot(&self.matrix(&format!("{prefix}.weight"))?);
        Ok(if bias { y + self.vector(&format!("{prefix}.bias"))? } else { y })
    }

    fn attention(&self, x: &Array2<f32>, prefix: &str) -> Result<Array2<f32>> {
        let cfg = &self.config;
        let q = self.linear(x, &format!("{prefix}.q_proj"), cfg.qkv_bias)?;
        let k = self.linear(x, &format!("{prefix}.k_proj"), cfg.qkv_bias)?;
        let v = self.linear(x, &format!("{prefix}.v_proj"), cfg.qkv_bias)?;
        let (seq, d) = (x.nrows(), cfg.head_dim());
        let mut context = Array2::<f32>::zeros((seq, cfg.emb_dim));
        for head in 0..cfg.n_heads {
            let cols = s![.., head * d..(head + 1) * d];
            let mut scores = q.slice(cols).dot(&k.slice(cols).t()) / (d as f32).sqrt();
            for i in 0..seq {
                scores.slice_mut(s![i, i + 1..]).fill(f32::NEG_INFINITY);
            }
            softmax_rows(&mut scores);
            context.slice_mut(cols).assign(&scores.dot(&v.slice(cols)));
        }
        self.linear(&context, &format!("{prefix}.c_proj"), true)
    }

    fn feed_forward(&self, x: &Array2<f32>, prefix: &str) -> Result<Array2<f32>> {
        let h = self.linear(x, &format!("{prefix}.c_fc"), true)?.mapv(gelu_tanh);
        self.linear(&h, &format!("{prefix}.c_proj"), true)
    }
}

fn softmax_rows(x: &mut Array2<f32>) {
    for mut row in x.axis_iter_mut(Axis(0)) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum: f32 = row.sum();
        row /= sum;
    }
}

/// The weight `name` as a matrix (the one shape check both references make).
fn matrix<'w>(weights: &'w TensorMap, name: &str) -> Result<ArrayView2<'w, f32>> {
    let t = weights.get(name)?;
    let [rows, cols] = t.shape[..] else {
        return Err(Error::Usage(format!("{name}: expected a matrix, got {:?}", t.shape)));
    };
    Ok(ArrayView2::from_shape((rows, cols), &t.data).expect("shape matches data"))
}

fn vector<'w>(weights: &'w TensorMap, name: &str) -> Result<ArrayView1<'w, f32>> {
    Ok(ArrayView1::from(&weights.get(name)?.data[..]))
}

fn gelu_tanh(x: f32) -> f32 {
    let c = (2.0 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_known_values() {
        assert_eq!(gelu_tanh(0.0), 0.0);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh(-1.0) + 0.158_808).abs() < 1e-5);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_ignore_masked() {
        let mut x = ndarray::arr2(&[[1.0, 2.0, f32::NEG_INFINITY], [0.0, 0.0, 0.0]]);
        softmax_rows(&mut x);
        assert!((x[[0, 0]] + x[[0, 1]] - 1.0).abs() < 1e-6 && x[[0, 2]] == 0.0);
        assert!((x[[1, 2]] - 1.0 / 3.0).abs() < 1e-6);
    }
}
