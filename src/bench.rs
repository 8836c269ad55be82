//! Measurements for BENCHMARKS.md: numbers printed, never asserted.

use std::time::Instant;

use ndarray::ArrayView1;

use crate::generate::{generate, Next};
use crate::reference::argmax;
use crate::runtime::Runtime;
use crate::Result;

/// Read bandwidth of main memory in bytes/s: the best of several passes summing a buffer far
/// larger than the caches, on as many threads as tract uses. Decoding one token must read every
/// weight once, so `bandwidth / weight_bytes` bounds tokens/s.
pub fn read_bandwidth(bytes: usize, passes: usize) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let words = bytes / 8;
    // Distinct values: the kernel must not back the buffer with one shared zero page.
    let buffer: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads);
    let mut best = f64::INFINITY;
    let mut checksum = 0u64;
    for _ in 0..passes {
        let start = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buffer
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        best = best.min(start.elapsed().as_secs_f64());
        checksum = checksum.wrapping_add(sums.iter().sum::<u64>());
    }
    std::hint::black_box(checksum);
    (words * 8) as f64 / best
}

/// Median of a non-empty list of seconds.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Seconds from the start of `generate` to the first new token: the prefill of `prompt` (for a
/// plain graph, its one full forward).
pub fn prefill_seconds(runtime: &mut dyn Runtime, prompt: &[i64], context: usize) -> Result<f64> {
    let start = Instant::now();
    generate(runtime, &[prompt.to_vec()], 1, context, |_, logits| {
        Ok(Next::Token(argmax(logits) as i64))
    })?;
    Ok(start.elapsed().as_secs_f64())
}

/// Decode speed in tokens/s: `new_tokens` greedy tokens after `prompt`, timed from the first
/// token (after the prefill) to the last.
pub fn decode_tokens_per_second(
    runtime: &mut dyn Runtime,
    prompt: &[i64],
    new_tokens: usize,
    context: usize,
) -> Result<f64> {
    let mut stamps = Vec::with_capacity(new_tokens);
    generate(runtime, &[prompt.to_vec()], new_tokens, context, |_, logits: ArrayView1<f32>| {
        stamps.push(Instant::now());
        Ok(Next::Token(argmax(logits) as i64))
    })?;
    let (Some(first), Some(last)) = (stamps.first(), stamps.last()) else {
        return Ok(0.0);
    };
    Ok((stamps.len() - 1) as f64 / last.duration_since(*first).as_secs_f64())
}

/// What one runtime reached on one file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RuntimeFigures {
    pub runtime: String,
    pub load_s: f64,
    /// `(prompt tokens, milliseconds)`, median of 3.
    pub prefill_ms: Vec<(usize, f64)>,
    pub decode_tokens_per_s: f64,
}

/// Times prefills of `prefill_lengths` and a decode of `new_tokens` after a 16-token prompt.
pub fn measure(
    runtime: &mut dyn Runtime,
    load_s: f64,
    prefill_lengths: &[usize],
    new_tokens: usize,
    context: usize,
) -> Result<RuntimeFigures> {
    let prompt = |n: usize| -> Vec<i64> { (0..n as i64).map(|i| (i * 7919) % 50000).collect() };
    let mut prefill_ms = Vec::new();
    for &n in prefill_lengths.iter().filter(|&&n| n <= context) {
        let times = (0..3)
            .map(|_| prefill_seconds(runtime, &prompt(n), context))
            .collect::<Result<Vec<_>>>()?;
        prefill_ms.push((n, median(times) * 1e3));
    }
    let decode_tokens_per_s = decode_tokens_per_second(runtime, &prompt(16), new_tokens, context)?;
    Ok(RuntimeFigures { runtime: runtime.name(), load_s, prefill_ms, decode_tokens_per_s })
}

impl std::fmt::Display for RuntimeFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = &self.runtime;
        writeln!(f, "{name:<10}  load {:.2} s (parse, optimize, plan)", self.load_s)?;
        for (n, ms) in &self.prefill_ms {
            writeln!(f, "{name:<10}  prefill {n:>5} tokens: {ms:8.1} ms (median of 3)")?;
        }
        write!(
            f,
            "{name:<10}  decode after 16 tokens, KV cache: {:.1} tokens/s ({:.1} ms/token)",
            self.decode_tokens_per_s,
            1e3 / self.decode_tokens_per_s
        )
    }
}
