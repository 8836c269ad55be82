//! The KV-cache graph: one model for the prompt and every next token, equal to the plain graph
//! and to the reference forward, with the book's cropping and left-padded batches.

mod common;

use common::reference::Reference;
use common::{
    compile_with, greedy_with_logits, reference_greedy, relative_error, tiny_config, token_ids,
    CACHE, CACHE_LAST, PLAIN,
};
use gptc::runtime::tract::TractRuntime;
use gptc_graph::GptConfig;
use ndarray::{Array1, Array3};

fn as_3d(v: &Array1<f32>) -> Array3<f32> {
    v.clone().into_shape_with_order((1, 1, v.len())).unwrap()
}

fn prompt(len: usize, vocab: usize, salt: u64) -> Vec<i64> {
    token_ids(1, len, vocab, salt).row(0).to_vec()
}

#[test]
fn cached_greedy_equals_plain_and_every_step_matches_the_reference() {
    for (n_layers, qkv_bias) in [(2, false), (3, true)] {
        let config = tiny_config(n_layers, qkv_bias);
        let (plain_bytes, weights) = compile_with(&config, PLAIN, 11);
        let (cache_bytes, _) = compile_with(&config, CACHE, 11);
        let (last_bytes, _) = compile_with(&config, CACHE_LAST, 11);
        let reference = Reference::new(&config, &weights);
        let prompt = prompt(7, config.vocab_size, n_layers as u64);
        let (expected_ids, expected_logits) =
            reference_greedy(&reference, &prompt, 12, config.context_length);

        for (name, bytes) in
            [("plain", &plain_bytes), ("cache", &cache_bytes), ("cache+last", &last_bytes)]
        {
            let mut runtime = TractRuntime::from_bytes(bytes).unwrap();
            let (ids, logits) = greedy_with_logits(
                &mut runtime,
                std::slice::from_ref(&prompt),
                12,
                config.context_length,
            );
            assert_eq!(ids[0], expected_ids, "{name}: ids differ from the reference");
            for (step, (actual, expected)) in logits[0].iter().zip(&expected_logits).enumerate() {
                let err = relative_error(&as_3d(actual), &as_3d(expected));
                assert!(err < 1e-4, "{name} layers {n_layers} step {step}: relative error {err}");
            }
        }
    }
}

/// Context 16, 40 new tokens: the cache is dropped and the cropped window prefilled again,
/// which must equal the book's loop that crops on every step.
#[test]
fn cropping_past_the_context_equals_the_books_loop() {
    let config = GptConfig { context_length: 16, ..tiny_config(2, true) };
    let (bytes, weights) = compile_with(&config, CACHE, 5);
    let reference = Reference::new(&config, &weights);
    for prompt_len in [5, 16] {
        let prompt = prompt(prompt_len, config.vocab_size, 77);
        let (expected_ids, expected_logits) = reference_greedy(&reference, &prompt, 40, 16);
        let mut runtime = TractRuntime::from_bytes(&bytes).unwrap();
        let (ids, logits) = greedy_with_logits(&mut runtime, &[prompt], 40, 16);
        assert_eq!(ids[0], expected_ids, "prompt of {prompt_len}");
        for (step, (actual, expected)) in logits[0].iter().zip(&expected_logits).enumerate() {
            let err = relative_error(&as_3d(actual), &as_3d(expected));
            assert!(err < 1e-4, "prompt of {prompt_len}, step {step}: relative error {err}");
        }
    }
}

/// A left-padded batch of prompts of different lengths: each row equals its prompt run alone,
/// also once the batch outgrows the context and is prefilled again.
#[test]
fn left_padded_batch_rows_equal_single_runs() {
    let config = GptConfig { context_length: 24, ..tiny_config(2, false) };
    for options in [CACHE, CACHE_LAST] {
        let (bytes, _) = compile_with(&config, options, 9);
        let prompts: Vec<Vec<i64>> = [3, 11, 1, 7]
            .iter()
            .enumerate()
            .map(|(i, &n)| prompt(n, config.vocab_size, 40 + i as u64))
            .collect();
        let mut runtime = TractRuntime::from_bytes(&bytes).unwrap();
        let (batched_ids, batched_logits) = greedy_with_logits(&mut runtime, &prompts, 20, 24);
        for (row, prompt) in prompts.iter().enumerate() {
            let (alone_ids, alone_logits) =
                greedy_with_logits(&mut runtime, std::slice::from_ref(prompt), 20, 24);
            assert_eq!(batched_ids[row], alone_ids[0], "row {row}");
            for (step, (b, a)) in batched_logits[row].iter().zip(&alone_logits[0]).enumerate() {
                let err = relative_error(&as_3d(b), &as_3d(a));
                assert!(err < 1e-4, "row {row} step {step}: relative error {err}");
            }
        }
    }
}
