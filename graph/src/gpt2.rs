//! GPT-2 (chapter 4 of *Build a Large Language Model (From Scratch)*) as an ONNX graph.
//!
//! ```text
//! x = wte[input_ids] + wpe[positions]
//! for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
//! logits = ln_f(x) @ lm_head^T
//! ```
//!
//! With the KV cache, each block's attention also takes the past keys and values and returns
//! them with this step's appended (`present`), in the layout of HF optimum's GPT-2 exports.

use crate::builder::{GraphBuilder, Precision, Quantization, Scope, Value};
use crate::config::{GptConfig, LAYER_NORM_EPS};
use crate::names::{self, meta, KvPart};
use crate::onnx::{DataType, Dim, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use crate::weights::{Init, WeightSource};
use crate::Result;

/// LayerNormalization entered the default domain in opset 17; every other op is older.
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;
/// GPT-2's init: N(0, 0.02) for weights and embeddings.
const INIT_STD: f32 = 0.02;

/// The named dims of the graph's inputs and outputs.
pub const BATCH: &str = "batch_size";
pub const SEQUENCE: &str = "sequence_length";
pub const PAST: &str = "past_sequence_length";
pub const TOTAL: &str = "past_sequence_length + sequence_length";

/// What the graph computes besides the plain forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphOptions {
    /// Past keys and values in, present ones out, with `attention_mask` and `position_ids`:
    /// one graph for the prompt (past length 0) and for every next token.
    pub kv_cache: bool,
    /// Logits for the last position only: `[batch_size, 1, vocab_size]`.
    pub last_token_logits: bool,
    /// The output head is the token embedding (`wte`), as in GPT-2: no `lm_head.weight`.
    pub tie_weights: bool,
    /// The type of weights, activations and the KV cache. Logits are float32 either way.
    pub precision: Precision,
    /// How the projections and the output head store their weights (embeddings, LayerNorm
    /// and biases stay in the float type).
    pub quantization: Quantization,
}

/// A graph input or output: name, element type, dims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSignature {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<Dim>,
}

/// The inputs and outputs of the graph gptc builds for `config` and `options`, in order:
/// the contract `gptc check` holds a file to.
pub fn io_signature(
    cfg: &GptConfig,
    options: GraphOptions,
) -> (Vec<TensorSignature>, Vec<TensorSignature>) {
    let t = |name: String, dtype, dims: Vec<Dim>| TensorSignature { name, dtype, dims };
    let ids = || vec![BATCH.into(), SEQUENCE.into()];
    let cache =
        |length: &str| vec![BATCH.into(), cfg.n_heads.into(), length.into(), cfg.head_dim().into()];
    let float = options.precision.data_type();
    let positions = if options.last_token_logits { Dim::Fixed(1) } else { SEQUENCE.into() };
    let mut inputs = vec![t(names::INPUT_IDS.into(), DataType::Int64, ids())];
    let mut outputs = vec![t(
        names::LOGITS.into(),
        DataType::Float,
        vec![BATCH.into(), positions, cfg.vocab_size.into()],
    )];
    if options.kv_cache {
        let mask_dims = vec![BATCH.into(), TOTAL.into()];
        inputs.push(t(names::ATTENTION_MASK.into(), DataType::Int64, mask_dims));
        inputs.push(t(names::POSITION_IDS.into(), DataType::Int64, ids()));
        for i in 0..cfg.n_layers {
            for part in KvPart::BOTH {
                inputs.push(t(names::past(i, part), float, cache(PAST)));
            }
            for part in KvPart::BOTH {
                outputs.push(t(names::present(i, part), float, cache(TOTAL)));
            }
        }
    }
    (inputs, outputs)
}

/// One layer's keys or values: `[batch_size, n_heads, length, head_dim]` each.
#[derive(Clone, Copy, Debug)]
struct KeyValue {
    key: Value,
    value: Value,
}

/// The graph inputs the blocks read.
struct Inputs {
    input_ids: Value,
    cache: Option<CacheInputs>,
}

struct CacheInputs {
    attention_mask: Value,
    position_ids: Value,
    past: Vec<KeyValue>,
}

