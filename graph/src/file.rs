//! Reading and writing `.onnx` files. Writes go to a temporary file beside the target and are
//! renamed into place, so a failed export never leaves a half-written model behind.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::builder::{Precision, Quantization};
use crate::config::{GptConfig, ModelConfig};
use crate::gpt2::GraphOptions;
use crate::names::{self, meta};
use crate::onnx::{
    DataLocation, DataType, GraphProto, ModelProto, StringStringEntryProto, TensorProto,
};
use crate::weights::{NamedTensor, TensorMap};
use crate::{Error, Result};

pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The most a small text input (a config, an index, a prompt file) may hold.
pub const TEXT_LIMIT: u64 = 64 << 20;

/// Opens an input file: the one guard that every file gptc reads passes (models, their external
/// data, checkpoints, configs, indexes, prompt files), and that runs before tract or ONNX
/// Runtime are handed a path. Only a regular file is opened: a FIFO, a device or a folder could
/// block the open or never end. Returns the file and its size.
pub fn open_input(path: &Path) -> Result<(std::fs::File, u64)> {
    let io_err = |error| Error::Io { path: path.to_path_buf(), error };
    let not_regular =
        || io_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    // Looked at before it is opened: opening a FIFO waits for a writer.
    if !std::fs::metadata(path).map_err(io_err)?.is_file() {
        return Err(not_regular());
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // A path swapped for a FIFO since it was looked at must not block the open either; reading
    // a regular file is the same with this flag.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path).map_err(io_err)?;
    // The file opened is the one judged.
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    Ok((file, meta.len()))
}

/// Reads a whole input file (through [`open_input`]), refusing one larger than `limit` bytes
/// before reading it.
pub fn read_input(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let io_err = |error| Error::Io { path: path.to_path_buf(), error };
    let refuse = |why: String| io_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    let (file, len) = open_input(path)?;
    if len > limit {
        return Err(refuse(format!(
            "{len} bytes, more than the {limit} this input can sensibly hold"
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The size was checked; a file that grows while read is cut at the limit and refused.
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(io_err)?;
    if bytes.len() as u64 > limit {
        return Err(refuse(format!("grew past {limit} bytes while read")));
    }
    Ok(bytes)
}

/// An input file's bytes (through [`open_input`]), mapped rather than read: nothing is
/// allocated and only the pages looked at are read, so a model's or a checkpoint's header is
/// checked, and its size weighed against the memory it needs, before its body is touched.
pub fn map_input(path: &Path) -> Result<prost::bytes::Bytes> {
    let (file, len) = open_input(path)?;
    map_file(&file, len, path)
}

/// The bytes of a file [`open_input`] opened, mapped.
fn map_file(file: &std::fs::File, len: u64, path: &Path) -> Result<prost::bytes::Bytes> {
    if len == 0 {
        return Ok(prost::bytes::Bytes::new());
    }
    // SAFETY: the map is read-only, and its bytes must not change while it lives. gptc never
    // writes a file in place (a new file is renamed over the old one, whose pages stay as they
    // were), so only another program writing into this very file could change them, a risk
    // tract and ONNX Runtime take on the same terms when they map model files.
    let map = unsafe { memmap2::Mmap::map(file) }
        .map_err(|error| Error::Io { path: path.to_path_buf(), error })?;
    Ok(prost::bytes::Bytes::from_owner(map))
}

/// As [`read_input`], as UTF-8 text.
pub fn read_text_input(path: &Path) -> Result<String> {
    String::from_utf8(read_input(path, TEXT_LIMIT)?).map_err(|_| Error::Io {
        path: path.to_path_buf(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// Temporary files and folders that exist only while a write is in progress: a signal handler
/// removes them (see [`remove_temporaries`]), so an interrupted export leaves nothing behind.
/// Lock order: [`COMMITS`] before this one.
static TEMPORARIES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn temporaries() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    TEMPORARIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many outputs (files, pairs, folders that the caller asked for, not temporaries) this
/// process has put in place; its lock is the one that [`commit_lock`] takes.
static COMMITS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// The one lock that putting outputs in place and a signal handler share. Every rename that
/// puts an output in place (a [`Staged`] file, a model and its data, a folder's swap), and the
/// making of every temporary, happens while holding it; a signal handler takes it before it
/// removes the temporaries and holds it until the process ends. So a signal that lands during a
/// commit waits for it to end, no commit starts once the handler runs, and the handler sees
/// every output either as it was or in place, as [`CommitLock::outputs_in_place`] says.
pub struct CommitLock(std::sync::MutexGuard<'static, usize>);

/// Takes the commit lock (see [`CommitLock`]), waiting for a commit in progress.
pub fn commit_lock() -> CommitLock {
    CommitLock(COMMITS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

impl CommitLock {
    /// Records that an output the caller asked for is now in place.
    pub fn output_in_place(&mut self) {
        *self.0 += 1;
    }

    /// How many outputs this process has put in place so far.
    pub fn outputs_in_place(&self) -> usize {
        *self.0
    }
}

/// Records a temporary path, to be removed by [`remove_temporaries`] if the process is stopped.
/// A path made after it is recorded could be made after a signal handler removed what was
/// recorded: make temporaries with [`create_temporary_dir`] or [`Staged::write`], which record
/// and make them under the commit lock.
pub fn register_temporary(path: &Path) {
    temporaries().push(path.to_path_buf());
}

/// Makes the folder `path` (its parent must exist) and records it as a temporary, in one step
/// as a signal handler sees it. A stale folder of the same name (a process of the same id that
/// was killed) is removed first.
pub fn create_temporary_dir(path: &Path) -> Result<()> {
    let _held = commit_lock();
    register_temporary(path);
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir(path).map_err(|error| {
        unregister_temporary(path);
        Error::Io { path: path.to_path_buf(), error }
    })
}

/// Forgets a temporary path (it was renamed into place, or removed).
pub fn unregister_temporary(path: &Path) {
    temporaries().retain(|p| p != path);
}

/// Whether `path` lies inside a registered temporary folder (a file written there is staged,
/// not an output in place).
fn inside_temporary(path: &Path) -> bool {
    temporaries().iter().any(|t| path.starts_with(t) && path != t)
}

/// Removes every registered temporary file or folder: for a signal handler, holding the commit
/// lock until the process ends (so nothing is put in place from the temporaries it removes).
pub fn remove_temporaries(_held: &CommitLock) {
    for path in temporaries().drain(..) {
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        // The main thread may still be writing into the folder (a file made between the
        // listing and the removal of its folder): remove again until it is gone. Nothing
        // makes the folder itself again (see `create_temporary_dir`), so this ends.
        for _ in 0..1000 {
            match std::fs::remove_dir_all(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => continue,
                _ => break,
            }
        }
    }
}

/// Where a write to `path` lands, checked before any work is done: a new path, or an existing
/// regular file; a symlink is followed, so its target is replaced (in the target's folder) and
/// the link stays. A dangling symlink, devices, folders, FIFOs and the like are refused.
pub fn output_target(path: &Path) -> Result<PathBuf> {
    let refuse = |why: String| Error::Io {
        path: path.to_path_buf(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    };
    let mut target = path.to_path_buf();
    let mut followed = false;
    // A chain of links, each resolved against the folder it lives in.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&target)
                    .map_err(|error| Error::Io { path: target.clone(), error })?;
                target = target.parent().unwrap_or(Path::new("")).join(link);
                followed = true;
            }
            Ok(meta) if meta.is_file() => return Ok(target),
            Ok(_) => {
                return Err(refuse(
                    "exists and is not a regular file: gptc replaces only files".into(),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Writing through a dangling link would make a file the user never named.
                if followed {
                    let to = target.display();
                    return Err(refuse(format!("is a symlink to {to}, which does not exist")));
                }
                if target.file_name().is_none() {
                    return Err(refuse("not a file path".into()));
                }
                return Ok(target);
            }
            Err(error) => return Err(Error::Io { path: target, error }),
        }
    }
    Err(refuse("too many levels of symbolic links".into()))
}

/// A file being written beside its target, under a hidden temporary name; [`Staged::commit`]
/// renames it over the target (keeping an existing target's permissions). Dropped uncommitted,
/// it is removed, so a failed write never leaves a partial file under either name.
pub struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staged {
    /// Writes `path`'s new contents with `fill` into the temporary file.
    pub fn write(
        path: &Path,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<Staged> {
        let target = output_target(path)?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
        let io_err = |error| Error::Io { path: path.to_path_buf(), error };
        // Recorded and made in one step as a signal handler sees it (see `CommitLock`).
        let (staged, created) = {
            let _held = commit_lock();
            register_temporary(&tmp);
            let created = std::fs::File::create(&tmp);
            (Staged { tmp, target, committed: false }, created)
        };
        let mut out = BufWriter::with_capacity(1 << 20, created.map_err(io_err)?);
        fill(&mut out).map_err(io_err)?;
        let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
        if let Ok(meta) = std::fs::metadata(&staged.target) {
            file.set_permissions(meta.permissions()).map_err(io_err)?;
        }
        Ok(staged)
    }

    /// Puts the new file in place, under the commit lock.
    pub fn commit(self) -> Result<()> {
        self.commit_under(&mut commit_lock())
    }

    /// Puts the new file in place, under a commit lock the caller holds (to put several files
    /// in place as one step, as a signal handler sees it).
    pub fn commit_under(mut self, held: &mut CommitLock) -> Result<()> {
        std::fs::rename(&self.tmp, &self.target)
            .map_err(|error| Error::Io { path: self.target.clone(), error })?;
        self.committed = true;
        if !inside_temporary(&self.target) {
            held.output_in_place();
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
        unregister_temporary(&self.tmp);
    }
}

/// Writes a file atomically: `fill` writes into a temporary file beside `path`, which is renamed
/// over `path` only when everything was written (see [`Staged`]).
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    Staged::write(path, fill)?.commit()
}

/// Streams the encoding of `model` to `out` without building it in memory first: the graph's
/// initializers (nearly all the bytes) are encoded one at a time after the rest of the graph.
/// Protobuf fields may come in any order, so this decodes to the same message.
pub fn encode_to(model: &ModelProto, out: &mut dyn Write) -> std::io::Result<()> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let header = ModelProto { graph: None, ..shallow_model(model) };
    out.write_all(&header.encode_to_vec())?;
    let Some(graph) = &model.graph else {
        return Ok(());
    };
    let shell = GraphProto { initializer: Vec::new(), ..graph.clone_without_initializers() };
    let mut head = Vec::new();
    encode_key(7, WireType::LengthDelimited, &mut head);
    encode_varint(graph.encoded_len() as u64, &mut head);
    shell.encode_raw(&mut head);
    out.write_all(&head)?;
    for tensor in &graph.initializer {
        encode_tensor_field(5, tensor, out)?;
    }
    Ok(())
}

/// One `TensorProto` as a length-delimited field, its packed `float_data` copied straight from
/// the tensor to `out` through a small buffer (a weight matrix is never encoded twice in memory).
fn encode_tensor_field(tag: u32, tensor: &TensorProto, out: &mut dyn Write) -> std::io::Result<()> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let header = TensorProto { float_data: Vec::new(), ..tensor.clone_without_float_data() };
    let mut head = Vec::new();
    encode_key(tag, WireType::LengthDelimited, &mut head);
    encode_varint(tensor.encoded_len() as u64, &mut head);
    header.encode_raw(&mut head);
    if !tensor.float_data.is_empty() {
        encode_key(4, WireType::LengthDelimited, &mut head);
        encode_varint(4 * tensor.float_data.len() as u64, &mut head);
    }
    out.write_all(&head)?;
    write_floats(&tensor.float_data, out)
}

/// Little-endian f32s through a small buffer: a weight matrix is never encoded whole in memory.
fn write_floats(values: &[f32], out: &mut dyn Write) -> std::io::Result<()> {
    let mut buf = [0u8; 1 << 16];
    for chunk in values.chunks(buf.len() / 4) {
        for (bytes, x) in buf.chunks_exact_mut(4).zip(chunk) {
            bytes.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&buf[..4 * chunk.len()])?;
    }
    Ok(())
}

impl TensorProto {
    fn clone_without_float_data(&self) -> TensorProto {
        TensorProto {
            dims: self.dims.clone(),
            data_type: self.data_type,
            float_data: Vec::new(),
            int32_data: self.int32_data.clone(),
            int64_data: self.int64_data.clone(),
            name: self.name.clone(),
            doc_string: self.doc_string.clone(),
            raw_data: self.raw_data.clone(),
            external_data: self.external_data.clone(),
            data_location: self.data_location,
        }
    }
}

fn shallow_model(model: &ModelProto) -> ModelProto {
    ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        doc_string: model.doc_string.clone(),
        graph: None,
        metadata_props: model.metadata_props.clone(),
    }
}

impl GraphProto {
    fn clone_without_initializers(&self) -> GraphProto {
        GraphProto {
            node: self.node.clone(),
            name: self.name.clone(),
            initializer: Vec::new(),
            doc_string: self.doc_string.clone(),
            input: self.input.clone(),
            output: self.output.clone(),
            value_info: self.value_info.clone(),
        }
    }
}

/// Protobuf messages are limited to 2 GiB; larger models need ONNX external data.
pub const PROTOBUF_LIMIT: usize = i32::MAX as usize;

/// Whether `model` is too large for one `.onnx` file.
pub fn needs_external_data(model: &ModelProto) -> bool {
    model.encoded_len() > PROTOBUF_LIMIT
}

/// Tensors smaller than this stay in the `.onnx` file (onnx's own default threshold).
const EXTERNAL_THRESHOLD: usize = 1024;
/// Offsets in the data file are multiples of the page size, so runtimes can map tensors.
const EXTERNAL_ALIGNMENT: u64 = 4096;

/// Where `write_model` puts the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightLayout {
    /// In the `.onnx` file, unless that would pass protobuf's 2 GiB limit.
    #[default]
    Auto,
    /// In `NAME.onnx.data` beside the model, per ONNX's external-data spec.
    External,
}

/// The external data file of `model_path`: `gpt2-xl.onnx` -> `gpt2-xl.onnx.data`.
pub fn data_path(model_path: &Path) -> PathBuf {
    let mut name = model_path.file_name().unwrap_or_default().to_os_string();
    name.push(".data");
    model_path.with_file_name(name)
}

/// Writes `model` to `path`, its weights inline or in `NAME.onnx.data` as `layout` and the 2 GiB
/// limit decide; returns the data file when there is one. Each file is written atomically, the
/// data first, so a model file never names data that is not all there.
pub fn write_model(
    path: &Path,
    model: &ModelProto,
    layout: WeightLayout,
) -> Result<Option<PathBuf>> {
    write_model_observed(path, model, layout, &|_| {})
}

/// As [`write_model`], telling `written` of every chunk of bytes as it goes to disk.
pub fn write_model_observed(
    path: &Path,
    model: &ModelProto,
    layout: WeightLayout,
    written: &dyn Fn(u64),
) -> Result<Option<PathBuf>> {
    let data_name = data_path(path).file_name().unwrap_or_default().to_string_lossy().into_owned();
    write_model_as(path, &data_name, model, layout, written)
}

/// As [`write_model_observed`], with external data (when there is any) in the file `data_name`
/// beside the model rather than `NAME.onnx.data`.
pub fn write_model_as(
    path: &Path,
    data_name: &str,
    model: &ModelProto,
    layout: WeightLayout,
    written: &dyn Fn(u64),
) -> Result<Option<PathBuf>> {
    if layout == WeightLayout::Auto && !needs_external_data(model) {
        write_atomically(path, |out| encode_to(model, &mut Observed { out, written }))?;
        return Ok(None);
    }
    let path = &output_target(path)?;
    let data = path.with_file_name(data_name);
    let location = data.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let (mut stub, placed) = externalize(model, &location);
    if stub.encoded_len() > PROTOBUF_LIMIT {
        return Err(Error::Config("the graph alone is over protobuf's 2 GiB limit".into()));
    }
    // Both files are complete before either replaces an old one, so an old pair stays whole
    // and loadable if anything fails; the data goes first, so a model never names data that is
    // not there.
    let mut record = DataRecord { bytes: 0, xxh3: 0 };
    let staged_data = Staged::write(&data, |out| {
        // Digested as it is written: the model records what its data file holds, read once.
        let out = &mut Digesting::new(Observed { out, written });
        let mut written = 0u64;
        for (tensor, offset) in &placed {
            std::io::copy(&mut std::io::repeat(0).take(offset - written), out)?;
            write_tensor_bytes(tensor, out)?;
            written = offset + tensor_byte_len(tensor) as u64;
        }
        record = out.record();
        Ok(())
    })?;
    record.put_in(&mut stub.metadata_props);
    let staged_model = Staged::write(path, |out| out.write_all(&stub.encode_to_vec()))?;
    // One step as a signal handler sees it: never a new data file beside the old model.
    let mut held = commit_lock();
    staged_data.commit_under(&mut held)?;
    staged_model.commit_under(&mut held)?;
    Ok(Some(data))
}

/// What a gptc model records of its external data file: the exact size and the XXH3-64 digest
/// of all its bytes. A data file that is not the one written with the model (another export's,
/// of the same size or not, put there by an interrupted swap or a careless copy) is refused
/// by every reader, whatever put it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRecord {
    pub bytes: u64,
    pub xxh3: u64,
}

impl DataRecord {
    /// The record in a model's metadata: `None` for a model without one (written by another
    /// tool, or by gptc before it recorded its data), whose data is trusted as before.
    fn of(props: &[StringStringEntryProto]) -> Option<Result<DataRecord>> {
        let bytes = lookup(props, meta::EXTERNAL_DATA_BYTES);
        let xxh3 = lookup(props, meta::EXTERNAL_DATA_XXH3);
        if bytes.is_none() && xxh3.is_none() {
            return None;
        }
        let bad = |key: &str, value: Option<&str>| {
            Error::Config(format!(
                "metadata `{key}` is `{}`, which gptc does not write",
                value.unwrap_or("missing")
            ))
        };
        let parsed_bytes = bytes.and_then(|b| b.parse::<u64>().ok());
        let parsed_xxh3 =
            xxh3.filter(|x| x.len() == 16).and_then(|x| u64::from_str_radix(x, 16).ok());
        Some(match (parsed_bytes, parsed_xxh3) {
            (Some(bytes), Some(xxh3)) => Ok(DataRecord { bytes, xxh3 }),
            (None, _) => Err(bad(meta::EXTERNAL_DATA_BYTES, bytes)),
            (_, None) => Err(bad(meta::EXTERNAL_DATA_XXH3, xxh3)),
        })
    }

    /// Puts the record in a model's metadata, in place of any it held (a model read from
    /// another pair and written anew).
    fn put_in(self, props: &mut Vec<StringStringEntryProto>) {
        let keys = [meta::EXTERNAL_DATA_BYTES, meta::EXTERNAL_DATA_XXH3];
        props.retain(|p| !keys.contains(&p.key.as_str()));
        let entry = |key: &str, value: String| StringStringEntryProto { key: key.into(), value };
        props.push(entry(meta::EXTERNAL_DATA_BYTES, self.bytes.to_string()));
        props.push(entry(meta::EXTERNAL_DATA_XXH3, format!("{:016x}", self.xxh3)));
    }
}

/// A writer that digests what passes through it.
struct Digesting<W> {
    out: W,
    hasher: Box<xxhash_rust::xxh3::Xxh3>,
    bytes: u64,
}

impl<W: Write> Digesting<W> {
    fn new(out: W) -> Self {
        // On the heap: the hasher keeps a buffer of its own.
        Digesting { out, hasher: Box::default(), bytes: 0 }
    }

    fn record(&self) -> DataRecord {
        DataRecord { bytes: self.bytes, xxh3: self.hasher.digest() }
    }
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A writer that reports what passes through it.
struct Observed<'a> {
    out: &'a mut dyn Write,
    written: &'a dyn Fn(u64),
}

impl Write for Observed<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        (self.written)(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The bytes of all the model's tensor values: what writing it mostly is.
pub fn tensor_bytes(model: &ModelProto) -> u64 {
    model.graph.iter().flat_map(|g| &g.initializer).map(|t| tensor_byte_len(t) as u64).sum()
}

/// The bytes a tensor's values take when stored raw (little-endian, as ONNX's `raw_data`).
pub fn tensor_byte_len(tensor: &TensorProto) -> usize {
    4 * tensor.float_data.len() + tensor.raw_data.len()
}

fn write_tensor_bytes(tensor: &TensorProto, out: &mut dyn Write) -> std::io::Result<()> {
    out.write_all(&tensor.raw_data)?;
    write_floats(&tensor.float_data, out)
}

/// The model with every large initializer replaced by a reference into `location`, and those
/// initializers with their offsets there, in file order.
fn externalize<'m>(
    model: &'m ModelProto,
    location: &str,
) -> (ModelProto, Vec<(&'m TensorProto, u64)>) {
    let mut stub = ModelProto { graph: None, ..shallow_model(model) };
    let mut placed = Vec::new();
    let Some(graph) = &model.graph else {
        return (stub, placed);
    };
    let mut end = 0u64;
    let initializer = graph
        .initializer
        .iter()
        .map(|tensor| {
            let len = tensor_byte_len(tensor);
            if len < EXTERNAL_THRESHOLD {
                return tensor.clone();
            }
            let offset = end.next_multiple_of(EXTERNAL_ALIGNMENT);
            end = offset + len as u64;
            placed.push((tensor, offset));
            let entry =
                |key: &str, value: String| StringStringEntryProto { key: key.into(), value };
            TensorProto {
                raw_data: Vec::new(),
                data_location: DataLocation::External as i32,
                external_data: vec![
                    entry("location", location.to_string()),
                    entry("offset", offset.to_string()),
                    entry("length", len.to_string()),
                ],
                ..tensor.clone_without_float_data()
            }
        })
        .collect();
    stub.graph = Some(GraphProto { initializer, ..graph.clone_without_initializers() });
    (stub, placed)
}

/// The external data files a model names, opened through [`open_input`] before anything
/// (gptc, tract, ONNX Runtime) reads them, and held to the model's [`DataRecord`] when it has
/// one. Every reader of a model file goes through here.
pub struct ExternalData {
    model: PathBuf,
    record: Option<DataRecord>,
    /// By location: the path beside the model, the open file, its size.
    files: Vec<(String, PathBuf, std::fs::File, u64)>,
}

impl ExternalData {
    /// Opens the data files of the model at `model_path` that `header` names. Refuses a
    /// location outside the model's folder, a file that is not a regular file, and, when the
    /// model records its data, a file of another size (the digest is [`ExternalData::verify`]'s).
    pub fn open(model_path: &Path, header: &StoredHeader) -> Result<ExternalData> {
        ExternalData::open_named(model_path, &header.data_files, header.data_record)
    }

    fn open_named(
        model_path: &Path,
        locations: &[String],
        record: Option<DataRecord>,
    ) -> Result<ExternalData> {
        let dir = model_path.parent().unwrap_or(Path::new(""));
        let mut data = ExternalData { model: model_path.to_path_buf(), record, files: Vec::new() };
        for location in locations {
            if data.files.iter().any(|(l, ..)| l == location) {
                continue;
            }
            // As tract demands too: a model may not reach elsewhere on the machine.
            let relative = Path::new(location);
            if location.is_empty()
                || relative.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(Error::NotOnnx {
                    path: model_path.to_path_buf(),
                    reason: format!("external data location `{location}` is not a file beside it"),
                });
            }
            let path = dir.join(relative);
            let (file, len) = open_input(&path)?;
            data.files.push((location.clone(), path, file, len));
        }
        let Some(record) = record else { return Ok(data) };
        match data.files.as_slice() {
            [] => {}
            [(_, path, _, len)] if *len != record.bytes => {
                return Err(data.not_its_data(
                    path,
                    &format!("{len} bytes, and the model records {} bytes", record.bytes),
                ));
            }
            [_] => {}
            more => {
                return Err(Error::NotOnnx {
                    path: model_path.to_path_buf(),
                    reason: format!("names {} external data files and records one", more.len()),
                })
            }
        }
        Ok(data)
    }

    fn not_its_data(&self, data: &Path, why: &str) -> Error {
        let model = self.model.file_name().unwrap_or_default().to_string_lossy();
        Error::Io {
            path: data.to_path_buf(),
            error: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("does not belong to {model} ({why}): export the two again together"),
            ),
        }
    }

    /// The bytes of all the data files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(.., len)| len).sum()
    }

    /// Reads a recorded data file through once, refusing it unless its digest is the one its
    /// model records (a file of the same size from another export has another).
    pub fn verify(&self) -> Result<()> {
        let Some(record) = self.record else { return Ok(()) };
        let Some((_, path, file, len)) = self.files.first() else { return Ok(()) };
        // Hashed through a map, a window at a time: at memory speed without a copy (3.35 GB of
        // gpt2-large's data in 0.34-0.54 s here, where reading them through a buffer took
        // 0.6-1.2 s), holding one window at once, and leaving the pages cached for the runtime
        // that loads them next.
        const WINDOW: u64 = 64 << 20;
        let mut hasher = Box::<xxhash_rust::xxh3::Xxh3>::default();
        let mut offset = 0;
        while offset < *len {
            let window = WINDOW.min(len - offset);
            // SAFETY: as in `map_file`: a read-only map of a file gptc never writes in place.
            let map = unsafe {
                memmap2::MmapOptions::new().offset(offset).len(window as usize).map(file)
            }
            .map_err(|error| Error::Io { path: path.clone(), error })?;
            hasher.update(&map);
            offset += window;
        }
        let digest = hasher.digest();
        if *len != record.bytes || digest != record.xxh3 {
            return Err(self.not_its_data(
                path,
                &format!(
                    "its XXH3 digest is {digest:016x}, the model records {:016x}",
                    record.xxh3
                ),
            ));
        }
        Ok(())
    }

    /// `length` bytes (to the end of the file when `None`) from `offset` of the data file at
    /// `location`, which must be in range.
    fn read_range(&mut self, location: &str, offset: u64, length: Option<u64>) -> Result<Vec<u8>> {
        use std::io::{Seek, SeekFrom};
        let Some((_, path, file, file_len)) = self.files.iter_mut().find(|(l, ..)| l == location)
        else {
            return Err(Error::NotOnnx {
                path: self.model.clone(),
                reason: format!("external data `{location}` was not opened"),
            });
        };
        let length = length.unwrap_or(file_len.saturating_sub(offset));
        if offset.checked_add(length).is_none_or(|end| end > *file_len) {
            return Err(Error::Io {
                path: path.clone(),
                error: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "external data {offset}..{} is past the end ({file_len} bytes)",
                        offset.saturating_add(length)
                    ),
                ),
            });
        }
        let io_err = |error| Error::Io { path: path.clone(), error };
        let mut bytes = vec![0u8; length as usize];
        file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        file.read_exact(&mut bytes).map_err(io_err)?;
        Ok(bytes)
    }
}

/// Reads the values of every external tensor into the model (as `raw_data`), from files beside
/// `model_path` opened and verified as [`ExternalData`] does.
pub fn load_external_data(model: &mut ModelProto, model_path: &Path) -> Result<()> {
    let record = DataRecord::of(&model.metadata_props).transpose()?;
    let Some(graph) = &mut model.graph else {
        return Ok(());
    };
    let external = |t: &TensorProto| t.data_location == DataLocation::External as i32;
    let mut locations = Vec::new();
    for tensor in graph.initializer.iter().filter(|t| external(t)) {
        let location = lookup(&tensor.external_data, "location").ok_or_else(|| Error::Weight {
            name: tensor.name.clone(),
            reason: "external data without a location".into(),
        })?;
        locations.push(location.to_string());
    }
    let mut data = ExternalData::open_named(model_path, &locations, record)?;
    data.verify()?;
    for tensor in graph.initializer.iter_mut().filter(|t| external(t)) {
        let bad = |reason: String| Error::Weight { name: tensor.name.clone(), reason };
        let number = |key: &str| -> Result<Option<u64>> {
            lookup(&tensor.external_data, key)
                .map(|v| v.parse::<u64>().map_err(|_| bad(format!("external data {key} `{v}`"))))
                .transpose()
        };
        let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
        let location = lookup(&tensor.external_data, "location").unwrap_or_default().to_string();
        tensor.raw_data = data.read_range(&location, offset, length)?;
        tensor.data_location = DataLocation::Default as i32;
        tensor.external_data.clear();
    }
    Ok(())
}

/// The model at `path` as stored: external tensors are references, without their values.
/// The file is mapped, and only its decoded copy allocated.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = map_input(path)?;
    decode_model(path, &bytes)
}

/// The model at `path` with the values of its external tensors read in.
pub fn read_model_with_data(path: &Path) -> Result<ModelProto> {
    let mut model = read_model(path)?;
    load_external_data(&mut model, path)?;
    Ok(model)
}

/// Decodes a model read from `path` (named in errors).
pub fn decode_model(path: &Path, bytes: &[u8]) -> Result<ModelProto> {
    let not_onnx = |reason: String| Error::NotOnnx { path: path.into(), reason };
    let model = ModelProto::decode(bytes).map_err(|e| not_onnx(e.to_string()))?;
    if model.graph.is_none() || model.opset_import.is_empty() {
        return Err(not_onnx("no graph or no opset".into()));
    }
    Ok(model)
}

pub fn metadata<'m>(model: &'m ModelProto, key: &str) -> Option<&'m str> {
    lookup(&model.metadata_props, key)
}

fn lookup<'m>(props: &'m [StringStringEntryProto], key: &str) -> Option<&'m str> {
    props.iter().find(|p| p.key == key).map(|p| p.value.as_str())
}

