//! Measurements for BENCHMARKS.md: numbers printed, never asserted.

use std::path::{Path, PathBuf};
use std::time::Instant;

use gptc_graph::file::{self, StagingDir, WeightLayout};
use gptc_graph::{GraphOptions, ModelConfig, Precision, Quantization, RandomInit};
use ndarray::ArrayView1;

use gptc::generate::{generate, Next};
use gptc::inspect::thousands;
use gptc::memory;
use gptc::runtime::ort::{Device, OrtRuntime};
use gptc::runtime::tract::TractRuntime;
use gptc::runtime::Runtime;
use gptc::sampling::argmax;
use gptc::{Error, Result};

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

/// Prefills timed per prompt length: the median of five keeps one slow run (the host is
/// shared) out of the figure.
const PREFILL_RUNS: usize = 5;

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
    /// `(prompt tokens, milliseconds)`, median of [`PREFILL_RUNS`].
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
    vocab_size: usize,
) -> Result<RuntimeFigures> {
    // Ids spread over the vocabulary (GPT-2's first 50,000 tokens, as the bench always took).
    let spread = vocab_size.min(50000) as i64;
    let prompt = |n: usize| -> Vec<i64> { (0..n as i64).map(|i| (i * 7919) % spread).collect() };
    let mut prefill_ms = Vec::new();
    for &n in prefill_lengths.iter().filter(|&&n| n <= context) {
        let times = (0..PREFILL_RUNS)
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
            writeln!(
                f,
                "{name:<10}  prefill {n:>5} tokens: {ms:8.1} ms (median of {PREFILL_RUNS})"
            )?;
        }
        write!(
            f,
            "{name:<10}  decode after 16 tokens, KV cache: {:.1} tokens/s ({:.1} ms/token)",
            self.decode_tokens_per_s,
            1e3 / self.decode_tokens_per_s
        )
    }
}

/// The bytes one decode step must read: every stored tensor once (4-bit blocks and their
/// scales as stored), except the tables that are gathered from, of which one row each: the
/// learned positions, and the token embedding when the head is a matrix of its own (a tied
/// head, float or 4-bit, reads its whole table every step).
pub fn bytes_read_per_token(
    model: &gptc_graph::onnx::ModelProto,
    names: &gptc_graph::names::ModuleNames,
) -> u64 {
    let Some(graph) = &model.graph else { return 0 };
    let own_head = graph.initializer.iter().any(|t| t.name.starts_with(names.output_head));
    graph
        .initializer
        .iter()
        .map(|t| {
            let bytes = file::tensor_byte_len(t) as u64;
            let gathered = Some(t.name.as_str()) == names.position_embedding
                || (t.name == names.token_embedding && own_head);
            match (gathered, t.dims.first()) {
                (true, Some(&rows)) if rows > 0 => bytes / rows as u64,
                _ => bytes,
            }
        })
        .sum()
}

/// What `gptc bench` measures.
#[derive(Clone, Debug)]
pub struct BenchPlan {
    pub config: ModelConfig,
    pub precision: Precision,
    pub quantization: Quantization,
    /// The head multiplies by the token embedding.
    pub tie_weights: bool,
    /// Prompt lengths whose prefill is timed (those over the context are refused).
    pub prefill: Vec<usize>,
    /// Tokens decoded with the KV cache.
    pub new_tokens: usize,
    /// Tokens decoded without a cache by tract (0 skips that run).
    pub plain_tokens: usize,
    /// Keep the exported file in this folder; by default it goes to the temp folder and is
    /// removed.
    pub keep_in: Option<PathBuf>,
    pub tract: bool,
    /// Also time ONNX Runtime on the same file, on this device.
    pub ort: Option<Device>,
}

/// Everything `gptc bench` printed, as figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub family: String,
    pub n_layers: usize,
    pub emb_dim: usize,
    pub parameters: usize,
    pub export_s: f64,
    pub export_peak_rss_gb: f64,
    pub file_mb: f64,
    /// Where the file was kept, if it was.
    pub file: Option<PathBuf>,
    pub peak_rss_gb: f64,
    pub runtimes: Vec<RuntimeFigures>,
    pub plain_decode_tokens_per_s: Option<f64>,
    pub bandwidth_gb_s: f64,
    pub weights_read_per_token_mb: f64,
    pub bandwidth_bound_tokens_per_s: f64,
}

