//! Human-readable reports: the book's parameter accounting, and what an ONNX file holds.

use std::collections::BTreeMap;
use std::fmt::Write;

use gptc_graph::onnx::{DataType, Dim, ModelProto, TensorProto, ValueInfoProto};
use gptc_graph::{names, GptConfig, ParameterCount};

/// `1234567` -> `1,234,567`
pub fn thousands(n: usize) -> String {
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
pub fn config_line(config: &GptConfig) -> String {
    format!(
        "config: vocab {} context {} emb {} heads {} layers {} drop {} qkv_bias {}\n",
        config.vocab_size,
        config.context_length,
        config.emb_dim,
        config.n_heads,
        config.n_layers,
        config.drop_rate,
        config.qkv_bias
    )
}

pub fn parameter_table(config: &GptConfig) -> String {
    let c = ParameterCount::of(config);
    let mut rows: Vec<(String, String)> = vec![
        ("token embedding (wte)".into(), thousands(c.token_embedding)),
        ("position embedding (wpe)".into(), thousands(c.position_embedding)),
        (format!("per block (x{})", c.n_blocks), String::new()),
        ("  attention".into(), thousands(c.per_block_attention)),
        ("  feed-forward".into(), thousands(c.per_block_feed_forward)),
        ("  layer norms".into(), thousands(c.per_block_norms)),
        ("  block total".into(), thousands(c.per_block())),
        (format!("all {} blocks", c.n_blocks), thousands(c.n_blocks * c.per_block())),
        ("final norm (ln_f)".into(), thousands(c.final_norm)),
        ("output head (lm_head)".into(), thousands(c.output_head)),
        ("total".into(), thousands(c.total())),
        ("total with weight tying".into(), thousands(c.total_tied())),
        ("size in float32".into(), format!("{:.2} MB", c.megabytes_f32())),
    ];
    rows.insert(0, ("part".into(), "parameters".into()));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in rows {
        let _ = writeln!(out, "{label:<width$}  {value:>value_width$}");
    }
    out
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

/// The weights of a model, and what each is: float initializers of rank >= 1 (scalars and
/// int64 shapes are constants of the graph's logic) and 4-bit blocks.
fn weight_tensors(model: &ModelProto) -> Vec<(&TensorProto, Part)> {
    let Some(graph) = &model.graph else { return Vec::new() };
    let float = [DataType::Float as i32, DataType::Float16 as i32];
    graph
        .initializer
        .iter()
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

/// How many weights a tensor holds (a 4-bit byte holds two).
fn values_of(t: &TensorProto, part: Part) -> usize {
    let elements = t.dims.iter().product::<i64>() as usize;
    if part == Part::Int4 {
        2 * elements
    } else {
        elements
    }
}

/// How many weight values (parameters) a model stores, 4-bit ones included, scales not.
pub fn weight_values(model: &ModelProto) -> usize {
    weight_tensors(model)
        .iter()
        .filter(|(_, part)| *part != Part::Scales)
        .map(|(t, part)| values_of(t, *part))
        .sum()
}

/// Bytes of each part: float weights, 4-bit weights, their scales.
fn part_bytes(model: &ModelProto) -> [(Part, u64); 3] {
    let mut bytes = [(Part::Float, 0u64), (Part::Int4, 0), (Part::Scales, 0)];
    for (t, part) in weight_tensors(model) {
        let elements = t.dims.iter().product::<i64>() as u64;
        let size = match DataType::try_from(t.data_type) {
            Ok(DataType::Float16) => 2,
            Ok(DataType::Uint8) => 1,
            _ => 4,
        };
        if let Some(entry) = bytes.iter_mut().find(|(p, _)| *p == part) {
            entry.1 += elements * size;
        }
    }
    bytes
}

/// The model at `path` as `inspect` reads it: through the one reader of model files (the input
/// guard, its header, its external data and the memory it needs checked before its body is
/// read).
pub fn read_model_file(path: &std::path::Path) -> crate::Result<ModelProto> {
    use crate::runtime::load::{ModelFile, Use};
    ModelFile::open(path, Use::Decode)?.decode()
}

/// Opset, inputs and outputs with their dims, node counts by op type, stored parameters.
pub fn file_report(model: &ModelProto) -> String {
    let mut out = String::new();
    for opset in &model.opset_import {
        let domain = if opset.domain.is_empty() { "ai.onnx" } else { &opset.domain };
        let _ = writeln!(out, "opset {domain} {}", opset.version);
    }
    let _ = writeln!(out, "producer {} {}", model.producer_name, model.producer_version);
    let Some(graph) = &model.graph else {
        return out;
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
    let values = weight_values(model);
    let _ = writeln!(out, "weights {} values in {} tensors", thousands(values), weights.len());
    let bytes = part_bytes(model);
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(163_009_536), "163,009,536");
    }

    #[test]
    fn table_shows_the_books_totals() {
        let table = parameter_table(&GptConfig::preset("gpt2-small").unwrap());
        assert!(table.contains("163,009,536"));
        assert!(table.contains("124,412,160"));
        assert!(table.contains("621.83 MB"));
    }
}
