//! The dot products of a group of 4-bit weight rows with an int8 activation row: plain Rust,
//! AVX2, AVX-512 VNNI (the fastest the CPU runs, chosen at run time, all computing the same
//! integers), and the activations' quantization to int8.

use super::weights::{PAIR, ROWS, STRIDE};
use gptc_graph::quant::{BLOB, BLOCK};

/// The dot products of one group of [`ROWS`] weight rows (`x.pairs()` strides of the stream)
/// with one activation row.
pub(super) type Dots = fn(&[u8], &Int8Row) -> [f32; ROWS];

/// The fastest kernel this CPU runs (chosen once).
pub(super) fn kernel() -> Dots {
    static FASTEST: std::sync::OnceLock<Dots> = std::sync::OnceLock::new();
    *FASTEST.get_or_init(|| kernels().last().map_or(dots, |&(_, fastest)| fastest))
}

/// Every kernel this CPU runs, slowest first: plain Rust, AVX2, AVX-512 VNNI.
pub(super) fn kernels() -> Vec<(&'static str, Dots)> {
    let mut all: Vec<(&'static str, Dots)> = vec![("plain", dots)];
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        all.push(("avx2", |group, x| unsafe { dots_avx2(group, x) }));
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
        {
            // SAFETY: and AVX-512 F, BW and VNNI (checked at run time).
            all.push(("avx512vnni", |group, x| unsafe { dots_avx512vnni(group, x) }));
        }
    }
    all
}

pub(super) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One activation row in int8, laid out as the kernel reads it: per pair of blocks, the first
/// halves of both blocks (32 codes), then their second halves; per pair, the zero-point
/// correction `8 sum x` of each block in the first of the four lanes its sums fill. An odd last
/// block is paired with zeros.
pub(super) struct Int8Row {
    codes: Vec<i8>,
    /// Per pair, the two blocks' scales alternating, as the weight scales of four rows lie.
    pair_scales: Vec<[f32; 8]>,
    corrections: Vec<[i32; 8]>,
}

impl Int8Row {
    pub(super) fn quantize(x: &[f32]) -> Int8Row {
        let pairs = x.len().div_ceil(PAIR);
        let mut row = Int8Row {
            codes: vec![0; pairs * PAIR],
            pair_scales: vec![[0.0; 8]; pairs],
            corrections: vec![[0; 8]; pairs],
        };
        let to_int8 = block_to_int8();
        for (b, values) in x.chunks_exact(BLOCK).enumerate() {
            let (pair, half) = (b / 2, b % 2);
            let (codes, scale) = to_int8(values);
            for (i, part) in codes.chunks_exact(BLOB).enumerate() {
                row.codes[Int8Row::index(pair, half, i * BLOB)..][..BLOB].copy_from_slice(part);
            }
            for lane in row.pair_scales[pair].iter_mut().skip(half).step_by(2) {
                *lane = scale;
            }
            row.corrections[pair][4 * half] = 8 * codes.iter().map(|&c| c as i32).sum::<i32>();
        }
        row
    }

    /// Where code `i` of block `half` of pair `pair` sits.
    fn index(pair: usize, half: usize, i: usize) -> usize {
        pair * PAIR + (i / BLOB) * BLOCK + half * BLOB + i % BLOB
    }

    fn pairs(&self) -> usize {
        self.pair_scales.len()
    }
}

/// One block of 32 activations as int8 codes and a scale: the largest magnitude maps to 127,
/// rounded to nearest, ties to even.
pub(super) type ToInt8 = fn(&[f32]) -> ([i8; BLOCK], f32);

/// The fastest this CPU runs (chosen once).
pub(super) fn block_to_int8() -> ToInt8 {
    static FASTEST: std::sync::OnceLock<ToInt8> = std::sync::OnceLock::new();
    *FASTEST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has AVX2 (checked at run time).
            return |values| unsafe { to_int8_avx2(values) };
        }
        to_int8
    })
}

/// What a block that is not all finite becomes: no codes, and a scale that makes every product
/// with it NaN.
pub(super) const NOT_FINITE: ([i8; BLOCK], f32) = ([0; BLOCK], f32::NAN);

