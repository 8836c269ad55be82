//! gptc's float32 matmul by a constant matrix (every projection of a float32 model) for tract.
//!
//! The matrix is laid out once, at load, in panels of 16 columns (`[k, 16]` each, a 64-byte row
//! a step), and a pass multiplies up to eight activation rows by one panel: per step, one load
//! of the panel and eight fused multiply-adds by activations broadcast from the rows, into eight
//! registers of sixteen outputs. A panel is read once per eight rows (from the cache after the
//! first pass), the activations are read as they lie (no packing per call), and the panels are
//! shared with the crew, as the 4-bit kernel's are. One row (a decode step) keeps four sums a
//! lane, so the multiply-adds do not wait on each other and the pass runs at memory speed.

use std::sync::Arc;

use super::addends::{Addends, Epilogue, TakesAddends};
use super::crew::{crew, Crew, DisjointColumns};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::konst::Const;

/// Columns of a panel: two 512-bit registers of outputs a row.
const PANEL: usize = 32;

/// Floats of a 512-bit register.
#[cfg(target_arch = "x86_64")]
const LANES: usize = 16;

/// Activation rows a pass takes at most, each with its own register of sums.
const PASS_ROWS: usize = 8;

/// Multiply-adds a chunk of work takes, at least (as the 4-bit kernel's chunks).
const CHUNK_WORK: usize = 1 << 16;

/// A `[k, n]` float32 matrix as panels of [`PANEL`] columns, `[panels, k, PANEL]`; columns past
/// `n` are zero.
#[derive(Debug)]
pub struct DensePanels {
    k: usize,
    n: usize,
    values: Vec<f32>,
}

impl DensePanels {
    /// `w` row-major `[k, n]`, or `[n, k]` with `transposed` (a head stored as its table).
    pub fn new(w: &[f32], k: usize, n: usize, transposed: bool) -> DensePanels {
        let mut values = vec![0f32; n.div_ceil(PANEL) * k * PANEL];
        for (at, &x) in w.iter().enumerate().take(k * n) {
            let (i, j) = if transposed { (at % k, at / k) } else { (at / n, at % n) };
            values[((j / PANEL) * k + i) * PANEL + j % PANEL] = x;
        }
        DensePanels { k, n, values }
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// `y = x W (+ bias) (+ residual)` for `m` rows `x` of `k` values into `y` of `m` rows of
    /// `n`, the bias (`[n]`) and the residual (`[m, n]`) added as the products are written.
    pub fn matmul(&self, x: &[f32], adds: Addends, y: &mut [f32]) -> TractResult<()> {
        self.matmul_on(crew(), kernel(), x, adds, y)
    }

    fn matmul_on(
        &self,
        crew: &Crew,
        kernel: Kernel,
        x: &[f32],
        adds: Addends,
        y: &mut [f32],
    ) -> TractResult<()> {
        let (k, n) = (self.k, self.n);
        let m = adds.checked_rows("GptcDenseMatMul", [k, n], x, y)?;
        if m == 0 {
            return Ok(());
        }
        let panels_per_chunk = (CHUNK_WORK / (PANEL * k * m)).max(1);
        let out = DisjointColumns::new(y);
        let chunk = |c: usize| {
            let first = c * panels_per_chunk;
            for p in first..self.panels().min(first + panels_per_chunk) {
                let panel = &self.values[p * k * PANEL..][..k * PANEL];
                let (column, width) = (p * PANEL, PANEL.min(n - p * PANEL));
                let mut r0 = 0;
                while r0 < m {
                    let rows = [PASS_ROWS, 4, 2, 1].into_iter().find(|&r| r <= m - r0).unwrap_or(1);
                    let mut products = kernel(panel, &x[r0 * k..][..rows * k], rows);
                    adds.add_to(&mut products[..rows], r0, column, width, n);
                    for (r, products) in products.iter().enumerate().take(rows) {
                        // SAFETY: panel `p`'s columns, which only the chunk of panel `p` writes.
                        unsafe { out.write((r0 + r) * n + column, &products[..width]) };
                    }
                    r0 += rows;
                }
            }
        };
        ensure!(
            crew.run(self.panels().div_ceil(panels_per_chunk), &chunk),
            "GptcDenseMatMul: a thread of the kernel failed"
        );
        Ok(())
    }
}

/// The products of `rows` (8, 4, 2 or 1) activation rows `x` (`[rows, k]`) with a panel
/// (`[k, PANEL]`): `out[r][column]`.
type Kernel = fn(&[f32], &[f32], usize) -> [[f32; PANEL]; PASS_ROWS];

/// The fastest this CPU runs (chosen once).
fn kernel() -> Kernel {
    static FASTEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *FASTEST.get_or_init(|| kernels().last().map_or(panel_plain, |&(_, fastest)| fastest))
}

/// Every kernel this CPU runs, slowest first.
fn kernels() -> Vec<(&'static str, Kernel)> {
    let mut all: Vec<(&'static str, Kernel)> = vec![("plain", panel_plain)];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
            all.push(("avx2", |panel, x, rows| unsafe { panel_avx2(panel, x, rows) }));
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F (checked at run time).
            all.push(("avx512", |panel, x, rows| unsafe { avx512::panel(panel, x, rows) }));
        }
    }
    all
}

