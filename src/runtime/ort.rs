//! ONNX Runtime through the `ort` crate, loaded at run time (`load-dynamic`): CPU, or CUDA
//! where the library and a GPU have it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gptc_graph::names::{self, KvPart};
use ndarray::{Array2, Array3};
use ort::environment::Environment;
use ort::ep;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue, SessionOutputs};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType, ValueType};

use super::{cache_geometry, Backend, Engine, InputLayout, LogitPositions, Outputs};
use crate::{Error, Result};

/// Where ONNX Runtime runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
            let environment =
                builder.with_name("gptc").build().map_err(|e| format!("ONNX Runtime: {e}"))?;
            // gptc reports every failure itself, in one line: ONNX Runtime's own log lines
            // would come before it and say the same thing again.
            environment.set_log_level(ort::logging::LogLevel::Fatal);
            Ok(environment)
        })
        .clone()
        .map_err(Error::Runtime)
}

fn ort_error(context: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::Runtime(format!("ONNX Runtime: {context}: {e}"))
}

/// ONNX Runtime behind gptc's [`Runtime`](super::Runtime).
pub type OrtRuntime = Engine<OrtBackend>;

pub struct OrtBackend {
    session: Session,
    device: &'static str,
    io_binding: bool,
    /// The model's input names, in its order (the order [`Backend::run`] feeds them).
    input_names: Vec<String>,
    /// The empty past's element type (float32, or float16 for a `--dtype f16` export), heads,
    /// head_dim.
    past: Option<(TensorElementType, usize, usize)>,
    /// Why `Device::Auto` ran on the CPU, when it did.
    fallback: Option<String>,
    logit_positions: LogitPositions,
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
        let (session, device, fallback) = match device {
            Device::Cpu => (session_on(false)?, "cpu", None),
            Device::Cuda => (session_on(true)?, "cuda", None),
            Device::Auto => match session_on(true) {
                Ok(session) => (session, "cuda", None),
                Err(e) => (session_on(false)?, "cpu", Some(format!("CUDA is not available ({e})"))),
            },
        };
        OrtRuntime::from_session(session, device, fallback)
    }

    fn from_session(
        session: Session,
        device: &'static str,
        fallback: Option<String>,
    ) -> Result<OrtRuntime> {
        let input_names: Vec<String> =
            session.inputs().iter().map(|i| i.name().to_string()).collect();
        let names: Vec<&str> = input_names.iter().map(String::as_str).collect();
        let layout = InputLayout::of(&names)?;
        let Some(logits) = session.outputs().iter().find(|o| o.name() == names::LOGITS) else {
            return Err(Error::Model(format!("the model has no `{}` output", names::LOGITS)));
        };
        let logit_positions = match logits.dtype() {
            ValueType::Tensor { shape, .. } if shape.get(1) == Some(&1) => LogitPositions::Last,
            _ => LogitPositions::Every,
        };
        let past = match &layout {
            InputLayout::Plain => None,
            InputLayout::Cached { .. } => {
                let first_key = names::past(0, KvPart::Key);
                let past = session.inputs().iter().find(|i| i.name() == first_key);
                let (element_type, dims) = match past.map(|p| p.dtype()) {
                    Some(ValueType::Tensor { ty, shape, .. }) => {
                        (*ty, shape.iter().map(|&d| Some(d)).collect())
                    }
                    _ => (TensorElementType::Float32, Vec::new()),
                };
                let (heads, head_dim) = cache_geometry(&dims)?;
                Some((element_type, heads, head_dim))
            }
        };
        let io_binding = device == "cuda";
        let backend = OrtBackend {
            session,
            device,
            io_binding,
            input_names,
            past,
            fallback,
            logit_positions,
        };
        Ok(Engine::new(backend, layout))
    }

    /// Whether runs go through an `IoBinding` (on by default under CUDA, off on the CPU where
    /// plain runs measured faster). Either way the cache is fed back without copies.
    pub fn set_io_binding(&mut self, on: bool) {
        self.backend_mut().io_binding = on;
    }

    /// Why a `Device::Auto` runtime runs on the CPU; `None` when it runs where it was asked.
    pub fn fallback(&self) -> Option<&str> {
        self.backend().fallback.as_deref()
    }
}

fn ids_tensor(array: &Array2<i64>) -> Result<Tensor<i64>> {
    Tensor::from_array(array.clone()).map_err(ort_error("input"))
}

impl Backend for OrtBackend {
    type Value = DynValue;

    fn name(&self) -> String {
        format!("ort-{}", self.device)
    }

