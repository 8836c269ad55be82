//! What this machine's memory allows, read from Linux's `/proc`.

use crate::{Error, Result};

/// Bytes this machine can still give (Linux `MemAvailable`).
pub fn available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Peak resident memory of this process so far, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses, before allocating, a model whose weights cannot fit: loading holds the weights about
/// 2.5 times over at its peak (1.56 GB measured for gpt2-small's 0.65 GB).
pub fn check_weights_fit(weight_bytes: u64) -> Result<()> {
    let needed = weight_bytes * 5 / 2;
    match available_bytes() {
        Some(available) if needed > available => Err(Error::OutOfMemory { needed, available }),
        _ => Ok(()),
    }
}
