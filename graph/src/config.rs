//! The model configuration: the single source of truth for every shape in the graph. A
//! [`ModelConfig`] is one family's config ([`GptConfig`], [`LlamaConfig`], [`Qwen3Config`]), each
//! with the keys of the book's config dicts; in JSON the family is HF's `model_type`.

use serde::{Deserialize, Serialize};

use crate::architecture::Architecture;
use crate::llama::LlamaConfig;
use crate::qwen3::Qwen3Config;
use crate::{Error, Result};

/// GPT-2 hyper-parameters, with the keys of the book's `GPT_CONFIG_124M`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub context_length: usize,
    pub emb_dim: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub drop_rate: f64,
    pub qkv_bias: bool,
}

/// The four GPT-2 sizes, by the names users type.
pub const PRESETS: [(&str, usize, usize, usize); 4] = [
    // (name, emb_dim, n_layers, n_heads)
    ("gpt2-small", 768, 12, 12),
    ("gpt2-medium", 1024, 24, 16),
    ("gpt2-large", 1280, 36, 20),
    ("gpt2-xl", 1600, 48, 25),
];

pub const LAYER_NORM_EPS: f32 = 1e-5;

impl GptConfig {
    pub fn preset(name: &str) -> Result<GptConfig> {
        let &(_, emb_dim, n_layers, n_heads) =
            PRESETS.iter().find(|p| p.0 == name).ok_or_else(|| {
                let known: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                Error::Config(format!("unknown preset `{name}` (known: {})", known.join(", ")))
            })?;
        Ok(GptConfig {
            vocab_size: 50257,
            context_length: 1024,
            emb_dim,
            n_heads,
            n_layers,
            drop_rate: 0.1,
            qkv_bias: false,
        })
    }

    /// A GPT-2 config from the book's keys (and `"model_type": "gpt2"`, if given).
    pub fn from_json(text: &str) -> Result<GptConfig> {
        match ModelConfig::from_json(text)? {
            ModelConfig::Gpt2(config) => Ok(config),
            other => Err(Error::Config(format!(
                "a {} config, where a GPT-2 one is needed",
                other.family().model_type()
            ))),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a config always serializes")
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(msg));
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
            ("emb_dim", self.emb_dim),
            ("n_heads", self.n_heads),
            ("n_layers", self.n_layers),
        ] {
            if value == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        if !self.emb_dim.is_multiple_of(self.n_heads) {
            return fail(format!(
                "emb_dim ({}) must be divisible by n_heads ({})",
                self.emb_dim, self.n_heads
            ));
        }
        if !(0.0..1.0).contains(&self.drop_rate) {
            return fail(format!("drop_rate must be in [0, 1), got {}", self.drop_rate));
        }
        // Every dim must fit the int64 shapes of ONNX and the i32-indexed kernels of runtimes.
        if self.vocab_size > i32::MAX as usize
            || self.context_length > i32::MAX as usize
            || self.emb_dim.saturating_mul(4) > i32::MAX as usize
        {
            return fail("a dimension exceeds 2^31".into());
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.emb_dim / self.n_heads
    }

    pub fn ffn_dim(&self) -> usize {
        4 * self.emb_dim
    }
}

/// The architectures gptc builds, by HF's `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Gpt2,
    Llama,
    Qwen3,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Gpt2, Family::Llama, Family::Qwen3];

    /// HF's `model_type`, as config.json files and `--family` spell it.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
            Family::Qwen3 => "qwen3",
        }
    }

    pub fn from_model_type(name: &str) -> Result<Family> {
        Family::ALL.into_iter().find(|f| f.model_type() == name).ok_or_else(|| {
            let known: Vec<&str> = Family::ALL.iter().map(|f| f.model_type()).collect();
            Error::Config(format!("unknown model_type `{name}` (known: {})", known.join(", ")))
        })
    }
}

/// The type the weights come in (the book's `dtype`); the exported precision is a graph
/// option of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    BFloat16,
    Float16,
    Float32,
}

