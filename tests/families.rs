//! Llama and Qwen3 graphs with random weights: tract (and ONNX Runtime) agree with the
//! independent ndarray forward (`common::reference::llama`), without and with the KV cache (every
//! decode step has a past), with grouped and ungrouped key/value heads, tied and untied heads,
//! left-padded batches, float16 and 4-bit weights.

mod common;

use common::reference::llama::Reference;
use common::{greedy_with_logits, relative_error, token_ids, NoisyInit};
use gptc::runtime::ort::{Device, OrtRuntime};
use gptc::runtime::tract::TractRuntime;
use gptc::runtime::{Runtime, Step};
use gptc::sampling::argmax;
use gptc_graph::llama::RopeFrequencyScaling;
use gptc_graph::{
    build_model, file, GraphOptions, LlamaConfig, ModelConfig, Precision, Quantization,
    Qwen3Config, RandomInit, Recording, TensorMap, WeightDtype,
};
use ndarray::{s, Array1, Array2, Array3};

const TOLERANCE: f32 = 1e-4;
const CONTEXT: usize = 64;

const PLAIN: GraphOptions = GraphOptions {
    kv_cache: false,
    last_token_logits: false,
    tie_weights: false,
    precision: Precision::F32,
    quantization: Quantization::None,
};
const CACHE: GraphOptions = GraphOptions { kv_cache: true, ..PLAIN };
const CACHE_LAST: GraphOptions = GraphOptions { last_token_logits: true, ..CACHE };

/// Llama 3 with its frequency scaling from 16 positions (head_dim 16: all three bands).
fn llama(n_kv_groups: usize, tied: bool) -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        vocab_size: 96,
        context_length: CONTEXT,
        emb_dim: 64,
        n_heads: 4,
        n_layers: 2,
        hidden_dim: 96,
        n_kv_groups,
        rope_base: 10_000.0,
        dtype: WeightDtype::BFloat16,
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

/// Qwen3 with a head_dim (32) that is not emb_dim / n_heads (16).
fn qwen3(n_kv_groups: usize, tied: bool) -> ModelConfig {
    ModelConfig::Qwen3(Qwen3Config {
        vocab_size: 96,
        context_length: CONTEXT,
        emb_dim: 64,
        n_heads: 4,
        n_layers: 2,
        hidden_dim: 96,
        head_dim: 32,
        qk_norm: true,
        n_kv_groups,
        rope_base: 1_000_000.0,
        dtype: WeightDtype::BFloat16,
        tie_word_embeddings: tied,
        rms_norm_eps: 1e-6,
    })
}

/// Grouped (2 and 1 kv heads for 4) and ungrouped heads, tied and untied.
fn configs() -> Vec<ModelConfig> {
    vec![llama(2, false), llama(4, true), qwen3(2, true), qwen3(1, false)]
}

/// The encoded model and every weight it was built with.
fn compile(config: &ModelConfig, options: GraphOptions, seed: u64) -> (Vec<u8>, TensorMap) {
    let mut init = NoisyInit(RandomInit { seed });
    let mut recording = Recording { source: &mut init, seen: TensorMap::default() };
    let model = build_model(config, options, &mut recording, Some(seed)).unwrap();
    (file::encode(&model), recording.seen)
}

fn name(config: &ModelConfig) -> String {
    let arch = config.architecture();
    format!("{} kv {} tied {}", config.family().model_type(), arch.n_kv_heads, config.head_tied())
}

fn as_3d(v: &Array1<f32>) -> Array3<f32> {
    v.clone().into_shape_with_order((1, 1, v.len())).unwrap()
}

/// The book's `generate_text_simple` on the reference forward, keeping each step's logits.
fn reference_greedy(
    reference: &Reference,
    prompt: &[i64],
    new: usize,
) -> (Vec<i64>, Vec<Array1<f32>>) {
    let mut ids = prompt.to_vec();
    let mut seen = Vec::new();
    for _ in 0..new {
        let input = Array2::from_shape_vec((1, ids.len()), ids.clone()).unwrap();
        let logits = reference.logits(&input).unwrap();
        let last = logits.slice(s![0, -1, ..]).to_owned();
        ids.push(argmax(last.view()) as i64);
        seen.push(last);
    }
    (ids.split_off(prompt.len()), seen)
}

#[test]
fn plain_graphs_match_the_reference_forward() {
    for config in configs() {
        let (bytes, weights) = compile(&config, PLAIN, 7);
        let reference = Reference::new(&config, &weights).unwrap();
        let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
        for (batch, seq) in [(1, 1), (1, 17), (3, 9), (2, CONTEXT)] {
            let ids = token_ids(batch, seq, config.vocab_size(), (batch * 100 + seq) as u64);
            let err = relative_error(
                &tract.run(&Step::ids_only(&ids)).unwrap(),
                &reference.logits(&ids).unwrap(),
            );
            assert!(err < TOLERANCE, "{} {batch}x{seq}: relative error {err}", name(&config));
        }
    }
}

