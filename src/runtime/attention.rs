//! One layer's attention, `softmax(q k^T c + bias) v`, as one tract op.
//!
//! tract runs it as two batched matmuls whose operands it packs first: at every decode step it
//! packs the whole key and value cache of every layer for one query row. This op reads each
//! key and value once per block of query rows instead (once for all the query heads of a group,
//! under grouped-query attention), skips the keys the causal mask hides, and spreads the heads
//! over the crew. BENCHMARKS.md has what each measured.

use std::ops::Range;

use tract_onnx::prelude::tract_ndarray::{s, Axis, Ix4, Ix5};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::{Add, Mul};
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

use super::crew::crew;

/// `softmax(q k^T scale + bias) v` for `q` `[B, H, S, D]`, `k` and `v` `[B, H, T, D]`, `bias`
/// broadcastable to `[B, H, S, T]`; the result with its heads merged, `[B, S, H, D]`. With
/// grouped heads (Llama 3.2, Qwen3), `q` is `[B, KV, G, S, D]` against `k` and `v`
/// `[B, KV, T, D]`, `bias` broadcastable to `[B, KV, G, S, T]`, the result `[B, S, KV, G, D]`:
/// the `G` heads of a group are query rows of one key/value head, which is read once for them.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    scale: f32,
}

impl Eq for Attention {}

impl Op for Attention {
    fn name(&self) -> StaticName {
        "GptcAttention".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Attention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(tvec!(self.attend(&inputs)?))
    }
}

impl Attention {
    fn attend(&self, inputs: &[TValue]) -> TractResult<TValue> {
        let q = inputs[0].to_plain_array_view::<f32>()?;
        let k = inputs[1].to_plain_array_view::<f32>()?.into_dimensionality::<Ix4>()?;
        let v = inputs[2].to_plain_array_view::<f32>()?.into_dimensionality::<Ix4>()?;
        let bias = inputs[3].to_plain_array_view::<f32>()?;
        // Grouped heads come as `[B, KV, G, S, D]`; ungrouped ones as `[B, H, S, D]`, one head
        // to a group.
        let grouped = q.ndim() == 5;
        let q = match grouped {
            true => q.into_dimensionality::<Ix5>()?,
            false => q.into_dimensionality::<Ix4>()?.insert_axis(Axis(2)),
        };
        let (batch, kv_heads, group, queries, dim) = q.dim();
        let keys = k.dim().2;
        ensure!(
            k.dim() == (batch, kv_heads, keys, dim) && v.dim() == k.dim(),
            "GptcAttention: q {:?}, k {:?}, v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        );
        ensure!(
            [q.is_standard_layout(), k.is_standard_layout(), v.is_standard_layout()]
                .iter()
                .all(|&row_major| row_major),
            "GptcAttention: inputs not in row-major order"
        );
        let heads = kv_heads * group;
        let out_shape: TVec<usize> = match grouped {
            true => tvec![batch, queries, kv_heads, group, dim],
            false => tvec![batch, queries, heads, dim],
        };
        if q.is_empty() {
            return Ok(Tensor::zero::<f32>(&out_shape)?.into_tvalue());
        }
        let bias = match bias.ndim() {
            4 => bias.insert_axis(Axis(2)),
            _ => bias,
        };
        let given = bias.into_dimensionality::<Ix5>()?;
        let bias = given
            .broadcast((batch, kv_heads, group, queries, keys))
            .with_context(|| format!("GptcAttention: bias {:?}", inputs[3].shape()))?;
        // A prompt's rows go through tiles (below), each over its span of visible keys: found
        // once for each row of biases as given, not again for every head its broadcast reaches.
        let rows = group * queries;
        let tiled = rows >= TILE_ROWS && dim.is_multiple_of(16);
        let (b0, h0, g0, q0, _) = given.dim();
        let spans: Vec<(usize, usize)> = match tiled {
            // Each row as its keys see it, a bias given for one key broadcast to all of them.
            true => given
                .broadcast((b0, h0, g0, q0, keys))
                .context("GptcAttention: a bias row against the keys")?
                .lanes(Axis(4))
                .into_iter()
                .map(|row| match row.as_slice() {
                    Some(row) => visible_span(row),
                    None => visible_span(&row.to_vec()),
                })
                .map(|span| span.unwrap_or((0, keys)))
                .collect(),
            false => Vec::new(),
        };
        let span_of = |b: usize, h: usize, g: usize, query: usize| {
            // A given axis is 1 or the full length (the broadcast above checked it).
            spans[(((b % b0) * h0 + h % h0) * g0 + g % g0) * q0 + query % q0]
        };
        // A key/value head's query rows (`G S` of them, group by group) side by side, as
        // `[B, KV, G, S, D]`; merged into `[B, S, KV, G, D]` below.
        let mut by_head = vec![0f32; batch * kv_heads * rows * dim];
        let head = |i: usize, out: &mut [f32]| {
            let (b, h) = (i / kv_heads, i % kv_heads);
            let k = k.slice(s![b, h, .., ..]);
            let v = v.slice(s![b, h, .., ..]);
            let q = q.slice(s![b, h, .., .., ..]);
            // Row-major (checked above): every slice of whole rows is contiguous.
            let (Some(k), Some(v), Some(q)) = (k.as_slice(), v.as_slice(), q.as_slice()) else {
                return;
            };
            let mut scratch = Scratch::default();
            // A prompt's rows go through tiles, against the keys transposed once per head.
            // (The value kernels take sixteen outputs at a time.)
            if tiled {
                transpose_keys(k, dim, &mut scratch.keys_by_dim);
            }
            // A block of query rows at a time, the heads of a group among them: each key and
            // value is read once for the block.
            let block_rows = if tiled { TILE_ROWS } else { QUERY_BLOCK };
            let (mut copied, mut spans) = (Vec::new(), Vec::new());
            for (block, out) in out.chunks_mut(block_rows * dim).enumerate() {
                let first = block * block_rows;
                let block_rows = first..first + out.len() / dim;
                let q = &q[block_rows.start * dim..block_rows.end * dim];
                if tiled {
                    // Each row's biases where they lie (the mask's rows are contiguous), else
                    // copied out of their broadcast.
                    let row = |row: usize| {
                        let (g, query) = (row / queries, row % queries);
                        bias.slice_move(s![b, h, g, query, ..])
                    };
                    let lying: Option<Vec<&[f32]>> =
                        block_rows.clone().map(|r| row(r).to_slice()).collect();
                    let biases = match lying {
                        Some(rows) => rows,
                        None => {
                            copied.clear();
                            block_rows.clone().for_each(|r| copied.extend(row(r).iter()));
                            copied.chunks_exact(keys).collect()
                        }
                    };
                    spans.clear();
                    spans.extend(
                        block_rows.clone().map(|r| span_of(b, h, r / queries, r % queries)),
                    );
                    let block =
                        Block { q, biases: &biases, spans: &spans, v, dim, scale: self.scale };
                    attend_tile(block, &mut scratch, out);
                    continue;
                }
                scratch.bias.clear();
                for row in block_rows.clone() {
                    let (g, query) = (row / queries, row % queries);
                    let row = bias.slice(s![b, h, g, query, ..]);
                    match row.as_slice() {
                        Some(row) => scratch.bias.extend_from_slice(row),
                        None => scratch.bias.extend(row.iter()),
                    }
                    scratch.bias.extend([0.0; ROW_PAD]);
                }
                attend(q, k, v, dim, self.scale, &mut scratch, out);
            }
        };
        let done = crew().run_on_chunks(&mut by_head, rows * dim, head);
        ensure!(done, "GptcAttention: a thread failed");
        // SAFETY: every head's every row is copied to its place, which covers the output.
        let merged = unsafe {
            super::written_tensor(&out_shape, |merged| {
                for (i, rows) in by_head.chunks_exact(rows * dim).enumerate() {
                    let (b, h) = (i / kv_heads, i % kv_heads);
                    for (row, values) in rows.chunks_exact(dim).enumerate() {
                        let (g, query) = (row / queries, row % queries);
                        let at = ((b * queries + query) * heads + h * group + g) * dim;
                        merged[at..][..dim].copy_from_slice(values);
                    }
                }
                Ok(())
            })?
        };
        Ok(merged)
    }
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        // `[B, H, S, D] -> [B, S, H, D]`, `[B, KV, G, S, D] -> [B, S, KV, G, D]`.
        let q = &inputs[0].shape;
        let shape: TVec<TDim> = match q.rank() {
            4 => tvec![q[0].clone(), q[2].clone(), q[1].clone(), q[3].clone()],
            5 => tvec![q[0].clone(), q[3].clone(), q[1].clone(), q[2].clone(), q[4].clone()],
            rank => bail!("GptcAttention: queries of rank {rank}"),
        };
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// Query rows attended together: their keys and values are read from the cache once.
const QUERY_BLOCK: usize = 8;

/// Floats after each row of a block's biases and scores: with 1024 keys, rows 4 KB apart fall
/// in one set of the first-level cache and evict each other.
const ROW_PAD: usize = 16;

/// A block's biases (copied out of their broadcast; rows of `T + ROW_PAD`) and scores (the
/// same layout), reused block to block; for tiles, the head's keys transposed and the block's
/// queries padded to whole tiles.
#[derive(Default)]
struct Scratch {
    bias: Vec<f32>,
    weights: Vec<f32>,
    keys_by_dim: Vec<f32>,
    queries: Vec<f32>,
}

/// A few query rows `q` (`[R, D]`) against `T` keys and values (`k`, `v` row-major `[T, D]`).
fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dim: usize,
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { attend_avx2(q, k, v, dim, scale, scratch, out) };
    }
    attend_any(q, k, v, dim, scale, scratch, out)
}

