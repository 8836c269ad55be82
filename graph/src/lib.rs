//! gptc-graph: GPT-2, Llama 3.2 and Qwen3 configurations compiled to ONNX models.
//!
//! Knows ONNX, not runtimes: anyone who only wants the `.onnx` file needs nothing else.

pub mod architecture;
pub mod book;
pub mod builder;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod family_checkpoint;
pub mod file;
/// The decoder's path from before it built more than GPT-2, kept so that code naming it
/// builds unchanged while it moves to [`decoder`].
#[doc(hidden)]
pub mod gpt2 {
    pub use crate::decoder::*;
}
mod layers;
pub mod llama;
pub mod names;
pub mod onnx;
pub mod pth;
pub mod quant;
pub mod qwen3;
pub mod rng;
pub mod weights;

pub use builder::{Precision, Quantization};
pub use config::{Family, GptConfig, ModelConfig, ParameterCount, WeightDtype};
pub use decoder::{build_model, io_signature, GraphOptions, TensorSignature};
pub use llama::LlamaConfig;
pub use qwen3::Qwen3Config;
pub use weights::{Init, NamedTensor, RandomInit, Recording, TensorMap, WeightSource};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("weight `{name}`: used by the model but missing from the checkpoint")]
    MissingWeight { name: String },
    #[error("weight `{name}`: shape {found:?}, expected {expected:?}")]
    WeightShape { name: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("weight `{name}`: in the checkpoint but not used by the model")]
    UnusedWeight { name: String },
    /// A weight that is there but cannot be read as one: its dtype, its data, where it lives.
    #[error("weight `{name}`: {reason}")]
    Weight { name: String, reason: String },
    /// A file that could not be read or written (the OS error is in the message, not a source,
    /// so a chained report says it once).
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: not a readable ONNX model ({reason})", path.display())]
    NotOnnx { path: PathBuf, reason: String },
    #[error("{}: not a safetensors file ({reason})", path.display())]
    NotSafetensors { path: PathBuf, reason: String },
    /// A node of a model that ONNX Runtime would refuse, or that gptc cannot run.
    #[error("node `{node}`: {reason}")]
    Node { node: String, reason: String },
    /// A checkpoint file that cannot be read as one: its format, its archive, its pickle.
    #[error("{}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    /// The system refused a resource (a thread, under a process limit).
    #[error("{0}")]
    System(String),
}

pub type Result<T> = std::result::Result<T, Error>;
