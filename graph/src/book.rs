//! The checkpoints of *Build a Large Language Model (From Scratch)*: the names its models give
//! their tensors (chapter 4's `GPTModel`, the bonus `Llama3Model` and `Qwen3Model`), read from
//! a `torch.save` file or a safetensors file, and mapped onto the names and layouts gptc's
//! graphs take.
//!
//! Each model's names are data ([`BookTensor`] lists, made from the config's shapes), and one
//! function ([`map`]) holds a file to such a list: every name the list requires is there, every
//! name the file holds is in the list, every shape is the list's, and the values are finite.
//! Errors name the book's tensor. `GPTModel` maps onto gptc's GPT-2 graph (PyTorch's `[out, in]`
//! linear weights transposed to the graph's `[in, out]`); the Llama 3 and Qwen3 lists map onto
//! Hugging Face's names (`model.layers.{i}.self_attn.q_proj.weight`, ...) and keep PyTorch's
//! layout, which is also transformers': a graph of those families that names its weights as
//! Hugging Face does takes [`map`]'s output as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use crate::config::{GptConfig, ModelConfig};
use crate::names;
use crate::pth::{self, Dtype, TensorView};
use crate::weights::{NamedTensor, TensorMap};
use crate::{Error, Result};

/// The two names weight tying is about, in every family.
pub const TOKEN_EMBEDDING: &str = "tok_emb.weight";
pub const OUTPUT_HEAD: &str = "out_head.weight";

/// The book's three models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Gpt,
    Llama3,
    Qwen3,
}

impl Family {
    /// The `model_type` (`--family`) of gptc's graph for this model.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Gpt => "gpt2",
            Family::Llama3 => "llama",
            Family::Qwen3 => "qwen3",
        }
    }

    pub fn class_name(self) -> &'static str {
        match self {
            Family::Gpt => "GPTModel",
            Family::Llama3 => "Llama3Model",
            Family::Qwen3 => "Qwen3Model",
        }
    }

    /// Which model a checkpoint's names come from: the SwiGLU feed-forward (`ff.fc1`) marks
    /// the bonus models, whose norms are `weight` in Llama 3 and `scale` in Qwen3; chapter 4's
    /// `ff.layers` and `pos_emb` mark GPTModel.
    pub fn of_names<'n>(names: impl IntoIterator<Item = &'n str>) -> Option<Family> {
        let (mut swiglu, mut scale, mut gpt) = (false, false, false);
        for name in names {
            swiglu |= name.contains(".ff.fc1.");
            scale |= name.ends_with("norm1.scale") || name.ends_with("q_norm.scale");
            gpt |= name.contains(".ff.layers.") || name == "pos_emb.weight";
        }
        match (swiglu, scale, gpt) {
            (true, true, _) => Some(Family::Qwen3),
            (true, false, _) => Some(Family::Llama3),
            (false, _, true) => Some(Family::Gpt),
            _ => None,
        }
    }
}

/// A tensor a book model's state dict holds: its name, its shape there, and what it becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A weight the graph takes as `target`; `transpose` turns a 2-D `[out, in]` into `[in, out]`.
    Weight { target: String, transpose: bool },
    /// `MultiHeadAttention`'s `mask` buffer: accepted only if it is the causal mask, then
    /// dropped (the graph masks by itself). Optional: a non-persistent buffer is not saved.
    CausalMask,
}

fn weight(name: String, shape: Vec<usize>, target: String, transpose: bool) -> BookTensor {
    BookTensor { name, shape, role: Role::Weight { target, transpose } }
}

