//! The `gptc` command line: export, generate, inspect.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use gptc::generate::Next;
use gptc::inspect;
use gptc::progress::{Progress, Reporting};
use gptc::runtime::ort::{Device, OrtRuntime};
use gptc::runtime::tract::TractRuntime;
use gptc::runtime::Runtime;
use gptc::sampling::{Sampler, SamplingConfig};
use gptc::stream::Utf8Stream;
use gptc::tokenizer::{Tokenizer, GPT2_VOCAB_SIZE};
use gptc_graph::file::WeightLayout;
use gptc_graph::onnx::ModelProto;
use gptc_graph::{
    checkpoint, file, GptConfig, GraphOptions, ParameterCount, Precision, RandomInit,
};

#[derive(Parser)]
#[command(name = "gptc", version, about = "Compile GPT-2 to ONNX and generate text with it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a GPT-2 model as an ONNX file.
    Export(ExportArgs),
    /// Generate text greedily from a prompt.
    Generate(GenerateArgs),
    /// Print the parameter accounting of a config, and what a model file holds.
    Inspect(InspectArgs),
    /// Measure export, load and generation speed, and the machine's memory bandwidth.
    Bench(BenchArgs),
    /// Check that a model file holds the graph gptc promises for its config (exit 1 if not).
    Check(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// The .onnx file to check.
    model: PathBuf,
    /// The config to check against; by default the one stored in the file.
    #[command(flatten)]
    config: ConfigArgs,
}

/// Which model: a preset or a JSON config, with single fields overridden by flags.
#[derive(Args, Clone, Default)]
struct ConfigArgs {
    /// gpt2-small (the default), gpt2-medium, gpt2-large or gpt2-xl.
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// A JSON file with the book's keys (vocab_size, context_length, emb_dim, n_heads, n_layers,
    /// drop_rate, qkv_bias).
    #[arg(long, value_name = "FILE.json")]
    config: Option<PathBuf>,
    #[arg(long)]
    vocab_size: Option<usize>,
    #[arg(long)]
    context_length: Option<usize>,
    #[arg(long)]
    emb_dim: Option<usize>,
    #[arg(long)]
    n_heads: Option<usize>,
    #[arg(long)]
    n_layers: Option<usize>,
    #[arg(long)]
    drop_rate: Option<f64>,
    #[arg(long, value_name = "true|false")]
    qkv_bias: Option<bool>,
}

impl ConfigArgs {
    fn any_given(&self) -> bool {
        self.preset.is_some() || self.config.is_some() || self.overrides_given()
    }

    fn overrides_given(&self) -> bool {
        self.vocab_size.is_some()
            || self.context_length.is_some()
            || self.emb_dim.is_some()
            || self.n_heads.is_some()
            || self.n_layers.is_some()
            || self.drop_rate.is_some()
            || self.qkv_bias.is_some()
    }

    fn resolve(&self) -> Result<GptConfig> {
        let mut config = match (&self.preset, &self.config) {
            (_, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                GptConfig::from_json(&text).with_context(|| path.display().to_string())?
            }
            (preset, None) => GptConfig::preset(preset.as_deref().unwrap_or("gpt2-small"))?,
        };
        let set = |field: &mut usize, value: Option<usize>| {
            if let Some(v) = value {
                *field = v;
            }
        };
        set(&mut config.vocab_size, self.vocab_size);
        set(&mut config.context_length, self.context_length);
        set(&mut config.emb_dim, self.emb_dim);
        set(&mut config.n_heads, self.n_heads);
        set(&mut config.n_layers, self.n_layers);
        if let Some(v) = self.drop_rate {
            config.drop_rate = v;
        }
        if let Some(v) = self.qkv_bias {
            config.qkv_bias = v;
        }
        config.validate()?;
        Ok(config)
    }
}

