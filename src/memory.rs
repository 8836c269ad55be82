//! What this machine's memory allows, read from Linux's `/proc`, and what a command will need,
//! estimated from the config before anything is allocated.

use std::ops::Range;

use gptc_graph::architecture::FeedForward;
use gptc_graph::{Family, ModelConfig, Precision};

use crate::{Error, Result};

/// Bytes this machine can still give (Linux `MemAvailable`).
pub fn available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok()?.checked_mul(1024)
}

/// Peak resident memory of this process so far, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Loading holds a model about 2.5 times over at its peak (the file's bytes, tract's typed
/// copy, and its packed weights while the typed ones are still alive; BENCHMARKS.md, "Real
/// weights", has it measured); counted in halves.
pub const LOAD_FACTOR: u64 = 3;

/// Copies of one run's logits alive at once: the runtime's output tensor and the array the
/// driver reads it from.
const LOGITS_COPIES: u64 = 2;

/// The product of sizes that come from configs and files: past `u64::MAX` it stays there, so a
/// need too large to count is refused rather than wrapped to a small one.
fn product(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |total, &factor| total.saturating_mul(factor))
}

fn sum(terms: &[u64]) -> u64 {
    terms.iter().fold(0u64, |total, &term| total.saturating_add(term))
}

/// What building and loading a model of `config` takes: every weight (float32 while built),
/// times the load factor; for GPT-2, also the `[context, context]` causal table that its files
/// of earlier gptc versions hold (the RoPE families never stored one).
pub fn model_bytes(config: &ModelConfig, precision: Precision) -> u64 {
    let weights = product(&[parameters(config), 4.max(precision.bytes() as u64)]);
    let context = config.context_length() as u64;
    let mask_table = match config.family() {
        Family::Gpt2 => product(&[context, context]),
        Family::Llama | Family::Qwen3 => 0,
    };
    product(&[sum(&[weights, mask_table]), LOAD_FACTOR])
}

/// The parameter total (a head its config ties counted once), saturating: a config whose
/// count overflows needs more memory than any machine has.
fn parameters(config: &ModelConfig) -> u64 {
    let mut c = config.parameter_count();
    if config.head_tied() {
        c.output_head = 0;
    }
    let per_block = sum(&[
        c.per_block_attention as u64,
        c.per_block_feed_forward as u64,
        c.per_block_norms as u64,
    ]);
    sum(&[
        c.token_embedding as u64,
        c.position_embedding as u64,
        product(&[c.n_blocks as u64, per_block]),
        c.final_norm as u64,
        c.output_head as u64,
    ])
}

/// Which positions a model's logits cover in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitPositions {
    /// `[batch, 1, vocab]`: a `--last-token-logits` export.
    Last,
    /// `[batch, sequence, vocab]`: the default export, and the safe guess for a model that
    /// does not say.
    Every,
}

/// What running `batch` rows padded to `positions` each takes beyond the weights: the KV cache,
/// one layer's attention scores (float32, and the additive mask beside them), the activations
/// of the widest layer, and the logits of the `returned` positions a run gives back per row.
pub fn run_bytes(
    config: &ModelConfig,
    precision: Precision,
    batch: usize,
    positions: usize,
    returned: usize,
) -> u64 {
    let arch = config.architecture();
    let context = arch.context_length;
    let (b, t) = (batch as u64, positions.min(context) as u64);
    let (layers, heads) = (arch.n_layers as u64, arch.n_heads as u64);
    // The cache holds the key/value heads only (GPT-2: all heads, emb_dim wide).
    let kv_width = product(&[arch.n_kv_heads as u64, arch.head_dim as u64]);
    let cache = product(&[2, layers, b, t, kv_width, precision.bytes() as u64, 2]);
    let scores = sum(&[product(&[b, heads, t, t, 4, 2]), product(&[b, t, t, 4])]);
    // The widest activation: the feed-forward's inner width (GPT-2: 4 emb_dim), or the
    // queries of all heads where they are wider.
    let inner = match arch.feed_forward {
        FeedForward::GeluTanh { hidden } | FeedForward::SwiGlu { hidden } => hidden as u64,
    };
    let widest = inner.max(product(&[heads, arch.head_dim as u64]));
    let activations = product(&[b, t, widest, 4, 3]);
    let returned = returned.min(context) as u64;
    let logits = product(&[b, returned, arch.vocab_size as u64, 4, LOGITS_COPIES]);
    sum(&[cache, scores, activations, logits])
}