/// The comparisons can fail: one changed norm scale, or a rotation read from the wrong
/// position, is caught.
#[test]
fn a_perturbed_weight_is_detected() {
    let config = qwen3(2, false);
    let (bytes, mut weights) = compile(&config, PLAIN, 3);
    let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
    let ids = token_ids(1, 12, config.vocab_size(), 3);
    let actual = tract.run(&Step::ids_only(&ids)).unwrap();
    let norm = weights.0.get_mut("model.layers.1.self_attn.k_norm.weight").unwrap();
    norm.data[3] += 0.5;
    let err =
        relative_error(&actual, &Reference::new(&config, &weights).unwrap().logits(&ids).unwrap());
    assert!(err > 10.0 * TOLERANCE, "relative error {err}");
}

/// Every decode step has a past (7 to 18 positions): its logits are the reference's for the
/// whole sequence, with and without last-token logits.
#[test]
fn cached_decoding_matches_the_reference_at_every_step() {
    for config in configs() {
        let (plain, weights) = compile(&config, PLAIN, 11);
        let reference = Reference::new(&config, &weights).unwrap();
        let prompt = token_ids(1, 7, config.vocab_size(), 5).row(0).to_vec();
        let (expected_ids, expected_logits) = reference_greedy(&reference, &prompt, 12);
        for (variant, options) in [("plain", PLAIN), ("cache", CACHE), ("cache+last", CACHE_LAST)] {
            let bytes = match options.kv_cache {
                true => compile(&config, options, 11).0,
                false => plain.clone(),
            };
            let mut runtime = TractRuntime::from_bytes(&bytes).unwrap();
            let (ids, logits) =
                greedy_with_logits(&mut runtime, std::slice::from_ref(&prompt), 12, CONTEXT);
            let label = format!("{} {variant}", name(&config));
            assert_eq!(ids[0], expected_ids, "{label}: ids differ from the reference");
            for (step, (actual, expected)) in logits[0].iter().zip(&expected_logits).enumerate() {
                let err = relative_error(&as_3d(actual), &as_3d(expected));
                assert!(err < TOLERANCE, "{label} step {step}: relative error {err}");
            }
        }
    }
}

/// A left-padded batch: each row's positions start at its first token, and its logits equal
/// the row run alone, also once the batch outgrows the context and is prefilled again.
#[test]
fn left_padded_batch_rows_equal_single_runs() {
    for config in configs() {
        let (bytes, _) = compile(&config, CACHE, 9);
        let prompts: Vec<Vec<i64>> = [3, 11, 1, 7]
            .iter()
            .enumerate()
            .map(|(i, &n)| token_ids(1, n, config.vocab_size(), 40 + i as u64).row(0).to_vec())
            .collect();
        let context = 24;
        let mut runtime = TractRuntime::from_bytes(&bytes).unwrap();
        let (batched_ids, batched_logits) = greedy_with_logits(&mut runtime, &prompts, 20, context);
        for (row, prompt) in prompts.iter().enumerate() {
            let (alone_ids, alone_logits) =
                greedy_with_logits(&mut runtime, std::slice::from_ref(prompt), 20, context);
            let label = format!("{} row {row}", name(&config));
            assert_eq!(batched_ids[row], alone_ids[0], "{label}");
            for (step, (b, a)) in batched_logits[row].iter().zip(&alone_logits[0]).enumerate() {
                let err = relative_error(&as_3d(b), &as_3d(a));
                assert!(err < TOLERANCE, "{label} step {step}: relative error {err}");
            }
        }
    }
}

/// Float16 weights, activations and cache (norms and softmax in float32): within half
/// precision's reach of the reference, for a prefill and the decode steps after it.
#[test]
fn float16_stays_within_half_precision() {
    for config in configs() {
        let (_, weights) = compile(&config, PLAIN, 13);
        let reference = Reference::new(&config, &weights).unwrap();
        let (bytes, _) = compile(&config, GraphOptions { precision: Precision::F16, ..CACHE }, 13);
        let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
        let prompt = token_ids(1, 9, config.vocab_size(), 2).row(0).to_vec();
        let (_, expected) = reference_greedy(&reference, &prompt, 4);
        let (_, logits) = greedy_with_logits(&mut tract, std::slice::from_ref(&prompt), 4, CONTEXT);
        for (step, (actual, expected)) in logits[0].iter().zip(&expected).enumerate() {
            let err = relative_error(&as_3d(actual), &as_3d(expected));
            assert!(err < 5e-3, "{} step {step}: relative error {err}", name(&config));
        }
    }
}

