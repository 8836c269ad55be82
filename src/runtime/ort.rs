//! ONNX Runtime through the `ort` crate, loaded at run time (`load-dynamic`): CPU, or CUDA
//! where the library and a GPU have it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array2, Array3};
use ort::environment::Environment;
use ort::ep;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue, SessionOutputs};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType, ValueType};

use super::{check_input_layout, InputRole, Runtime, Step};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
    /// CUDA when it can be had, else CPU (said on stderr).
    Auto,
}

const INSTALL_HINT: &str = "set ORT_DYLIB_PATH to libonnxruntime.so (version 1.31 or newer), or `pip install onnxruntime==1.31.1` (onnxruntime-gpu for CUDA) for the python3 on PATH or in the active venv";

/// Where libonnxruntime comes from: `ORT_DYLIB_PATH`, else the `onnxruntime` (or
/// `onnxruntime-gpu`) package of the active venv's Python or of `python3` on PATH.
pub fn find_library() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Runtime(format!("ORT_DYLIB_PATH={} is not a file", path.display())))
        };
    }
    let mut pythons = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        pythons.push(Path::new(&venv).join("bin").join("python"));
    }
    pythons.push(PathBuf::from("python3"));
    const ASK: &str = "import glob, os, onnxruntime as o; \
        print('\\n'.join(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), 'capi', 'libonnxruntime.so*')))))";
    for python in pythons {
        let Ok(out) = std::process::Command::new(&python).args(["-c", ASK]).output() else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        let listing = String::from_utf8_lossy(&out.stdout);
        if let Some(lib) = listing.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            return Ok(PathBuf::from(lib));
        }
    }
    Err(Error::Runtime(format!("ONNX Runtime's library was not found: {INSTALL_HINT}")))
}

/// The process's one ONNX Runtime environment (ort allows one per process, ever).
fn environment() -> Result<Environment> {
    static ENVIRONMENT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let library = find_library().map_err(|e| e.to_string())?;
            // Loading first: any ort call before a successful load would panic.
            let builder = ort::init_from(&library)
                .map_err(|e| format!("loading {}: {e} ({INSTALL_HINT})", library.display()))?;
            builder.with_name("gptc").build().map_err(|e| format!("ONNX Runtime: {e}"))
        })
        .clone()
        .map_err(Error::Runtime)
}

fn ort_error(context: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::Runtime(format!("ONNX Runtime: {context}: {e}"))
}

pub struct OrtRuntime {
    session: Session,
    device: &'static str,
    io_binding: bool,
    inputs: Vec<(String, InputRole)>,
    cache: Option<Cache>,
}

/// Last run's `present` values, fed back as they are (no copy) as the next run's `past`.
struct Cache {
    heads: usize,
    head_dim: usize,
    /// float32, or float16 for a `--dtype f16` export.
    element_type: TensorElementType,
    layers: usize,
    past: Vec<(DynValue, DynValue)>,
}

impl OrtRuntime {
    pub fn from_bytes(bytes: &[u8], device: Device) -> Result<OrtRuntime> {
        OrtRuntime::load(device, |builder| builder.commit_from_memory(bytes))
    }

    /// Loads a file; its external data (`NAME.onnx.data`) is found beside it.
    pub fn from_path(path: &Path, device: Device) -> Result<OrtRuntime> {
        OrtRuntime::load(device, |builder| builder.commit_from_file(path))
    }

    fn load(
        device: Device,
        commit: impl Fn(&mut SessionBuilder) -> ort::Result<Session>,
    ) -> Result<OrtRuntime> {
        let environment = environment()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let session_on = |use_cuda: bool| -> Result<Session> {
            let builder = Session::builder(&environment).map_err(ort_error("session"))?;
            let options_error =
                |e: ort::Error<_>| Error::Runtime(format!("ONNX Runtime: session options: {e}"));
            let builder = builder
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(options_error)?
                .with_intra_threads(threads)
                .map_err(options_error)?;
            let mut builder = if use_cuda {
                builder
                    // TF32 matmuls measured 6.9e-4 off float32 on an H100; gptc's float32
                    // contract is 1e-4 of the reference.
                    .with_execution_providers([ep::CUDA::default()
                        .with_tf32(false)
                        .build()
                        .error_on_failure()])
                    .map_err(|e| {
                        Error::Runtime(format!("ONNX Runtime: CUDA execution provider: {e}"))
                    })?
            } else {
                builder
            };
            commit(&mut builder).map_err(ort_error("loading the model"))
        };
        let (session, device) = match device {
            Device::Cpu => (session_on(false)?, "cpu"),
            Device::Cuda => (session_on(true)?, "cuda"),
            Device::Auto => match session_on(true) {
                Ok(session) => (session, "cuda"),
                Err(e) => {
                    eprintln!("gptc: CUDA is not available ({e}); running ONNX Runtime on the CPU");
                    (session_on(false)?, "cpu")
                }
            },
        };
        OrtRuntime::new(session, device)
    }