/// The kernel in plain arithmetic: `ROWS` rows, each with `SPLIT` sums a column (steps
/// `s, s + SPLIT, ..` in sum `s`, added at the end), which the compiler keeps in registers.
#[inline(always)]
fn panel_rows<const ROWS: usize, const SPLIT: usize>(
    panel: &[f32],
    x: &[f32],
) -> [[f32; PANEL]; PASS_ROWS] {
    let k = panel.len() / PANEL;
    let mut acc = [[[0f32; PANEL]; ROWS]; SPLIT];
    let whole = k - k % SPLIT;
    for step in (0..whole).step_by(SPLIT) {
        for (s, acc) in acc.iter_mut().enumerate() {
            let weights = &panel[(step + s) * PANEL..][..PANEL];
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = x[r * k + step + s];
                for c in 0..PANEL {
                    acc[c] += a * weights[c];
                }
            }
        }
    }
    for step in whole..k {
        let weights = &panel[step * PANEL..][..PANEL];
        for (r, acc) in acc[0].iter_mut().enumerate() {
            let a = x[r * k + step];
            for c in 0..PANEL {
                acc[c] += a * weights[c];
            }
        }
    }
    let mut out = [[0f32; PANEL]; PASS_ROWS];
    for (r, out) in out.iter_mut().enumerate().take(ROWS) {
        for (c, out) in out.iter_mut().enumerate() {
            *out = acc.iter().map(|acc| acc[r][c]).sum();
        }
    }
    out
}

fn panel_plain(panel: &[f32], x: &[f32], rows: usize) -> [[f32; PANEL]; PASS_ROWS] {
    panel_any(panel, x, rows)
}

/// The pass for `rows` rows: one sum a column for 8 or 4 rows, two for 2, four for 1.
#[inline(always)]
fn panel_any(panel: &[f32], x: &[f32], rows: usize) -> [[f32; PANEL]; PASS_ROWS] {
    match rows {
        PASS_ROWS => panel_rows::<PASS_ROWS, 1>(panel, x),
        4 => panel_rows::<4, 1>(panel, x),
        2 => panel_rows::<2, 2>(panel, x),
        _ => panel_rows::<1, 4>(panel, x),
    }
}

/// [`panel_plain`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn panel_avx2(panel: &[f32], x: &[f32], rows: usize) -> [[f32; PANEL]; PASS_ROWS] {
    panel_any(panel, x, rows)
}