/// Exports the plan's model with the KV cache and last-token logits, times each runtime on that
/// one file, then measures the machine's read bandwidth and the bound it puts on decoding.
pub fn run(plan: &BenchPlan) -> Result<BenchReport> {
    let config = &plan.config;
    let arch = config.architecture();
    let ctx = config.context_length();
    let vocab = config.vocab_size();
    let gb = |bytes: f64| bytes / 1e9;
    let peak = || gb(memory::peak_rss_bytes().unwrap_or(0) as f64);
    if let Some(&n) = plan.prefill.iter().find(|&&n| n > ctx) {
        return Err(Error::Usage(format!(
            "a prefill of {n} tokens is longer than the model's context ({ctx})"
        )));
    }
    let longest = plan.prefill.iter().copied().max().unwrap_or(0).max(16 + plan.new_tokens);
    // One row, the last position's logits: what the bench's last-token export returns.
    let run = memory::run_bytes(config, plan.precision, 1, longest, 1);
    memory::check_fits(memory::model_bytes(config, plan.precision).saturating_add(run))?;

    let start = Instant::now();
    let options = GraphOptions {
        kv_cache: true,
        last_token_logits: true,
        tie_weights: plan.tie_weights,
        precision: plan.precision,
        quantization: plan.quantization,
    };
    let model = gptc_graph::build_model(config, options, &mut RandomInit { seed: 123 }, Some(123))?;
    let read_per_token = bytes_read_per_token(&model, &config.architecture().names) as f64;
    let staging = match &plan.keep_in {
        Some(_) => None,
        None => Some(StagingDir::new()?),
    };
    let dir = plan.keep_in.as_deref().or(staging.as_ref().map(|s| s.0.as_path()));
    let path =
        dir.unwrap_or(Path::new(".")).join(format!("gptc-bench-{}.onnx", std::process::id()));
    let data = file::write_model(&path, &model, WeightLayout::Auto)?;
    drop(model);
    let export_s = start.elapsed().as_secs_f64();
    let export_peak_rss_gb = peak();
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|source| Error::File { path: p.into(), error: source })
    };
    let data_bytes = data.as_deref().map_or(Ok(0), size)?;
    let file_mb = (size(&path)? + data_bytes) as f64 / 1e6;

    let mut runtimes = Vec::new();
    if plan.tract {
        let start = Instant::now();
        let mut tract = TractRuntime::from_path(&path)?;
        let load_s = start.elapsed().as_secs_f64();
        runtimes.push(measure(&mut tract, load_s, &plan.prefill, plan.new_tokens, ctx, vocab)?);
    }
    let peak_rss_gb = peak();
    if let Some(device) = plan.ort {
        let start = Instant::now();
        let mut ort = OrtRuntime::from_path(&path, device)?;
        let load_s = start.elapsed().as_secs_f64();
        runtimes.push(measure(&mut ort, load_s, &plan.prefill, plan.new_tokens, ctx, vocab)?);
    }
    drop(staging);

    let mut plain_decode_tokens_per_s = None;
    if plan.plain_tokens > 0 && plan.tract {
        let options = GraphOptions { kv_cache: false, ..options };
        let model =
            gptc_graph::build_model(config, options, &mut RandomInit { seed: 123 }, Some(123))?;
        let mut plain = TractRuntime::from_bytes(&file::encode(&model))?;
        drop(model);
        let prompt: Vec<i64> = (0..16).collect();
        plain_decode_tokens_per_s =
            Some(decode_tokens_per_second(&mut plain, &prompt, plan.plain_tokens, ctx)?);
    }

    let bandwidth = read_bandwidth(1 << 30, 5);
    Ok(BenchReport {
        family: config.family().model_type().into(),
        n_layers: arch.n_layers,
        emb_dim: arch.emb_dim,
        parameters: gptc::model::stored_parameters(config, options),
        export_s,
        export_peak_rss_gb,
        file_mb,
        file: plan.keep_in.as_ref().map(|_| path.clone()),
        peak_rss_gb,
        runtimes,
        plain_decode_tokens_per_s,
        bandwidth_gb_s: gb(bandwidth),
        weights_read_per_token_mb: read_per_token / 1e6,
        bandwidth_bound_tokens_per_s: bandwidth / read_per_token,
    })
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "model       {} {} layers, emb {}, {} parameters",
            self.family,
            self.n_layers,
            self.emb_dim,
            thousands(self.parameters)
        )?;
        writeln!(
            f,
            "export      {:.2} s, peak RSS {:.2} GB, file {:.1} MB (KV cache, last-token logits)",
            self.export_s, self.export_peak_rss_gb, self.file_mb
        )?;
        if let Some(file) = &self.file {
            writeln!(f, "file        {}", file.display())?;
        }
        let tract = self.runtimes.iter().find(|r| r.runtime == "tract");
        if let Some(tract) = tract {
            writeln!(f, "{tract}")?;
        }
        writeln!(f, "peak RSS    {:.2} GB (export, then tract)", self.peak_rss_gb)?;
        for ort in self.runtimes.iter().filter(|r| r.runtime != "tract") {
            writeln!(f, "{ort}")?;
        }
        if let (Some(rate), Some(tract)) = (self.plain_decode_tokens_per_s, tract) {
            writeln!(
                f,
                "tract       decode after 16 tokens, no cache: {rate:.1} tokens/s ({:.2}x slower than with the cache)",
                tract.decode_tokens_per_s / rate
            )?;
        }
        writeln!(
            f,
            "bandwidth   {:.1} GB/s read; {:.0} MB of weights per token bound decode at {:.1} tokens/s",
            self.bandwidth_gb_s, self.weights_read_per_token_mb, self.bandwidth_bound_tokens_per_s
        )?;
        // The bound is the CPU's: it says nothing of a runtime on a GPU.
        for r in self.runtimes.iter().filter(|r| !r.runtime.ends_with("cuda")) {
            writeln!(
                f,
                "{:<10}  decode at {:.2}x the bandwidth bound",
                r.runtime,
                r.decode_tokens_per_s / self.bandwidth_bound_tokens_per_s
            )?;
        }
        Ok(())
    }
}
