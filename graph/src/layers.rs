//! The decoder's layers as small builder functions, each reading the options it needs from the
//! [`Architecture`], as candle's models share theirs: norms, projections, rotary positions,
//! attention with grouped key/value heads, and the two feed-forwards.
//!
//! Weights are named under the caller's scope as the family's checkpoints name them; untrained,
//! matrices and embeddings start from N(0, 0.02) (GPT-2 scales the projections into the residual
//! stream down by `1/sqrt(2 n_layers)`), norm scales from ones and biases from zeros.

use crate::architecture::{Architecture, FeedForward, Norm, WeightLayout};
use crate::builder::{Attr, Scope, Value};
use crate::weights::Init;
use crate::Result;

/// The init of matrices and embeddings.
pub(crate) const INIT_STD: f32 = 0.02;

/// One layer's keys or values: `[batch_size, n_kv_heads, length, head_dim]` each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyValue {
    pub key: Value,
    pub value: Value,
}

/// What every layer's attention shares, computed once: the additive mask (0 or `f32::MIN`,
/// `[batch or 1, 1, queries, keys]`, with an axis for the group when heads are grouped) and,
/// with RoPE, the rotation of each position.
pub(crate) struct AttentionInputs {
    pub bias: Value,
    pub rotary: Option<Rotary>,
}

/// `cos` and `sin` of each position's angles, `[batch or 1, T, 1, head_dim]` in the graph's
/// float type, both halves of the head alike (the half-split "rotate_half" layout).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rotary {
    cos: Value,
    sin: Value,
}

/// The norm the architecture uses, over the last axis of `x`, computed in float32 whatever the
/// graph's type (a mean of squares overflows half precision long before the values do).
pub(crate) fn norm(s: &mut Scope, x: Value, dim: usize, kind: Norm) -> Result<Value> {
    match kind {
        Norm::LayerNorm { eps } => layer_norm(s, x, dim, eps),
        Norm::RmsNorm { eps } => rms_norm(s, x, dim, eps),
    }
}

fn layer_norm(s: &mut Scope, x: Value, dim: usize, eps: f32) -> Result<Value> {
    let scale = s.param_f32("weight", &[dim], Init::Ones)?;
    let shift = s.param_f32("bias", &[dim], Init::Zeros)?;
    let x = s.to_f32(x);
    let y = s.layer_normalization(x, scale, shift, eps);
    Ok(s.from_f32(y))
}

/// `x / sqrt(mean(x^2) + eps) * weight`, in the primitives ONNX Runtime fuses into its
/// SimplifiedLayerNormalization (`Pow` of 2 is a square for tract too); RMSNormalization
/// itself needs opset 23.
fn rms_norm(s: &mut Scope, x: Value, dim: usize, eps: f32) -> Result<Value> {
    let scale = s.param_f32("weight", &[dim], Init::Ones)?;
    let x = s.to_f32(x);
    let two = s.scalar_f32(2.0);
    let squares = s.op("Pow", &[x, two], vec![]);
    let mean_square = s.op(
        "ReduceMean",
        &[squares],
        vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))],
    );
    let eps = s.scalar_f32(eps);
    let variance = s.add(mean_square, eps);
    let root = s.op("Sqrt", &[variance], vec![]);
    let normalized = s.op("Div", &[x, root], vec![]);
    let y = s.mul(normalized, scale);
    Ok(s.from_f32(y))
}

/// `x W (+ b)` for the projection named by the scope, `W` stored as the family's checkpoints
/// store it.
pub(crate) fn linear(
    s: &mut Scope,
    x: Value,
    [d_in, d_out]: [usize; 2],
    arch: &Architecture,
    bias: bool,
    std: f32,
) -> Result<Value> {
    let rows_are_outputs = arch.layout == WeightLayout::OutputsByInputs;
    let init = Init::Normal { std };
    let y = s.matmul_param(x, "weight", d_in, d_out, init, rows_are_outputs)?;
    if !bias {
        return Ok(y);
    }
    let b = s.param("bias", &[d_out], Init::Zeros)?;
    Ok(s.add(y, b))
}

/// The init of projections into the residual stream.
fn residual_std(arch: &Architecture) -> f32 {
    match arch.scaled_residual_init {
        true => INIT_STD / (2.0 * arch.n_layers as f32).sqrt(),
        false => INIT_STD,
    }
}