/// The kernel in 512-bit registers with fused multiply-adds.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{LANES, PANEL, PASS_ROWS};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel(panel: &[f32], x: &[f32], rows: usize) -> [[f32; PANEL]; PASS_ROWS] {
        // SAFETY: the caller's CPU has AVX-512 F.
        unsafe {
            match rows {
                PASS_ROWS => panel_rows::<PASS_ROWS, 1>(panel, x),
                4 => panel_rows::<4, 1>(panel, x),
                2 => panel_rows::<2, 2>(panel, x),
                _ => panel_rows::<1, 4>(panel, x),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn panel_rows<const ROWS: usize, const SPLIT: usize>(
        panel: &[f32],
        x: &[f32],
    ) -> [[f32; PANEL]; PASS_ROWS] {
        const HALVES: usize = PANEL / LANES;
        let k = panel.len() / PANEL;
        assert!(panel.len() == k * PANEL && x.len() >= ROWS * k && ROWS <= PASS_ROWS);
        let mut acc = [[[_mm512_setzero_ps(); HALVES]; ROWS]; SPLIT];
        let whole = k - k % SPLIT;
        // SAFETY (all loads): step `step + s` of the panel and of each row, in bounds as
        // asserted.
        let (panel, x) = (panel.as_ptr(), x.as_ptr());
        let step_into = |acc: &mut [[__m512; HALVES]; ROWS], step: usize| unsafe {
            let weights: [__m512; HALVES] =
                std::array::from_fn(|h| _mm512_loadu_ps(panel.add(step * PANEL + h * LANES)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*x.add(r * k + step));
                for (acc, &weights) in acc.iter_mut().zip(&weights) {
                    *acc = _mm512_fmadd_ps(a, weights, *acc);
                }
            }
        };
        for step in (0..whole).step_by(SPLIT) {
            for (s, acc) in acc.iter_mut().enumerate() {
                step_into(acc, step + s);
            }
        }
        for step in whole..k {
            step_into(&mut acc[0], step);
        }
        let mut out = [[0f32; PANEL]; PASS_ROWS];
        for (r, out) in out.iter_mut().enumerate().take(ROWS) {
            for h in 0..HALVES {
                let total =
                    acc.iter().fold(_mm512_setzero_ps(), |t, acc| _mm512_add_ps(t, acc[r][h]));
                // SAFETY: sixteen floats into sixteen.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(h * LANES), total) };
            }
        }
        out
    }
}

/// `y = x W (+ bias) (+ r)` for a float32 `x` of `[.., k]`, a constant `W` and what its
/// [`Epilogue`] adds: tract's op around [`DensePanels::matmul`].
#[derive(Debug, Clone)]
pub struct DenseMatMul {
    weights: Arc<DensePanels>,
    epilogue: Epilogue,
}

/// Ops are equal when they hold the same panels (one matrix is never laid out twice).
impl PartialEq for DenseMatMul {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights) && self.epilogue == other.epilogue
    }
}

impl Eq for DenseMatMul {}

impl std::hash::Hash for DenseMatMul {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.weights).hash(state)
    }
}

impl Op for DenseMatMul {
    fn name(&self) -> StaticName {
        "GptcDenseMatMul".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DenseMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let a = inputs[0].to_plain_array_view::<f32>()?;
        let (k, n) = (self.weights.k, self.weights.n);
        ensure!(a.shape().last() == Some(&k), "GptcDenseMatMul: input {:?}, k {k}", a.shape());
        let a = a.as_standard_layout();
        let x = a.as_slice().context("a standard layout array is contiguous")?;
        let mut shape: TVec<usize> = a.shape().into();
        *shape.last_mut().context("rank 0")? = n;
        let adds = self.epilogue.addends(&inputs, &shape).context("GptcDenseMatMul")?;
        // SAFETY: the matmul writes each panel's columns of every row, its products with their
        // addends, and reads none of `y`.
        let y = unsafe { super::written_tensor(&shape, |y| self.weights.matmul(x, adds, y))? };
        Ok(tvec!(y))
    }
}

