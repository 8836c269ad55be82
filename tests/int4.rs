//! 4-bit weights: the file means what gptc thinks it means. The reference forward runs on the
//! weights the stored blocks dequantize to, and tract and ONNX Runtime (at accuracy level 0,
//! float32 compute) give its logits; the level gptc writes by default (4: int8 activations in
//! ONNX Runtime) is measured in BENCHMARKS.md, not asserted.

mod common;

use common::{assert_success, gptc_in, relative_error, stderr, tiny_config, token_ids, CACHE};
use common::{greedy_with_logits, reference_greedy, PLAIN};
use gptc::reference::Reference;
use gptc::runtime::ort::{Device, OrtRuntime};
use gptc::runtime::tract::TractRuntime;
use gptc::runtime::{Runtime, Step};
use gptc_graph::{build_model, file, GptConfig, GraphOptions, Quantization, RandomInit};

const EXACT: Quantization = Quantization::Int4 { accuracy_level: 0 };
const TOLERANCE: f32 = 1e-3;

/// The encoded model and the weights it means (4-bit ones dequantized).
fn compile_int4(
    config: &GptConfig,
    options: GraphOptions,
    seed: u64,
) -> (Vec<u8>, gptc_graph::TensorMap) {
    let model = build_model(config, options, &mut RandomInit { seed }, Some(seed)).unwrap();
    (file::encode(&model), file::float_initializers(&model).unwrap())
}

fn runtimes(bytes: &[u8]) -> Vec<Box<dyn Runtime>> {
    vec![
        Box::new(TractRuntime::from_bytes(bytes).unwrap()),
        Box::new(OrtRuntime::from_bytes(bytes, Device::Cpu).unwrap()),
    ]
}

#[test]
fn tiny_int4_models_give_the_dequantized_references_logits_on_both_runtimes() {
    for (qkv_bias, tie_weights) in [(false, false), (true, true)] {
        let config = tiny_config(2, qkv_bias);
        let options = GraphOptions { tie_weights, quantization: EXACT, ..PLAIN };
        let (bytes, weights) = compile_int4(&config, options, 11);
        // Every projection and the head are 4-bit: the weights they mean are not the init's.
        assert!(weights.0.contains_key("h.1.mlp.c_proj.weight"));
        assert!(weights.0.contains_key("lm_head.weight"), "the head is a 4-bit table");
        let reference = Reference::new(&config, &weights);
        for mut runtime in runtimes(&bytes) {
            for (batch, seq) in [(1, 1), (2, 13), (1, config.context_length)] {
                let ids = token_ids(batch, seq, config.vocab_size, seq as u64);
                let err = relative_error(
                    &runtime.run(&Step::ids_only(&ids)).unwrap(),
                    &reference.logits(&ids).unwrap(),
                );
                let name = runtime.name();
                assert!(err < TOLERANCE, "{name} tied {tie_weights} {batch}x{seq}: {err}");
            }
        }
    }
}

#[test]
fn the_comparison_can_fail_a_float_reference_is_not_the_int4_model() {
    let config = tiny_config(2, false);
    let options = GraphOptions { quantization: EXACT, ..PLAIN };
    let (bytes, _) = compile_int4(&config, options, 11);
    let (_, float_weights) = compile_int4(&config, PLAIN, 11);
    let ids = token_ids(1, 9, config.vocab_size, 2);
    let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
    let err = relative_error(
        &tract.run(&Step::ids_only(&ids)).unwrap(),
        &Reference::new(&config, &float_weights).logits(&ids).unwrap(),
    );
    assert!(err > 10.0 * TOLERANCE, "quantization moved nothing: {err}");
}