impl WeightDtype {
    pub const ALL: [WeightDtype; 3] =
        [WeightDtype::Float32, WeightDtype::BFloat16, WeightDtype::Float16];

    pub fn bytes(self) -> usize {
        match self {
            WeightDtype::BFloat16 | WeightDtype::Float16 => 2,
            WeightDtype::Float32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::BFloat16 => "bfloat16",
            WeightDtype::Float16 => "float16",
            WeightDtype::Float32 => "float32",
        }
    }
}

/// One family's config. In JSON, the family's keys with HF's `"model_type"` beside them; a
/// JSON without `model_type` is GPT-2's, and GPT-2's is written without it, as before families.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Gpt2(GptConfig),
    Llama(LlamaConfig),
    Qwen3(Qwen3Config),
}

impl From<GptConfig> for ModelConfig {
    fn from(config: GptConfig) -> ModelConfig {
        ModelConfig::Gpt2(config)
    }
}

impl From<&GptConfig> for ModelConfig {
    fn from(config: &GptConfig) -> ModelConfig {
        ModelConfig::Gpt2(config.clone())
    }
}

impl From<&ModelConfig> for ModelConfig {
    fn from(config: &ModelConfig) -> ModelConfig {
        config.clone()
    }
}

const MODEL_TYPE: &str = "model_type";

