//! tract (pure Rust, CPU): one optimized plan, symbols bound from input shapes on every run.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use ndarray::{Array2, Ix3};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::ensure;
use tract_onnx::tract_core::internal::TractErrorContext;
use tract_onnx::tract_hir::internal::{
    expand, Expansion, InferenceOp, InferenceResult, Solver, StaticName, TensorProxy,
};

use gptc_graph::names::{self, InputRole, KvPart};

use super::addends::fold_adds;
use super::attention::use_attention_kernel;
use super::dense::use_dense_kernel;
use super::int4::{onnx, stack_siblings};
use super::rope::{use_rope_kernel, use_swiglu_kernel};
use super::{
    cache_geometry, canonical_dim, Backend, Engine, InferredTensor, InputLayout, LogitPositions,
    Outputs,
};
use crate::{Error, Result};

type Plan = Arc<TypedRunnableModel>;

/// tract behind gptc's [`Runtime`](super::Runtime): one optimized plan for every step.
pub type TractRuntime = Engine<TractBackend>;

/// One optimized plan for every step: symbols (`batch_size`, `sequence_length`,
/// `past_sequence_length`) are bound from the input shapes at each run.
pub struct TractBackend {
    plan: Plan,
    logits_output: usize,
    logit_positions: LogitPositions,
    /// Output indices of `present.{i}.key` and `.value`, per layer.
    present_outputs: Vec<[usize; 2]>,
    /// The empty past's element type (f32, or f16 for a `--dtype f16` export), heads, head_dim.
    past: Option<(DatumType, usize, usize)>,
}

fn tract_error(context: &str) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::Runtime(format!("tract: {context}: {e:#}"))
}

/// Runs a tract call that may panic on a malformed model (fuzzing found tract-onnx 0.23.9
/// indexing a map with a graph output name that names no value) and makes the panic an error.
fn guarded<T>(context: &str, call: impl FnOnce() -> TractResult<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(result) => result.map_err(tract_error(context)),
        Err(panic) => Err(Error::Model(format!(
            "tract: {context}: the model is malformed ({})",
            crate::panic_message(&*panic)
        ))),
    }
}

/// Registers tract's own parsers of the ops whose inputs tract-onnx 0.23.9 takes on trust, each
/// behind a check made before tract's rules run (fuzzing found both): a `LayerNormalization`
/// axis outside its input's rank becomes a loop bound (`axis + rank` cast to `usize`) and the
/// analysis spins for ever; a `Range` step of 0 or less is cast to `usize` as a divisor and the
/// symbolic length it divides recurses until the stack overflows.
pub(super) fn check_what_tract_trusts(onnx: &mut tract_onnx::Onnx) {
    let ops: [(&str, &OnceLock<OpBuilder>, OpBuilder); 2] = [
        ("LayerNormalization", &TRACTS_LAYER_NORM, checked_layer_norm),
        ("Range", &TRACTS_RANGE, checked_range),
    ];
    for (op, tracts, checked) in ops {
        if let Some(&parse) = onnx.op_register.0.get(op) {
            let _ = tracts.set(parse);
        }
        onnx.op_register.insert(op, checked);
    }
}

type OpBuilder = fn(
    &tract_onnx::model::ParsingContext,
    &tract_onnx::pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

static TRACTS_LAYER_NORM: OnceLock<OpBuilder> = OnceLock::new();
static TRACTS_RANGE: OnceLock<OpBuilder> = OnceLock::new();

fn checked_layer_norm(
    ctx: &tract_onnx::model::ParsingContext,
    node: &tract_onnx::pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let axis: i64 = node.get_attr_opt("axis")?.unwrap_or(-1);
    checked(&TRACTS_LAYER_NORM, Check::AxisWithinRank(axis), ctx, node)
}

fn checked_range(
    ctx: &tract_onnx::model::ParsingContext,
    node: &tract_onnx::pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    checked(&TRACTS_RANGE, Check::PositiveStep, ctx, node)
}

fn checked(
    tracts: &OnceLock<OpBuilder>,
    check: Check,
    ctx: &tract_onnx::model::ParsingContext,
    node: &tract_onnx::pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let parse = tracts.get().with_context(|| format!("tract's {} parser", node.op_type))?;
    let (op, closures) = parse(ctx, node)?;
    let expansion = op.as_op().downcast_ref::<Box<dyn Expansion>>();
    let tracts = expansion.with_context(|| format!("tract's {} is an expansion", node.op_type))?;
    let node = format!("{} {}", node.op_type, node.name);
    Ok((expand(Checked { node, check, tracts: tracts.clone() }), closures))
}

/// What is checked of a node before tract's rules see it.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// The `axis` attribute lies in `[-rank, rank)` of the first input.
    AxisWithinRank(i64),
    /// The third input (a `Range`'s step) is above 0.
    PositiveStep,
}

