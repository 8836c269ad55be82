//! The one guard every file gptc reads passes: regular files only, sizes checked before a body
//! is read, large files mapped rather than copied.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
