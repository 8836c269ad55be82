//! The one decoder: GPT-2 (chapter 4 of *Build a Large Language Model (From Scratch)*), Llama 3.2
//! and Qwen3 (its bonus material) as ONNX graphs, from the options their configs set
//! ([`Architecture`]).
//!
//! ```text
//! x = tok_emb[input_ids] (+ pos_emb[positions], GPT-2)
//! for each block:  x = x + attn(norm_1(x));  x = x + ffn(norm_2(x))
//! logits = final_norm(x) @ head^T
//! ```
//!
//! With the KV cache, each block's attention also takes the past keys and values and returns
//! them with this step's appended (`present`), in the layout of HF optimum's decoder exports.

use crate::architecture::{Architecture, Positions};
use crate::builder::{Attr, GraphBuilder, Precision, Quantization, Scope, Value};
use crate::config::{Family, ModelConfig};
use crate::layers::{self, AttentionInputs, KeyValue, Rotary, INIT_STD};
use crate::names::{self, meta, KvPart};
use crate::onnx::{DataType, Dim, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use crate::weights::{Init, WeightSource};
use crate::Result;

/// LayerNormalization entered the default domain in opset 17; every other op is older.
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;

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
    /// The output head is the token embedding, as in GPT-2: no `lm_head.weight`. (Llama and
    /// Qwen3 configs say whether their head is tied; this ties an untied one.)
    pub tie_weights: bool,
    /// The type of weights, activations and the KV cache. Logits are float32 either way.
    pub precision: Precision,
    /// How the projections and the output head store their weights (embeddings, norms and
    /// biases stay in the float type).
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
    config: impl Into<ModelConfig>,
    options: GraphOptions,
) -> (Vec<TensorSignature>, Vec<TensorSignature>) {
    let arch = config.into().architecture();
    let t = |name: String, dtype, dims: Vec<Dim>| TensorSignature { name, dtype, dims };
    let ids = || vec![BATCH.into(), SEQUENCE.into()];
    let float = options.precision.data_type();
    let positions = if options.last_token_logits { Dim::Fixed(1) } else { SEQUENCE.into() };
    let mut inputs = vec![t(names::INPUT_IDS.into(), DataType::Int64, ids())];
    let mut outputs = vec![t(
        names::LOGITS.into(),
        DataType::Float,
        vec![BATCH.into(), positions, arch.vocab_size.into()],
    )];
    if options.kv_cache {
        let mask_dims = vec![BATCH.into(), TOTAL.into()];
        inputs.push(t(names::ATTENTION_MASK.into(), DataType::Int64, mask_dims));
        inputs.push(t(names::POSITION_IDS.into(), DataType::Int64, ids()));
        for i in 0..arch.n_layers {
            for part in KvPart::BOTH {
                inputs.push(t(names::past(i, part), float, cache_dims(&arch, PAST)));
            }
            for part in KvPart::BOTH {
                outputs.push(t(names::present(i, part), float, cache_dims(&arch, TOTAL)));
            }
        }
    }
    (inputs, outputs)
}

