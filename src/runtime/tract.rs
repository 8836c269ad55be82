//! tract (pure Rust, CPU): one optimized plan, symbols bound from input shapes on every run.

use std::path::Path;
use std::sync::Arc;

use ndarray::{Array2, Array3, Ix3};
use tract_onnx::prelude::*;

use super::Runtime;
use crate::{Error, Result};

type Plan = Arc<TypedRunnableModel>;

pub struct TractRuntime {
    plan: Plan,
}

fn tract_error(context: &str) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::Runtime(format!("tract: {context}: {e:#}"))
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
    });
}

impl TractRuntime {
    pub fn from_bytes(bytes: &[u8]) -> Result<TractRuntime> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(tract_error("loading the model"))?;
        TractRuntime::from_inference_model(model)
    }

    pub fn from_path(path: &Path) -> Result<TractRuntime> {
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(tract_error(&format!("loading {}", path.display())))?;
        TractRuntime::from_inference_model(model)
    }

    fn from_inference_model(model: InferenceModel) -> Result<TractRuntime> {
        use_all_cores();
        let plan = model
            .into_optimized()
            .map_err(tract_error("optimizing the model"))?
            .into_runnable()
            .map_err(tract_error("planning the model"))?;
        Ok(TractRuntime { plan })
    }
}

impl Runtime for TractRuntime {
    fn name(&self) -> String {
        "tract".into()
    }

    fn forward(&mut self, input_ids: &Array2<i64>) -> Result<Array3<f32>> {
        let input = Tensor::from(input_ids.clone());
        let outputs = self
            .plan
            .run(tvec!(input.into()))
            .map_err(tract_error("running"))?;
        let logits = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(tract_error("reading logits"))?
            .into_dimensionality::<Ix3>()
            .map_err(|e| Error::Runtime(format!("tract: logits are not 3-d: {e}")))?;
        Ok(logits.to_owned())
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
    let model = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .model_for_read(&mut &bytes[..])
        .map_err(tract_error("loading the model"))?
        .into_typed()
        .map_err(tract_error("analysing the model"))?;
    let describe = |name: String, fact: &TypedFact| InferredTensor {
        name,
        dtype: onnx_dtype_name(fact.datum_type),
        dims: fact.shape.iter().map(|d| d.to_string()).collect(),
    };
    let mut inputs = Vec::new();
    for (ix, outlet) in model
        .input_outlets()
        .map_err(tract_error("inputs"))?
        .iter()
        .enumerate()
    {
        let fact = model.input_fact(ix).map_err(tract_error("inputs"))?;
        inputs.push(describe(model.node(outlet.node).name.clone(), fact));
    }
    let mut outputs = Vec::new();
    for (ix, outlet) in model
        .output_outlets()
        .map_err(tract_error("outputs"))?
        .iter()
        .enumerate()
    {
        let fact = model.output_fact(ix).map_err(tract_error("outputs"))?;
        let name = model.outlet_label(*outlet).unwrap_or_default().to_string();
        outputs.push(describe(name, fact));
    }
    Ok((inputs, outputs))
}
