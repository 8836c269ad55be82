//! The rotary embedding of a layer's queries or keys, `x cos + rotate_half(x) sin`, as one tract
//! op.
//!
//! The graph writes it in standard ops (two slices, a negation, a concatenation, two products
//! broadcast over the heads and a sum), which tract runs as six passes over the heads, each
//! product through its general broadcasting path; here it is one pass.

use tract_onnx::prelude::tract_ndarray::Axis;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Slice, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Add, Mul, Neg};

/// `x cos + rotate_half(x) sin` for `x` `[.., D]` and `cos`, `sin` broadcastable to it, where
/// `rotate_half([x1, x2]) = [-x2, x1]` over the halves of the last axis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rope;

impl Op for Rope {
    fn name(&self) -> StaticName {
        "GptcRope".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Rope {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].to_plain_array_view::<f32>()?;
        let last = x.ndim().checked_sub(1).context("GptcRope: an input of rank 0")?;
        let cos = inputs[1].to_plain_array_view::<f32>()?;
        let sin = inputs[2].to_plain_array_view::<f32>()?;
        let (cos, sin) = (
            cos.broadcast(x.shape()).context("GptcRope: cos against x")?,
            sin.broadcast(x.shape()).context("GptcRope: sin against x")?,
        );
        let dim = x.shape()[last];
        ensure!(dim % 2 == 0, "GptcRope: an odd last axis ({dim})");
        let half = dim / 2;
        ensure!(dim > 0, "GptcRope: an empty last axis");
        // SAFETY: every lane of `x` has its rotation written to its lane of the output.
        let out = unsafe {
            super::written_tensor(x.shape(), |out| {
                let lanes = x.lanes(Axis(last)).into_iter().zip(cos.lanes(Axis(last)));
                for (((x, cos), sin), out) in
                    lanes.zip(sin.lanes(Axis(last))).zip(out.chunks_exact_mut(dim))
                {
                    if let (Some(x), Some(cos), Some(sin)) =
                        (x.as_slice(), cos.as_slice(), sin.as_slice())
                    {
                        rotate(x, cos, sin, out);
                        continue;
                    }
                    for d in 0..dim {
                        let rotated = if d < half { -x[d + half] } else { x[d - half] };
                        out[d] = x[d] * cos[d] + rotated * sin[d];
                    }
                }
                Ok(())
            })?
        };
        Ok(tvec!(out))
    }
}

/// One head's `x cos + rotate_half(x) sin`, contiguous: both halves in one vectorized pass.
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (cos1, cos2) = cos.split_at(half);
    let (sin1, sin2) = sin.split_at(half);
    let (out1, out2) = out.split_at_mut(half);
    for i in 0..half {
        out1[i] = x1[i] * cos1[i] + -x2[i] * sin1[i];
        out2[i] = x2[i] * cos2[i] + x1[i] * sin2[i];
    }
}

