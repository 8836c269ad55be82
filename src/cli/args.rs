//! The command line's arguments, and how each becomes a library value.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use gptc::model::{ConfigOverrides, ConfigSpec, Weights};
use gptc::runtime::ort::Device;
use gptc::runtime::RuntimeKind;
use gptc::sampling::SamplingConfig;
use gptc_graph::{Family, GraphOptions, Precision, Quantization};

#[derive(Parser)]
#[command(
    name = "gptc",
    version,
    about = "Compile GPT-2, Llama 3.2 and Qwen3 to ONNX and generate text with it"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Write a model (GPT-2, Llama 3.2, Qwen3) as an ONNX file.
    Export(ExportArgs),
    /// Generate text greedily from a prompt.
    Generate(GenerateArgs),
    /// Print the parameter accounting of a config, and what a model file holds.
    Inspect(InspectArgs),
    /// Measure export, load and generation speed, and the machine's memory bandwidth.
    Bench(BenchArgs),
    /// Check that a model file holds the graph gptc promises for its config (exit 1 if not).
    Check(CheckArgs),
    /// Print the GPT-2 token ids of texts, as JSON: one list of ids per text.
    Tokenize(TokenizeArgs),
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// Texts to tokenize.
    pub texts: Vec<String>,
    /// More texts: a JSON file holding a list of strings.
    #[arg(long, value_name = "FILE.json")]
    pub json_file: Option<PathBuf>,
    /// Read `<|endoftext|>` in a text as the special token, not as text.
    #[arg(long)]
    pub allow_special: bool,
    /// A Hugging Face tokenizer.json instead of GPT-2's BPE.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
}

