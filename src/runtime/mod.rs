//! The runtimes that execute an exported model, behind one small trait: the decoding driver
//! does not know which one it drives.

pub mod tract;

use ndarray::{Array2, Array3};

use crate::Result;

pub trait Runtime {
    /// A short name for reports: `tract`, `ort-cpu`, ...
    fn name(&self) -> String;

    /// One forward pass: `input_ids` `[batch, seq]` -> logits `[batch, seq, vocab]`.
    fn forward(&mut self, input_ids: &Array2<i64>) -> Result<Array3<f32>>;
}