    fn new(session: Session, device: &'static str) -> Result<OrtRuntime> {
        let inputs = session
            .inputs()
            .iter()
            .map(|i| Ok((i.name().to_string(), InputRole::of(i.name())?)))
            .collect::<Result<Vec<_>>>()?;
        let roles: Vec<InputRole> = inputs.iter().map(|(_, r)| r.clone()).collect();
        let (has_cache, layers) = check_input_layout(&roles)?;
        if !session.outputs().iter().any(|o| o.name() == "logits") {
            return Err(Error::Input("the model has no `logits` output".into()));
        }
        let cache = if has_cache {
            let past = session.inputs().iter().find(|i| i.name() == "past_key_values.0.key");
            let (element_type, dims) = match past.map(|p| p.dtype()) {
                Some(ValueType::Tensor { ty, shape, .. }) => (*ty, shape.to_vec()),
                _ => (TensorElementType::Float32, Vec::new()),
            };
            let (Some(&heads), Some(&head_dim)) = (dims.get(1), dims.get(3)) else {
                return Err(Error::Input("past_key_values.0.key is not a 4-d tensor".into()));
            };
            if heads <= 0 || head_dim <= 0 {
                return Err(Error::Input(
                    "past_key_values.0.key must have fixed n_heads and head_dim dims".into(),
                ));
            }
            Some(Cache {
                heads: heads as usize,
                head_dim: head_dim as usize,
                element_type,
                layers,
                past: Vec::new(),
            })
        } else {
            None
        };
        Ok(OrtRuntime { session, device, io_binding: device == "cuda", inputs, cache })
    }
}

impl Cache {
    /// Layer `i`'s past keys (or values): last run's present, or empty before the first run.
    fn past_value(&self, i: usize, key: bool, batch: usize) -> Result<SessionInputValue<'_>> {
        match self.past.get(i) {
            Some((k, v)) => Ok(if key { k.into() } else { v.into() }),
            None => Ok(self.empty(batch)?.into()),
        }
    }

    /// The past of a new sequence: no positions yet.
    fn empty(&self, batch: usize) -> Result<DynTensor> {
        let shape = vec![batch, self.heads, 0, self.head_dim];
        DynTensor::new(&Allocator::default(), self.element_type, shape)
            .map_err(ort_error("empty past"))
    }
}

fn ids_tensor(array: &Array2<i64>) -> Result<Tensor<i64>> {
    Tensor::from_array(array.clone()).map_err(ort_error("input"))
}

impl Runtime for OrtRuntime {
    fn name(&self) -> String {
        format!("ort-{}", self.device)
    }

    fn has_cache(&self) -> bool {
        self.cache.is_some()
    }

    fn reset(&mut self) {
        if let Some(cache) = &mut self.cache {
            cache.past.clear();
        }
    }

    fn run(&mut self, step: &Step) -> Result<Array3<f32>> {
        if self.io_binding {
            self.run_bound(step)
        } else {
            self.run_direct(step)
        }
    }
}

impl OrtRuntime {
    /// Whether runs go through an `IoBinding` (on by default under CUDA, off on the CPU where
    /// plain runs measured faster). Either way the cache is fed back without copies.
    pub fn set_io_binding(&mut self, on: bool) {
        self.io_binding = on;
    }