impl Rotary {
    /// The rotation of `positions` (int64, `[T]` or `[batch, T]`), one angle per pair of
    /// dimensions: `positions * inverse_frequencies`, computed in float32 (as transformers does)
    /// and given to the heads in the graph's type.
    pub(crate) fn new(s: &mut Scope, positions: Value, inverse_frequencies: &[f32]) -> Rotary {
        let positions = s.cast(positions, crate::onnx::DataType::Float);
        let positions = s.unsqueeze(positions, &[-1]);
        let frequencies = s.const_f32(inverse_frequencies);
        let half = s.mul(positions, frequencies);
        let angles = s.concat(&[half, half], -1);
        // `[.., T, head_dim] -> [.., T, 1, head_dim]`: one rotation for every head.
        let angles = s.unsqueeze(angles, &[-2]);
        let cos = s.op("Cos", &[angles], vec![]);
        let sin = s.op("Sin", &[angles], vec![]);
        Rotary { cos: s.from_f32(cos), sin: s.from_f32(sin) }
    }

    /// `x cos + rotate_half(x) sin` for heads `x` `[B, T, n, head_dim]`, where
    /// `rotate_half([x1, x2]) = [-x2, x1]` over the halves of the head.
    fn rotate(&self, s: &mut Scope, x: Value, head_dim: usize) -> Value {
        let half = (head_dim / 2) as i64;
        let first = s.slice(x, &[0], &[half], &[3]);
        let second = s.slice(x, &[half], &[head_dim as i64], &[3]);
        let negated = s.op("Neg", &[second], vec![]);
        let rotated = s.concat(&[negated, first], 3);
        let x_cos = s.mul(x, self.cos);
        let rotated_sin = s.mul(rotated, self.sin);
        s.add(x_cos, rotated_sin)
    }
}

/// `[B, T, n Dh] -> [B, T, n, Dh]`, then (Qwen3) each head's RMSNorm and (RoPE) its rotation:
/// the heads of one projection, before they are laid out for the matmuls.
fn heads(
    s: &mut Scope,
    x: Value,
    n: usize,
    norm_name: Option<&str>,
    rotary: Option<&Rotary>,
    arch: &Architecture,
) -> Result<Value> {
    let x = s.reshape(x, &[0, 0, n as i64, arch.head_dim as i64]);
    let x = match norm_name {
        Some(name) => norm(&mut s.pp(name), x, arch.head_dim, arch.norm)?,
        None => x,
    };
    Ok(match rotary {
        Some(rotary) => rotary.rotate(s, x, arch.head_dim),
        None => x,
    })
}

/// softmax(q k^T / sqrt(head_dim) + mask) v, per head, then the output projection. With a
/// cache, keys and values are the past ones followed by this step's: those are `present`.
///
/// Grouped heads (`n_kv_heads < n_heads`) are never repeated: queries are laid out
/// `[B, kv, group, T, Dh]` and each key/value head `[B, kv, 1, S, Dh]` is broadcast over its
/// group by the matmuls.
pub(crate) fn attention(
    s: &mut Scope,
    x: Value,
    shared: &AttentionInputs,
    past: Option<KeyValue>,
    arch: &Architecture,
) -> Result<(Value, Option<KeyValue>)> {
    let names = &arch.names;
    let (e, dh) = (arch.emb_dim, arch.head_dim);
    let (q_dim, kv_dim) = (arch.n_heads * dh, arch.n_kv_heads * dh);
    let (kv, group) = (arch.n_kv_heads as i64, arch.group_size() as i64);
    let q = linear(&mut s.pp(names.query), x, [e, q_dim], arch, arch.qkv_bias, INIT_STD)?;
    let k = linear(&mut s.pp(names.key), x, [e, kv_dim], arch, arch.qkv_bias, INIT_STD)?;
    let v = linear(&mut s.pp(names.value), x, [e, kv_dim], arch, arch.qkv_bias, INIT_STD)?;
    let (q_norm, k_norm) = match arch.qk_norm {
        true => (Some(names.query_norm), Some(names.key_norm)),
        false => (None, None),
    };
    let rotary = shared.rotary.as_ref();
    let q = heads(s, q, arch.n_heads, q_norm, rotary, arch)?;
    let q = match group {
        1 => s.transpose(q, &[0, 2, 1, 3]),
        _ => {
            let q = s.reshape(q, &[0, 0, kv, group, dh as i64]);
            s.transpose(q, &[0, 2, 3, 1, 4])
        }
    };
    let k = heads(s, k, arch.n_kv_heads, k_norm, rotary, arch)?;
    let k = s.transpose(k, &[0, 2, 1, 3]);
    let v = heads(s, v, arch.n_kv_heads, None, None, arch)?;
    let mut kv_heads = KeyValue { key: k, value: s.transpose(v, &[0, 2, 1, 3]) };
    let present = past.map(|past| {
        kv_heads = KeyValue {
            key: s.concat(&[past.key, kv_heads.key], 2),
            value: s.concat(&[past.value, kv_heads.value], 2),
        };
        kv_heads
    });

    let (key, value) = match group {
        1 => (kv_heads.key, kv_heads.value),
        _ => (s.unsqueeze(kv_heads.key, &[2]), s.unsqueeze(kv_heads.value, &[2])),
    };
    let k_t = match group {
        1 => s.transpose(key, &[0, 1, 3, 2]),
        _ => s.transpose(key, &[0, 1, 2, 4, 3]),
    };
    let scores = s.matmul(q, k_t);
    let scores = s.to_f32(scores);
    let scale = s.scalar_f32(1.0 / (dh as f32).sqrt());
    let scores = s.mul(scores, scale);
    let scores = s.add(scores, shared.bias);
    let weights = s.softmax_last_axis(scores);
    let weights = s.from_f32(weights);
    let context = s.matmul(weights, value);
    // Heads merged back: `[B, T, n_heads Dh]`.
    let context = match group {
        1 => s.transpose(context, &[0, 2, 1, 3]),
        _ => s.transpose(context, &[0, 3, 1, 2, 4]),
    };
    let context = s.reshape(context, &[0, 0, q_dim as i64]);
    let output = &mut s.pp(names.attention_output);
    let out = linear(output, context, [q_dim, e], arch, arch.projection_bias, residual_std(arch))?;
    Ok((out, present))
}

