//! The runtimes that execute an exported model, behind one small trait: the decoding driver does
//! not know which one it drives. What every backend shares (which input gets what, the KV cache
//! fed back from step to step) is written once here, in [`Engine`]; a [`Backend`] supplies only
//! what differs: wrapping ids, an empty past, and one run.

mod addends;
mod attention;
mod crew;
mod dense;
mod int4;
pub(crate) mod load;
mod lookup;
pub mod ort;
mod rope;
pub mod tract;

pub use load::{load, Loaded, ModelSource, RuntimeKind};

use gptc_graph::names::{InputRole, KvPart};
use ndarray::{Array2, Array3};

pub use crate::memory::LogitPositions;
use crate::{Error, Result};

/// One run's inputs. `attention_mask` (over past and new slots) and `position_ids` are read
/// only by models with a KV cache.
#[derive(Clone, Copy)]
pub struct Step<'a> {
    pub input_ids: &'a Array2<i64>,
    pub attention_mask: Option<&'a Array2<i64>>,
    pub position_ids: Option<&'a Array2<i64>>,
}

impl<'a> Step<'a> {
    pub fn ids_only(input_ids: &'a Array2<i64>) -> Step<'a> {
        Step { input_ids, attention_mask: None, position_ids: None }
    }
}

pub trait Runtime {
    /// A short name for reports: `tract`, `ort-cpu`, ...
    fn name(&self) -> String;

    /// Whether the model keeps keys and values between runs.
    fn has_cache(&self) -> bool;

    /// Values a position of the logits holds, as the loaded model's shapes fix it (`None` when
    /// they do not): what [`load`] holds to the config's vocabulary.
    fn logits_width(&self) -> Option<usize> {
        None
    }

    /// Forgets the cache: the next run starts a new sequence (past length 0).
    fn reset(&mut self);

    /// Logits `[batch, new positions (or 1), vocab]`; with a cache, this run's keys and values
    /// join the cache.
    fn run(&mut self, step: &Step) -> Result<Array3<f32>>;

    /// Which positions a run's logits cover, as the model declares them; every position when
    /// it cannot tell, so that memory estimates err on the safe side.
    fn logit_positions(&self) -> LogitPositions {
        LogitPositions::Every
    }
}

/// What one backend run returns: the logits, and each layer's `present` keys and values (empty
/// for a model without a cache).
pub struct Outputs<V> {
    pub logits: Array3<f32>,
    pub present: Vec<[V; 2]>,
}

/// The part of a runtime that differs from one engine to another.
pub trait Backend {
    /// A tensor as this engine holds it between runs (the cache stays in it, uncopied).
    type Value;

    fn name(&self) -> String;

    /// See [`Runtime::logits_width`].
    fn logits_width(&self) -> Option<usize> {
        None
    }

    /// Token ids (or a mask, or positions) as an input.
    fn ids(&self, ids: &Array2<i64>) -> Result<Self::Value>;

    /// The past of a new sequence: `[batch, heads, 0, head_dim]`.
    fn empty_past(&self, batch: usize) -> Result<Self::Value>;

    /// One run, `inputs` in the model's input order; `layers` present pairs are expected back.
    fn run(&mut self, inputs: &[&Self::Value], layers: usize) -> Result<Outputs<Self::Value>>;

    /// Which positions the model's logits cover (see [`Runtime::logit_positions`]).
    fn logit_positions(&self) -> LogitPositions {
        LogitPositions::Every
    }
}

/// A model's inputs, as a type: the plain graph takes ids alone; the cache graph takes ids,
/// mask, positions and each layer's past, in `roles` order, and keeps its cache beside them.
enum Inputs<V> {
    Plain,
    Cached { roles: Vec<InputRole>, layers: usize, past: Vec<[V; 2]> },
}

/// A backend with the feeding logic and the KV cache every backend shares.
pub struct Engine<B: Backend> {
    backend: B,
    inputs: Inputs<B::Value>,
}

impl<B: Backend> Engine<B> {
    /// Wraps `backend`, whose model's inputs have `layout` (see [`InputLayout::of`]).
    pub fn new(backend: B, layout: InputLayout) -> Engine<B> {
        let inputs = match layout {
            InputLayout::Plain => Inputs::Plain,
            InputLayout::Cached { roles, layers } => {
                Inputs::Cached { roles, layers, past: Vec::new() }
            }
        };
        Engine { backend, inputs }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }
}

impl<B: Backend> Runtime for Engine<B> {
    fn name(&self) -> String {
        self.backend.name()
    }

