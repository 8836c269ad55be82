//! Reading and writing `.onnx` files. Writes go to a temporary file beside the target and are
//! renamed into place, so a failed export never leaves a half-written model behind.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::config::GptConfig;
use crate::onnx::{DataLocation, DataType, GraphProto, ModelProto, TensorProto};
use crate::weights::{NamedTensor, TensorMap};
use crate::{Error, Result};

pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes a file atomically: `fill` writes into a temporary file beside `path`, which is renamed
/// over `path` only when everything was written. On any error the temporary file is removed, so
/// a failed write never leaves a partial file under either name.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let io_err = |source| Error::Io { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        io_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"))
    })?;
    let tmp = dir.join(format!(".{}.tmp{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        fill(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
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
    let mut buf = [0u8; 1 << 16];
    for chunk in tensor.float_data.chunks(buf.len() / 4) {
        for (bytes, x) in buf.chunks_exact_mut(4).zip(chunk) {
            bytes.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&buf[..4 * chunk.len()])?;
    }
    Ok(())
}

impl TensorProto {
    fn clone_without_float_data(&self) -> TensorProto {
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

fn shallow_model(model: &ModelProto) -> ModelProto {
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
    fn clone_without_initializers(&self) -> GraphProto {
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
const PROTOBUF_LIMIT: usize = i32::MAX as usize;

pub fn write_model(path: &Path, model: &ModelProto) -> Result<()> {
    let size = model.encoded_len();
    if size > PROTOBUF_LIMIT {
        return Err(Error::Config(format!(
            "the model is {:.2} GB, over protobuf's 2 GiB limit for one .onnx file; gptc does not \
             write ONNX external data yet (gpt2-large and gpt2-xl need it in float32)",
            size as f64 / 1e9
        )));
    }
    write_atomically(path, |out| encode_to(model, out))
}

pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    decode_model(path, &bytes)
}

/// Decodes a model read from `path` (named in errors).
pub fn decode_model(path: &Path, bytes: &[u8]) -> Result<ModelProto> {
    let not_onnx = |reason: String| Error::NotOnnx { path: path.into(), reason };
    let model = ModelProto::decode(bytes).map_err(|e| not_onnx(e.to_string()))?;
    if model.graph.is_none() || model.opset_import.is_empty() {
        return Err(not_onnx("no graph or no opset".into()));
    }
    Ok(model)
}

pub fn metadata<'m>(model: &'m ModelProto, key: &str) -> Option<&'m str> {
    model.metadata_props.iter().find(|p| p.key == key).map(|p| p.value.as_str())
}

/// The config a gptc export recorded in its metadata, if this file is one.
pub fn stored_config(model: &ModelProto) -> Option<Result<GptConfig>> {
    metadata(model, "gptc.config").map(GptConfig::from_json)
}

/// Every float32 initializer of the model, by name (the weights an export holds).
pub fn float_initializers(model: &ModelProto) -> Result<TensorMap> {
    let mut map = TensorMap::default();
    let Some(graph) = &model.graph else {
        return Ok(map);
    };
    for t in &graph.initializer {
        if t.data_type != DataType::Float as i32 || t.data_location == DataLocation::External as i32
        {
            continue;
        }
        let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let data: Vec<f32> = if !t.raw_data.is_empty() {
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            t.float_data.clone()
        };
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::Weight {
                name: t.name.clone(),
                reason: format!("{} values for shape {shape:?}", data.len()),
            });
        }
        map.0.insert(t.name.clone(), NamedTensor { shape, data });
    }
    Ok(map)
}

/// The parts of a model file that say what it is, decoded without copying its weights.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelHeader {
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<crate::onnx::OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<crate::onnx::StringStringEntryProto>,
}

/// The config recorded in a model file's metadata, read without decoding its graph.
/// `Ok(None)`: a valid ONNX file that gptc did not write.
pub fn stored_config_of_bytes(path: &Path, bytes: &[u8]) -> Result<Option<GptConfig>> {
    let not_onnx = |reason: String| Error::NotOnnx { path: path.into(), reason };
    let header = ModelHeader::decode(bytes).map_err(|e| not_onnx(e.to_string()))?;
    if header.opset_import.is_empty() {
        return Err(not_onnx("no opset".into()));
    }
    header
        .metadata_props
        .iter()
        .find(|p| p.key == "gptc.config")
        .map(|p| GptConfig::from_json(&p.value))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_model, GptConfig, GraphOptions, RandomInit};

    #[test]
    fn streamed_encoding_decodes_to_the_same_model() {
        let config = GptConfig {
            vocab_size: 50,
            context_length: 8,
            emb_dim: 8,
            n_heads: 2,
            n_layers: 1,
            drop_rate: 0.0,
            qkv_bias: true,
        };
        let options = GraphOptions { kv_cache: true, last_token_logits: false, tie_weights: false };
        let model = build_model(&config, options, &mut RandomInit { seed: 3 }, Some(3)).unwrap();
        let mut streamed = Vec::new();
        encode_to(&model, &mut streamed).unwrap();
        assert_eq!(streamed.len(), model.encoded_len());
        assert_eq!(ModelProto::decode(streamed.as_slice()).unwrap(), model);
    }

    #[test]
    fn a_failed_write_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("gptc-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("m.onnx");
        let err = write_atomically(&target, |out| {
            out.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