/// [`attend_any`] compiled for AVX2: the same arithmetic, eight lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dim: usize,
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    attend_any(q, k, v, dim, scale, scratch, out)
}

/// The graph's `softmax(q k^T scale + bias) v` for each row. A key whose bias is `f32::MIN` (or
/// -inf: gptc's mask) gets the bias as its score without the dot product: adding a finite score
/// below 2^103 in magnitude to `f32::MIN` rounds back to `f32::MIN`, so this is the same number.
/// Its weight is then 0 unless every key is masked, and zero weights skip their value row.
#[inline(always)]
fn attend_any(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dim: usize,
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let (rows, keys) = (q.len() / dim, k.len() / dim);
    let Scratch { bias, weights, .. } = scratch;
    weights.clear();
    let stride = keys + ROW_PAD;
    weights.resize(rows * stride, 0.0);
    let score = |dot: f32, b: f32| match b <= f32::MIN {
        true => b,
        false => dot * scale + b,
    };
    if rows == QUERY_BLOCK && dim.is_multiple_of(8) {
        // Each key against the whole block in independent lanes; keys the block cannot see
        // (the causal mask's upper triangle) cost no multiply at all.
        for (t, key) in k.chunks_exact(dim).enumerate() {
            let hidden = (0..rows).all(|r| bias[r * stride + t] <= f32::MIN);
            let dots = if hidden { [0.0; QUERY_BLOCK] } else { block_dots(q, key) };
            for (r, dot) in dots.into_iter().enumerate() {
                weights[r * stride + t] = score(dot, bias[r * stride + t]);
            }
        }
    } else {
        for (t, key) in k.chunks_exact(dim).enumerate() {
            for (r, query) in q.chunks_exact(dim).enumerate() {
                let b = bias[r * stride + t];
                weights[r * stride + t] = if b <= f32::MIN { b } else { score(dot(query, key), b) };
            }
        }
    }
    for row in weights.chunks_exact_mut(stride) {
        let row = &mut row[..keys];
        let largest = row.iter().fold(f32::NEG_INFINITY, |m, &w| m.max(w));
        for w in row.iter_mut() {
            *w = exp(*w - largest);
        }
        let total = sum(row);
        for w in row.iter_mut() {
            *w /= total;
        }
    }
    out.fill(0.0);
    if dim.is_multiple_of(32) {
        // Per row, 32 outputs at a time in four independent lanes of eight, values in key order:
        // the same sums as below, without one long chain of additions.
        let values = v.as_chunks::<8>().0;
        let eights = dim / 8;
        for (weights, out) in weights.chunks_exact(stride).zip(out.chunks_exact_mut(dim)) {
            let weights = &weights[..keys];
            for (part, out) in out.chunks_exact_mut(32).enumerate() {
                let mut acc = [[0f32; 8]; 4];
                for (t, &w) in weights.iter().enumerate() {
                    if w == 0.0 {
                        continue;
                    }
                    let value = &values[t * eights + part * 4..][..4];
                    for (acc, value) in acc.iter_mut().zip(value) {
                        for l in 0..8 {
                            acc[l] += w * value[l];
                        }
                    }
                }
                out.copy_from_slice(acc.as_flattened());
            }
        }
        return;
    }
    for (t, value) in v.chunks_exact(dim).enumerate() {
        for (r, out) in out.chunks_exact_mut(dim).enumerate() {
            let w = weights[r * stride + t];
            if w == 0.0 {
                continue;
            }
            for (o, x) in out.iter_mut().zip(value) {
                *o += w * x;
            }
        }
    }
}

