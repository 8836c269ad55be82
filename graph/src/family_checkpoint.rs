//! Hugging Face `LlamaForCausalLM` and `Qwen3ForCausalLM` folders (config.json and
//! safetensors, sharded or not) as gptc configs and weights.
//!
//! gptc's graph names its weights as these checkpoints do and keeps their `[out, in]` layout,
//! so the tensors are taken as they are; only their type changes (bfloat16 and float16 to
//! float32). The config is read from transformers' keys, in both the `rope_theta` /
//! `rope_scaling` form of transformers 4 (the published checkpoints) and the
//! `rope_parameters` form transformers 5 writes.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::checkpoint::{shard_paths, Checkpoint};
use crate::config::{Family, ModelConfig, WeightDtype};
use crate::llama::{LlamaConfig, RopeFrequencyScaling};
use crate::qwen3::Qwen3Config;
use crate::weights::{NamedTensor, TensorMap};
use crate::{Error, Result};

/// The config of an HF Llama or Qwen3 `config.json`; `None` for another `model_type` (GPT-2's
/// folders have their own reader).
pub fn hf_config(path: &Path) -> Result<Option<ModelConfig>> {
    let text = crate::file::read_text_input(path)?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let fields = HfFields { json: &json, path };
    let family = match json.get("model_type").and_then(Value::as_str) {
        Some("llama") => Family::Llama,
        Some("qwen3") => Family::Qwen3,
        _ => return Ok(None),
    };
    let config = fields.config(family)?;
    config.validate().map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    Ok(Some(config))
}

/// Reads transformers' keys, each failure naming the file and the key.
struct HfFields<'a> {
    json: &'a Value,
    path: &'a Path,
}

