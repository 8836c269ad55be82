//! gptc: GPT-2 compiled to ONNX, and text generated with it on tract or ONNX Runtime.
//!
//! Knows runtimes, not ONNX internals: graphs come from the `gptc-graph` crate.

pub mod bench;
pub mod check;
pub mod generate;
pub mod inspect;
pub mod progress;
pub mod reference;
pub mod runtime;
pub mod sampling;
pub mod stream;
pub mod tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Graph(#[from] gptc_graph::Error),
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Peak resident memory of this process so far, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The message of a caught panic, for reporting it as an error.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