/// Chapter 4's `GPTModel` for `config`, onto gptc's GPT-2 names.
pub fn gpt_model(config: &GptConfig) -> Vec<BookTensor> {
    let (vocab, context, e, f) =
        (config.vocab_size, config.context_length, config.emb_dim, config.ffn_dim());
    let mut list = vec![
        weight(TOKEN_EMBEDDING.into(), vec![vocab, e], names::TOKEN_EMBEDDING.into(), false),
        weight("pos_emb.weight".into(), vec![context, e], names::POSITION_EMBEDDING.into(), false),
    ];
    for i in 0..config.n_layers {
        let (book, gptc) = (format!("trf_blocks.{i}"), format!("h.{i}"));
        list.push(BookTensor {
            name: format!("{book}.att.mask"),
            shape: vec![context, context],
            role: Role::CausalMask,
        });
        for (part, proj) in [("W_query", "q_proj"), ("W_key", "k_proj"), ("W_value", "v_proj")] {
            let (from, to) = (format!("{book}.att.{part}"), format!("{gptc}.attn.{proj}"));
            list.push(weight(format!("{from}.weight"), vec![e, e], format!("{to}.weight"), true));
            if config.qkv_bias {
                list.push(weight(format!("{from}.bias"), vec![e], format!("{to}.bias"), false));
            }
        }
        let linears = [
            ("att.out_proj", "attn.c_proj", e, e),
            ("ff.layers.0", "mlp.c_fc", f, e),
            ("ff.layers.2", "mlp.c_proj", e, f),
        ];
        for (from, to, out, inp) in linears {
            let (from, to) = (format!("{book}.{from}"), format!("{gptc}.{to}"));
            list.push(weight(
                format!("{from}.weight"),
                vec![out, inp],
                format!("{to}.weight"),
                true,
            ));
            list.push(weight(format!("{from}.bias"), vec![out], format!("{to}.bias"), false));
        }
        for (norm, ln) in [("norm1", "ln_1"), ("norm2", "ln_2")] {
            let (from, to) = (format!("{book}.{norm}"), format!("{gptc}.{ln}"));
            list.push(weight(format!("{from}.scale"), vec![e], format!("{to}.weight"), false));
            list.push(weight(format!("{from}.shift"), vec![e], format!("{to}.bias"), false));
        }
    }
    list.push(weight("final_norm.scale".into(), vec![e], "ln_f.weight".into(), false));
    list.push(weight("final_norm.shift".into(), vec![e], "ln_f.bias".into(), false));
    list.push(weight(OUTPUT_HEAD.into(), vec![vocab, e], names::OUTPUT_HEAD.into(), false));
    list
}

/// The shapes of the bonus models, from their configs: Llama 3's `head_dim` is
/// `emb_dim / n_heads`; Qwen3 states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwigluShape {
    pub vocab_size: usize,
    pub emb_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_groups: usize,
    pub head_dim: usize,
    pub hidden_dim: usize,
    /// Qwen3's per-head RMSNorm of queries and keys (`att.q_norm`, `att.k_norm`).
    pub qk_norm: bool,
    /// Qwen3's RMSNorm with a `shift` (bias), where a checkpoint has one.
    pub norm_shift: bool,
}

/// The book's `Llama3Model`, onto `LlamaForCausalLM`'s names.
pub fn llama3_model(shape: &SwigluShape) -> Vec<BookTensor> {
    swiglu_model(shape, Family::Llama3)
}

/// The book's `Qwen3Model`, onto `Qwen3ForCausalLM`'s names.
pub fn qwen3_model(shape: &SwigluShape) -> Vec<BookTensor> {
    swiglu_model(shape, Family::Qwen3)
}

fn swiglu_model(s: &SwigluShape, family: Family) -> Vec<BookTensor> {
    let qwen3 = family == Family::Qwen3;
    let (e, q, kv) = (s.emb_dim, s.n_heads * s.head_dim, s.n_kv_groups * s.head_dim);
    let same = |name: String, shape: Vec<usize>, target: String| weight(name, shape, target, false);
    // RMSNorm: `weight` in Llama 3 (torch.nn.RMSNorm); `scale` (and `shift`) in Qwen3.
    let norm = |list: &mut Vec<BookTensor>, from: String, to: String, dim: usize| {
        if qwen3 {
            list.push(same(format!("{from}.scale"), vec![dim], format!("{to}.weight")));
            if s.norm_shift {
                list.push(same(format!("{from}.shift"), vec![dim], format!("{to}.bias")));
            }
        } else {
            list.push(same(format!("{from}.weight"), vec![dim], format!("{to}.weight")));
        }
    };
    let mut list = vec![same(
        TOKEN_EMBEDDING.into(),
        vec![s.vocab_size, e],
        "model.embed_tokens.weight".into(),
    )];
    for i in 0..s.n_layers {
        let (book, hf) = (format!("trf_blocks.{i}"), format!("model.layers.{i}"));
        let linears = [
            ("att.W_query", "self_attn.q_proj", q, e),
            ("att.W_key", "self_attn.k_proj", kv, e),
            ("att.W_value", "self_attn.v_proj", kv, e),
            ("att.out_proj", "self_attn.o_proj", e, q),
            ("ff.fc1", "mlp.gate_proj", s.hidden_dim, e),
            ("ff.fc2", "mlp.up_proj", s.hidden_dim, e),
            ("ff.fc3", "mlp.down_proj", e, s.hidden_dim),
        ];
        for (from, to, out, inp) in linears {
            list.push(same(
                format!("{book}.{from}.weight"),
                vec![out, inp],
                format!("{hf}.{to}.weight"),
            ));
        }
        if qwen3 && s.qk_norm {
            norm(
                &mut list,
                format!("{book}.att.q_norm"),
                format!("{hf}.self_attn.q_norm"),
                s.head_dim,
            );
            norm(
                &mut list,
                format!("{book}.att.k_norm"),
                format!("{hf}.self_attn.k_norm"),
                s.head_dim,
            );
        }
        norm(&mut list, format!("{book}.norm1"), format!("{hf}.input_layernorm"), e);
        norm(&mut list, format!("{book}.norm2"), format!("{hf}.post_attention_layernorm"), e);
    }
    norm(&mut list, "final_norm".into(), "model.norm".into(), e);
    list.push(same(OUTPUT_HEAD.into(), vec![s.vocab_size, e], names::OUTPUT_HEAD.into()));
    list
}

