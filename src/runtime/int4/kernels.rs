//! The products of a panel of 16 weight rows with a few int8 activation rows: plain Rust,
//! AVX2, AVX-512 VNNI (the fastest the CPU runs, chosen at run time, all computing the same
//! integers), and the activations' quantization to int8.

use super::weights::{CODE_BYTES, PANEL, PANEL_BLOCK};
use gptc_graph::quant::{BLOB, BLOCK};

/// Activation rows one pass of a kernel takes at most, each with its own accumulators.
pub(super) const PASS_ROWS: usize = 8;

/// The products of the first `rows` (1 to [`PASS_ROWS`]) of the activation rows `x`
/// ([`PASS_ROWS`] rows of a panel's blocks each, one after another; rows past `rows` are
/// zero) with a panel ([`super::weights`]): `out[r][lane]`.
pub(super) type Kernel = fn(&[u8], &[Int8Block], usize) -> [[f32; PANEL]; PASS_ROWS];

/// The fastest kernel this CPU runs (chosen once).
pub(super) fn kernel() -> Kernel {
    static FASTEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *FASTEST.get_or_init(|| kernels().last().map_or(panel_plain, |&(_, fastest)| fastest))
}

/// Every kernel this CPU runs, slowest first: plain Rust, AVX2, AVX-512 VNNI.
pub(super) fn kernels() -> Vec<(&'static str, Kernel)> {
    let mut all: Vec<(&'static str, Kernel)> = vec![("plain", panel_plain)];
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        all.push(("avx2", |panel, x, rows| unsafe { panel_avx2(panel, x, rows) }));
        if has_avx512vnni() {
            // SAFETY: and AVX-512 F, BW and VNNI (checked at run time).
            all.push(("avx512vnni", |panel, x, rows| unsafe { panel_avx512vnni(panel, x, rows) }));
        }
    }
    all
}

/// AVX-512 F, BW and VNNI, with AVX2, FMA and F16C.
pub(super) fn has_avx512vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
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

/// One block of 32 activations of one row in int8: codes in order, the scale, and `-8 sum x`,
/// the zero point's share of the dot product, which the block's integer sum starts from.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub(super) struct Int8Block {
    pub(super) codes: [i8; BLOCK],
    pub(super) scale: f32,
    pub(super) start: i32,
}

impl Int8Block {
    pub(super) const ZERO: Int8Block = Int8Block { codes: [0; BLOCK], scale: 0.0, start: 0 };