/// One of tract's ops, with a [`Check`] applied first.
#[derive(Debug, Clone)]
struct Checked {
    node: String,
    check: Check,
    tracts: Box<dyn Expansion>,
}

impl Expansion for Checked {
    fn name(&self) -> StaticName {
        self.tracts.name()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        self.tracts.nboutputs()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        let node = &self.node;
        // Registered before tract's rules, so the solver applies it first.
        match self.check {
            Check::AxisWithinRank(axis) => {
                let input = inputs.first().with_context(|| format!("{node} takes an input"))?;
                s.given(&input.rank, move |_, rank| {
                    ensure!(
                        (-rank..rank).contains(&axis),
                        "{node}: axis {axis} is outside its input's rank {rank}"
                    );
                    Ok(())
                })?;
            }
            Check::PositiveStep => {
                let step = inputs.get(2).with_context(|| format!("{node} takes a step"))?;
                s.given(&step.value, move |_, value| {
                    let value = value.cast_to_scalar::<f64>()?;
                    ensure!(
                        value > 0.0,
                        "{node}: a step of {value} (tract takes only steps above 0)"
                    );
                    Ok(())
                })?;
            }
        }
        self.tracts.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        self.tracts.wire(prefix, model, inputs)
    }
}

/// Spread matmuls over the machine's cores (tract runs on one thread unless told otherwise).
pub fn use_all_cores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores > 1 {
            tract_linalg::multithread::set_default_executor(
                tract_linalg::multithread::Executor::multithread(cores),
            );
        }
        // tract threads a matmul from 2^21 multiply-adds on; a decode step's q/k/v and output
        // projections (emb^2 = 0.6M for gpt2-small) then run on one core. From 2^18 on they
        // are split too (BENCHMARKS.md has the decode rates before and after).
        tract_linalg::multithread::set_threading_mac_threshold(1 << 18);
    });
}

impl TractRuntime {
    pub fn from_bytes(bytes: &[u8]) -> Result<TractRuntime> {
        let model = guarded("loading the model", || onnx().model_for_read(&mut &bytes[..]))?;
        TractRuntime::from_inference_model(model)
    }

    pub fn from_path(path: &Path) -> Result<TractRuntime> {
        let model =
            guarded(&format!("loading {}", path.display()), || onnx().model_for_path(path))?;
        TractRuntime::from_inference_model(model)
    }

    fn from_inference_model(model: InferenceModel) -> Result<TractRuntime> {
        use_all_cores();
        let inputs = model.input_outlets().map_err(tract_error("inputs"))?;
        let input_names: Vec<String> =
            inputs.iter().map(|o| model.node(o.node).name.clone()).collect();
        let input_names: Vec<&str> = input_names.iter().map(String::as_str).collect();
        let layout = InputLayout::of(&input_names)?;
        let model = optimized(model)?;
        let output_names: Vec<String> = model
            .output_outlets()
            .map_err(tract_error("outputs"))?
            .iter()
            .map(|o| model.outlet_label(*o).unwrap_or_default().to_string())
            .collect();
        let output = |name: &str| {
            output_names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| Error::Model(format!("the model has no `{name}` output")))
        };
        let logits_output = output(names::LOGITS)?;
        let logits_fact = model.output_fact(logits_output).map_err(tract_error("outputs"))?;
        let logit_positions = match logits_fact.shape.get(1).map(|d| d.to_i64()) {
            Some(Ok(1)) => LogitPositions::Last,
            _ => LogitPositions::Every,
        };
        let (present_outputs, past) = match &layout {
            InputLayout::Plain => (Vec::new(), None),
            InputLayout::Cached { roles, layers } => {
                let first_key = InputRole::Past(0, KvPart::Key);
                let key_input = roles.iter().position(|r| *r == first_key).unwrap_or(0);
                let fact = model.input_fact(key_input).map_err(tract_error("inputs"))?;
                let dims: Vec<Option<i64>> = fact.shape.iter().map(|d| d.to_i64().ok()).collect();
                let (heads, head_dim) = cache_geometry(&dims)?;
                let present = (0..*layers)
                    .map(|i| {
                        let [key, value] = KvPart::BOTH.map(|part| names::present(i, part));
                        Ok([output(&key)?, output(&value)?])
                    })
                    .collect::<Result<Vec<_>>>()?;
                (present, Some((fact.datum_type, heads, head_dim)))
            }
        };
        let plan = model.into_runnable().map_err(tract_error("planning the model"))?;
        let backend = TractBackend { plan, logits_output, logit_positions, present_outputs, past };
        Ok(Engine::new(backend, layout))
    }
}

