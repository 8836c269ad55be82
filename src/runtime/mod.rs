//! The runtimes that execute an exported model, behind one small trait: the decoding driver
//! does not know which one it drives.

pub mod ort;
pub mod tract;

use ndarray::{Array2, Array3};

use crate::{Error, Result};

/// One run's inputs. `attention_mask` (over past and new slots) and `position_ids` are read
/// only by models with a KV cache.
#[derive(Clone, Copy)]
pub struct Step<'a> {
    pub input_ids: &'a Array2<i64>,
    pub attention_mask: Option<&'a Array2<i64>>,
    pub position_ids: Option<&'a Array2<i64>>,
}

impl<'a> Step<'a> {
    pub fn ids_only(input_ids: &'a Array2<i64>) -> Step<'a> {
        Step { input_ids, attention_mask: None, position_ids: None }
    }
}

pub trait Runtime {
    /// A short name for reports: `tract`, `ort-cpu`, ...
    fn name(&self) -> String;

    /// Whether the model keeps keys and values between runs.
    fn has_cache(&self) -> bool;

    /// Forgets the cache: the next run starts a new sequence (past length 0).
    fn reset(&mut self);

    /// Logits `[batch, new positions (or 1), vocab]`; with a cache, this run's keys and values
    /// join the cache.
    fn run(&mut self, step: &Step) -> Result<Array3<f32>>;
}

/// Which of gptc's inputs a model takes, and where: learnt from its input names, so a model
/// whose inputs gptc does not know is refused by name before anything runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputRole {
    InputIds,
    AttentionMask,
    PositionIds,
    PastKey(usize),
    PastValue(usize),
}

impl InputRole {
    pub fn of(name: &str) -> Result<InputRole> {
        let layer = |rest: &str, suffix: &str| rest.strip_suffix(suffix)?.parse::<usize>().ok();
        Ok(match name {
            "input_ids" => InputRole::InputIds,
            "attention_mask" => InputRole::AttentionMask,
            "position_ids" => InputRole::PositionIds,
            _ => {
                let rest = name.strip_prefix("past_key_values.").ok_or_else(|| unknown(name))?;
                if let Some(i) = layer(rest, ".key") {
                    InputRole::PastKey(i)
                } else if let Some(i) = layer(rest, ".value") {
                    InputRole::PastValue(i)
                } else {
                    return Err(unknown(name));
                }
            }
        })
    }
}

fn unknown(name: &str) -> Error {
    Error::Input(format!(
        "the model has an input `{name}` that gptc does not feed (it feeds input_ids, attention_mask, position_ids, past_key_values.N.key/value)"
    ))
}

/// Checks that a model's inputs form one of the two layouts gptc exports; returns whether it
/// has a KV cache, and its number of layers.
pub fn check_input_layout(roles: &[InputRole]) -> Result<(bool, usize)> {
    let has = |r: InputRole| roles.contains(&r);
    if !has(InputRole::InputIds) {
        return Err(Error::Input("the model has no `input_ids` input".into()));
    }
    let layers = roles.iter().filter(|r| matches!(r, InputRole::PastKey(_))).count();
    if roles.len() == 1 {
        return Ok((false, 0));
    }
    let mut missing = Vec::new();
    for (role, name) in [
        (InputRole::AttentionMask, "attention_mask".to_string()),
        (InputRole::PositionIds, "position_ids".to_string()),
    ] {
        if !has(role) {
            missing.push(name);
        }
    }
    for i in 0..layers.max(1) {
        if !has(InputRole::PastKey(i)) {
            missing.push(format!("past_key_values.{i}.key"));
        }
        if !has(InputRole::PastValue(i)) {
            missing.push(format!("past_key_values.{i}.value"));
        }
    }
    if !missing.is_empty() {
        return Err(Error::Input(format!(
            "the model's inputs are neither gptc's plain nor its KV-cache layout: missing {}",
            missing.join(", ")
        )));
    }
    Ok((true, layers))
}
