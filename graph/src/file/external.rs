//! ONNX external data: writing a model's weights beside it, and opening and verifying them
//! against the size and digest the model records.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use super::atomic::{commit_lock, output_target, write_atomically, Staged};
use super::encode::{
    encode_to, shallow_model, tensor_byte_len, write_tensor_bytes, PROTOBUF_LIMIT,
};
use super::header::StoredHeader;
use super::input::open_input;
use super::metadata::lookup;
use crate::names::meta;
use crate::onnx::{DataLocation, GraphProto, ModelProto, StringStringEntryProto, TensorProto};
use crate::{Error, Result};

/// Whether `model` is too large for one `.onnx` file.
pub fn needs_external_data(model: &ModelProto) -> bool {
    model.encoded_len() > PROTOBUF_LIMIT
}

/// Tensors smaller than this stay in the `.onnx` file (onnx's own default threshold).
const EXTERNAL_THRESHOLD: usize = 1024;

/// Offsets in the data file are multiples of the page size, so runtimes can map tensors.
pub(super) const EXTERNAL_ALIGNMENT: u64 = 4096;

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
    pub(super) fn of(props: &[StringStringEntryProto]) -> Option<Result<DataRecord>> {
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
