//! `MatMulNBits` nodes as tract reads them: checked as ONNX Runtime checks them, and given to
//! gptc's kernel where it takes them.

use std::sync::Arc;

use super::op::Int4MatMul;
use super::weights::Int4Weights;
use gptc_graph::onnx::{self as proto, DataType};
use gptc_graph::quant::{Int4Matrix, MatMulNBits, MatMulNBitsInputs, TensorFact, BLOCK};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{
    expand, Expansion, InferenceOp, InferenceResult, Solver, TensorProxy,
};

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
    onnx.op_register.insert("GatherBlockQuantized", crate::runtime::lookup::gather_block_quantized);
    crate::runtime::tract::check_what_tract_trusts(&mut onnx);
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