#[test]
fn gpt2_small_int4_decodes_as_its_dequantized_reference_on_both_runtimes() {
    let config = GptConfig::preset("gpt2-small").unwrap();
    let options = GraphOptions { quantization: EXACT, ..CACHE };
    let (bytes, weights) = compile_int4(&config, options, 123);
    let reference = Reference::new(&config, &weights);
    let prompt = vec![15496, 11, 314, 716];
    let (expected_ids, expected_logits) = reference_greedy(&reference, &prompt, 3, 1024);
    for mut runtime in runtimes(&bytes) {
        let (ids, logits) =
            greedy_with_logits(runtime.as_mut(), std::slice::from_ref(&prompt), 3, 1024);
        assert_eq!(ids[0], expected_ids, "{}", runtime.name());
        for (step, (got, want)) in logits[0].iter().zip(&expected_logits).enumerate() {
            let shape = (1, 1, got.len());
            let err = relative_error(
                &got.clone().into_shape_with_order(shape).unwrap(),
                &want.clone().into_shape_with_order(shape).unwrap(),
            );
            assert!(err < TOLERANCE, "{} step {step}: {err}", runtime.name());
        }
    }
}

/// At accuracy level 4 ONNX Runtime quantizes activations to int8; tract runs gptc's own
/// kernel, which does the same (with its own rounding): both stay as near the dequantized
/// reference as int8 activations allow (1.5e-2 of random-init gpt2-small's flat logits, each),
/// and a broken kernel would be far off.
#[test]
fn at_level_4_tract_runs_gptcs_int8_kernel_close_to_onnx_runtime() {
    let config = GptConfig::preset("gpt2-small").unwrap();
    let options = GraphOptions { quantization: Quantization::Int4 { accuracy_level: 4 }, ..CACHE };
    let (bytes, weights) = compile_int4(&config, options, 123);
    let ids = token_ids(1, 24, config.vocab_size, 5);
    let expected = Reference::new(&config, &weights).logits(&ids).unwrap();
    let mut outputs = Vec::new();
    for mut runtime in runtimes(&bytes) {
        let ids = ids.view().to_owned();
        let step = Step {
            input_ids: &ids,
            attention_mask: Some(&ndarray::Array2::ones((1, 24))),
            position_ids: Some(&ndarray::Array2::from_shape_fn((1, 24), |(_, j)| j as i64)),
        };
        let logits = runtime.run(&step).unwrap();
        let err = relative_error(&logits, &expected);
        eprintln!("{}: {err:.2e} from the dequantized reference", runtime.name());
        assert!(err < 3e-2, "{}: {err}", runtime.name());
        outputs.push(logits);
    }
    let between = relative_error(&outputs[0], &outputs[1]);
    eprintln!("tract against ONNX Runtime at level 4: {between:.2e}");
    assert!(between < 3e-2, "{between}");
}

#[test]
fn the_cli_exports_checks_and_refuses_int4_as_a_user_expects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tiny = ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"];
    let mut export = vec!["export", "--quantize", "int4", "-o", "q.onnx"];
    export.extend(tiny);
    assert_success(&gptc_in(d, &export));
    let check = gptc_in(d, &["check", "q.onnx"]);
    assert_success(&check);
    let out = common::stdout(&check);
    assert!(out.contains("4-bit weights, accuracy level 4"), "{out}");
    assert!(out.contains("opset com.microsoft 1") && out.contains("MatMulNBits"), "{out}");
    assert!(out.contains("4-bit scales"), "{out}");
    let model = file::read_model(&d.join("q.onnx")).unwrap();
    assert_eq!(file::metadata(&model, "gptc.quantization"), Some("int4"));

    // The default export has no contrib op.
    let mut plain = vec!["export", "-o", "f.onnx"];
    plain.extend(tiny);
    assert_success(&gptc_in(d, &plain));
    assert!(!common::stdout(&gptc_in(d, &["check", "f.onnx"])).contains("com.microsoft"));

    // Blocks of 32 along the inputs: an emb_dim of 48 has none.
    let out = gptc_in(
        d,
        &["export", "--quantize", "int4", "--emb-dim", "48", "--n-heads", "4", "-o", "b.onnx"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("multiple of 32"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim_end().lines().count(), 1);
    assert!(!d.join("b.onnx").exists());
    let out = gptc_in(d, &["export", "--quantize", "int4", "--dtype", "f16", "-o", "h.onnx"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}
