//! gptc-graph: GPT-2 configurations compiled to ONNX models.
//!
//! Knows ONNX, not runtimes: anyone who only wants the `.onnx` file needs nothing else.

pub mod builder;
pub mod checkpoint;
pub mod config;
pub mod file;
pub mod gpt2;
pub mod onnx;
pub mod rng;
pub mod weights;

pub use config::{GptConfig, ParameterCount};
pub use gpt2::{build_model, io_signature, GraphOptions, Precision, TensorSignature};
pub use weights::{Init, NamedTensor, RandomInit, Recording, TensorMap, WeightSource};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("weight `{name}`: {reason}")]
    Weight { name: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a readable ONNX model ({reason})", path.display())]
    NotOnnx { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;
