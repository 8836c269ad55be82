//! The zip container `torch.save` writes (PyTorch >= 1.6): one top folder holding `data.pkl`,
//! one `data/KEY` record per storage, and small records (`byteorder`, `version`, ...).
//!
//! PyTorch stores every record uncompressed, so each record is a range of the file's bytes:
//! nothing is inflated or copied, a record can be no larger than the file, and a compressed
//! record (the stuff of zip bombs) is refused by name before anything is allocated for it.
//! The `zip` crate reads the directory (its allocations are bounded by the directory's size);
//! records are looked up by name in it, never opened as paths.

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use crate::{Error, Result};

pub struct Archive<'a> {
    bytes: &'a [u8],
    /// Each record's bytes in the file, by its name inside the top folder (`data/0`).
    records: HashMap<String, Range<usize>>,
}

impl<'a> Archive<'a> {
    /// Reads the directory and checks every record: stored, inside the file, not overlapping
    /// another, under one top folder, its CRC-32 right.
    pub fn open(path: &Path, bytes: &'a [u8]) -> Result<Archive<'a>> {
        let refuse = |reason: String| Error::Checkpoint { path: path.into(), reason };
        let damaged = |e: zip::result::ZipError| {
            refuse(format!("not a readable PyTorch archive: the zip is truncated or damaged ({e})"))
        };
        let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(damaged)?;
        if zip.has_overlapping_entries().map_err(damaged)? {
            return Err(refuse(
                "zip records overlap, which torch.save never writes (refusing a possible zip bomb)"
                    .into(),
            ));
        }
        let mut records = HashMap::new();
        let mut top_folder: Option<String> = None;
        for index in 0..zip.len() {
            let record = zip.by_index_raw(index).map_err(damaged)?;
            // Shown escaped: a name is the file's to choose, an error stays one line.
            let name = record.name().map_err(damaged)?.escape_debug().to_string();
            let size = record.size();
            if record.compression() != CompressionMethod::Stored {
                return Err(refuse(format!(
                    "record `{name}` is compressed ({}, {size} bytes unpacked): torch.save stores records uncompressed and gptc inflates nothing (a zip bomb is refused the same way)",
                    record.compression()
                )));
            }
            if record.encrypted() {
                return Err(refuse(format!("record `{name}` is encrypted")));
            }
            let start = record
                .data_start()
                .ok_or_else(|| refuse(format!("record `{name}`: its data could not be located")))?;
            let range = usize::try_from(start)
                .ok()
                .zip(usize::try_from(size).ok())
                .and_then(|(start, size)| Some(start..start.checked_add(size)?))
                .filter(|r| r.end <= bytes.len() && size == record.compressed_size());
            let range = range.ok_or_else(|| {
                refuse(format!(
                    "record `{name}` claims {size} bytes past the end of the file (truncated or forged)"
                ))
            })?;
            let Some((folder, inner)) = name.split_once('/') else {
                return Err(refuse(format!("record `{name}` is outside the archive's folder")));
            };
            match &top_folder {
                Some(top) if top != folder => {
                    return Err(refuse(format!(
                    "records in two top folders (`{top}`, `{folder}`): not one torch.save archive"
                )))
                }
                Some(_) => {}
                None => top_folder = Some(folder.to_string()),
            }
            if crc32fast::hash(&bytes[range.clone()]) != record.crc32() {
                return Err(refuse(format!(
                    "record `{name}` fails its CRC-32 check: the file is damaged"
                )));
            }
            if records.insert(inner.to_string(), range).is_some() {
                return Err(refuse(format!("record `{name}` appears twice")));
            }
        }
        Ok(Archive { bytes, records })
    }

    /// The bytes of a record, by its name inside the top folder.
    pub fn record(&self, name: &str) -> Option<&'a [u8]> {
        self.records.get(name).map(|range| &self.bytes[range.clone()])
    }
}
