//! The kernels' layout of a 4-bit matrix: panels of 16 rows, one stream read front to back.

use std::sync::Arc;

use gptc_graph::quant::{Int4Matrix, BLOB, BLOCK};

/// Weight rows of a panel: one per 32-bit lane of a 512-bit register.
pub(super) const PANEL: usize = 16;

/// Bytes of one block of a panel: the codes, four registers of sixteen dwords, then the
/// sixteen rows' scales in float16.
pub(super) const PANEL_BLOCK: usize = CODE_BYTES + PANEL * 2;

/// Bytes of codes in one block of a panel.
pub(super) const CODE_BYTES: usize = 4 * PANEL * 4;

/// A `[n, k]` 4-bit matrix laid out for the kernels as one stream read front to back: panels of
/// [`PANEL`] rows, and per panel and block of 32 inputs, four registers of codes (lane `r` of
/// register `i` is dword `i` of row `r`'s 16 bytes, whose low nibbles are codes `4i..4i+4` and
/// high nibbles codes `16+4i..16+4i+4`) and then the rows' scales in float16 (a tenth fewer bytes
/// than float32; gptc's scales are float16-exact, for others this is the rounding tract's own
/// path makes). One `vpdpbusd` multiplies four codes of sixteen rows by four activations, so a
/// lane sums its row's whole block and one multiply-add by the scales serves sixteen outputs.
/// Rows past `n` are zero, of scale zero.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Int4Weights {
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) blocks: usize,
    pub(super) stream: Vec<u8>,
}

impl Int4Weights {
    pub fn new(q: &Int4Matrix) -> Int4Weights {
        let blocks = q.k / BLOCK;
        let mut stream = vec![0u8; q.n.div_ceil(PANEL) * blocks * PANEL_BLOCK];
        for row in 0..q.n {
            let (panel, lane) = (row / PANEL, row % PANEL);
            for b in 0..blocks {
                let at = (panel * blocks + b) * PANEL_BLOCK;
                let code = |i: usize| q.code(row, b * BLOCK + i);
                for i in 0..BLOB {
                    let (dword, byte) = (i / 4, i % 4);
                    stream[at + (dword * PANEL + lane) * 4 + byte] =
                        code(i) | (code(i + BLOB) << 4);
                }
                let scale = half::f16::from_f32(q.scales[row * blocks + b]).to_le_bytes();
                stream[at + CODE_BYTES + lane * 2..][..2].copy_from_slice(&scale);
            }
        }
        Int4Weights { k: q.k, n: q.n, blocks, stream }
    }

    pub(super) fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Panel `p`'s blocks.
    pub(super) fn panel(&self, p: usize) -> &[u8] {
        &self.stream[p * self.blocks * PANEL_BLOCK..][..self.blocks * PANEL_BLOCK]
    }

    /// The matrices one under the other (`n` the sum of theirs), if they share `k` and each
    /// fills whole panels.
    pub(super) fn stack(parts: &[Arc<Int4Weights>]) -> Option<Int4Weights> {
        let first = parts.first()?;
        let fits = parts.iter().all(|p| p.k == first.k && p.n.is_multiple_of(PANEL));
        fits.then(|| Int4Weights {
            k: first.k,
            n: parts.iter().map(|p| p.n).sum(),
            blocks: first.blocks,
            stream: parts.iter().flat_map(|p| p.stream.iter().copied()).collect(),
        })
    }
}
