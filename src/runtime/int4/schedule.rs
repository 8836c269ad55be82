//! A matmul shared with the crew: a decode step in chunks of output rows, a prompt in blocks
//! of its own rows.

use super::kernels::{kernel, Dots, Int8Row};
use super::weights::{Int4Weights, ROWS, STRIDE};
use crate::runtime::crew::{crew, Crew};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// A chunk of work for one thread: about 2 microseconds, so a helper that starts late or a core
/// that runs slow delays the end of a matmul by little.
const CHUNK_WEIGHTS: usize = 1 << 16;

/// For a prompt: activation rows a chunk takes (their int8 codes and scales, 1.5 KB each at
/// k = 768, stay in the first-level cache while every group of weights passes over them).
const PROMPT_ROWS: usize = 16;

impl Int4Weights {
    /// `y = x W^T` for `m` rows `x` of `k` values into `y` of `m` rows of `n`, with `x` quantized
    /// to int8. Each chunk of output rows reads its weights once for all `m` rows (they stay in
    /// the core's cache), and the chunks are shared with the crew.
    pub fn matmul(&self, x: &[f32], y: &mut [f32]) -> TractResult<()> {
        self.matmul_on(crew(), kernel(), x, y)
    }

    pub(super) fn matmul_on(
        &self,
        crew: &Crew,
        dots: Dots,
        x: &[f32],
        y: &mut [f32],
    ) -> TractResult<()> {
        let (k, n) = (self.k, self.n);
        ensure!(k > 0 && n > 0, "GptcInt4MatMul: a [{k}, {n}] matrix");
        let m = x.len() / k;
        ensure!(
            x.len() == m * k && y.len() == m * n,
            "GptcInt4MatMul: {} inputs and {} outputs for [{m}, {k}] x [{k}, {n}]",
            x.len(),
            y.len()
        );
        if m == 0 {
            return Ok(());
        }
        let group_bytes = self.pairs * STRIDE;
        let group = |g: usize| &self.stream[g * group_bytes..][..group_bytes];
        let failed = || format_err!("GptcInt4MatMul: a thread of the kernel failed");
        if m >= 2 * PROMPT_ROWS {
            // A prompt: blocks of its rows, each quantized by the thread that takes it and passed
            // over every group of weights; each block writes its own rows of `y`.
            let work = |block: usize, ys: &mut [f32]| {
                let xs = &x[block * PROMPT_ROWS * k..][..ys.len() / n * k];
                let rows: Vec<Int8Row> = xs.chunks_exact(k).map(Int8Row::quantize).collect();
                for g in 0..n.div_ceil(ROWS) {
                    let width = ROWS.min(n - g * ROWS);
                    for (r, row) in rows.iter().enumerate() {
                        let values = dots(group(g), row);
                        ys[r * n + g * ROWS..][..width].copy_from_slice(&values[..width]);
                    }
                }
            };
            return crew.run_on_chunks(y, PROMPT_ROWS * n, work).then_some(()).ok_or_else(failed);
        }
        // A decode step (one row, or one per sequence of a batch): chunks of weight groups, each
        // passing the rows over its weights. One row writes `y` in place; several write each
        // weight row's results side by side, transposed at the end.
        let rows: Vec<Int8Row> = x.chunks_exact(k).map(Int8Row::quantize).collect();
        let groups_per_chunk = (CHUNK_WEIGHTS / (ROWS * k * m)).max(1);
        let mut by_weight_row = vec![0f32; if m == 1 { 0 } else { m * n }];
        let out = if m == 1 { &mut *y } else { &mut by_weight_row[..] };
        let work = |chunk: usize, slot: &mut [f32]| {
            for (g, results) in slot.chunks_mut(ROWS * m).enumerate() {
                let group = group(chunk * groups_per_chunk + g);
                for (r, row) in rows.iter().enumerate() {
                    let values = dots(group, row);
                    for (i, value) in values.iter().take(results.len() / m).enumerate() {
                        results[i * m + r] = *value;
                    }
                }
            }
        };
        if !crew.run_on_chunks(out, groups_per_chunk * ROWS * m, work) {
            return Err(failed());
        }
        if m > 1 {
            for (j, results) in by_weight_row.chunks_exact(m).enumerate() {
                for (r, &value) in results.iter().enumerate() {
                    y[r * n + j] = value;
                }
            }
        }
        Ok(())
    }
}