/// Builds the whole model; `init_seed` is recorded in the metadata when the weights are random.
pub fn build_model(
    config: &GptConfig,
    options: GraphOptions,
    weights: &mut dyn WeightSource,
    init_seed: Option<u64>,
) -> Result<ModelProto> {
    config.validate()?;
    let float = options.precision.data_type();
    if options.quantization != Quantization::None && options.precision != Precision::F32 {
        return Err(crate::Error::Config(
            "4-bit weights are built from float32: combine them with float32, not float16".into(),
        ));
    }
    let mut graph = GraphBuilder::new(weights, options.precision, options.quantization);
    let inputs = declare_inputs(&mut graph, config, options);
    let (logits, present) = gpt2(&mut graph.root(), &inputs, config, options)?;

    let positions = if options.last_token_logits { Dim::Fixed(1) } else { SEQUENCE.into() };
    let logits_dims = [BATCH.into(), positions, config.vocab_size.into()];
    graph.output(logits, names::LOGITS, DataType::Float, &logits_dims);
    let cache_dims = [BATCH.into(), config.n_heads.into(), TOTAL.into(), config.head_dim().into()];
    for (i, kv) in present.iter().enumerate() {
        graph.output(kv.key, &names::present(i, KvPart::Key), float, &cache_dims);
        graph.output(kv.value, &names::present(i, KvPart::Value), float, &cache_dims);
    }

    let mut metadata = vec![
        (meta::VERSION, env!("CARGO_PKG_VERSION").to_string()),
        (meta::CONFIG, config.to_json()),
        (meta::KV_CACHE, options.kv_cache.to_string()),
        (meta::LAST_TOKEN_LOGITS, options.last_token_logits.to_string()),
        (meta::TIE_WEIGHTS, options.tie_weights.to_string()),
        (meta::DTYPE, float.onnx_name().to_string()),
    ];
    if let Some(seed) = init_seed {
        metadata.push((meta::INIT_SEED, seed.to_string()));
    }
    match options.quantization {
        Quantization::None => metadata.push((meta::QUANTIZATION, "none".into())),
        Quantization::Int4 { accuracy_level } => metadata.extend([
            (meta::QUANTIZATION, "int4".to_string()),
            (
                meta::QUANTIZATION_SCHEME,
                format!(
                    "com.microsoft.MatMulNBits bits 4 block_size {}: round-to-nearest, symmetric (zero point 8), blocks along the input dimension, float16-exact float32 scales; every projection and the output head, embeddings and LayerNorm and biases float32",
                    crate::quant::BLOCK
                ),
            ),
            (meta::QUANTIZATION_ACCURACY_LEVEL, accuracy_level.to_string()),
        ]),
    }
    let mut opset_import = vec![OperatorSetIdProto { domain: String::new(), version: OPSET }];
    opset_import.extend(
        graph.domains().map(|domain| OperatorSetIdProto { domain: domain.into(), version: 1 }),
    );
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import,
        producer_name: "gptc".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph.finish("gpt2")),
        metadata_props: metadata
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key: key.into(), value })
            .collect(),
        ..Default::default()
    })
}

fn declare_inputs(graph: &mut GraphBuilder, cfg: &GptConfig, options: GraphOptions) -> Inputs {
    let mut declared =
        io_signature(cfg, options).0.into_iter().map(|t| graph.input(&t.name, t.dtype, &t.dims));
    let mut next = || declared.next().expect("io_signature lists every input");
    let input_ids = next();
    if !options.kv_cache {
        return Inputs { input_ids, cache: None };
    }
    let attention_mask = next();
    let position_ids = next();
    let past = (0..cfg.n_layers).map(|_| KeyValue { key: next(), value: next() }).collect();
    Inputs { input_ids, cache: Some(CacheInputs { attention_mask, position_ids, past }) }
}