/// The weights a 4-bit model means, under the reference's names and layouts: the stored
/// blocks dequantized (`float_initializers` gives projections GPT-2's `[in, out]`; these
/// families' are `[out, in]`).
fn dequantized(model: &gptc_graph::onnx::ModelProto) -> TensorMap {
    let mut weights = file::float_initializers(model).unwrap();
    for (name, tensor) in weights.0.iter_mut() {
        if name.ends_with("_proj.weight") {
            let [rows, cols] = tensor.shape[..] else { panic!("{name} is a matrix") };
            let transposed = (0..rows * cols).map(|i| tensor.data[(i % rows) * cols + i / rows]);
            tensor.data = transposed.collect();
            tensor.shape = vec![cols, rows];
        }
    }
    weights
}

/// 4-bit projections (gate, up and down included) and head mean their dequantized weights,
/// on tract and ONNX Runtime (accuracy level 0: float32 compute).
#[test]
fn int4_models_give_their_dequantized_references_logits() {
    let int4 = GraphOptions { quantization: Quantization::Int4 { accuracy_level: 0 }, ..CACHE };
    for config in configs() {
        let model = build_model(&config, int4, &mut RandomInit { seed: 17 }, Some(17)).unwrap();
        let weights = dequantized(&model);
        let reference = Reference::new(&config, &weights).unwrap();
        let bytes = file::encode(&model);
        let prompt = token_ids(1, 9, config.vocab_size(), 4).row(0).to_vec();
        let (expected_ids, expected) = reference_greedy(&reference, &prompt, 6);
        let runtimes: Vec<Box<dyn Runtime>> = vec![
            Box::new(TractRuntime::from_bytes(&bytes).unwrap()),
            Box::new(OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap()),
        ];
        for mut runtime in runtimes {
            let label = format!("{} {}", name(&config), runtime.name());
            let (ids, logits) =
                greedy_with_logits(runtime.as_mut(), std::slice::from_ref(&prompt), 6, CONTEXT);
            assert_eq!(ids[0], expected_ids, "{label}");
            for (step, (actual, expected)) in logits[0].iter().zip(&expected).enumerate() {
                let err = relative_error(&as_3d(actual), &as_3d(expected));
                assert!(err < 1e-3, "{label} step {step}: relative error {err}");
            }
        }
    }
}

/// ONNX Runtime from Rust gives tract's ids and logits for every variant, left-padded batches
/// and float16 included.
#[test]
fn onnx_runtime_gives_tracts_answers() {
    for config in configs() {
        for options in
            [PLAIN, CACHE, CACHE_LAST, GraphOptions { precision: Precision::F16, ..CACHE }]
        {
            let (bytes, _) = compile(&config, options, 21);
            let mut ort = OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap();
            let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
            let prompts: Vec<Vec<i64>> = [(9, 1), (4, 2), (13, 3)]
                .iter()
                .map(|&(n, salt)| token_ids(1, n, config.vocab_size(), salt).row(0).to_vec())
                .collect();
            let (ort_ids, ort_logits) = greedy_with_logits(&mut ort, &prompts, 8, CONTEXT);
            let (tract_ids, tract_logits) = greedy_with_logits(&mut tract, &prompts, 8, CONTEXT);
            let label = format!("{} {options:?}", name(&config));
            assert_eq!(ort_ids, tract_ids, "{label}");
            let tolerance = if options.precision == Precision::F16 { 5e-3 } else { TOLERANCE };
            for (row, (o, t)) in ort_logits.iter().zip(&tract_logits).enumerate() {
                for (step, (o, t)) in o.iter().zip(t).enumerate() {
                    let err = relative_error(&as_3d(o), &as_3d(t));
                    assert!(err < tolerance, "{label} row {row} step {step}: {err}");
                }
            }
        }
    }
}

