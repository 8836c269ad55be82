//! Loading a model on a runtime: from a file (its stored config read without decoding its
//! weights), or compiled in memory (staged as external data when over protobuf's limit).

use std::path::{Path, PathBuf};

use gptc_graph::file::{self, WeightLayout};
use gptc_graph::{GptConfig, GraphOptions};

use super::ort::{Device, OrtRuntime};
use super::tract::TractRuntime;
use super::Runtime;
use crate::model::{compile, ConfigSpec, Weights};
use crate::progress::Progress;
use crate::{memory, Error, Result};

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
    pub config: GptConfig,
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
    let file_error = |source| Error::File { path: path.to_path_buf(), error: source };
    let model_size = std::fs::metadata(path).map(|m| m.len()).map_err(file_error)?;
    memory::check_fits(memory::LOAD_FACTOR * model_size)?;
    let bytes = prost::bytes::Bytes::from(file::read_input(path, u64::MAX)?);
    let header = file::stored_header(path, bytes.clone())?;
    let mut data_size = 0;
    for name in &header.data_files {
        let data = path.with_file_name(name);
        let meta =
            std::fs::metadata(&data).map_err(|error| Error::File { path: data.clone(), error })?;
        if !meta.is_file() {
            let not_file =
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
            return Err(Error::File { path: data, error: not_file });
        }
        data_size += meta.len();
    }
    memory::check_fits(memory::LOAD_FACTOR * (model_size + data_size))?;
    let config = spec.for_model_file(header.config.clone(), path, false)?;
    header.check_tables(&config)?;
    // The file was read once: a self-contained one loads from those bytes; one with external
    // data loads by path, so the runtime finds its data beside it.
    if header.external_data {
        drop(bytes);
        return loaded(from_path(path, kind)?, config);
    }
    loaded(from_bytes(&bytes, kind)?, config)
}

fn loaded(
    (runtime, fallback): (Box<dyn Runtime>, Option<String>),
    config: GptConfig,
) -> Result<Loaded> {
    // Whatever the precision or quantization, a head narrower than the vocabulary would leave
    // ids unreachable, a wider one would produce ids the tokenizer does not have.
    if let Some(width) = runtime.logits_width().filter(|&w| w != config.vocab_size) {
        return Err(crate::Error::Model(format!(
            "the model's logits hold {width} values a position, but its config's vocabulary is {}",
            config.vocab_size
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

/// A private folder in the temp dir, removed with everything in it when dropped.
pub(crate) struct StagingDir(pub PathBuf);

impl StagingDir {
    pub(crate) fn new() -> Result<StagingDir> {
        let dir = std::env::temp_dir().join(format!("gptc-{}", std::process::id()));
        file::create_temporary_dir(&dir)?;
        Ok(StagingDir(dir))
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        file::unregister_temporary(&self.0);
    }
}