/// [`dot`] of each of the [`QUERY_BLOCK`] rows of `q` with `key` (`dim` a multiple of 8), all
/// rows' lanes at once.
#[inline(always)]
fn block_dots(q: &[f32], key: &[f32]) -> [f32; QUERY_BLOCK] {
    let eights = key.len() / 8;
    let (queries, keys) = (q.as_chunks::<8>().0, key.as_chunks::<8>().0);
    let mut lanes = [[0f32; 8]; QUERY_BLOCK];
    for (c, key) in keys.iter().enumerate() {
        for (r, lanes) in lanes.iter_mut().enumerate() {
            let query = &queries[r * eights + c];
            for l in 0..8 {
                lanes[l] += query[l] * key[l];
            }
        }
    }
    lanes.map(total)
}

/// Query rows of a prompt's tile: the rows whose keys and values are read together.
const TILE_ROWS: usize = 8;

/// Keys of a score tile: two 512-bit registers a query row.
const TILE_KEYS: usize = 32;

/// Query rows one pass over the values serves; each value row loaded serves them all.
const VALUE_ROWS: usize = 4;

/// Keys `[T, D]` as `[D, T']`, `T'` rounded up to whole tiles with zeros, so a score tile reads
/// one contiguous run of keys per dimension. Copied a tile of keys at a time: the writes run along
/// rows, the reads stay within the few kilobytes of one tile.
fn transpose_keys(k: &[f32], dim: usize, out: &mut Vec<f32>) {
    let keys = k.len() / dim;
    let padded = keys.next_multiple_of(TILE_KEYS);
    out.clear();
    out.resize(dim * padded, 0.0);
    for (tile, block) in k.chunks(TILE_KEYS * dim).enumerate() {
        let t0 = tile * TILE_KEYS;
        for d in 0..dim {
            let column = &mut out[d * padded + t0..][..block.len() / dim];
            for (x, key) in column.iter_mut().zip(block.chunks_exact(dim)) {
                *x = key[d];
            }
        }
    }
}

/// A block of up to [`TILE_ROWS`] query rows of a prompt and what they attend to.
struct Block<'a> {
    /// `[R, D]`.
    q: &'a [f32],
    /// One slice of `T` a row.
    biases: &'a [&'a [f32]],
    /// Each row's visible keys ([`visible_span`]; a row that sees none attends to every key, as
    /// the graph's softmax of its biases does).
    spans: &'a [(usize, usize)],
    /// `[T, D]`.
    v: &'a [f32],
    dim: usize,
    scale: f32,
}

/// [`attend`] for a block of a prompt, the keys transposed in `scratch.keys_by_dim`
/// ([`transpose_keys`]), with the fastest tile kernels the CPU runs.
fn attend_tile(block: Block, scratch: &mut Scratch, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F (checked at run time).
            return unsafe { attend_tile_avx512(block, scratch, out) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
            return unsafe { attend_tile_avx2(block, scratch, out) };
        }
    }
    let kernels = TileKernels::<2> { scores: score_tile::<2>, values: value_tiles::<16> };
    attend_tile_with(block, scratch, out, kernels)
}

/// [`attend_tile_with`] AVX-512's kernels, the softmax in 512-bit registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attend_tile_avx512(block: Block, scratch: &mut Scratch, out: &mut [f32]) {
    let kernels = TileKernels::<{ avx512::SCORE_ROWS }> {
        // SAFETY: the caller's CPU has AVX-512 F.
        scores: |q, k, padded, dim| unsafe { avx512::score_tile(q, k, padded, dim) },
        values: |w, stride, v, dim, span, rows, out| unsafe {
            avx512::value_tiles(w, stride, v, dim, span, rows, out)
        },
    };
    attend_tile_with(block, scratch, out, kernels)
}

/// [`attend_tile_with`] the portable kernels compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_tile_avx2(block: Block, scratch: &mut Scratch, out: &mut [f32]) {
    let kernels = TileKernels::<2> {
        // SAFETY: the caller's CPU has AVX2 and FMA.
        scores: |q, k, padded, dim| unsafe { score_tile_avx2(q, k, padded, dim) },
        values: |w, stride, v, dim, span, rows, out| unsafe {
            value_tiles_avx2(w, stride, v, dim, span, rows, out)
        },
    };
    attend_tile_with(block, scratch, out, kernels)
}

/// The two inner loops of a tile: a tile of scores ([`score_tile`]) and a pass of weighted
/// values ([`value_tiles`]).
struct TileKernels<const ROWS: usize> {
    scores: ScoreTile<ROWS>,
    values: ValueTiles,
}

/// [`score_tile`]: `(queries by dimension, keys by dimension, padded keys, dim)`.
type ScoreTile<const ROWS: usize> = fn(&[f32], &[f32], usize, usize) -> [[f32; TILE_KEYS]; ROWS];

/// [`value_tiles`]: `(weights, stride, values, dim, keys, rows, out)`.
type ValueTiles = fn(&[f32], usize, &[f32], usize, Range<usize>, usize, &mut [f32]);

/// [`score_tile`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn score_tile_avx2(
    queries: &[f32],
    keys: &[f32],
    padded: usize,
    dim: usize,
) -> [[f32; TILE_KEYS]; 2] {
    score_tile::<2>(queries, keys, padded, dim)
}

/// [`value_tiles`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn value_tiles_avx2(
    weights: &[f32],
    stride: usize,
    v: &[f32],
    dim: usize,
    span: Range<usize>,
    rows: usize,
    out: &mut [f32],
) {
    match dim.is_multiple_of(32) {
        true => value_tiles::<32>(weights, stride, v, dim, span, rows, out),
        false => value_tiles::<16>(weights, stride, v, dim, span, rows, out),
    }
}