/// The GPT-2 config a gptc export recorded in its metadata, if this file is one (a file of
/// another family is an error here: see [`stored_model_config`]).
pub fn stored_config(model: &ModelProto) -> Option<Result<GptConfig>> {
    lookup(&model.metadata_props, meta::CONFIG).map(GptConfig::from_json)
}

/// The config, of any family, a gptc export recorded in its metadata, if this file is one.
pub fn stored_model_config(model: &ModelProto) -> Option<Result<ModelConfig>> {
    config_of(&model.metadata_props)
}

fn config_of(props: &[StringStringEntryProto]) -> Option<Result<ModelConfig>> {
    lookup(props, meta::CONFIG).map(ModelConfig::from_json)
}

/// The graph options a gptc export recorded in its metadata, if this file is one.
pub fn stored_options(model: &ModelProto) -> Option<Result<GraphOptions>> {
    options_of(&model.metadata_props)
}

fn options_of(props: &[StringStringEntryProto]) -> Option<Result<GraphOptions>> {
    lookup(props, meta::KV_CACHE)?;
    let bad = |key: &'static str, value: &str| {
        Error::Config(format!("metadata `{key}` is `{value}`, which gptc does not write"))
    };
    let flag = |key: &'static str| match lookup(props, key) {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        other => Err(bad(key, other.unwrap_or_default())),
    };
    let precision = match lookup(props, meta::DTYPE) {
        Some(name) if name == Precision::F32.data_type().onnx_name() => Ok(Precision::F32),
        Some(name) if name == Precision::F16.data_type().onnx_name() => Ok(Precision::F16),
        other => Err(bad(meta::DTYPE, other.unwrap_or_default())),
    };
    // Files from before quantization was recorded are float.
    let quantization = match lookup(props, meta::QUANTIZATION) {
        None | Some("none") => Ok(Quantization::None),
        Some("int4") => match lookup(props, meta::QUANTIZATION_ACCURACY_LEVEL).map(str::parse) {
            Some(Ok(accuracy_level)) => Ok(Quantization::Int4 { accuracy_level }),
            other => Err(bad(meta::QUANTIZATION_ACCURACY_LEVEL, &format!("{other:?}"))),
        },
        Some(other) => Err(bad(meta::QUANTIZATION, other)),
    };
    Some((|| {
        Ok(GraphOptions {
            kv_cache: flag(meta::KV_CACHE)?,
            last_token_logits: flag(meta::LAST_TOKEN_LOGITS)?,
            tie_weights: flag(meta::TIE_WEIGHTS)?,
            precision: precision?,
            quantization: quantization?,
        })
    })())
}

