//! A matmul shared with the crew: the activations quantized once, then chunks of panels, each
//! passed over every activation row.

use super::kernels::{kernel, Int8Block, Kernel, PASS_ROWS};
use super::weights::{Int4Weights, PANEL};
use crate::runtime::addends::Addends;
use crate::runtime::crew::{crew, Crew, DisjointColumns};
use gptc_graph::quant::BLOCK;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Multiply-adds a chunk of work takes, at least: about 2 microseconds of a decode step, so a
/// helper that starts late or a core that runs slow delays the end of a matmul by little.
const CHUNK_WORK: usize = 1 << 16;

/// Rows of activations a chunk of their quantization takes.
const QUANTIZE_ROWS: usize = 16;

impl Int4Weights {
    /// `y = x W^T (+ adds)` for `m` rows `x` of `k` values into `y` of `m` rows of `n`, with `x`
    /// quantized to int8. Each panel's weights are read once for all `m` rows (they stay in the
    /// core's cache while the rows pass over them), and the panels are shared with the crew.
    pub fn matmul(&self, x: &[f32], adds: Addends, y: &mut [f32]) -> TractResult<()> {
        self.matmul_on(crew(), kernel(), x, adds, y)
    }

    pub(super) fn matmul_on(
        &self,
        crew: &Crew,
        kernel: Kernel,
        x: &[f32],
        adds: Addends,
        y: &mut [f32],
    ) -> TractResult<()> {
        let (k, n, blocks) = (self.k, self.n, self.blocks);
        let m = adds.checked_rows("GptcInt4MatMul", [k, n], x, y)?;
        ensure!(blocks * BLOCK == k, "GptcInt4MatMul: {blocks} blocks of {BLOCK} for k = {k}");
        if m == 0 {
            return Ok(());
        }
        let failed = || format_err!("GptcInt4MatMul: a thread of the kernel failed");
        // Rows past `m` are zero blocks, so every pass reads whole [`PASS_ROWS`].
        let mut quantized = vec![Int8Block::ZERO; m.next_multiple_of(PASS_ROWS) * blocks];
        let quantize = |chunk: usize, out: &mut [Int8Block]| {
            let values = &x[chunk * QUANTIZE_ROWS * k..][..out.len() * BLOCK];
            for (block, values) in out.iter_mut().zip(values.chunks_exact(BLOCK)) {
                *block = Int8Block::quantize(values);
            }
        };
        match m < QUANTIZE_ROWS {
            true => quantize(0, &mut quantized[..m * blocks]),
            false => {
                let done = crew.run_on_chunks(
                    &mut quantized[..m * blocks],
                    QUANTIZE_ROWS * blocks,
                    quantize,
                );
                ensure!(done, failed());
            }
        }
        let panels_per_chunk = (CHUNK_WORK / (PANEL * k * m)).max(1);
        let out = DisjointColumns::new(y);
        let chunk = |c: usize| {
            let first = c * panels_per_chunk;
            for p in first..self.panels().min(first + panels_per_chunk) {
                let panel = self.panel(p);
                let (column, width) = (p * PANEL, PANEL.min(n - p * PANEL));
                for r0 in (0..m).step_by(PASS_ROWS) {
                    let rows = PASS_ROWS.min(m - r0);
                    let mut products =
                        kernel(panel, &quantized[r0 * blocks..][..PASS_ROWS * blocks], rows);
                    adds.add_to(&mut products[..rows], r0, column, width, n);
                    for (r, products) in products.iter().enumerate().take(rows) {
                        // SAFETY: panel `p`'s columns, which only the chunk of panel `p` writes.
                        unsafe { out.write((r0 + r) * n + column, &products[..width]) };
                    }
                }
            }
        };
        ensure!(crew.run(self.panels().div_ceil(panels_per_chunk), &chunk), failed());
        Ok(())
    }
}