/// Whether `path` holds one of the book's checkpoints: a `torch.save` file (zip or legacy), or
/// safetensors whose names are the book's. Reads at most the safetensors header; anything that
/// is not a regular file, or not recognised, is left to the Hugging Face reader and its errors.
pub fn is_book_file(path: &Path) -> Result<bool> {
    let io = |error| Error::Io { path: path.into(), error };
    // Looked at before it is opened: opening a FIFO waits for a writer.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Ok(false);
    }
    // Through the input guard: a path swapped for a FIFO since is refused, not waited on.
    let (mut file, _) = crate::file::open_input(path)?;
    let mut head = [0u8; 8];
    if file.read_exact(&mut head).is_err() {
        return Ok(false);
    }
    if pth::Format::sniff(&head).is_some() {
        return Ok(true);
    }
    // A safetensors header: its length, then JSON naming every tensor.
    let header_len = u64::from_le_bytes(head);
    if header_len > SAFETENSORS_HEADER_LIMIT || header_len > meta.len() - 8 {
        return Ok(false);
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let Ok(header) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&header)
    else {
        return Ok(false);
    };
    Ok(header.keys().any(|k| k == TOKEN_EMBEDDING || k.starts_with("trf_blocks.")))
}

/// The safetensors format's own bound on its header.
const SAFETENSORS_HEADER_LIMIT: u64 = 100_000_000;

/// Every tensor of a book checkpoint's bytes, from either format, as views.
pub fn read_views<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<TensorView<'a>>> {
    if pth::Format::sniff(bytes).is_some() {
        return pth::state_dict(path, bytes);
    }
    let tensors = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::NotSafetensors { path: path.into(), reason: e.to_string() })?;
    let mut views = Vec::new();
    for (name, view) in tensors.iter() {
        use safetensors::Dtype as S;
        let dtype = match view.dtype() {
            S::F32 => Dtype::F32,
            S::F16 => Dtype::F16,
            S::BF16 => Dtype::BF16,
            S::F64 => Dtype::F64,
            S::I64 => Dtype::I64,
            S::I32 => Dtype::I32,
            S::I16 => Dtype::I16,
            S::I8 => Dtype::I8,
            S::U8 => Dtype::U8,
            S::BOOL => Dtype::Bool,
            other => {
                return Err(Error::Weight {
                    name: name.to_string(),
                    reason: format!("dtype {other:?}; gptc reads float32, float16 and bfloat16"),
                })
            }
        };
        views.push(TensorView::contiguous(
            name.to_string(),
            dtype,
            view.shape().to_vec(),
            view.data(),
        )?);
    }
    Ok(views)
}