/// Every float initializer of the model (float32, or float16 widened), by name: the weights
/// an export holds. A 4-bit weight (`W_q4` and `W_scales`) comes back as `W`, dequantized to
/// what the stored blocks mean, in the layout of its float form.
pub fn float_initializers(model: &ModelProto) -> Result<TensorMap> {
    let mut map = TensorMap::default();
    let Some(graph) = &model.graph else {
        return Ok(map);
    };
    let mut int4 = Vec::new();
    for t in &graph.initializer {
        if let Some(base) = t.name.strip_suffix(names::INT4_BLOCKS_SUFFIX) {
            int4.push((base, t));
            continue;
        }
        if t.data_location == DataLocation::External as i32 {
            return Err(Error::Weight {
                name: t.name.clone(),
                reason: "external data not read in (use read_model_with_data)".into(),
            });
        }
        let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let Some(data) = float_values(t) else { continue };
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::Weight {
                name: t.name.clone(),
                reason: format!("{} values for shape {shape:?}", data.len()),
            });
        }
        map.0.insert(t.name.clone(), NamedTensor { shape, data });
    }
    for (base, blocks) in int4 {
        let scales_name = format!("{base}{}", names::INT4_SCALES_SUFFIX);
        let scales = graph.initializer.iter().find(|t| t.name == scales_name);
        let scales = scales.ok_or_else(|| Error::Weight {
            name: blocks.name.clone(),
            reason: format!("no `{scales_name}`"),
        })?;
        let q = int4_matrix(blocks, scales)?;
        map.0.remove(&scales_name);
        let (n, k) = (q.n, q.k);
        // The output head is `[vocab, emb]` like the token embedding (4-bit when the head is
        // tied to it); projections are `[in, out]`.
        let tables = [names::GPT2_MODULES, names::LLAMA_MODULES].map(|m| m.token_embedding);
        let rows_are_outputs = base == names::OUTPUT_HEAD || tables.contains(&base);
        let shape = if rows_are_outputs { vec![n, k] } else { vec![k, n] };
        map.0.insert(base.to_string(), NamedTensor { shape, data: q.dequantize(rows_are_outputs) });
    }
    Ok(map)
}

