//! ONNX Runtime's `com.microsoft.GatherBlockQuantized` for tract, as gptc writes it for a token
//! embedding tied to a 4-bit head: the rows a step looks up are dequantized from the head's own
//! `MatMulNBits` blocks, so the table is stored (and held by tract) once, in 4 bits.
//!
//! The form read: `data` the head's `[n, k / 32, 16]` uint8 blocks (two codes a byte, the
//! even-indexed one in the low nibble, zero point 8 as `MatMulNBits`), `bits` 4, `block_size`
//! 32, `gather_axis` 0, `quantize_axis` 2 (the last: one block of 32 per `[.., 16]` bytes),
//! `scales` `[n, k / 32, 1]` float32, no zero points; both constants. The output is
//! `indices.shape + [k / 32, 32]`, as ONNX Runtime's kernel gives it. Other forms are refused
//! at load with the reason.

use std::sync::Arc;

use gptc_graph::quant::{BLOB, BLOCK};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{
    expand, Expansion, InferenceOp, InferenceResult, Solver, TensorProxy,
};

pub(super) fn gather_block_quantized(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &tract_onnx::pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let attr = |name: &str, default: i64| -> TractResult<i64> {
        Ok(node.get_attr_opt::<i64>(name)?.unwrap_or(default))
    };
    // ONNX Runtime's defaults where the node leaves an attribute out.
    let form = [
        ("bits", attr("bits", 4)?, 4),
        ("block_size", attr("block_size", 128)?, BLOCK as i64),
        ("gather_axis", attr("gather_axis", 0)?, 0),
        ("quantize_axis", attr("quantize_axis", 1)?, 2),
    ];
    for (name, value, wanted) in form {
        ensure!(
            value == wanted,
            "GatherBlockQuantized {}: {name} {value} (gptc's tract runs {name} {wanted}, the form gptc writes)",
            node.name
        );
    }
    ensure!(
        node.input.len() == 3,
        "GatherBlockQuantized {}: {} inputs (gptc's tract runs data, indices and scales, no zero points)",
        node.name,
        node.input.len()
    );
    Ok((expand(CheckedLookup { node: node.name.clone() }), vec![]))
}

#[derive(Debug, Clone)]
struct CheckedLookup {
    node: String,
}

