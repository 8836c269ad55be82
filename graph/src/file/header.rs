//! What a model file says of itself (config, tables, external data), decoded without copying
//! its weights.

use std::path::Path;

use prost::Message;

use super::external::DataRecord;
use super::metadata::{config_of, lookup};
use crate::config::ModelConfig;
use crate::names::{self};
use crate::onnx::{DataLocation, DataType, StringStringEntryProto};
use crate::{Error, Result};

/// The parts of a model file that say what it is, decoded without copying its weights:
/// prost skips the fields not declared here (the tensors' values among them).
#[derive(Clone, PartialEq, prost::Message)]
struct ModelHeader {
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<crate::onnx::OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<crate::onnx::StringStringEntryProto>,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphHeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GraphHeader {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorLocation>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorLocation {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    // The value fields as their encoded bytes: packed numbers and raw data are all
    // length-delimited, and decoded from `Bytes` they are slices of the file, not copies.
    #[prost(bytes = "bytes", tag = "4")]
    float_data: prost::bytes::Bytes,
    #[prost(bytes = "bytes", tag = "5")]
    int32_data: prost::bytes::Bytes,
    #[prost(bytes = "bytes", tag = "7")]
    int64_data: prost::bytes::Bytes,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "bytes", tag = "9")]
    raw_data: prost::bytes::Bytes,
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<StringStringEntryProto>,
    #[prost(enumeration = "DataLocation", tag = "14")]
    data_location: i32,
}

impl TensorLocation {
    /// Checks that the tensor holds as many values as its dims say (runtimes index by the dims;
    /// a short tensor made tract fail with "out of bounds indexing", naming nothing).
    fn check_size(&self) -> Result<()> {
        if self.data_location == DataLocation::External as i32 {
            return Ok(());
        }
        let bad = |reason: String| Error::Weight { name: self.name.clone(), reason };
        if self.dims.iter().any(|&d| d < 0) {
            return Err(bad(format!("negative dims {:?}", self.dims)));
        }
        let wanted = self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let varints = |b: &[u8]| b.iter().filter(|&&byte| byte < 0x80).count() as u64;
        let element_bytes = match DataType::try_from(self.data_type) {
            Ok(DataType::Float | DataType::Int32) => 4,
            Ok(DataType::Float16) => 2,
            Ok(DataType::Int64) => 8,
            Ok(DataType::Bool | DataType::Uint8 | DataType::Int8) => 1,
            _ => return Ok(()),
        };
        let whole = |bytes: usize, size: u64| {
            let bytes = bytes as u64;
            bytes.is_multiple_of(size).then_some(bytes / size)
        };
        let held = if !self.raw_data.is_empty() {
            whole(self.raw_data.len(), element_bytes)
        } else if !self.float_data.is_empty() {
            whole(self.float_data.len(), 4)
        } else if !self.int64_data.is_empty() {
            Some(varints(&self.int64_data))
        } else {
            Some(varints(&self.int32_data))
        };
        match (wanted, held) {
            (Some(wanted), Some(held)) if wanted == held => Ok(()),
            (_, Some(held)) => Err(bad(format!("holds {held} values for dims {:?}", self.dims))),
            _ => Err(bad(format!("its data is not whole values for dims {:?}", self.dims))),
        }
    }
}

/// What a model file says of itself, read without decoding its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredHeader {
    /// The config gptc recorded in the metadata; `None` for a file gptc did not write.
    pub config: Option<ModelConfig>,
    /// Whether some tensor's values are in external data (so runtimes must load the file by
    /// path, to find them beside it).
    pub external_data: bool,
    /// The files that external data lives in, as the model names them (beside it).
    pub data_files: Vec<String>,
    /// What the model records of its data file (gptc's exports), to refuse another's.
    pub data_record: Option<DataRecord>,
    /// The dims of the tables whose sizes the config sets: the embeddings and the causal table.
    pub tables: Vec<(String, Vec<i64>)>,
}

impl StoredHeader {
    /// Checks that the model's tables are as large as `config` says, so that no position or
    /// token the config allows indexes past them at run time.
    pub fn check_tables(&self, config: impl Into<ModelConfig>) -> Result<()> {
        let arch = config.into().architecture();
        let (vocab, ctx, emb) =
            (arch.vocab_size as i64, arch.context_length as i64, arch.emb_dim as i64);
        // A table another family names (GPT-2's `wte` in a Llama file) is no table of this
        // one: the check of inputs, outputs and weights refuses such a file.
        let mut expected = vec![(arch.names.token_embedding, vec![vocab, emb])];
        if let Some(positions) = arch.names.position_embedding {
            expected.push((positions, vec![ctx, emb]));
            expected.push((names::CAUSAL_MASK, vec![1, 1, ctx, ctx]));
        }
        for (name, dims) in &self.tables {
            let Some((_, wanted)) = expected.iter().find(|(n, _)| n == name) else { continue };
            if dims != wanted {
                return Err(Error::Config(format!(
                    "the model's `{name}` is {dims:?}, but its config (context {ctx}, vocabulary {vocab}, emb {emb}) needs {wanted:?}"
                )));
            }
        }
        Ok(())
    }
}

pub fn stored_header_of_bytes(path: &Path, bytes: &[u8]) -> Result<StoredHeader> {
    stored_header(path, prost::bytes::Bytes::copy_from_slice(bytes))
}

/// As [`stored_header_of_bytes`], reading the file's bytes in place (no tensor is copied), and
/// checking that every tensor stored in the file holds as many values as its dims say.
pub fn stored_header(path: &Path, bytes: prost::bytes::Bytes) -> Result<StoredHeader> {
    let not_onnx = |reason: String| Error::NotOnnx { path: path.into(), reason };
    let header = ModelHeader::decode(bytes).map_err(|e| not_onnx(e.to_string()))?;
    for tensor in header.graph.iter().flat_map(|g| &g.initializer) {
        tensor.check_size()?;
    }
    if header.opset_import.is_empty() {
        return Err(not_onnx("no opset".into()));
    }
    let config = config_of(&header.metadata_props).transpose()?;
    let external_data = header
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .any(|t| t.data_location == DataLocation::External as i32);
    let sized = [
        names::TOKEN_EMBEDDING,
        names::POSITION_EMBEDDING,
        names::CAUSAL_MASK,
        names::LLAMA_MODULES.token_embedding,
    ];
    let tables = header
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .filter(|t| sized.contains(&t.name.as_str()))
        .map(|t| (t.name.clone(), t.dims.clone()))
        .collect();
    let mut data_files: Vec<String> = header
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .filter_map(|t| lookup(&t.external_data, "location").map(String::from))
        .collect();
    data_files.sort();
    data_files.dedup();
    let data_record = DataRecord::of(&header.metadata_props).transpose()?;
    Ok(StoredHeader { config, external_data, data_files, data_record, tables })
}
