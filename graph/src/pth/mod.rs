//! PyTorch checkpoints (`torch.save`, PyTorch >= 1.6) read without Python and without running
//! any of the pickle's code: the zip archive ([`archive`]), a pickle reader that knows only what
//! `torch.save` writes for tensors and dicts ([`pickle`]), and strided views of the storages
//! ([`tensor`]).
//!
//! Two save forms are understood, the book's (chapter 5): a state dict
//! (`torch.save(model.state_dict(), path)`) and a dict holding one under `model_state_dict`
//! (`torch.save({"model_state_dict": ..., "optimizer_state_dict": ...}, path)`; the optimizer's
//! state is parsed as plain data and left alone).

mod archive;
pub mod pickle;
pub mod tensor;

use std::collections::BTreeSet;
use std::path::Path;

use archive::Archive;
use pickle::{Object, Pickle, Value};
pub use tensor::{Dtype, TensorView};

use crate::{Error, Result};

/// Where the state dict sits in the book's second save form.
pub const MODEL_STATE_DICT: &str = "model_state_dict";

/// How a `.pth` file starts, by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The zip archive of PyTorch >= 1.6.
    Zip,
    /// The pickle stream of PyTorch < 1.6 (or `_use_new_zipfile_serialization=False`).
    Legacy,
    /// Some other pickle (`pickle.dump`): no tensors torch.save would have written.
    Pickle,
}

impl Format {
    /// Reads the first 8 bytes (at most).
    pub fn sniff(head: &[u8]) -> Option<Format> {
        match head {
            [b'P', b'K', ..] => Some(Format::Zip),
            // PROTO, then LONG1 of 10 bytes: the legacy format's magic number 0x1950a86a20f9469cfc6c
            // (its first 4 bytes fit in 8).
            [0x80, _, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, ..] => Some(Format::Legacy),
            [0x80, ..] => Some(Format::Pickle),
            _ => None,
        }
    }
}

/// The tensors of the state dict in `bytes` (a `torch.save` file), in the file's order.
/// Every view is checked against its storage; no value is read yet.
pub fn state_dict<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<TensorView<'a>>> {
    let refuse = |reason: String| Error::Checkpoint { path: path.into(), reason };
    match Format::sniff(bytes) {
        Some(Format::Zip) => {}
        Some(Format::Legacy) => {
            return Err(refuse(
                "a torch.save file in the legacy format (PyTorch < 1.6, or _use_new_zipfile_serialization=False), which gptc does not read: re-save it with PyTorch >= 1.6, `torch.save(model.state_dict(), path)`, which writes the zip format".into(),
            ))
        }
        Some(Format::Pickle) => {
            return Err(refuse(
                "a bare pickle, not a torch.save archive: save the model with `torch.save(model.state_dict(), path)`".into(),
            ))
        }
        None => return Err(refuse("not a PyTorch checkpoint (no zip archive)".into())),
    }
    let archive = Archive::open(path, bytes)?;
    if let Some(order) = archive.record("byteorder") {
        if order != b"little" {
            return Err(refuse(format!(
                "its storages are `{}`-endian; gptc reads little-endian ones",
                String::from_utf8_lossy(order)
            )));
        }
    }
    let pickle_bytes = archive
        .record("data.pkl")
        .ok_or_else(|| refuse("no data.pkl in the archive: not a file torch.save wrote".into()))?;
    let pickle = pickle::load(path, pickle_bytes)?;
    let entries = state_dict_entries(path, &pickle)?;

    let mut names = BTreeSet::new();
    let mut views = Vec::with_capacity(entries.len());
    for &(key, value) in entries {
        let name = pickle.str(key).ok_or_else(|| {
            refuse(format!("its state dict has {} as a key", pickle.describe(key)))
        })?;
        if name.chars().any(char::is_control) {
            return Err(refuse(format!(
                "its state dict has the key {:?}, with control characters",
                name
            )));
        }
        if !names.insert(name) {
            return Err(refuse(format!("its state dict has `{name}` twice")));
        }
        let Some(Object::Tensor(record)) = pickle.object(value) else {
            return Err(refuse(format!(
                "`{name}` is {}, not a tensor: gptc reads a state dict (`torch.save(model.state_dict(), path)`) or a dict holding one under `{MODEL_STATE_DICT}`",
                pickle.describe(value)
            )));
        };
        let weight = |reason: String| Error::Weight { name: name.into(), reason };
        if let Some(what) = &record.unsupported {
            return Err(weight(format!("has {what}, which gptc does not apply")));
        }
        let Some(Object::Storage { key, dtype, numel }) = pickle.objects.get(record.storage) else {
            return Err(weight("has no storage".into()));
        };
        let data = archive
            .record(&format!("data/{key}"))
            .ok_or_else(|| weight(format!("its storage `data/{key}` is not in the archive")))?;
        let declared = numel.checked_mul(dtype.size()).filter(|&n| n <= data.len());
        let declared = declared.ok_or_else(|| {
            weight(format!(
                "its storage `data/{key}` holds {} bytes, less than the {numel} {} elements the pickle declares: the storage is shorter than its tensor",
                data.len(),
                dtype.name()
            ))
        })?;
        let mut view = TensorView::new(
            name.to_string(),
            *dtype,
            record.shape.clone(),
            record.strides.clone(),
            record.offset,
            &data[..declared],
        )?;
        view.negated = record.negated;
        views.push(view);
    }
    Ok(views)
}

/// The (name, tensor) pairs of either save form.
fn state_dict_entries<'p>(path: &Path, pickle: &'p Pickle) -> Result<&'p [(Value, Value)]> {
    let refuse = |reason: String| Error::Checkpoint { path: path.into(), reason };
    let Some(Object::Dict(top)) = pickle.object(pickle.root) else {
        return Err(refuse(format!(
            "holds {}, not a state dict: save `model.state_dict()`",
            pickle.describe(pickle.root)
        )));
    };
    let nested = top.iter().find(|(k, _)| pickle.str(*k) == Some(MODEL_STATE_DICT));
    match nested {
        None => Ok(top),
        Some(&(_, value)) => match pickle.object(value) {
            Some(Object::Dict(entries)) => Ok(entries),
            _ => Err(refuse(format!(
                "its `{MODEL_STATE_DICT}` is {}, not a state dict",
                pickle.describe(value)
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_say_which_format() {
        // torch.save(..., _use_new_zipfile_serialization=False), then pickle.dump of a dict.
        let legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        assert_eq!(Format::sniff(legacy), Some(Format::Legacy));
        assert_eq!(Format::sniff(b"\x80\x04\x95\x05\x00\x00\x00\x00}."), Some(Format::Pickle));
        assert_eq!(Format::sniff(b"PK\x03\x04"), Some(Format::Zip));
        assert_eq!(Format::sniff(b"\x08\x00\x00\x00\x00\x00\x00\x00{}"), None);
        let path = Path::new("m.pth");
        let err = |bytes: &[u8]| state_dict(path, bytes).unwrap_err().to_string();
        assert!(err(legacy).contains("legacy format"));
        assert!(err(b"\x80\x04}.").contains("a bare pickle"));
    }
}