impl HfFields<'_> {
    fn fail<T>(&self, message: String) -> Result<T> {
        Err(Error::Config(format!("{}: {message}", self.path.display())))
    }

    fn integer(&self, key: &str) -> Result<usize> {
        match self.json.get(key).and_then(Value::as_u64) {
            Some(value) => Ok(value as usize),
            None => self.fail(format!("no integer `{key}`")),
        }
    }

    fn optional_integer(&self, key: &str) -> Result<Option<usize>> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.integer(key).map(Some),
        }
    }

    fn number(&self, object: &Value, key: &str) -> Result<f64> {
        match object.get(key).and_then(Value::as_f64) {
            Some(value) => Ok(value),
            None => self.fail(format!("no number `{key}`")),
        }
    }

    fn flag(&self, key: &str) -> Result<bool> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(value)) => Ok(*value),
            Some(other) => self.fail(format!("`{key}` is {other}, not true or false")),
        }
    }

    /// Options gptc's graph does not have are refused by name, never ignored.
    fn refuse_if(&self, key: &str, set: bool, why: &str) -> Result<()> {
        match set {
            true => self.fail(format!("`{key}`: {why}")),
            false => Ok(()),
        }
    }

    fn config(&self, family: Family) -> Result<ModelConfig> {
        let emb_dim = self.integer("hidden_size")?;
        let n_heads = self.integer("num_attention_heads")?;
        if n_heads == 0 {
            return self.fail("num_attention_heads must be at least 1".into());
        }
        let n_kv_groups = self.optional_integer("num_key_value_heads")?.unwrap_or(n_heads);
        let head_dim = self.optional_integer("head_dim")?;
        self.refuse_if(
            "attention_bias",
            self.flag("attention_bias")?,
            "gptc's graph has no q/k/v/o biases",
        )?;
        self.refuse_if(
            "mlp_bias",
            self.flag("mlp_bias")?,
            "gptc's graph has no feed-forward biases",
        )?;
        self.refuse_if(
            "use_sliding_window",
            self.flag("use_sliding_window")?,
            "gptc's graph attends to the whole context",
        )?;
        match self.json.get("hidden_act").and_then(Value::as_str) {
            None | Some("silu") => {}
            Some(other) => {
                return self.fail(format!("hidden_act `{other}`; gptc's SwiGLU uses silu"))
            }
        }
        let (rope_base, rope_freq) = self.rope()?;
        let dtype = self.dtype()?;
        let tie_word_embeddings = self.flag("tie_word_embeddings")?;
        let rms_norm_eps = self.number(self.json, "rms_norm_eps")?;
        let (vocab_size, context_length) =
            (self.integer("vocab_size")?, self.integer("max_position_embeddings")?);
        let (n_layers, hidden_dim) =
            (self.integer("num_hidden_layers")?, self.integer("intermediate_size")?);
        Ok(match family {
            Family::Llama => {
                if let Some(head_dim) = head_dim.filter(|&d| d * n_heads != emb_dim) {
                    return self.fail(format!(
                        "head_dim {head_dim}: a Llama head is hidden_size / num_attention_heads ({})",
                        emb_dim / n_heads
                    ));
                }
                ModelConfig::Llama(LlamaConfig {
                    vocab_size,
                    context_length,
                    emb_dim,
                    n_heads,
                    n_layers,
                    hidden_dim,
                    n_kv_groups,
                    rope_base,
                    dtype,
                    rope_freq,
                    tie_word_embeddings,
                    rms_norm_eps,
                })
            }
            Family::Qwen3 => {
                self.refuse_if("rope_scaling", rope_freq.is_some(), "Qwen3 with scaled RoPE")?;
                ModelConfig::Qwen3(Qwen3Config {
                    vocab_size,
                    context_length,
                    emb_dim,
                    n_heads,
                    n_layers,
                    hidden_dim,
                    head_dim: head_dim.unwrap_or(emb_dim / n_heads),
                    // transformers' Qwen3 always normalizes each head's queries and keys.
                    qk_norm: true,
                    n_kv_groups,
                    rope_base,
                    dtype,
                    tie_word_embeddings,
                    rms_norm_eps,
                })
            }
            Family::Gpt2 => unreachable!("GPT-2 folders are read by crate::checkpoint"),
        })
    }

    /// RoPE's base and Llama 3's scaling: `rope_parameters` (transformers 5), or `rope_theta`
    /// and `rope_scaling` (transformers 4).
    fn rope(&self) -> Result<(f64, Option<RopeFrequencyScaling>)> {
        let (base, scaling) = match self.json.get("rope_parameters") {
            Some(parameters @ Value::Object(_)) => {
                (self.number(parameters, "rope_theta")?, Some(parameters))
            }
            _ => {
                let base = match self.json.get("rope_theta") {
                    None => 10_000.0,
                    Some(_) => self.number(self.json, "rope_theta")?,
                };
                (base, self.json.get("rope_scaling").filter(|s| !s.is_null()))
            }
        };
        let Some(scaling) = scaling else { return Ok((base, None)) };
        let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str);
        match kind {
            None | Some("default") => Ok((base, None)),
            Some("llama3") => {
                let original =
                    scaling.get("original_max_position_embeddings").and_then(Value::as_u64);
                let Some(original) = original else {
                    return self.fail(
                        "llama3 RoPE scaling without an integer `original_max_position_embeddings`"
                            .into(),
                    );
                };
                Ok((
                    base,
                    Some(RopeFrequencyScaling {
                        factor: self.number(scaling, "factor")?,
                        low_freq_factor: self.number(scaling, "low_freq_factor")?,
                        high_freq_factor: self.number(scaling, "high_freq_factor")?,
                        original_context_length: original as usize,
                    }),
                ))
            }
            Some(other) => {
                self.fail(format!("RoPE scaling `{other}`; gptc computes default and llama3"))
            }
        }
    }

    /// `dtype` (transformers 5) or `torch_dtype` (4); float32 when neither says.
    fn dtype(&self) -> Result<WeightDtype> {
        let stated = self.json.get("dtype").or_else(|| self.json.get("torch_dtype"));
        match stated.and_then(Value::as_str) {
            None => Ok(WeightDtype::Float32),
            Some(name) => match WeightDtype::ALL.into_iter().find(|d| d.name() == name) {
                Some(dtype) => Ok(dtype),
                None => self
                    .fail(format!("dtype `{name}`; weights come in bfloat16, float16 or float32")),
            },
        }
    }
}

/// Every tensor of the shards, under its own name, in float32. `rotary_emb.inv_freq` buffers
/// that older exports stored are skipped: gptc computes RoPE's frequencies from the config.
pub fn read_safetensors(paths: &[std::path::PathBuf]) -> Result<TensorMap> {
    let mut map = BTreeMap::new();
    for path in paths {
        let bytes = crate::file::read_input(path, u64::MAX)?;
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::NotSafetensors { path: path.clone(), reason: e.to_string() })?;
        for (name, view) in tensors.tensors() {
            if name.ends_with(".rotary_emb.inv_freq") {
                continue;
            }
            let bad = |reason: &str| Error::Weight { name: name.clone(), reason: reason.into() };
            let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                bad(&format!("dtype {:?}; expected F32, F16 or BF16", view.dtype()))
            })?;
            if data.iter().any(|x| !x.is_finite()) {
                return Err(bad("holds NaN or infinite values"));
            }
            let tensor = NamedTensor { shape: view.shape().to_vec(), data };
            if map.insert(name.clone(), tensor).is_some() {
                return Err(bad("appears twice"));
            }
        }
    }
    Ok(TensorMap(map))
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let halves = |convert: fn(u16) -> f32| {
        bytes.chunks_exact(2).map(|b| convert(u16::from_le_bytes([b[0], b[1]]))).collect()
    };
    Some(match dtype {
        Dtype::F32 => {
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        Dtype::F16 => halves(|bits| half::f16::from_bits(bits).to_f32()),
        Dtype::BF16 => halves(|bits| half::bf16::from_bits(bits).to_f32()),
        _ => return None,
    })
}

