//! gptc: GPT-2, Llama 3.2 and Qwen3 compiled to ONNX, and text generated with them on tract or ONNX Runtime.
//!
//! Knows runtimes, not ONNX internals: graphs come from the `gptc-graph` crate. Everything the
//! `gptc` command does is a call here:
//!
//! ```no_run
//! use gptc::model::{compile, ConfigSpec, Weights};
//! use gptc::runtime::{load, ModelSource, RuntimeKind};
//! use gptc::session::{GenerationSettings, Prompt, Session};
//! use gptc_graph::GraphOptions;
//!
//! # fn main() -> gptc::Result<()> {
//! // Compile GPT-2 small with GPT-2's random init (seed 123) and write it.
//! let spec = ConfigSpec::preset("gpt2-small");
//! let weights = Weights::Random { seed: 123 };
//! let compiled = compile(&spec, &weights, GraphOptions { kv_cache: true, ..Default::default() })?;
//! gptc_graph::file::write_model(
//!     "models/gpt2-small.onnx".as_ref(),
//!     &compiled.model,
//!     Default::default(),
//! )?;
//!
//! // Load it on tract and generate ten greedy tokens.
//! let source = ModelSource::File { path: "models/gpt2-small.onnx".as_ref(), config: &spec };
//! let mut loaded = load(source, RuntimeKind::Tract)?;
//! let settings = GenerationSettings { max_new_tokens: 10, ..Default::default() };
//! let mut session = Session::new(loaded.runtime.as_mut(), &loaded.config, settings)?;
//! let prompts = session.encode(&[Prompt::Text("Hello, I am".into())], false)?;
//! let (completions, _stats) = session.run(&prompts, |_event| Ok(()))?;
//! println!("{}", completions[0].text());
//! # Ok(())
//! # }
//! ```

pub mod check;
pub mod folder;
pub mod generate;
pub mod inspect;
pub mod memory;
pub mod model;
pub mod progress;
pub mod runtime;
pub mod sampling;
pub mod session;
pub mod stream;
pub mod tokenizer;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The graph crate's: configs, weights, model files.
    #[error(transparent)]
    Graph(#[from] gptc_graph::Error),
    /// Bad input from the user: a prompt, token ids, a path.
    #[error("{0}")]
    Usage(String),
    /// A generation or bench setting out of its range (`setting` as the CLI spells its flag).
    #[error("{setting} {problem}")]
    Setting { setting: &'static str, problem: String },
    /// A model gptc cannot run as it is: inputs, outputs or tables not of gptc's layout.
    #[error("{0}")]
    Model(String),
    /// The runtime failed: its library is missing, or a load or a run failed.
    #[error("{0}")]
    Runtime(String),
    /// A model file without a gptc config in its metadata, and none given.
    #[error("{} has no gptc config in its metadata; say which model it is with a preset or a config", .0.display())]
    NoConfig(PathBuf),
    /// A bare `.safetensors` file, and no config saying which model it holds.
    #[error("{} is a bare .safetensors file: say which model it holds (a preset or a config)", .0.display())]
    CheckpointNeedsConfig(PathBuf),
    #[error("this needs about {:.1} GB of memory and this machine has {:.1} GB available", *.needed as f64 / 1e9, *.available as f64 / 1e9)]
    OutOfMemory { needed: u64, available: u64 },
    /// A file that could not be read or written (the OS error is in the message, not a source,
    /// so a chained report says it once).
    #[error("{}: {error}", path.display())]
    File { path: PathBuf, error: std::io::Error },
    /// Writing output (a closed pipe among others).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The message of a caught panic, for reporting it as an error.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