/// The graph's `softmax(q k^T scale + bias) v` for a block of rows, as [`attend_any`] defines
/// it, in tiles: `ROWS` query rows by [`TILE_KEYS`] keys for the scores, [`VALUE_ROWS`] rows for
/// the weighted values. Each row's softmax and sum run over its own span of keys, from the first
/// its bias does not hide to the last (outside it every weight is exactly 0); tiles no row of
/// the block sees (the causal mask's upper triangle) are skipped.
#[inline(always)]
fn attend_tile_with<const ROWS: usize>(
    block: Block,
    scratch: &mut Scratch,
    out: &mut [f32],
    kernels: TileKernels<ROWS>,
) {
    let Block { q, biases, spans, v, dim, scale } = block;
    let (rows, keys) = (q.len() / dim, v.len() / dim);
    let Scratch { weights, keys_by_dim, queries, .. } = scratch;
    let padded = keys_by_dim.len() / dim;
    let stride = keys + ROW_PAD;
    let hidden = |b: f32| b <= f32::MIN;
    // The queries as `[D, TILE_ROWS]`, rows past the block's zero.
    queries.clear();
    queries.resize(dim * TILE_ROWS, 0.0);
    for (r, query) in q.chunks_exact(dim).enumerate() {
        for (d, &x) in query.iter().enumerate() {
            queries[d * TILE_ROWS + r] = x;
        }
    }
    let lo = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let hi = spans.iter().map(|s| s.1).max().unwrap_or(0);
    // Every weight a pass reads lies in `lo..hi`: the block's rows write all of it below, the
    // rows past the block are zero there.
    weights.resize(TILE_ROWS * stride, 0.0);
    for row in weights.chunks_exact_mut(stride).skip(rows) {
        row[lo..hi].fill(0.0);
    }
    for t0 in (lo / TILE_KEYS * TILE_KEYS..hi).step_by(TILE_KEYS) {
        let width = TILE_KEYS.min(keys - t0);
        let biases = |r: usize| &biases[r][t0..][..width];
        if (0..rows).all(|r| biases(r).iter().all(|&b| hidden(b))) {
            for r in 0..rows {
                weights[r * stride + t0..][..width].copy_from_slice(biases(r));
            }
            continue;
        }
        for r0 in (0..rows).step_by(ROWS) {
            let dots = (kernels.scores)(&queries[r0..], &keys_by_dim[t0..], padded, dim);
            for (r, dots) in dots.iter().enumerate().take(rows - r0) {
                let scores = &mut weights[(r0 + r) * stride + t0..][..width];
                for ((w, &dot), &b) in scores.iter_mut().zip(dots).zip(biases(r0 + r)) {
                    *w = if hidden(b) { b } else { dot * scale + b };
                }
            }
        }
    }
    // The weights as `e^(score - largest)`; each row's sum divides its outputs at the end.
    let mut totals = [1f32; TILE_ROWS];
    for ((row, &(first, end)), total) in
        weights.chunks_exact_mut(stride).zip(spans).zip(&mut totals)
    {
        let seen = &mut row[first..end];
        let largest = largest(seen);
        *total = exp_and_sum(seen, largest);
        row[lo..first].fill(0.0);
        row[end..hi].fill(0.0);
    }
    for r0 in (0..rows).step_by(VALUE_ROWS) {
        let real_rows = VALUE_ROWS.min(rows - r0);
        (kernels.values)(
            &weights[r0 * stride..],
            stride,
            v,
            dim,
            lo..hi,
            real_rows,
            &mut out[r0 * dim..],
        );
    }
    for (out, total) in out.chunks_exact_mut(dim).zip(totals) {
        for o in out {
            *o /= total;
        }
    }
}

/// The largest of `values` (NaN aside), in eight independent lanes.
#[inline(always)]
fn largest(values: &[f32]) -> f32 {
    let (eights, rest) = values.as_chunks::<8>();
    let mut lanes = [f32::NEG_INFINITY; 8];
    for eight in eights {
        for l in 0..8 {
            lanes[l] = lanes[l].max(eight[l]);
        }
    }
    rest.iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &w| m.max(w))
}

/// `w <- e^(w - largest)` for each weight, and their sum (two passes: the exponentials in
/// vector registers, then [`sum`]; one loop of both is not vectorized).
#[inline(always)]
fn exp_and_sum(weights: &mut [f32], largest: f32) -> f32 {
    for w in weights.iter_mut() {
        *w = exp(*w - largest);
    }
    sum(weights)
}

/// The keys a row of biases lets its query see: from the first not hidden to the last, or
/// `None` if every key is. Searched sixteen biases at a time, from each end.
fn visible_span(biases: &[f32]) -> Option<(usize, usize)> {
    // As `hidden` everywhere here: a NaN bias is not hidden.
    let hidden = |b: f32| b <= f32::MIN;
    let seen = |b: &f32| !hidden(*b);
    let any_seen = |chunk: &[f32]| chunk.iter().fold(false, |any, b| any | seen(b));
    let chunks = biases.chunks(TILE_KEYS);
    let first_chunk = chunks.clone().position(any_seen)?;
    let last_chunk =
        chunks.rev().position(any_seen).map(|c| biases.len().div_ceil(TILE_KEYS) - 1 - c)?;
    let first =
        first_chunk * TILE_KEYS + biases[first_chunk * TILE_KEYS..].iter().position(seen)?;
    let tail = &biases[..(last_chunk * TILE_KEYS + TILE_KEYS).min(biases.len())];
    Some((first, tail.iter().rposition(seen)? + 1))
}

/// Dot products of `ROWS` queries (`[D, TILE_ROWS]`, from the first) with [`TILE_KEYS`] keys
/// (`[D, padded]`, from the first), in `ROWS` x [`TILE_KEYS`] independent lanes.
#[inline(always)]
fn score_tile<const ROWS: usize>(
    queries: &[f32],
    keys: &[f32],
    padded: usize,
    dim: usize,
) -> [[f32; TILE_KEYS]; ROWS] {
    let mut acc = [[0f32; TILE_KEYS]; ROWS];
    for d in 0..dim {
        let key = &keys[d * padded..][..TILE_KEYS];
        let query = &queries[d * TILE_ROWS..][..ROWS];
        for (acc, &x) in acc.iter_mut().zip(query) {
            for l in 0..TILE_KEYS {
                acc[l] += x * key[l];
            }
        }
    }
    acc
}