fn gpt2(
    s: &mut Scope,
    inputs: &Inputs,
    cfg: &GptConfig,
    options: GraphOptions,
) -> Result<(Value, Vec<KeyValue>)> {
    let (vocab, ctx, e) = (cfg.vocab_size, cfg.context_length, cfg.emb_dim);
    let wte = s.param(names::TOKEN_EMBEDDING, &[vocab, e], Init::Normal { std: INIT_STD })?;
    let wpe = s.param(names::POSITION_EMBEDDING, &[ctx, e], Init::Normal { std: INIT_STD })?;

    let (positions, keep) = match &inputs.cache {
        None => {
            let zero = s.scalar_i64(0);
            let seq_len = s.dim(inputs.input_ids, 1);
            let positions = s.range(zero, seq_len);
            (positions, causal_mask(s, ctx, positions, positions))
        }
        Some(cache) => (cache.position_ids, cached_attention_mask(s, ctx, inputs.input_ids, cache)),
    };

    // Masked scores get f32::MIN added, once computed for all layers: a broadcast Add per layer
    // is far cheaper than a Where over every head's scores (12.7% of tract's 1024-token prefill).
    let zero = s.scalar_f32(0.0);
    let masked = s.scalar_f32(f32::MIN);
    let attention_bias = s.where_(keep, zero, masked);

    let tokens = s.gather(wte, inputs.input_ids);
    let places = s.gather(wpe, positions);
    let mut x = s.add(tokens, places);
    let mut present = Vec::new();
    for i in 0..cfg.n_layers {
        let past = inputs.cache.as_ref().map(|c| c.past[i]);
        let (y, kv) = transformer_block(&mut s.pp(format!("h.{i}")), x, attention_bias, past, cfg)?;
        x = y;
        present.extend(kv);
    }
    if options.last_token_logits {
        // LayerNorm and the head act per position: drop the others first.
        x = s.slice(x, &[-1], &[i64::MAX], &[1]);
    }
    let x = layer_norm(&mut s.pp("ln_f"), x, e)?;
    // The head is `[vocab, emb]`, as the token embedding it may be tied to.
    let logits = if options.tie_weights {
        s.matmul_by_table(x, wte, names::OUTPUT_HEAD)?
    } else {
        let init = Init::Normal { std: INIT_STD };
        s.matmul_param(x, names::OUTPUT_HEAD, e, vocab, init, true)?
    };
    Ok((s.to_f32(logits), present))
}

/// `keep[i, j]`: query position `i` may attend to key position `j <= i`. Rows and columns are
/// gathered from GPT-2's lower-triangular `[context, context]` table (its `attn.bias` buffer)
/// rather than computed from positions: tract 0.23's optimizer reasons symbolically about a
/// mask computed from `Range`s and mis-slices the attention matmuls (see BENCHMARKS.md).
/// Shape `[1, 1, T_query, T_key]`, the rank of the scores.
fn causal_mask(s: &mut Scope, context: usize, query_slots: Value, key_slots: Value) -> Value {
    let table: Vec<bool> = (0..context).flat_map(|i| (0..context).map(move |j| j <= i)).collect();
    let table = s.const_bool(names::CAUSAL_MASK, &[1, 1, context, context], &table);
    let rows = s.gather_axis(table, query_slots, 2);
    s.gather_axis(rows, key_slots, 3)
}

/// With a cache the queries are the last `T` of `past + T` slots, and padded slots (0 in
/// `attention_mask`) are hidden from every query: `[batch, 1, T, past + T]`.
/// The past length comes from the mask, not from the past tensors, so those feed nothing but
/// their concat (the form tract's KV-cache rewrite looks for).
fn cached_attention_mask(
    s: &mut Scope,
    context: usize,
    input_ids: Value,
    cache: &CacheInputs,
) -> Value {
    let total = s.dim(cache.attention_mask, 1);
    let new = s.dim(input_ids, 1);
    let past = s.sub(total, new);
    let zero = s.scalar_i64(0);
    let query_slots = s.range(past, total);
    let key_slots = s.range(zero, total);
    let causal = causal_mask(s, context, query_slots, key_slots);
    let not_padding = s.cast(cache.attention_mask, DataType::Bool);
    let not_padding = s.unsqueeze(not_padding, &[1, 2]);
    s.and(causal, not_padding)
}

