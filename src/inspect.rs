//! Human-readable reports: the book's parameter accounting, and what an ONNX file holds.

use std::collections::BTreeMap;
use std::fmt::Write;

use gptc_graph::architecture::FeedForward;
use gptc_graph::onnx::{DataType, Dim, ModelProto, TensorProto, ValueInfoProto};
use gptc_graph::{names, ModelConfig, ParameterCount, WeightDtype};

use crate::{Error, Result};

/// `1234567` -> `1,234,567`
pub fn thousands(n: usize) -> String {
    thousands_wide(n as u128)
}

/// [`thousands`] for counts that may pass `usize`: those a file's dims or a config multiply up.
pub fn thousands_wide(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The config in one line.
pub fn config_line(config: &ModelConfig) -> String {
    match config {
        ModelConfig::Gpt2(config) => format!(
            "config: vocab {} context {} emb {} heads {} layers {} drop {} qkv_bias {}\n",
            config.vocab_size,
            config.context_length,
            config.emb_dim,
            config.n_heads,
            config.n_layers,
            config.drop_rate,
            config.qkv_bias
        ),
        other => {
            let a = other.architecture();
            let extra = match other {
                ModelConfig::Llama(c) => match &c.rope_freq {
                    Some(f) => format!(
                        " rope_freq (factor {}, low {}, high {}, from {})",
                        f.factor, f.low_freq_factor, f.high_freq_factor, f.original_context_length
                    ),
                    None => String::new(),
                },
                ModelConfig::Qwen3(c) => format!(" qk_norm {}", c.qk_norm),
                ModelConfig::Gpt2(_) => String::new(),
            };
            let (rope_base, eps, dtype) = match other {
                ModelConfig::Llama(c) => (c.rope_base, c.rms_norm_eps, c.dtype),
                ModelConfig::Qwen3(c) => (c.rope_base, c.rms_norm_eps, c.dtype),
                ModelConfig::Gpt2(_) => unreachable!("matched above"),
            };
            let hidden = match a.feed_forward {
                FeedForward::GeluTanh { hidden } | FeedForward::SwiGlu { hidden } => hidden,
            };
            format!(
                "config: {} vocab {} context {} emb {} heads {} kv_groups {} head_dim {} hidden {} layers {} rope_base {rope_base}{extra} rms_norm_eps {eps} dtype {} tied {}\n",
                other.family().model_type(),
                a.vocab_size,
                a.context_length,
                a.emb_dim,
                a.n_heads,
                a.n_kv_heads,
                a.head_dim,
                hidden,
                a.n_layers,
                dtype.name(),
                other.head_tied()
            )
        }
    }
}

/// Rows of a table, labels left and values right, aligned.
fn table(mut rows: Vec<(String, String)>) -> String {
    rows.insert(0, ("part".into(), "parameters".into()));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in rows {
        let _ = writeln!(out, "{label:<width$}  {value:>value_width$}");
    }
    out
}

/// The book's accounting as a table. Sums are taken in `u128`: each part of a valid config
/// fits `usize`, but many layers of a wide one add up past it. Llama's and Qwen3's end with
/// the count transformers gives (the head once when tied) and what the weights take in each
/// dtype.
pub fn parameter_table(config: &ModelConfig) -> String {
    let ModelConfig::Gpt2(gpt2) = config else { return rope_table(config) };
    let c = ParameterCount::of(gpt2);
    let wide = |n: usize| n as u128;
    let per_block =
        wide(c.per_block_attention) + wide(c.per_block_feed_forward) + wide(c.per_block_norms);
    let blocks = wide(c.n_blocks) * per_block;
    let tied = wide(c.token_embedding) + wide(c.position_embedding) + blocks + wide(c.final_norm);
    let total = tied + wide(c.output_head);
    table(vec![
        ("token embedding (wte)".into(), thousands(c.token_embedding)),
        ("position embedding (wpe)".into(), thousands(c.position_embedding)),
        (format!("per block (x{})", c.n_blocks), String::new()),
        ("  attention".into(), thousands(c.per_block_attention)),
        ("  feed-forward".into(), thousands(c.per_block_feed_forward)),
        ("  layer norms".into(), thousands(c.per_block_norms)),
        ("  block total".into(), thousands_wide(per_block)),
        (format!("all {} blocks", c.n_blocks), thousands_wide(blocks)),
        ("final norm (ln_f)".into(), thousands(c.final_norm)),
        ("output head (lm_head)".into(), thousands(c.output_head)),
        ("total".into(), thousands_wide(total)),
        ("total with weight tying".into(), thousands_wide(tied)),
        ("size in float32".into(), format!("{:.2} MB", (total * 4) as f64 / (1024.0 * 1024.0))),
    ])
}

fn rope_table(config: &ModelConfig) -> String {
    let arch = config.architecture();
    let c = arch.parameter_count();
    let names = arch.names;
    let wide = |n: usize| n as u128;
    let per_block =
        wide(c.per_block_attention) + wide(c.per_block_feed_forward) + wide(c.per_block_norms);
    let blocks = wide(c.n_blocks) * per_block;
    let tied = wide(c.token_embedding) + blocks + wide(c.final_norm);
    let total = tied + wide(c.output_head);
    let stored = if config.head_tied() { tied } else { total };
    let module = |name: &str| name.trim_end_matches(".weight").to_string();
    let mut rows: Vec<(String, String)> = vec![
        (
            format!("token embedding ({})", module(names.token_embedding)),
            thousands(c.token_embedding),
        ),
        (format!("per block (x{})", c.n_blocks), String::new()),
        ("  attention".into(), thousands(c.per_block_attention)),
        ("  feed-forward (SwiGLU)".into(), thousands(c.per_block_feed_forward)),
        ("  RMS norms".into(), thousands(c.per_block_norms)),
        ("  block total".into(), thousands_wide(per_block)),
        (format!("all {} blocks", c.n_blocks), thousands_wide(blocks)),
        (format!("final norm ({})", names.final_norm), thousands(c.final_norm)),
        (format!("output head ({})", module(names.output_head)), thousands(c.output_head)),
        ("total".into(), thousands_wide(total)),
        ("total with weight tying".into(), thousands_wide(tied)),
        (
            format!(
                "as transformers counts it ({})",
                if config.head_tied() { "tied head" } else { "untied head" }
            ),
            thousands_wide(stored),
        ),
    ];
    for dtype in WeightDtype::ALL {
        let bytes = stored * dtype.bytes() as u128;
        rows.push((
            format!("size in {}", dtype.name()),
            format!("{:.2} MB", bytes as f64 / (1024.0 * 1024.0)),
        ));
    }
    table(rows)
}

fn signature(v: &ValueInfoProto) -> String {
    match v.tensor_signature() {
        Some((dtype, dims)) => {
            let dims: Vec<String> =
                dims.iter().map(|d| d.as_ref().map_or("?".to_string(), Dim::to_string)).collect();
            format!("{} {} [{}]", v.name, dtype.onnx_name(), dims.join(", "))
        }
        None => format!("{} (not a tensor)", v.name),
    }
}

/// What a stored tensor is to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Weights in the float type.
    Float,
    /// 4-bit weights (`W_q4`): two a byte.
    Int4,
    /// The scales of 4-bit weights (`W_scales`): not parameters of the model.
    Scales,
}