/// `out[r] = sum_t weights[r][t] v[t]` for the first `rows` of [`VALUE_ROWS`] rows of weights
/// (`stride` apart; rows past them zero) over the keys `span`, `LANES` outputs at a time.
#[inline(always)]
fn value_tiles<const LANES: usize>(
    weights: &[f32],
    stride: usize,
    v: &[f32],
    dim: usize,
    span: Range<usize>,
    rows: usize,
    out: &mut [f32],
) {
    for c0 in (0..dim).step_by(LANES) {
        let mut acc = [[0f32; LANES]; VALUE_ROWS];
        for t in span.clone() {
            let value = &v[t * dim + c0..][..LANES];
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = weights[r * stride + t];
                for l in 0..LANES {
                    acc[l] += w * value[l];
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            out[r * dim + c0..][..LANES].copy_from_slice(acc);
        }
    }
}

/// The tile kernels in 512-bit registers with fused multiply-adds.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Range, TILE_KEYS, TILE_ROWS, VALUE_ROWS};

    use std::arch::x86_64::*;

    /// Rows a pass of [`score_tile`] takes: two registers a row for [`TILE_KEYS`] keys, sixteen
    /// registers of sums (their totals over every 32 dimensions are kept apart, and spill).
    pub(super) const SCORE_ROWS: usize = 8;

    /// [`super::score_tile`] for [`SCORE_ROWS`] rows: per dimension, two loads of keys and eight
    /// broadcast queries feed sixteen multiply-adds (the ratio of the float32 matmul's pass).
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn score_tile(
        queries: &[f32],
        keys: &[f32],
        padded: usize,
        dim: usize,
    ) -> [[f32; TILE_KEYS]; SCORE_ROWS] {
        const HALVES: usize = TILE_KEYS / 16;
        assert!(dim > 0 && queries.len() >= (dim - 1) * TILE_ROWS + SCORE_ROWS);
        assert!(keys.len() >= (dim - 1) * padded + TILE_KEYS);
        // Sums over [`CHUNK`] dimensions at a time, added up at the end of each: a head of 128
        // dimensions in one chain of multiply-adds would round more than the tests allow.
        const CHUNK: usize = 32;
        let mut total = [_mm512_setzero_ps(); SCORE_ROWS * HALVES];
        for d0 in (0..dim).step_by(CHUNK) {
            let mut acc = [[_mm512_setzero_ps(); HALVES]; SCORE_ROWS];
            for d in d0..dim.min(d0 + CHUNK) {
                // SAFETY: row `d` of both, in bounds as asserted.
                unsafe {
                    let key = keys.as_ptr().add(d * padded);
                    let key: [__m512; HALVES] =
                        std::array::from_fn(|i| _mm512_loadu_ps(key.add(16 * i)));
                    let query = queries.as_ptr().add(d * TILE_ROWS);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let q = _mm512_set1_ps(*query.add(r));
                        for (acc, &key) in acc.iter_mut().zip(&key) {
                            *acc = _mm512_fmadd_ps(q, key, *acc);
                        }
                    }
                }
            }
            for (total, &acc) in total.iter_mut().zip(acc.as_flattened()) {
                *total = _mm512_add_ps(*total, acc);
            }
        }
        let mut out = [[0f32; TILE_KEYS]; SCORE_ROWS];
        for (out, &sum) in out.as_flattened_mut().chunks_exact_mut(16).zip(&total) {
            // SAFETY: sixteen floats into sixteen.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sum) };
        }
        out
    }

    /// [`super::value_tiles`]: 64 outputs of each of [`VALUE_ROWS`] rows a pass (16 where `dim`
    /// is not a multiple of 64), in sixteen registers.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn value_tiles(
        weights: &[f32],
        stride: usize,
        v: &[f32],
        dim: usize,
        span: Range<usize>,
        rows: usize,
        out: &mut [f32],
    ) {
        match dim.is_multiple_of(64) {
            // SAFETY: the caller's CPU has AVX-512 F.
            true => unsafe { value_pass::<4>(weights, stride, v, dim, span, rows, out) },
            false => unsafe { value_pass::<1>(weights, stride, v, dim, span, rows, out) },
        }
    }

    /// `REGS` registers of 16 outputs a row.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn value_pass<const REGS: usize>(
        weights: &[f32],
        stride: usize,
        v: &[f32],
        dim: usize,
        span: Range<usize>,
        rows: usize,
        out: &mut [f32],
    ) {
        let lanes = 16 * REGS;
        assert!(dim.is_multiple_of(lanes) && rows <= VALUE_ROWS);
        assert!(span.end * dim <= v.len() && (VALUE_ROWS - 1) * stride + span.end <= weights.len());
        assert!(out.len() >= (rows.max(1) - 1) * dim + dim);
        for c0 in (0..dim).step_by(lanes) {
            let mut acc = [[_mm512_setzero_ps(); REGS]; VALUE_ROWS];
            for t in span.clone() {
                // SAFETY: value row `t` and weights `t` of each row, in bounds as asserted.
                unsafe {
                    let value = v.as_ptr().add(t * dim + c0);
                    let values: [__m512; REGS] =
                        std::array::from_fn(|i| _mm512_loadu_ps(value.add(16 * i)));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let w = _mm512_set1_ps(*weights.as_ptr().add(r * stride + t));
                        for (acc, &value) in acc.iter_mut().zip(&values) {
                            *acc = _mm512_fmadd_ps(w, value, *acc);
                        }
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(rows) {
                for (i, &acc) in acc.iter().enumerate() {
                    // SAFETY: sixteen floats of row `r`, in bounds as asserted.
                    unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(r * dim + c0 + 16 * i), acc) };
                }
            }
        }
    }
}

/// `e^x` in plain arithmetic, so that a loop of it runs in vector registers: `2^n e^r` with
/// `n = round(x / ln 2)`, `r` reduced in two parts (Cody and Waite) and `e^r` by its Taylor
/// polynomial to `r^7` (|r| <= 0.35: under 1e-7 relative). Below -87 it is 0, as `expf` rounds.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.0, 88.0);
    let n = (clamped * std::f32::consts::LOG2_E).round_ties_even();
    let r = clamped - n * LN2_HIGH - n * LN2_LOW;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // 2^n from the bits of n + 127 + 1.5 * 2^23, whose low mantissa bits are n + 127.
    let two_n = f32::from_bits((n + (127.0 + 12_582_912.0)).to_bits() << 23);
    let y = if x < -87.0 { 0.0 } else { p * two_n };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// A sum in eight independent lanes.
