//! What gptc's matmuls add to their products as they write them: a layer's constant bias, and
//! the residual stream a projection joins (`x + f(x) W`, twice a layer). tract would run each
//! as an `Add` of its own: one more pass over the output and one more allocation each.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::math::Add;

use super::dense::DenseMatMul;
use super::int4::Int4MatMul;

/// The addends of one call, as slices.
#[derive(Clone, Copy, Default)]
pub struct Addends<'a> {
    /// `[n]`, added to every row.
    pub bias: Option<&'a [f32]>,
    /// `[m, n]`: the residual stream the products join.
    pub residual: Option<&'a [f32]>,
}

impl Addends<'_> {
    /// The rows `m` of a matmul `op` by a `[k, n]` matrix that reads `x` (`[m, k]`) into `y`
    /// (`[m, n]`) with these addends, every operand checked against them.
    pub fn checked_rows(
        &self,
        op: &str,
        [k, n]: [usize; 2],
        x: &[f32],
        y: &[f32],
    ) -> TractResult<usize> {
        ensure!(k > 0 && n > 0, "{op}: a [{k}, {n}] matrix");
        let m = x.len() / k;
        ensure!(
            x.len() == m * k && y.len() == m * n,
            "{op}: {} inputs and {} outputs for [{m}, {k}] x [{k}, {n}]",
            x.len(),
            y.len()
        );
        ensure!(self.bias.is_none_or(|b| b.len() == n), "{op}: a bias not of {n} values");
        let residual_fits = self.residual.is_none_or(|r| r.len() == m * n);
        ensure!(residual_fits, "{op}: a residual not of [{m}, {n}]");
        Ok(m)
    }

    /// Adds to `products`, rows `r0..` and columns `column..column + width` of an output of
    /// `n` columns (each row's first `width` values).
    #[inline]
    pub fn add_to<const W: usize>(
        &self,
        products: &mut [[f32; W]],
        r0: usize,
        column: usize,
        width: usize,
        n: usize,
    ) {
        if let Some(bias) = self.bias {
            for products in products.iter_mut() {
                for (p, b) in products.iter_mut().zip(&bias[column..column + width]) {
                    *p += b;
                }
            }
        }
        if let Some(residual) = self.residual {
            for (r, products) in products.iter_mut().enumerate() {
                let residual = &residual[(r0 + r) * n + column..][..width];
                for (p, x) in products.iter_mut().zip(residual) {
                    *p += x;
                }
            }
        }
    }
}

/// What an op adds to its products: a constant bias, and with `residual` its second input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Epilogue {
    pub bias: Option<Arc<Tensor>>,
    pub residual: bool,
}

impl Epilogue {
    /// The addends of a call with `inputs` (the residual second), for an output of `shape`.
    pub fn addends<'a>(
        &'a self,
        inputs: &'a [TValue],
        shape: &[usize],
    ) -> TractResult<Addends<'a>> {
        let bias = match &self.bias {
            Some(b) => Some(b.try_as_plain_ram()?.as_slice::<f32>()?),
            None => None,
        };
        let residual = match self.residual {
            true => {
                let r = inputs.get(1).context("no residual input")?;
                ensure!(r.shape() == shape, "a residual of {:?} for {shape:?}", r.shape());
                Some(r.try_as_plain_ram()?.as_slice::<f32>()?)
            }
            false => None,
        };
        Ok(Addends { bias, residual })
    }
}

/// A matmul by a constant that takes an [`Epilogue`].
pub trait TakesAddends: TypedOp + Clone {
    /// Its epilogue, or `None` where it cannot take one (several outputs).
    fn epilogue(&self) -> Option<&Epilogue>;
    fn with_epilogue(&self, epilogue: Epilogue) -> Self;
    /// Columns of its one output.
    fn columns(&self) -> usize;
}

/// Folds what is added to a gptc matmul's output into the matmul: first each constant bias of
/// `n` values (leading axes of one), then each residual stream of the output's own shape.
pub fn fold_adds(mut model: TypedModel) -> TractResult<TypedModel> {
    for kind in [Kind::Bias, Kind::Residual] {
        // One at a time: a fold replaces an add whose output may be the next one's residual.
        while let Some((add, matmul, addend)) = model.nodes().iter().find_map(|add| {
            kind.find::<DenseMatMul>(&model, add).or_else(|| kind.find::<Int4MatMul>(&model, add))
        }) {
            let node = model.node(matmul);
            let mut inputs = node.inputs.clone();
            if let Kind::Residual = kind {
                inputs.push(addend);
            }
            let found = [add, matmul];
            let ops = (node.op_as::<DenseMatMul>().cloned(), node.op_as::<Int4MatMul>().cloned());
            match ops {
                (Some(op), _) => kind.fold(&mut model, found, op, &inputs, addend)?,
                (_, Some(op)) => kind.fold(&mut model, found, op, &inputs, addend)?,
                _ => bail!("node {matmul} is no gptc matmul"),
            }
        }
    }
    Ok(model)
}

/// What [`fold_adds`] folds into a matmul.
#[derive(Clone, Copy)]
enum Kind {
    Bias,
    Residual,
}

impl Kind {
    /// `(the add, the matmul, what it adds)` where `add` sums the output of a matmul `Op` that
    /// feeds nothing else with an addend of this kind the matmul does not add yet.
    fn find<Op: TakesAddends>(
        self,
        model: &TypedModel,
        add: &TypedNode,
    ) -> Option<(usize, usize, OutletId)> {
        let is_add = add.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Add>());
        if !is_add || add.inputs.len() != 2 {
            return None;
        }
        let sum = model.outlet_fact(add.id.into()).ok()?;
        [(0, 1), (1, 0)].into_iter().find_map(|(m, a)| {
            let matmul = model.node(add.inputs[m].node);
            let op = matmul.op_as::<Op>()?;
            let epilogue = op.epilogue()?;
            let addend = add.inputs[a];
            let fact = model.outlet_fact(addend).ok()?;
            let alone = matmul.outputs[0].successors.len() == 1
                && !model.output_outlets().ok()?.contains(&matmul.id.into())
                && model.outlet_fact(matmul.id.into()).ok()?.shape == sum.shape
                && sum.datum_type == f32::datum_type()
                && fact.datum_type == f32::datum_type();
            let constant = model.node(addend.node).op_as::<Const>();
            let fits = match self {
                Kind::Bias => {
                    let (bias, n) = (constant?.val(), op.columns());
                    epilogue.bias.is_none() && bias.len() == n && bias.shape().last() == Some(&n)
                }
                Kind::Residual => {
                    !epilogue.residual && fact.shape == sum.shape && constant.is_none()
                }
            };
            (alone && fits).then_some((add.id, matmul.id, addend))
        })
    }

    fn fold<Op: TakesAddends>(
        self,
        model: &mut TypedModel,
        [add, matmul]: [usize; 2],
        op: Op,
        inputs: &[OutletId],
        addend: OutletId,
    ) -> TractResult<()> {
        let epilogue = op.epilogue().context("a matmul of one output")?.clone();
        let (epilogue, suffix) = match self {
            Kind::Bias => {
                let bias = model.node(addend.node).op_as::<Const>().context("a constant bias")?;
                (Epilogue { bias: Some(bias.val().clone()), ..epilogue }, "bias")
            }
            Kind::Residual => (Epilogue { residual: true, ..epilogue }, "residual"),
        };
        super::replace_with(model, [add, matmul], suffix, op.with_epilogue(epilogue), inputs)
    }
}
