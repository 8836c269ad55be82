//! One layer's attention, `softmax(q k^T c + bias) v`, as one tract op for decode steps.
//!
//! tract runs it as two batched matmuls whose operands it packs first: at every decode step it
//! packs the whole key and value cache of every layer for one query row, and the packing and
//! twelve one-row matmuls took 0.8 of a 3.6 ms int4 gpt2-small step (BENCHMARKS.md). For one
//! query row this op reads each key and value once instead, spread over the crew by head. Prompts
//! of several rows run the layer's own tract ops, kept as a plan of their own: they are matrix
//! products, which tract's packed kernels do well.

use std::sync::Arc;

use tract_onnx::prelude::tract_ndarray::{s, Ix4};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::{Add, Mul};
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

use super::crew::crew;

/// `softmax(q k^T scale + bias) v` for `q` `[B, H, S, D]`, `k` and `v` `[B, H, T, D]`, `bias`
/// broadcastable to `[B, H, S, T]`: ours for `S = 1`, `layer`'s own ops otherwise.
#[derive(Debug, Clone)]
pub struct Attention {
    scale: f32,
    layer: Arc<TypedRunnableModel>,
}

impl PartialEq for Attention {
    fn eq(&self, other: &Attention) -> bool {
        self.scale.to_bits() == other.scale.to_bits() && Arc::ptr_eq(&self.layer, &other.layer)
    }
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
        match inputs[0].shape().get(2) {
            Some(1) => Ok(tvec!(self.one_query(&inputs)?)),
            _ => self.layer.run(inputs),
        }
    }
}

impl Attention {
    fn one_query(&self, inputs: &[TValue]) -> TractResult<TValue> {
        let q = inputs[0].to_plain_array_view::<f32>()?.into_dimensionality::<Ix4>()?;
        let k = inputs[1].to_plain_array_view::<f32>()?.into_dimensionality::<Ix4>()?;
        let v = inputs[2].to_plain_array_view::<f32>()?.into_dimensionality::<Ix4>()?;
        let bias = inputs[3].to_plain_array_view::<f32>()?.into_dimensionality::<Ix4>()?;
        let (batch, heads, _, dim) = q.dim();
        let keys = k.dim().2;
        ensure!(
            k.dim() == (batch, heads, keys, dim) && v.dim() == k.dim(),
            "GptcAttention: q {:?}, k {:?}, v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        );
        let bias = bias
            .broadcast((batch, heads, 1, keys))
            .with_context(|| format!("GptcAttention: bias {:?}", inputs[3].shape()))?;
        let mut out = vec![0f32; batch * heads * dim];
        let head = |i: usize, out: &mut [f32]| {
            let (b, h) = (i / heads, i % heads);
            let q = q.slice(s![b, h, 0, ..]);
            let k = k.slice(s![b, h, .., ..]);
            let v = v.slice(s![b, h, .., ..]);
            let bias = bias.slice(s![b, h, 0, ..]);
            let (Some(q), Some(k), Some(v)) = (q.as_slice(), k.as_slice(), v.as_slice()) else {
                return;
            };
            attend(q, k, v, &bias.to_vec(), self.scale, out);
        };
        ensure!(crew().run_on_chunks(&mut out, dim, head), "GptcAttention: a thread failed");
        // `[B, 1, H, D]`: heads merged back, in the order the output projection reads them.
        Ok(Tensor::from_shape(&[batch, 1, heads, dim], &out)?.into_tvalue())
    }
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.clone();
        let (heads, queries) = (shape[1].clone(), shape[2].clone());
        shape.set(1, queries);
        shape.set(2, heads);
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// One query row against `T` keys and values of `D` (`k`, `v` row-major `[T, D]`).
fn attend(q: &[f32], k: &[f32], v: &[f32], bias: &[f32], scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked at run time).
        return unsafe { attend_avx2(q, k, v, bias, scale, out) };
    }
    attend_any(q, k, v, bias, scale, out)
}

/// [`attend_any`] compiled for AVX2: the same arithmetic, eight lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2(q: &[f32], k: &[f32], v: &[f32], bias: &[f32], scale: f32, out: &mut [f32]) {
    attend_any(q, k, v, bias, scale, out)
}

