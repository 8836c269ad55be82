//! The kernel's layout of a 4-bit matrix: one stream, read front to back.

use std::sync::Arc;

use gptc_graph::quant::{Int4Matrix, BLOB, BLOCK};
use tract_onnx::tract_core::internal::*;

/// Two blocks: the unit of the kernel's loads.
pub(super) const PAIR: usize = 2 * BLOCK;

/// Output rows a kernel pass computes together, sharing each activation load.
pub(super) const ROWS: usize = 4;

/// Bytes of one pair of blocks of a group of [`ROWS`] rows: their codes, then their scales.
pub(super) const STRIDE: usize = ROWS * (PAIR / 2) + ROWS * 2 * 2;

/// A `[n, k]` 4-bit matrix laid out for the kernel as one stream read front to back: rows in
/// groups of [`ROWS`], and per group and pair of blocks, each row's 32 bytes of codes and then
/// the 8 scales in float16 (row by row, block by block: a tenth fewer bytes than float32, and
/// gptc's scales are float16-exact; for others this is the rounding tract's own path makes). A
/// block's 16 bytes hold its first 16 codes in the low nibbles and its last 16 in the high ones
/// (MatMulNBits interleaves them), so one 32-byte load of a pair splits into the pair's first
/// halves and second halves. Rows of an odd number of blocks end with a zero block, groups with
/// zero rows, both of scale zero.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Int4Weights {
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) pairs: usize,
    pub(super) stream: Vec<u8>,
}

impl Int4Weights {
    pub fn new(q: &Int4Matrix) -> Int4Weights {
        let blocks = q.k / BLOCK;
        let pairs = blocks.div_ceil(2);
        let mut stream = vec![0u8; q.n.div_ceil(ROWS) * pairs * STRIDE];
        for row in 0..q.n {
            let (group, r) = (row / ROWS, row % ROWS);
            for b in 0..blocks {
                let (pair, half) = (b / 2, b % 2);
                let at = (group * pairs + pair) * STRIDE;
                let code = |i: usize| q.code(row, b * BLOCK + i);
                let out = &mut stream[at + r * PAIR / 2 + half * BLOB..][..BLOB];
                for (j, byte) in out.iter_mut().enumerate() {
                    *byte = code(j) | (code(j + BLOB) << 4);
                }
                let scale = half::f16::from_f32(q.scales[row * blocks + b]).to_le_bytes();
                stream[at + ROWS * PAIR / 2 + (r * 2 + half) * 2..][..2].copy_from_slice(&scale);
            }
        }
        Int4Weights { k: q.k, n: q.n, pairs, stream }
    }

    /// The matrices one under the other (`n` the sum of theirs), if they share `k` and each
    /// fills whole groups of rows.
    pub(super) fn stack(parts: &[Arc<Int4Weights>]) -> Option<Int4Weights> {
        let first = parts.first()?;
        let fits = parts.iter().all(|p| p.k == first.k && p.n.is_multiple_of(ROWS));
        fits.then(|| Int4Weights {
            k: first.k,
            n: parts.iter().map(|p| p.n).sum(),
            pairs: first.pairs,
            stream: parts.iter().flat_map(|p| p.stream.iter().copied()).collect(),
        })
    }
}