#[inline(always)]
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (eights, rest) = values.as_chunks::<8>();
    for eight in eights {
        for l in 0..8 {
            lanes[l] += eight[l];
        }
    }
    total(lanes) + rest.iter().sum::<f32>()
}

/// In eight independent lanes, which the compiler maps onto vector registers.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    for (x, y) in a8.iter().zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    total(lanes) + tail
}

/// The eight lanes of [`dot`], [`block_dots`] and [`sum`] added pairwise, in one order for all.
#[inline(always)]
fn total([a, b, c, d, e, f, g, h]: [f32; 8]) -> f32 {
    ((a + e) + (b + f)) + ((c + g) + (d + h))
}

/// Replaces each layer's attention chain as tract-onnx types gptc's graph,
/// `EinSum(q, Move(2,3)(k)) * c + bias -> Softmax(last) -> EinSum(., v) -> Move(1,2)`, by one
/// [`Attention`]; grouped heads as `EinSum(q, Move(3,4)(AddAxis(2)(k))) * c + bias ->
/// Softmax(last) -> EinSum(., AddAxis(2)(v)) -> Move(3,1)`, the key/value head broadcast over
/// its group by the matmuls (which tract packs, the whole cache at every step). A layer that
/// differs in any way (types, ranks, constants, other consumers) is left as it is.
pub fn use_attention_kernel(mut model: TypedModel) -> TractResult<TypedModel> {
    let layers: Vec<Chain> =
        model.nodes().iter().filter_map(|node| Chain::ending_at(&model, node)).collect();
    for chain in layers {
        let op = Attention { scale: chain.scale };
        let inputs = [chain.q, chain.k, chain.v, chain.bias];
        super::replace_with(
            &mut model,
            [chain.merge, chain.context],
            "gptc_attention",
            op,
            &inputs,
        )?;
    }
    Ok(model)
}

/// The nodes of one layer's attention, and what feeds them.
struct Chain {
    q: OutletId,
    k: OutletId,
    v: OutletId,
    bias: OutletId,
    scale: f32,
    /// The context matmul, whose output the op takes over, and the merge of heads after it.
    context: usize,
    merge: usize,
}

