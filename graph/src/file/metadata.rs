//! What gptc records in a model's metadata: its config and graph options.

use crate::builder::{Precision, Quantization};
use crate::config::{GptConfig, ModelConfig};
use crate::gpt2::GraphOptions;
use crate::names::meta;
use crate::onnx::{ModelProto, StringStringEntryProto};
use crate::{Error, Result};

pub fn metadata<'m>(model: &'m ModelProto, key: &str) -> Option<&'m str> {
    lookup(&model.metadata_props, key)
}

pub(super) fn lookup<'m>(props: &'m [StringStringEntryProto], key: &str) -> Option<&'m str> {
    props.iter().find(|p| p.key == key).map(|p| p.value.as_str())
}

/// The GPT-2 config a gptc export recorded in its metadata, if this file is one (a file of
/// another family is an error here: see [`stored_model_config`]).
pub fn stored_config(model: &ModelProto) -> Option<Result<GptConfig>> {
    lookup(&model.metadata_props, meta::CONFIG).map(GptConfig::from_json)
}

/// The config, of any family, a gptc export recorded in its metadata, if this file is one.
pub fn stored_model_config(model: &ModelProto) -> Option<Result<ModelConfig>> {
    config_of(&model.metadata_props)
}

pub(super) fn config_of(props: &[StringStringEntryProto]) -> Option<Result<ModelConfig>> {
    lookup(props, meta::CONFIG).map(ModelConfig::from_json)
}

/// The graph options a gptc export recorded in its metadata, if this file is one.
pub fn stored_options(model: &ModelProto) -> Option<Result<GraphOptions>> {
    options_of(&model.metadata_props)
}

fn options_of(props: &[StringStringEntryProto]) -> Option<Result<GraphOptions>> {
    lookup(props, meta::KV_CACHE)?;
    let bad = |key: &'static str, value: &str| {
        Error::Config(format!("metadata `{key}` is `{value}`, which gptc does not write"))
    };
    let flag = |key: &'static str| match lookup(props, key) {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        other => Err(bad(key, other.unwrap_or_default())),
    };
    let precision = match lookup(props, meta::DTYPE) {
        Some(name) if name == Precision::F32.data_type().onnx_name() => Ok(Precision::F32),
        Some(name) if name == Precision::F16.data_type().onnx_name() => Ok(Precision::F16),
        other => Err(bad(meta::DTYPE, other.unwrap_or_default())),
    };
    // Files from before quantization was recorded are float.
    let quantization = match lookup(props, meta::QUANTIZATION) {
        None | Some("none") => Ok(Quantization::None),
        Some("int4") => match lookup(props, meta::QUANTIZATION_ACCURACY_LEVEL).map(str::parse) {
            Some(Ok(accuracy_level)) => Ok(Quantization::Int4 { accuracy_level }),
            other => Err(bad(meta::QUANTIZATION_ACCURACY_LEVEL, &format!("{other:?}"))),
        },
        Some(other) => Err(bad(meta::QUANTIZATION, other)),
    };
    Some((|| {
        Ok(GraphOptions {
            kv_cache: flag(meta::KV_CACHE)?,
            last_token_logits: flag(meta::LAST_TOKEN_LOGITS)?,
            tie_weights: flag(meta::TIE_WEIGHTS)?,
            precision: precision?,
            quantization: quantization?,
        })
    })())
}