/// Holds `views` to the `expected` list and returns the graph's tensors. With `tie_head`, the
/// head may be absent, and if present must equal the token embedding: it is then dropped, the
/// graph reading the embedding in its place.
pub fn map(views: &[TensorView], expected: &[BookTensor], tie_head: bool) -> Result<TensorMap> {
    let by_name: BTreeMap<&str, &TensorView> = views.iter().map(|v| (v.name.as_str(), v)).collect();
    let wanted: BTreeSet<&str> = expected.iter().map(|t| t.name.as_str()).collect();
    let tied = |t: &BookTensor| tie_head && t.name == OUTPUT_HEAD;
    for t in expected {
        let optional = t.role == Role::CausalMask || tied(t);
        if !optional && !by_name.contains_key(t.name.as_str()) {
            return Err(Error::MissingWeight { name: t.name.clone() });
        }
    }
    if let Some(unused) = views.iter().find(|v| !wanted.contains(v.name.as_str())) {
        return Err(Error::UnusedWeight { name: unused.name.clone() });
    }
    for t in expected {
        if let Some(view) = by_name.get(t.name.as_str()) {
            if view.shape != t.shape {
                return Err(Error::WeightShape {
                    name: t.name.clone(),
                    found: view.shape.clone(),
                    expected: t.shape.clone(),
                });
            }
        }
    }
    let mut tensors = BTreeMap::new();
    for t in expected {
        let Some(view) = by_name.get(t.name.as_str()) else { continue };
        match &t.role {
            Role::CausalMask => check_causal_mask(view)?,
            Role::Weight { .. } if tied(t) => {
                let embedding = by_name.get(TOKEN_EMBEDDING).copied();
                let embedding = embedding
                    .ok_or_else(|| Error::MissingWeight { name: TOKEN_EMBEDDING.into() })?;
                if view.shape != embedding.shape
                    || weight_values(view)? != weight_values(embedding)?
                {
                    return Err(Error::Weight {
                        name: t.name.clone(),
                        reason: format!("differs from `{TOKEN_EMBEDDING}`: only a head equal to the token embedding can be tied"),
                    });
                }
            }
            Role::Weight { target, transpose } => {
                let data = weight_values(view)?;
                let tensor = match (transpose, view.shape.as_slice()) {
                    (true, &[rows, cols]) => {
                        NamedTensor { shape: vec![cols, rows], data: transposed(&data, rows, cols) }
                    }
                    _ => NamedTensor { shape: view.shape.clone(), data },
                };
                tensors.insert(target.clone(), tensor);
            }
        }
    }
    Ok(TensorMap(tensors))
}

fn weight_values(view: &TensorView) -> Result<Vec<f32>> {
    if !view.dtype.is_weight_float() {
        return Err(Error::Weight {
            name: view.name.clone(),
            reason: format!(
                "dtype {}; gptc reads float32, float16 and bfloat16 weights",
                view.dtype.name()
            ),
        });
    }
    let data = view.to_f32()?;
    if data.iter().any(|x| !x.is_finite()) {
        return Err(Error::Weight {
            name: view.name.clone(),
            reason: "holds NaN or infinite values".into(),
        });
    }
    Ok(data)
}

fn transposed(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| data[r * cols + c])).collect()
}

/// The book's `torch.triu(torch.ones(n, n), diagonal=1)`: one above the diagonal (the future,
/// hidden), zero on and below it, in any float type or bool.
fn check_causal_mask(view: &TensorView) -> Result<()> {
    let n = view.shape[0];
    let values = view.to_f32()?;
    let causal =
        values.iter().enumerate().all(|(k, &v)| v == if k % n > k / n { 1.0 } else { 0.0 });
    if causal {
        return Ok(());
    }
    Err(Error::Weight {
        name: view.name.clone(),
        reason: format!(
            "is not the causal mask of context_length {n} (the book's `torch.triu(torch.ones({n}, {n}), diagonal=1)`), and gptc's graph masks only causally"
        ),
    })
}

/// Chapter 4's GPTModel from a book checkpoint, as the tensors of gptc's GPT-2 graph for
/// `config`. With `tie_head` the head is the token embedding (see [`map`]).
pub fn read_gpt(path: &Path, config: &GptConfig, tie_head: bool) -> Result<TensorMap> {
    // Mapped, not read: the header is checked before the body is touched.
    let bytes = crate::file::map_input(path)?;
    let views = read_views(path, &bytes)?;
    match Family::of_names(views.iter().map(|v| v.name.as_str())) {
        Some(family @ (Family::Llama3 | Family::Qwen3)) => Err(Error::Checkpoint {
            path: path.into(),
            reason: format!(
                "holds the book's {} (`{}`, ...), and the config is GPT-2's: give the book's {} config (`--family {}`)",
                family.class_name(),
                views.iter().find(|v| v.name.contains(".ff.fc1.")).map_or("", |v| v.name.as_str()),
                family.class_name(),
                family.model_type(),
            ),
        }),
        _ => map(&views, &gpt_model(config), tie_head),
    }
}

