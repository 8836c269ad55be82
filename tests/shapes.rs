//! Shape validation: tract's analysis of an exported file, from its inputs alone, derives the
//! declared outputs with symbolic batch and sequence dims.

mod common;

use common::{compile, tiny_config};
use gptc::runtime::tract::{inferred_io, InferredTensor};
use gptc_graph::onnx::{Dim, ModelProto, ValueInfoProto};
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
                    .map(|d| d.expect("every dim named or fixed").to_string())
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn logits_are_batch_by_sequence_by_vocab() {
    for qkv_bias in [false, true] {
        let config = tiny_config(2, qkv_bias);
        let (bytes, _) = compile(&config, 1);
        let (inputs, outputs) = inferred_io(&bytes).unwrap();
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].name, "input_ids");
        assert_eq!(inputs[0].dtype, "int64");
        assert_eq!(inputs[0].dims, ["batch_size", "sequence_length"]);
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].name, "logits");
        assert_eq!(outputs[0].dtype, "float");
        assert_eq!(outputs[0].dims, ["batch_size", "sequence_length", "50257"]);

        let model = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = model.graph.as_ref().unwrap();
        assert_eq!(declared(&graph.input), inputs);
        assert_eq!(declared(&graph.output), outputs);
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
    assert_eq!(
        gptc_graph::file::metadata(&model, "gptc.init_seed"),
        Some("42")
    );
    // Every declared dim is named or fixed: none is left unknown.
    assert!(graph.output.iter().chain(&graph.input).all(|v| v
        .tensor_signature()
        .unwrap()
        .1
        .iter()
        .all(|d| matches!(d, Some(Dim::Fixed(_)) | Some(Dim::Named(_))))));
}