/// How a generation runs, as far as its memory goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationShape {
    /// With a KV cache the rows run as one padded batch; without, one row at a time.
    pub kv_cache: bool,
    pub logits: LogitPositions,
    pub max_new_tokens: usize,
    /// Every step's last-position logits are kept for every row until the end.
    pub keep_logits: bool,
}

impl GenerationShape {
    /// What running the rows of one chunk takes: `rows` prompts, padded to `longest` tokens,
    /// each growing by the new tokens (within the context).
    pub fn chunk_bytes(&self, config: &ModelConfig, rows: usize, longest: usize) -> u64 {
        let context = config.context_length();
        let last_window = longest.saturating_add(self.max_new_tokens - self.max_new_tokens.min(1));
        let positions = longest.saturating_add(self.max_new_tokens);
        // The widest run: with a cache, the prefill of the prompts, or of whole context
        // windows once the cache would outgrow the context; without, the last window.
        let widest = match (self.kv_cache, last_window > context) {
            (true, false) => longest,
            _ => last_window.min(context),
        };
        let returned = match self.logits {
            LogitPositions::Last => 1,
            LogitPositions::Every => widest,
        };
        let batch = if self.kv_cache { rows } else { rows.min(1) };
        // Float32 activations and cache: the most any of gptc's models needs.
        run_bytes(config, Precision::F32, batch, positions, returned)
    }

    /// What the whole generation keeps beside its runs: each row's kept logits.
    pub fn kept_bytes(&self, config: &ModelConfig, rows: usize) -> u64 {
        match self.keep_logits {
            true => {
                product(&[rows as u64, self.max_new_tokens as u64, config.vocab_size() as u64, 4])
            }
            false => 0,
        }
    }

    /// Splits the prompts (by their lengths, in order) into consecutive chunks that each fit
    /// `available` bytes, the largest that do; refuses, before anything runs, prompts whose
    /// rows cannot fit even one at a time. Unknown availability runs one chunk.
    pub fn chunks(
        &self,
        config: &ModelConfig,
        lengths: &[usize],
        available: Option<u64>,
    ) -> Result<Vec<Range<usize>>> {
        let Some(available) = available else {
            return Ok(std::iter::once(0..lengths.len()).collect());
        };
        let kept = self.kept_bytes(config, lengths.len());
        let alone = |length| self.chunk_bytes(config, 1, length);
        let widest = lengths.iter().copied().max().unwrap_or(0);
        let needed = sum(&[kept, alone(widest)]);
        if needed > available {
            return Err(Error::OutOfMemory { needed, available });
        }
        let budget = available - kept;
        let mut chunks = Vec::new();
        let (mut start, mut longest) = (0, 0);
        for (row, &length) in lengths.iter().enumerate() {
            let wider = longest.max(length);
            if row > start && self.chunk_bytes(config, row + 1 - start, wider) > budget {
                chunks.push(start..row);
                (start, longest) = (row, length);
            } else {
                longest = wider;
            }
        }
        if start < lengths.len() {
            chunks.push(start..lengths.len());
        }
        Ok(chunks)
    }
}

/// Refuses, before allocating, a need this machine cannot meet.
pub fn check_fits(needed: u64) -> Result<()> {
    fits_within(needed, available_bytes())
}

