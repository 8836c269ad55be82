//! gptc's own 4-bit matmul for tract, for `MatMulNBits` at accuracy level 4: what ONNX Runtime
//! computes there (activations quantized to int8 per block of 32, integer dot products against
//! the 4-bit codes, one float multiply a block), where tract's Q4_0 path unpacks every weight to
//! float32 at every step (BENCHMARKS.md: 19 G weights/s, 0.40x ONNX Runtime's decode).
//!
//! The work is shared with gptc's crew of helper threads (`crew.rs`: tract's pool costs more to
//! wake than the second core gives on a decode step's matrices): a decode step in chunks of
//! output rows, a prompt in blocks of its own rows. The AVX2 kernel takes two blocks per 256-bit
//! load and four output rows per pass, so an activation load serves four rows; the AVX-512 VNNI
//! one two rows per 512-bit load. The fastest the CPU runs is chosen at run time, else plain
//! Rust computes the same integers.
//!
//! A block of activations holding NaN or an infinity has no int8 form: its scale is NaN, so every
//! output the row reaches is NaN on every path, as float32 compute (level 0) gives, and the
//! driver reports the non-finite logits either way.

use std::sync::Arc;

use super::crew::{crew, Crew};
use gptc_graph::onnx::{self as proto, DataType};
use gptc_graph::quant::{Int4Matrix, MatMulNBits, MatMulNBitsInputs, TensorFact, BLOB, BLOCK};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{
    expand, Expansion, InferenceOp, InferenceResult, Solver, TensorProxy,
};

/// Two blocks: the unit of the kernel's loads.
const PAIR: usize = 2 * BLOCK;

/// Output rows a kernel pass computes together, sharing each activation load.
const ROWS: usize = 4;

/// Bytes of one pair of blocks of a group of [`ROWS`] rows: their codes, then their scales.
const STRIDE: usize = ROWS * (PAIR / 2) + ROWS * 2 * 2;

/// A chunk of work for one thread: about 2 microseconds, so a helper that starts late or a core
/// that runs slow delays the end of a matmul by little.
const CHUNK_WEIGHTS: usize = 1 << 16;