impl Chain {
    fn ending_at(model: &TypedModel, context: &TypedNode) -> Option<Chain> {
        // Ungrouped `[B, H, ., .]` or grouped `[B, KV, G, ., .]` batched matmuls.
        let matmul_rank = |n: &TypedNode| {
            let e = n.op_as::<EinSum>()?;
            if e.q_params.is_some() || e.operating_dt != f32::datum_type() {
                return None;
            }
            match &*e.axes.to_string() {
                "abmk,abkn->abmn" => Some(4),
                "abcmk,abckn->abcmn" => Some(5),
                _ => None,
            }
        };
        let binary = |n: &TypedNode, mul: bool| {
            n.op_as::<TypedBinOp>().is_some_and(|b| match mul {
                true => b.0.is::<Mul>(),
                false => b.0.is::<Add>(),
            })
        };
        // Every intermediate feeds only the next op of the chain.
        let only = |outlet: OutletId| {
            let node = model.node(outlet.node);
            (node.outputs.len() == 1
                && node.outputs[0].successors.len() == 1
                && !model.output_outlets().ok()?.contains(&outlet))
            .then_some(node)
        };
        let axis_op = |n: &TypedNode, op: AxisOp| n.op_as::<AxisOp>() == Some(&op);
        let rank = |o: OutletId| model.outlet_fact(o).map(|f| f.rank()).ok();
        // Each op is checked before its inputs are read: the count of inputs is the op's.
        let rank_of_heads = matmul_rank(context)?;
        let last = rank_of_heads - 1;
        let is_softmax = |n: &TypedNode| {
            n.op_as::<Softmax>().is_some_and(|s| {
                s.kind == SoftmaxKind::Softmax
                    && s.quant_output_dt.is_none()
                    && s.axes[..] == [last]
            })
        };
        let softmax = only(context.inputs[0]).filter(|n| is_softmax(n))?;
        let add = only(softmax.inputs[0]).filter(|n| binary(n, false))?;
        let multiply = only(add.inputs[0]).filter(|n| binary(n, true))?;
        let scores = only(multiply.inputs[0]).filter(|n| matmul_rank(n) == Some(rank_of_heads))?;
        let transposed = only(scores.inputs[1])?;
        // The key and value heads themselves, `[B, KV, T, D]`.
        let (k, v, merge) = match rank_of_heads {
            4 => {
                let k = axis_op(transposed, AxisOp::Move(2, 3)).then_some(transposed.inputs[0])?;
                (k, context.inputs[1], AxisOp::Move(1, 2))
            }
            _ => {
                let unsqueezed = axis_op(transposed, AxisOp::Move(3, 4))
                    .then(|| only(transposed.inputs[0]))??;
                let k = axis_op(unsqueezed, AxisOp::Add(2)).then_some(unsqueezed.inputs[0])?;
                let values = only(context.inputs[1])?;
                let v = axis_op(values, AxisOp::Add(2)).then_some(values.inputs[0])?;
                (k, v, AxisOp::Move(3, 1))
            }
        };
        let scale = model.outlet_fact(multiply.inputs[1]).ok()?.konst.clone()?;
        // Read from the one float itself: tract's `cast_to_scalar` refuses a rank-5 tensor.
        let scale = match scale.datum_type() == f32::datum_type() && scale.len() == 1 {
            true => *scale.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.first()?,
            false => return None,
        };
        let (q, bias) = (scores.inputs[0], add.inputs[1]);
        let f32_inputs = [q, k, v, bias]
            .iter()
            .all(|&o| model.outlet_fact(o).is_ok_and(|f| f.datum_type == f32::datum_type()));
        let ranks_hold = rank(q) == Some(rank_of_heads)
            && rank(k) == Some(4)
            && rank(v) == Some(4)
            && rank(bias).is_some_and(|r| r == 4 || r == rank_of_heads);
        let merge = only(context.id.into()).and_then(|_| {
            let next = model.node(context.outputs[0].successors[0].node);
            axis_op(next, merge).then_some(next)
        })?;
        (f32_inputs && ranks_hold).then_some(Chain {
            q,
            k,
            v,
            bias,
            scale,
            context: context.id,
            merge: merge.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tract::TractRuntime;
    use gptc_graph::{build_model, file, GptConfig, GraphOptions, Precision, Quantization};

    fn tiny_config() -> GptConfig {
        GptConfig {
            vocab_size: 50,
            context_length: 40,
            emb_dim: 64,
            n_heads: 4,
            n_layers: 3,
            drop_rate: 0.0,
            qkv_bias: true,
        }
    }

    fn runtime(
        config: &GptConfig,
        kv_cache: bool,
        precision: Precision,
        quantization: Quantization,
    ) -> TractRuntime {
        let options = GraphOptions { kv_cache, precision, quantization, ..Default::default() };
        let mut init = gptc_graph::RandomInit { seed: 5 };
        let model = build_model(config, options, &mut init, None).unwrap();
        TractRuntime::from_bytes(&file::encode(&model)).unwrap()
    }

    fn tiny(kv_cache: bool, precision: Precision, quantization: Quantization) -> TractRuntime {
        runtime(&tiny_config(), kv_cache, precision, quantization)
    }

    fn attention_ops(runtime: &TractRuntime) -> Vec<Attention> {
        let nodes = runtime.backend().plan().model().nodes();
        nodes.iter().filter_map(|n| n.op_as::<Attention>().cloned()).collect()
    }

    #[test]
    fn each_float32_layer_gets_one_attention_op_float16_keeps_tracts() {
        let int4 = Quantization::Int4 { accuracy_level: 0 };
        for kv_cache in [false, true] {
            for quantization in [Quantization::None, int4] {
                let runtime = tiny(kv_cache, Precision::F32, quantization);
                assert_eq!(attention_ops(&runtime).len(), 3, "{kv_cache} {quantization:?}");
            }
            assert!(attention_ops(&tiny(kv_cache, Precision::F16, Quantization::None)).is_empty());
        }
    }

    fn values(shape: &[usize], seed: usize) -> TValue {
        let n: usize = shape.iter().product();
        let v: Vec<f32> =
            (0..n).map(|i| ((i * 7919 + seed * 104729) % 2001) as f32 / 500.0 - 2.0).collect();
        Tensor::from_shape(shape, &v).unwrap().into_tvalue()
    }

    /// `softmax(q k^T scale + bias) v` in float64, heads merged: `[B, S, H, D]`.
    fn reference(inputs: &[TValue], scale: f32) -> Vec<f32> {
        let view = |i: usize| inputs[i].to_plain_array_view::<f32>().unwrap();
        let (q, k, v, bias) = (view(0), view(1), view(2), view(3));
        let (batch, heads, queries, dim) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
        let keys = k.shape()[2];
        let mut out = vec![0f32; batch * queries * heads * dim];
        for (b, h, s) in (0..batch)
            .flat_map(|b| (0..heads).flat_map(move |h| (0..queries).map(move |s| (b, h, s))))
        {
            let scores: Vec<f64> = (0..keys)
                .map(|t| {
                    let dot: f64 =
                        (0..dim).map(|d| (q[[b, h, s, d]] * k[[b, h, t, d]]) as f64).sum();
                    dot * scale as f64 + bias[[b, 0, s, t]] as f64
                })
                .collect();
            let largest = scores.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            let weights: Vec<f64> = scores.iter().map(|x| (x - largest).exp()).collect();
            let total: f64 = weights.iter().sum();
            for d in 0..dim {
                let value: f64 = (0..keys).map(|t| weights[t] * v[[b, h, t, d]] as f64).sum();
                out[((b * queries + s) * heads + h) * dim + d] = (value / total) as f32;
            }
        }
        out
    }

    #[test]
    fn the_op_computes_the_attention_it_replaces() {
        let wide = GptConfig { emb_dim: 768, n_heads: 12, context_length: 64, ..tiny_config() };
        for (config, dim) in [(tiny_config(), 16), (wide, 64)] {
            let op = attention_ops(&runtime(&config, true, Precision::F32, Quantization::None))
                .remove(0);
            let heads = config.n_heads;
            // One query (decode), prompts of whole and partial blocks with a past, and no query.
            for (batch, queries, keys) in [
                (1, 1, 1),
                (2, 1, 5),
                (3, 1, 37),
                (1, 8, 8),
                (2, 13, 20),
                (3, 37, 37),
                (1, 16, 40),
                (3, 70, 100),
                (1, 0, 4),
            ] {
                // gptc's mask: causal over past and new slots, padded slots hidden (f32::MIN
                // added); the third sequence is all padding, so its rows see no key at all.
                let past = keys - queries;
                let bias: Vec<f32> = (0..batch * queries * keys)
                    .map(|i| {
                        let (b, s, t) = (i / (queries * keys), i / keys % queries, i % keys);
                        let hidden = t > past + s || (b == 1 && t % 3 == 1) || b == 2;
                        if hidden {
                            f32::MIN
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let inputs = [
                    values(&[batch, heads, queries, dim], 1),
                    values(&[batch, heads, keys, dim], 2),
                    values(&[batch, heads, keys, dim], 3),
                    Tensor::from_shape(&[batch, 1, queries, keys], &bias).unwrap().into_tvalue(),
                ];
                let ours = op.attend(&inputs).unwrap();
                assert_eq!(ours.shape(), &[batch, queries, heads, dim]);
                let expected = reference(&inputs, op.scale);
                let ours = ours.to_plain_array_view::<f32>().unwrap();
                for (a, e) in ours.iter().zip(&expected) {
                    let shape = (batch, queries, keys, dim);
                    assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{shape:?}: {a} vs {e}");
                }
            }
        }
    }

    /// Grouped heads (Llama 3.2, Qwen3) give what each query head gets from its key/value head
    /// repeated, ungrouped: one query (decode) and prompts, with a past, head_dim up to 128.
    #[test]
    fn grouped_heads_attend_as_their_key_value_heads_repeated() {
        let op = Attention { scale: 0.125 };
        for (batch, kv, group, queries, keys, dim) in [
            (1, 2, 4, 1, 9, 64),
            (2, 8, 2, 1, 33, 128),
            (1, 2, 2, 13, 20, 128),
            (2, 2, 3, 45, 60, 128),
            (2, 1, 4, 9, 9, 32),
            (3, 2, 3, 5, 12, 32),
            (1, 2, 2, 0, 3, 32),
        ] {
            let past = keys - queries;
            let bias: Vec<f32> = (0..batch * queries * keys)
                .map(|i| {
                    let (b, s, t) = (i / (queries * keys), i / keys % queries, i % keys);
                    let hidden = t > past + s || (b == 1 && t % 3 == 1);
                    if hidden {
                        f32::MIN
                    } else {
                        0.0
                    }
                })
                .collect();
            let heads = kv * group;
            let q = values(&[batch, kv, group, queries, dim], 1);
            let (k, v) = (values(&[batch, kv, keys, dim], 2), values(&[batch, kv, keys, dim], 3));
            let grouped = [
                q.clone(),
                k.clone(),
                v.clone(),
                Tensor::from_shape(&[batch, 1, 1, queries, keys], &bias).unwrap().into_tvalue(),
            ];
            // Head `h` of the ungrouped form is head `h % group` of group `h / group`.
            let repeated = |x: &TValue| {
                let x = x.to_plain_array_view::<f32>().unwrap();
                let rows: Vec<f32> = (0..batch * heads)
                    .flat_map(|i| x.slice(s![i / heads, i % heads / group, .., ..]).to_owned())
                    .collect();
                Tensor::from_shape(&[batch, heads, keys, dim], &rows).unwrap().into_tvalue()
            };
            let ungrouped = [
                q.into_tensor().into_shape(&[batch, heads, queries, dim]).unwrap().into_tvalue(),
                repeated(&k),
                repeated(&v),
                Tensor::from_shape(&[batch, 1, queries, keys], &bias).unwrap().into_tvalue(),
            ];
            let ours = op.attend(&grouped).unwrap();
            assert_eq!(ours.shape(), &[batch, queries, kv, group, dim]);
            let expected = reference(&ungrouped, op.scale);
            let ours = ours.to_plain_array_view::<f32>().unwrap();
            assert_eq!(ours.len(), expected.len());
            for (a, e) in ours.iter().zip(&expected) {
                let shape = (batch, kv, group, queries, keys, dim);
                assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{shape:?}: {a} vs {e}");
            }
        }
    }

    /// A bias may be given for fewer axes than it covers (one row for every query, one value for
    /// every key), or for every head: each prompt row's span of keys is found on the row as
    /// broadcast, and a head's rows on that head's biases.
    #[test]
    fn a_broadcast_bias_means_what_the_full_one_means() {
        let wide = GptConfig { emb_dim: 768, n_heads: 12, context_length: 64, ..tiny_config() };
        let op = attention_ops(&runtime(&wide, true, Precision::F32, Quantization::None)).remove(0);
        let (batch, heads, dim, queries, keys) = (2, 12, 64, 19, 40);
        let qkv = [
            values(&[batch, heads, queries, dim], 1),
            values(&[batch, heads, keys, dim], 2),
            values(&[batch, heads, keys, dim], 3),
        ];
        let attend = |shape: &[usize], bias: &dyn Fn(&[usize]) -> f32| {
            let n: usize = shape.iter().product();
            let at = |i: usize| {
                let mut index = vec![0; 4];
                let mut rest = i;
                for axis in (0..4).rev() {
                    index[axis] = rest % shape[axis];
                    rest /= shape[axis];
                }
                index
            };
            let values: Vec<f32> = (0..n).map(|i| bias(&at(i))).collect();
            let bias = Tensor::from_shape(shape, &values).unwrap().into_tvalue();
            let inputs = [qkv[0].clone(), qkv[1].clone(), qkv[2].clone(), bias];
            op.attend(&inputs).unwrap().into_tensor()
        };
        let uniform = |_: &[usize]| -1.5;
        let full = attend(&[batch, 1, queries, keys], &uniform);
        for shape in [[1, 1, 1, 1], [1, 1, queries, 1], [1, 1, 1, keys]] {
            assert_eq!(attend(&shape, &uniform), full, "bias {shape:?}");
        }
        // Causal with a past of 21 slots, the second sequence's every third key hidden, and for
        // the per-head form head h also hiding key h: the same biases shared or given per head.
        let hidden = |b: usize, s: usize, t: usize| t > 21 + s || (b == 1 && t % 3 == 1);
        let mask = |b: usize, s: usize, t: usize, extra: bool| match hidden(b, s, t) || extra {
            true => f32::MIN,
            false => 0.0,
        };
        let shared = attend(&[batch, 1, queries, keys], &|i| mask(i[0], i[2], i[3], false));
        let per_head = attend(&[batch, heads, queries, keys], &|i| mask(i[0], i[2], i[3], false));
        assert_eq!(per_head, shared, "a bias given per head, the same for each");
        let own = attend(&[batch, heads, queries, keys], &|i| mask(i[0], i[2], i[3], i[3] == i[1]));
        let own = own.to_plain_array_view::<f32>().unwrap();
        let shared = shared.to_plain_array_view::<f32>().unwrap();
        for h in 0..heads {
            let differs = own.slice(s![.., .., h, ..]) != shared.slice(s![.., .., h, ..]);
            assert!(differs, "head {h} did not read its own biases");
        }
    }

    #[test]
    fn a_rows_visible_span_is_from_its_first_seen_key_to_its_last() {
        let patterns = [
            vec![0.0; 40],
            vec![f32::MIN; 40],
            (0..40).map(|t| if t <= 21 { 0.0 } else { f32::MIN }).collect::<Vec<_>>(),
            (0..40).map(|t| if (5..=16).contains(&t) { -3.0 } else { f32::NEG_INFINITY }).collect(),
            (0..37).map(|t| if t % 3 == 1 || t == 36 { 0.0 } else { f32::MIN }).collect(),
            (0..33).map(|t| if t == 32 { f32::NAN } else { f32::MIN }).collect(),
            vec![],
        ];
        for biases in patterns {
            let hidden = |b: f32| b <= f32::MIN;
            let first = biases.iter().position(|&b| !hidden(b));
            let last = biases.iter().rposition(|&b| !hidden(b));
            let expected = first.zip(last).map(|(f, l)| (f, l + 1));
            assert_eq!(visible_span(&biases), expected, "{biases:?}");
        }
    }

    #[test]
    fn exp_is_expf_within_a_few_ulps() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 + 87.0 * i as f32 / 200_000.0;
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max((ours - libm).abs() / libm);
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }
}
