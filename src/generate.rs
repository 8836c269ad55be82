//! Decoding outside the graph: the book's greedy loop.

use ndarray::{s, Array2};

use crate::reference::argmax;
use crate::runtime::Runtime;
use crate::Result;

/// Greedy decoding as the book's `generate_text_simple`: crop to the last `context_length`
/// tokens, run the model, take the last position's logits, append their argmax.
/// Returns only the new ids.
pub fn greedy(
    runtime: &mut dyn Runtime,
    prompt: &[i64],
    max_new_tokens: usize,
    context_length: usize,
) -> Result<Vec<i64>> {
    let mut ids = prompt.to_vec();
    for _ in 0..max_new_tokens {
        let window = &ids[ids.len().saturating_sub(context_length)..];
        let input = Array2::from_shape_vec((1, window.len()), window.to_vec())
            .expect("one row of window length");
        let logits = runtime.forward(&input)?;
        let last = logits.slice(s![0, -1, ..]);
        ids.push(argmax(last) as i64);
    }
    Ok(ids.split_off(prompt.len()))
}