    /// Runs through an `IoBinding`: the cache outputs are bound to the session's device (GPU
    /// memory under CUDA, so the cache never leaves the GPU between steps) and come back as
    /// values that are bound, as they are, as the next step's past inputs. Logits are bound to
    /// CPU memory: the driver reads them there.
    fn run_bound(&mut self, step: &Step) -> Result<Array3<f32>> {
        let batch = step.input_ids.nrows();
        let needs = |what: Option<&Array2<i64>>, name: &str| {
            what.ok_or_else(|| Error::Input(format!("a KV-cache model needs {name}")))
                .and_then(ids_tensor)
        };
        let Self { session, inputs: names, cache, device, .. } = self;
        let bind = |e: ort::Error| Error::Runtime(format!("ONNX Runtime: binding: {e}"));
        let mut binding = session.create_binding().map_err(bind)?;
        for (name, role) in names.iter() {
            match (role, cache.as_ref()) {
                (InputRole::InputIds, _) => binding.bind_input(name, &ids_tensor(step.input_ids)?),
                (InputRole::AttentionMask, _) => {
                    binding.bind_input(name, &needs(step.attention_mask, "attention_mask")?)
                }
                (InputRole::PositionIds, _) => {
                    binding.bind_input(name, &needs(step.position_ids, "position_ids")?)
                }
                (InputRole::PastKey(i), Some(c)) => match c.past.get(*i) {
                    Some((key, _)) => binding.bind_input(name, key),
                    None => binding.bind_input(name, &c.empty(batch)?),
                },
                (InputRole::PastValue(i), Some(c)) => match c.past.get(*i) {
                    Some((_, value)) => binding.bind_input(name, value),
                    None => binding.bind_input(name, &c.empty(batch)?),
                },
                (_, None) => unreachable!("cache inputs imply a cache"),
            }
            .map_err(bind)?;
        }
        let cpu =
            MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::CPUOutput)
                .map_err(bind)?;
        binding.bind_output_to_device("logits", &cpu).map_err(bind)?;
        if let Some(c) = cache.as_ref() {
            let on_device = if *device == "cuda" {
                MemoryInfo::new(
                    AllocationDevice::CUDA,
                    0,
                    AllocatorType::Device,
                    MemoryType::Default,
                )
                .map_err(bind)?
            } else {
                cpu.clone()
            };
            for i in 0..c.layers {
                for part in ["key", "value"] {
                    binding
                        .bind_output_to_device(format!("present.{i}.{part}"), &on_device)
                        .map_err(bind)?;
                }
            }
        }
        let outputs = session.run_binding(&binding).map_err(ort_error("running"))?;
        take_outputs(outputs, cache.as_mut())
    }

    /// Runs with plain inputs and outputs: the present values come back as ONNX Runtime
    /// allocated them and are passed, as they are, as the next step's past (no copy).
    fn run_direct(&mut self, step: &Step) -> Result<Array3<f32>> {
        let batch = step.input_ids.nrows();
        let needs = |what: Option<&Array2<i64>>, name: &str| {
            what.ok_or_else(|| Error::Input(format!("a KV-cache model needs {name}")))
                .and_then(ids_tensor)
                .map(SessionInputValue::from)
        };
        let Self { session, inputs: names, cache, .. } = self;
        let mut inputs: Vec<(Cow<str>, SessionInputValue)> = Vec::with_capacity(names.len());
        for (name, role) in names.iter() {
            let value = match (role, cache.as_ref()) {
                (InputRole::InputIds, _) => ids_tensor(step.input_ids)?.into(),
                (InputRole::AttentionMask, _) => needs(step.attention_mask, "attention_mask")?,
                (InputRole::PositionIds, _) => needs(step.position_ids, "position_ids")?,
                (InputRole::PastKey(i), Some(c)) => c.past_value(*i, true, batch)?,
                (InputRole::PastValue(i), Some(c)) => c.past_value(*i, false, batch)?,
                (_, None) => unreachable!("cache inputs imply a cache"),
            };
            inputs.push((Cow::Borrowed(name.as_str()), value));
        }
        let outputs = session.run(inputs).map_err(ort_error("running"))?;
        take_outputs(outputs, cache.as_mut())
    }
}

/// Copies the logits out and keeps each layer's `present` values, as they are, as the cache.
fn take_outputs(mut outputs: SessionOutputs, cache: Option<&mut Cache>) -> Result<Array3<f32>> {
    let (shape, data) =
        outputs["logits"].try_extract_tensor::<f32>().map_err(ort_error("reading logits"))?;
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let logits = Array3::from_shape_vec((shape[0], shape[1], shape[2]), data.to_vec())
        .map_err(|e| Error::Runtime(format!("ONNX Runtime: logits shape: {e}")))?;
    if let Some(cache) = cache {
        let mut present = Vec::with_capacity(cache.layers);
        for i in 0..cache.layers {
            let mut take = |part: &str| {
                outputs.remove(format!("present.{i}.{part}").as_str()).ok_or_else(|| {
                    Error::Input(format!("the model has no `present.{i}.{part}` output"))
                })
            };
            present.push((take("key")?, take("value")?));
        }
        drop(outputs);
        cache.past = present;
    }
    Ok(logits)
}