    fn has_cache(&self) -> bool {
        matches!(self.inputs, Inputs::Cached { .. })
    }

    fn logits_width(&self) -> Option<usize> {
        self.backend.logits_width()
    }

    fn logit_positions(&self) -> LogitPositions {
        self.backend.logit_positions()
    }

    fn reset(&mut self) {
        if let Inputs::Cached { past, .. } = &mut self.inputs {
            past.clear();
        }
    }

    fn run(&mut self, step: &Step) -> Result<Array3<f32>> {
        let Engine { backend, inputs } = self;
        let ids = backend.ids(step.input_ids)?;
        let Inputs::Cached { roles, layers, past } = inputs else {
            return Ok(backend.run(&[&ids], 0)?.logits);
        };
        let needed = |input: Option<&Array2<i64>>, role: InputRole| {
            let input = input.ok_or_else(|| {
                Error::Usage(format!("a model with a KV cache needs `{role}` at every step"))
            })?;
            backend.ids(input)
        };
        let mask = needed(step.attention_mask, InputRole::AttentionMask)?;
        let positions = needed(step.position_ids, InputRole::PositionIds)?;
        let empty = match past.is_empty() {
            true => Some(backend.empty_past(step.input_ids.nrows())?),
            false => None,
        };
        let past_of = |layer: usize, part: KvPart| -> Result<&B::Value> {
            match past.get(layer) {
                Some(kv) => Ok(&kv[part as usize]),
                None => empty
                    .as_ref()
                    .ok_or_else(|| Error::Model(format!("the cache holds no layer {layer}"))),
            }
        };
        let fed = roles
            .iter()
            .map(|&role| match role {
                InputRole::InputIds => Ok(&ids),
                InputRole::AttentionMask => Ok(&mask),
                InputRole::PositionIds => Ok(&positions),
                InputRole::Past(layer, part) => past_of(layer, part),
            })
            .collect::<Result<Vec<_>>>()?;
        let outputs = backend.run(&fed, *layers)?;
        drop(fed);
        *past = outputs.present;
        Ok(outputs.logits)
    }
}

/// The two input layouts gptc exports, read from a model's input names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputLayout {
    /// `input_ids` alone.
    Plain,
    /// `input_ids`, `attention_mask`, `position_ids` and `past_key_values.{i}.key/value` for
    /// `layers` layers, in the model's order.
    Cached { roles: Vec<InputRole>, layers: usize },
}

impl InputLayout {
    /// The layout of a model with these inputs; anything else is refused, naming the input that
    /// gptc does not feed or the first one it misses.
    pub fn of(names: &[&str]) -> Result<InputLayout> {
        let roles = names
            .iter()
            .map(|name| {
                InputRole::of(name).ok_or_else(|| Error::Model(format!(
                    "the model has an input `{name}` that gptc does not feed (it feeds input_ids, attention_mask, position_ids, past_key_values.N.key/value)"
                )))
            })
            .collect::<Result<Vec<_>>>()?;
        if !roles.contains(&InputRole::InputIds) {
            return Err(Error::Model("the model has no `input_ids` input".into()));
        }
        if roles.len() == 1 {
            return Ok(InputLayout::Plain);
        }
        let layers = roles.iter().filter(|r| matches!(r, InputRole::Past(_, KvPart::Key))).count();
        let mut wanted = vec![InputRole::AttentionMask, InputRole::PositionIds];
        for layer in 0..layers.max(1) {
            wanted.extend(KvPart::BOTH.map(|part| InputRole::Past(layer, part)));
        }
        let missing: Vec<String> =
            wanted.iter().filter(|r| !roles.contains(r)).map(|r| r.to_string()).collect();
        if !missing.is_empty() {
            return Err(Error::Model(format!(
                "the model's inputs are neither gptc's plain nor its KV-cache layout: missing {}",
                missing.join(", ")
            )));
        }
        Ok(InputLayout::Cached { roles, layers })
    }
}

