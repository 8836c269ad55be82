//! gptc-graph: GPT-2 configurations compiled to ONNX models.
//!
//! Knows ONNX, not runtimes: anyone who only wants the `.onnx` file needs nothing else.

pub mod book;
pub mod builder;
pub mod checkpoint;
pub mod config;
pub mod file;
pub mod gpt2;
pub mod names;
pub mod onnx;
pub mod pth;
pub mod quant;
pub mod rng;
pub mod weights;

pub use builder::{Precision, Quantization};
pub use config::{GptConfig, ParameterCount};
pub use gpt2::{build_model, io_signature, GraphOptions, TensorSignature};
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