impl TractBackend {
    /// The optimized plan, for tests that look at which ops tract chose.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

impl Backend for TractBackend {
    type Value = TValue;

    fn name(&self) -> String {
        "tract".into()
    }

    fn logits_width(&self) -> Option<usize> {
        let fact = self.plan.model().output_fact(self.logits_output).ok()?;
        usize::try_from(fact.shape.last()?.to_i64().ok()?).ok()
    }

    fn logit_positions(&self) -> LogitPositions {
        self.logit_positions
    }

    fn ids(&self, ids: &Array2<i64>) -> Result<TValue> {
        Ok(Tensor::from(ids.clone()).into())
    }

    fn empty_past(&self, batch: usize) -> Result<TValue> {
        let (datum_type, heads, head_dim) =
            self.past.ok_or_else(|| Error::Model("the model has no KV cache".into()))?;
        Ok(Tensor::zero_dt(datum_type, &[batch, heads, 0, head_dim])
            .map_err(tract_error("empty past"))?
            .into())
    }

    fn run(&mut self, inputs: &[&TValue], layers: usize) -> Result<Outputs<TValue>> {
        let inputs: TVec<TValue> = inputs.iter().map(|&v| v.clone()).collect();
        // A damaged model can pass every check and still index out of bounds inside tract's
        // ops (fuzzing found a Gather on an altered constant): an error, not a crash.
        let outputs = guarded("running", || self.plan.run(inputs))?;
        let present = self.present_outputs[..layers.min(self.present_outputs.len())]
            .iter()
            .map(|&[k, v]| [outputs[k].clone(), outputs[v].clone()])
            .collect();
        let logits = outputs[self.logits_output]
            .to_plain_array_view::<f32>()
            .map_err(tract_error("reading logits"))?
            .into_dimensionality::<Ix3>()
            .map_err(|e| Error::Runtime(format!("tract: logits are not 3-d: {e}")))?
            .to_owned();
        Ok(Outputs { logits, present })
    }
}

/// The plan-ready form of a loaded model: typed, GELU fused, gptc's kernels in, then optimized.
pub fn optimized(model: InferenceModel) -> Result<TypedModel> {
    guarded("optimizing the model", || {
        let model = use_attention_kernel(stack_siblings(fuse_gelu(model.into_typed()?)?)?)?;
        let model = use_dense_kernel(model)?;
        // The rotations' slices are typed as tract's `Slice`, SiLU found and biases folded into
        // constants, once decluttered.
        let model = split_shared_constants(model)?.into_decluttered()?;
        fold_adds(use_swiglu_kernel(use_rope_kernel(model)?)?)?.into_optimized()
    })
}

/// Gives each reader of a large constant read by several nodes its own `Const` node, holding the
/// same tensor (no copy). A tied head's `MatMul(x, Transpose(wte))` shares `wte` with the
/// embedding's `Gather`, and tract 0.23.9 folds no constant work over an input with several
/// readers above 4 MiB (`PropConst`, so that a weight is not copied per reader): the head's
/// transposition and matmul packing of the whole table then ran at every step (BENCHMARKS.md,
/// "Tied heads"). Split, the head's packed table is made once at
/// load, as an untied head's is: the memory an untied model holds, one packed `[vocab, emb]`
/// table beside the one the lookup reads.
fn split_shared_constants(mut model: TypedModel) -> TractResult<TypedModel> {
    use tract_onnx::tract_core::ops::konst::Const;
    const SHARED_ABOVE: usize = 4 << 20;
    let shared: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.outputs.first().is_some_and(|o| o.successors.len() > 1))
        .filter(|n| {
            let bytes = |c: &Const| c.val().volume() * c.val().datum_type().size_of();
            n.op_as::<Const>().is_some_and(|c| bytes(c) > SHARED_ABOVE)
        })
        .map(|n| n.id)
        .collect();
    for id in shared {
        let node = model.node(id);
        let op = node.op_as::<Const>().context("a constant")?.clone();
        let (name, fact) = (node.name.clone(), node.outputs[0].fact.clone());
        let readers = node.outputs[0].successors.clone();
        for (i, reader) in readers.into_iter().enumerate().skip(1) {
            // `add_node`, not `wire_node`: the latter hands back the equal constant already there.
            let own =
                model.add_node(format!("{name}.reader{i}"), op.clone(), tvec![fact.clone()])?;
            model.add_edge(OutletId::new(own, 0), reader)?;
        }
    }
    Ok(model)
}

