//! Decoding outside the graph. The driver does not know which runtime it drives; it only knows
//! whether the model keeps a KV cache.

use ndarray::{s, Array2, ArrayView1};

use crate::runtime::{Runtime, Step};
use crate::Result;

/// Fills the left of shorter prompts in a batch; masked out, so any valid id serves.
const PAD_ID: i64 = 0;

/// What `pick` decided for a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Append this token and go on.
    Token(i64),
    /// Append this token, then stop this row (e.g. it completed a stop string).
    Last(i64),
    /// Stop this row without appending (e.g. the end-of-text token).
    Stop,
}

/// Generates up to `max_new_tokens` for each prompt, choosing each token with `pick` from the
/// logits of the last position, until every row has stopped. Returns the new ids of each prompt.
///
/// Every row sees what the book's `generate_text_simple` sees: at most the last `context`
/// tokens, with positions counted from the start of that window. Without a cache the whole
/// window is run for every token, row by row. With a cache the prompts run once as a
/// left-padded batch (the prefill), then one token per row per step; when the cache would
/// outgrow the context, the cache is dropped and the cropped windows are prefilled again
/// (each later token then costs a prefill, exactly the work of the book's loop).
pub fn generate(
    runtime: &mut dyn Runtime,
    prompts: &[Vec<i64>],
    max_new_tokens: usize,
    context: usize,
    mut pick: impl FnMut(usize, ArrayView1<f32>) -> Result<Next>,
) -> Result<Vec<Vec<i64>>> {
    let mut sequences = prompts.to_vec();
    let mut done = vec![false; prompts.len()];
    // Applies a decision; a stopped row keeps its last token as the next input (its outputs
    // are no longer read), so the batch stays rectangular.
    let apply = |next: Next, sequence: &mut Vec<i64>, done: &mut bool| match next {
        Next::Token(id) => sequence.push(id),
        Next::Last(id) => {
            sequence.push(id);
            *done = true;
        }
        Next::Stop => *done = true,
    };
    if runtime.has_cache() {
        let mut cache = CacheState::default();
        for _ in 0..max_new_tokens {
            let (step, prefill) = cache.next_step(&sequences, context);
            if prefill {
                runtime.reset();
            }
            let logits = runtime.run(&step.as_step())?;
            for (row, sequence) in sequences.iter_mut().enumerate() {
                if !done[row] {
                    apply(pick(row, logits.slice(s![row, -1, ..]))?, sequence, &mut done[row]);
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
    } else {
        for (row, sequence) in sequences.iter_mut().enumerate() {
            for _ in 0..max_new_tokens {
                let window = &sequence[sequence.len().saturating_sub(context)..];
                let input_ids = Array2::from_shape_vec((1, window.len()), window.to_vec())
                    .expect("one row of window length");
                let logits = runtime.run(&Step::ids_only(&input_ids))?;
                apply(pick(row, logits.slice(s![0, -1, ..]))?, sequence, &mut done[row]);
                if done[row] {
                    break;
                }
            }
        }
    }
    Ok(sequences.iter().zip(prompts).map(|(all, prompt)| all[prompt.len()..].to_vec()).collect())
}

/// What the runtime's cache holds: `slots` positions per row (pads included), and the mask
/// and last position of each row.
#[derive(Default)]
struct CacheState {
    slots: usize,
    attention_mask: Vec<Vec<i64>>,
    last_position: Vec<i64>,
}

struct OwnedStep {
    input_ids: Array2<i64>,
    attention_mask: Array2<i64>,
    position_ids: Array2<i64>,
}

impl OwnedStep {
    fn as_step(&self) -> Step<'_> {
        Step {
            input_ids: &self.input_ids,
            attention_mask: Some(&self.attention_mask),
            position_ids: Some(&self.position_ids),
        }
    }
}

impl CacheState {
    /// The next run, and whether it is a prefill: every row's window when the cache is empty
    /// or full, otherwise each row's newest token.
    fn next_step(&mut self, sequences: &[Vec<i64>], context: usize) -> (OwnedStep, bool) {
        let batch = sequences.len();
        if self.slots == 0 || self.slots + 1 > context {
            let windows: Vec<&[i64]> =
                sequences.iter().map(|s| &s[s.len().saturating_sub(context)..]).collect();
            let width = windows.iter().map(|w| w.len()).max().unwrap_or(0);
            let mut input_ids = Array2::from_elem((batch, width), PAD_ID);
            let mut attention_mask = Array2::zeros((batch, width));
            let mut position_ids = Array2::zeros((batch, width));
            for (row, window) in windows.iter().enumerate() {
                let pad = width - window.len();
                for (i, &id) in window.iter().enumerate() {
                    input_ids[[row, pad + i]] = id;
                    attention_mask[[row, pad + i]] = 1;
                    position_ids[[row, pad + i]] = i as i64;
                }
            }
            self.slots = width;
            self.attention_mask = attention_mask.outer_iter().map(|r| r.to_vec()).collect();
            self.last_position = windows.iter().map(|w| w.len() as i64 - 1).collect();
            return (OwnedStep { input_ids, attention_mask, position_ids }, true);
        }
        self.slots += 1;
        for (mask, position) in self.attention_mask.iter_mut().zip(&mut self.last_position) {
            mask.push(1);
            *position += 1;
        }
        let input_ids = Array2::from_shape_fn((batch, 1), |(row, _)| {
            *sequences[row].last().expect("prompts are not empty")
        });
        let attention_mask =
            Array2::from_shape_fn((batch, self.slots), |(row, j)| self.attention_mask[row][j]);
        let position_ids = Array2::from_shape_fn((batch, 1), |(row, _)| self.last_position[row]);
        (OwnedStep { input_ids, attention_mask, position_ids }, false)
    }
}