/// The weights of a model, and what each is: float initializers of rank >= 1 (scalars, int64
/// shapes and the builder's constants are the graph's logic) and 4-bit blocks.
fn weight_tensors(model: &ModelProto) -> Vec<(&TensorProto, Part)> {
    let Some(graph) = &model.graph else { return Vec::new() };
    let float = [DataType::Float as i32, DataType::Float16 as i32];
    graph
        .initializer
        .iter()
        // The builder's constants (`const.N`: RoPE's frequencies among them) are the graph's
        // arithmetic, computed from the config, not parameters.
        .filter(|t| !t.name.starts_with("const."))
        .filter_map(|t| {
            let part = if t.name.ends_with(names::INT4_BLOCKS_SUFFIX) {
                Part::Int4
            } else if t.name.ends_with(names::INT4_SCALES_SUFFIX) {
                Part::Scales
            } else if float.contains(&t.data_type) && !t.dims.is_empty() {
                Part::Float
            } else {
                return None;
            };
            Some((t, part))
        })
        .collect()
}

/// How many elements a tensor's dims hold, counted in `u128` (a file's dims are any `i64`s, and
/// two of them multiply past `u64`); an error for a negative dim.
fn elements_of(t: &TensorProto) -> Result<u128> {
    let count = t.dims.iter().try_fold(1u128, |n, &d| n.checked_mul(u128::try_from(d).ok()?));
    count.ok_or_else(|| {
        let problem = match t.dims.iter().any(|&d| d < 0) {
            true => "a negative dim",
            false => "more values than u128 counts",
        };
        Error::Model(format!("tensor `{}` has dims {:?}: {problem}", t.name, t.dims))
    })
}