impl ModelConfig {
    /// Every preset name, GPT-2's first.
    pub fn preset_names() -> Vec<&'static str> {
        let gpt2 = PRESETS.iter().map(|p| p.0);
        let llama = crate::llama::PRESETS.iter().map(|p| p.0);
        gpt2.chain(llama).chain(crate::qwen3::PRESETS.iter().map(|p| p.0)).collect()
    }

    pub fn preset(name: &str) -> Result<ModelConfig> {
        if let Some(config) = LlamaConfig::preset(name) {
            return Ok(ModelConfig::Llama(config));
        }
        if let Some(config) = Qwen3Config::preset(name) {
            return Ok(ModelConfig::Qwen3(config));
        }
        match GptConfig::preset(name) {
            Ok(config) => Ok(ModelConfig::Gpt2(config)),
            Err(_) => Err(Error::Config(format!(
                "unknown preset `{name}` (known: {})",
                ModelConfig::preset_names().join(", ")
            ))),
        }
    }

    /// A config in the book's keys; the family is the JSON's `model_type` (default gpt2).
    pub fn from_json(text: &str) -> Result<ModelConfig> {
        ModelConfig::parse(text, None)
    }

    /// A config in `family`'s keys (`--family`); a `model_type` in the JSON must agree.
    pub fn from_json_as(text: &str, family: Family) -> Result<ModelConfig> {
        ModelConfig::parse(text, Some(family))
    }

    fn parse(text: &str, chosen: Option<Family>) -> Result<ModelConfig> {
        let syntax = |e: serde_json::Error| Error::Config(format!("config JSON: {e}"));
        let mut json: serde_json::Value = serde_json::from_str(text).map_err(syntax)?;
        let stated = match json.as_object_mut().and_then(|o| o.remove(MODEL_TYPE)) {
            None => None,
            Some(serde_json::Value::String(name)) => Some(Family::from_model_type(&name)?),
            Some(other) => {
                return Err(Error::Config(format!("model_type must be a string, got {other}")))
            }
        };
        let family = match (chosen, stated) {
            (Some(chosen), Some(stated)) if chosen != stated => {
                return Err(Error::Config(format!(
                    "the config's model_type is {}, not {}",
                    stated.model_type(),
                    chosen.model_type()
                )))
            }
            (chosen, stated) => chosen.or(stated).unwrap_or(Family::Gpt2),
        };
        let config = match family {
            // Parsed from the text itself when it can be: serde's errors then say where.
            Family::Gpt2 if stated.is_none() => {
                ModelConfig::Gpt2(serde_json::from_str(text).map_err(syntax)?)
            }
            Family::Gpt2 => ModelConfig::Gpt2(serde_json::from_value(json).map_err(syntax)?),
            Family::Llama => ModelConfig::Llama(serde_json::from_value(json).map_err(syntax)?),
            Family::Qwen3 => ModelConfig::Qwen3(serde_json::from_value(json).map_err(syntax)?),
        };
        config.validate()?;
        Ok(config)
    }

    /// The whole config as JSON: the family's keys, `model_type` first (GPT-2: none, so a
    /// GPT-2 model's metadata reads as it always did).
    pub fn to_json(&self) -> String {
        let (family, body) = match self {
            ModelConfig::Gpt2(config) => return config.to_json(),
            ModelConfig::Llama(config) => (Family::Llama, serde_json::to_string(config)),
            ModelConfig::Qwen3(config) => (Family::Qwen3, serde_json::to_string(config)),
        };
        let body = body.expect("a config always serializes");
        // Spliced rather than built as a map: serde_json's map would sort `model_type` inside.
        let fields = body.strip_prefix('{').expect("a struct serializes to an object");
        format!("{{\"{MODEL_TYPE}\":\"{}\",{fields}", family.model_type())
    }

    pub fn family(&self) -> Family {
        match self {
            ModelConfig::Gpt2(_) => Family::Gpt2,
            ModelConfig::Llama(_) => Family::Llama,
            ModelConfig::Qwen3(_) => Family::Qwen3,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Gpt2(config) => config.validate(),
            ModelConfig::Llama(config) => config.validate(),
            ModelConfig::Qwen3(config) => config.validate(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.architecture().vocab_size
    }

    pub fn context_length(&self) -> usize {
        self.architecture().context_length
    }

    /// The head shares the token embedding's matrix: the config says so for the RoPE families;
    /// for GPT-2 it is a graph option ([`crate::GraphOptions::tie_weights`]), untied as in the book.
    pub fn head_tied(&self) -> bool {
        match self {
            ModelConfig::Gpt2(_) => false,
            ModelConfig::Llama(config) => config.tie_word_embeddings,
            ModelConfig::Qwen3(config) => config.tie_word_embeddings,
        }
    }

    /// Ties or unties the head (a config that says whether its head is tied says it here too).
    pub fn set_head_tied(&mut self, tied: bool) {
        match self {
            ModelConfig::Gpt2(_) => {}
            ModelConfig::Llama(config) => config.tie_word_embeddings = tied,
            ModelConfig::Qwen3(config) => config.tie_word_embeddings = tied,
        }
    }

    /// The type the weights come in, for the families whose config says it.
    pub fn weight_dtype(&self) -> Option<WeightDtype> {
        match self {
            ModelConfig::Gpt2(_) => None,
            ModelConfig::Llama(config) => Some(config.dtype),
            ModelConfig::Qwen3(config) => Some(config.dtype),
        }
    }

    /// What the decoder builder reads: every shape and option of the family.
    pub fn architecture(&self) -> Architecture {
        Architecture::of(self)
    }

    pub fn parameter_count(&self) -> ParameterCount {
        self.architecture().parameter_count()
    }

    /// The parameters transformers counts for this config (`sum(p.numel() for p in
    /// model.parameters())`: a tied head once).
    pub fn parameters(&self) -> usize {
        let count = self.parameter_count();
        if self.head_tied() {
            count.total_tied()
        } else {
            count.total()
        }
    }
}

/// Fails on the first of `dims` that is 0.
pub(crate) fn check_positive(dims: &[(&str, usize)]) -> Result<()> {
    match dims.iter().find(|(_, value)| *value == 0) {
        Some((name, _)) => Err(Error::Config(format!("{name} must be at least 1"))),
        None => Ok(()),
    }
}

/// Every dim must fit the int64 shapes of ONNX and the i32-indexed kernels of runtimes.
pub(crate) fn check_dims_fit(dims: &[usize]) -> Result<()> {
    match dims.iter().any(|&d| d > i32::MAX as usize) {
        true => Err(Error::Config("a dimension exceeds 2^31".into())),
        false => Ok(()),
    }
}

/// The book's parameter accounting (chapter 4): what each part of the model holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterCount {
    pub token_embedding: usize,
    pub position_embedding: usize,
    pub per_block_attention: usize,
    pub per_block_feed_forward: usize,
    pub per_block_norms: usize,
    pub n_blocks: usize,
    pub final_norm: usize,
    pub output_head: usize,
}