/// Rewrites every GELU(tanh) written as gptc writes it,
/// `(0.5 x) (1 + tanh((sqrt(2/pi) x) (1 + (0.044715 x) x)))` (the form ONNX Runtime fuses), into
/// tract's one-pass `GeluApproximate`. tract 0.23.9's own detector starts from `Pow(x, 3)`, which
/// its declutter turns into an element-wise `powf` before the detector runs, so it never fires;
/// unfused, GELU's nine element-wise ops took ~18% of a 1024-token prefill (BENCHMARKS.md).
fn fuse_gelu(mut model: TypedModel) -> TractResult<TypedModel> {
    // Applying a patch turns the nodes it bypasses into dummies, so each GELU matches once.
    while let Some(patch) = model.nodes().iter().find_map(|n| gelu_patch(&model, n).transpose()) {
        patch?.apply(&mut model)?;
    }
    Ok(model)
}

/// The patch replacing the GELU that starts at `scaled` (`0.044715 * x`), if it is one.
fn gelu_patch(model: &TypedModel, scaled: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    use tract_onnx::tract_core::model::TypedModelHelpers;
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
    use tract_onnx::tract_core::ops::konst::Const;
    use tract_onnx::tract_core::ops::math::{Add, Mul, Tanh};
    use tract_onnx::tract_core::ops::nn::gelu_approximate::gelu_approximate;

    let is_mul = |n: &TypedNode| n.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Mul>());
    // `c * x` or `x * c` for the constant `c`: `x` is the other input.
    let scales = |n: &TypedNode, c: f32, x: &OutletId| {
        is_mul(n) && model.matches_single_input_const(n, c) && n.inputs.contains(x)
    };
    // The input of `to` that is not `from`'s output.
    let other_input = |to: &TypedNode, from: &TypedNode| -> Option<&TypedNode> {
        let other = to.inputs.iter().find(|i| i.node != from.id)?;
        Some(&model.nodes()[other.node])
    };
    if !is_mul(scaled) || !model.matches_single_input_const(scaled, 0.044715) {
        return Ok(None);
    }
    let Some(&x) = scaled.inputs.iter().find(|i| model.node(i.node).op_as::<Const>().is_none())
    else {
        return Ok(None);
    };
    let sqrt_2_over_pi = (2.0 / std::f32::consts::PI).sqrt();
    let matched = (|| {
        let square = model.find_succ_bin_with_outlet::<Mul>(scaled, &x)?;
        let factor = model.find_succ_bin_with_const::<Add>(square, 1.0)?;
        let inner = model.single_succ(factor.id).ok()??;
        let x_scaled = other_input(inner, factor)?;
        let tanh = model.single_succ(inner.id).ok()??;
        let tanh_op = tanh.op_as::<ElementWiseOp>()?;
        let t_plus_1 = model.find_succ_bin_with_const::<Add>(tanh, 1.0)?;
        let out = model.single_succ(t_plus_1.id).ok()??;
        let half_x = other_input(out, t_plus_1)?;
        let shape_holds = is_mul(inner)
            && scales(x_scaled, sqrt_2_over_pi, &x)
            && tanh_op.0.is::<Tanh>()
            && is_mul(out)
            && scales(half_x, 0.5, &x);
        shape_holds.then_some(out)
    })();
    let Some(out) = matched else {
        return Ok(None);
    };
    let mut patch = TypedModelPatch::default();
    let input = patch.tap_model(model, x)?;
    let gelu =
        patch.wire_node(format!("{}.gelu", scaled.name), gelu_approximate(false), &[input])?;
    patch.shunt_outside(model, out.id.into(), gelu[0])?;
    Ok(Some(patch))
}

