//! gptc's own 4-bit matmul for tract, for `MatMulNBits` at accuracy level 4: what ONNX Runtime
//! computes there (activations quantized to int8 per block of 32, integer dot products against
//! the 4-bit codes, one float multiply a block), where tract's Q4_0 path unpacks every weight to
//! float32 at every step (BENCHMARKS.md: 19 G weights/s, 0.40x ONNX Runtime's decode).
//!
//! One activation row at a time: a decode step is one row, and a prefill of `m` rows reads the
//! weights `m` times, which at these sizes costs what tract's own path does. Rows of outputs are
//! spread over tract's thread pool. AVX2 where the CPU has it (checked at run time), else plain
//! Rust; both compute the same integers.

use std::sync::Arc;

use gptc_graph::quant::{Int4Matrix, BLOB, BLOCK};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Matrices of at least this many weights are split over tract's thread pool.
const POOLED_WEIGHTS: usize = 1 << 23;

/// A `[n, k]` 4-bit matrix laid out for the kernel: each block's 16 bytes hold its first 16
/// codes in the low nibbles and its last 16 in the high ones (MatMulNBits interleaves them).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Int4Weights {
    k: usize,
    n: usize,
    codes: Vec<u8>,
    /// Bit patterns of the float32 scales (`f32` is not `Eq`).
    scale_bits: Vec<u32>,
}

impl Int4Weights {
    pub fn new(q: &Int4Matrix) -> Int4Weights {
        let mut codes = vec![0u8; q.blocks.len()];
        for (block, out) in q.blocks.chunks_exact(BLOB).zip(codes.chunks_exact_mut(BLOB)) {
            let code = |i: usize| {
                let byte = block[i / 2];
                if i.is_multiple_of(2) {
                    byte & 0x0f
                } else {
                    byte >> 4
                }
            };
            for (j, byte) in out.iter_mut().enumerate() {
                *byte = code(j) | (code(j + BLOB) << 4);
            }
        }
        let scale_bits = q.scales.iter().map(|s| s.to_bits()).collect();
        Int4Weights { k: q.k, n: q.n, codes, scale_bits }
    }

    fn blocks(&self) -> usize {
        self.k / BLOCK
    }