impl ParameterCount {
    pub fn of(config: &GptConfig) -> ParameterCount {
        let e = config.emb_dim;
        let qkv_bias = if config.qkv_bias { 3 * e } else { 0 };
        ParameterCount {
            token_embedding: config.vocab_size * e,
            position_embedding: config.context_length * e,
            per_block_attention: 3 * e * e + qkv_bias + e * e + e,
            per_block_feed_forward: e * config.ffn_dim()
                + config.ffn_dim()
                + config.ffn_dim() * e
                + e,
            per_block_norms: 2 * 2 * e,
            n_blocks: config.n_layers,
            final_norm: 2 * e,
            output_head: e * config.vocab_size,
        }
    }

    pub fn per_block(&self) -> usize {
        self.per_block_attention + self.per_block_feed_forward + self.per_block_norms
    }

    pub fn total(&self) -> usize {
        self.token_embedding
            + self.position_embedding
            + self.n_blocks * self.per_block()
            + self.final_norm
            + self.output_head
    }

    /// With the output head sharing the token embedding's matrix, as GPT-2 does.
    pub fn total_tied(&self) -> usize {
        self.total() - self.output_head
    }

    /// Untied float32 size in the book's megabytes (2^20 bytes: 621.83 MB for GPT-2 small).
    pub fn megabytes_f32(&self) -> f64 {
        (self.total() * 4) as f64 / (1024.0 * 1024.0)
    }