fn onnx_dtype_name(dt: DatumType) -> String {
    match dt {
        DatumType::F32 => "float".into(),
        DatumType::F16 => "float16".into(),
        DatumType::I64 => "int64".into(),
        DatumType::I32 => "int32".into(),
        DatumType::Bool => "bool".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// tract's own shape analysis of a model, ignoring the value infos the file declares:
/// `(inputs, outputs)` with the dims tract derives from the inputs alone.
pub fn inferred_io(bytes: &[u8]) -> Result<(Vec<InferredTensor>, Vec<InferredTensor>)> {
    let onnx = onnx().with_ignore_value_info(true);
    describe_io(guarded("analysing the model", || {
        onnx.model_for_read(&mut &bytes[..])?.into_typed()
    })?)
}

/// As [`inferred_io`], for a file (whose external data tract reads from beside it).
pub fn inferred_io_at(path: &Path) -> Result<(Vec<InferredTensor>, Vec<InferredTensor>)> {
    let onnx = onnx().with_ignore_value_info(true);
    describe_io(guarded("analysing the model", || onnx.model_for_path(path)?.into_typed())?)
}

fn describe_io(model: TypedModel) -> Result<(Vec<InferredTensor>, Vec<InferredTensor>)> {
    let describe = |name: String, fact: &TypedFact| InferredTensor {
        name,
        dtype: onnx_dtype_name(fact.datum_type),
        dims: fact.shape.iter().map(|d| canonical_dim(&d.to_string())).collect(),
    };
    let mut inputs = Vec::new();
    for (ix, outlet) in model.input_outlets().map_err(tract_error("inputs"))?.iter().enumerate() {
        let fact = model.input_fact(ix).map_err(tract_error("inputs"))?;
        inputs.push(describe(model.node(outlet.node).name.clone(), fact));
    }
    let mut outputs = Vec::new();
    for (ix, outlet) in model.output_outlets().map_err(tract_error("outputs"))?.iter().enumerate() {
        let fact = model.output_fact(ix).map_err(tract_error("outputs"))?;
        let name = model.outlet_label(*outlet).unwrap_or_default().to_string();
        outputs.push(describe(name, fact));
    }
    Ok((inputs, outputs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptc_graph::{build_model, file, GptConfig, GraphOptions, Precision, RandomInit};

    fn plan_ops(precision: Precision) -> Vec<String> {
        let config = GptConfig {
            vocab_size: 50,
            context_length: 8,
            emb_dim: 8,
            n_heads: 2,
            n_layers: 3,
            drop_rate: 0.0,
            qkv_bias: false,
        };
        let options = GraphOptions { kv_cache: true, precision, ..Default::default() };
        let model = build_model(&config, options, &mut RandomInit { seed: 1 }, None).unwrap();
        let runtime = TractRuntime::from_bytes(&file::encode(&model)).unwrap();
        runtime.backend().plan().model().nodes().iter().map(|n| n.op.name().to_string()).collect()
    }

    /// A head tied to the token embedding runs the plan an untied head does: no packing of the
    /// table left to run at each step (the table, 8192 x 160 float32 = 5.2 MB, is over the size
    /// above which tract leaves a constant read by several nodes unfolded).
    #[test]
    fn a_tied_head_is_packed_once_at_load_as_an_untied_one() {
        let config = GptConfig {
            vocab_size: 8192,
            context_length: 8,
            emb_dim: 160,
            n_heads: 2,
            n_layers: 1,
            drop_rate: 0.0,
            qkv_bias: false,
        };
        let plan = |tie_weights: bool| {
            let options = GraphOptions {
                kv_cache: true,
                last_token_logits: true,
                tie_weights,
                ..Default::default()
            };
            let model = build_model(&config, options, &mut RandomInit { seed: 1 }, None).unwrap();
            let runtime = TractRuntime::from_bytes(&file::encode(&model)).unwrap();
            let model = runtime.backend().plan().model().clone();
            let packs = model.nodes().iter().filter(|n| n.op.name() == "OptMatMulPack").count();
            (packs, model.nodes().len())
        };
        assert_eq!(plan(true), plan(false), "(packing ops, nodes): tied, untied");
    }

    #[test]
    fn each_layers_gelu_becomes_one_tract_op() {
        for precision in [Precision::F32, Precision::F16] {
            let ops = plan_ops(precision);
            let gelus = ops.iter().filter(|op| op.contains("GeluApproximate")).count();
            assert_eq!(gelus, 3, "{precision:?}: {ops:?}");
            assert!(!ops.iter().any(|op| op.contains("Tanh")), "{precision:?}: {ops:?}");
        }
    }
}