/// A step of several tokens after a past (a chunked prompt: past 5, then 3 tokens): query `i`
/// of the chunk sees the past and the chunk's keys up to `i`, in every family, GPT-2 included,
/// on both runtimes. (gptc's driver steps one token at a time; the graph's contract is wider.)
#[test]
fn a_chunk_after_a_past_sees_exactly_its_causal_keys() {
    let gpt2 = ModelConfig::Gpt2(gptc_graph::GptConfig {
        vocab_size: 96,
        context_length: CONTEXT,
        emb_dim: 64,
        n_heads: 4,
        n_layers: 2,
        drop_rate: 0.0,
        qkv_bias: true,
    });
    let mut all = configs();
    all.push(gpt2.clone());
    for config in all {
        let (bytes, weights) = compile(&config, CACHE, 23);
        let ids = token_ids(2, 8, config.vocab_size(), 6);
        let expected = match &config {
            ModelConfig::Gpt2(gpt2) => {
                common::reference::Reference::new(gpt2, &weights).logits(&ids)
            }
            _ => Reference::new(&config, &weights).unwrap().logits(&ids),
        }
        .unwrap();
        for runtime in [
            Box::new(TractRuntime::from_bytes(&bytes).unwrap()) as Box<dyn Runtime>,
            Box::new(OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap()),
        ]
        .iter_mut()
        {
            let mut logits = Vec::new();
            for (from, to) in [(0, 5), (5, 8)] {
                let chunk = ids.slice(s![.., from..to]).to_owned();
                let mask = Array2::ones((2, to));
                let positions = Array2::from_shape_fn((2, to - from), |(_, j)| (from + j) as i64);
                let step = Step {
                    input_ids: &chunk,
                    attention_mask: Some(&mask),
                    position_ids: Some(&positions),
                };
                logits.push(runtime.run(&step).unwrap());
            }
            let chunk = logits.pop().unwrap();
            let err = relative_error(&chunk, &expected.slice(s![.., 5.., ..]).to_owned());
            let label = format!("{} {}", name(&config), runtime.name());
            assert!(err < TOLERANCE, "{label}: relative error {err}");
        }
    }
}

/// gptc's tract ops serve the new families: one attention op per layer (grouped heads read each
/// key/value head once for its group), and with 4-bit weights at level 4 every projection and
/// the head go through gptc's kernel, q/k/v and gate/up each stacked into one op; the logits
/// stay the reference's at every step.
#[test]
fn tract_runs_gptcs_attention_and_4_bit_kernel_for_every_layer() {
    let int4 = Quantization::Int4 { accuracy_level: 4 };
    for config in configs() {
        let layers = 2;
        for quantization in [Quantization::None, int4] {
            let options = GraphOptions { quantization, ..CACHE };
            let (bytes, weights) = match quantization {
                Quantization::None => compile(&config, options, 23),
                _ => {
                    let mut init = RandomInit { seed: 23 };
                    let model = build_model(&config, options, &mut init, None).unwrap();
                    (file::encode(&model), dequantized(&model))
                }
            };
            let runtime = TractRuntime::from_bytes(&bytes).unwrap();
            let plan = runtime.backend().plan().clone();
            let ops: Vec<String> =
                plan.model().nodes().iter().map(|n| n.op.name().into()).collect();
            let count = |name: &str| ops.iter().filter(|op| *op == name).count();
            let label = format!("{} {quantization:?}", name(&config));
            assert_eq!(count("GptcAttention"), layers, "{label}: {ops:?}");
            // The rotation of the queries and of the keys, per layer.
            assert_eq!(count("GptcRope"), 2 * layers, "{label}: {ops:?}");
            assert_eq!(count("GptcSwiGlu"), layers, "{label}: {ops:?}");
            if quantization == int4 {
                // q/k/v, o, gate/up and down per layer, then the head.
                assert_eq!(count("GptcInt4MatMul"), 4 * layers + 1, "{label}: {ops:?}");
            } else {
                // q, k, v, o, gate, up and down per layer, then the head (tied or not).
                assert_eq!(count("GptcDenseMatMul"), 7 * layers + 1, "{label}: {ops:?}");
            }
            // Both residual adds of a layer are folded into the o and down projections (the
            // fold names each op it makes `<matmul>.residual`).
            let nodes = plan.model().nodes();
            let joined = nodes.iter().filter(|n| n.name.ends_with(".residual")).count();
            assert_eq!(joined, 2 * layers, "{label}: {ops:?}");
            let others = ops.iter().filter(|op| op.contains("MatMul") && !op.starts_with("Gptc"));
            assert_eq!(others.count(), 0, "{label}: {ops:?}");
            let reference = Reference::new(&config, &weights).unwrap();
            let prompt = token_ids(1, 11, config.vocab_size(), 5).row(0).to_vec();
            let (expected_ids, expected) = reference_greedy(&reference, &prompt, 6);
            let mut runtime: Box<dyn Runtime> = Box::new(runtime);
            let (ids, logits) =
                greedy_with_logits(runtime.as_mut(), std::slice::from_ref(&prompt), 6, CONTEXT);
            let tolerance = if quantization == int4 { 3e-2 } else { TOLERANCE };
            assert_eq!(ids[0], expected_ids, "{label}");
            for (step, (actual, expected)) in logits[0].iter().zip(&expected).enumerate() {
                let err = relative_error(&as_3d(actual), &as_3d(expected));
                assert!(err < tolerance, "{label} step {step}: relative error {err}");
            }
        }
    }
}
