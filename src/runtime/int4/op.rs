//! The tract op around the kernel.

use std::sync::Arc;

use super::weights::Int4Weights;
use crate::runtime::addends::{Addends, Epilogue, TakesAddends};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// `y = A W^T` for a float32 `A` of `[.., k]`, and what its [`Epilogue`] adds: tract's op around
/// [`Int4Weights::matmul`]. The weights may be several matrices stacked along `n` (q, k and v
/// of a layer), one output each, and then nothing is added.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Int4MatMul {
    pub weights: Arc<Int4Weights>,
    /// Outputs of each matrix stacked in `weights`, in order; they sum to `weights.n`.
    pub outputs: TVec<usize>,
    pub epilogue: Epilogue,
}

impl Int4MatMul {
    pub(super) fn new(weights: Arc<Int4Weights>) -> Int4MatMul {
        Int4MatMul { outputs: tvec![weights.n], weights, epilogue: Epilogue::default() }
    }
}

impl TakesAddends for Int4MatMul {
    fn epilogue(&self) -> Option<&Epilogue> {
        (self.outputs.len() == 1).then_some(&self.epilogue)
    }

    fn with_epilogue(&self, epilogue: Epilogue) -> Self {
        Int4MatMul { epilogue, ..self.clone() }
    }

    fn columns(&self) -> usize {
        self.weights.n
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
        let mut shape: TVec<usize> = a.shape().into();
        if let [_] = self.outputs[..] {
            *shape.last_mut().context("rank 0")? = n;
            let adds = self.epilogue.addends(&inputs, &shape).context("GptcInt4MatMul")?;
            // SAFETY: the matmul writes each panel's columns of every row and reads none of `y`.
            let y = unsafe {
                crate::runtime::written_tensor(&shape, |y| self.weights.matmul(x, adds, y))?
            };
            return Ok(tvec!(y));
        }
        ensure!(self.epilogue == Epilogue::default(), "GptcInt4MatMul: addends to stacked outputs");
        let mut y = vec![0f32; rows * n];
        self.weights.matmul(x, Addends::default(), &mut y)?;
        let mut first = 0;
        let mut outputs = TVec::new();
        for &width in &self.outputs {
            *shape.last_mut().context("rank 0")? = width;
            // SAFETY: each row of the part is copied from its columns of the stacked product.
            let part = unsafe {
                crate::runtime::written_tensor(&shape, |part| {
                    for (part, row) in part.chunks_exact_mut(width).zip(y.chunks_exact(n)) {
                        part.copy_from_slice(&row[first..first + width]);
                    }
                    Ok(())
                })?
            };
            outputs.push(part);
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
