//! Compiling a model: which config (resolved once, here), which weights, which graph.

use std::path::{Path, PathBuf};

use gptc_graph::onnx::ModelProto;
use gptc_graph::{book, checkpoint, family_checkpoint, names};
use gptc_graph::{Family, GraphOptions, ModelConfig, RandomInit};

use crate::progress::{Progress, Reporting};
use crate::{memory, Error, Result};

/// Single config fields that override a preset's or a file's. Each means something for some
/// families only: one given for a family without that field is refused, never ignored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigOverrides {
    pub vocab_size: Option<usize>,
    pub context_length: Option<usize>,
    pub emb_dim: Option<usize>,
    pub n_heads: Option<usize>,
    pub n_layers: Option<usize>,
    /// GPT-2's.
    pub drop_rate: Option<f64>,
    pub qkv_bias: Option<bool>,
    /// Llama's and Qwen3's: the SwiGLU width, the key/value heads, RoPE's base.
    pub hidden_dim: Option<usize>,
    pub n_kv_groups: Option<usize>,
    pub rope_base: Option<f64>,
    /// Qwen3's own head width.
    pub head_dim: Option<usize>,
}

impl ConfigOverrides {
    pub fn any(&self) -> bool {
        *self != ConfigOverrides::default()
    }

    fn apply(&self, config: &mut ModelConfig) -> Result<()> {
        let set = |field: &mut usize, value: Option<usize>| {
            if let Some(v) = value {
                *field = v;
            }
        };
        let family = config.family();
        // The flag's name as the CLI spells it, and the families that have the field.
        let meaningless = |given: bool, setting: &'static str, families: &str| match given {
            true => Err(Error::Setting {
                setting,
                problem: format!(
                    "has no meaning for a {} model (it is a field of {families} configs)",
                    family.model_type()
                ),
            }),
            false => Ok(()),
        };
        let gpt2_only =
            [(self.drop_rate.is_some(), "drop-rate"), (self.qkv_bias.is_some(), "qkv-bias")];
        let rope_only = [
            (self.hidden_dim.is_some(), "hidden-dim"),
            (self.n_kv_groups.is_some(), "n-kv-groups"),
            (self.rope_base.is_some(), "rope-base"),
        ];
        if family != Family::Gpt2 {
            for (given, setting) in gpt2_only {
                meaningless(given, setting, "gpt2")?;
            }
        } else {
            for (given, setting) in rope_only {
                meaningless(given, setting, "llama and qwen3")?;
            }
        }
        if family != Family::Qwen3 {
            meaningless(self.head_dim.is_some(), "head-dim", "qwen3")?;
        }
        let (vocab, context, emb, heads, layers) = match config {
            ModelConfig::Gpt2(c) => {
                if let Some(v) = self.drop_rate {
                    c.drop_rate = v;
                }
                if let Some(v) = self.qkv_bias {
                    c.qkv_bias = v;
                }
                (
                    &mut c.vocab_size,
                    &mut c.context_length,
                    &mut c.emb_dim,
                    &mut c.n_heads,
                    &mut c.n_layers,
                )
            }
            ModelConfig::Llama(c) => {
                set(&mut c.hidden_dim, self.hidden_dim);
                set(&mut c.n_kv_groups, self.n_kv_groups);
                if let Some(v) = self.rope_base {
                    c.rope_base = v;
                }
                (
                    &mut c.vocab_size,
                    &mut c.context_length,
                    &mut c.emb_dim,
                    &mut c.n_heads,
                    &mut c.n_layers,
                )
            }
            ModelConfig::Qwen3(c) => {
                set(&mut c.hidden_dim, self.hidden_dim);
                set(&mut c.n_kv_groups, self.n_kv_groups);
                set(&mut c.head_dim, self.head_dim);
                if let Some(v) = self.rope_base {
                    c.rope_base = v;
                }
                (
                    &mut c.vocab_size,
                    &mut c.context_length,
                    &mut c.emb_dim,
                    &mut c.n_heads,
                    &mut c.n_layers,
                )
            }
        };
        set(vocab, self.vocab_size);
        set(context, self.context_length);
        set(emb, self.emb_dim);
        set(heads, self.n_heads);
        set(layers, self.n_layers);
        Ok(())
    }
}

/// Which model, as a user says it: a preset (gpt2-small when nothing is said; a family's
/// smallest when only the family is) or a JSON file with the book's keys (its family from
/// `model_type`, default gpt2), then single fields overridden.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigSpec {
    pub preset: Option<String>,
    pub file: Option<PathBuf>,
    /// The family, as `--family` says it: a config file is read in its keys, and a preset or a
    /// file of another family is refused.
    pub family: Option<Family>,
    pub overrides: ConfigOverrides,
}