fn too_many(what: &str) -> Error {
    Error::Model(format!("the model's tensors hold more {what} than u128 counts"))
}

/// How many weight values (parameters) a model stores, 4-bit ones included (a byte holds
/// two), scales not.
pub fn weight_values(model: &ModelProto) -> Result<u128> {
    let mut total = 0u128;
    for (t, part) in weight_tensors(model) {
        let per_element = match part {
            Part::Scales => continue,
            Part::Int4 => 2,
            Part::Float => 1,
        };
        let values = elements_of(t)?.checked_mul(per_element);
        total = values.and_then(|v| total.checked_add(v)).ok_or_else(|| too_many("values"))?;
    }
    Ok(total)
}

/// Bytes of each part: float weights, 4-bit weights, their scales.
fn part_bytes(model: &ModelProto) -> Result<[(Part, u128); 3]> {
    let mut bytes = [(Part::Float, 0u128), (Part::Int4, 0), (Part::Scales, 0)];
    for (t, part) in weight_tensors(model) {
        let size = match DataType::try_from(t.data_type) {
            Ok(DataType::Float16) => 2,
            Ok(DataType::Uint8) => 1,
            _ => 4,
        };
        let tensor = elements_of(t)?.checked_mul(size);
        if let Some(entry) = bytes.iter_mut().find(|(p, _)| *p == part) {
            entry.1 =
                tensor.and_then(|b| entry.1.checked_add(b)).ok_or_else(|| too_many("bytes"))?;
        }
    }
    Ok(bytes)
}

/// The model at `path` as `inspect` reads it: through the one reader of model files (the input
/// guard, its header, its external data and the memory it needs checked before its body is
/// read).
pub fn read_model_file(path: &std::path::Path) -> Result<ModelProto> {
    use crate::runtime::load::{ModelFile, Use};
    ModelFile::open(path, Use::Decode)?.decode()
}

