//! Protobuf encoding of a model, streamed tensor by tensor so that a model is never encoded
//! whole in memory.

use std::io::Write;

use prost::Message;

use crate::onnx::{GraphProto, ModelProto, TensorProto};

pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Streams the encoding of `model` to `out` without building it in memory first: the graph's
/// initializers (nearly all the bytes) are encoded one at a time after the rest of the graph.
/// Protobuf fields may come in any order, so this decodes to the same message.
pub fn encode_to(model: &ModelProto, out: &mut dyn Write) -> std::io::Result<()> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let header = ModelProto { graph: None, ..shallow_model(model) };
    out.write_all(&header.encode_to_vec())?;
    let Some(graph) = &model.graph else {
        return Ok(());
    };
    let shell = GraphProto { initializer: Vec::new(), ..graph.clone_without_initializers() };
    let mut head = Vec::new();
    encode_key(7, WireType::LengthDelimited, &mut head);
    encode_varint(graph.encoded_len() as u64, &mut head);
    shell.encode_raw(&mut head);
    out.write_all(&head)?;
    for tensor in &graph.initializer {
        encode_tensor_field(5, tensor, out)?;
    }
    Ok(())
}

/// One `TensorProto` as a length-delimited field, its packed `float_data` copied straight from
/// the tensor to `out` through a small buffer (a weight matrix is never encoded twice in memory).
fn encode_tensor_field(tag: u32, tensor: &TensorProto, out: &mut dyn Write) -> std::io::Result<()> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let header = TensorProto { float_data: Vec::new(), ..tensor.clone_without_float_data() };
    let mut head = Vec::new();
    encode_key(tag, WireType::LengthDelimited, &mut head);
    encode_varint(tensor.encoded_len() as u64, &mut head);
    header.encode_raw(&mut head);
    if !tensor.float_data.is_empty() {
        encode_key(4, WireType::LengthDelimited, &mut head);
        encode_varint(4 * tensor.float_data.len() as u64, &mut head);
    }
    out.write_all(&head)?;
    write_floats(&tensor.float_data, out)
}

/// Little-endian f32s through a small buffer: a weight matrix is never encoded whole in memory.
fn write_floats(values: &[f32], out: &mut dyn Write) -> std::io::Result<()> {
    let mut buf = [0u8; 1 << 16];
    for chunk in values.chunks(buf.len() / 4) {
        for (bytes, x) in buf.chunks_exact_mut(4).zip(chunk) {
            bytes.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&buf[..4 * chunk.len()])?;
    }
    Ok(())
}

impl TensorProto {
    pub(super) fn clone_without_float_data(&self) -> TensorProto {
        TensorProto {
            dims: self.dims.clone(),
            data_type: self.data_type,
            float_data: Vec::new(),
            int32_data: self.int32_data.clone(),
            int64_data: self.int64_data.clone(),
            name: self.name.clone(),
            doc_string: self.doc_string.clone(),
            raw_data: self.raw_data.clone(),
            external_data: self.external_data.clone(),
            data_location: self.data_location,
        }
    }
}

pub(super) fn shallow_model(model: &ModelProto) -> ModelProto {
    ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        doc_string: model.doc_string.clone(),
        graph: None,
        metadata_props: model.metadata_props.clone(),
    }
}

impl GraphProto {
    pub(super) fn clone_without_initializers(&self) -> GraphProto {
        GraphProto {
            node: self.node.clone(),
            name: self.name.clone(),
            initializer: Vec::new(),
            doc_string: self.doc_string.clone(),
            input: self.input.clone(),
            output: self.output.clone(),
            value_info: self.value_info.clone(),
        }
    }
}

/// Protobuf messages are limited to 2 GiB; larger models need ONNX external data.
pub const PROTOBUF_LIMIT: usize = i32::MAX as usize;

/// The bytes of all the model's tensor values: what writing it mostly is.
pub fn tensor_bytes(model: &ModelProto) -> u64 {
    model.graph.iter().flat_map(|g| &g.initializer).map(|t| tensor_byte_len(t) as u64).sum()
}

/// The bytes a tensor's values take when stored raw (little-endian, as ONNX's `raw_data`).
pub fn tensor_byte_len(tensor: &TensorProto) -> usize {
    4 * tensor.float_data.len() + tensor.raw_data.len()
}

pub(super) fn write_tensor_bytes(tensor: &TensorProto, out: &mut dyn Write) -> std::io::Result<()> {
    out.write_all(&tensor.raw_data)?;
    write_floats(&tensor.float_data, out)
}