/// The preset a family stands for when nothing else is said.
fn default_preset(family: Family) -> &'static str {
    match family {
        Family::Gpt2 => "gpt2-small",
        Family::Llama => "llama3.2-1b",
        Family::Qwen3 => "qwen3-0.6b",
    }
}

impl ConfigSpec {
    pub fn preset(name: &str) -> ConfigSpec {
        ConfigSpec { preset: Some(name.into()), ..ConfigSpec::default() }
    }

    /// Whether anything was said at all.
    pub fn is_given(&self) -> bool {
        self.preset.is_some()
            || self.file.is_some()
            || self.family.is_some()
            || self.overrides.any()
    }

    /// Whether a config (a preset, a file, fields) was given, beyond the family alone.
    fn config_given(&self) -> bool {
        self.preset.is_some() || self.file.is_some() || self.overrides.any()
    }

    pub fn resolve(&self) -> Result<ModelConfig> {
        let mut config = match (&self.file, &self.preset) {
            (Some(path), _) => {
                let text = gptc_graph::file::read_text_input(path)?;
                let parsed = match self.family {
                    Some(family) => ModelConfig::from_json_as(&text, family),
                    None => ModelConfig::from_json(&text),
                };
                parsed.map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?
            }
            (None, Some(name)) => {
                let config = ModelConfig::preset(name)?;
                self.check_family(config.family(), &format!("preset {name}"))?;
                config
            }
            (None, None) => {
                ModelConfig::preset(default_preset(self.family.unwrap_or(Family::Gpt2)))?
            }
        };
        self.overrides.apply(&mut config)?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses a `--family` that is not `found`, the family of `what`.
    fn check_family(&self, found: Family, what: &str) -> Result<()> {
        match self.family {
            Some(family) if family != found => Err(Error::Usage(format!(
                "{what} is a {} model, not {} (--family)",
                found.model_type(),
                family.model_type()
            ))),
            _ => Ok(()),
        }
    }

    /// What the config file says of the head, if it says it (`tie_word_embeddings`): a
    /// single-file checkpoint's own head decides where it does not.
    fn states_tie(&self) -> Result<Option<bool>> {
        let Some(path) = &self.file else { return Ok(None) };
        let text = gptc_graph::file::read_text_input(path)?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
        Ok(json.get("tie_word_embeddings").and_then(serde_json::Value::as_bool))
    }

    /// The config of a model file: the one it stores, else the one given here. With
    /// `given_wins` (`check` holds a file to a config) a given config replaces the stored one;
    /// without, giving one for a file that stores its own is refused, not silently ignored.
    pub fn for_model_file(
        &self,
        stored: Option<impl Into<ModelConfig>>,
        path: &Path,
        given_wins: bool,
    ) -> Result<ModelConfig> {
        match stored.map(Into::into) {
            Some(_) if given_wins && self.config_given() => self.resolve(),
            Some(_) if self.config_given() => {
                Err(Error::Usage(format!(
                    "{} stores its own config: a preset, a config file or config fields given with it would be ignored",
                    path.display()
                )))
            }
            Some(stored) => {
                self.check_family(stored.family(), &path.display().to_string())?;
                Ok(stored)
            }
            None if self.is_given() => self.resolve(),
            None => Err(Error::NoConfig(path.to_path_buf())),
        }
    }
}

/// Where the weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Weights {
    /// The family's init from a seed: the same seed gives a byte-identical model.
    Random { seed: u64 },
    /// Trained weights: a Hugging Face folder of GPT-2, Llama or Qwen3 (its `config.json` gives
    /// the config), or one file (the config comes from the [`ConfigSpec`]): `.safetensors` with
    /// Hugging Face's or the book's names, or the book's `torch.save` `.pth`.
    Checkpoint(PathBuf),
}

/// A model built in memory, with the config and options it was built with.
pub struct Compiled {
    pub config: ModelConfig,
    pub options: GraphOptions,
    pub model: ModelProto,
}

impl Compiled {
    /// The parameters it stores (the head counted once when tied).
    pub fn parameters(&self) -> usize {
        stored_parameters(&self.config, self.options)
    }
}

/// Parameters a model of `config` stores with `options`: a tied head and token embedding are
/// one table (under 4-bit weights, the head's 4-bit one).
pub fn stored_parameters(config: impl Into<ModelConfig>, options: GraphOptions) -> usize {
    let config = config.into();
    let count = config.parameter_count();
    if options.tie_weights || config.head_tied() {
        count.total_tied()
    } else {
        count.total()
    }
}

