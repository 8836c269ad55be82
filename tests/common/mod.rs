//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod reference;

use std::path::Path;
use std::process::{Command, Output};

use gptc::generate::{generate, Next};
use gptc::runtime::Runtime;
use gptc::sampling::argmax;
pub use gptc_graph::GptConfig;
use gptc_graph::{
    build_model, file, GraphOptions, Precision, Quantization, RandomInit, Recording, TensorMap,
};
use ndarray::{s, Array1, Array2, Array3};
use reference::Reference;

/// A small GPT-2: the real vocabulary and tokenizer, a few narrow layers.
pub fn tiny_config(n_layers: usize, qkv_bias: bool) -> GptConfig {
    GptConfig {
        vocab_size: 50257,
        context_length: 64,
        emb_dim: 64,
        n_heads: 4,
        n_layers,
        drop_rate: 0.1,
        qkv_bias,
    }
}

/// A random init away from the init's exact values: norm scales (ones) and biases (zeros) get
/// noise, so a forward that skipped one, or a runtime that dropped one, would not agree.
pub struct NoisyInit(pub RandomInit);

impl gptc_graph::WeightSource for NoisyInit {
    fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        init: gptc_graph::Init,
    ) -> gptc_graph::Result<Vec<f32>> {
        let noise = gptc_graph::Init::Normal { std: 0.2 };
        match init {
            gptc_graph::Init::Ones => {
                Ok(self.0.tensor(name, shape, noise)?.into_iter().map(|x| 1.0 + x).collect())
            }
            gptc_graph::Init::Zeros => self.0.tensor(name, shape, noise),
            _ => self.0.tensor(name, shape, init),
        }
    }
}

pub const PLAIN: GraphOptions = GraphOptions {
    kv_cache: false,
    last_token_logits: false,
    tie_weights: false,
    precision: Precision::F32,
    quantization: Quantization::None,
};
pub const PLAIN_LAST: GraphOptions = GraphOptions {
    kv_cache: false,
    last_token_logits: true,
    tie_weights: false,
    precision: Precision::F32,
    quantization: Quantization::None,
};
pub const CACHE: GraphOptions = GraphOptions {
    kv_cache: true,
    last_token_logits: false,
    tie_weights: false,
    precision: Precision::F32,
    quantization: Quantization::None,
};
pub const CACHE_LAST: GraphOptions = GraphOptions {
    kv_cache: true,
    last_token_logits: true,
    tie_weights: false,
    precision: Precision::F32,
    quantization: Quantization::None,
};
pub const ALL_VARIANTS: [GraphOptions; 4] = [PLAIN, PLAIN_LAST, CACHE, CACHE_LAST];

/// The encoded model (plain graph) and every weight it was built with.
pub fn compile(config: &GptConfig, seed: u64) -> (Vec<u8>, TensorMap) {
    compile_with(config, PLAIN, seed)
}

pub fn compile_with(config: &GptConfig, options: GraphOptions, seed: u64) -> (Vec<u8>, TensorMap) {
    let mut init = RandomInit { seed };
    let mut recording = Recording { source: &mut init, seen: TensorMap::default() };
    let model =
        build_model(config, options, &mut recording, Some(seed)).expect("tiny configs build");
    (file::encode(&model), recording.seen)
}

/// Deterministic pseudo-random token ids in `[0, vocab)`.
pub fn token_ids(batch: usize, seq: usize, vocab: usize, salt: u64) -> Array2<i64> {
    let mut state = salt.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    Array2::from_shape_fn((batch, seq), |_| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % vocab as u64) as i64
    })
}

/// `max |actual - expected| / max |expected|`: the error relative to the logits' scale. A value
/// that is not finite, on either side, is an infinite error, so it fails every tolerance
/// (`f32::max` skips NaN: folded with it, an all-NaN output would score 0).
pub fn relative_error(actual: &Array3<f32>, expected: &Array3<f32>) -> f32 {
    assert_eq!(actual.shape(), expected.shape(), "logits shapes differ");
    if actual.iter().chain(expected).any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = actual.iter().zip(expected).fold(0f32, |m, (a, e)| m.max((a - e).abs()));
    match diff {
        0.0 => 0.0,
        // Over an all-zero scale any difference is infinitely large.
        _ => diff / scale,
    }
}

pub fn gptc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptc")).args(args).output().expect("gptc runs")
}

pub fn gptc_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptc"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("gptc runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test with gptc's stderr when gptc failed.
pub fn assert_success(out: &Output) {
    assert!(out.status.success(), "gptc failed: {}", stderr(out));
}

/// The book's `generate_text_simple` on the reference forward, also keeping each step's logits.
pub fn reference_greedy(
    reference: &Reference,
    prompt: &[i64],
    new_tokens: usize,
    context: usize,
) -> (Vec<i64>, Vec<Array1<f32>>) {
    let mut ids = prompt.to_vec();
    let mut logits_seen = Vec::new();
    for _ in 0..new_tokens {
        let window = ids[ids.len().saturating_sub(context)..].to_vec();
        let input = Array2::from_shape_vec((1, window.len()), window).unwrap();
        let logits = reference.logits(&input).unwrap();
        let last = logits.slice(s![0, -1, ..]).to_owned();
        ids.push(argmax(last.view()) as i64);
        logits_seen.push(last);
    }
    (ids.split_off(prompt.len()), logits_seen)
}

/// Greedy generation that also records the last-position logits of every step, per row.
pub fn greedy_with_logits(
    runtime: &mut dyn Runtime,
    prompts: &[Vec<i64>],
    new_tokens: usize,
    context: usize,
) -> (Vec<Vec<i64>>, Vec<Vec<Array1<f32>>>) {
    let mut seen = vec![Vec::new(); prompts.len()];
    let ids = generate(runtime, prompts, new_tokens, context, |row, logits| {
        seen[row].push(logits.to_owned());
        Ok(Next::Token(argmax(logits) as i64))
    })
    .unwrap();
    (ids, seen)
}

/// Runs gptc in `dir` with `args`, sends it SIGTERM after `millis`, and returns its exit code.
pub fn interrupted(dir: &Path, args: &[&str], millis: u64) -> Option<i32> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptc"))
        .current_dir(dir)
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gptc runs");
    std::thread::sleep(std::time::Duration::from_millis(millis));
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs").success());
    child.wait().expect("gptc ends").code()
}
