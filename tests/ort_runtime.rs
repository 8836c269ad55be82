//! ONNX Runtime from Rust runs every exported variant with the answers tract gives.
//! Needs libonnxruntime: `scripts/test.sh` installs it and sets ORT_DYLIB_PATH. Missing, the
//! tests fail; they never skip.

mod common;

use common::{
    compile_with, greedy_with_logits, relative_error, tiny_config, token_ids, ALL_VARIANTS, CACHE,
};
use gptc::runtime::ort::{Device, OrtRuntime};
use gptc::runtime::tract::TractRuntime;
use gptc::runtime::{Runtime, Step};
use ndarray::Array2;

#[test]
fn every_variant_gives_tracts_ids_and_logits() {
    for qkv_bias in [false, true] {
        let config = tiny_config(2, qkv_bias);
        for options in ALL_VARIANTS {
            let (bytes, _) = compile_with(&config, options, 21);
            let mut ort = OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap();
            let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
            assert_eq!(ort.name(), "ort-cpu");
            assert_eq!(ort.has_cache(), options.kv_cache);
            let prompts: Vec<Vec<i64>> = [(9, 1), (4, 2), (13, 3)]
                .iter()
                .map(|&(n, salt)| token_ids(1, n, 50257, salt).row(0).to_vec())
                .collect();
            let (ort_ids, ort_logits) = greedy_with_logits(&mut ort, &prompts, 8, 64);
            let (tract_ids, tract_logits) = greedy_with_logits(&mut tract, &prompts, 8, 64);
            assert_eq!(ort_ids, tract_ids, "{options:?}");
            for (row, (o, t)) in ort_logits.iter().zip(&tract_logits).enumerate() {
                for (step, (o, t)) in o.iter().zip(t).enumerate() {
                    let shape = (1, 1, o.len());
                    let err = relative_error(
                        &o.clone().into_shape_with_order(shape).unwrap(),
                        &t.clone().into_shape_with_order(shape).unwrap(),
                    );
                    assert!(err < 1e-4, "{options:?} row {row} step {step}: relative error {err}");
                }
            }
        }
    }
}

/// A full-sequence forward of a cache model: all positions agree, not only the last.
#[test]
fn prefill_logits_agree_at_every_position() {
    let config = tiny_config(3, true);
    let (bytes, _) = compile_with(&config, CACHE, 4);
    let mut ort = OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap();
    let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
    let ids = token_ids(2, 17, 50257, 8);
    let mask = Array2::ones((2, 17));
    let positions = Array2::from_shape_fn((2, 17), |(_, j)| j as i64);
    let step =
        Step { input_ids: &ids, attention_mask: Some(&mask), position_ids: Some(&positions) };
    let err = relative_error(&ort.run(&step).unwrap(), &tract.run(&step).unwrap());
    assert!(err < 1e-4, "relative error {err}");
}

/// The IoBinding path (the CUDA default, keeping the cache on the device) tested on CPU memory:
/// the same ids and logits as plain runs, with a batch and across a cropping prefill.
#[test]
fn io_binding_runs_equal_plain_runs() {
    let config = common::GptConfig { context_length: 24, ..tiny_config(2, true) };
    let (bytes, _) = compile_with(&config, CACHE, 6);
    let prompts: Vec<Vec<i64>> = [(5, 1), (11, 2)]
        .iter()
        .map(|&(n, salt)| token_ids(1, n, 50257, salt).row(0).to_vec())
        .collect();
    let mut plain = OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap();
    let mut bound = OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap();
    bound.set_io_binding(true);
    let (plain_ids, plain_logits) = greedy_with_logits(&mut plain, &prompts, 20, 24);
    let (bound_ids, bound_logits) = greedy_with_logits(&mut bound, &prompts, 20, 24);
    assert_eq!(plain_ids, bound_ids);
    assert_eq!(plain_logits, bound_logits);
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error_not_a_silent_cpu_run() {
    let config = tiny_config(1, false);
    let (bytes, _) = compile_with(&config, CACHE, 1);
    match OrtRuntime::from_bytes(&bytes, Device::Cuda) {
        Ok(runtime) => {
            assert_eq!(runtime.name(), "ort-cuda", "asked for CUDA, got {}", runtime.name())
        }
        Err(e) => assert!(e.to_string().contains("CUDA"), "{e}"),
    }
    let auto = OrtRuntime::from_bytes(&bytes, Device::Auto).unwrap();
    assert!(["ort-cuda", "ort-cpu"].contains(&auto.name().as_str()));
}
