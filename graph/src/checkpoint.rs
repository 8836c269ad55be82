//! Hugging Face GPT-2 checkpoints (`GPT2LMHeadModel` in safetensors) as gptc weights.
//!
//! HF names map onto gptc's almost one to one: gptc keeps HF's names and `[in, out]` Conv1D
//! layout, and only splits `attn.c_attn` (q, k and v side by side) into `q_proj`, `k_proj` and
//! `v_proj`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::config::{GptConfig, ParameterCount, LAYER_NORM_EPS};
use crate::names;
use crate::weights::{Init, NamedTensor, TensorMap, WeightSource};
use crate::{Error, Result};

fn bad(name: &str, reason: impl Into<String>) -> Error {
    Error::Weight { name: name.into(), reason: reason.into() }
}

/// The model config of an HF GPT-2 `config.json`. GPT-2 checkpoints have q/k/v biases.
pub fn hf_config(path: &Path) -> Result<GptConfig> {
    let text = crate::file::read_text_input(path)?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let field = |key: &str| {
        json.get(key)
            .and_then(serde_json::Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| Error::Config(format!("{}: no integer `{key}`", path.display())))
    };
    if let Some(eps) = json.get("layer_norm_epsilon").and_then(serde_json::Value::as_f64) {
        if (eps - LAYER_NORM_EPS as f64).abs() > 1e-12 {
            return Err(Error::Config(format!(
                "{}: layer_norm_epsilon {eps}; gptc's graph uses GPT-2's 1e-5",
                path.display()
            )));
        }
    }
    let config = GptConfig {
        vocab_size: field("vocab_size")?,
        context_length: field("n_positions")?,
        emb_dim: field("n_embd")?,
        n_heads: field("n_head")?,
        n_layers: field("n_layer")?,
        drop_rate: json.get("resid_pdrop").and_then(serde_json::Value::as_f64).unwrap_or(0.1),
        qkv_bias: true,
    };
    config.validate()?;
    Ok(config)
}