impl Expansion for CheckedLookup {
    fn name(&self) -> StaticName {
        "GptcGatherBlockQuantized".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        ensure!(inputs.len() == 3 && outputs.len() == 1, "GatherBlockQuantized {}", self.node);
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 3)?;
        s.equals(&inputs[2].rank, 3)?;
        s.given(&inputs[1].rank, move |s, rank| {
            s.equals(&outputs[0].rank, rank + 2)?;
            let rank = rank as usize;
            for axis in 0..rank {
                s.equals(&outputs[0].shape[axis], &inputs[1].shape[axis])?;
            }
            s.equals(&outputs[0].shape[rank], &inputs[0].shape[1])?;
            s.equals(&outputs[0].shape[rank + 1], BLOCK.to_dim())
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let node = &self.node;
        let constant = |i: usize, what: &str| -> TractResult<Arc<Tensor>> {
            constant_value(model, inputs[i], 4)?.with_context(|| {
                format!(
                    "GatherBlockQuantized {node}: gptc's tract runs {what} held in the file only"
                )
            })
        };
        let (blocks, scales) = (constant(0, "the table")?, constant(2, "its scales")?);
        ensure!(
            blocks.datum_type() == u8::datum_type() && scales.datum_type() == f32::datum_type(),
            "GatherBlockQuantized {node}: {:?} data and {:?} scales (gptc's tract runs uint8 and float32)",
            blocks.datum_type(),
            scales.datum_type()
        );
        let (n, per_row) = match (blocks.shape(), scales.shape()) {
            (&[n, per_row, BLOB], &[sn, sp, 1]) if (sn, sp) == (n, per_row) => (n, per_row),
            (b, s) => bail!(
                "GatherBlockQuantized {node}: data {b:?} and scales {s:?} (gptc's tract runs [n, k/32, 16] and [n, k/32, 1])"
            ),
        };
        let scales = scales.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        let op = Int4Lookup { blocks, scales: Arc::new(scales), n, per_row };
        let indices =
            model.wire_node(format!("{prefix}.indices"), cast(i64::datum_type()), &[inputs[1]])?;
        model.wire_node(format!("{prefix}.gptc_lookup"), op, &indices)
    }
}

/// The value of `outlet` if it is a constant, or computed from constants alone within `depth`
/// ops (the scales' `Reshape`, which tract's analysis leaves unfolded when it ignores the file's
/// value infos, as `gptc check` has it).
fn constant_value(
    model: &TypedModel,
    outlet: OutletId,
    depth: usize,
) -> TractResult<Option<Arc<Tensor>>> {
    if let Some(konst) = &model.outlet_fact(outlet)?.konst {
        return Ok(Some(konst.clone()));
    }
    let node = model.node(outlet.node);
    if depth == 0 || node.inputs.is_empty() {
        return Ok(None);
    }
    let mut values = TVec::new();
    for &input in &node.inputs {
        match constant_value(model, input, depth - 1)? {
            Some(value) => values.push(value.into_tvalue()),
            None => return Ok(None),
        }
    }
    let outputs = node.op.eval_out_of_plan(values)?;
    Ok(outputs.and_then(|o| o.into_iter().nth(outlet.slot)).map(|v| v.into_arc_tensor()))
}

fn cast(to: DatumType) -> tract_onnx::tract_core::ops::cast::Cast {
    tract_onnx::tract_core::ops::cast::cast(to)
}

/// Rows of a 4-bit `[n, per_row * 32]` table, dequantized: `(code - 8) * scale` per block.
#[derive(Debug, Clone, PartialEq)]
pub struct Int4Lookup {
    /// `[n, per_row, 16]`: the head's blocks, the same tensor its constant holds.
    blocks: Arc<Tensor>,
    /// `[n * per_row]`.
    scales: Arc<Vec<f32>>,
    n: usize,
    per_row: usize,
}

impl std::hash::Hash for Int4Lookup {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.n, self.per_row).hash(state);
        Arc::as_ptr(&self.blocks).hash(state);
    }
}

impl Eq for Int4Lookup {}

impl Op for Int4Lookup {
    fn name(&self) -> StaticName {
        "GptcInt4Lookup".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Int4Lookup {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let ids = inputs[0].to_plain_array_view::<i64>()?;
        let blocks = self.blocks.try_as_plain_ram()?;
        let blocks = blocks.as_slice::<u8>()?;
        let width = self.per_row * BLOCK;
        let mut shape: TVec<usize> = ids.shape().into();
        shape.extend([self.per_row, BLOCK]);
        // SAFETY: each id's row is written whole, every block's values from its codes.
        let out = unsafe {
            super::written_tensor(&shape, |out| {
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(width)) {
                    // Negative ids count from the end, as ONNX's Gather and ONNX Runtime's kernel
                    // take them.
                    let r = if id < 0 { id + self.n as i64 } else { id };
                    ensure!(
                        (0..self.n as i64).contains(&r),
                        "GptcInt4Lookup: token id {id} outside the table's {} rows",
                        self.n
                    );
                    let r = r as usize;
                    for (b, values) in row.chunks_exact_mut(BLOCK).enumerate() {
                        let at = r * self.per_row + b;
                        let scale = self.scales[at];
                        for (j, &byte) in blocks[at * BLOB..][..BLOB].iter().enumerate() {
                            values[2 * j] = ((byte & 0x0f) as f32 - 8.0) * scale;
                            values[2 * j + 1] = ((byte >> 4) as f32 - 8.0) * scale;
                        }
                    }
                }
                Ok(())
            })?
        };
        Ok(tvec!(out))
    }
}

impl TypedOp for Int4Lookup {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        shape.extend([self.per_row.to_dim(), BLOCK.to_dim()]);
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}