pub(super) fn to_int8(values: &[f32]) -> ([i8; BLOCK], f32) {
    if values.iter().any(|v| !v.is_finite()) {
        return NOT_FINITE;
    }
    let largest = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = largest / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut codes = [0i8; BLOCK];
    for (code, v) in codes.iter_mut().zip(values) {
        *code = (v * inverse).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    (codes, scale)
}

/// [`to_int8`] with AVX2 (its conversion rounds to nearest even, as the default MXCSR has it).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn to_int8_avx2(values: &[f32]) -> ([i8; BLOCK], f32) {
    use std::arch::x86_64::*;
    assert_eq!(values.len(), BLOCK);
    // SAFETY: 32 values, read as four vectors of eight.
    let v: [__m256; 4] =
        std::array::from_fn(|i| unsafe { _mm256_loadu_ps(values.as_ptr().add(8 * i)) });
    let sign = _mm256_set1_ps(-0.0);
    let abs = v.map(|v| _mm256_andnot_ps(sign, v));
    // `max` drops NaN (it returns its second operand), so NaN and infinities are looked for
    // apart: an unordered compare marks NaN, a compare with infinity the infinities.
    let infinity = _mm256_set1_ps(f32::INFINITY);
    let odd = abs.map(|a| {
        _mm256_or_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(a, a), _mm256_cmp_ps::<_CMP_EQ_OQ>(a, infinity))
    });
    let odd = _mm256_or_ps(_mm256_or_ps(odd[0], odd[1]), _mm256_or_ps(odd[2], odd[3]));
    if _mm256_movemask_ps(odd) != 0 {
        return NOT_FINITE;
    }
    let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let largest = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
    let scale = largest / 127.0;
    let inverse = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
    let ints = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, inverse)));
    // The packs saturate to -128..127 and interleave 128-bit lanes; the permute restores order.
    let words = [_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3])];
    let bytes = _mm256_packs_epi16(words[0], words[1]);
    let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut codes = [0i8; BLOCK];
    // SAFETY: 32 bytes into 32 bytes.
    unsafe { _mm256_storeu_si256(codes.as_mut_ptr() as *mut __m256i, ordered) };
    (codes, scale)
}

/// `sum_b ws_b xs_b sum_i (q_i - 8) x_i`, with `sum_i (q_i - 8) x_i = sum_i q_i x_i - 8 sum_i x_i`.
pub(super) fn dots(group: &[u8], x: &Int8Row) -> [f32; ROWS] {
    let mut out = [0f32; ROWS];
    for (pair, stride) in group.chunks_exact(STRIDE).enumerate() {
        let (codes, scales) = stride.split_at(ROWS * PAIR / 2);
        for (r, out) in out.iter_mut().enumerate() {
            for half in 0..2 {
                let block = &codes[r * PAIR / 2 + half * BLOB..][..BLOB];
                let mut sum = 0i32;
                for (j, &byte) in block.iter().enumerate() {
                    sum += (byte & 0x0f) as i32 * x.codes[Int8Row::index(pair, half, j)] as i32
                        + (byte >> 4) as i32 * x.codes[Int8Row::index(pair, half, j + BLOB)] as i32;
                }
                let scale_bytes = &scales[(r * 2 + half) * 2..][..2];
                let w_scale = half::f16::from_le_bytes([scale_bytes[0], scale_bytes[1]]).to_f32();
                let scale = w_scale * x.pair_scales[pair][half];
                *out += scale * (sum - x.corrections[pair][4 * half]) as f32;
            }
        }
    }
    out
}

/// [`dots`] with AVX2: per pair of blocks, the activation loads serve four rows.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dots_avx2(group: &[u8], x: &Int8Row) -> [f32; ROWS] {
    use std::arch::x86_64::*;
    let pairs = x.pairs();
    assert!(group.len() == pairs * STRIDE && x.codes.len() == pairs * PAIR);
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    // The scales of row r, blocks 0 and 1, are lanes 2r and 2r+1: spread over lanes 0-3 and
    // 4-7, where the integer sums of the two blocks lie.
    let spread = [0, 1, 2, 3].map(|r| {
        _mm256_set_epi32(2 * r + 1, 2 * r + 1, 2 * r + 1, 2 * r + 1, 2 * r, 2 * r, 2 * r, 2 * r)
    });
    let mut acc = [_mm256_setzero_ps(); ROWS];
    for p in 0..pairs {
        // SAFETY (all loads): stride `p` of the group and pair `p` of `x`, in bounds as asserted.
        unsafe {
            let stride = group.as_ptr().add(p * STRIDE);
            let firsts = _mm256_loadu_si256(x.codes.as_ptr().add(p * PAIR) as *const __m256i);
            let seconds =
                _mm256_loadu_si256(x.codes.as_ptr().add(p * PAIR + BLOCK) as *const __m256i);
            let correction = _mm256_loadu_si256(x.corrections[p].as_ptr() as *const __m256i);
            // Every row's two scales times the two activation scales, at once.
            let scales = _mm256_mul_ps(
                _mm256_cvtph_ps(_mm_loadu_si128(stride.add(ROWS * PAIR / 2) as *const __m128i)),
                _mm256_loadu_ps(x.pair_scales[p].as_ptr()),
            );
            for (r, acc) in acc.iter_mut().enumerate() {
                let packed = _mm256_loadu_si256(stride.add(r * PAIR / 2) as *const __m256i);
                let q_firsts = _mm256_and_si256(packed, low);
                let q_seconds = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
                // Codes 0..15 times activations -127..127: four products stay within i16.
                let pairs16 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(q_firsts, firsts),
                    _mm256_maddubs_epi16(q_seconds, seconds),
                );
                let sums = _mm256_sub_epi32(_mm256_madd_epi16(pairs16, ones), correction);
                let scale = _mm256_permutevar8x32_ps(scales, spread[r]);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, *acc);
            }
        }
    }
    // Pairwise sums across the four rows, then the two 128-bit halves: lane r is row r's sum.
    let [a, b, c, d] = acc;
    let sums = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    let total = _mm_add_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps(sums, 1));
    let mut out = [0f32; ROWS];
    // SAFETY: four floats into four.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), total) };
    out
}

