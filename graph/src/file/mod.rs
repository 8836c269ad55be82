//! Reading and writing `.onnx` files. Writes go to a temporary file beside the target and are
//! renamed into place, so a failed export never leaves a half-written model behind.
//!
//! One job per module, all re-exported here: `input` (the guard every read passes), `atomic`
//! (staged writes, the commit lock, the temporaries a signal removes), `encode` (streamed
//! protobuf), `external` (external data written and verified), `metadata` (the config and
//! options a model records), `header` (what a file says of itself, read without its weights),
//! `extract` (weights read back out).

mod atomic;
mod encode;
mod external;
mod extract;
mod header;
mod input;
mod metadata;

pub use atomic::*;
pub use encode::*;
pub use external::*;
pub use extract::*;
pub use header::*;
pub use input::*;
pub use metadata::*;

use std::path::Path;

use prost::Message;

use crate::onnx::ModelProto;
use crate::{Error, Result};

/// The model at `path` as stored: external tensors are references, without their values.
/// The file is mapped, and only its decoded copy allocated.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = map_input(path)?;
    decode_model(path, &bytes)
}

/// The model at `path` with the values of its external tensors read in.
pub fn read_model_with_data(path: &Path) -> Result<ModelProto> {
    let mut model = read_model(path)?;
    load_external_data(&mut model, path)?;
    Ok(model)
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

#[cfg(test)]
mod tests {
    use super::external::EXTERNAL_ALIGNMENT;
    use super::*;
    use crate::names;
    use crate::onnx::{DataLocation, TensorProto};
    use crate::{build_model, GptConfig, GraphOptions, RandomInit};

    #[test]
    fn streamed_encoding_decodes_to_the_same_model() {
        let model = small_model(GraphOptions { kv_cache: true, ..Default::default() });
        let mut streamed = Vec::new();
        encode_to(&model, &mut streamed).unwrap();
        assert_eq!(streamed.len(), model.encoded_len());
        assert_eq!(ModelProto::decode(streamed.as_slice()).unwrap(), model);
    }

    fn small_model(options: GraphOptions) -> ModelProto {
        let config = GptConfig {
            vocab_size: 50,
            context_length: 8,
            emb_dim: 8,
            n_heads: 2,
            n_layers: 1,
            drop_rate: 0.0,
            qkv_bias: true,
        };
        build_model(&config, options, &mut RandomInit { seed: 3 }, Some(3)).unwrap()
    }

    #[test]
    fn external_data_reads_back_to_the_same_weights() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let model = small_model(GraphOptions { kv_cache: true, ..Default::default() });
        let data = write_model(&path, &model, WeightLayout::External).unwrap().unwrap();
        assert_eq!(data, dir.path().join("m.onnx.data"));

        let stub = read_model(&path).unwrap();
        let external: Vec<&TensorProto> = stub
            .graph
            .iter()
            .flat_map(|g| &g.initializer)
            .filter(|t| t.data_location == DataLocation::External as i32)
            .collect();
        // wte [50, 8] is 1600 bytes: out; the biases [8] are 32 bytes: in.
        assert!(external.iter().any(|t| t.name == names::TOKEN_EMBEDDING));
        assert!(!external.iter().any(|t| t.name.ends_with(".bias")));
        for t in &external {
            assert!(t.float_data.is_empty() && t.raw_data.is_empty());
            let offset = t.external_data.iter().find(|e| e.key == "offset").unwrap();
            assert_eq!(offset.value.parse::<u64>().unwrap() % EXTERNAL_ALIGNMENT, 0);
        }
        assert!(
            float_initializers(&stub).is_err(),
            "values of external tensors are not in the stub"
        );

        let header_of = |p: &Path| stored_header_of_bytes(p, &std::fs::read(p).unwrap()).unwrap();
        assert!(header_of(&path).external_data);
        let inline = dir.path().join("inline.onnx");
        write_model(&inline, &model, WeightLayout::Auto).unwrap();
        assert!(!header_of(&inline).external_data);
        assert_eq!(header_of(&inline).config, header_of(&path).config);
        let options = GraphOptions { kv_cache: true, ..Default::default() };
        assert_eq!(stored_options(&stub).unwrap().unwrap(), options);

        let loaded = read_model_with_data(&path).unwrap();
        assert_eq!(float_initializers(&loaded).unwrap(), float_initializers(&model).unwrap());
    }

    /// The model at `path` rewritten without its record of its data, as other tools write it.
    fn forget_record(path: &Path) {
        let mut stub = read_model(path).unwrap();
        stub.metadata_props.retain(|p| !p.key.starts_with("gptc.external_data"));
        std::fs::write(path, encode(&stub)).unwrap();
    }

    #[test]
    fn damaged_external_data_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let model = small_model(GraphOptions::default());
        let data = write_model(&path, &model, WeightLayout::External).unwrap().unwrap();
        let bytes = std::fs::read(&data).unwrap();
        std::fs::write(&data, &bytes[..bytes.len() - 4]).unwrap();
        let err = read_model_with_data(&path).unwrap_err().to_string();
        let recorded = format!("{} bytes, and the model records {}", bytes.len() - 4, bytes.len());
        assert!(err.contains("m.onnx.data: does not belong to m.onnx") && err.contains(&recorded));
        // Without a record, the tensor's range is what is checked.
        forget_record(&path);
        let err = read_model_with_data(&path).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{err}");
        std::fs::remove_file(&data).unwrap();
        let err = read_model_with_data(&path).unwrap_err().to_string();
        assert!(err.contains("m.onnx.data"), "{err}");
    }

    #[test]
    fn a_model_records_its_data_file_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one.onnx"), dir.path().join("two.onnx"));
        let options = GraphOptions::default();
        let data_one = write_model(&one, &small_model(options), WeightLayout::External).unwrap();
        let config = stored_config(&small_model(options)).unwrap().unwrap();
        let other = build_model(&config, options, &mut RandomInit { seed: 4 }, Some(4)).unwrap();
        let data_two = write_model(&two, &other, WeightLayout::External).unwrap();
        let (data_one, data_two) = (data_one.unwrap(), data_two.unwrap());

        let bytes = std::fs::read(&data_one).unwrap();
        let header = stored_header(&one, map_input(&one).unwrap()).unwrap();
        let record = header.data_record.unwrap();
        assert_eq!(record.bytes, bytes.len() as u64);
        assert_eq!(record.xxh3, xxhash_rust::xxh3::xxh3_64(&bytes), "digested as written");
        let data = ExternalData::open(&one, &header).unwrap();
        assert_eq!(data.bytes(), bytes.len() as u64);
        data.verify().unwrap();

        // Same config, same size, other values: only the digest tells them apart.
        std::fs::copy(&data_two, &data_one).unwrap();
        let data = ExternalData::open(&one, &header).unwrap();
        let err = data.verify().unwrap_err().to_string();
        assert!(err.contains("does not belong to one.onnx (its XXH3 digest is"), "{err}");
        let err = read_model_with_data(&one).unwrap_err().to_string();
        assert!(err.contains("does not belong to one.onnx"), "{err}");

        // Writing a model read from another pair records its own data, not the old record.
        let two_read = read_model_with_data(&two).unwrap();
        write_model(&one, &two_read, WeightLayout::External).unwrap();
        let reread = read_model(&one).unwrap();
        let records = reread.metadata_props.iter().filter(|p| p.key.starts_with("gptc.external"));
        assert_eq!(records.count(), 2);
        read_model_with_data(&one).unwrap();
    }

    #[test]
    fn external_data_must_be_a_regular_file_beside_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let data =
            write_model(&path, &small_model(GraphOptions::default()), WeightLayout::External)
                .unwrap()
                .unwrap();
        std::fs::remove_file(&data).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&data).status().unwrap();
        assert!(made.success());
        let header = stored_header(&path, map_input(&path).unwrap()).unwrap();
        let err = ExternalData::open(&path, &header).err().unwrap().to_string();
        assert!(err.contains("m.onnx.data: not a regular file"), "{err}");
        let err = read_model_with_data(&path).unwrap_err().to_string();
        assert!(err.contains("m.onnx.data: not a regular file"), "{err}");

        let outside = StoredHeader { data_files: vec!["../m.onnx.data".into()], ..header };
        let err = ExternalData::open(&path, &outside).err().unwrap().to_string();
        assert!(err.contains("is not a file beside it"), "{err}");
    }
}