/// Refuses a need larger than `available` bytes; an unknown availability refuses nothing.
pub fn fits_within(needed: u64, available: Option<u64>) -> Result<()> {
    match available {
        Some(available) if needed > available => Err(Error::OutOfMemory { needed, available }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptc_graph::GptConfig;

    fn tiny() -> GptConfig {
        GptConfig {
            vocab_size: 50257,
            context_length: 64,
            emb_dim: 64,
            n_heads: 4,
            n_layers: 2,
            drop_rate: 0.0,
            qkv_bias: false,
        }
    }

    /// One chunk of every row.
    fn whole(rows: usize) -> Vec<Range<usize>> {
        std::iter::once(0..rows).collect()
    }

    fn shape(logits: LogitPositions) -> GenerationShape {
        GenerationShape { kv_cache: true, logits, max_new_tokens: 10, keep_logits: false }
    }

    #[test]
    fn every_positions_logits_grow_with_positions_times_vocabulary() {
        let config = ModelConfig::from(tiny());
        let vocab = config.vocab_size() as u64;
        let every = shape(LogitPositions::Every);
        let last = shape(LogitPositions::Last);
        // A default export returns 1,000 rows of 14 positions: 14,000 rows of the vocabulary.
        let logits = every.chunk_bytes(&config, 1000, 14) - last.chunk_bytes(&config, 1000, 14);
        assert_eq!(logits, 1000 * 13 * vocab * 4 * LOGITS_COPIES);
        assert!(every.chunk_bytes(&config, 1000, 14) >= 1000 * 14 * vocab * 4);
        // Each position more costs a row of the vocabulary for every row of the batch.
        let longer = every.chunk_bytes(&config, 1000, 15) - last.chunk_bytes(&config, 1000, 15);
        assert_eq!(longer - logits, 1000 * vocab * 4 * LOGITS_COPIES);
        // A wider vocabulary costs every position of every row.
        let wide = ModelConfig::from(GptConfig { vocab_size: 2 * config.vocab_size(), ..tiny() });
        let wider = every.chunk_bytes(&wide, 1000, 14) - every.chunk_bytes(&config, 1000, 14);
        assert_eq!(wider, 1000 * 14 * vocab * 4 * LOGITS_COPIES);
        // Once the cache would outgrow the context, whole windows are prefilled again.
        let cropping = GenerationShape { max_new_tokens: 60, ..every };
        let windows = cropping.chunk_bytes(&config, 1, 14)
            - GenerationShape { max_new_tokens: 60, ..last }.chunk_bytes(&config, 1, 14);
        assert_eq!(windows, 63 * vocab * 4 * LOGITS_COPIES);
    }

    #[test]
    fn sizes_past_u64_saturate_instead_of_wrapping() {
        let huge = GptConfig {
            vocab_size: 1 << 31,
            context_length: 1 << 31,
            emb_dim: 1 << 28,
            n_heads: 1,
            n_layers: usize::MAX,
            ..tiny()
        };
        let huge = ModelConfig::from(huge);
        assert_eq!(model_bytes(&huge, Precision::F32), u64::MAX);
        let run = run_bytes(&huge, Precision::F32, usize::MAX, usize::MAX, 1);
        assert_eq!(run, u64::MAX);
        let layers = ModelConfig::from(GptConfig { n_layers: usize::MAX / 1000, ..tiny() });
        assert!(model_bytes(&layers, Precision::F32) > 1 << 60);
    }

    #[test]
    fn a_batch_is_split_into_the_largest_chunks_that_fit() {
        let config = ModelConfig::from(tiny());
        let every = shape(LogitPositions::Every);
        let lengths = vec![4; 1000];
        let ten = every.chunk_bytes(&config, 10, 4);
        let chunks = every.chunks(&config, &lengths, Some(ten)).unwrap();
        assert_eq!(chunks.len(), 100);
        assert!(chunks.iter().all(|c| c.len() == 10), "{chunks:?}");
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 1000);
        // Enough memory: one run; unknown memory: one run as well.
        let all = every.chunk_bytes(&config, 1000, 4);
        assert_eq!(every.chunks(&config, &lengths, Some(all)).unwrap(), whole(1000));
        assert_eq!(every.chunks(&config, &lengths, None).unwrap(), whole(1000));
        // The same memory holds more rows whose logits are the last position's only.
        let last = shape(LogitPositions::Last).chunks(&config, &lengths, Some(ten)).unwrap();
        assert!(last.len() < 100, "{}", last.len());
    }

    #[test]
    fn a_chunk_is_padded_to_its_longest_prompt() {
        let config = ModelConfig::from(tiny());
        let every = shape(LogitPositions::Every);
        let budget = every.chunk_bytes(&config, 2, 40);
        let short = every.chunks(&config, &[4, 4, 4, 4], Some(budget)).unwrap();
        assert_eq!(short, whole(4));
        // Two rows of 40 fit; a third row is padded to 40 as well, and does not.
        let padded = every.chunks(&config, &[4, 40, 4, 4], Some(budget)).unwrap();
        assert_eq!(padded, [0..2, 2..4]);
    }

    #[test]
    fn a_batch_that_cannot_fit_one_row_at_a_time_is_refused() {
        let config = ModelConfig::from(tiny());
        let every = shape(LogitPositions::Every);
        let one = every.chunk_bytes(&config, 1, 30);
        let err = every.chunks(&config, &[4, 30, 4], Some(one - 1)).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { needed, .. } if needed == one), "{err}");
        // Kept logits stay for every row until the end, whatever the chunks.
        let keeping = GenerationShape { keep_logits: true, ..every };
        let err = keeping.chunks(&config, &vec![4; 1000], Some(10 * one)).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    }

    #[test]
    fn without_a_cache_rows_run_one_at_a_time() {
        let config = ModelConfig::from(tiny());
        let plain = GenerationShape { kv_cache: false, ..shape(LogitPositions::Every) };
        let one = plain.chunk_bytes(&config, 1, 4);
        assert_eq!(plain.chunk_bytes(&config, 1000, 4), one);
        assert_eq!(plain.chunks(&config, &vec![4; 1000], Some(one)).unwrap(), whole(1000));
    }

    /// Grouped-query attention: the cache holds `n_kv_groups` heads of `head_dim`, not
    /// `emb_dim` per position; the RoPE families store no causal table.
    #[test]
    fn the_cache_of_grouped_attention_holds_its_kv_heads_only() {
        let llama = |n_kv_groups| {
            let ModelConfig::Llama(mut c) = ModelConfig::preset("llama3.2-1b").unwrap() else {
                unreachable!()
            };
            (c.emb_dim, c.n_heads, c.n_layers, c.context_length) = (64, 4, 2, 1 << 20);
            c.n_kv_groups = n_kv_groups;
            ModelConfig::Llama(c)
        };
        let (b, t, layers, head_dim) = (3u64, 10u64, 2u64, 16u64);
        let run = |groups| run_bytes(&llama(groups), Precision::F32, 3, 10, 1);
        // Two more kv heads: keys and values of each layer, in the kv cache and its copy.
        assert_eq!(run(4) - run(2), 2 * layers * b * t * 2 * head_dim * 4 * 2);
        // A context of 2^20 positions adds nothing to the model: no [context, context] table.
        let short = ModelConfig::Llama(match llama(2) {
            ModelConfig::Llama(c) => gptc_graph::LlamaConfig { context_length: 64, ..c },
            _ => unreachable!(),
        });
        assert_eq!(model_bytes(&llama(2), Precision::F32), model_bytes(&short, Precision::F32));
    }

    #[test]
    fn a_need_past_the_available_bytes_is_refused() {
        assert!(fits_within(10, Some(9)).is_err());
        assert!(fits_within(9, Some(9)).is_ok());
        assert!(fits_within(u64::MAX, None).is_ok());
    }
}