/// [`dots`] with AVX-512 VNNI: a 64-byte load holds one pair of blocks of two rows, and
/// `vpdpbusd` multiplies codes by activations and sums them into 32-bit lanes in one step.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C and AVX-512 F, BW and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn dots_avx512vnni(group: &[u8], x: &Int8Row) -> [f32; ROWS] {
    use std::arch::x86_64::*;
    let pairs = x.pairs();
    assert!(group.len() == pairs * STRIDE && x.codes.len() == pairs * PAIR);
    let low = _mm512_set1_epi8(0x0f);
    // Lanes 0-3 / 4-7 / 8-11 / 12-15 of a register of rows r, r+1 take the scales of
    // (r, block 0), (r, block 1), (r+1, block 0), (r+1, block 1): lanes 2r .. 2r+3 of the eight.
    let spread = |r: i32| {
        _mm512_set_epi32(
            2 * r + 3,
            2 * r + 3,
            2 * r + 3,
            2 * r + 3,
            2 * r + 2,
            2 * r + 2,
            2 * r + 2,
            2 * r + 2,
            2 * r + 1,
            2 * r + 1,
            2 * r + 1,
            2 * r + 1,
            2 * r,
            2 * r,
            2 * r,
            2 * r,
        )
    };
    let spreads = [spread(0), spread(2)];
    let mut acc = [_mm512_setzero_ps(); ROWS / 2];
    for p in 0..pairs {
        // SAFETY (all loads): stride `p` of the group and pair `p` of `x`, in bounds as asserted.
        unsafe {
            let stride = group.as_ptr().add(p * STRIDE);
            let both =
                |v: *const i8| _mm512_broadcast_i64x4(_mm256_loadu_si256(v as *const __m256i));
            let firsts = both(x.codes.as_ptr().add(p * PAIR));
            let seconds = both(x.codes.as_ptr().add(p * PAIR + BLOCK));
            let correction = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                x.corrections[p].as_ptr() as *const __m256i
            ));
            let scales = _mm256_mul_ps(
                _mm256_cvtph_ps(_mm_loadu_si128(stride.add(ROWS * PAIR / 2) as *const __m128i)),
                _mm256_loadu_ps(x.pair_scales[p].as_ptr()),
            );
            let scales = _mm512_castps256_ps512(scales);
            for (half, acc) in acc.iter_mut().enumerate() {
                let packed = _mm512_loadu_si512(stride.add(half * PAIR) as *const __m512i);
                let q_firsts = _mm512_and_si512(packed, low);
                let q_seconds = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low);
                let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q_firsts, firsts);
                let sums = _mm512_dpbusd_epi32(sums, q_seconds, seconds);
                let sums = _mm512_sub_epi32(sums, correction);
                let scale = _mm512_permutexvar_ps(spreads[half], scales);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, *acc);
            }
        }
    }
    // Rows 0-3 hold eight lanes each (two 128-bit quarters): add the quarters pairwise, then
    // the four lanes of each quarter, and take lane 0 of each.
    let [a, b] = acc;
    let quarters = _mm512_add_ps(
        _mm512_shuffle_f32x4(a, b, 0b10_00_10_00),
        _mm512_shuffle_f32x4(a, b, 0b11_01_11_01),
    );
    let pairs = _mm512_add_ps(quarters, _mm512_permute_ps(quarters, 0b10_11_00_01));
    let sums = _mm512_add_ps(pairs, _mm512_permute_ps(pairs, 0b01_00_11_10));
    let firsts = _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        sums,
    );
    let mut out = [0f32; ROWS];
    // SAFETY: four floats into four.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps128(firsts)) };
    out
}