/// The safetensors files of a checkpoint folder: `model.safetensors`, or the shards its
/// `model.safetensors.index.json` lists.
pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(Error::Config(format!(
            "{}: neither model.safetensors nor model.safetensors.index.json",
            dir.display()
        )));
    }
    let text = crate::file::read_text_input(&index)?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", index.display())))?;
    let map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| Error::Config(format!("{}: no weight_map", index.display())))?;
    let files: BTreeSet<&str> = map.values().filter_map(serde_json::Value::as_str).collect();
    // Shards live in the checkpoint's folder, as external data lives beside its model: an
    // index may not reach elsewhere on the machine.
    let inside = |f: &str| {
        let components = Path::new(f).components();
        !f.is_empty()
            && components.into_iter().all(|c| matches!(c, std::path::Component::Normal(_)))
    };
    if let Some(outside) = files.iter().find(|f| !inside(f)) {
        return Err(Error::Config(format!(
            "{}: shard `{outside}` is not a file in the checkpoint's folder",
            index.display()
        )));
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

fn to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    let halves = |convert: fn(u16) -> f32| {
        bytes.chunks_exact(2).map(|b| convert(u16::from_le_bytes([b[0], b[1]]))).collect()
    };
    Ok(match dtype {
        Dtype::F32 => {
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        Dtype::F16 => halves(f16_to_f32),
        Dtype::BF16 => halves(|bits| f32::from_bits((bits as u32) << 16)),
        other => return Err(bad(name, format!("dtype {other:?}; expected F32, F16 or BF16"))),
    })
}

/// IEEE half to single precision, subnormals included.
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// GPT-2's attention mask buffers, stored by older exports; gptc has its own causal table.
fn is_mask_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// One checkpoint file, read by what it holds: the book's (a `torch.save` file, or safetensors
/// with the book's names) through [`crate::book`], else Hugging Face GPT-2 safetensors. With
/// `tie_weights` a book checkpoint's head must equal its token embedding, and is dropped.
pub fn read_file(path: &Path, config: &GptConfig, tie_weights: bool) -> Result<TensorMap> {
    if crate::book::is_book_file(path)? {
        return crate::book::read_gpt(path, config, tie_weights);
    }
    read_safetensors(std::slice::from_ref(&path.to_path_buf()), config)
}

/// Reads every tensor of the shards under gptc's names: `transformer.` dropped, `c_attn` split.
pub fn read_safetensors(paths: &[PathBuf], config: &GptConfig) -> Result<TensorMap> {
    let mut map = BTreeMap::new();
    // The most values a checkpoint of `config` can hold (biases and head counted whether the
    // config has them or not): weighed from the headers before a value is converted, so the
    // memory checked for `config` bounds what reading takes.
    let count = ParameterCount::of(&GptConfig { qkv_bias: true, ..config.clone() });
    let per_block =
        [count.per_block_attention, count.per_block_feed_forward, count.per_block_norms]
            .iter()
            .fold(0u64, |n, &part| n.saturating_add(part as u64));
    let most =
        [count.token_embedding, count.position_embedding, count.final_norm, count.output_head]
            .iter()
            .fold(per_block.saturating_mul(count.n_blocks as u64), |n, &part| {
                n.saturating_add(part as u64)
            });
    let mut held = 0u64;
    for path in paths {
        // Mapped: a header is read and checked before the body, which is read tensor by tensor.
        let bytes = crate::file::map_input(path)?;
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::NotSafetensors { path: path.clone(), reason: e.to_string() })?;
        let values = |view: &safetensors::tensor::TensorView| {
            view.shape().iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))
        };
        for (key, view) in tensors.iter() {
            let name = key.strip_prefix("transformer.").unwrap_or(key);
            if !is_mask_buffer(name) {
                held = held.saturating_add(values(&view));
            }
        }
        if held > most {
            return Err(Error::Io {
                path: path.clone(),
                error: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "holds {held} weight values, more than the {most} a model of this config has"
                    ),
                ),
            });
        }
        for (key, view) in tensors.tensors() {
            let name = key.strip_prefix("transformer.").unwrap_or(&key).to_string();
            if is_mask_buffer(&name) {
                continue;
            }
            let data = to_f32(&key, view.dtype(), view.data())?;
            if data.iter().any(|x| !x.is_finite()) {
                return Err(bad(&key, "holds NaN or infinite values"));
            }
            let shape = view.shape().to_vec();
            if let Some(prefix) = name.strip_suffix(".attn.c_attn.weight") {
                let e = config.emb_dim;
                if shape != [e, 3 * e] {
                    return Err(bad(&key, format!("shape {shape:?}, expected [{e}, {}]", 3 * e)));
                }
                for (part, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    let columns: Vec<f32> = data
                        .chunks_exact(3 * e)
                        .flat_map(|row| row[part * e..(part + 1) * e].iter().copied())
                        .collect();
                    map.insert(
                        format!("{prefix}.attn.{proj}.weight"),
                        NamedTensor { shape: vec![e, e], data: columns },
                    );
                }
            } else if let Some(prefix) = name.strip_suffix(".attn.c_attn.bias") {
                let e = config.emb_dim;
                if shape != [3 * e] {
                    return Err(bad(&key, format!("shape {shape:?}, expected [{}]", 3 * e)));
                }
                for (part, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    let slice = data[part * e..(part + 1) * e].to_vec();
                    map.insert(
                        format!("{prefix}.attn.{proj}.bias"),
                        NamedTensor { shape: vec![e], data: slice },
                    );
                }
            } else if map.insert(name.clone(), NamedTensor { shape, data }).is_some() {
                return Err(bad(&key, "appears twice"));
            }
        }
    }
    Ok(TensorMap(map))
}

/// A checkpoint as a weight source that remembers what the graph asked for, so tensors the
/// file has but the model does not use are reported by name.
pub struct Checkpoint {
    tensors: TensorMap,
    used: BTreeSet<String>,
}

impl Checkpoint {
    pub fn new(tensors: TensorMap) -> Checkpoint {
        Checkpoint { tensors, used: BTreeSet::new() }
    }

    /// Fails on the first tensor that the file holds and the graph did not use. `lm_head` is
    /// allowed to go unused: with tied weights the head is the token embedding.
    pub fn check_all_used(&self) -> Result<()> {
        let unused = |k: &&String| !self.used.contains(*k) && *k != names::OUTPUT_HEAD;
        match self.tensors.0.keys().find(unused) {
            Some(unused) => Err(Error::UnusedWeight { name: unused.clone() }),
            None => Ok(()),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.0.contains_key(name)
    }
}

impl WeightSource for Checkpoint {
    fn tensor(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        self.used.insert(name.to_string());
        self.tensors.tensor(name, shape, init)
    }
}

/// A Hugging Face GPT-2 folder (`config.json` and safetensors) read as config and weights.
pub fn read_hf_dir(dir: &Path) -> Result<(GptConfig, Checkpoint)> {
    let config = hf_config(&dir.join("config.json"))?;
    let tensors = read_safetensors(&shard_paths(dir)?, &config)?;
    Ok((config, Checkpoint::new(tensors)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_convert_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert_eq!(f16_to_f32(0x0000), 0.0);
    }
}