impl TypedOp for Rope {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Replaces each `Add(Mul(x, cos), Mul(Concat(Neg(Slice(x, h..2h)), Slice(x, 0..h)), sin))`
/// over the last axis of a float32 `x` (either order of each sum and product) by one [`Rope`].
/// Anything else is left as it is.
pub fn use_rope_kernel(mut model: TypedModel) -> TractResult<TypedModel> {
    let found: Vec<(usize, [OutletId; 3])> = model
        .nodes()
        .iter()
        .filter_map(|node| Some((node.id, rope_inputs(&model, node)?)))
        .collect();
    for (id, inputs) in found {
        super::replace_with(&mut model, [id, id], "gptc_rope", Rope, &inputs)?;
    }
    Ok(model)
}

/// `[x, cos, sin]` of the rotation ending at `add`.
fn rope_inputs(model: &TypedModel, add: &TypedNode) -> Option<[OutletId; 3]> {
    let is_bin = |n: &TypedNode, mul: bool| {
        n.op_as::<TypedBinOp>().is_some_and(|b| if mul { b.0.is::<Mul>() } else { b.0.is::<Add>() })
    };
    let f32_fact =
        |o: OutletId| model.outlet_fact(o).ok().filter(|f| f.datum_type == f32::datum_type());
    // An intermediate read only by the next op of the rotation.
    let only = |o: OutletId| {
        let node = model.node(o.node);
        (node.outputs.len() == 1 && node.outputs[0].successors.len() == 1).then_some(node)
    };
    if !is_bin(add, false) || add.inputs.len() != 2 {
        return None;
    }
    let x_fact = f32_fact(add.inputs[0])?;
    let rank = x_fact.rank();
    let dim = x_fact.shape.last()?.to_usize().ok()?;
    if dim == 0 || dim % 2 == 1 {
        return None;
    }
    let half = dim / 2;
    let slice_of = |n: &TypedNode, from: usize, to: usize| -> Option<OutletId> {
        let s = n.op_as::<Slice>()?;
        let fits =
            s.axis + 1 == rank && s.start.to_usize().ok()? == from && s.end.to_usize().ok()? == to;
        fits.then_some(n.inputs[0])
    };
    // The rotated product: `Mul(Concat(Neg(second), first), sin)`, and its `x`.
    let rotated = |product: &TypedNode| -> Option<(OutletId, OutletId)> {
        if !is_bin(product, true) {
            return None;
        }
        for (c, s) in [(0, 1), (1, 0)] {
            let Some(concat) = only(product.inputs[c]) else { continue };
            let Some(op) = concat.op_as::<TypedConcat>() else { continue };
            if op.axis + 1 != rank || concat.inputs.len() != 2 {
                continue;
            }
            let negated = only(concat.inputs[0])?;
            let is_neg = negated.op_as::<ElementWiseOp>().is_some_and(|e| e.0.is::<Neg>());
            let second = slice_of(only(negated.inputs[0]).filter(|_| is_neg)?, half, dim)?;
            let first = slice_of(only(concat.inputs[1])?, 0, half)?;
            return (first == second).then_some((first, product.inputs[s]));
        }
        None
    };
    for (a, b) in [(0, 1), (1, 0)] {
        let (Some(plain), Some(turned)) = (only(add.inputs[a]), only(add.inputs[b])) else {
            continue;
        };
        let Some((x, sin)) = rotated(turned) else { continue };
        if !is_bin(plain, true) {
            continue;
        }
        let cos = match plain.inputs[..] {
            [p, c] if p == x => c,
            [c, p] if p == x => c,
            _ => continue,
        };
        let shapes_hold =
            [x, cos, sin].iter().all(|&o| f32_fact(o).is_some_and(|f| f.rank() == rank))
                && model.outlet_fact(x).ok()?.shape == model.outlet_fact(add.id.into()).ok()?.shape;
        return shapes_hold.then_some([x, cos, sin]);
    }
    None
}

/// `silu(gate) up`, the SwiGLU of Llama's and Qwen3's feed-forward, as one op: tract's own
/// vectorized SiLU in place, then the product, where tract ran the product through its general
/// broadcasting path (BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SwiGlu;

impl Op for SwiGlu {
    fn name(&self) -> StaticName {
        "GptcSwiGlu".into()
    }

    op_as_typed_op!();
}

impl EvalOp for SwiGlu {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        use tract_onnx::tract_core::tract_linalg::routines::Func;
        let (gate, up) = (&inputs[0], &inputs[1]);
        let shape: TVec<usize> = gate.shape().into();
        ensure!(
            gate.shape() == up.shape(),
            "GptcSwiGlu: {:?} against {:?}",
            gate.shape(),
            up.shape()
        );
        let (gate, up) = (gate.to_plain_array_view::<f32>()?, up.to_plain_array_view::<f32>()?);
        let (gate, up) = (gate.as_standard_layout(), up.as_standard_layout());
        let contiguous = "GptcSwiGlu: a standard layout array is contiguous";
        let (gate, up) = (gate.as_slice().context(contiguous)?, up.as_slice().context(contiguous)?);
        // SAFETY: the gate is copied over the whole output before anything reads it.
        let out = unsafe {
            super::written_tensor(&shape, |out| {
                out.copy_from_slice(gate);
                Func::Silu.ew_f32()?.run(out)?;
                for (o, u) in out.iter_mut().zip(up) {
                    *o *= u;
                }
                Ok(())
            })?
        };
        Ok(tvec!(out))
    }
}

impl TypedOp for SwiGlu {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Replaces each `Mul(Silu(gate), up)` of float32 tensors of one shape (either order) by one
/// [`SwiGlu`].
pub fn use_swiglu_kernel(mut model: TypedModel) -> TractResult<TypedModel> {
    use tract_onnx::tract_core::ops::nn::Silu;
    let found: Vec<(usize, [OutletId; 2])> = model
        .nodes()
        .iter()
        .filter_map(|mul| {
            let is_mul = mul.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Mul>());
            if !is_mul || mul.inputs.len() != 2 {
                return None;
            }
            let fact = |o: OutletId| {
                model.outlet_fact(o).ok().filter(|f| f.datum_type == f32::datum_type())
            };
            let shape = &fact(mul.id.into())?.shape;
            [(0, 1), (1, 0)].into_iter().find_map(|(s, u)| {
                let silu = model.node(mul.inputs[s].node);
                let is_silu = silu.op_as::<ElementWiseOp>().is_some_and(|e| e.0.is::<Silu>())
                    && silu.outputs[0].successors.len() == 1;
                let (gate, up) = (*silu.inputs.first()?, mul.inputs[u]);
                let same = [gate, up].iter().all(|&o| fact(o).is_some_and(|f| &f.shape == shape));
                (is_silu && same).then_some((mul.id, [gate, up]))
            })
        })
        .collect();
    for (id, inputs) in found {
        super::replace_with(&mut model, [id, id], "gptc_swiglu", SwiGlu, &inputs)?;
    }
    Ok(model)
}
