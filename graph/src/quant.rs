//! 4-bit weights, as ONNX Runtime's `com.microsoft.MatMulNBits` stores them: round to nearest,
//! per block of 32 along the input dimension, symmetric (zero point 8, so `w = (q - 8) s`).
//!
//! For a linear layer `y = x W` with `W` `[K, N]` (K inputs, N outputs), the op wants `W^T`:
//! `B` is `[N, K/32, 16]` bytes, each byte two weights of one block (the even-indexed one in the
//! low nibble), and `scales` is `[N * K/32]`. Each block's scale maps its largest-magnitude
//! weight to -8 (the full signed range, as ONNX Runtime's quantizer and GGML's Q4_0 do), and is
//! rounded to float16 first: tract keeps scales as float16, so a float16-exact scale makes both
//! runtimes dequantize to the same weights.

/// Weights per block.
pub const BLOCK: usize = 32;
/// Bytes per block: two 4-bit weights a byte.
pub const BLOB: usize = BLOCK / 2;

/// A matrix quantized to 4 bits per weight, stored transposed (`[N, K]`) in blocks along K.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Matrix {
    /// Inputs (the contracted dimension), a multiple of [`BLOCK`].
    pub k: usize,
    /// Outputs.
    pub n: usize,
    /// `[n, k / BLOCK, BLOB]`.
    pub blocks: Vec<u8>,
    /// `[n * k / BLOCK]`, each exactly representable in float16.
    pub scales: Vec<f32>,
}

impl Int4Matrix {
    /// The matrix of stored blocks `[n, k / 32, 16]` and scales `[n * k / 32]`, if they agree.
    pub fn from_stored(dims: &[usize], blocks: Vec<u8>, scales: Vec<f32>) -> Option<Int4Matrix> {
        let [n, per_row, blob] = dims[..] else { return None };
        let agree =
            blob == BLOB && blocks.len() == n * per_row * BLOB && scales.len() == n * per_row;
        agree.then_some(Int4Matrix { k: per_row * BLOCK, n, blocks, scales })
    }

    /// Quantizes `w`, `[k, n]` row-major (HF's `[in, out]` Conv1D layout), or with
    /// `transposed`, `[n, k]` (an embedding table used as the output head).
    pub fn quantize(w: &[f32], k: usize, n: usize, transposed: bool) -> Int4Matrix {
        assert!(k.is_multiple_of(BLOCK) && w.len() == k * n, "checked by the caller");
        let at =
            |row: usize, col: usize| if transposed { w[row * k + col] } else { w[col * n + row] };
        let per_row = k / BLOCK;
        let mut blocks = vec![0u8; n * per_row * BLOB];
        let mut scales = vec![0f32; n * per_row];
        for row in 0..n {
            for b in 0..per_row {
                let values: Vec<f32> = (0..BLOCK).map(|i| at(row, b * BLOCK + i)).collect();
                let extreme =
                    values.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let scale = half::f16::from_f32(extreme / -8.0).to_f32();
                let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
                let code = |v: f32| ((v * inverse).round() + 8.0).clamp(0.0, 15.0) as u8;
                let blob = &mut blocks[(row * per_row + b) * BLOB..][..BLOB];
                for (byte, pair) in blob.iter_mut().zip(values.chunks_exact(2)) {
                    *byte = code(pair[0]) | (code(pair[1]) << 4);
                }
                scales[row * per_row + b] = scale;
            }
        }
        Int4Matrix { k, n, blocks, scales }
    }

    /// The 4-bit code (0..15) of input `col` of output `row`: even inputs in a byte's low nibble.
    pub fn code(&self, row: usize, col: usize) -> u8 {
        let byte = self.blocks[(row * (self.k / BLOCK) + col / BLOCK) * BLOB + col % BLOCK / 2];
        (byte >> (4 * (col % 2))) & 0x0f
    }

    /// The weights the stored blocks mean, `[k, n]` row-major (or `[n, k]` with `transposed`):
    /// what both runtimes compute with.
    pub fn dequantize(&self, transposed: bool) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let per_row = k / BLOCK;
        let mut w = vec![0f32; k * n];
        for row in 0..n {
            for col in 0..k {
                let scale = self.scales[row * per_row + col / BLOCK];
                let value = (self.code(row, col) as f32 - 8.0) * scale;
                let at = if transposed { row * k + col } else { col * n + row };
                w[at] = value;
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_to_nearest_within_half_a_step_and_the_extreme_exact() {
        let (k, n) = (64, 3);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 7919 % 201) as f32 - 100.0) / 1000.0).collect();
        let q = Int4Matrix::quantize(&w, k, n, false);
        assert_eq!((q.blocks.len(), q.scales.len()), (n * 2 * BLOB, n * 2));
        let back = q.dequantize(false);
        for (row, col) in (0..n).flat_map(|r| (0..k).map(move |c| (r, c))) {
            let scale = q.scales[row * 2 + col / BLOCK];
            let (orig, got) = (w[col * n + row], back[col * n + row]);
            // Codes span -8..7 steps: the extreme maps to -8 exactly, and only values past 7.5
            // steps on the other side are clamped to 7.
            let clamped = orig / scale >= 7.5 && got == 7.0 * scale;
            assert!(
                (orig - got).abs() <= scale.abs() / 2.0 + 1e-7 || clamped,
                "{orig} vs {got} (step {scale})"
            );
        }
        // Every scale is a float16 number, and each block's extreme comes back to within rounding.
        for s in &q.scales {
            assert_eq!(half::f16::from_f32(*s).to_f32(), *s);
        }
    }

    #[test]
    fn the_packing_is_onnx_runtimes() {
        // One block: weights -8..7 times 0.5 map to codes 0..15, packed low nibble first.
        let w: Vec<f32> = (0..32).map(|i| ((i % 16) as f32 - 8.0) * 0.5).collect();
        let q = Int4Matrix::quantize(&w, 32, 1, true);
        assert_eq!(q.scales, [0.5]);
        assert_eq!(q.blocks[..4], [0x10, 0x32, 0x54, 0x76]);
        assert_eq!(q.dequantize(true), w);
    }

    #[test]
    fn transposed_tables_quantize_by_rows() {
        let (k, n) = (32, 2);
        let w: Vec<f32> = (0..k * n).map(|i| i as f32 / 64.0).collect();
        let rows = Int4Matrix::quantize(&w, k, n, true);
        let columns: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        assert_eq!(Int4Matrix::quantize(&columns, k, n, false), rows);
    }
}
