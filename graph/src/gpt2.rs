//! GPT-2 (chapter 4 of *Build a Large Language Model (From Scratch)*) as an ONNX graph.
//!
//! ```text
//! x = wte[input_ids] + wpe[positions]
//! for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
//! logits = ln_f(x) @ lm_head^T
//! ```

use crate::builder::{GraphBuilder, Scope, Value};
use crate::config::{GptConfig, LAYER_NORM_EPS};
use crate::onnx::{DataType, Dim, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use crate::weights::{Init, WeightSource};
use crate::Result;

/// LayerNormalization entered the default domain in opset 17; every other op is older.
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;
/// GPT-2's init: N(0, 0.02) for weights and embeddings.
const INIT_STD: f32 = 0.02;

/// Builds the whole model; `init_seed` is recorded in the metadata when the weights are random.
pub fn build_model(
    config: &GptConfig,
    weights: &mut dyn WeightSource,
    init_seed: Option<u64>,
) -> Result<ModelProto> {
    config.validate()?;
    let mut graph = GraphBuilder::new(weights);
    let input_ids = graph.input(
        "input_ids",
        DataType::Int64,
        &["batch_size".into(), "sequence_length".into()],
    );
    let logits = gpt2(&mut graph.root(), input_ids, config)?;
    let logits_dims = [
        "batch_size".into(),
        "sequence_length".into(),
        Dim::from(config.vocab_size),
    ];
    graph.output(logits, "logits", DataType::Float, &logits_dims);

    let mut metadata = vec![
        ("gptc.version", env!("CARGO_PKG_VERSION").to_string()),
        ("gptc.config", config.to_json()),
    ];
    if let Some(seed) = init_seed {
        metadata.push(("gptc.init_seed", seed.to_string()));
    }
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "gptc".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph.finish("gpt2")),
        metadata_props: metadata
            .into_iter()
            .map(|(key, value)| StringStringEntryProto {
                key: key.into(),
                value,
            })
            .collect(),
        ..Default::default()
    })
}

fn gpt2(s: &mut Scope, input_ids: Value, cfg: &GptConfig) -> Result<Value> {
    let (vocab, ctx, e) = (cfg.vocab_size, cfg.context_length, cfg.emb_dim);
    let wte = s.param("wte.weight", &[vocab, e], Init::Normal { std: INIT_STD })?;
    let wpe = s.param("wpe.weight", &[ctx, e], Init::Normal { std: INIT_STD })?;

    let zero = s.scalar_i64(0);
    let seq_len = s.dim(input_ids, 1);
    let positions = s.range(zero, seq_len);
    let keep = causal_mask(s, ctx, positions, positions);

    let tokens = s.gather(wte, input_ids);
    let places = s.gather(wpe, positions);
    let mut x = s.add(tokens, places);
    for i in 0..cfg.n_layers {
        x = transformer_block(&mut s.pp(format!("h.{i}")), x, keep, cfg)?;
    }
    let x = layer_norm(&mut s.pp("ln_f"), x, e)?;
    let head = s.param(
        "lm_head.weight",
        &[vocab, e],
        Init::Normal { std: INIT_STD },
    )?;
    let head_t = s.transpose(head, &[1, 0]);
    Ok(s.matmul(x, head_t))
}

/// `keep[i, j]`: query position `i` may attend to key position `j <= i`. Rows and columns are
/// gathered from GPT-2's lower-triangular `[context, context]` table (its `attn.bias` buffer)
/// rather than computed from positions: tract 0.23's optimizer reasons symbolically about a
/// mask computed from `Range`s and mis-slices the attention matmuls (see BENCHMARKS.md).
/// Shape `[1, 1, T_query, T_key]`, the rank of the scores.
fn causal_mask(
    s: &mut Scope,
    context: usize,
    query_positions: Value,
    key_positions: Value,
) -> Value {
    let table: Vec<bool> = (0..context)
        .flat_map(|i| (0..context).map(move |j| j <= i))
        .collect();
    let table = s.const_bool("causal_mask", &[1, 1, context, context], &table);
    let rows = s.gather_axis(table, query_positions, 2);
    s.gather_axis(rows, key_positions, 3)
}

fn transformer_block(s: &mut Scope, x: Value, keep: Value, cfg: &GptConfig) -> Result<Value> {
    let h = layer_norm(&mut s.pp("ln_1"), x, cfg.emb_dim)?;
    let a = causal_self_attention(&mut s.pp("attn"), h, keep, cfg)?;
    let x = s.add(x, a);
    let h = layer_norm(&mut s.pp("ln_2"), x, cfg.emb_dim)?;
    let m = feed_forward(&mut s.pp("mlp"), h, cfg)?;
    Ok(s.add(x, m))
}