#[derive(Args)]
pub struct CheckArgs {
    /// The .onnx file to check.
    pub model: PathBuf,
    /// The config to check against; by default the one stored in the file.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Which model: a preset or a JSON config, with single fields overridden by flags.
#[derive(Args, Clone, Default)]
pub struct ConfigArgs {
    /// gpt2-small (the default), gpt2-medium, gpt2-large, gpt2-xl; llama3.2-1b, llama3.2-3b;
    /// qwen3-0.6b, qwen3-1.7b.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A JSON file with the book's keys: GPT-2's (vocab_size, context_length, emb_dim, n_heads,
    /// n_layers, drop_rate, qkv_bias), or Llama's and Qwen3's with "model_type" (or --family).
    #[arg(long, value_name = "FILE.json")]
    pub config: Option<PathBuf>,
    /// The model's family: the keys a --config file is read in, and what a preset, a file or a
    /// checkpoint must be [default: gpt2, or the config's "model_type"].
    #[arg(long, value_enum)]
    pub family: Option<FamilyArg>,
    #[arg(long)]
    pub vocab_size: Option<usize>,
    #[arg(long)]
    pub context_length: Option<usize>,
    #[arg(long)]
    pub emb_dim: Option<usize>,
    #[arg(long)]
    pub n_heads: Option<usize>,
    #[arg(long)]
    pub n_layers: Option<usize>,
    /// GPT-2 only.
    #[arg(long)]
    pub drop_rate: Option<f64>,
    /// GPT-2 only.
    #[arg(long, value_name = "true|false")]
    pub qkv_bias: Option<bool>,
    /// Llama and Qwen3: the SwiGLU feed-forward's inner width.
    #[arg(long)]
    pub hidden_dim: Option<usize>,
    /// Llama and Qwen3: key/value heads, each serving n_heads / n_kv_groups query heads.
    #[arg(long)]
    pub n_kv_groups: Option<usize>,
    /// Llama and Qwen3: RoPE's base.
    #[arg(long)]
    pub rope_base: Option<f64>,
    /// Qwen3 only: each head's width.
    #[arg(long)]
    pub head_dim: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    Gpt2,
    Llama,
    Qwen3,
}

impl ConfigArgs {
    pub fn spec(&self) -> ConfigSpec {
        ConfigSpec {
            preset: self.preset.clone(),
            file: self.config.clone(),
            family: self.family.map(|f| match f {
                FamilyArg::Gpt2 => Family::Gpt2,
                FamilyArg::Llama => Family::Llama,
                FamilyArg::Qwen3 => Family::Qwen3,
            }),
            overrides: ConfigOverrides {
                vocab_size: self.vocab_size,
                context_length: self.context_length,
                emb_dim: self.emb_dim,
                n_heads: self.n_heads,
                n_layers: self.n_layers,
                drop_rate: self.drop_rate,
                qkv_bias: self.qkv_bias,
                hidden_dim: self.hidden_dim,
                n_kv_groups: self.n_kv_groups,
                rope_base: self.rope_base,
                head_dim: self.head_dim,
            },
        }
    }
}

/// The graph's shape beyond the config.
#[derive(Args, Clone, Copy)]
pub struct GraphArgs {
    /// The book's plain graph (input_ids -> logits) instead of the KV-cache graph.
    #[arg(long)]
    pub no_kv_cache: bool,
    /// Logits for the last position only: [batch_size, 1, vocab_size].
    #[arg(long)]
    pub last_token_logits: bool,
    /// One matrix for the token embedding and the output head (GPT-2's layout). The default for
    /// imported weights without an `lm_head.weight`.
    #[arg(long)]
    pub tie_weights: bool,
    #[command(flatten)]
    pub dtype: DtypeArg,
    #[command(flatten)]
    pub quantize: QuantizeArgs,
}

impl GraphArgs {
    pub fn options(self) -> GraphOptions {
        GraphOptions {
            kv_cache: !self.no_kv_cache,
            last_token_logits: self.last_token_logits,
            tie_weights: self.tie_weights,
            precision: self.dtype.precision(),
            quantization: self.quantize.quantization(),
        }
    }
}

/// 4-bit weights.
#[derive(Args, Clone, Copy)]
pub struct QuantizeArgs {
    /// Store every projection and the output head in 4 bits (ONNX Runtime's MatMulNBits,
    /// blocks of 32, symmetric); a tied token table is the head's, embeddings otherwise, LayerNorm
    /// and biases stay float32.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantizeKind>,
    /// MatMulNBits' accuracy_level: 4 lets ONNX Runtime quantize activations to int8 (faster),
    /// 0 computes in float32 (what tract does either way).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(0..=4), requires = "quantize")]
    pub accuracy_level: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuantizeKind {
    Int4,
}

impl QuantizeArgs {
    pub fn quantization(self) -> Quantization {
        match self.quantize {
            None => Quantization::None,
            Some(QuantizeKind::Int4) => Quantization::Int4 { accuracy_level: self.accuracy_level },
        }
    }
}

#[derive(Args, Clone, Copy)]
pub struct DtypeArg {
    /// Type of weights, activations and KV cache. f16 is for GPU runtimes: LayerNorm and softmax
    /// stay in float32, and logits are float32.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    F32,
    F16,
}

impl DtypeArg {
    pub fn precision(self) -> Precision {
        self.dtype.precision()
    }
}

impl Dtype {
    pub fn precision(self) -> Precision {
        match self {
            Dtype::F32 => Precision::F32,
            Dtype::F16 => Precision::F16,
        }
    }
}

#[derive(Args)]
pub struct ExportArgs {
    /// Trained weights: a Hugging Face folder of GPT2LMHeadModel, LlamaForCausalLM or
    /// Qwen3ForCausalLM (config.json and model.safetensors, or shards with their index), or one
    /// file with --preset or --config: .safetensors (Hugging Face's names or the book's), or the
    /// book's `torch.save` .pth (GPTModel, Llama3Model, Qwen3Model; read without Python).
    #[arg(long, value_name = "DIR|FILE")]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub model: ConfigArgs,
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Seed of the random init; the same seed writes a byte-identical file.
    #[arg(long, default_value_t = 123)]
    pub seed: u64,
    /// Weights in FILE.onnx.data beside the model (ONNX external data). Automatic for models
    /// over protobuf's 2 GiB limit (gpt2-large and gpt2-xl in float32).
    #[arg(long)]
    pub external_data: bool,
    /// A model folder's tokenizer (-o DIR/, Llama and Qwen3): a tokenizer.json, copied with the
    /// tokenizer_config.json beside it [default: the --weights folder's, if it has one].
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Where to write the .onnx file.
    #[arg(short, long, value_name = "FILE.onnx")]
    pub output: PathBuf,
}

/// Trained weights if given, else GPT-2's init from `seed`.
pub fn weights(path: Option<&PathBuf>, seed: u64) -> Weights {
    match path {
        Some(path) => Weights::Checkpoint(path.clone()),
        None => Weights::Random { seed },
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    /// tract: pure Rust, CPU, nothing to install.
    Tract,
    /// ONNX Runtime (libonnxruntime from ORT_DYLIB_PATH or a pip-installed onnxruntime).
    Ort,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    /// CUDA when it can be had, else CPU (said on stderr).
    Auto,
}

impl DeviceArg {
    pub fn device(self) -> Device {
        match self {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda,
            DeviceArg::Auto => Device::Auto,
        }
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Prompts; several run as one left-padded batch.
    pub prompts: Vec<String>,
    /// More prompts, one per line.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Token ids instead of text, comma-separated (e.g. 15496,11,314,716).
    #[arg(long, value_name = "IDS", conflicts_with_all = ["prompts", "prompt_file"])]
    pub ids: Option<String>,
    /// Read `<|endoftext|>` in a prompt as the special token, not as text.
    #[arg(long)]
    pub allow_special: bool,
    /// A Hugging Face tokenizer.json for the prompts and the output (default: GPT-2's BPE for
    /// GPT-2, the model folder's or checkpoint's tokenizer.json for the other families).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// An exported .onnx file; without it, gpt2-small (or the given config) is compiled in memory.
    #[arg(long, value_name = "FILE.onnx")]
    pub model: Option<PathBuf>,
    /// Compile in memory from trained weights (as `gptc export --weights`).
    #[arg(long, value_name = "DIR|FILE", conflicts_with = "model")]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Seed of the random init when compiling in memory [default: 123].
    #[arg(long, conflicts_with = "model")]
    pub init_seed: Option<u64>,
    /// Compile in memory without the KV cache (every token re-runs the whole window).
    #[arg(long, conflicts_with = "model")]
    pub no_kv_cache: bool,
    /// Type of weights, activations and KV cache when compiling in memory [default: f32].
    #[arg(long, value_enum, conflicts_with = "model")]
    pub dtype: Option<Dtype>,
    /// When compiling in memory.
    #[command(flatten)]
    pub quantize: QuantizeArgs,
    #[arg(long, value_enum, default_value = "tract")]
    pub runtime: RuntimeArg,
    /// Where ONNX Runtime runs (`--runtime ort` only).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    #[arg(long, default_value_t = 10)]
    pub max_new_tokens: usize,
    /// 0 (the default) is greedy; above 0, sample from softmax(logits / T).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    #[arg(long, allow_negative_numbers = true)]
    pub top_k: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Sampling seed: the same seed gives the same text on the same runtime.
    #[arg(long, default_value_t = 123)]
    pub seed: u64,
    /// Stop at <|endoftext|> (the default when sampling).
    #[arg(long, conflicts_with = "ignore_eos")]
    pub eos: bool,
    /// Go on past <|endoftext|>.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop when the new text contains this string (repeatable).
    #[arg(long, value_name = "STRING")]
    pub stop: Vec<String>,
    /// Print one JSON object per prompt at the end (prompt, prompt_ids, output_ids, text, runtime).
    #[arg(long, conflicts_with = "json_lines")]
    pub json: bool,
    /// Print one JSON object per token as it is decoded, then one per prompt.
    #[arg(long)]
    pub json_lines: bool,
    /// With --json: also each step's last-position logits (`step_logits`), for cross-checks.
    #[arg(long, requires = "json")]
    pub with_logits: bool,
}

impl GenerateArgs {
    pub fn sampling(&self) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature,
            // Negative counts are no counts: the sampler's one check refuses them with zero.
            top_k: self.top_k.map(|k| usize::try_from(k).unwrap_or(0)),
            top_p: self.top_p,
            seed: self.seed,
        }
    }

    pub fn runtime_kind(&self) -> RuntimeKind {
        match self.runtime {
            RuntimeArg::Tract => RuntimeKind::Tract,
            RuntimeArg::Ort => RuntimeKind::Ort(self.device.device()),
        }
    }
}

#[derive(Args)]
pub struct InspectArgs {
    /// An .onnx file to report on (its stored config gives the accounting).
    #[arg(long, value_name = "FILE.onnx", conflicts_with_all = ["preset", "config"])]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Prompt lengths whose prefill is timed [default: 16,128,1024, those within the context].
    #[arg(long, value_delimiter = ',')]
    pub prefill: Option<Vec<usize>>,
    /// Tokens decoded with the KV cache.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Tokens decoded without a cache (0 skips that run).
    #[arg(long, default_value_t = 128)]
    pub plain_tokens: usize,
    /// Keep the exported file in this folder (for other runtimes to time the same file).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also time ONNX Runtime from Rust on the same file.
    #[arg(long)]
    pub ort: bool,
    /// Where ONNX Runtime runs.
    #[arg(long, value_enum, default_value = "cpu", requires = "ort")]
    pub device: DeviceArg,
    /// Skip tract (to time ONNX Runtime alone, e.g. on a GPU).
    #[arg(long, requires = "ort")]
    pub no_tract: bool,
    /// The head multiplies by the token embedding (GPT-2's layout, every real checkpoint's).
    #[arg(long)]
    pub tie_weights: bool,
    #[command(flatten)]
    pub dtype: DtypeArg,
    #[command(flatten)]
    pub quantize: QuantizeArgs,
    /// End with one JSON line of all figures.
    #[arg(long)]
    pub json: bool,
}