/// For a prompt: activation rows a chunk takes (their int8 codes and scales, 1.5 KB each at
/// k = 768, stay in the first-level cache while every group of weights passes over them).
const PROMPT_ROWS: usize = 16;

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
    k: usize,
    n: usize,
    pairs: usize,
    stream: Vec<u8>,
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
    fn stack(parts: &[Arc<Int4Weights>]) -> Option<Int4Weights> {
        let first = parts.first()?;
        let fits = parts.iter().all(|p| p.k == first.k && p.n.is_multiple_of(ROWS));
        fits.then(|| Int4Weights {
            k: first.k,
            n: parts.iter().map(|p| p.n).sum(),
            pairs: first.pairs,
            stream: parts.iter().flat_map(|p| p.stream.iter().copied()).collect(),
        })
    }

    /// `y = x W^T` for `m` rows `x` of `k` values into `y` of `m` rows of `n`, with `x` quantized
    /// to int8. Each chunk of output rows reads its weights once for all `m` rows (they stay in
    /// the core's cache), and the chunks are shared with the crew.
    pub fn matmul(&self, x: &[f32], y: &mut [f32]) -> TractResult<()> {
        self.matmul_on(crew(), kernel(), x, y)
    }

    fn matmul_on(&self, crew: &Crew, dots: Dots, x: &[f32], y: &mut [f32]) -> TractResult<()> {
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

/// The dot products of one group of [`ROWS`] weight rows (`x.pairs()` strides of the stream)
/// with one activation row.
type Dots = fn(&[u8], &Int8Row) -> [f32; ROWS];

/// The fastest kernel this CPU runs (chosen once).
fn kernel() -> Dots {
    static FASTEST: std::sync::OnceLock<Dots> = std::sync::OnceLock::new();
    *FASTEST.get_or_init(|| kernels().last().map_or(dots, |&(_, fastest)| fastest))
}

/// Every kernel this CPU runs, slowest first: plain Rust, AVX2, AVX-512 VNNI.
fn kernels() -> Vec<(&'static str, Dots)> {
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

fn has_avx2() -> bool {
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
struct Int8Row {
    codes: Vec<i8>,
    /// Per pair, the two blocks' scales alternating, as the weight scales of four rows lie.
    pair_scales: Vec<[f32; 8]>,
    corrections: Vec<[i32; 8]>,
}

impl Int8Row {
    fn quantize(x: &[f32]) -> Int8Row {
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
type ToInt8 = fn(&[f32]) -> ([i8; BLOCK], f32);

/// The fastest this CPU runs (chosen once).
fn block_to_int8() -> ToInt8 {
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
const NOT_FINITE: ([i8; BLOCK], f32) = ([0; BLOCK], f32::NAN);

fn to_int8(values: &[f32]) -> ([i8; BLOCK], f32) {
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
unsafe fn to_int8_avx2(values: &[f32]) -> ([i8; BLOCK], f32) {
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
fn dots(group: &[u8], x: &Int8Row) -> [f32; ROWS] {
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
unsafe fn dots_avx2(group: &[u8], x: &Int8Row) -> [f32; ROWS] {
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

/// tract-onnx, with every `MatMulNBits` node checked as ONNX Runtime checks it
/// ([`MatMulNBits`]) and computed by gptc's kernel where it can take it: accuracy level 4 (int8
/// activations allowed), 4 bits in blocks of 32, no zero points, bias or act-order. The others
/// keep tract's own expansion (dequantizing inside its float32 matmul). Building the kernel's
/// weights while tract types the model, from the constants it already holds, means tract's own
/// 4-bit copy of them is never made and the file is read once.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    if let Some(&tracts) = onnx.op_register.0.get("MatMulNBits") {
        let _ = TRACTS_MATMUL_NBITS.set(tracts);
    }
    onnx.op_register.insert("MatMulNBits", matmul_nbits);
    onnx.op_register.insert("GatherBlockQuantized", super::lookup::gather_block_quantized);
    super::tract::check_what_tract_trusts(&mut onnx);
    onnx
}

type OpBuilder = fn(
    &tract_onnx::model::ParsingContext,
    &tract_onnx::pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

static TRACTS_MATMUL_NBITS: std::sync::OnceLock<OpBuilder> = std::sync::OnceLock::new();

/// The node as gptc's ONNX messages hold it: what [`MatMulNBits::of_node`] reads.
fn graph_node(node: &tract_onnx::pb::NodeProto) -> proto::NodeProto {
    let attribute = node
        .attribute
        .iter()
        .map(|a| proto::AttributeProto {
            name: a.name.clone(),
            r#type: a.r#type,
            i: a.i,
            ..Default::default()
        })
        .collect();
    proto::NodeProto {
        input: node.input.clone(),
        output: node.output.clone(),
        name: node.name.clone(),
        op_type: node.op_type.clone(),
        domain: node.domain.clone(),
        attribute,
        ..Default::default()
    }
}

fn matmul_nbits(
    ctx: &tract_onnx::model::ParsingContext,
    node: &tract_onnx::pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let opsets = &ctx.model.opset_import;
    let microsoft = opsets.iter().find(|o| o.domain == gptc_graph::names::MICROSOFT_DOMAIN);
    let spec = MatMulNBits::of_node(&graph_node(node), microsoft.map(|o| o.version))?;
    let ours = spec.accuracy_level == 4
        && spec.bits == 4
        && spec.block_size == BLOCK
        && spec.k.is_multiple_of(BLOCK)
        && !(spec.zero_points || spec.g_idx || spec.bias);
    let tracts = match ours {
        true => None,
        false => {
            // tract refuses here what it does not run (act-order, 8 bits).
            let parse = TRACTS_MATMUL_NBITS.get().context("tract's MatMulNBits parser")?;
            let (op, closures) = parse(ctx, node)?;
            ensure!(closures.is_empty(), "tract's MatMulNBits reads outer scopes");
            let expansion = op.as_op().downcast_ref::<Box<dyn Expansion>>();
            Some(expansion.context("tract's MatMulNBits is an expansion")?.clone())
        }
    };
    Ok((expand(CheckedMatMulNBits { spec, tracts }), vec![]))
}

/// A `MatMulNBits` node, checked (its inputs' types and shapes as tract's analysis finds them,
/// before either computation is wired), then computed by gptc's kernel (`tracts` is `None`) or
/// by tract's own expansion.
#[derive(Debug, Clone)]
struct CheckedMatMulNBits {
    spec: MatMulNBits,
    tracts: Option<Box<dyn Expansion>>,
}

/// ONNX's name for a tract element type; `Undefined` for those MatMulNBits never takes.
fn onnx_type(dt: DatumType) -> DataType {
    match dt {
        DatumType::F32 => DataType::Float,
        DatumType::F16 => DataType::Float16,
        DatumType::F64 => DataType::Double,
        DatumType::U8 => DataType::Uint8,
        DatumType::I8 => DataType::Int8,
        DatumType::I32 => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        _ => DataType::Undefined,
    }
}

fn fact_of(fact: &TypedFact) -> TensorFact {
    let dims = fact.shape.iter().map(|d| d.to_i64().ok().and_then(|d| u64::try_from(d).ok()));
    TensorFact { dtype: Some(onnx_type(fact.datum_type)), dims: Some(dims.collect()) }
}

impl Expansion for CheckedMatMulNBits {
    fn name(&self) -> StaticName {
        "GptcMatMulNBits".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        let spec = &self.spec;
        ensure!(outputs.len() == 1, "MatMulNBits has one output");
        let wanted = 3 + [spec.zero_points, spec.g_idx, spec.bias].iter().filter(|&&o| o).count();
        ensure!(inputs.len() == wanted, "MatMulNBits {}: {} inputs", spec.node, inputs.len());
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&inputs[0].rank, &outputs[0].rank)?;
        s.given(&inputs[0].datum_type, move |_, dt| {
            let a = TensorFact { dtype: Some(onnx_type(dt)), dims: None };
            Ok(spec.check_activation(&a)?)
        })?;
        let n = spec.n.to_dim();
        s.given(&inputs[0].rank, move |s, rank| {
            // Checked before `rank - 1` is taken: a rank of 0 is refused here.
            let unknown = usize::try_from(rank).map(|rank| vec![None; rank]).ok();
            spec.check_activation(&TensorFact { dtype: None, dims: unknown })?;
            let last = rank as usize - 1;
            for axis in 0..last {
                s.equals(&outputs[0].shape[axis], &inputs[0].shape[axis])?;
            }
            s.equals(&outputs[0].shape[last], n.clone())?;
            s.given(&inputs[0].shape[last], move |_, dim| {
                let mut dims = vec![None; last];
                dims.push(dim.to_i64().ok().and_then(|d| u64::try_from(d).ok()));
                Ok(spec.check_activation(&TensorFact { dtype: None, dims: Some(dims) })?)
            })
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let spec = &self.spec;
        let facts: Vec<TypedFact> =
            inputs.iter().map(|i| model.outlet_fact(*i).cloned()).collect::<TractResult<_>>()?;
        // Optional inputs the node leaves out are not wired: the rest keep their order.
        let mut optional = facts.iter().skip(3);
        let mut next = |given: bool| given.then(|| optional.next()).flatten();
        let (zero_points, g_idx, bias) =
            (next(spec.zero_points), next(spec.g_idx), next(spec.bias));
        let [a, b, scales] = [0, 1, 2].map(|i| &facts[i]);
        spec.check_inputs(&MatMulNBitsInputs {
            a: fact_of(a),
            b: fact_of(b),
            scales: fact_of(scales),
            zero_points: zero_points.map(fact_of),
            g_idx: g_idx.map(fact_of),
            bias: bias.map(fact_of),
        })?;
        let constant = |fact: &TypedFact, what: &str| {
            fact.konst.clone().with_context(|| {
                format!("MatMulNBits {}: gptc runs {what} held in the file only", spec.node)
            })
        };
        let (blocks, scales) = (constant(b, "weights")?, constant(scales, "scales")?);
        // gptc's kernel and tract's block-quantized path (which tract 0.23's `mat_mul_nbits`
        // takes for blocks of 32) hold scales in float16; tract's other path in float32.
        let float16_scales = self.tracts.is_none()
            || (spec.k.is_multiple_of(32)
                && spec.block_size.is_multiple_of(32)
                && (spec.bits == 2 || spec.block_size == 32));
        if float16_scales && scales.datum_type() == f32::datum_type() {
            let plain = scales.try_as_plain_ram()?;
            spec.check_scales_fit_float16(plain.as_slice::<f32>()?)?;
        }
        if let Some(tracts) = &self.tracts {
            if let Some(zero_points) = zero_points {
                let dt = constant(zero_points, "zero points")?.datum_type();
                ensure!(
                    dt == u8::datum_type(),
                    "MatMulNBits {}: tract runs uint8 zero points, not {dt:?} (ONNX Runtime runs both)",
                    spec.node
                );
            }
            return tracts.wire(prefix, model, inputs);
        }
        let scales = scales.cast_to::<f32>()?;
        let matrix = Int4Matrix::from_stored(
            blocks.shape(),
            blocks.try_as_plain_ram()?.as_slice::<u8>()?.to_vec(),
            scales.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
        )
        .filter(|m| (m.k, m.n) == (spec.k, spec.n))
        .with_context(|| {
            format!(
                "MatMulNBits {}: weight {:?} for K {} N {}",
                spec.node,
                blocks.shape(),
                spec.k,
                spec.n
            )
        })?;
        let weights = Arc::new(Int4Weights::new(&matrix));
        let op = Int4MatMul::new(weights);
        let dt = a.datum_type;
        if dt == f32::datum_type() {
            // Wired straight to the input, so that siblings can be stacked (`stack_siblings`).
            return model.wire_node(format!("{prefix}.gptc_int4"), op, &[inputs[0]]);
        }
        let cast = tract_onnx::tract_core::ops::cast::cast;
        let a =
            model.wire_node(format!("{prefix}.cast_a"), cast(f32::datum_type()), &[inputs[0]])?;
        let y = model.wire_node(format!("{prefix}.gptc_int4"), op, &a)?;
        model.wire_node(format!("{prefix}.cast_y"), cast(dt), &y)
    }
}

/// [`dots`] with AVX-512 VNNI: a 64-byte load holds one pair of blocks of two rows, and
/// `vpdpbusd` multiplies codes by activations and sums them into 32-bit lanes in one step.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C and AVX-512 F, BW and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn dots_avx512vnni(group: &[u8], x: &Int8Row) -> [f32; ROWS] {
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

/// `y = A W^T` for a float32 `A` of `[.., k]`: tract's op around [`Int4Weights::matmul`]. The
/// weights may be several matrices stacked along `n` (q, k and v of a layer), one output each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Int4MatMul {
    pub weights: Arc<Int4Weights>,
    /// Outputs of each matrix stacked in `weights`, in order; they sum to `weights.n`.
    pub outputs: TVec<usize>,
}

impl Int4MatMul {
    fn new(weights: Arc<Int4Weights>) -> Int4MatMul {
        Int4MatMul { outputs: tvec![weights.n], weights }
    }
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
        let a = a.as_standard_layout();
        let x = a.as_slice().context("a standard layout array is contiguous")?;
        let mut y = vec![0f32; rows * n];
        self.weights.matmul(x, &mut y)?;
        let mut shape: TVec<usize> = a.shape().into();
        if let [_] = self.outputs[..] {
            *shape.last_mut().context("rank 0")? = n;
            return Ok(tvec!(tract_ndarray::ArrayD::from_shape_vec(&*shape, y)?.into_tvalue()));
        }
        let mut first = 0;
        let mut outputs = TVec::new();
        for &width in &self.outputs {
            *shape.last_mut().context("rank 0")? = width;
            let part: Vec<f32> =
                y.chunks_exact(n).flat_map(|row| &row[first..first + width]).copied().collect();
            outputs.push(Tensor::from_shape(&shape, &part)?.into_tvalue());
            first += width;
        }
        Ok(outputs)
    }
}

impl TypedOp for Int4MatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let last = inputs[0].rank().checked_sub(1).context("GptcInt4MatMul: an input of rank 0")?;
        let fact = |width: &usize| {
            let mut shape = inputs[0].shape.clone();
            shape.set(last, width.to_dim());
            f32::fact(shape)
        };
        Ok(self.outputs.iter().map(fact).collect())
    }

    as_op!();
}

/// Makes one op of the 4-bit matmuls that read the same input (q, k and v of a layer): the
/// activations are quantized once and the crew gets one job, not three short ones.
pub fn stack_siblings(mut model: TypedModel) -> TractResult<TypedModel> {
    let mut by_input: Vec<(OutletId, Vec<usize>)> = Vec::new();
    for node in model.nodes() {
        let Some(op) = node.op_as::<Int4MatMul>() else { continue };
        // Stacked streams stay aligned only if every matrix fills whole groups of rows.
        if op.outputs.len() != 1 || !op.weights.n.is_multiple_of(ROWS) {
            continue;
        }
        match by_input.iter_mut().find(|(input, _)| *input == node.inputs[0]) {
            Some((_, ids)) => ids.push(node.id),
            None => by_input.push((node.inputs[0], vec![node.id])),
        }
    }
    for (input, ids) in by_input.into_iter().filter(|(_, ids)| ids.len() > 1) {
        let parts: Vec<Arc<Int4Weights>> = ids
            .iter()
            .filter_map(|&id| model.node(id).op_as::<Int4MatMul>().map(|op| op.weights.clone()))
            .collect();
        let Some(weights) = Int4Weights::stack(&parts) else { continue };
        let outputs = parts.iter().map(|w| w.n).collect();
        let mut patch = TypedModelPatch::default();
        let tap = patch.tap_model(&model, input)?;
        // `h.3.attn.` of `h.3.attn.q_proj...`, `h.3.attn.k_proj...`: the scope they share.
        let names: Vec<&str> = ids.iter().map(|&id| model.node(id).name.as_str()).collect();
        let shared = names.iter().fold(names[0], |common, name| {
            let len = common.bytes().zip(name.bytes()).take_while(|(a, b)| a == b).count();
            &common[..len]
        });
        let name = format!("{shared}stacked_int4");
        let op = Int4MatMul { weights: Arc::new(weights), outputs };
        let stacked = patch.wire_node(name, op, &[tap])?;
        for (&id, &out) in ids.iter().zip(&stacked) {
            patch.shunt_outside(&model, id.into(), out)?;
        }
        patch.apply(&mut model)?;
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(k: usize, n: usize, salt: usize) -> (Vec<f32>, Int4Matrix) {
        let w: Vec<f32> =
            (0..k * n).map(|i| (((i * 7919 + salt) % 1009) as f32 - 504.0) / 5000.0).collect();
        let q = Int4Matrix::quantize("w", &w, k, n, false).unwrap();
        (q.dequantize(false), q)
    }

    #[test]
    fn the_int8_kernel_is_the_dequantized_product_within_activation_rounding() {
        let (k, n) = (256, 40);
        let (w, q) = matrix(k, n, 3);
        let x: Vec<f32> = (0..k).map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0).collect();
        let mut y = vec![0f32; n];
        Int4Weights::new(&q).matmul(&x, &mut y).unwrap();
        let exact: Vec<f32> =
            (0..n).map(|j| (0..k).map(|i| x[i] * w[i * n + j]).sum::<f32>()).collect();
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = y.iter().zip(&exact).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        // int8 activations: about 1/254 of each block's largest value per element.
        assert!(err < 1e-2, "relative error {err}");
        assert!(err > 0.0, "activations were not quantized");
    }

    #[test]
    fn level_4_nodes_run_gptcs_kernel_level_0_nodes_tracts_own() {
        use gptc_graph::{build_model, file, GptConfig, GraphOptions, Quantization, RandomInit};
        let config = GptConfig {
            vocab_size: 64,
            context_length: 16,
            emb_dim: 64,
            n_heads: 2,
            n_layers: 2,
            drop_rate: 0.0,
            qkv_bias: false,
        };
        for (accuracy_level, ours) in [(4, 2 * 6 + 1), (0, 0)] {
            let quantization = Quantization::Int4 { accuracy_level };
            let options = GraphOptions { kv_cache: true, quantization, ..Default::default() };
            let model = build_model(&config, options, &mut RandomInit { seed: 2 }, None).unwrap();
            let runtime =
                crate::runtime::tract::TractRuntime::from_bytes(&file::encode(&model)).unwrap();
            let plan = runtime.backend().plan().model();
            let ops: Vec<&Int4MatMul> =
                plan.nodes().iter().filter_map(|n| n.op_as::<Int4MatMul>()).collect();
            let matrices: usize = ops.iter().map(|op| op.outputs.len()).sum();
            assert_eq!(matrices, ours, "level {accuracy_level}");
            // q, k and v of each layer: one op.
            let stacked = ops.iter().filter(|op| op.outputs.len() == 3).count();
            assert_eq!(stacked, if ours > 0 { 2 } else { 0 }, "level {accuracy_level}");
        }
    }

    #[test]
    fn stacked_matrices_give_each_matrixs_own_product() {
        let (k, m) = (96, 3);
        let parts: Vec<Arc<Int4Weights>> =
            [8, 20, 4].iter().map(|&n| Arc::new(Int4Weights::new(&matrix(k, n, n).1))).collect();
        let stacked = Int4Weights::stack(&parts).unwrap();
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.61).cos()).collect();
        let mut all = vec![0f32; m * stacked.n];
        stacked.matmul(&x, &mut all).unwrap();
        let mut first = 0;
        for part in &parts {
            let mut own = vec![0f32; m * part.n];
            part.matmul(&x, &mut own).unwrap();
            for (row, own) in all.chunks_exact(stacked.n).zip(own.chunks_exact(part.n)) {
                assert_eq!(&row[first..first + part.n], own);
            }
            first += part.n;
        }
        let odd = Arc::new(Int4Weights::new(&matrix(k, 6, 1).1));
        assert!(Int4Weights::stack(&[parts[0].clone(), odd]).is_none(), "6 rows: a partial group");
    }

    #[test]
    fn avx2_and_plain_rust_quantize_activations_alike() {
        if !has_avx2() {
            return;
        }
        let mut values = [0f32; BLOCK];
        for seed in 0..2000u32 {
            for (i, v) in values.iter_mut().enumerate() {
                let t = (seed * 31 + i as u32 * 7919) % 2003;
                // Halves and exact ties included: codes land on .5 for some blocks.
                *v = (t as f32 - 1001.0) / if seed % 3 == 0 { 8.0 } else { 997.0 };
            }
            if seed % 7 == 0 {
                values.fill(0.0);
            }
            // SAFETY: checked above.
            assert_eq!(unsafe { to_int8_avx2(&values) }, to_int8(&values), "seed {seed}");
        }
    }

    #[test]
    fn a_block_that_is_not_finite_quantizes_to_a_nan_scale_on_every_path() {
        let mut quantizers: Vec<(&str, ToInt8)> = vec![("plain", to_int8)];
        if has_avx2() {
            // SAFETY: checked just above.
            quantizers.push(("avx2", |values| unsafe { to_int8_avx2(values) }));
        }
        for (name, quantize) in quantizers {
            for odd in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for at in [0, 13, 31] {
                    let mut values: [f32; BLOCK] =
                        std::array::from_fn(|i| (i as f32 * 0.7).sin() * 2.0);
                    values[at] = odd;
                    let (codes, scale) = quantize(&values);
                    assert!(scale.is_nan(), "{name}: {odd} at {at} gave scale {scale}");
                    assert_eq!(codes, [0; BLOCK], "{name}: {odd} at {at}");
                }
            }
        }
    }

    #[test]
    fn non_finite_activations_make_their_rows_outputs_nan_on_every_kernel() {
        // A decode batch of 3 rows and a prompt of 40: one row holds a NaN, another an infinity.
        for m in [3, 40] {
            let (k, n) = (96, 10);
            let weights = Int4Weights::new(&matrix(k, n, 7).1);
            let mut x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            x[k + 40] = f32::NAN;
            x[(m - 1) * k + 3] = f32::NEG_INFINITY;
            let mut kernels = kernels();
            kernels.push(("plain on the crew", dots));
            for (name, kernel) in kernels {
                for crew in [Crew::new(0), Crew::new(1)] {
                    let mut y = vec![0f32; m * n];
                    weights.matmul_on(&crew, kernel, &x, &mut y).unwrap();
                    for (r, row) in y.chunks_exact(n).enumerate() {
                        let odd = r == 1 || r == m - 1;
                        assert!(
                            row.iter().all(|v| v.is_nan() == odd && (odd || v.is_finite())),
                            "{name}, {m} rows: row {r} {row:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn an_empty_matrix_is_an_error_not_a_division_by_zero() {
        let empty = Int4Matrix::from_stored(&[4, 0, BLOB], vec![], vec![]).unwrap();
        let err = Int4Weights::new(&empty).matmul(&[], &mut [0.0; 4]).unwrap_err();
        assert!(err.to_string().contains("[0, 4]"), "{err}");
    }

    /// One `MatMulNBits` node on a graph input `a` of `a_dims` (K 64, N 8, bits 4, blocks of
    /// `block_size`, every scale `scale`), with `level`, as a file's bytes.
    fn single_matmul_nbits(a_dims: &[i64], level: i64, block_size: i64, scale: f32) -> Vec<u8> {
        let blocks = 64 / block_size;
        use gptc_graph::onnx::{
            AttributeProto, AttributeType, Dim, GraphProto, ModelProto, OperatorSetIdProto,
            TensorProto, ValueInfoProto,
        };
        let int = |name: &str, i: i64| AttributeProto {
            name: name.into(),
            r#type: AttributeType::Int as i32,
            i,
            ..Default::default()
        };
        let dims: Vec<Dim> = a_dims.iter().map(|&d| Dim::Fixed(d)).collect();
        let graph = GraphProto {
            node: vec![proto::NodeProto {
                input: vec!["a".into(), "b".into(), "s".into()],
                output: vec!["y".into()],
                name: "the_matmul".into(),
                op_type: "MatMulNBits".into(),
                domain: gptc_graph::names::MICROSOFT_DOMAIN.into(),
                attribute: vec![
                    int("K", 64),
                    int("N", 8),
                    int("bits", 4),
                    int("block_size", block_size),
                    int("accuracy_level", level),
                ],
                ..Default::default()
            }],
            initializer: vec![
                TensorProto {
                    name: "b".into(),
                    dims: vec![8, blocks, block_size / 2],
                    data_type: DataType::Uint8 as i32,
                    raw_data: vec![0x99; 8 * 32],
                    ..Default::default()
                },
                TensorProto {
                    name: "s".into(),
                    dims: vec![8 * blocks],
                    data_type: DataType::Float as i32,
                    float_data: vec![scale; 8 * blocks as usize],
                    ..Default::default()
                },
            ],
            input: vec![ValueInfoProto::tensor("a", DataType::Float, &dims)],
            output: vec![ValueInfoProto::tensor("y", DataType::Float, &[])],
            ..Default::default()
        };
        let opset = |domain: &str, version| OperatorSetIdProto { domain: domain.into(), version };
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![opset("", 17), opset(gptc_graph::names::MICROSOFT_DOMAIN, 1)],
            graph: Some(graph),
            ..Default::default()
        };
        gptc_graph::file::encode(&model)
    }

    #[test]
    fn a_rank_0_activation_is_refused_while_typing_at_every_level() {
        let typed = |bytes: &[u8]| {
            onnx().with_ignore_value_info(false).model_for_read(&mut &bytes[..])?.into_typed()
        };
        for level in [0, 4] {
            assert!(typed(&single_matmul_nbits(&[3, 64], level, 32, 0.5)).is_ok(), "{level}");
            // Before the check, `rank - 1` wrapped and the shape rules grew without end.
            let err = typed(&single_matmul_nbits(&[], level, 32, 0.5)).unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains("`the_matmul`") && err.contains("rank 0"), "{err}");
            let short = single_matmul_nbits(&[3, 32], level, 32, 0.5);
            let err = format!("{:#}", typed(&short).unwrap_err());
            assert!(err.contains("32 values in its last dim, K is 64"), "{err}");
        }
    }

    #[test]
    fn scales_beyond_float16_are_refused_only_where_tract_holds_them_in_float16() {
        let run = |bytes: &[u8]| -> TractResult<Vec<f32>> {
            let model = onnx().model_for_read(&mut &bytes[..])?.into_typed()?.into_runnable()?;
            let a = Tensor::from_shape(&[1, 64], &[1f32; 64])?;
            let y = model.run(tvec![a.into_tvalue()])?;
            Ok(y[0].to_plain_array_view::<f32>()?.iter().copied().collect())
        };
        // Blocks of 32: gptc's kernel (level 4) and tract's Q4_0 (level 0) keep float16 scales.
        for level in [0, 4] {
            let err = run(&single_matmul_nbits(&[1, 64], level, 32, 1e6)).unwrap_err();
            assert!(format!("{err:#}").contains("float16"), "{err:#}");
        }
        // Blocks of 64 at 4 bits: tract dequantizes in float32, the scale is kept exactly
        // (code 9 is 1 above the zero point 8: every output is 64 scales).
        let y = run(&single_matmul_nbits(&[1, 64], 0, 64, 1e6)).unwrap();
        assert!(y.iter().all(|&v| v == 64e6), "{y:?}");
    }

    #[test]
    fn every_kernel_and_crew_computes_the_same_as_plain_rust_on_one_thread() {
        // Odd block counts (a zero block pads the pair), rows not a multiple of four, one row,
        // a few (a batch), a prompt's many (blocks of 16 and a rest) and none, split over threads.
        let shapes = [(32, 5, 1), (96, 7, 3), (768, 131, 1), (3072, 64, 2), (64, 4099, 1)];
        for (k, n, m) in shapes.into_iter().chain([(96, 130, 40), (64, 7, 33), (64, 8, 0)]) {
            let (_, q) = matrix(k, n, k + n);
            let weights = Int4Weights::new(&q);
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let mut plain = vec![0f32; m * n];
            weights.matmul_on(&Crew::new(0), dots, &x, &mut plain).unwrap();
            for (name, kernel) in kernels() {
                let mut fast = vec![0f32; m * n];
                weights.matmul_on(&Crew::new(1), kernel, &x, &mut fast).unwrap();
                for (f, p) in fast.iter().zip(&plain) {
                    let close = (f - p).abs() <= 1e-5 * p.abs().max(1.0);
                    assert!(close, "{name} {k}x{n}x{m}: {f} vs {p}");
                }
            }
            for (row, expected) in x.chunks_exact(k).zip(plain.chunks_exact(n)) {
                let mut alone = vec![0f32; n];
                weights.matmul(row, &mut alone).unwrap();
                for (a, e) in alone.iter().zip(expected) {
                    assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{k}x{n}x{m}: {a} vs {e}");
                }
            }
        }
    }
}