    pub(super) fn quantize(values: &[f32]) -> Int8Block {
        let (codes, scale) = block_to_int8()(values);
        let start = -8 * codes.iter().map(|&c| c as i32).sum::<i32>();
        Int8Block { codes, scale, start }
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

/// The scale of lane `lane` of a panel's block.
fn weight_scale(block: &[u8], lane: usize) -> f32 {
    let at = CODE_BYTES + 2 * lane;
    half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// `sum_b ws_b xs_b (start_b + sum_i q_i x_i)`, with `start = -8 sum_i x_i` for the zero point.
pub(super) fn panel_plain(panel: &[u8], x: &[Int8Block], rows: usize) -> [[f32; PANEL]; PASS_ROWS] {
    let blocks = panel.len() / PANEL_BLOCK;
    let mut out = [[0f32; PANEL]; PASS_ROWS];
    for (r, out) in out.iter_mut().enumerate().take(rows) {
        for (b, block) in panel.chunks_exact(PANEL_BLOCK).enumerate() {
            let activations = &x[r * blocks + b];
            for (lane, out) in out.iter_mut().enumerate() {
                let mut sum = activations.start;
                for i in 0..BLOB {
                    let byte = block[((i / 4) * PANEL + lane) * 4 + i % 4];
                    sum += (byte & 0x0f) as i32 * activations.codes[i] as i32
                        + (byte >> 4) as i32 * activations.codes[i + BLOB] as i32;
                }
                let scale = weight_scale(block, lane) * activations.scale;
                *out += sum as f32 * scale;
            }
        }
    }
    out
}

/// [`panel_plain`] with AVX2: eight rows of the panel a register, `vpmaddubsw` and `vpmaddwd`
/// for `vpdpbusd`; the two halves of the panel one after the other, so the codes of a block and
/// four rows' accumulators fit the sixteen registers.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn panel_avx2(
    panel: &[u8],
    x: &[Int8Block],
    rows: usize,
) -> [[f32; PANEL]; PASS_ROWS] {
    let mut out = [[0f32; PANEL]; PASS_ROWS];
    for r0 in (0..rows).step_by(4) {
        let x = &x[r0 * (panel.len() / PANEL_BLOCK)..];
        // SAFETY: the caller's CPU has AVX2, FMA and F16C.
        let part = unsafe {
            match rows - r0 {
                1 => panel_avx2_rows::<1>(panel, x),
                2 => panel_avx2_rows::<2>(panel, x),
                _ => panel_avx2_rows::<4>(panel, x),
            }
        };
        for (out, part) in out[r0..].iter_mut().zip(part).take(rows - r0) {
            *out = part;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel_avx2_rows<const R: usize>(panel: &[u8], x: &[Int8Block]) -> [[f32; PANEL]; 4] {
    use std::arch::x86_64::*;
    let blocks = panel.len() / PANEL_BLOCK;
    assert!(panel.len() == blocks * PANEL_BLOCK && x.len() >= R * blocks);
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut out = [[0f32; PANEL]; 4];
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..blocks {
            // SAFETY (all loads): block `b` of the panel and of each row, in bounds as asserted.
            unsafe {
                let block = panel.as_ptr().add(b * PANEL_BLOCK);
                let dwords: [__m256i; 4] = std::array::from_fn(|i| {
                    _mm256_loadu_si256(block.add((i * PANEL + 8 * half) * 4) as *const __m256i)
                });
                let codes: [__m256i; 8] = std::array::from_fn(|i| match i < 4 {
                    true => _mm256_and_si256(dwords[i], low),
                    false => _mm256_and_si256(_mm256_srli_epi16(dwords[i - 4], 4), low),
                });
                let scales = block.add(CODE_BYTES + 16 * half) as *const __m128i;
                let weight_scales = _mm256_cvtph_ps(_mm_loadu_si128(scales));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let activations = &x[r * blocks + b];
                    let quads = activations.codes.as_ptr() as *const i32;
                    let mut sums = _mm256_set1_epi32(activations.start);
                    for (i, &codes) in codes.iter().enumerate() {
                        // Codes 0..15 times activations -127..127: two products stay within i16.
                        let four = _mm256_set1_epi32(quads.add(i).read_unaligned());
                        let pairs = _mm256_maddubs_epi16(codes, four);
                        sums = _mm256_add_epi32(sums, _mm256_madd_epi16(pairs, ones));
                    }
                    let scale = _mm256_mul_ps(weight_scales, _mm256_set1_ps(activations.scale));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, *acc);
                }
            }
        }
        for (out, acc) in out.iter_mut().zip(acc) {
            // SAFETY: eight floats into eight.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * half), acc) };
        }
    }
    out
}

/// [`panel_plain`] with AVX-512 VNNI: per block, the panel's four registers unpacked into eight
/// of codes once, then eight `vpdpbusd` and one multiply-add per activation row.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C and AVX-512 F, BW and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn panel_avx512vnni(
    panel: &[u8],
    x: &[Int8Block],
    rows: usize,
) -> [[f32; PANEL]; PASS_ROWS] {
    // SAFETY: the caller's CPU has what each needs.
    unsafe {
        match rows {
            1 => panel_avx512vnni_rows::<1>(panel, x),
            2 => panel_avx512vnni_rows::<2>(panel, x),
            3 | 4 => panel_avx512vnni_rows::<4>(panel, x),
            _ => panel_avx512vnni_rows::<PASS_ROWS>(panel, x),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn panel_avx512vnni_rows<const R: usize>(
    panel: &[u8],
    x: &[Int8Block],
) -> [[f32; PANEL]; PASS_ROWS] {
    use std::arch::x86_64::*;
    let blocks = panel.len() / PANEL_BLOCK;
    assert!(panel.len() == blocks * PANEL_BLOCK && x.len() >= R * blocks && R <= PASS_ROWS);
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..blocks {
        // SAFETY (all loads): block `b` of the panel and of each row, in bounds as asserted.
        unsafe {
            let block = panel.as_ptr().add(b * PANEL_BLOCK);
            let dwords: [__m512i; 4] =
                std::array::from_fn(|i| _mm512_loadu_si512(block.add(64 * i) as *const __m512i));
            let codes: [__m512i; 8] = std::array::from_fn(|i| match i < 4 {
                true => _mm512_and_si512(dwords[i], low),
                false => _mm512_and_si512(_mm512_srli_epi16(dwords[i - 4], 4), low),
            });
            let scales = block.add(CODE_BYTES) as *const __m256i;
            let weight_scales = _mm512_cvtph_ps(_mm256_loadu_si256(scales));
            for (r, acc) in acc.iter_mut().enumerate() {
                let activations = &x[r * blocks + b];
                let quads = activations.codes.as_ptr() as *const i32;
                let mut sums = _mm512_set1_epi32(activations.start);
                for (i, &codes) in codes.iter().enumerate() {
                    let four = _mm512_set1_epi32(quads.add(i).read_unaligned());
                    sums = _mm512_dpbusd_epi32(sums, codes, four);
                }
                let scale = _mm512_mul_ps(weight_scales, _mm512_set1_ps(activations.scale));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, *acc);
            }
        }
    }
    let mut out = [[0f32; PANEL]; PASS_ROWS];
    for (out, acc) in out.iter_mut().zip(acc) {
        // SAFETY: sixteen floats into sixteen.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), acc) };
    }
    out
}