    /// Bytes the weights take in `dtype`, the head counted once when `tied`.
    pub fn bytes(&self, tied: bool, dtype: WeightDtype) -> usize {
        let parameters = if tied { self.total_tied() } else { self.total() };
        parameters * dtype.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_matches_the_books_accounting() {
        let count = ParameterCount::of(&GptConfig::preset("gpt2-small").unwrap());
        assert_eq!(count.total(), 163_009_536);
        assert_eq!(count.total_tied(), 124_412_160);
        assert_eq!(format!("{:.2}", count.megabytes_f32()), "621.83");
    }

    #[test]
    fn presets_match_the_gpt2_family() {
        // Untied totals from the book's formula, and the parameter counts Hugging Face reports for
        // the released checkpoints (tied, with q/k/v bias): the 124M/355M/774M/1558M of the names.
        let expected = [
            ("gpt2-small", 163_009_536, 124_439_808),
            ("gpt2-medium", 406_212_608, 354_823_168),
            ("gpt2-large", 838_220_800, 774_030_080),
            ("gpt2-xl", 1_637_792_000, 1_557_611_200),
        ];
        for (name, total, released) in expected {
            let mut config = GptConfig::preset(name).unwrap();
            assert_eq!(ParameterCount::of(&config).total(), total, "{name}");
            config.qkv_bias = true;
            assert_eq!(ParameterCount::of(&config).total_tied(), released, "{name}");
        }
    }

    #[test]
    fn rejects_bad_configs() {
        let mut c = GptConfig::preset("gpt2-small").unwrap();
        c.n_heads = 7;
        assert!(c.validate().unwrap_err().to_string().contains("divisible"));
        c.n_heads = 0;
        assert!(c.validate().unwrap_err().to_string().contains("n_heads"));
        assert!(GptConfig::preset("gpt5").is_err());
        assert!(GptConfig::from_json("{\"vocab_size\": 3}").is_err());
    }

    #[test]
    fn json_round_trips_with_the_books_keys() {
        let c = GptConfig::preset("gpt2-small").unwrap();
        let text = c.to_json();
        assert!(text.contains("\"emb_dim\":768") && text.contains("\"qkv_bias\":false"));
        assert_eq!(GptConfig::from_json(&text).unwrap(), c);
    }

    /// The book's `LLAMA32_CONFIG_1B` and `QWEN_CONFIG_06_B` dicts, written as JSON, are the
    /// presets (their head tied, their norm eps the family's).
    #[test]
    fn the_books_dicts_are_the_presets() {
        let llama = r#"{"model_type": "llama", "vocab_size": 128256, "context_length": 131072,
            "emb_dim": 2048, "n_heads": 32, "n_layers": 16, "hidden_dim": 8192, "n_kv_groups": 8,
            "rope_base": 500000.0, "dtype": "bfloat16", "rope_freq": {"factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 8192}}"#;
        assert_eq!(
            ModelConfig::from_json(llama).unwrap(),
            ModelConfig::preset("llama3.2-1b").unwrap()
        );
        let qwen3 = r#"{"vocab_size": 151936, "context_length": 40960, "emb_dim": 1024,
            "n_heads": 16, "n_layers": 28, "hidden_dim": 3072, "head_dim": 128, "qk_norm": true,
            "n_kv_groups": 8, "rope_base": 1000000.0, "dtype": "bfloat16"}"#;
        let chosen = ModelConfig::from_json_as(qwen3, Family::Qwen3).unwrap();
        assert_eq!(chosen, ModelConfig::preset("qwen3-0.6b").unwrap());
    }

    #[test]
    fn every_family_round_trips_with_its_model_type_first() {
        for name in ModelConfig::preset_names() {
            let config = ModelConfig::preset(name).unwrap();
            let text = config.to_json();
            let family = config.family();
            match family {
                Family::Gpt2 => assert!(!text.contains("model_type"), "{text}"),
                _ => assert!(
                    text.starts_with(&format!("{{\"model_type\":\"{}\",", family.model_type())),
                    "{text}"
                ),
            }
            assert_eq!(ModelConfig::from_json(&text).unwrap(), config, "{name}");
            assert_eq!(ModelConfig::from_json_as(&text, family).unwrap(), config, "{name}");
        }
        // Untied, another eps and no frequency scaling survive too.
        let mut config = ModelConfig::preset("llama3.2-3b").unwrap();
        let ModelConfig::Llama(llama) = &mut config else { unreachable!() };
        (llama.rope_freq, llama.rms_norm_eps, llama.tie_word_embeddings) = (None, 1e-6, false);
        assert_eq!(ModelConfig::from_json(&config.to_json()).unwrap(), config);
    }

    #[test]
    fn gpt2_configs_may_say_their_model_type() {
        let plain = GptConfig::preset("gpt2-small").unwrap().to_json();
        let stated = plain.replacen('{', "{\"model_type\": \"gpt2\", ", 1);
        assert_eq!(GptConfig::from_json(&stated).unwrap(), GptConfig::from_json(&plain).unwrap());
        let llama = ModelConfig::preset("llama3.2-1b").unwrap().to_json();
        let err = GptConfig::from_json(&llama).unwrap_err().to_string();
        assert!(err.contains("a llama config"), "{err}");
    }

    #[test]
    fn keys_of_another_family_or_none_are_refused() {
        let qwen3 = ModelConfig::preset("qwen3-0.6b").unwrap().to_json();
        let llama = ModelConfig::preset("llama3.2-1b").unwrap().to_json();
        let refused = [
            (qwen3.replacen("\"head_dim\"", "\"head_size\"", 1), "unknown field `head_size`"),
            (
                qwen3.replacen('{', r#"{"rope_freq": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 64},"#, 1),
                "unknown field `rope_freq`",
            ),
            (llama.replacen('{', "{\"qkv_bias\": false,", 1), "unknown field `qkv_bias`"),
            (llama.replacen("\"factor\"", "\"scale\"", 1), "unknown field `scale`"),
            (llama.replace("\"llama\"", "\"mistral\""), "unknown model_type `mistral`"),
            (llama.replace("\"llama\"", "3"), "model_type must be a string"),
            (llama.replace("\"bfloat16\"", "\"bf16\""), "unknown variant `bf16`"),
            (llama.replacen(",\"dtype\":\"bfloat16\"", "", 1), "missing field `dtype`"),
        ];
        for (text, expected) in &refused {
            let err = ModelConfig::from_json(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} (wanted {expected})");
        }
        let err = ModelConfig::from_json_as(&llama, Family::Qwen3).unwrap_err().to_string();
        assert!(err.contains("model_type is llama, not qwen3"), "{err}");
    }

    #[test]
    fn family_constraints_are_checked() {
        let llama = |edit: fn(&mut LlamaConfig)| {
            let ModelConfig::Llama(mut c) = ModelConfig::preset("llama3.2-1b").unwrap() else {
                unreachable!()
            };
            edit(&mut c);
            ModelConfig::Llama(c).validate().map_err(|e| e.to_string())
        };
        let qwen3 = |edit: fn(&mut Qwen3Config)| {
            let ModelConfig::Qwen3(mut c) = ModelConfig::preset("qwen3-0.6b").unwrap() else {
                unreachable!()
            };
            edit(&mut c);
            ModelConfig::Qwen3(c).validate().map_err(|e| e.to_string())
        };
        let cases = [
            (llama(|c| c.n_kv_groups = 5), "divisible by n_kv_groups"),
            (llama(|c| c.n_kv_groups = 0), "n_kv_groups must be at least 1"),
            (llama(|c| c.n_heads = 3), "emb_dim (2048) must be divisible by n_heads (3)"),
            (llama(|c| (c.emb_dim, c.n_heads, c.n_kv_groups) = (96, 32, 8)), "must be even"),
            (llama(|c| c.rope_base = 0.0), "rope_base"),
            (llama(|c| c.rms_norm_eps = 0.0), "rms_norm_eps"),
            (llama(|c| c.hidden_dim = 0), "hidden_dim must be at least 1"),
            (
                llama(|c| c.rope_freq.as_mut().unwrap().high_freq_factor = 1.0),
                "must exceed low_freq_factor",
            ),
            (llama(|c| c.rope_freq.as_mut().unwrap().factor = f64::NAN), "factor"),
            (qwen3(|c| c.head_dim = 127), "must be even"),
            (qwen3(|c| c.n_kv_groups = 3), "divisible by n_kv_groups"),
            (qwen3(|c| c.vocab_size = 1 << 40), "exceeds 2^31"),
        ];
        for (result, expected) in cases {
            let err = result.expect_err(expected);
            assert!(err.contains(expected), "{err} (wanted {expected})");
        }
        // A head_dim of its own is Qwen3's: emb_dim need not be heads times head_dim.
        assert_eq!(qwen3(|c| c.emb_dim = 1000), Ok(()));
    }

    #[test]
    fn unknown_presets_name_every_family() {
        let err = ModelConfig::preset("llama2-7b").unwrap_err().to_string();
        assert!(
            err.contains("gpt2-small") && err.contains("llama3.2-1b") && err.contains("qwen3-1.7b"),
            "{err}"
        );
    }

    #[test]
    fn memory_per_dtype_counts_the_head_once_when_tied() {
        let config = ModelConfig::preset("qwen3-0.6b").unwrap();
        let count = config.parameter_count();
        assert_eq!(count.bytes(true, WeightDtype::BFloat16), 596_049_920 * 2);
        assert_eq!(count.bytes(true, WeightDtype::Float32), 596_049_920 * 4);
        assert_eq!(count.bytes(false, WeightDtype::Float16), 751_632_384 * 2);
    }
}