/// `heads` and `head_dim` of a cache input with dims `[batch, heads, past, head_dim]`, where
/// `None` (or a negative number) is a dim that is not fixed: both must be.
pub fn cache_geometry(dims: &[Option<i64>]) -> Result<(usize, usize)> {
    let name = gptc_graph::names::past(0, KvPart::Key);
    if dims.len() != 4 {
        return Err(Error::Model(format!("{name} is not a 4-d tensor")));
    }
    let fixed = |d: Option<i64>| d.and_then(|d| usize::try_from(d).ok()).filter(|&d| d > 0);
    match (fixed(dims[1]), fixed(dims[3])) {
        (Some(heads), Some(head_dim)) => Ok((heads, head_dim)),
        _ => Err(Error::Model(format!("{name} must have fixed n_heads and head_dim dims"))),
    }
}

/// A graph input or output as tract's analysis sees it: ONNX dtype name and dims
/// (numbers, or the symbols of named dims).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferredTensor {
    pub name: String,
    pub dtype: String,
    pub dims: Vec<String>,
}

/// A dim written as a sum of terms, in a canonical order: `"b + a"` and `"a+b"` agree.
pub fn canonical_dim(dim: &str) -> String {
    let mut terms: Vec<&str> = dim.split('+').map(str::trim).collect();
    terms.sort_unstable();
    terms.join("+")
}

/// Puts `op`, reading `inputs`, in the place of node `replaced`'s output, named after node
/// `named` with `suffix`: how each of gptc's rewrites swaps tract's ops for one of its own.
fn replace_with(
    model: &mut tract_onnx::prelude::TypedModel,
    [replaced, named]: [usize; 2],
    suffix: &str,
    op: impl Into<Box<dyn tract_onnx::tract_core::ops::TypedOp>>,
    inputs: &[tract_onnx::prelude::OutletId],
) -> tract_onnx::prelude::TractResult<()> {
    use tract_onnx::prelude::*;
    let mut patch = TypedModelPatch::default();
    let taps =
        inputs.iter().map(|&o| patch.tap_model(model, o)).collect::<TractResult<TVec<_>>>()?;
    let name = format!("{}.{suffix}", model.node(named).name);
    let out = patch.wire_node(name, op, &taps)?;
    patch.shunt_outside(model, replaced.into(), out[0])?;
    patch.apply(model)
}

/// A float32 output of `shape` that `fill` writes whole: allocated once, as tract's own ops
/// allocate theirs, and handed to tract as it is. (A `Vec` made into a tensor is copied once
/// more, and a zeroed one is written twice: at a 1024-token prefill that was a tenth of the
/// projections' time.)
///
/// # Safety
/// `fill` writes every element before it reads any (the slice starts uninitialized). The
/// kernels' tests hand them outputs filled with NaN, so an element a kernel misses shows there.
unsafe fn written_tensor(
    shape: &[usize],
    fill: impl FnOnce(&mut [f32]) -> tract_onnx::prelude::TractResult<()>,
) -> tract_onnx::prelude::TractResult<tract_onnx::prelude::TValue> {
    use tract_onnx::prelude::*;
    // SAFETY: a tensor of a plain-data type, which `fill` writes before reading (the caller's
    // promise).
    let mut tensor = unsafe { Tensor::uninitialized::<f32>(shape)? };
    fill(tensor.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
    Ok(tensor.into_tvalue())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_read_from_input_names() {
        assert_eq!(InputLayout::of(&["input_ids"]).unwrap(), InputLayout::Plain);
        let cached = [
            "input_ids",
            "attention_mask",
            "position_ids",
            "past_key_values.0.key",
            "past_key_values.0.value",
            "past_key_values.1.key",
            "past_key_values.1.value",
        ];
        let InputLayout::Cached { layers, roles } = InputLayout::of(&cached).unwrap() else {
            panic!("a cache layout")
        };
        assert_eq!((layers, roles.len()), (2, 7));
        let err = InputLayout::of(&cached[..6]).unwrap_err().to_string();
        assert!(err.contains("missing past_key_values.1.value"), "{err}");
        let err = InputLayout::of(&["input_ids", "tokens"]).unwrap_err().to_string();
        assert!(err.contains("`tokens`"), "{err}");
        assert!(InputLayout::of(&["attention_mask"]).is_err());
    }

    #[test]
    fn cache_geometry_wants_fixed_heads_and_head_dim() {
        assert_eq!(cache_geometry(&[None, Some(12), None, Some(64)]).unwrap(), (12, 64));
        assert!(cache_geometry(&[None, None, None, Some(64)]).is_err());
        assert!(cache_geometry(&[None, Some(-1), None, Some(64)]).is_err());
        assert!(cache_geometry(&[Some(12), Some(64)]).is_err());
    }
}