/// GPT-2's `emb -> 4 emb -> GELU(tanh) -> emb`, or Llama's `down(silu(gate x) * up x)`.
pub(crate) fn feed_forward(s: &mut Scope, x: Value, arch: &Architecture) -> Result<Value> {
    let names = &arch.names;
    let e = arch.emb_dim;
    let bias = arch.projection_bias;
    let (hidden, widened) = match arch.feed_forward {
        FeedForward::GeluTanh { hidden } => {
            let h = linear(&mut s.pp(names.up), x, [e, hidden], arch, bias, INIT_STD)?;
            (hidden, gelu_tanh(s, h))
        }
        FeedForward::SwiGlu { hidden } => {
            let gate = linear(&mut s.pp(names.gate), x, [e, hidden], arch, bias, INIT_STD)?;
            let up = linear(&mut s.pp(names.up), x, [e, hidden], arch, bias, INIT_STD)?;
            let gate = silu(s, gate);
            (hidden, s.mul(gate, up))
        }
    };
    linear(&mut s.pp(names.down), widened, [hidden, e], arch, bias, residual_std(arch))
}

/// `x sigmoid(x)`.
fn silu(s: &mut Scope, x: Value) -> Value {
    let gate = s.op("Sigmoid", &[x], vec![]);
    s.mul(x, gate)
}

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, written as
/// `(0.5 x) (1 + tanh((sqrt(2/pi) x) (1 + (0.044715 x) x)))`: the form ONNX Runtime's FastGelu
/// fusion matches without a `Pow`. tract 0.23.9 fuses no form: it rewrites `Pow(x, 3)` into an
/// element-wise `powf` before its GELU detector can see it, and that `powf` alone took 23% of a
/// 1024-token prefill (BENCHMARKS.md). Gelu itself needs opset 20. In float16, the products overflow
/// only for |x| > 120, where tanh is saturated and the result stays exact (`x` or 0), no NaN.
fn gelu_tanh(s: &mut Scope, x: Value) -> Value {
    let cubic_coef = s.scalar(0.044715);
    let sqrt_2_over_pi = s.scalar((2.0 / std::f32::consts::PI).sqrt());
    let one = s.scalar(1.0);
    let half = s.scalar(0.5);

    let scaled = s.mul(cubic_coef, x);
    let square_term = s.mul(scaled, x);
    let factor = s.add(square_term, one);
    let x_scaled = s.mul(x, sqrt_2_over_pi);
    let inner = s.mul(factor, x_scaled);
    let t = s.tanh(inner);
    let t = s.add(t, one);
    let half_x = s.mul(x, half);
    s.mul(t, half_x)
}