    fn logits_width(&self) -> Option<usize> {
        // ONNX Runtime's shapes, after its own inference (the head's, not what the file declares).
        let logits = self.session.outputs().iter().find(|o| o.name() == names::LOGITS)?;
        match logits.dtype() {
            ValueType::Tensor { shape, .. } => usize::try_from(*shape.last()?).ok(),
            _ => None,
        }
    }

    fn logit_positions(&self) -> LogitPositions {
        self.logit_positions
    }

    fn ids(&self, ids: &Array2<i64>) -> Result<DynValue> {
        Ok(ids_tensor(ids)?.into_dyn())
    }

    fn empty_past(&self, batch: usize) -> Result<DynValue> {
        let (element_type, heads, head_dim) =
            self.past.ok_or_else(|| Error::Model("the model has no KV cache".into()))?;
        let shape = vec![batch, heads, 0, head_dim];
        Ok(DynTensor::new(&Allocator::default(), element_type, shape)
            .map_err(ort_error("empty past"))?
            .into_dyn())
    }

    fn run(&mut self, inputs: &[&DynValue], layers: usize) -> Result<Outputs<DynValue>> {
        if self.io_binding {
            self.run_bound(inputs, layers)
        } else {
            self.run_direct(inputs, layers)
        }
    }
}

impl OrtBackend {
    /// Runs through an `IoBinding`: the cache outputs are bound to the session's device (GPU
    /// memory under CUDA, so the cache never leaves the GPU between steps) and come back as
    /// values that are bound, as they are, as the next step's past inputs. Logits are bound to
    /// CPU memory: the driver reads them there.
    fn run_bound(&mut self, inputs: &[&DynValue], layers: usize) -> Result<Outputs<DynValue>> {
        let bind = |e: ort::Error| Error::Runtime(format!("ONNX Runtime: binding: {e}"));
        let mut binding = self.session.create_binding().map_err(bind)?;
        for (name, value) in self.input_names.iter().zip(inputs) {
            binding.bind_input(name, *value).map_err(bind)?;
        }
        let cpu =
            MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::CPUOutput)
                .map_err(bind)?;
        binding.bind_output_to_device(names::LOGITS, &cpu).map_err(bind)?;
        let on_device = if self.device == "cuda" {
            MemoryInfo::new(AllocationDevice::CUDA, 0, AllocatorType::Device, MemoryType::Default)
                .map_err(bind)?
        } else {
            cpu.clone()
        };
        for i in 0..layers {
            for part in KvPart::BOTH {
                binding.bind_output_to_device(names::present(i, part), &on_device).map_err(bind)?;
            }
        }
        let outputs = self.session.run_binding(&binding).map_err(ort_error("running"))?;
        take_outputs(outputs, layers)
    }

    /// Runs with plain inputs and outputs: the present values come back as ONNX Runtime
    /// allocated them and are passed, as they are, as the next step's past (no copy).
    fn run_direct(&mut self, inputs: &[&DynValue], layers: usize) -> Result<Outputs<DynValue>> {
        let inputs: Vec<(Cow<str>, SessionInputValue)> = self
            .input_names
            .iter()
            .zip(inputs)
            .map(|(name, &value)| (Cow::Borrowed(name.as_str()), value.into()))
            .collect();
        let outputs = self.session.run(inputs).map_err(ort_error("running"))?;
        take_outputs(outputs, layers)
    }
}

/// Copies the logits out and keeps each layer's `present` values, as they are.
fn take_outputs(mut outputs: SessionOutputs, layers: usize) -> Result<Outputs<DynValue>> {
    let (shape, data) =
        outputs[names::LOGITS].try_extract_tensor::<f32>().map_err(ort_error("reading logits"))?;
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let [batch, positions, vocab] = shape[..] else {
        return Err(Error::Runtime(format!("ONNX Runtime: logits have shape {shape:?}")));
    };
    let logits = Array3::from_shape_vec((batch, positions, vocab), data.to_vec())
        .map_err(|e| Error::Runtime(format!("ONNX Runtime: logits shape: {e}")))?;
    let mut present = Vec::with_capacity(layers);
    for i in 0..layers {
        let mut take = |part: KvPart| {
            let name = names::present(i, part);
            outputs
                .remove(name.as_str())
                .ok_or_else(|| Error::Model(format!("the model has no `{name}` output")))
        };
        present.push([take(KvPart::Key)?, take(KvPart::Value)?]);
    }
    Ok(Outputs { logits, present })
}