/// The graph's shape beyond the config.
#[derive(Args, Clone, Copy)]
struct GraphArgs {
    /// The book's plain graph (input_ids -> logits) instead of the KV-cache graph.
    #[arg(long)]
    no_kv_cache: bool,
    /// Logits for the last position only: [batch_size, 1, vocab_size].
    #[arg(long)]
    last_token_logits: bool,
    /// One matrix for the token embedding and the output head (GPT-2's layout). The default for
    /// imported weights without an `lm_head.weight`.
    #[arg(long)]
    tie_weights: bool,
    #[command(flatten)]
    dtype: DtypeArg,
}

impl GraphArgs {
    fn options(self) -> GraphOptions {
        GraphOptions {
            kv_cache: !self.no_kv_cache,
            last_token_logits: self.last_token_logits,
            tie_weights: self.tie_weights,
            precision: self.dtype.precision(),
        }
    }
}

#[derive(Args, Clone, Copy)]
struct DtypeArg {
    /// Type of weights, activations and KV cache. f16 is for GPU runtimes: LayerNorm and softmax
    /// stay in float32, and logits are float32.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Dtype {
    F32,
    F16,
}

impl DtypeArg {
    fn precision(self) -> Precision {
        match self.dtype {
            Dtype::F32 => Precision::F32,
            Dtype::F16 => Precision::F16,
        }
    }
}

