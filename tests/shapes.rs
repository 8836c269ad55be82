//! Shape validation: tract's analysis of an exported file, from its inputs alone, derives the
//! declared outputs with symbolic batch and sequence dims.

mod common;

use common::{compile, compile_with, tiny_config, ALL_VARIANTS};
use gptc::runtime::tract::inferred_io;
use gptc::runtime::{canonical_dim, InferredTensor};
use gptc_graph::onnx::{Dim, ModelProto, ValueInfoProto};
use gptc_graph::{GptConfig, GraphOptions};
use prost::Message;

/// The inputs or outputs a file declares, in the form of tract's analysis.
fn declared(values: &[ValueInfoProto]) -> Vec<InferredTensor> {
    values
        .iter()
        .map(|v| {
            let (dtype, dims) = v.tensor_signature().expect("tensor typed");
            InferredTensor {
                name: v.name.clone(),
                dtype: dtype.onnx_name().to_string(),
                dims: dims
                    .into_iter()
                    .map(|d| canonical_dim(&d.expect("every dim named or fixed").to_string()))
                    .collect(),
            }
        })
        .collect()
}

/// What gptc promises for each variant: `(name, dtype, dims)` of every input and output.
fn expected_io(
    config: &GptConfig,
    options: GraphOptions,
) -> (Vec<InferredTensor>, Vec<InferredTensor>) {
    let t = |name: &str, dtype: &str, dims: &[&str]| InferredTensor {
        name: name.into(),
        dtype: dtype.into(),
        dims: dims.iter().map(|d| canonical_dim(d)).collect(),
    };
    let (heads, head_dim, vocab) =
        (config.n_heads.to_string(), config.head_dim().to_string(), config.vocab_size.to_string());
    let total = "past_sequence_length + sequence_length";
    let mut inputs = vec![t("input_ids", "int64", &["batch_size", "sequence_length"])];
    let positions = if options.last_token_logits { "1" } else { "sequence_length" };
    let mut outputs = vec![t("logits", "float", &["batch_size", positions, &vocab])];
    if options.kv_cache {
        inputs.push(t("attention_mask", "int64", &["batch_size", total]));
        inputs.push(t("position_ids", "int64", &["batch_size", "sequence_length"]));
        for i in 0..config.n_layers {
            for part in ["key", "value"] {
                let past = ["batch_size", &heads, "past_sequence_length", &head_dim];
                inputs.push(t(&format!("past_key_values.{i}.{part}"), "float", &past));
                outputs.push(t(
                    &format!("present.{i}.{part}"),
                    "float",
                    &["batch_size", &heads, total, &head_dim],
                ));
            }
        }
    }
    (inputs, outputs)
}

#[test]
fn every_variant_has_the_promised_io_and_tract_infers_what_is_declared() {
    for qkv_bias in [false, true] {
        let config = tiny_config(2, qkv_bias);
        for options in ALL_VARIANTS {
            let (bytes, _) = compile_with(&config, options, 1);
            let (inputs, outputs) = inferred_io(&bytes).unwrap();
            let (expected_inputs, expected_outputs) = expected_io(&config, options);
            assert_eq!(inputs, expected_inputs, "{options:?}");
            assert_eq!(outputs, expected_outputs, "{options:?}");

            let model = ModelProto::decode(bytes.as_slice()).unwrap();
            let graph = model.graph.as_ref().unwrap();
            assert_eq!(declared(&graph.input), inputs, "{options:?}");
            assert_eq!(declared(&graph.output), outputs, "{options:?}");
        }
    }
}

#[test]
fn names_follow_the_module_tree_and_metadata_records_the_config() {
    let config = tiny_config(2, true);
    let (bytes, _) = compile(&config, 42);
    let model = ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(model.opset_import[0].version, 17);
    let graph = model.graph.as_ref().unwrap();
    let names: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    for expected in [
        "wte.weight",
        "wpe.weight",
        "h.0.ln_1.weight",
        "h.1.attn.q_proj.weight",
        "h.1.attn.v_proj.bias",
        "h.1.attn.c_proj.bias",
        "h.0.mlp.c_fc.weight",
        "h.1.mlp.c_proj.weight",
        "ln_f.bias",
        "lm_head.weight",
    ] {
        assert!(names.contains(&expected), "no initializer {expected}");
    }
    assert!(graph.node.iter().any(|n| n.name.starts_with("h.1.attn.")));
    let stored = gptc_graph::file::stored_config(&model).unwrap().unwrap();
    assert_eq!(stored, config);
    assert_eq!(gptc_graph::file::metadata(&model, "gptc.init_seed"), Some("42"));
    // Every declared dim is named or fixed: none is left unknown.
    assert!(graph.output.iter().chain(&graph.input).all(|v| v
        .tensor_signature()
        .unwrap()
        .1
        .iter()
        .all(|d| matches!(d, Some(Dim::Fixed(_)) | Some(Dim::Named(_))))));
}
