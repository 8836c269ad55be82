//! `gptc check`: does a file hold the graph gptc promises for its config? For users' CI.

use gptc_graph::names::{self, InputRole};
use gptc_graph::onnx::{DataType, Dim, ModelProto, ValueInfoProto};
use gptc_graph::{
    file, io_signature, GraphOptions, ModelConfig, Precision, Quantization, TensorSignature,
};

use std::path::Path;

use crate::runtime::tract::inferred_io_at;
use crate::runtime::{canonical_dim, InferredTensor};
use crate::{Error, Result};

/// The variant a file was built as: what its metadata records, or for a file without gptc's
/// metadata, what it declares (a KV cache when it has past inputs, last-token logits when its
/// logits have one position).
pub fn model_options(model: &ModelProto) -> Result<GraphOptions> {
    if let Some(stored) = file::stored_options(model) {
        return Ok(stored?);
    }
    Ok(declared_options(model))
}

fn declared_options(model: &ModelProto) -> GraphOptions {
    let Some(graph) = &model.graph else { return GraphOptions::default() };
    let kv_cache =
        graph.input.iter().any(|i| matches!(InputRole::of(&i.name), Some(InputRole::Past(..))));
    let last_token_logits = graph
        .output
        .iter()
        .find(|o| o.name == names::LOGITS)
        .and_then(ValueInfoProto::tensor_signature)
        .is_some_and(|(_, dims)| dims.get(1) == Some(&Some(Dim::Fixed(1))));
    let tie_weights = !graph.initializer.iter().any(|t| t.name == names::OUTPUT_HEAD);
    let precision = graph
        .initializer
        .iter()
        .find(|t| {
            t.name == names::TOKEN_EMBEDDING || t.name == names::LLAMA_MODULES.token_embedding
        })
        .and_then(|t| DataType::try_from(t.data_type).ok())
        .and_then(Precision::of_data_type)
        .unwrap_or_default();
    let quantization =
        graph.node.iter().find(|n| n.op_type == "MatMulNBits").map_or(Quantization::None, |node| {
            let level = node.attribute.iter().find(|a| a.name == "accuracy_level");
            Quantization::Int4 { accuracy_level: level.map_or(0, |a| a.i as u8) }
        });
    GraphOptions { kv_cache, last_token_logits, tie_weights, precision, quantization }
}

fn from_signature(t: &TensorSignature) -> InferredTensor {
    InferredTensor {
        name: t.name.clone(),
        dtype: t.dtype.onnx_name().into(),
        dims: t.dims.iter().map(|d| canonical_dim(&d.to_string())).collect(),
    }
}

fn from_declared(v: &ValueInfoProto) -> Result<InferredTensor> {
    let (dtype, dims) = v
        .tensor_signature()
        .ok_or_else(|| Error::Model(format!("`{}` is not declared as a tensor", v.name)))?;
    let dims = dims
        .into_iter()
        .map(|d| {
            d.map(|d| canonical_dim(&d.to_string())).ok_or_else(|| {
                Error::Model(format!("`{}` has a dim that is neither named nor fixed", v.name))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(InferredTensor { name: v.name.clone(), dtype: dtype.onnx_name().into(), dims })
}

fn show(t: &InferredTensor) -> String {
    format!("{} {} [{}]", t.name, t.dtype, t.dims.join(", "))
}

/// Compares two lists of tensors in order; names the first difference.
fn compare(
    what: &str,
    left_name: &str,
    left: &[InferredTensor],
    right_name: &str,
    right: &[InferredTensor],
) -> Result<()> {
    for (l, r) in left.iter().zip(right) {
        if l != r {
            return Err(Error::Model(format!(
                "{what}: {left_name} {} but {right_name} {}",
                show(l),
                show(r)
            )));
        }
    }
    if left.len() != right.len() {
        return Err(Error::Model(format!(
            "{what}: {left_name} {} but {right_name} {}",
            left.len(),
            right.len()
        )));
    }
    Ok(())
}

/// The model at `path` as `check` reads it: through the one reader of model files (the input
/// guard, its header, its external data and the memory it needs checked before its body is
/// read), the memory counting tract's analysis of it too. Returns its header and the model.
pub fn read_model_file(path: &Path) -> Result<(gptc_graph::file::StoredHeader, ModelProto)> {
    use crate::runtime::load::{ModelFile, Use};
    let file = ModelFile::open(path, Use::DecodeAndLoad)?;
    let model = file.decode()?;
    Ok((file.header, model))
}

/// Checks the file's declared inputs and outputs against the contract for `config` and
/// against what tract's shape analysis infers from the inputs alone. Returns the variant.
pub fn check_model(path: &Path, model: &ModelProto, config: &ModelConfig) -> Result<GraphOptions> {
    let graph = model.graph.as_ref().ok_or_else(|| Error::Model("the file has no graph".into()))?;
    // ONNX Runtime refuses versions it does not know; gptc writes exactly these.
    let opset = model.opset_import.iter().find(|o| o.domain.is_empty()).map(|o| o.version);
    if opset != Some(gptc_graph::decoder::OPSET)
        || model.ir_version != gptc_graph::decoder::IR_VERSION
    {
        return Err(Error::Model(format!(
            "the file declares IR version {} and opset {}; gptc's graph is IR version {} with opset {}",
            model.ir_version,
            opset.map_or("none".to_string(), |v| v.to_string()),
            gptc_graph::decoder::IR_VERSION,
            gptc_graph::decoder::OPSET
        )));
    }
    // The same check of every 4-bit node that tract's loader makes, before anything else
    // reads the nodes (A's type and shape are checked as tract infers them, below).
    gptc_graph::quant::check_model(model)?;
    let options = model_options(model)?;
    let (expected_inputs, expected_outputs) = io_signature(config, options);
    let declared_inputs = graph.input.iter().map(from_declared).collect::<Result<Vec<_>>>()?;
    let declared_outputs = graph.output.iter().map(from_declared).collect::<Result<Vec<_>>>()?;
    let expected_inputs: Vec<_> = expected_inputs.iter().map(from_signature).collect();
    let expected_outputs: Vec<_> = expected_outputs.iter().map(from_signature).collect();
    compare("inputs", "the file declares", &declared_inputs, "the config wants", &expected_inputs)?;
    compare(
        "outputs",
        "the file declares",
        &declared_outputs,
        "the config wants",
        &expected_outputs,
    )?;

    let stored = crate::inspect::weight_values(model)?;
    let wanted = crate::model::stored_parameters(config, options);
    if stored != wanted as u128 {
        return Err(Error::Model(format!(
            "weights: the file stores {stored} values, the config has {wanted} parameters"
        )));
    }

    let (inferred_inputs, inferred_outputs) = inferred_io_at(path)?;
    compare("inputs", "declared", &declared_inputs, "tract infers", &inferred_inputs)?;
    compare("outputs", "declared", &declared_outputs, "tract infers", &inferred_outputs)?;
    if let Some(info) = graph.value_info.first() {
        return Err(Error::Model(format!(
            "value info `{}`: gptc checks graph inputs and outputs only, and writes no value infos",
            info.name
        )));
    }
    Ok(options)
}
