//! Compiling a model: which config (resolved once, here), which weights, which graph.

use std::path::{Path, PathBuf};

use gptc_graph::onnx::ModelProto;
use gptc_graph::{checkpoint, names, GptConfig, GraphOptions, ParameterCount, RandomInit};

use crate::progress::{Progress, Reporting};
use crate::{memory, Error, Result};

/// Single config fields that override a preset's or a file's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigOverrides {
    pub vocab_size: Option<usize>,
    pub context_length: Option<usize>,
    pub emb_dim: Option<usize>,
    pub n_heads: Option<usize>,
    pub n_layers: Option<usize>,
    pub drop_rate: Option<f64>,
    pub qkv_bias: Option<bool>,
}

impl ConfigOverrides {
    pub fn any(&self) -> bool {
        *self != ConfigOverrides::default()
    }

    fn apply(&self, config: &mut GptConfig) {
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
    }
}

/// Which model, as a user says it: a preset (gpt2-small when nothing is said) or a JSON file
/// with the book's keys, then single fields overridden.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigSpec {
    pub preset: Option<String>,
    pub file: Option<PathBuf>,
    pub overrides: ConfigOverrides,
}

impl ConfigSpec {
    pub fn preset(name: &str) -> ConfigSpec {
        ConfigSpec { preset: Some(name.into()), ..ConfigSpec::default() }
    }

    /// Whether anything was said at all.
    pub fn is_given(&self) -> bool {
        self.preset.is_some() || self.file.is_some() || self.overrides.any()
    }

    pub fn resolve(&self) -> Result<GptConfig> {
        let mut config = match &self.file {
            Some(path) => {
                let text = gptc_graph::file::read_text_input(path)?;
                GptConfig::from_json(&text)
                    .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?
            }
            None => GptConfig::preset(self.preset.as_deref().unwrap_or("gpt2-small"))?,
        };
        self.overrides.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// The config of a model file: the one it stores, else the one given here. With
    /// `given_wins` (`check` holds a file to a config) a given config replaces the stored one;
    /// without, giving one for a file that stores its own is refused, not silently ignored.
    pub fn for_model_file(
        &self,
        stored: Option<GptConfig>,
        path: &Path,
        given_wins: bool,
    ) -> Result<GptConfig> {
        match stored {
            Some(_) if given_wins && self.is_given() => self.resolve(),
            Some(_) if self.is_given() => Err(Error::Usage(format!(
                "{} stores its own config: a preset, a config file or config fields given with it would be ignored",
                path.display()
            ))),
            Some(stored) => Ok(stored),
            None if self.is_given() => self.resolve(),
            None => Err(Error::NoConfig(path.to_path_buf())),
        }
    }
}

/// Where the weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Weights {
    /// GPT-2's init from a seed: the same seed gives a byte-identical model.
    Random { seed: u64 },
    /// Trained weights: a Hugging Face GPT-2 folder (its `config.json` gives the config), or one
    /// file (the config comes from the [`ConfigSpec`]): `.safetensors` with Hugging Face's or the
    /// book's names, or the book's `torch.save` `.pth`.
    Checkpoint(PathBuf),
}

/// A model built in memory, with the config and options it was built with.
pub struct Compiled {
    pub config: GptConfig,
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
pub fn stored_parameters(config: &GptConfig, options: GraphOptions) -> usize {
    let count = ParameterCount::of(config);
    if options.tie_weights {
        count.total_tied()
    } else {
        count.total()
    }
}

/// Builds a model: the config from `spec` (or the checkpoint folder's), the weights from
/// `weights`. A checkpoint without its own `lm_head.weight` ties the head to the token
/// embedding, as GPT-2 does; every checkpoint tensor must be used.
pub fn compile(
    spec: &ConfigSpec,
    weights: &Weights,
    mut options: GraphOptions,
) -> Result<Compiled> {
    let building = |config: &GptConfig, options: GraphOptions| {
        let bytes = stored_parameters(config, options) * options.precision.bytes();
        Progress::bytes("building the model", bytes as u64)
    };
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
            let progress = building(&config, options);
            let mut source = Reporting {
                source: &mut RandomInit { seed: *seed },
                progress: &progress,
                bytes_per_value: options.precision.bytes() as u64,
            };
            let model = gptc_graph::build_model(&config, options, &mut source, Some(*seed))?;
            return Ok(Compiled { config, options, model });
        }
        Weights::Checkpoint(path) => path,
    };
    let (config, mut checkpoint) = if path.is_dir() {
        if spec.is_given() {
            return Err(Error::Usage(format!(
                "{} is a checkpoint folder: its config.json gives the config",
                path.display()
            )));
        }
        memory::check_fits(memory::model_bytes(
            &checkpoint::hf_config(&path.join("config.json"))?,
            options.precision,
        ))?;
        checkpoint::read_hf_dir(path)?
    } else {
        if !spec.is_given() {
            return Err(Error::CheckpointNeedsConfig(path.clone()));
        }
        let config = spec.resolve()?;
        memory::check_fits(memory::model_bytes(&config, options.precision))?;
        let tensors = checkpoint::read_file(path, &config, options.tie_weights)?;
        (config, checkpoint::Checkpoint::new(tensors))
    };
    options.tie_weights |= !checkpoint.has(names::OUTPUT_HEAD);
    let progress = building(&config, options);
    let mut source = Reporting {
        source: &mut checkpoint,
        progress: &progress,
        bytes_per_value: options.precision.bytes() as u64,
    };
    let model = gptc_graph::build_model(&config, options, &mut source, None)?;
    drop(progress);
    checkpoint.check_all_used()?;
    Ok(Compiled { config, options, model })
}
