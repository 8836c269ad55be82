//! Loading a model on a runtime: from a file (its stored config read without decoding its
//! weights), or compiled in memory (staged as external data when over protobuf's limit).

use std::path::{Path, PathBuf};

use gptc_graph::file::{self, StagingDir, WeightLayout};
use gptc_graph::{GraphOptions, ModelConfig};

use super::ort::{Device, OrtRuntime};
use super::tract::TractRuntime;
use super::Runtime;
use crate::model::{compile, ConfigSpec, Weights};
use crate::progress::Progress;
use crate::{memory, Result};

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// tract: pure Rust, CPU, nothing to install.
    Tract,
    /// ONNX Runtime, on the CPU or CUDA.
    Ort(Device),
}

impl RuntimeKind {
    fn label(self) -> &'static str {
        match self {
            RuntimeKind::Tract => "tract",
            RuntimeKind::Ort(_) => "ONNX Runtime",
        }
    }
}

/// Where the model comes from.
pub enum ModelSource<'a> {
    /// An exported file; `config` is used only when the file stores none.
    File { path: &'a Path, config: &'a ConfigSpec },
    /// Compiled in memory, as `compile` would.
    Compile { config: &'a ConfigSpec, weights: &'a Weights, options: GraphOptions },
}

/// A runtime ready to generate, with the model's config.
pub struct Loaded {
    pub runtime: Box<dyn Runtime>,
    pub config: ModelConfig,
    /// Why the model runs on the CPU although CUDA was asked for (`Device::Auto`).
    pub fallback: Option<String>,
}

/// Loads `source` on `kind`.
pub fn load(source: ModelSource, kind: RuntimeKind) -> Result<Loaded> {
    match source {
        ModelSource::File { path, config } => load_file(path, config, kind),
        ModelSource::Compile { config, weights, options } => {
            let compiled = compile(config, weights, options)?;
            let config = compiled.config;
            let model = compiled.model;
            if !file::needs_external_data(&model) {
                let bytes = file::encode(&model);
                drop(model);
                return loaded(from_bytes(&bytes, kind)?, config);
            }
            // Over protobuf's limit the runtimes read weights only as external data, from files.
            let dir = StagingDir::new()?;
            let path = dir.0.join("model.onnx");
            let progress = Progress::bytes("staging external data", file::tensor_bytes(&model));
            let written = |n| progress.advance(n);
            file::write_model_observed(&path, &model, WeightLayout::External, &written)?;
            drop(model);
            drop(progress);
            loaded(from_path(&path, kind)?, config)
        }
    }
}

fn load_file(path: &Path, spec: &ConfigSpec, kind: RuntimeKind) -> Result<Loaded> {
    let model = ModelFile::open(path, Use::Load)?;
    let config = spec.for_model_file(model.header.config.clone(), path, false)?;
    model.header.check_tables(&config)?;
    // A self-contained file loads from the bytes that were checked; one with external data
    // loads by path, so the runtime finds its data (checked above) beside it.
    if model.header.external_data {
        drop(model);
        return loaded(from_path(path, kind)?, config);
    }
    loaded(from_bytes(&model.bytes, kind)?, config)
}

/// What a command does with a model file, which sets the memory it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// Decoded by gptc (`inspect`): the model file once more, while its tensors are copied out.
    Decode,
    /// Loaded on a runtime, the external data with it ([`memory::LOAD_FACTOR`]).
    Load,
    /// Both (`check`: gptc reads the graph, tract analyses it).
    DecodeAndLoad,
}

impl Use {
    fn bytes_needed(self, model: u64, data: u64) -> u64 {
        // Decoding copies each tensor out of the mapped file; vectors growing as they are
        // decoded may hold up to twice their bytes.
        let decode = model.saturating_mul(2);
        let load = model.saturating_add(data).saturating_mul(memory::LOAD_FACTOR);
        match self {
            Use::Decode => decode,
            Use::Load => load,
            Use::DecodeAndLoad => decode.saturating_add(load),
        }
    }
}

/// A model file ready to be read: opened through the input guard and mapped (nothing read or
/// allocated yet), its header decoded in place (a file that is not an ONNX model is refused on
/// its first bytes), its external data files opened through the same guard and held to the
/// model's record of them, and what reading it takes weighed against the memory this machine
/// has, before any of its body or its data is read.
pub(crate) struct ModelFile {
    pub path: PathBuf,
    pub bytes: prost::bytes::Bytes,
    pub header: file::StoredHeader,
}

impl ModelFile {
    pub(crate) fn open(path: &Path, use_: Use) -> Result<ModelFile> {
        let bytes = file::map_input(path)?;
        let header = file::stored_header(path, bytes.clone())?;
        let data = file::ExternalData::open(path, &header)?;
        memory::check_fits(use_.bytes_needed(bytes.len() as u64, data.bytes()))?;
        // Every reader refuses a data file that is not its model's. Reading it through costs
        // little beside loading it (measured on gpt2-large: see the README's external data).
        data.verify()?;
        Ok(ModelFile { path: path.to_path_buf(), bytes, header })
    }

    /// The whole model as stored (external tensors as references).
    pub(crate) fn decode(&self) -> Result<gptc_graph::onnx::ModelProto> {
        Ok(file::decode_model(&self.path, &self.bytes)?)
    }
}

fn loaded(
    (runtime, fallback): (Box<dyn Runtime>, Option<String>),
    config: ModelConfig,
) -> Result<Loaded> {
    // Whatever the precision or quantization, a head narrower than the vocabulary would leave
    // ids unreachable, a wider one would produce ids the tokenizer does not have.
    if let Some(width) = runtime.logits_width().filter(|&w| w != config.vocab_size()) {
        return Err(crate::Error::Model(format!(
            "the model's logits hold {width} values a position, but its config's vocabulary is {}",
            config.vocab_size()
        )));
    }
    Ok(Loaded { runtime, config, fallback })
}

type Opened = (Box<dyn Runtime>, Option<String>);

fn from_path(path: &Path, kind: RuntimeKind) -> Result<Opened> {
    let _progress = spinner(&format!("loading {}", path.display()), kind);
    Ok(match kind {
        RuntimeKind::Tract => (Box::new(TractRuntime::from_path(path)?), None),
        RuntimeKind::Ort(device) => ort_opened(OrtRuntime::from_path(path, device)?),
    })
}

fn from_bytes(bytes: &[u8], kind: RuntimeKind) -> Result<Opened> {
    let _progress = spinner("loading the model", kind);
    Ok(match kind {
        RuntimeKind::Tract => (Box::new(TractRuntime::from_bytes(bytes)?), None),
        RuntimeKind::Ort(device) => ort_opened(OrtRuntime::from_bytes(bytes, device)?),
    })
}

fn ort_opened(runtime: OrtRuntime) -> Opened {
    let fallback = runtime.fallback().map(String::from);
    (Box::new(runtime), fallback)
}

fn spinner(what: &str, kind: RuntimeKind) -> Progress {
    Progress::spinner(&format!("{what} ({}: parse, optimize, plan)", kind.label()))
}