/// A Hugging Face Llama or Qwen3 folder read as config and weights; `None` when its
/// config.json is of another family.
pub fn read_hf_dir(dir: &Path) -> Result<Option<(ModelConfig, Checkpoint)>> {
    let Some(config) = hf_config(&dir.join("config.json"))? else { return Ok(None) };
    let tensors = read_safetensors(&shard_paths(dir)?)?;
    Ok(Some((config, Checkpoint::new(tensors))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ModelConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).unwrap();
        hf_config(&path)
    }

    /// Llama-3.2-1B's config.json as published (transformers 4's keys).
    const LLAMA_32_1B: &str = r#"{
      "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
      "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
      "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
      "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
      "pretraining_tp": 1, "rms_norm_eps": 1e-05,
      "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
      "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256}"#;

    /// Qwen3-0.6B's config.json as published.
    const QWEN3_06B: &str = r#"{
      "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
      "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
      "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
      "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
      "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000,
      "sliding_window": null, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
      "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false,
      "vocab_size": 151936}"#;

    #[test]
    fn published_configs_are_the_presets() {
        assert_eq!(parse(LLAMA_32_1B).unwrap(), Some(ModelConfig::preset("llama3.2-1b").unwrap()));
        assert_eq!(parse(QWEN3_06B).unwrap(), Some(ModelConfig::preset("qwen3-0.6b").unwrap()));
    }

    /// transformers 5 writes the RoPE settings as `rope_parameters`: the same config.
    #[test]
    fn transformers_5_rope_parameters_read_the_same() {
        let v5 = LLAMA_32_1B
            .replace(r#""rope_theta": 500000.0,"#, "")
            .replace("\"rope_scaling\"", "\"rope_parameters\"")
            .replace(
                r#""rope_type": "llama3"}"#,
                r#""rope_type": "llama3", "rope_theta": 500000.0}"#,
            )
            .replace("torch_dtype", "dtype");
        assert_eq!(parse(&v5).unwrap(), parse(LLAMA_32_1B).unwrap());
    }

    #[test]
    fn options_the_graph_lacks_are_refused_by_name() {
        let cases = [
            (LLAMA_32_1B.replace(r#""attention_bias": false"#, r#""attention_bias": true"#), "attention_bias"),
            (LLAMA_32_1B.replace(r#""mlp_bias": false"#, r#""mlp_bias": true"#), "mlp_bias"),
            (LLAMA_32_1B.replace("\"silu\"", "\"gelu\""), "hidden_act `gelu`"),
            (LLAMA_32_1B.replace("\"llama3\"", "\"yarn\""), "RoPE scaling `yarn`"),
            (LLAMA_32_1B.replace("\"head_dim\": 64", "\"head_dim\": 128"), "head_dim 128"),
            (LLAMA_32_1B.replace("\"bfloat16\"", "\"int8\""), "dtype `int8`"),
            (LLAMA_32_1B.replace("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 7"), "divisible"),
            (QWEN3_06B.replace(r#""use_sliding_window": false"#, r#""use_sliding_window": true"#), "use_sliding_window"),
            (
                QWEN3_06B.replace(r#""rope_scaling": null"#, r#""rope_scaling": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}"#),
                "Qwen3 with scaled RoPE",
            ),
            (QWEN3_06B.replace("\"hidden_size\": 1024,", ""), "no integer `hidden_size`"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(expected) && err.contains("config.json"),
                "{err} (wanted {expected})"
            );
        }
        assert_eq!(parse(r#"{"model_type": "gpt2"}"#).unwrap(), None);
    }

    #[test]
    fn brain_floats_and_halves_widen_exactly() {
        let bf16 =
            [0x3f80u16, 0xc040, 0x0001].iter().flat_map(|b| b.to_le_bytes()).collect::<Vec<_>>();
        assert_eq!(to_f32(Dtype::BF16, &bf16).unwrap()[..2], [1.0, -3.0]);
        assert_eq!(to_f32(Dtype::BF16, &bf16).unwrap()[2], f32::from_bits(1 << 16));
        let f16 = [0x3c00u16, 0xc000].iter().flat_map(|b| b.to_le_bytes()).collect::<Vec<_>>();
        assert_eq!(to_f32(Dtype::F16, &f16).unwrap(), [1.0, -2.0]);
        assert_eq!(to_f32(Dtype::I64, &[0; 8]), None);
    }
}