/// A float initializer's values (float32, or float16 widened); `None` for other types.
fn float_values(t: &TensorProto) -> Option<Vec<f32>> {
    match DataType::try_from(t.data_type) {
        Ok(DataType::Float) if t.raw_data.is_empty() => Some(t.float_data.clone()),
        Ok(DataType::Float) => Some(
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Ok(DataType::Float16) => Some(
            t.raw_data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// The 4-bit matrix a `MatMulNBits` weight (`W_q4`, `[n, k / 32, 16]` bytes) and its scales
/// (`[n * k / 32]` floats) hold, checked to agree.
pub fn int4_matrix(blocks: &TensorProto, scales: &TensorProto) -> Result<crate::quant::Int4Matrix> {
    let bad = |reason: String| Error::Weight { name: blocks.name.clone(), reason };
    let values = float_values(scales)
        .ok_or_else(|| bad(format!("scales `{}` are not floats", scales.name)))?;
    let count = values.len();
    let dims: Vec<usize> = blocks.dims.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
    crate::quant::Int4Matrix::from_stored(&dims, blocks.raw_data.clone(), values)
        .ok_or_else(|| bad(format!("4-bit blocks of dims {:?} and {count} scales", blocks.dims)))
}

/// The parts of a model file that say what it is, decoded without copying its weights:
/// prost skips the fields not declared here (the tensors' values among them).
#[derive(Clone, PartialEq, prost::Message)]
struct ModelHeader {
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<crate::onnx::OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<crate::onnx::StringStringEntryProto>,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphHeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GraphHeader {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorLocation>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorLocation {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    // The value fields as their encoded bytes: packed numbers and raw data are all
    // length-delimited, and decoded from `Bytes` they are slices of the file, not copies.
    #[prost(bytes = "bytes", tag = "4")]
    float_data: prost::bytes::Bytes,
    #[prost(bytes = "bytes", tag = "5")]
    int32_data: prost::bytes::Bytes,
    #[prost(bytes = "bytes", tag = "7")]
    int64_data: prost::bytes::Bytes,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "bytes", tag = "9")]
    raw_data: prost::bytes::Bytes,
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<StringStringEntryProto>,
    #[prost(enumeration = "DataLocation", tag = "14")]
    data_location: i32,
}

impl TensorLocation {
    /// Checks that the tensor holds as many values as its dims say (runtimes index by the dims;
    /// a short tensor made tract fail with "out of bounds indexing", naming nothing).
    fn check_size(&self) -> Result<()> {
        if self.data_location == DataLocation::External as i32 {
            return Ok(());
        }
        let bad = |reason: String| Error::Weight { name: self.name.clone(), reason };
        if self.dims.iter().any(|&d| d < 0) {
            return Err(bad(format!("negative dims {:?}", self.dims)));
        }
        let wanted = self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let varints = |b: &[u8]| b.iter().filter(|&&byte| byte < 0x80).count() as u64;
        let element_bytes = match DataType::try_from(self.data_type) {
            Ok(DataType::Float | DataType::Int32) => 4,
            Ok(DataType::Float16) => 2,
            Ok(DataType::Int64) => 8,
            Ok(DataType::Bool | DataType::Uint8 | DataType::Int8) => 1,
            _ => return Ok(()),
        };
        let whole = |bytes: usize, size: u64| {
            let bytes = bytes as u64;
            bytes.is_multiple_of(size).then_some(bytes / size)
        };
        let held = if !self.raw_data.is_empty() {
            whole(self.raw_data.len(), element_bytes)
        } else if !self.float_data.is_empty() {
            whole(self.float_data.len(), 4)
        } else if !self.int64_data.is_empty() {
            Some(varints(&self.int64_data))
        } else {
            Some(varints(&self.int32_data))
        };
        match (wanted, held) {
            (Some(wanted), Some(held)) if wanted == held => Ok(()),
            (_, Some(held)) => Err(bad(format!("holds {held} values for dims {:?}", self.dims))),
            _ => Err(bad(format!("its data is not whole values for dims {:?}", self.dims))),
        }
    }
}

/// What a model file says of itself, read without decoding its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredHeader {
    /// The config gptc recorded in the metadata; `None` for a file gptc did not write.
    pub config: Option<ModelConfig>,
    /// Whether some tensor's values are in external data (so runtimes must load the file by
    /// path, to find them beside it).
    pub external_data: bool,
    /// The files that external data lives in, as the model names them (beside it).
    pub data_files: Vec<String>,
    /// What the model records of its data file (gptc's exports), to refuse another's.
    pub data_record: Option<DataRecord>,
    /// The dims of the tables whose sizes the config sets: the embeddings and the causal table.
    pub tables: Vec<(String, Vec<i64>)>,
}

impl StoredHeader {
    /// Checks that the model's tables are as large as `config` says, so that no position or
    /// token the config allows indexes past them at run time.
    pub fn check_tables(&self, config: impl Into<ModelConfig>) -> Result<()> {
        let arch = config.into().architecture();
        let (vocab, ctx, emb) =
            (arch.vocab_size as i64, arch.context_length as i64, arch.emb_dim as i64);
        // A table another family names (GPT-2's `wte` in a Llama file) is no table of this
        // one: the check of inputs, outputs and weights refuses such a file.
        let mut expected = vec![(arch.names.token_embedding, vec![vocab, emb])];
        if let Some(positions) = arch.names.position_embedding {
            expected.push((positions, vec![ctx, emb]));
            expected.push((names::CAUSAL_MASK, vec![1, 1, ctx, ctx]));
        }
        for (name, dims) in &self.tables {
            let Some((_, wanted)) = expected.iter().find(|(n, _)| n == name) else { continue };
            if dims != wanted {
                return Err(Error::Config(format!(
                    "the model's `{name}` is {dims:?}, but its config (context {ctx}, vocabulary {vocab}, emb {emb}) needs {wanted:?}"
                )));
            }
        }
        Ok(())
    }
}

pub fn stored_header_of_bytes(path: &Path, bytes: &[u8]) -> Result<StoredHeader> {
    stored_header(path, prost::bytes::Bytes::copy_from_slice(bytes))
}

/// As [`stored_header_of_bytes`], reading the file's bytes in place (no tensor is copied), and
/// checking that every tensor stored in the file holds as many values as its dims say.
pub fn stored_header(path: &Path, bytes: prost::bytes::Bytes) -> Result<StoredHeader> {
    let not_onnx = |reason: String| Error::NotOnnx { path: path.into(), reason };
    let header = ModelHeader::decode(bytes).map_err(|e| not_onnx(e.to_string()))?;
    for tensor in header.graph.iter().flat_map(|g| &g.initializer) {
        tensor.check_size()?;
    }
    if header.opset_import.is_empty() {
        return Err(not_onnx("no opset".into()));
    }
    let config = config_of(&header.metadata_props).transpose()?;
    let external_data = header
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .any(|t| t.data_location == DataLocation::External as i32);
    let sized = [
        names::TOKEN_EMBEDDING,
        names::POSITION_EMBEDDING,
        names::CAUSAL_MASK,
        names::LLAMA_MODULES.token_embedding,
    ];
    let tables = header
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .filter(|t| sized.contains(&t.name.as_str()))
        .map(|t| (t.name.clone(), t.dims.clone()))
        .collect();
    let mut data_files: Vec<String> = header
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .filter_map(|t| lookup(&t.external_data, "location").map(String::from))
        .collect();
    data_files.sort();
    data_files.dedup();
    let data_record = DataRecord::of(&header.metadata_props).transpose()?;
    Ok(StoredHeader { config, external_data, data_files, data_record, tables })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_model, GptConfig, GraphOptions, RandomInit};

    #[test]
    fn streamed_encoding_decodes_to_the_same_model() {
        let model = small_model(GraphOptions { kv_cache: true, ..Default::default() });
        let mut streamed = Vec::new();
        encode_to(&model, &mut streamed).unwrap();
        assert_eq!(streamed.len(), model.encoded_len());
        assert_eq!(ModelProto::decode(streamed.as_slice()).unwrap(), model);
    }

    fn small_model(options: GraphOptions) -> ModelProto {
        let config = GptConfig {
            vocab_size: 50,
            context_length: 8,
            emb_dim: 8,
            n_heads: 2,
            n_layers: 1,
            drop_rate: 0.0,
            qkv_bias: true,
        };
        build_model(&config, options, &mut RandomInit { seed: 3 }, Some(3)).unwrap()
    }

    #[test]
    fn external_data_reads_back_to_the_same_weights() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let model = small_model(GraphOptions { kv_cache: true, ..Default::default() });
        let data = write_model(&path, &model, WeightLayout::External).unwrap().unwrap();
        assert_eq!(data, dir.path().join("m.onnx.data"));

        let stub = read_model(&path).unwrap();
        let external: Vec<&TensorProto> = stub
            .graph
            .iter()
            .flat_map(|g| &g.initializer)
            .filter(|t| t.data_location == DataLocation::External as i32)
            .collect();
        // wte [50, 8] is 1600 bytes: out; the biases [8] are 32 bytes: in.
        assert!(external.iter().any(|t| t.name == names::TOKEN_EMBEDDING));
        assert!(!external.iter().any(|t| t.name.ends_with(".bias")));
        for t in &external {
            assert!(t.float_data.is_empty() && t.raw_data.is_empty());
            let offset = t.external_data.iter().find(|e| e.key == "offset").unwrap();
            assert_eq!(offset.value.parse::<u64>().unwrap() % EXTERNAL_ALIGNMENT, 0);
        }
        assert!(
            float_initializers(&stub).is_err(),
            "values of external tensors are not in the stub"
        );

        let header_of = |p: &Path| stored_header_of_bytes(p, &std::fs::read(p).unwrap()).unwrap();
        assert!(header_of(&path).external_data);
        let inline = dir.path().join("inline.onnx");
        write_model(&inline, &model, WeightLayout::Auto).unwrap();
        assert!(!header_of(&inline).external_data);
        assert_eq!(header_of(&inline).config, header_of(&path).config);
        let options = GraphOptions { kv_cache: true, ..Default::default() };
        assert_eq!(stored_options(&stub).unwrap().unwrap(), options);

        let loaded = read_model_with_data(&path).unwrap();
        assert_eq!(float_initializers(&loaded).unwrap(), float_initializers(&model).unwrap());
    }

    /// The model at `path` rewritten without its record of its data, as other tools write it.
    fn forget_record(path: &Path) {
        let mut stub = read_model(path).unwrap();
        stub.metadata_props.retain(|p| !p.key.starts_with("gptc.external_data"));
        std::fs::write(path, encode(&stub)).unwrap();
    }

    #[test]
    fn damaged_external_data_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let model = small_model(GraphOptions::default());
        let data = write_model(&path, &model, WeightLayout::External).unwrap().unwrap();
        let bytes = std::fs::read(&data).unwrap();
        std::fs::write(&data, &bytes[..bytes.len() - 4]).unwrap();
        let err = read_model_with_data(&path).unwrap_err().to_string();
        let recorded = format!("{} bytes, and the model records {}", bytes.len() - 4, bytes.len());
        assert!(err.contains("m.onnx.data: does not belong to m.onnx") && err.contains(&recorded));
        // Without a record, the tensor's range is what is checked.
        forget_record(&path);
        let err = read_model_with_data(&path).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{err}");
        std::fs::remove_file(&data).unwrap();
        let err = read_model_with_data(&path).unwrap_err().to_string();
        assert!(err.contains("m.onnx.data"), "{err}");
    }

    #[test]
    fn a_model_records_its_data_file_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one.onnx"), dir.path().join("two.onnx"));
        let options = GraphOptions::default();
        let data_one = write_model(&one, &small_model(options), WeightLayout::External).unwrap();
        let config = stored_config(&small_model(options)).unwrap().unwrap();
        let other = build_model(&config, options, &mut RandomInit { seed: 4 }, Some(4)).unwrap();
        let data_two = write_model(&two, &other, WeightLayout::External).unwrap();
        let (data_one, data_two) = (data_one.unwrap(), data_two.unwrap());

        let bytes = std::fs::read(&data_one).unwrap();
        let header = stored_header(&one, map_input(&one).unwrap()).unwrap();
        let record = header.data_record.unwrap();
        assert_eq!(record.bytes, bytes.len() as u64);
        assert_eq!(record.xxh3, xxhash_rust::xxh3::xxh3_64(&bytes), "digested as written");
        let data = ExternalData::open(&one, &header).unwrap();
        assert_eq!(data.bytes(), bytes.len() as u64);
        data.verify().unwrap();

        // Same config, same size, other values: only the digest tells them apart.
        std::fs::copy(&data_two, &data_one).unwrap();
        let data = ExternalData::open(&one, &header).unwrap();
        let err = data.verify().unwrap_err().to_string();
        assert!(err.contains("does not belong to one.onnx (its XXH3 digest is"), "{err}");
        let err = read_model_with_data(&one).unwrap_err().to_string();
        assert!(err.contains("does not belong to one.onnx"), "{err}");

        // Writing a model read from another pair records its own data, not the old record.
        let two_read = read_model_with_data(&two).unwrap();
        write_model(&one, &two_read, WeightLayout::External).unwrap();
        let reread = read_model(&one).unwrap();
        let records = reread.metadata_props.iter().filter(|p| p.key.starts_with("gptc.external"));
        assert_eq!(records.count(), 2);
        read_model_with_data(&one).unwrap();
    }

    #[test]
    fn external_data_must_be_a_regular_file_beside_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let data =
            write_model(&path, &small_model(GraphOptions::default()), WeightLayout::External)
                .unwrap()
                .unwrap();
        std::fs::remove_file(&data).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&data).status().unwrap();
        assert!(made.success());
        let header = stored_header(&path, map_input(&path).unwrap()).unwrap();
        let err = ExternalData::open(&path, &header).err().unwrap().to_string();
        assert!(err.contains("m.onnx.data: not a regular file"), "{err}");
        let err = read_model_with_data(&path).unwrap_err().to_string();
        assert!(err.contains("m.onnx.data: not a regular file"), "{err}");

        let outside = StoredHeader { data_files: vec!["../m.onnx.data".into()], ..header };
        let err = ExternalData::open(&path, &outside).err().unwrap().to_string();
        assert!(err.contains("is not a file beside it"), "{err}");
    }

    #[test]
    fn a_mapped_input_is_the_file_and_passes_the_same_guard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, b"0123").unwrap();
        assert_eq!(&map_input(&path).unwrap()[..], b"0123");
        std::fs::write(&path, b"").unwrap();
        assert!(map_input(&path).unwrap().is_empty());
        let err = map_input(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn inputs_are_read_whole_within_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(read_input(&path, u64::MAX).unwrap(), b"0123456789");
        assert_eq!(read_input(&path, 10).unwrap().len(), 10);
        let err = read_input(&path, 9).unwrap_err().to_string();
        assert!(err.contains("more than the 9"), "{err}");
        let err = read_input(dir.path(), 100).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_failed_write_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("gptc-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("m.onnx");
        let err = write_atomically(&target, |out| {
            out.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