/// The book's `Llama3Model` or `Qwen3Model` from a checkpoint, as the tensors of gptc's graph
/// for `config` (transformers' names). `tie`: whether the head is the token embedding (see
/// [`map`]); `None` lets the checkpoint say, tied when it holds no `out_head.weight`. Returns
/// the tensors and whether the head is tied.
pub fn read_swiglu(
    path: &Path,
    config: &ModelConfig,
    tie: Option<bool>,
) -> Result<(TensorMap, bool)> {
    let shape =
        |vocab_size, emb_dim, n_layers, n_heads, n_kv_groups, head_dim, hidden_dim| SwigluShape {
            vocab_size,
            emb_dim,
            n_layers,
            n_heads,
            n_kv_groups,
            head_dim,
            hidden_dim,
            qk_norm: false,
            norm_shift: false,
        };
    let (wanted, shape) = match config {
        ModelConfig::Llama(c) => (
            Family::Llama3,
            shape(
                c.vocab_size,
                c.emb_dim,
                c.n_layers,
                c.n_heads,
                c.n_kv_groups,
                c.head_dim(),
                c.hidden_dim,
            ),
        ),
        ModelConfig::Qwen3(c) => (
            Family::Qwen3,
            SwigluShape {
                qk_norm: c.qk_norm,
                ..shape(
                    c.vocab_size,
                    c.emb_dim,
                    c.n_layers,
                    c.n_heads,
                    c.n_kv_groups,
                    c.head_dim,
                    c.hidden_dim,
                )
            },
        ),
        ModelConfig::Gpt2(c) => {
            return Ok((read_gpt(path, c, tie.unwrap_or(false))?, tie.unwrap_or(false)))
        }
    };
    let bytes = crate::file::map_input(path)?;
    let views = read_views(path, &bytes)?;
    match Family::of_names(views.iter().map(|v| v.name.as_str())) {
        Some(found) if found != wanted => {
            return Err(Error::Checkpoint {
                path: path.into(),
                reason: format!(
                    "holds the book's {}, and the config is a {} one ({}): give the {} config (`--family {}`)",
                    found.class_name(),
                    config.family().model_type(),
                    wanted.class_name(),
                    found.class_name(),
                    found.model_type()
                ),
            })
        }
        _ => {}
    }
    let tied = tie.unwrap_or_else(|| !views.iter().any(|v| v.name == OUTPUT_HEAD));
    Ok((map(&views, &swiglu_model(&shape, wanted), tied)?, tied))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GptConfig {
        GptConfig {
            vocab_size: 10,
            context_length: 4,
            emb_dim: 8,
            n_heads: 2,
            n_layers: 2,
            drop_rate: 0.0,
            qkv_bias: true,
        }
    }

    #[test]
    fn gpt_names_cover_the_graph_once_each() {
        let list = gpt_model(&config());
        let targets: BTreeSet<&str> = list
            .iter()
            .filter_map(|t| match &t.role {
                Role::Weight { target, .. } => Some(target.as_str()),
                Role::CausalMask => None,
            })
            .collect();
        // 2 embeddings + per block (3 q/k/v x 2 + 3 linears x 2 + 2 norms x 2 = 16) + 2 + head
        assert_eq!(targets.len(), 2 + 2 * 16 + 2 + 1);
        assert_eq!(list.iter().filter(|t| t.role == Role::CausalMask).count(), 2);
        assert_eq!(Family::of_names(list.iter().map(|t| t.name.as_str())), Some(Family::Gpt));
    }

    #[test]
    fn the_causal_mask_is_checked_exactly() {
        let mask: Vec<f32> = (0..16).map(|k| if k % 4 > k / 4 { 1.0 } else { 0.0 }).collect();
        let bytes: Vec<u8> = mask.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::contiguous("m".into(), Dtype::F32, vec![4, 4], &bytes).unwrap();
        assert!(check_causal_mask(&view).is_ok());
        // The transposed (lower) triangle, and the book's mask with the diagonal hidden too.
        for wrong in [1usize, 5] {
            let mut bad = bytes.clone();
            bad[wrong * 4..wrong * 4 + 4].copy_from_slice(&(1.0 - mask[wrong]).to_le_bytes());
            let view = TensorView::contiguous("m".into(), Dtype::F32, vec![4, 4], &bad).unwrap();
            assert!(check_causal_mask(&view).unwrap_err().to_string().contains("causal mask"));
        }
    }

    #[test]
    fn transposes_out_in_to_in_out() {
        // [[1, 2, 3], [4, 5, 6]] -> [[1, 4], [2, 5], [3, 6]]
        assert_eq!(transposed(&[1., 2., 3., 4., 5., 6.], 2, 3), [1., 4., 2., 5., 3., 6.]);
    }
}