impl TypedOp for DenseMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let last =
            inputs[0].rank().checked_sub(1).context("GptcDenseMatMul: an input of rank 0")?;
        let mut shape = inputs[0].shape.clone();
        shape.set(last, self.weights.n.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

impl TakesAddends for DenseMatMul {
    fn epilogue(&self) -> Option<&Epilogue> {
        Some(&self.epilogue)
    }

    fn with_epilogue(&self, epilogue: Epilogue) -> Self {
        DenseMatMul { weights: self.weights.clone(), epilogue }
    }

    fn columns(&self) -> usize {
        self.weights.n
    }
}

/// Replaces each float32 `x W` by a constant `[k, n]` matrix (tract's `EinSum` contracting the
/// last axis of `x` with the first of `W`) by a [`DenseMatMul`] holding `W` in panels.
pub fn use_dense_kernel(mut model: TypedModel) -> TractResult<TypedModel> {
    let found: Vec<(usize, Arc<Tensor>, bool)> = model
        .nodes()
        .iter()
        .filter_map(|node| {
            let (w, transposed) = constant_matrix(&model, node)?;
            Some((node.id, w, transposed))
        })
        .collect();
    for (id, w, transposed) in found {
        let [k, n] = match transposed {
            true => [w.shape()[1], w.shape()[0]],
            false => [w.shape()[0], w.shape()[1]],
        };
        let values = w.try_as_plain_ram()?.as_slice::<f32>()?;
        let weights = Arc::new(DensePanels::new(values, k, n, transposed));
        let op = DenseMatMul { weights, epilogue: Epilogue::default() };
        let x = model.node(id).inputs[0];
        super::replace_with(&mut model, [id, id], "gptc_dense", op, &[x])?;
    }
    Ok(model)
}

/// `W` of a node computing `x W` as [`use_dense_kernel`] takes it: a constant `[k, n]`, or the
/// transposition of a constant `[n, k]` (`true`; a head multiplying by its table).
fn constant_matrix(model: &TypedModel, node: &TypedNode) -> Option<(Arc<Tensor>, bool)> {
    let einsum = node.op_as::<EinSum>()?;
    if einsum.q_params.is_some()
        || einsum.operating_dt != f32::datum_type()
        || node.inputs.len() != 2
    {
        return None;
    }
    let source = model.node(node.inputs[1].node);
    let (w, transposed) = match source.op_as::<AxisOp>() {
        Some(AxisOp::Move(0, 1) | AxisOp::Move(1, 0)) => {
            (model.node(source.inputs[0].node).op_as::<Const>()?.val().clone(), true)
        }
        _ => (source.op_as::<Const>()?.val().clone(), false),
    };
    let x = model.outlet_fact(node.inputs[0]).ok()?;
    let rank = x.rank();
    let k = x.shape.last()?.to_usize().ok()?;
    let (rows, columns) = if transposed { (1, 0) } else { (0, 1) };
    let fits = w.datum_type() == f32::datum_type()
        && x.datum_type == f32::datum_type()
        && w.rank() == 2
        && w.shape()[rows] == k
        && k > 0
        && w.shape()[columns] > 0
        && multiplies_last_axis(&einsum.axes, rank);
    fits.then_some((w, transposed))
}

/// The mapping of `x[.., k] W[k, n] -> y[.., n]`, leading axes of `x` kept in place.
fn multiplies_last_axis(axes: &AxesMapping, rank: usize) -> bool {
    if rank == 0 || axes.input_count() != 2 || axes.output_count() != 1 {
        return false;
    }
    let position = |v: &[usize]| match v {
        [] => Some(None),
        [p] => Some(Some(*p)),
        _ => None,
    };
    let mut count = 0;
    for axis in axes.iter_all_axes() {
        let (Some(x), Some(w), Some(y)) =
            (position(&axis.inputs[0]), position(&axis.inputs[1]), position(&axis.outputs[0]))
        else {
            return false;
        };
        let fits = match (x, w, y) {
            (Some(i), None, Some(o)) => i == o && i + 1 < rank,
            (Some(i), Some(0), None) => i + 1 == rank,
            (None, Some(1), Some(o)) => o + 1 == rank,
            _ => false,
        };
        if !fits {
            return false;
        }
        count += 1;
    }
    count == rank + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::binary::TypedBinOp;

    #[test]
    fn every_kernel_gives_the_product_on_every_shape() {
        // Columns not a multiple of 16, k odd and below the split, rows of every pass size;
        // with a bias and a residual added, on two threads, and without, on one.
        for (k, n) in [(1, 1), (5, 17), (64, 48), (103, 70)] {
            let w: Vec<f32> =
                (0..k * n).map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 500.0).collect();
            let panels = DensePanels::new(&w, k, n, false);
            let w_rows: Vec<f32> = (0..n * k).map(|at| w[(at % k) * n + at / k]).collect();
            let from_rows = DensePanels::new(&w_rows, k, n, true);
            assert_eq!(panels.values, from_rows.values);
            for m in [1, 2, 3, 7, 8, 9, 15, 33] {
                let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
                let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 2.0).collect();
                let residual: Vec<f32> = (0..m * n).map(|i| (i as f32 * 0.11).cos()).collect();
                let with = Addends { bias: Some(&bias), residual: Some(&residual) };
                for (name, kernel) in kernels() {
                    for (crew, adds) in [(Crew::new(0), Addends::default()), (Crew::new(1), with)] {
                        let mut y = vec![f32::NAN; m * n];
                        panels.matmul_on(&crew, kernel, &x, adds, &mut y).unwrap();
                        for (at, &got) in y.iter().enumerate() {
                            let (r, j) = (at / n, at % n);
                            let terms = (0..k).map(|i| x[r * k + i] as f64 * w[i * n + j] as f64);
                            let added = adds.bias.map_or(0.0, |b| b[j] + residual[at]);
                            let exact: f64 = terms.clone().sum::<f64>() + added as f64;
                            let magnitude: f64 = terms.map(f64::abs).sum();
                            let close = (got as f64 - exact).abs() <= 1e-6 * magnitude.max(1.0);
                            assert!(
                                close,
                                "{name} [{m}, {k}] x [{k}, {n}] at {at}: {got} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A model of one source `x` (`[2, 3, k]`) times a constant `w` (`[k, n]`), as tract's
    /// `EinSum`, and the product's outlet.
    fn product_graph(k: usize, n: usize, w: &[f32]) -> (TypedModel, OutletId) {
        let mut model = TypedModel::default();
        let input = model.add_source("x", f32::fact([2, 3, k])).unwrap();
        let weights = model.add_const("w", Tensor::from_shape(&[k, n], w).unwrap()).unwrap();
        let axes: AxesMapping = "abk,kn->abn".parse().unwrap();
        let einsum = EinSum::new(axes, f32::datum_type());
        let y = model.wire_node("mm", einsum, &[input, weights]).unwrap()[0];
        (model, y)
    }

    /// gptc's random weights have zero biases, which tract drops: the fold is tested on a bias
    /// of its own, each addend on either side of its sum.
    #[test]
    fn a_bias_and_a_residual_after_the_matmul_are_folded_into_it() {
        use tract_onnx::tract_core::ops::math::add;
        let (k, n) = (8, 5);
        let w: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.3).sin()).collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32 - 1.5).collect();
        let x: Vec<f32> = (0..2 * 3 * k).map(|i| (i as f32 * 0.7).cos()).collect();
        let r: Vec<f32> = (0..2 * 3 * n).map(|i| i as f32 * 0.5 - 3.0).collect();
        for (bias_shape, first) in [(vec![1, 1, n], false), (vec![n], true)] {
            let (mut model, y) = product_graph(k, n, &w);
            let stream = model.add_source("r", f32::fact([2, 3, n])).unwrap();
            let bias = Tensor::from_shape(&bias_shape, &b).unwrap();
            let bias = model.add_const("b", bias.broadcast_into_rank(3).unwrap()).unwrap();
            let inputs = if first { [bias, y] } else { [y, bias] };
            let biased = model.wire_node("add", add(), &inputs).unwrap()[0];
            let inputs = if first { [stream, biased] } else { [biased, stream] };
            let sum = model.wire_node("residual", add(), &inputs).unwrap()[0];
            model.select_output_outlets(&[sum]).unwrap();
            let model =
                crate::runtime::addends::fold_adds(use_dense_kernel(model).unwrap()).unwrap();
            let folded: Vec<&DenseMatMul> =
                model.nodes().iter().filter_map(|n| n.op_as::<DenseMatMul>()).collect();
            let both = folded.len() == 1
                && folded[0].epilogue.bias.is_some()
                && folded[0].epilogue.residual;
            assert!(both, "{bias_shape:?}");
            assert!(!model.nodes().iter().any(|n| n.op_is::<TypedBinOp>()), "{bias_shape:?}");
            let input = Tensor::from_shape(&[2, 3, k], &x).unwrap();
            let stream = Tensor::from_shape(&[2, 3, n], &r).unwrap();
            let runnable = model.into_runnable().unwrap();
            let out = runnable.run(tvec![input.into(), stream.into()]).unwrap();
            let out = out[0].to_plain_array_view::<f32>().unwrap();
            for (at, &got) in out.iter().enumerate() {
                let (row, j) = (at / n, at % n);
                let product: f32 = (0..k).map(|i| x[row * k + i] * w[i * n + j]).sum();
                let exact = product + b[j] + r[at];
                assert!((got - exact).abs() < 1e-5, "{bias_shape:?} at {at}: {got} vs {exact}");
            }
        }
    }

    /// What the fold must leave alone: a product read elsewhere too (here, also an output of
    /// the model) and a residual the sum broadcasts.
    #[test]
    fn a_product_read_twice_or_a_broadcast_residual_is_not_folded() {
        use tract_onnx::tract_core::ops::math::add;
        let (k, n) = (8, 5);
        let w: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.3).sin()).collect();
        for (stream_shape, product_is_output) in [([2, 3, n], true), ([1, 1, n], false)] {
            let (mut model, y) = product_graph(k, n, &w);
            let stream = model.add_source("r", f32::fact(stream_shape)).unwrap();
            let sum = model.wire_node("residual", add(), &[y, stream]).unwrap()[0];
            let outputs = if product_is_output { vec![sum, y] } else { vec![sum] };
            model.select_output_outlets(&outputs).unwrap();
            let model =
                crate::runtime::addends::fold_adds(use_dense_kernel(model).unwrap()).unwrap();
            let folded = model
                .nodes()
                .iter()
                .filter_map(|n| n.op_as::<DenseMatMul>())
                .any(|op| op.epilogue.residual);
            assert!(!folded, "{stream_shape:?}");
            assert!(model.nodes().iter().any(|n| n.op_is::<TypedBinOp>()), "{stream_shape:?}");
        }
    }

    #[test]
    fn float32_projections_run_gptcs_kernel() {
        use crate::runtime::tract::TractRuntime;
        use gptc_graph::{build_model, file, GptConfig, GraphOptions, RandomInit};
        let config = GptConfig {
            vocab_size: 64,
            context_length: 16,
            emb_dim: 64,
            n_heads: 2,
            n_layers: 2,
            drop_rate: 0.0,
            qkv_bias: false,
        };
        for tie_weights in [false, true] {
            let options = GraphOptions { kv_cache: true, tie_weights, ..Default::default() };
            let model = build_model(&config, options, &mut RandomInit { seed: 1 }, None).unwrap();
            let runtime = TractRuntime::from_bytes(&file::encode(&model)).unwrap();
            let nodes = runtime.backend().plan().model().nodes();
            let ours = nodes.iter().filter(|n| n.op_is::<DenseMatMul>()).count();
            // q, k, v, attention output, MLP in and out, per layer, and the head, tied or not.
            assert_eq!(ours, 6 * 2 + 1, "tied: {tie_weights}");
            // The attention output and the MLP's out join the residual stream as they write.
            let joined = nodes
                .iter()
                .filter_map(|n| n.op_as::<DenseMatMul>())
                .filter(|op| op.epilogue.residual)
                .count();
            assert_eq!(joined, 2 * 2, "tied: {tie_weights}");
        }
    }
}
