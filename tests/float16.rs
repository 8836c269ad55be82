//! `--dtype f16`: weights, activations and the KV cache in float16, LayerNorm and softmax in
//! float32. Its logits stay within half precision's reach of the float32 model's, on tract and
//! on ONNX Runtime (CPU), for every variant, across a prefill and a decode step.

mod common;

use common::{compile_with, gptc, relative_error, stderr, stdout, tiny_config, token_ids};
use common::{ALL_VARIANTS, CACHE};
use gptc::runtime::ort::{Device, OrtRuntime};
use gptc::runtime::tract::TractRuntime;
use gptc::runtime::{Runtime, Step};
use gptc_graph::{GraphOptions, Precision};
use ndarray::{concatenate, Array2, Array3, Axis};

/// Half's unit roundoff is 2^-11 = 4.9e-4; weights, activations and matmul outputs are each
/// rounded to it. Measured on these configs: 4e-4 to 8e-4 of the largest logit.
const F16_TOLERANCE: f32 = 5e-3;

/// A prompt of 11 tokens, then one more: the prefill's logits and the decode step's (a cache
/// model feeds its float16 present back as past; a plain one re-runs the 12 tokens).
fn prefill_then_decode(runtime: &mut dyn Runtime, cache: bool) -> Vec<Array3<f32>> {
    let prompt = token_ids(2, 11, 50257, 5);
    let next = token_ids(2, 1, 50257, 6);
    let positions =
        |from: usize, n: usize| Array2::from_shape_fn((2, n), |(_, j)| (from + j) as i64);
    if !cache {
        let whole = concatenate(Axis(1), &[prompt.view(), next.view()]).unwrap();
        return vec![
            runtime.run(&Step::ids_only(&prompt)).unwrap(),
            runtime.run(&Step::ids_only(&whole)).unwrap(),
        ];
    }
    let (mask_11, mask_12) = (Array2::ones((2, 11)), Array2::ones((2, 12)));
    let (pos_prompt, pos_next) = (positions(0, 11), positions(11, 1));
    let first = Step {
        input_ids: &prompt,
        attention_mask: Some(&mask_11),
        position_ids: Some(&pos_prompt),
    };
    let second =
        Step { input_ids: &next, attention_mask: Some(&mask_12), position_ids: Some(&pos_next) };
    vec![runtime.run(&first).unwrap(), runtime.run(&second).unwrap()]
}

fn last_position(logits: &Array3<f32>) -> Array3<f32> {
    logits.slice(ndarray::s![.., -1.., ..]).to_owned()
}

#[test]
fn float16_logits_are_within_half_precision_of_float32() {
    for qkv_bias in [false, true] {
        let config = tiny_config(2, qkv_bias);
        for options in ALL_VARIANTS {
            let f16 = GraphOptions { precision: Precision::F16, ..options };
            let (bytes32, _) = compile_with(&config, options, 31);
            let (bytes16, _) = compile_with(&config, f16, 31);
            let ratio = bytes16.len() as f64 / bytes32.len() as f64;
            assert!((0.45..0.55).contains(&ratio), "f16 file is {ratio:.2} of f32's");

            let mut expected = TractRuntime::from_bytes(&bytes32).unwrap();
            let expected = prefill_then_decode(&mut expected, options.kv_cache);
            let runtimes: [Box<dyn Runtime>; 2] = [
                Box::new(TractRuntime::from_bytes(&bytes16).unwrap()),
                Box::new(OrtRuntime::from_bytes(&bytes16, Device::Cpu).unwrap()),
            ];
            for mut runtime in runtimes {
                let name = runtime.name();
                let actual = prefill_then_decode(runtime.as_mut(), options.kv_cache);
                for (step, (a, e)) in actual.iter().zip(&expected).enumerate() {
                    // A plain graph's second run covers all 12 positions; compare the last.
                    let (a, e) = if step == 1 {
                        (last_position(a), last_position(e))
                    } else {
                        (a.clone(), e.clone())
                    };
                    let err = relative_error(&a, &e);
                    assert!(
                        err < F16_TOLERANCE,
                        "{name} {options:?} bias {qkv_bias} step {step}: relative error {err}"
                    );
                    assert!(err > 0.0, "{name}: float16 rounding must show somewhere");
                }
            }
        }
    }
}

#[test]
fn float16_export_declares_half_io_and_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f16.onnx");
    let path = path.to_str().unwrap();
    let tiny = ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4"];
    let mut args = vec!["export", "--dtype", "f16", "-o", path];
    args.extend(tiny);
    let out = gptc(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let check = gptc(&["check", path]);
    assert!(check.status.success(), "{}", stderr(&check));
    let report = stdout(&check);
    assert!(report.contains("past_key_values.0.key float16"), "{report}");
    assert!(report.contains("output logits float "), "{report}");

    // The tiny f16 model generates on both runtimes from the file.
    for runtime in ["tract", "ort"] {
        let out = gptc(&["generate", "Hi", "--model", path, "--runtime", runtime]);
        assert!(out.status.success(), "{runtime}: {}", stderr(&out));
    }

    // `gptc check` learns the precision from the file, as it learns the other options.
    let (bytes16, _) = compile_with(
        &tiny_config(2, false),
        GraphOptions { precision: Precision::F16, ..CACHE },
        1,
    );
    let model = gptc_graph::file::decode_model(std::path::Path::new("m"), &bytes16).unwrap();
    assert_eq!(gptc::check::model_options(&model).unwrap().precision, Precision::F16);
}