#[derive(Args)]
struct ExportArgs {
    /// Trained weights: a Hugging Face GPT-2 folder (config.json and model.safetensors, or
    /// shards with their index), or one .safetensors file with --preset or --config.
    #[arg(long, value_name = "DIR|FILE")]
    weights: Option<PathBuf>,
    #[command(flatten)]
    model: ConfigArgs,
    #[command(flatten)]
    graph: GraphArgs,
    /// Seed of GPT-2's random init; the same seed writes a byte-identical file.
    #[arg(long, default_value_t = 123)]
    seed: u64,
    /// Weights in FILE.onnx.data beside the model (ONNX external data). Automatic for models
    /// over protobuf's 2 GiB limit (gpt2-large and gpt2-xl in float32).
    #[arg(long)]
    external_data: bool,
    /// Where to write the .onnx file.
    #[arg(short, long, value_name = "FILE.onnx")]
    output: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RuntimeKind {
    /// tract: pure Rust, CPU, nothing to install.
    Tract,
    /// ONNX Runtime (libonnxruntime from ORT_DYLIB_PATH or a pip-installed onnxruntime).
    Ort,
}

#[derive(Args)]
struct GenerateArgs {
    /// Prompts; several run as one left-padded batch.
    prompts: Vec<String>,
    /// More prompts, one per line.
    #[arg(long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    /// Token ids instead of text, comma-separated (e.g. 15496,11,314,716).
    #[arg(long, value_name = "IDS", conflicts_with_all = ["prompts", "prompt_file"])]
    ids: Option<String>,
    /// Read `<|endoftext|>` in a prompt as the special token, not as text.
    #[arg(long)]
    allow_special: bool,
    /// An exported .onnx file; without it, gpt2-small (or the given config) is compiled in memory.
    #[arg(long, value_name = "FILE.onnx")]
    model: Option<PathBuf>,
    /// Compile in memory from trained weights (as `gptc export --weights`).
    #[arg(long, value_name = "DIR|FILE", conflicts_with = "model")]
    weights: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Seed of the random init when compiling in memory.
    #[arg(long, default_value_t = 123)]
    init_seed: u64,
    /// Compile in memory without the KV cache (every token re-runs the whole window).
    #[arg(long, conflicts_with = "model")]
    no_kv_cache: bool,
    /// When compiling in memory.
    #[command(flatten)]
    dtype: DtypeArg,
    #[arg(long, value_enum, default_value = "tract")]
    runtime: RuntimeKind,
    /// Where ONNX Runtime runs (`--runtime ort` only).
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    #[arg(long, default_value_t = 10)]
    max_new_tokens: usize,
    /// 0 (the default) is greedy; above 0, sample from softmax(logits / T).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    #[arg(long, allow_negative_numbers = true)]
    top_k: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Sampling seed: the same seed gives the same text on the same runtime.
    #[arg(long, default_value_t = 123)]
    seed: u64,
    /// Stop at <|endoftext|> (the default when sampling).
    #[arg(long, conflicts_with = "ignore_eos")]
    eos: bool,
    /// Go on past <|endoftext|>.
    #[arg(long)]
    ignore_eos: bool,
    /// Stop when the new text contains this string (repeatable).
    #[arg(long, value_name = "STRING")]
    stop: Vec<String>,
    /// Print one JSON object per prompt at the end (prompt, prompt_ids, output_ids, text, runtime).
    #[arg(long, conflicts_with = "json_lines")]
    json: bool,
    /// Print one JSON object per token as it is decoded, then one per prompt.
    #[arg(long)]
    json_lines: bool,
    /// With --json: also each step's last-position logits (`step_logits`), for cross-checks.
    #[arg(long, requires = "json")]
    with_logits: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// An .onnx file to report on (its stored config gives the accounting).
    #[arg(long, value_name = "FILE.onnx", conflicts_with_all = ["preset", "config"])]
    model: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Prompt lengths whose prefill is timed.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 128, 1024])]
    prefill: Vec<usize>,
    /// Tokens decoded with the KV cache.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Tokens decoded without a cache (0 skips that run).
    #[arg(long, default_value_t = 128)]
    plain_tokens: usize,
    /// Keep the exported file in this folder (for other runtimes to time the same file).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also time ONNX Runtime from Rust on the same file.
    #[arg(long)]
    ort: bool,
    /// Where ONNX Runtime runs.
    #[arg(long, value_enum, default_value = "cpu", requires = "ort")]
    device: Device,
    /// Skip tract (to time ONNX Runtime alone, e.g. on a GPU).
    #[arg(long, requires = "ort")]
    no_tract: bool,
    #[command(flatten)]
    dtype: DtypeArg,
    /// End with one JSON line of all figures.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's first line says what is wrong; the usage it appends is for --help.
            let message = e.to_string();
            let first = message.lines().next().unwrap_or("invalid arguments");
            eprintln!("{}", first.trim());
            std::process::exit(2);
        }
    };
    // Panics are caught where a dependency may raise them on bad input (tract on malformed
    // models) and reported as errors; any other is a bug, reported below in one line.
    std::panic::set_hook(Box::new(|_| {}));
    let run = std::panic::catch_unwind(|| match cli.command {
        Command::Export(args) => export(args),
        Command::Generate(args) => generate(args),
        Command::Inspect(args) => inspect(args),
        Command::Bench(args) => bench(args),
        Command::Check(args) => check(args),
    });
    let result = match run {
        Ok(result) => result,
        Err(panic) => {
            let message = gptc::panic_message(&*panic);
            eprintln!("error: internal error, a bug in gptc: {message}");
            std::process::exit(101);
        }
    };
    if let Err(e) = result {
        // A reader that stopped reading (`gptc generate ... | head -c 10`) ends us quietly.
        let broken_pipe = e.chain().any(|cause| {
            let io = cause.downcast_ref::<std::io::Error>().or(
                match cause.downcast_ref::<gptc::Error>() {
                    Some(gptc::Error::Io(io)) => Some(io),
                    _ => None,
                },
            );
            io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            std::process::exit(0);
        }
        let message = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

/// Builds the model from trained weights (`weights`) or GPT-2's seeded init; returns it with
/// its config and the options it was built with.
fn compile(
    config_args: &ConfigArgs,
    mut options: GraphOptions,
    weights: Option<&Path>,
    seed: u64,
) -> Result<(GptConfig, GraphOptions, ModelProto)> {
    let building = |config: &GptConfig, options: GraphOptions| {
        let count = ParameterCount::of(config);
        let values = if options.tie_weights { count.total_tied() } else { count.total() };
        Progress::bytes("building the model", (values * options.precision.bytes()) as u64)
    };
    let Some(weights) = weights else {
        let config = config_args.resolve()?;
        check_fits_in_memory(ParameterCount::of(&config).total() as u64 * 4)?;
        let progress = building(&config, options);
        let mut source = Reporting {
            source: &mut RandomInit { seed },
            progress: &progress,
            bytes_per_value: options.precision.bytes() as u64,
        };
        let model = gptc_graph::build_model(&config, options, &mut source, Some(seed))?;
        return Ok((config, options, model));
    };
    let (config, mut checkpoint) = if weights.is_dir() {
        if config_args.any_given() {
            bail!("{} is a checkpoint folder: its config.json gives the config", weights.display());
        }
        checkpoint::read_hf_dir(weights)?
    } else {
        if !config_args.any_given() {
            bail!("{} is a bare .safetensors file: say which model it holds with --preset or --config", weights.display());
        }
        let config = config_args.resolve()?;
        let tensors = checkpoint::read_safetensors(&[weights.to_path_buf()], &config)?;
        (config, checkpoint::Checkpoint::new(tensors))
    };
    // GPT-2 ties its head to the token embedding; a checkpoint with its own head keeps it.
    options.tie_weights |= !checkpoint.has("lm_head.weight");
    let progress = building(&config, options);
    let mut source = Reporting {
        source: &mut checkpoint,
        progress: &progress,
        bytes_per_value: options.precision.bytes() as u64,
    };
    let model = gptc_graph::build_model(&config, options, &mut source, None)?;
    drop(progress);
    checkpoint.check_all_used()?;
    Ok((config, options, model))
}

fn export(args: ExportArgs) -> Result<()> {
    let start = Instant::now();
    let (config, options, model) =
        compile(&args.model, args.graph.options(), args.weights.as_deref(), args.seed)?;
    let layout = if args.external_data { WeightLayout::External } else { WeightLayout::Auto };
    let progress = Progress::bytes("writing", file::tensor_bytes(&model));
    let data = file::write_model_observed(&args.output, &model, layout, &|n| progress.advance(n))?;
    drop(progress);
    let count = ParameterCount::of(&config);
    let parameters = if options.tie_weights { count.total_tied() } else { count.total() };
    eprintln!(
        "wrote {}{} ({} parameters{}, {:.2} MB) in {:.2} s, peak RSS {:.2} GB",
        args.output.display(),
        data.map(|d| format!(" and {}", d.display())).unwrap_or_default(),
        inspect::thousands(parameters),
        if options.tie_weights { ", tied" } else { "" },
        (parameters * options.precision.bytes()) as f64 / (1024.0 * 1024.0),
        start.elapsed().as_secs_f64(),
        gptc::peak_rss_bytes().unwrap_or(0) as f64 / 1e9
    );
    Ok(())
}

/// Loads `--model`, or compiles the config in memory; returns the runtime and the config.
fn load_runtime(
    model: Option<&Path>,
    weights: Option<&Path>,
    config_args: &ConfigArgs,
    seed: u64,
    options: GraphOptions,
    kind: RuntimeKind,
    device: Device,
) -> Result<(Box<dyn Runtime>, GptConfig)> {
    if kind == RuntimeKind::Tract && device != Device::Cpu {
        bail!("tract runs on the CPU only: use --runtime ort for --device cuda or auto");
    }
    let loading = |what: &str| {
        let runtime = match kind {
            RuntimeKind::Tract => "tract",
            RuntimeKind::Ort => "ONNX Runtime",
        };
        Progress::spinner(&format!("{what} ({runtime}: parse, optimize, plan)"))
    };
    let from_path = |path: &Path| -> Result<Box<dyn Runtime>> {
        let _progress = loading(&format!("loading {}", path.display()));
        Ok(match kind {
            RuntimeKind::Tract => Box::new(TractRuntime::from_path(path)?),
            RuntimeKind::Ort => Box::new(OrtRuntime::from_path(path, device)?),
        })
    };
    let from_bytes = |bytes: &[u8]| -> Result<Box<dyn Runtime>> {
        let _progress = loading("loading the model");
        Ok(match kind {
            RuntimeKind::Tract => Box::new(TractRuntime::from_bytes(bytes)?),
            RuntimeKind::Ort => Box::new(OrtRuntime::from_bytes(bytes, device)?),
        })
    };
    let Some(path) = model else {
        let (config, _, model) = compile(config_args, options, weights, seed)?;
        if !file::needs_external_data(&model) {
            let bytes = file::encode(&model);
            drop(model);
            return Ok((from_bytes(&bytes)?, config));
        }
        // Over protobuf's limit the runtimes read weights only as external data, from files.
        let dir = std::env::temp_dir().join(format!("gptc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("model.onnx");
        let progress = Progress::bytes("staging external data", file::tensor_bytes(&model));
        let written = |n| progress.advance(n);
        let loaded = file::write_model_observed(&path, &model, WeightLayout::External, &written)
            .map_err(anyhow::Error::from)
            .and_then(|_| {
                drop(model);
                drop(progress);
                from_path(&path)
            });
        let _ = std::fs::remove_dir_all(&dir);
        return Ok((loaded?, config));
    };
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len());
    let model_size = size(path).with_context(|| format!("reading {}", path.display()))?;
    check_fits_in_memory(model_size + size(&file::data_path(path)).unwrap_or(0))?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let header = file::stored_header_of_bytes(path, &bytes)?;
    let config = match header.config {
        Some(c) => c,
        None if config_args.any_given() => config_args.resolve()?,
        None => bail!(
            "{} has no gptc config in its metadata; say which model it is with --preset or --config",
            path.display()
        ),
    };
    // The file was read once: a self-contained one loads from those bytes; one with external
    // data loads by path, so the runtime finds its data beside it.
    if header.external_data {
        drop(bytes);
        return Ok((from_path(path)?, config));
    }
    Ok((from_bytes(&bytes)?, config))
}

/// GPT-2's end-of-text token.
const END_OF_TEXT: i64 = 50256;

/// Bytes this machine can still give (Linux `MemAvailable`).
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Refuses, before allocating, a model whose weights cannot fit: loading holds the weights about
/// 2.5 times over at its peak (1.56 GB measured for gpt2-small's 0.65 GB).
fn check_fits_in_memory(weight_bytes: u64) -> Result<()> {
    let needed = weight_bytes * 5 / 2;
    if let Some(available) = available_memory() {
        if needed > available {
            bail!(
                "the model needs about {:.1} GB of memory to load and this machine has {:.1} GB available",
                needed as f64 / 1e9,
                available as f64 / 1e9
            );
        }
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    let tokenizer = Tokenizer::gpt2();
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: match args.top_k {
            Some(k) if k <= 0 => bail!("--top-k must be at least 1, got {k}"),
            k => k.map(|k| k as usize),
        },
        top_p: args.top_p,
        seed: args.seed,
    };
    let mut sampler = Sampler::new(sampling.clone())?;
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let mut texts = args.prompts.clone();
    if let Some(path) = &args.prompt_file {
        let content =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        texts.extend(content.lines().filter(|l| !l.trim().is_empty()).map(String::from));
    }
    if args.ids.is_none() && texts.is_empty() {
        bail!("no prompt: give one or more prompts, --prompt-file or --ids");
    }
    if let Some(empty) = texts.iter().position(|t| t.is_empty()) {
        bail!("prompt {} is empty: give some text to continue", empty + 1);
    }

    // Generating reads only the last position's logits.
    let options = GraphOptions {
        kv_cache: !args.no_kv_cache,
        last_token_logits: true,
        tie_weights: false,
        precision: args.dtype.precision(),
    };
    let (mut runtime, config) = load_runtime(
        args.model.as_deref(),
        args.weights.as_deref(),
        &args.config,
        args.init_seed,
        options,
        args.runtime,
        args.device,
    )?;
    let prompts: Vec<Vec<i64>> = match &args.ids {
        Some(ids) => {
            let ids = gptc::tokenizer::parse_ids(ids, config.vocab_size)?;
            if ids.is_empty() {
                bail!("--ids is empty: give some token ids");
            }
            vec![ids]
        }
        None => {
            if config.vocab_size > GPT2_VOCAB_SIZE {
                bail!(
                    "the model's vocabulary ({}) is larger than GPT-2's BPE ({GPT2_VOCAB_SIZE}): pass --ids and read output_ids with --json",
                    config.vocab_size
                );
            }
            let encode = |t: &String| {
                if args.allow_special {
                    tokenizer.encode_with_special(t)
                } else {
                    tokenizer.encode(t)
                }
            };
            texts.iter().map(encode).collect()
        }
    };
    for (i, prompt) in prompts.iter().enumerate() {
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= config.vocab_size) {
            bail!(
                "prompt {} has token {id}, outside the model's vocabulary of {}",
                i + 1,
                config.vocab_size
            );
        }
        if prompt.len() > config.context_length {
            eprintln!(
                "gptc: prompt {} has {} tokens; the model sees only the last {} (its context)",
                i + 1,
                prompt.len(),
                config.context_length
            );
        }
    }

    let stop_at_eos = args.eos || (!sampling.is_greedy() && !args.ignore_eos);
    let decode_text = args.ids.is_none() || config.vocab_size <= GPT2_VOCAB_SIZE;
    let stream_text = prompts.len() == 1 && !args.json && !args.json_lines && decode_text;
    let mut streams: Vec<Utf8Stream> = prompts.iter().map(|_| Utf8Stream::default()).collect();
    let mut new_texts = vec![String::new(); prompts.len()];
    let mut step_logits: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    let mut stdout = std::io::stdout().lock();
    if stream_text {
        write!(stdout, "{}", tokenizer.decode(&prompts[0])?)?;
        stdout.flush()?;
    }
    let start = Instant::now();
    let mut first_token_at = None;
    let mut new_tokens = 0usize;
    let outputs = gptc::generate::generate(
        runtime.as_mut(),
        &prompts,
        args.max_new_tokens,
        config.context_length,
        |row, logits| {
            first_token_at.get_or_insert_with(|| start.elapsed());
            if args.with_logits {
                step_logits[row].push(logits.to_vec());
            }
            let id = sampler.pick(logits);
            if stop_at_eos && id == END_OF_TEXT {
                return Ok(Next::Stop);
            }
            new_tokens += 1;
            let piece = if decode_text {
                streams[row].push(&tokenizer.decode_bytes(&[id])?)
            } else {
                String::new()
            };
            new_texts[row].push_str(&piece);
            let stopped = args.stop.iter().any(|s| new_texts[row].contains(s.as_str()));
            let io = |e: std::io::Error| gptc::Error::Io(e);
            if stream_text {
                write!(stdout, "{piece}").and_then(|_| stdout.flush()).map_err(io)?;
            } else if args.json_lines {
                let event =
                    serde_json::json!({"event": "token", "row": row, "id": id, "text": piece});
                writeln!(stdout, "{event}").map_err(io)?;
            }
            Ok(if stopped { Next::Last(id) } else { Next::Token(id) })
        },
    )?;
    let elapsed = start.elapsed();

    for (row, (prompt, new_ids)) in prompts.iter().zip(&outputs).enumerate() {
        let tail = streams[row].finish();
        new_texts[row].push_str(&tail);
        if let Some(cut) = args.stop.iter().filter_map(|s| new_texts[row].find(s.as_str())).min() {
            new_texts[row].truncate(cut);
        }
        let prompt_text = if decode_text { tokenizer.decode(prompt)? } else { String::new() };
        let text = format!("{prompt_text}{}", new_texts[row]);
        if stream_text {
            writeln!(stdout, "{tail}")?;
        } else if args.json || args.json_lines {
            let mut object = serde_json::json!({
                "prompt": texts.get(row).cloned().unwrap_or(prompt_text),
                "prompt_ids": prompt,
                "output_ids": new_ids,
                "text": text,
                "runtime": runtime.name(),
            });
            if args.json_lines {
                object["event"] = "done".into();
            }
            if args.with_logits {
                object["step_logits"] = serde_json::json!(step_logits[row]);
            }
            writeln!(stdout, "{object}")?;
        } else {
            writeln!(stdout, "{text}")?;
        }
    }
    stdout.flush()?;
    let decode_s = elapsed.saturating_sub(first_token_at.unwrap_or_default()).as_secs_f64();
    let later_tokens = new_tokens.saturating_sub(prompts.len());
    eprintln!(
        "gptc: {} prompt tokens, {new_tokens} new tokens, time to first token {:.0} ms, {:.1} tokens/s ({})",
        prompts.iter().map(Vec::len).sum::<usize>(),
        first_token_at.unwrap_or_default().as_secs_f64() * 1e3,
        if decode_s > 0.0 { later_tokens as f64 / decode_s } else { 0.0 },
        runtime.name()
    );
    Ok(())
}

fn inspect(args: InspectArgs) -> Result<()> {
    let mut out = String::new();
    let config = match &args.model {
        Some(path) => {
            let model = file::read_model(path)?;
            out.push_str(&inspect::file_report(&model));
            match file::stored_config(&model).transpose()? {
                Some(config) => Some(config),
                None if args.config.any_given() => Some(args.config.resolve()?),
                None => {
                    out.push_str("no gptc config in the metadata: pass --preset or --config for the accounting\n");
                    None
                }
            }
        }
        None => Some(args.config.resolve()?),
    };
    if let Some(config) = config {
        out.push_str(&format!(
            "config: vocab {} context {} emb {} heads {} layers {} drop {} qkv_bias {}\n",
            config.vocab_size,
            config.context_length,
            config.emb_dim,
            config.n_heads,
            config.n_layers,
            config.drop_rate,
            config.qkv_bias
        ));
        out.push_str(&inspect::parameter_table(&config));
    }
    print!("{out}");
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    use gptc::bench::{decode_tokens_per_second, measure, read_bandwidth};
    let config = args.config.resolve()?;
    let count = ParameterCount::of(&config);
    let ctx = config.context_length;
    let gb = |bytes: f64| bytes / 1e9;
    let peak = || gb(gptc::peak_rss_bytes().unwrap_or(0) as f64);
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("gptc-bench-{}.onnx", std::process::id()));
    println!(
        "model       {} layers, emb {}, {} parameters",
        config.n_layers,
        config.emb_dim,
        inspect::thousands(count.total())
    );

    let start = Instant::now();
    let precision = args.dtype.precision();
    let options =
        GraphOptions { kv_cache: true, last_token_logits: true, tie_weights: false, precision };
    let model =
        gptc_graph::build_model(&config, options, &mut RandomInit { seed: 123 }, Some(123))?;
    let data = file::write_model(&path, &model, WeightLayout::Auto)?;
    drop(model);
    let export_s = start.elapsed().as_secs_f64();
    let export_peak = peak();
    let data_bytes = data.as_ref().map_or(Ok(0), |d| std::fs::metadata(d).map(|m| m.len()))?;
    let file_mb = (std::fs::metadata(&path)?.len() + data_bytes) as f64 / 1e6;
    println!("export      {export_s:.2} s, peak RSS {export_peak:.2} GB, file {file_mb:.1} MB (KV cache, last-token logits)");
    if args.dir.is_some() {
        println!("file        {}", path.display());
    }

    let mut figures = Vec::new();
    if !args.no_tract {
        let start = Instant::now();
        let mut tract = TractRuntime::from_path(&path)?;
        let load_s = start.elapsed().as_secs_f64();
        figures.push(measure(&mut tract, load_s, &args.prefill, args.new_tokens, ctx)?);
        println!("{}", figures[0]);
    }
    let tract_peak = peak();
    println!("peak RSS    {tract_peak:.2} GB (export, then tract)");

    if args.ort {
        let start = Instant::now();
        let mut ort = OrtRuntime::from_path(&path, args.device)?;
        let load_s = start.elapsed().as_secs_f64();
        figures.push(measure(&mut ort, load_s, &args.prefill, args.new_tokens, ctx)?);
        println!("{}", figures.last().expect("just pushed"));
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_file(&path);
        if let Some(data) = &data {
            let _ = std::fs::remove_file(data);
        }
    }

    let mut plain_tokens_per_s = None;
    if args.plain_tokens > 0 && !args.no_tract {
        let options = GraphOptions { kv_cache: false, ..options };
        let model =
            gptc_graph::build_model(&config, options, &mut RandomInit { seed: 123 }, Some(123))?;
        let mut plain = TractRuntime::from_bytes(&file::encode(&model))?;
        drop(model);
        let prompt: Vec<i64> = (0..16).collect();
        let rate = decode_tokens_per_second(&mut plain, &prompt, args.plain_tokens, ctx)?;
        println!(
            "tract       decode after 16 tokens, no cache: {rate:.1} tokens/s ({:.2}x slower than with the cache)",
            figures[0].decode_tokens_per_s / rate
        );
        plain_tokens_per_s = Some(rate);
    }

    let bandwidth = read_bandwidth(1 << 30, 5);
    // A decode step reads every matrix once; of the embeddings only one row each, unless the
    // head is the token embedding itself.
    let read_per_token = ((count.total() - count.token_embedding - count.position_embedding)
        * precision.bytes()) as f64;
    let limit = bandwidth / read_per_token;
    println!(
        "bandwidth   {:.1} GB/s read; {:.0} MB of weights per token bound decode at {limit:.1} tokens/s",
        gb(bandwidth),
        read_per_token / 1e6,
    );
    // The bound is the CPU's: it says nothing of a runtime on a GPU.
    for f in figures.iter().filter(|f| !f.runtime.ends_with("cuda")) {
        println!(
            "{:<10}  decode at {:.2}x the bandwidth bound",
            f.runtime,
            f.decode_tokens_per_s / limit
        );
    }
    if args.json {
        let summary = serde_json::json!({
            "export_s": export_s,
            "export_peak_rss_gb": export_peak,
            "peak_rss_gb": tract_peak,
            "runtimes": figures,
            "plain_decode_tokens_per_s": plain_tokens_per_s,
            "bandwidth_gb_s": gb(bandwidth),
            "weights_read_per_token_mb": read_per_token / 1e6,
            "bandwidth_bound_tokens_per_s": limit,
        });
        println!("{summary}");
    }
    Ok(())
}

fn check(args: CheckArgs) -> Result<()> {
    let bytes =
        std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let model = file::decode_model(&args.model, &bytes)?;
    print!("{}", inspect::file_report(&model));
    let config = match file::stored_config(&model).transpose()? {
        Some(stored) if !args.config.any_given() => stored,
        _ if args.config.any_given() => args.config.resolve()?,
        _ => bail!(
            "{} has no gptc config in its metadata: pass --preset or --config",
            args.model.display()
        ),
    };
    let options = gptc::check::check_model(&args.model, &model, &config)?;
    println!(
        "ok: inputs and outputs match the config ({}) and tract's shape analysis",
        match (options.kv_cache, options.last_token_logits) {
            (false, false) => "plain graph",
            (false, true) => "plain graph, last-token logits",
            (true, false) => "KV cache",
            (true, true) => "KV cache, last-token logits",
        }
    );
    Ok(())
}