/// `[batch_size, n_kv_heads, length, head_dim]`: the cache holds the key/value heads only.
fn cache_dims(arch: &Architecture, length: &str) -> Vec<Dim> {
    vec![BATCH.into(), arch.n_kv_heads.into(), length.into(), arch.head_dim.into()]
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
    config: impl Into<ModelConfig>,
    mut options: GraphOptions,
    weights: &mut dyn WeightSource,
    init_seed: Option<u64>,
) -> Result<ModelProto> {
    let mut config = config.into();
    config.validate()?;
    // One statement of tying for what follows and for readers of the file: the graph option
    // and, for the families whose config says it, the stored config agree.
    if options.tie_weights {
        config.set_head_tied(true);
    }
    options.tie_weights |= config.head_tied();
    let arch = config.architecture();
    let float = options.precision.data_type();
    if options.quantization != Quantization::None && options.precision != Precision::F32 {
        return Err(crate::Error::Config(
            "4-bit weights are built from float32: combine them with float32, not float16".into(),
        ));
    }
    let mut graph = GraphBuilder::new(weights, options.precision, options.quantization);
    let inputs = declare_inputs(&mut graph, &config, options);
    let (logits, present) = decoder(&mut graph.root(), &inputs, &arch, options)?;

    let positions = if options.last_token_logits { Dim::Fixed(1) } else { SEQUENCE.into() };
    let logits_dims = [BATCH.into(), positions, arch.vocab_size.into()];
    graph.output(logits, names::LOGITS, DataType::Float, &logits_dims);
    let cache_dims = cache_dims(&arch, TOTAL);
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
    let kept_float = match arch.family {
        Family::Gpt2 => "embeddings and LayerNorm and biases float32",
        Family::Llama | Family::Qwen3 => "embeddings and RMSNorm float32",
    };
    match options.quantization {
        Quantization::None => metadata.push((meta::QUANTIZATION, "none".into())),
        Quantization::Int4 { accuracy_level } => metadata.extend([
            (meta::QUANTIZATION, "int4".to_string()),
            (
                meta::QUANTIZATION_SCHEME,
                format!(
                    "com.microsoft.MatMulNBits bits 4 block_size {}: round-to-nearest, symmetric (zero point 8), blocks along the input dimension, float16-exact float32 scales; every projection and the output head, {kept_float}",
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
        graph: Some(graph.finish(arch.family.model_type())),
        metadata_props: metadata
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key: key.into(), value })
            .collect(),
        ..Default::default()
    })
}

fn declare_inputs(graph: &mut GraphBuilder, config: &ModelConfig, options: GraphOptions) -> Inputs {
    let mut declared =
        io_signature(config, options).0.into_iter().map(|t| graph.input(&t.name, t.dtype, &t.dims));
    let mut next = || declared.next().expect("io_signature lists every input");
    let input_ids = next();
    if !options.kv_cache {
        return Inputs { input_ids, cache: None };
    }
    let attention_mask = next();
    let position_ids = next();
    let layers = config.architecture().n_layers;
    let past = (0..layers).map(|_| KeyValue { key: next(), value: next() }).collect();
    Inputs { input_ids, cache: Some(CacheInputs { attention_mask, position_ids, past }) }
}

/// Embeddings, the blocks, the final norm and the head: nanoGPT's `GPT.forward`, the book's
/// `Llama3Model.forward`.
fn decoder(
    s: &mut Scope,
    inputs: &Inputs,
    arch: &Architecture,
    options: GraphOptions,
) -> Result<(Value, Vec<KeyValue>)> {
    let names = &arch.names;
    let (vocab, e) = (arch.vocab_size, arch.emb_dim);
    let table_shape = [vocab, e];
    let init = Init::Normal { std: INIT_STD };
    // A tied table under 4-bit weights is stored once, in 4 bits, for both the lookup and the
    // head (as onnxruntime-genai's builder does): otherwise its float copy is most of the file.
    let tied_int4 = match options.tie_weights {
        true => s.tied_int4_table(names.token_embedding, table_shape, init)?,
        false => None,
    };
    let wte = match tied_int4 {
        Some(table) => Embedding::Int4(table),
        None => Embedding::Float(s.param(names.token_embedding, &table_shape, init)?),
    };
    let learned_positions = match names.position_embedding {
        Some(name) if arch.positions == Positions::Learned => {
            let shape = [arch.context_length, e];
            Some(s.param(name, &shape, Init::Normal { std: INIT_STD })?)
        }
        _ => None,
    };

    let (positions, keep) = match &inputs.cache {
        None => {
            let zero = s.scalar_i64(0);
            let seq_len = s.dim(inputs.input_ids, 1);
            let positions = s.range(zero, seq_len);
            (positions, causal_mask(s, inputs.input_ids))
        }
        Some(cache) => (cache.position_ids, cached_attention_mask(s, inputs.input_ids, cache)),
    };

    // Masked scores get f32::MIN added, once computed for all layers: a broadcast Add per layer
    // is far cheaper than a Where over every head's scores (12.7% of tract's 1024-token prefill).
    let zero = s.scalar_f32(0.0);
    let masked = s.scalar_f32(f32::MIN);
    let mut bias = s.where_(keep, zero, masked);
    if arch.group_size() > 1 {
        // Scores of grouped heads are `[B, kv, group, T, S]`.
        bias = s.unsqueeze(bias, &[1]);
    }
    let rotary = match &arch.positions {
        Positions::Rope { inverse_frequencies } => {
            Some(Rotary::new(s, positions, inverse_frequencies))
        }
        Positions::Learned => None,
    };
    let shared = AttentionInputs { bias, rotary };

    let mut x = match wte {
        Embedding::Int4((table, _)) => s.lookup_int4(&table, inputs.input_ids),
        Embedding::Float(wte) => s.gather(wte, inputs.input_ids),
    };
    if let Some(wpe) = learned_positions {
        let places = s.gather(wpe, positions);
        x = s.add(x, places);
    }
    let mut present = Vec::new();
    for i in 0..arch.n_layers {
        let past = inputs.cache.as_ref().map(|c| c.past[i]);
        let (y, kv) = transformer_block(&mut s.pp(names.block(i)), x, &shared, past, arch)?;
        x = y;
        present.extend(kv);
    }
    if options.last_token_logits {
        // The norm and the head act per position: drop the others first.
        x = s.slice(x, &[-1], &[i64::MAX], &[1]);
    }
    let x = layers::norm(&mut s.pp(names.final_norm), x, e, arch.norm)?;
    // The head is `[vocab, emb]`, as the token embedding it may be tied to.
    let logits = match (options.tie_weights, wte) {
        (_, Embedding::Int4((table, accuracy_level))) => {
            s.head_by_int4_table(x, &table, accuracy_level)
        }
        (true, Embedding::Float(wte)) => s.matmul_by_table(x, wte, names.output_head)?,
        (false, _) => s.matmul_param(x, names.output_head, e, vocab, init, true)?,
    };
    Ok((s.to_f32(logits), present))
}

/// How the token embedding is stored: in the graph's float type, or (tied under 4-bit weights)
/// as the head's 4-bit table with its accuracy level.
#[derive(Clone, Copy)]
enum Embedding {
    Float(Value),
    Int4((crate::builder::Int4Table, u8)),
}

/// `keep[i, j]`: without a cache, query `i` may attend to key `j <= i` (`ids` the graph's input
/// ids, `[batch, T]`); `[batch, 1, T, T]`, the rank of the scores. Computed, never stored: the
/// `[context, context]` table gptc stored before would be 17 GB at Llama 3.2's 131,072
/// positions.
fn causal_mask(s: &mut Scope, ids: Value) -> Value {
    let (slots, _) = slot_numbers(s, ids);
    let key_slots = s.unsqueeze(slots, &[1]);
    let query_slots = s.unsqueeze(slots, &[2]);
    let keep = s.op("LessOrEqual", &[key_slots, query_slots], vec![]);
    s.unsqueeze(keep, &[1])
}

/// `1, 2, ..., n` along each row of `x` (`[batch, n]`, int64), and `n`, `[batch, 1]`. Numbered
/// from the values of an input (ones made of them), not from its shape: tract 0.23 reasons
/// symbolically about a mask compared from `Range`s of the shapes and gets its dims wrong (the
/// plain graph's came out `[2, 1]` whatever the length; tests/tract_matches_reference.rs fails
/// so), and refuses to type a `Trilu` whose offset comes from the shapes.
fn slot_numbers(s: &mut Scope, x: Value) -> (Value, Value) {
    let zero = s.scalar_i64(0);
    let one = s.scalar_i64(1);
    let zeros = s.mul(x, zero);
    let ones = s.add(zeros, one);
    let numbers = s.op("CumSum", &[ones, one], vec![]);
    let axis = s.const_i64(&[1]);
    let count = s.op("ReduceSum", &[ones, axis], vec![("keepdims", Attr::Int(1))]);
    (numbers, count)
}

/// With a cache the queries are the last `T` of `past + T` slots (query `i` sees key slots
/// `j <= past + i`), and padded slots (0 in `attention_mask`) are hidden from every query:
/// `[batch, 1, T, past + T]`. The past length comes from the mask, not from the past tensors,
/// so those feed nothing but their concat (the form tract's KV-cache rewrite looks for).
fn cached_attention_mask(s: &mut Scope, input_ids: Value, cache: &CacheInputs) -> Value {
    let (key_slots, total) = slot_numbers(s, cache.attention_mask);
    let (new_slots, new) = slot_numbers(s, input_ids);
    let past = s.sub(total, new);
    let query_slots = s.add(new_slots, past);
    let key_slots = s.unsqueeze(key_slots, &[1]);
    let query_slots = s.unsqueeze(query_slots, &[2]);
    let causal = s.op("LessOrEqual", &[key_slots, query_slots], vec![]);
    let not_padding = s.cast(cache.attention_mask, DataType::Bool);
    let not_padding = s.unsqueeze(not_padding, &[1]);
    let keep = s.and(causal, not_padding);
    s.unsqueeze(keep, &[1])
}

/// `x = x + attn(norm_1(x)); x = x + ffn(norm_2(x))`: nanoGPT's `Block`, the book's
/// `TransformerBlock` for Llama and Qwen3 alike.
fn transformer_block(
    s: &mut Scope,
    x: Value,
    shared: &AttentionInputs,
    past: Option<KeyValue>,
    arch: &Architecture,
) -> Result<(Value, Option<KeyValue>)> {
    let names = &arch.names;
    let e = arch.emb_dim;
    let h = layers::norm(&mut s.pp(names.attention_norm), x, e, arch.norm)?;
    let (a, present) = layers::attention(&mut s.pp(names.attention), h, shared, past, arch)?;
    let x = s.add(x, a);
    let h = layers::norm(&mut s.pp(names.feed_forward_norm), x, e, arch.norm)?;
    let m = layers::feed_forward(&mut s.pp(names.feed_forward), h, arch)?;
    Ok((s.add(x, m), present))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{GptConfig, WeightDtype};
    use crate::llama::{LlamaConfig, RopeFrequencyScaling};
    use crate::onnx::TensorProto;
    use crate::qwen3::Qwen3Config;
    use crate::weights::RandomInit;

    fn tiny_llama(n_kv_groups: usize, tied: bool) -> ModelConfig {
        ModelConfig::Llama(LlamaConfig {
            vocab_size: 96,
            context_length: 32,
            emb_dim: 64,
            n_heads: 4,
            n_layers: 2,
            hidden_dim: 96,
            n_kv_groups,
            rope_base: 10_000.0,
            dtype: WeightDtype::Float32,
            rope_freq: Some(RopeFrequencyScaling {
                factor: 4.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context_length: 16,
            }),
            tie_word_embeddings: tied,
            rms_norm_eps: 1e-5,
        })
    }

    fn tiny_qwen3(tied: bool) -> ModelConfig {
        ModelConfig::Qwen3(Qwen3Config {
            vocab_size: 96,
            context_length: 32,
            emb_dim: 64,
            n_heads: 4,
            n_layers: 2,
            hidden_dim: 96,
            head_dim: 32,
            qk_norm: true,
            n_kv_groups: 2,
            rope_base: 1_000_000.0,
            dtype: WeightDtype::BFloat16,
            tie_word_embeddings: tied,
            rms_norm_eps: 1e-6,
        })
    }

    fn build(config: &ModelConfig, options: GraphOptions) -> ModelProto {
        build_model(config, options, &mut RandomInit { seed: 1 }, Some(1)).unwrap()
    }

    /// The weights (not the builder's shape and scalar constants) by name.
    fn weights(model: &ModelProto) -> BTreeMap<String, &TensorProto> {
        let graph = model.graph.as_ref().unwrap();
        graph
            .initializer
            .iter()
            .filter(|t| !t.name.starts_with("const."))
            .map(|t| (t.name.clone(), t))
            .collect()
    }

    fn values(t: &TensorProto) -> usize {
        t.dims.iter().product::<i64>() as usize
    }

    const CACHE: GraphOptions = GraphOptions {
        kv_cache: true,
        last_token_logits: false,
        tie_weights: false,
        precision: Precision::F32,
        quantization: Quantization::None,
    };

    #[test]
    fn llama_weights_have_hf_names_and_layout() {
        let model = build(&tiny_llama(2, false), CACHE);
        let weights = weights(&model);
        let mut expected = BTreeMap::from([
            ("model.embed_tokens.weight".to_string(), vec![96, 64]),
            ("model.norm.weight".into(), vec![64]),
            ("lm_head.weight".into(), vec![96, 64]),
        ]);
        for i in 0..2 {
            let p = format!("model.layers.{i}");
            for (name, dims) in [
                ("input_layernorm.weight", vec![64]),
                ("self_attn.q_proj.weight", vec![64, 64]),
                ("self_attn.k_proj.weight", vec![32, 64]),
                ("self_attn.v_proj.weight", vec![32, 64]),
                ("self_attn.o_proj.weight", vec![64, 64]),
                ("post_attention_layernorm.weight", vec![64]),
                ("mlp.gate_proj.weight", vec![96, 64]),
                ("mlp.up_proj.weight", vec![96, 64]),
                ("mlp.down_proj.weight", vec![64, 96]),
            ] {
                expected.insert(format!("{p}.{name}"), dims);
            }
        }
        let found: BTreeMap<String, Vec<i64>> =
            weights.iter().map(|(n, t)| (n.clone(), t.dims.clone())).collect();
        assert_eq!(found, expected);
        let graph = model.graph.as_ref().unwrap();
        assert_eq!(graph.name, "llama");
    }

    #[test]
    fn qwen3_has_head_dim_of_its_own_and_qk_norms() {
        let model = build(&tiny_qwen3(true), CACHE);
        let weights = weights(&model);
        let dims = |name: &str| weights[name].dims.clone();
        assert_eq!(dims("model.layers.1.self_attn.q_proj.weight"), [128, 64]);
        assert_eq!(dims("model.layers.1.self_attn.k_proj.weight"), [64, 64]);
        assert_eq!(dims("model.layers.1.self_attn.o_proj.weight"), [64, 128]);
        assert_eq!(dims("model.layers.0.self_attn.q_norm.weight"), [32]);
        assert_eq!(dims("model.layers.0.self_attn.k_norm.weight"), [32]);
        assert!(!weights.contains_key("lm_head.weight"), "tied: the head is the embedding");
        assert!(weights.keys().all(|n| !n.ends_with(".bias")), "no biases");
    }

    /// The cache holds the key/value heads only: `[batch, n_kv_heads, length, head_dim]`.
    #[test]
    fn the_cache_holds_kv_heads_only() {
        for (config, heads, head_dim) in [(tiny_llama(2, true), 2, 16), (tiny_qwen3(true), 2, 32)] {
            let (inputs, outputs) = io_signature(&config, CACHE);
            let model = build(&config, CACHE);
            let graph = model.graph.as_ref().unwrap();
            let past = inputs.iter().find(|t| t.name == "past_key_values.1.value").unwrap();
            assert_eq!(past.dims[1..], [heads.into(), PAST.into(), head_dim.into()]);
            let present = outputs.iter().find(|t| t.name == "present.0.key").unwrap();
            assert_eq!(present.dims[1..], [heads.into(), TOTAL.into(), head_dim.into()]);
            let declared: Vec<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
            let listed: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(declared, listed);
        }
    }

    /// What the graph stores is what the parameter count says, tied or not, in every family.
    #[test]
    fn stored_weights_are_the_parameter_count() {
        let gpt2 = ModelConfig::Gpt2(GptConfig {
            vocab_size: 96,
            context_length: 32,
            emb_dim: 64,
            n_heads: 4,
            n_layers: 2,
            drop_rate: 0.0,
            qkv_bias: true,
        });
        for config in
            [gpt2, tiny_llama(2, false), tiny_llama(4, true), tiny_qwen3(false), tiny_qwen3(true)]
        {
            for tie_weights in [false, true] {
                let model = build(&config, GraphOptions { tie_weights, ..CACHE });
                let stored: usize = weights(&model).values().map(|t| values(t)).sum();
                let count = config.parameter_count();
                let tied = tie_weights || config.head_tied();
                let expected = if tied { count.total_tied() } else { count.total() };
                assert_eq!(stored, expected, "{config:?} tie_weights {tie_weights}");
            }
        }
    }

    /// Tying an untied config through the graph option is recorded in the stored config too.
    #[test]
    fn the_stored_config_says_how_the_head_is_tied() {
        let model = build(&tiny_llama(2, false), GraphOptions { tie_weights: true, ..CACHE });
        let meta = |key: &str| {
            model.metadata_props.iter().find(|p| p.key == key).map(|p| p.value.clone()).unwrap()
        };
        assert_eq!(meta(meta::TIE_WEIGHTS), "true");
        let stored = ModelConfig::from_json(&meta(meta::CONFIG)).unwrap();
        assert_eq!(stored, tiny_llama(2, true));
    }

    /// No tensor grows with the context: Llama 3.2's 131,072 positions cost nothing in the file.
    #[test]
    fn no_table_grows_with_the_context() {
        let ModelConfig::Llama(mut long) = tiny_llama(2, true) else { unreachable!() };
        long.context_length = 131_072;
        for options in [CACHE, GraphOptions::default()] {
            let model = build(&ModelConfig::Llama(long.clone()), options);
            let graph = model.graph.as_ref().unwrap();
            let largest = graph.initializer.iter().map(values).max().unwrap();
            assert_eq!(largest, 96 * 64, "the embedding is the largest tensor");
        }
        let gpt2 = GptConfig { context_length: 4096, ..GptConfig::preset("gpt2-small").unwrap() };
        let gpt2 = GptConfig { emb_dim: 64, n_heads: 4, n_layers: 1, vocab_size: 8, ..gpt2 };
        let model = build(&ModelConfig::Gpt2(gpt2), CACHE);
        let graph = model.graph.as_ref().unwrap();
        assert!(graph.initializer.iter().all(|t| t.name != names::CAUSAL_MASK));
        assert_eq!(graph.initializer.iter().map(values).max().unwrap(), 4096 * 64, "wpe");
    }

    /// Every projection of the new families (gate, up and down included) and the head are
    /// 4-bit; norms and the embedding stay float32.
    #[test]
    fn int4_quantizes_every_projection() {
        let int4 = GraphOptions { quantization: Quantization::Int4 { accuracy_level: 4 }, ..CACHE };
        for config in [tiny_llama(2, false), tiny_qwen3(true)] {
            let model = build(&config, int4);
            let graph = model.graph.as_ref().unwrap();
            let quantized: Vec<&str> = graph
                .node
                .iter()
                .filter(|n| n.op_type == "MatMulNBits")
                .map(|n| n.input[1].as_str())
                .collect();
            assert_eq!(quantized.len(), 2 * 7 + 1, "{quantized:?}");
            for projection in ["q", "k", "v", "o", "gate", "up", "down"] {
                assert!(quantized.iter().any(|n| n.contains(&format!("{projection}_proj"))));
            }
            let head = match config.head_tied() {
                true => format!("{}_q4", config.architecture().names.token_embedding),
                false => "lm_head.weight_q4".to_string(),
            };
            assert!(quantized.contains(&head.as_str()), "{head}: {quantized:?}");
            assert!(graph
                .node
                .iter()
                .all(|n| n.op_type != "MatMul" || !n.input[1].ends_with("weight")));
        }
    }

    /// Tied under 4-bit weights, the token table is stored once, in 4 bits: the head's
    /// `MatMulNBits` blocks and scales, which the lookup (`GatherBlockQuantized`) reads too; no
    /// float copy and no second 4-bit one.
    #[test]
    fn a_tied_int4_table_is_stored_once_for_the_lookup_and_the_head() {
        let int4 = GraphOptions { quantization: Quantization::Int4 { accuracy_level: 4 }, ..CACHE };
        let gpt2 = GptConfig {
            emb_dim: 64,
            n_heads: 4,
            n_layers: 1,
            vocab_size: 96,
            ..GptConfig::preset("gpt2-small").unwrap()
        };
        for config in [
            ModelConfig::Gpt2(GptConfig { context_length: 32, ..gpt2 }),
            tiny_llama(2, true),
            tiny_qwen3(true),
        ] {
            let model = build(&config, GraphOptions { tie_weights: true, ..int4 });
            let graph = model.graph.as_ref().unwrap();
            let table = config.architecture().names.token_embedding;
            let stored: Vec<&str> = graph
                .initializer
                .iter()
                .map(|t| t.name.as_str())
                .filter(|n| n.starts_with(table) || n.starts_with("lm_head"))
                .collect();
            assert_eq!(stored, [format!("{table}_q4"), format!("{table}_scales")], "{config:?}");
            let readers = |op: &str| {
                let nodes = graph.node.iter().filter(|n| n.op_type == op);
                nodes.filter(|n| n.input.first().map(String::as_str) == Some(stored[0])).count()
            };
            let head = graph.node.iter().filter(|n| n.op_type == "MatMulNBits");
            let head = head.filter(|n| n.input.get(1).map(String::as_str) == Some(stored[0]));
            assert_eq!((readers("GatherBlockQuantized"), head.count()), (1, 1), "{config:?}");
        }
    }

    /// In float16, weights are half and norms (kept float32, as LayerNorm is) compute in float32.
    #[test]
    fn float16_keeps_norm_scales_in_float32() {
        let model = build(&tiny_qwen3(false), GraphOptions { precision: Precision::F16, ..CACHE });
        for (name, t) in weights(&model) {
            let expected = if name.contains("norm") { DataType::Float } else { DataType::Float16 };
            assert_eq!(t.data_type, expected as i32, "{name}");
        }
    }

    /// Untrained: matrices and embeddings N(0, 0.02), norm scales ones.
    #[test]
    fn random_init_is_normal_for_matrices_and_ones_for_norms() {
        let model = build(&tiny_llama(2, false), CACHE);
        for (name, t) in weights(&model) {
            let n = t.float_data.len() as f32;
            let mean = t.float_data.iter().sum::<f32>() / n;
            let std = (t.float_data.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
            if name.contains("norm") {
                assert!(t.float_data.iter().all(|&x| x == 1.0), "{name}");
            } else {
                assert!((std - 0.02).abs() < 0.003 && mean.abs() < 0.002, "{name}: {mean} {std}");
            }
        }
    }
}