fn transformer_block(
    s: &mut Scope,
    x: Value,
    attention_bias: Value,
    past: Option<KeyValue>,
    cfg: &GptConfig,
) -> Result<(Value, Option<KeyValue>)> {
    let h = layer_norm(&mut s.pp("ln_1"), x, cfg.emb_dim)?;
    let (a, present) = causal_self_attention(&mut s.pp("attn"), h, attention_bias, past, cfg)?;
    let x = s.add(x, a);
    let h = layer_norm(&mut s.pp("ln_2"), x, cfg.emb_dim)?;
    let m = feed_forward(&mut s.pp("mlp"), h, cfg)?;
    Ok((s.add(x, m), present))
}

fn layer_norm(s: &mut Scope, x: Value, dim: usize) -> Result<Value> {
    let scale = s.param_f32("weight", &[dim], Init::Ones)?;
    let shift = s.param_f32("bias", &[dim], Init::Zeros)?;
    let x = s.to_f32(x);
    let y = s.layer_normalization(x, scale, shift, LAYER_NORM_EPS);
    Ok(s.from_f32(y))
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
    let y = s.matmul_param(x, "weight", d_in, d_out, Init::Normal { std }, false)?;
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

/// `[B, T, E] -> [B, H, T, Dh]`
fn split_heads(s: &mut Scope, x: Value, cfg: &GptConfig) -> Value {
    let x = s.reshape(x, &[0, 0, cfg.n_heads as i64, cfg.head_dim() as i64]);
    s.transpose(x, &[0, 2, 1, 3])
}

/// `[B, H, T, Dh] -> [B, T, E]`
fn merge_heads(s: &mut Scope, x: Value, cfg: &GptConfig) -> Value {
    let x = s.transpose(x, &[0, 2, 1, 3]);
    s.reshape(x, &[0, 0, cfg.emb_dim as i64])
}

/// softmax(q k^T / sqrt(d_head), masked) v, per head, then the output projection.
/// With a cache, keys and values are the past ones followed by this step's: those are `present`.
fn causal_self_attention(
    s: &mut Scope,
    x: Value,
    attention_bias: Value,
    past: Option<KeyValue>,
    cfg: &GptConfig,
) -> Result<(Value, Option<KeyValue>)> {
    let e = cfg.emb_dim;
    let q = linear(&mut s.pp("q_proj"), x, e, e, cfg.qkv_bias, INIT_STD)?;
    let k = linear(&mut s.pp("k_proj"), x, e, e, cfg.qkv_bias, INIT_STD)?;
    let v = linear(&mut s.pp("v_proj"), x, e, e, cfg.qkv_bias, INIT_STD)?;
    let q = split_heads(s, q, cfg);
    let mut kv = KeyValue { key: split_heads(s, k, cfg), value: split_heads(s, v, cfg) };
    let present = past.map(|past| {
        kv = KeyValue {
            key: s.concat(&[past.key, kv.key], 2),
            value: s.concat(&[past.value, kv.value], 2),
        };
        kv
    });

    let k_t = s.transpose(kv.key, &[0, 1, 3, 2]);
    let scores = s.matmul(q, k_t);
    let scores = s.to_f32(scores);
    let scale = s.scalar_f32(1.0 / (cfg.head_dim() as f32).sqrt());
    let scores = s.mul(scores, scale);
    let scores = s.add(scores, attention_bias);
    let attention = s.softmax_last_axis(scores);
    let attention = s.from_f32(attention);
    let context = s.matmul(attention, kv.value);
    let context = merge_heads(s, context, cfg);
    let out = linear(&mut s.pp("c_proj"), context, e, e, true, residual_std(cfg))?;
    Ok((out, present))
}

/// `emb -> 4 emb -> GELU(tanh) -> emb`.
fn feed_forward(s: &mut Scope, x: Value, cfg: &GptConfig) -> Result<Value> {
    let (e, hidden) = (cfg.emb_dim, cfg.ffn_dim());
    let h = linear(&mut s.pp("c_fc"), x, e, hidden, true, INIT_STD)?;
    let h = gelu_tanh(s, h);
    linear(&mut s.pp("c_proj"), h, hidden, e, true, residual_std(cfg))
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