    /// `y = x W^T` for one row `x` of `k` values into `y` of `n`, with `x` quantized to int8.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) -> TractResult<()> {
        let activations = Int8Row::quantize(x);
        let blocks = self.blocks();
        let avx2 = has_avx2();
        let rows = |first: usize, chunk: &mut [f32]| {
            for (j, out) in chunk.iter_mut().enumerate() {
                let row = first + j;
                let codes = &self.codes[row * blocks * BLOB..][..blocks * BLOB];
                let scales = &self.scale_bits[row * blocks..][..blocks];
                *out = if avx2 {
                    // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        dot_avx2(codes, scales, &activations)
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    dot(codes, scales, &activations)
                } else {
                    dot(codes, scales, &activations)
                };
            }
            Ok(())
        };
        // Handing a matrix to the pool costs more than it saves below a few million weights
        // (measured: 768x3072 took 0.065 ms pooled, 0.059 ms on one core; the 768x50257 head
        // 0.54 ms pooled, 0.99 ms on one core).
        if self.n * self.k >= POOLED_WEIGHTS {
            tract_linalg::multithread::par_chunks_mut(y, 1, self.n * self.k, rows)
        } else {
            rows(0, y)
        }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One activation row in int8, a scale and a sum of codes per block of 32, and the zero-point
/// correction `8 x` summed per group of 4 codes (the lanes of the AVX2 dot product).
struct Int8Row {
    codes: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
    corrections: Vec<[i32; 8]>,
}

impl Int8Row {
    fn quantize(x: &[f32]) -> Int8Row {
        let blocks = x.len() / BLOCK;
        let mut row = Int8Row {
            codes: vec![0; x.len()],
            scales: vec![0.0; blocks],
            sums: vec![0; blocks],
            corrections: vec![[0; 8]; blocks],
        };
        for (b, values) in x.chunks_exact(BLOCK).enumerate() {
            let largest = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = largest / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let codes = &mut row.codes[b * BLOCK..][..BLOCK];
            for (code, v) in codes.iter_mut().zip(values) {
                *code = (v * inverse).round().clamp(-127.0, 127.0) as i8;
            }
            row.scales[b] = scale;
            row.sums[b] = codes.iter().map(|&c| c as i32).sum();
            for (lane, four) in row.corrections[b].iter_mut().zip(codes.chunks_exact(4)) {
                *lane = 8 * four.iter().map(|&c| c as i32).sum::<i32>();
            }
        }
        row
    }
}

/// `sum_b ws_b xs_b sum_i (q_i - 8) x_i`, with `sum_i (q_i - 8) x_i = sum_i q_i x_i - 8 sum_i x_i`.
fn dot(codes: &[u8], scale_bits: &[u32], x: &Int8Row) -> f32 {
    let mut total = 0f32;
    for (b, block) in codes.chunks_exact(BLOB).enumerate() {
        let xs = &x.codes[b * BLOCK..][..BLOCK];
        let mut sum = 0i32;
        for (j, &byte) in block.iter().enumerate() {
            sum += (byte & 0x0f) as i32 * xs[j] as i32 + (byte >> 4) as i32 * xs[j + BLOB] as i32;
        }
        let scale = f32::from_bits(scale_bits[b]) * x.scales[b];
        total += scale * (sum - 8 * x.sums[b]) as f32;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(codes: &[u8], scale_bits: &[u32], x: &Int8Row) -> f32 {
    use std::arch::x86_64::*;
    let low = _mm_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    // One block's sum of `(q - 8) x` over 8 lanes, times its two scales.
    let block = |b: usize| {
        // SAFETY: block `b` is 16 bytes of `codes` and 32 of `x.codes`, both in bounds.
        unsafe {
            let packed = _mm_loadu_si128(codes.as_ptr().add(b * BLOB) as *const __m128i);
            let xs = _mm256_loadu_si256(x.codes.as_ptr().add(b * BLOCK) as *const __m256i);
            let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
            let q = _mm256_set_m128i(high, _mm_and_si128(packed, low));
            // Codes are 0..15 and activations -127..127: pairs sum within i16.
            let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(q, xs), ones);
            let correction = _mm256_loadu_si256(x.corrections[b].as_ptr() as *const __m256i);
            let scale = f32::from_bits(scale_bits[b]) * x.scales[b];
            (_mm256_cvtepi32_ps(_mm256_sub_epi32(sums, correction)), _mm256_set1_ps(scale))
        }
    };
    // Two accumulators: each block's multiply-add does not wait for the previous one's.
    let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let blocks = scale_bits.len();
    for b in (0..blocks - blocks % 2).step_by(2) {
        let (v, s) = block(b);
        even = _mm256_fmadd_ps(v, s, even);
        let (v, s) = block(b + 1);
        odd = _mm256_fmadd_ps(v, s, odd);
    }
    if blocks % 2 == 1 {
        let (v, s) = block(blocks - 1);
        even = _mm256_fmadd_ps(v, s, even);
    }
    let acc = _mm256_add_ps(even, odd);
    let halves = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
}

/// `y = A W^T` for a float32 `A` of `[.., k]`: tract's op around [`Int4Weights::matvec`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Int4MatMul {
    pub weights: Arc<Int4Weights>,
}

impl Op for Int4MatMul {
    fn name(&self) -> StaticName {
        "GptcInt4MatMul".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Int4MatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let a = inputs[0].to_plain_array_view::<f32>()?;
        let (k, n) = (self.weights.k, self.weights.n);
        ensure!(a.shape().last() == Some(&k), "GptcInt4MatMul: input {:?}, k {k}", a.shape());
        let rows = a.len() / k;
        let mut shape: TVec<usize> = a.shape().into();
        *shape.last_mut().unwrap_or(&mut 0) = n;
        let a = a.as_standard_layout();
        let x = a.as_slice().context("a standard layout array is contiguous")?;
        let mut y = vec![0f32; rows * n];
        for (x, y) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
            self.weights.matvec(x, y)?;
        }
        Ok(tvec!(Tensor::from_shape(&shape, &y)?.into_tvalue()))
    }
}

impl TypedOp for Int4MatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.clone();
        let last = shape.rank() - 1;
        shape.set(last, self.weights.n.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(k: usize, n: usize, salt: usize) -> (Vec<f32>, Int4Matrix) {
        let w: Vec<f32> =
            (0..k * n).map(|i| (((i * 7919 + salt) % 1009) as f32 - 504.0) / 5000.0).collect();
        let q = Int4Matrix::quantize(&w, k, n, false);
        (q.dequantize(false), q)
    }

    #[test]
    fn the_int8_kernel_is_the_dequantized_product_within_activation_rounding() {
        let (k, n) = (256, 40);
        let (w, q) = matrix(k, n, 3);
        let x: Vec<f32> = (0..k).map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0).collect();
        let mut y = vec![0f32; n];
        Int4Weights::new(&q).matvec(&x, &mut y).unwrap();
        let exact: Vec<f32> =
            (0..n).map(|j| (0..k).map(|i| x[i] * w[i * n + j]).sum::<f32>()).collect();
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = y.iter().zip(&exact).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        // int8 activations: about 1/254 of each block's largest value per element.
        assert!(err < 1e-2, "relative error {err}");
        assert!(err > 0.0, "activations were not quantized");
    }

    #[test]
    fn avx2_and_plain_rust_agree() {
        if !has_avx2() {
            return;
        }
        let (k, n) = (128, 7);
        let (_, q) = matrix(k, n, 11);
        let weights = Int4Weights::new(&q);
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
        let row = Int8Row::quantize(&x);
        for j in 0..n {
            let codes = &weights.codes[j * 4 * BLOB..][..4 * BLOB];
            let scales = &weights.scale_bits[j * 4..][..4];
            // SAFETY: checked above.
            let fast = unsafe { dot_avx2(codes, scales, &row) };
            let plain = dot(codes, scales, &row);
            assert!((fast - plain).abs() <= 1e-5 * plain.abs().max(1.0), "{fast} vs {plain}");
        }
    }
}