#[inline(always)]
fn attend_any(q: &[f32], k: &[f32], v: &[f32], bias: &[f32], scale: f32, out: &mut [f32]) {
    let dim = q.len();
    let mut weights: Vec<f32> =
        k.chunks_exact(dim).zip(bias).map(|(key, b)| dot(q, key) * scale + b).collect();
    let largest = weights.iter().fold(f32::NEG_INFINITY, |m, &w| m.max(w));
    let mut total = 0f32;
    for w in &mut weights {
        *w = (*w - largest).exp();
        total += *w;
    }
    out.fill(0.0);
    for (value, w) in v.chunks_exact(dim).zip(&weights) {
        let w = w / total;
        for (o, x) in out.iter_mut().zip(value) {
            *o += w * x;
        }
    }
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
    let [a, b, c, d, e, f, g, h] = lanes;
    ((a + e) + (b + f)) + ((c + g) + (d + h)) + tail
}

/// Replaces each layer's attention chain as tract-onnx types gptc's graph,
/// `EinSum(q, Move(2,3)(k)) * c + bias -> Softmax(last) -> EinSum(., v)`, by one [`Attention`];
/// a layer that differs in any way (types, constants, other consumers) is left as it is.
pub fn use_attention_kernel(mut model: TypedModel) -> TractResult<TypedModel> {
    let layers: Vec<Chain> =
        model.nodes().iter().filter_map(|node| Chain::ending_at(&model, node)).collect();
    for chain in layers {
        let layer = chain.own_plan(&model)?;
        let mut patch = TypedModelPatch::default();
        let inputs = [chain.q, chain.k, chain.v, chain.bias]
            .iter()
            .map(|&o| patch.tap_model(&model, o))
            .collect::<TractResult<TVec<_>>>()?;
        let name = format!("{}.gptc_attention", model.node(chain.context).name);
        let out = patch.wire_node(name, Attention { scale: chain.scale, layer }, &inputs)?;
        patch.shunt_outside(&model, chain.merge.into(), out[0])?;
        patch.apply(&mut model)?;
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
    scale_outlet: OutletId,
    scores: usize,
    transpose: usize,
    multiply: usize,
    add: usize,
    softmax: usize,
    context: usize,
    merge: usize,
}

impl Chain {
    fn ending_at(model: &TypedModel, context: &TypedNode) -> Option<Chain> {
        let matmul = |n: &TypedNode| {
            n.op_as::<EinSum>().is_some_and(|e| {
                e.q_params.is_none()
                    && e.operating_dt == f32::datum_type()
                    && e.axes.to_string() == "abmk,abkn->abmn"
            })
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
        let is_softmax = |n: &TypedNode| {
            n.op_as::<Softmax>().is_some_and(|s| {
                s.kind == SoftmaxKind::Softmax && s.quant_output_dt.is_none() && s.axes[..] == [3]
            })
        };
        let moves_last_two =
            |n: &TypedNode| matches!(n.op_as::<AxisOp>(), Some(AxisOp::Move(2, 3)));
        // Each op is checked before its inputs are read: the count of inputs is the op's.
        if !matmul(context) {
            return None;
        }
        let softmax = only(context.inputs[0]).filter(|n| is_softmax(n))?;
        let add = only(softmax.inputs[0]).filter(|n| binary(n, false))?;
        let multiply = only(add.inputs[0]).filter(|n| binary(n, true))?;
        let scores = only(multiply.inputs[0]).filter(|n| matmul(n))?;
        let transpose = only(scores.inputs[1]).filter(|n| moves_last_two(n))?;
        let scale_outlet = multiply.inputs[1];
        let scale = model.outlet_fact(scale_outlet).ok()?.konst.clone()?;
        let scale = match scale.datum_type() == f32::datum_type() && scale.len() == 1 {
            true => scale.cast_to_scalar::<f32>().ok()?,
            false => return None,
        };
        let f32_inputs = [context.inputs[1], add.inputs[1], scores.inputs[0], transpose.inputs[0]]
            .iter()
            .all(|&o| model.outlet_fact(o).is_ok_and(|f| f.datum_type == f32::datum_type()));
        let ok = f32_inputs;
        let merge = only(context.id.into()).and_then(|_| {
            let next = model.node(context.outputs[0].successors[0].node);
            matches!(next.op_as::<AxisOp>(), Some(AxisOp::Move(1, 2))).then_some(next)
        })?;
        ok.then_some(Chain {
            q: scores.inputs[0],
            k: transpose.inputs[0],
            v: context.inputs[1],
            bias: add.inputs[1],
            scale,
            scale_outlet,
            scores: scores.id,
            transpose: transpose.id,
            multiply: multiply.id,
            add: add.id,
            softmax: softmax.id,
            context: context.id,
            merge: merge.id,
        })
    }

    /// The chain's own ops as a model of its four inputs, optimized and planned by tract.
    fn own_plan(&self, model: &TypedModel) -> TractResult<Arc<TypedRunnableModel>> {
        let mut own = TypedModel { symbols: model.symbols.clone(), ..TypedModel::default() };
        let mut source = |name: &str, outlet: OutletId| -> TractResult<OutletId> {
            own.add_source(name, model.outlet_fact(outlet)?.without_value())
        };
        let (q, k) = (source("q", self.q)?, source("k", self.k)?);
        let (v, bias) = (source("v", self.v)?, source("bias", self.bias)?);
        let scale = model.outlet_fact(self.scale_outlet)?.konst.clone().context("a constant")?;
        let scale = own.add_const("scale", scale)?;
        let mut wire = |id: usize, inputs: &[OutletId]| -> TractResult<OutletId> {
            let node = model.node(id);
            Ok(own.wire_node(&node.name, node.op.clone(), inputs)?[0])
        };
        let k_t = wire(self.transpose, &[k])?;
        let scores = wire(self.scores, &[q, k_t])?;
        let scaled = wire(self.multiply, &[scores, scale])?;
        let biased = wire(self.add, &[scaled, bias])?;
        let weights = wire(self.softmax, &[biased])?;
        let context = wire(self.context, &[weights, v])?;
        let merged = wire(self.merge, &[context])?;
        own.select_output_outlets(&[merged])?;
        own.into_optimized()?.into_runnable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tract::TractRuntime;
    use gptc_graph::{build_model, file, GptConfig, GraphOptions, Precision, Quantization};

    fn tiny(kv_cache: bool, precision: Precision, quantization: Quantization) -> TractRuntime {
        let config = GptConfig {
            vocab_size: 50,
            context_length: 40,
            emb_dim: 64,
            n_heads: 4,
            n_layers: 3,
            drop_rate: 0.0,
            qkv_bias: true,
        };
        let options = GraphOptions { kv_cache, precision, quantization, ..Default::default() };
        let mut init = gptc_graph::RandomInit { seed: 5 };
        let model = build_model(&config, options, &mut init, None).unwrap();
        TractRuntime::from_bytes(&file::encode(&model)).unwrap()
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

    #[test]
    fn one_query_row_gives_what_the_replaced_ops_give() {
        let op = attention_ops(&tiny(true, Precision::F32, Quantization::None)).remove(0);
        for (batch, keys) in [(1, 1), (2, 5), (3, 37)] {
            let (heads, dim) = (4, 16);
            // Masked slots as gptc's graph masks them: f32::MIN added; one row fully masked.
            let bias: Vec<f32> = (0..batch * keys)
                .map(|i| match (i % keys) % 3 == 1 || i / keys == 2 {
                    true => f32::MIN,
                    false => 0.0,
                })
                .collect();
            let inputs = [
                values(&[batch, heads, 1, dim], 1),
                values(&[batch, heads, keys, dim], 2),
                values(&[batch, heads, keys, dim], 3),
                Tensor::from_shape(&[batch, 1, 1, keys], &bias).unwrap().into_tvalue(),
            ];
            let ours = op.one_query(&inputs).unwrap();
            let theirs = op.layer.run(inputs.iter().cloned().collect()).unwrap().remove(0);
            assert_eq!(ours.shape(), theirs.shape());
            let (ours, theirs) = (
                ours.to_plain_array_view::<f32>().unwrap(),
                theirs.to_plain_array_view::<f32>().unwrap(),
            );
            for (a, b) in ours.iter().zip(theirs) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{batch}x{keys}: {a} vs {b}");
            }
        }
    }
}
