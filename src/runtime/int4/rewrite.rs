//! A graph rewrite: one op for the 4-bit matmuls that read the same input.

use std::sync::Arc;

use super::op::Int4MatMul;
use super::weights::{Int4Weights, PANEL};
use tract_onnx::prelude::*;

/// Makes one op of the 4-bit matmuls that read the same input (q, k and v of a layer): the
/// activations are quantized once and the crew gets one job, not three short ones.
pub fn stack_siblings(mut model: TypedModel) -> TractResult<TypedModel> {
    let mut by_input: Vec<(OutletId, Vec<usize>)> = Vec::new();
    for node in model.nodes() {
        let Some(op) = node.op_as::<Int4MatMul>() else { continue };
        // Stacked streams stay aligned only if every matrix fills whole panels; stacked outputs
        // add nothing as they are written.
        let adds = op.epilogue != Default::default();
        let n = op.weights.n;
        if op.outputs.len() != 1 || n == 0 || !n.is_multiple_of(PANEL) || adds {
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
        let op = Int4MatMul { outputs, ..Int4MatMul::new(Arc::new(weights)) };
        let stacked = patch.wire_node(name, op, &[tap])?;
        for (&id, &out) in ids.iter().zip(&stacked) {
            patch.shunt_outside(&model, id.into(), out)?;
        }
        patch.apply(&mut model)?;
    }
    Ok(model)
}