fn layer_norm(s: &mut Scope, x: Value, dim: usize) -> Result<Value> {
    let scale = s.param("weight", &[dim], Init::Ones)?;
    let shift = s.param("bias", &[dim], Init::Zeros)?;
    Ok(s.layer_normalization(x, scale, shift, LAYER_NORM_EPS))
}

/// `x @ W (+ b)` with `W` stored `[in, out]`, as GPT-2's Conv1D keeps it.
fn linear(
    s: &mut Scope,
    x: Value,
    d_in: usize,
    d_out: usize,
    bias: bool,
    std: f32,
) -> Result<Value> {
    let w = s.param("weight", &[d_in, d_out], Init::Normal { std })?;
    let y = s.matmul(x, w);
    if !bias {
        return Ok(y);
    }
    let b = s.param("bias", &[d_out], Init::Zeros)?;
    Ok(s.add(y, b))
}

/// GPT-2 scales the init of projections into the residual stream by 1/sqrt(2 * n_layers).
fn residual_std(cfg: &GptConfig) -> f32 {
    INIT_STD / (2.0 * cfg.n_layers as f32).sqrt()
}

/// softmax(q k^T / sqrt(d_head), causal) v, per head, then the output projection.
fn causal_self_attention(s: &mut Scope, x: Value, keep: Value, cfg: &GptConfig) -> Result<Value> {
    let (e, heads, d_head) = (cfg.emb_dim, cfg.n_heads as i64, cfg.head_dim() as i64);
    let q = linear(&mut s.pp("q_proj"), x, e, e, cfg.qkv_bias, INIT_STD)?;
    let k = linear(&mut s.pp("k_proj"), x, e, e, cfg.qkv_bias, INIT_STD)?;
    let v = linear(&mut s.pp("v_proj"), x, e, e, cfg.qkv_bias, INIT_STD)?;

    // [B, T, E] -> [B, T, H, Dh] -> [B, H, T, Dh]; keys go straight to [B, H, Dh, T].
    let q = s.reshape(q, &[0, 0, heads, d_head]);
    let q = s.transpose(q, &[0, 2, 1, 3]);
    let k = s.reshape(k, &[0, 0, heads, d_head]);
    let k_t = s.transpose(k, &[0, 2, 3, 1]);
    let v = s.reshape(v, &[0, 0, heads, d_head]);
    let v = s.transpose(v, &[0, 2, 1, 3]);

    let scores = s.matmul(q, k_t);
    let scale = s.scalar_f32(1.0 / (d_head as f32).sqrt());
    let scores = s.mul(scores, scale);
    let masked = s.scalar_f32(f32::MIN);
    let scores = s.where_(keep, scores, masked);
    let attention = s.softmax_last_axis(scores);
    let context = s.matmul(attention, v);

    // [B, H, T, Dh] -> [B, T, H, Dh] -> [B, T, E]
    let context = s.transpose(context, &[0, 2, 1, 3]);
    let context = s.reshape(context, &[0, 0, e as i64]);
    linear(&mut s.pp("c_proj"), context, e, e, true, residual_std(cfg))
}

/// `emb -> 4 emb -> GELU(tanh) -> emb`.
fn feed_forward(s: &mut Scope, x: Value, cfg: &GptConfig) -> Result<Value> {
    let (e, hidden) = (cfg.emb_dim, cfg.ffn_dim());
    let h = linear(&mut s.pp("c_fc"), x, e, hidden, true, INIT_STD)?;
    let h = gelu_tanh(s, h);
    linear(&mut s.pp("c_proj"), h, hidden, e, true, residual_std(cfg))
}

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, written in the exact form that tract's
/// declutter and ONNX Runtime's FastGelu fusion both recognize (Gelu itself needs opset 20).
fn gelu_tanh(s: &mut Scope, x: Value) -> Value {
    let three = s.scalar_f32(3.0);
    let cubic_coef = s.scalar_f32(0.044715);
    let sqrt_2_over_pi = s.scalar_f32((2.0 / std::f32::consts::PI).sqrt());
    let one = s.scalar_f32(1.0);
    let half = s.scalar_f32(0.5);

    let cube = s.pow(x, three);
    let cube = s.mul(cube, cubic_coef);
    let inner = s.add(x, cube);
    let inner = s.mul(inner, sqrt_2_over_pi);
    let t = s.tanh(inner);
    let t = s.add(t, one);
    let half_x = s.mul(x, half);
    s.mul(half_x, t)
}
