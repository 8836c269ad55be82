//! What this machine's memory allows, read from Linux's `/proc`, and what a command will need,
//! estimated from the config before anything is allocated.

use gptc_graph::{GptConfig, ParameterCount, Precision};

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

/// Loading holds a model about 2.5 times over at its peak (1.56 GB measured for gpt2-small's
/// 0.65 GB); counted in halves.
pub const LOAD_FACTOR: u64 = 3;

/// What building and loading a model of `config` takes: every weight (float32 while built),
/// and the `[context, context]` causal table, held by the file and by the runtime, times the
/// load factor.
pub fn model_bytes(config: &GptConfig, precision: Precision) -> u64 {
    let weights = ParameterCount::of(config).total() as u64 * 4.max(precision.bytes() as u64);
    let context = config.context_length as u64;
    let mask_table = context.saturating_mul(context);
    weights.saturating_add(mask_table).saturating_mul(LOAD_FACTOR)
}

/// What running `batch` rows of up to `positions` each takes beyond the weights: the KV cache,
/// one layer's attention scores (float32, and the additive mask beside them), the activations
/// of the widest layer, and the last position's logits.
pub fn run_bytes(config: &GptConfig, precision: Precision, batch: usize, positions: usize) -> u64 {
    let (b, t) = (batch as u64, positions.min(config.context_length) as u64);
    let (e, layers, heads) = (config.emb_dim as u64, config.n_layers as u64, config.n_heads as u64);
    let cache = 2 * layers * b * t * e * precision.bytes() as u64 * 2;
    let scores = b * heads * t * t * 4 * 2 + b * t * t * 4;
    let activations = b * t * 4 * e * 4 * 3;
    let logits = b * config.vocab_size as u64 * 4;
    cache.saturating_add(scores).saturating_add(activations).saturating_add(logits)
}

/// Refuses, before allocating, a need this machine cannot meet.
pub fn check_fits(needed: u64) -> Result<()> {
    match available_bytes() {
        Some(available) if needed > available => Err(Error::OutOfMemory { needed, available }),
        _ => Ok(()),
    }
}