/// Builds a model: the config from `spec` (or the checkpoint folder's), the weights from
/// `weights`. A GPT-2 checkpoint without its own `lm_head.weight` ties the head to the token
/// embedding, as GPT-2 does; Llama's and Qwen3's folders say in their config; a single file's
/// head is tied when its config says so or, where it does not say, when the file holds no
/// head. Every checkpoint tensor must be used.
pub fn compile(spec: &ConfigSpec, weights: &Weights, options: GraphOptions) -> Result<Compiled> {
    let path = match weights {
        Weights::Checkpoint(path) if !path.exists() => {
            return Err(Error::File {
                path: path.clone(),
                error: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        }
        Weights::Random { seed } => {
            let config = spec.resolve()?;
            memory::check_fits(memory::model_bytes(&config, options.precision))?;
            return build(config, options, &mut RandomInit { seed: *seed }, Some(*seed));
        }
        Weights::Checkpoint(path) => path,
    };
    if path.is_dir() {
        return compile_folder(spec, path, options);
    }
    if !spec.is_given() {
        return Err(Error::CheckpointNeedsConfig(path.clone()));
    }
    let mut config = spec.resolve()?;
    memory::check_fits(memory::model_bytes(&config, options.precision))?;
    let (mut checkpoint, mut options) = (None, options);
    if let ModelConfig::Gpt2(gpt2) = &config {
        let tensors = checkpoint::read_file(path, gpt2, options.tie_weights)?;
        let file = checkpoint::Checkpoint::new(tensors);
        options.tie_weights |= !file.has(names::OUTPUT_HEAD);
        checkpoint = Some(file);
    }
    let mut checkpoint = match checkpoint {
        Some(checkpoint) => checkpoint,
        None => {
            let stated = match options.tie_weights {
                true => Some(true),
                false => spec.states_tie()?,
            };
            let (tensors, tied) = if book::is_book_file(path)? {
                book::read_swiglu(path, &config, stated)?
            } else {
                let tensors = family_checkpoint::read_safetensors(std::slice::from_ref(path))?;
                let tied = stated.unwrap_or(!tensors.0.contains_key(names::OUTPUT_HEAD));
                (tensors, tied)
            };
            config.set_head_tied(tied);
            options.tie_weights = tied;
            checkpoint::Checkpoint::new(tensors)
        }
    };
    let compiled = build(config, options, &mut checkpoint, None)?;
    checkpoint.check_all_used()?;
    Ok(compiled)
}

/// A Hugging Face checkpoint folder: GPT-2's, or Llama's or Qwen3's by its config.json.
fn compile_folder(spec: &ConfigSpec, dir: &Path, mut options: GraphOptions) -> Result<Compiled> {
    if spec.config_given() {
        return Err(Error::Usage(format!(
            "{} is a checkpoint folder: its config.json gives the config",
            dir.display()
        )));
    }
    let config_json = dir.join("config.json");
    let (config, mut checkpoint) = match family_checkpoint::hf_config(&config_json)? {
        Some(config) => {
            spec.check_family(config.family(), &config_json.display().to_string())?;
            memory::check_fits(memory::model_bytes(&config, options.precision))?;
            let tensors = family_checkpoint::read_safetensors(&checkpoint::shard_paths(dir)?)?;
            (config, checkpoint::Checkpoint::new(tensors))
        }
        None => {
            spec.check_family(Family::Gpt2, &config_json.display().to_string())?;
            let config = ModelConfig::Gpt2(checkpoint::hf_config(&config_json)?);
            memory::check_fits(memory::model_bytes(&config, options.precision))?;
            let (config, checkpoint) = checkpoint::read_hf_dir(dir)?;
            options.tie_weights |= !checkpoint.has(names::OUTPUT_HEAD);
            (ModelConfig::Gpt2(config), checkpoint)
        }
    };
    let compiled = build(config, options, &mut checkpoint, None)?;
    checkpoint.check_all_used()?;
    Ok(compiled)
}

/// The family a compile of `spec` and `weights` will build, found without reading weights
/// (a checkpoint folder's config.json says it): for refusing what a family lacks before work.
pub fn family_of(spec: &ConfigSpec, weights: &Weights) -> Result<Family> {
    match weights {
        Weights::Checkpoint(dir) if dir.is_dir() => {
            match family_checkpoint::hf_config(&dir.join("config.json"))? {
                Some(config) => Ok(config.family()),
                None => Ok(Family::Gpt2),
            }
        }
        _ => Ok(spec.resolve()?.family()),
    }
}

/// The graph of `config` over `weights`, with a bar; tying said once, as the builder reads it.
fn build(
    mut config: ModelConfig,
    mut options: GraphOptions,
    weights: &mut dyn gptc_graph::WeightSource,
    init_seed: Option<u64>,
) -> Result<Compiled> {
    if options.tie_weights {
        config.set_head_tied(true);
    }
    options.tie_weights |= config.head_tied();
    let bytes = stored_parameters(&config, options) * options.precision.bytes();
    let progress = Progress::bytes("building the model", bytes as u64);
    let mut source = Reporting {
        source: weights,
        progress: &progress,
        bytes_per_value: options.precision.bytes() as u64,
    };
    let model = gptc_graph::build_model(&config, options, &mut source, init_seed)?;
    drop(progress);
    Ok(Compiled { config, options, model })
}