/// Opset, inputs and outputs with their dims, node counts by op type, stored parameters; an
/// error when a tensor's dims are no count of values (a negative dim, or past `u128`).
pub fn file_report(model: &ModelProto) -> Result<String> {
    let mut out = String::new();
    for opset in &model.opset_import {
        let domain = if opset.domain.is_empty() { "ai.onnx" } else { &opset.domain };
        let _ = writeln!(out, "opset {domain} {}", opset.version);
    }
    let _ = writeln!(out, "producer {} {}", model.producer_name, model.producer_version);
    let Some(graph) = &model.graph else {
        return Ok(out);
    };
    for input in &graph.input {
        let _ = writeln!(out, "input  {}", signature(input));
    }
    for output in &graph.output {
        let _ = writeln!(out, "output {}", signature(output));
    }
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for node in &graph.node {
        *ops.entry(&node.op_type).or_default() += 1;
    }
    let _ = writeln!(out, "nodes  {}", graph.node.len());
    for (op, count) in ops {
        let _ = writeln!(out, "  {op:<20} {count:>5}");
    }
    let weights = weight_tensors(model);
    let values = weight_values(model)?;
    let _ = writeln!(out, "weights {} values in {} tensors", thousands_wide(values), weights.len());
    let bytes = part_bytes(model)?;
    if bytes.iter().any(|&(part, b)| part != Part::Float && b > 0) {
        for (part, b) in bytes {
            let label = match part {
                Part::Float => "float (embeddings, LayerNorm, biases)",
                Part::Int4 => "4-bit weights (projections, head)",
                Part::Scales => "4-bit scales",
            };
            let _ = writeln!(out, "  {label:<38} {:>10.2} MB", b as f64 / 1e6);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptc_graph::GptConfig;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(163_009_536), "163,009,536");
    }

    fn small_model() -> ModelProto {
        let config = GptConfig {
            vocab_size: 50,
            context_length: 8,
            emb_dim: 8,
            n_heads: 2,
            n_layers: 1,
            drop_rate: 0.0,
            qkv_bias: false,
        };
        let mut init = gptc_graph::RandomInit { seed: 1 };
        gptc_graph::build_model(&config, Default::default(), &mut init, Some(1)).unwrap()
    }

    fn set_dims(model: &mut ModelProto, name: &str, dims: Vec<i64>) {
        let graph = model.graph.as_mut().unwrap();
        graph.initializer.iter_mut().find(|t| t.name == name).unwrap().dims = dims;
    }

    #[test]
    fn counts_of_huge_dims_are_exact_and_impossible_dims_are_refused() {
        let mut model = small_model();
        let before = weight_values(&model).unwrap();
        // wte [50, 8] becomes [2^63 - 1, 2^63 - 1]: past u64, within u128.
        set_dims(&mut model, names::TOKEN_EMBEDDING, vec![i64::MAX, i64::MAX]);
        let huge = (i64::MAX as u128) * (i64::MAX as u128);
        assert_eq!(weight_values(&model).unwrap(), before - 400 + huge);
        let report = file_report(&model).unwrap();
        let expected = format!("weights {} values", thousands_wide(before - 400 + huge));
        assert!(report.contains(&expected), "{report}");

        set_dims(&mut model, names::TOKEN_EMBEDDING, vec![i64::MAX, i64::MAX, i64::MAX]);
        let err = file_report(&model).unwrap_err().to_string();
        assert!(err.contains("wte.weight") && err.contains("u128"), "{err}");
        set_dims(&mut model, names::TOKEN_EMBEDDING, vec![-50, -8]);
        let err = file_report(&model).unwrap_err().to_string();
        assert!(err.contains("wte.weight") && err.contains("negative"), "{err}");
    }

    #[test]
    fn many_layers_of_a_wide_config_are_counted_past_usize() {
        let config = GptConfig {
            vocab_size: 50257,
            context_length: 1024,
            emb_dim: 1 << 28,
            n_heads: 1,
            n_layers: 1000,
            drop_rate: 0.0,
            qkv_bias: false,
        };
        let e = 1u128 << 28;
        let blocks = 1000 * (12 * e * e + 10 * e);
        let total = 50257 * e + 1024 * e + blocks + 2 * e + e * 50257;
        let table = parameter_table(&ModelConfig::from(config));
        assert!(table.contains(&thousands_wide(blocks)), "{table}");
        assert!(table.contains(&thousands_wide(total)), "{table}");
        assert!(table.contains(&thousands_wide(total - e * 50257)), "{table}");
    }

    #[test]
    fn table_shows_the_books_totals() {
        let table = parameter_table(&ModelConfig::preset("gpt2-small").unwrap());
        assert!(table.contains("163,009,536"));
        assert!(table.contains("124,412,160"));
        assert!(table.contains("621.83 MB"));
    }
}
