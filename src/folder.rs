//! A model folder that other runtimes load as it is: the ONNX file where each of them looks
//! (`onnx/model.onnx`), and the side files each of them reads, written from what gptc knows
//! (the config, GPT-2's BPE, end-of-text, the I/O layout):
//!
//! - `config.json`, `generation_config.json`: transformers' GPT-2 schema (optimum,
//!   transformers.js);
//! - `tokenizer.json`, `tokenizer_config.json`, `vocab.json`, `merges.txt`: GPT-2's byte-level
//!   BPE, built from the ranks tiktoken-rs ships;
//! - `genai_config.json`: onnxruntime-genai's generic `decoder`, whose default I/O names are
//!   optimum's layout (its `gpt2` type expects another cache layout).
//!
//! External data goes to `onnx/model.onnx_data`, the name transformers.js looks for.

use std::path::{Path, PathBuf};

use gptc_graph::file::{self, WeightLayout};
use gptc_graph::names;
use serde_json::{json, Value};

use crate::model::Compiled;
use crate::tokenizer::{HfBpe, END_OF_TEXT, GPT2_VOCAB_SIZE};
use crate::{Error, Result};

/// Where the model lives inside a folder.
pub const MODEL_FILE: &str = "onnx/model.onnx";
/// Its external data, when it has any.
pub const DATA_FILE: &str = "model.onnx_data";

const END_OF_TEXT_TOKEN: &str = "<|endoftext|>";

/// Whether `path` names a folder: it ends with `/`, or it is an existing folder.
pub fn is_folder(path: &Path) -> bool {
    path.as_os_str().to_string_lossy().ends_with('/') || path.is_dir()
}

/// The model file of a folder.
pub fn model_file(dir: &Path) -> PathBuf {
    dir.join(MODEL_FILE)
}

/// The model file that `path` names: itself, or a folder's model file.
pub fn model_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        model_file(path)
    } else {
        path.to_path_buf()
    }
}

/// Whether `dir` is a folder gptc wrote: its model file carries gptc's config.
fn is_gptc_folder(dir: &Path) -> bool {
    let Ok(bytes) = file::read_input(&model_file(dir), u64::MAX) else { return false };
    let bytes = prost::bytes::Bytes::from(bytes);
    file::stored_header(&model_file(dir), bytes).is_ok_and(|h| h.config.is_some())
}

/// Checks, before any work, that a folder may be written at `dir`: a new path, an empty folder,
/// or a folder gptc wrote (replaced whole). Anything else is the user's and is refused.
pub fn check_target(dir: &Path) -> Result<()> {
    let refuse = |why: &str| Error::Usage(format!("{}: {why}", dir.display()));
    match std::fs::symlink_metadata(dir) {
        Err(_) => Ok(()),
        Ok(meta) if !meta.is_dir() => {
            Err(refuse("exists and is not a folder; a path ending in `/` names a folder"))
        }
        Ok(_) => {
            let empty = std::fs::read_dir(dir)
                .map_err(|error| Error::File { path: dir.to_path_buf(), error })?
                .next()
                .is_none();
            if empty || is_gptc_folder(dir) {
                Ok(())
            } else {
                Err(refuse("is a folder that gptc did not write; it is left as it is"))
            }
        }
    }
}

/// Writes `compiled` as a model folder at `dir`. Everything is written into a hidden folder
/// beside it first; only a complete folder replaces the old one, so a failed export leaves
/// neither a half folder nor a changed old one. Returns the model file.
pub fn write_folder(
    dir: &Path,
    compiled: &Compiled,
    layout: WeightLayout,
    written: &dyn Fn(u64),
) -> Result<PathBuf> {
    check_target(dir)?;
    let dir = dir.components().collect::<PathBuf>();
    let name = dir.file_name().ok_or_else(|| {
        Error::Usage(format!("{}: not a folder name gptc can write", dir.display()))
    })?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let pid = std::process::id();
    let staging = parent.join(format!(".{}.tmp{pid}", name.to_string_lossy()));
    let retired = parent.join(format!(".{}.old{pid}", name.to_string_lossy()));
    file::register_temporary(&staging);
    let result = (|| {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| Error::File { path, error }
        };
        std::fs::create_dir_all(staging.join("onnx")).map_err(io(&staging))?;
        file::write_model_as(&model_file(&staging), DATA_FILE, &compiled.model, layout, written)?;
        for (file_name, contents) in side_files(compiled)? {
            let path = staging.join(file_name);
            std::fs::write(&path, contents).map_err(io(&path))?;
        }
        // The old folder moved aside is the user's: not a temporary that a signal handler may
        // remove (stopped between the two renames, it stays as `.NAME.oldPID`).
        if dir.exists() {
            std::fs::rename(&dir, &retired).map_err(io(&dir))?;
        }
        std::fs::rename(&staging, &dir).map_err(io(&dir))?;
        let _ = std::fs::remove_dir_all(&retired);
        Ok(model_file(&dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        // An old folder moved aside comes back.
        if retired.exists() && !dir.exists() {
            let _ = std::fs::rename(&retired, &dir);
        }
    }
    file::unregister_temporary(&staging);
    result
}

/// Every side file of a folder and its contents.
fn side_files(compiled: &Compiled) -> Result<Vec<(&'static str, String)>> {
    let config = &compiled.config;
    // A `Value` always serializes: its keys are strings.
    let pretty = |v: Value| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    let compact = |v: Value| serde_json::to_string(&v).unwrap_or_default();
    let mut files = vec![
        ("config.json", pretty(config_json(compiled))),
        ("generation_config.json", pretty(generation_config_json())),
        ("genai_config.json", pretty(genai_config_json(config))),
    ];
    // GPT-2's BPE covers ids up to 50256: a larger vocabulary has no text for its other ids.
    if config.vocab_size == GPT2_VOCAB_SIZE {
        let bpe = HfBpe::gpt2()?;
        files.push(("tokenizer.json", compact(tokenizer_json(&bpe))));
        files.push(("tokenizer_config.json", pretty(tokenizer_config_json(config))));
        files.push(("vocab.json", compact(Value::Object(vocab_json(&bpe)))));
        files.push(("merges.txt", merges_txt(&bpe)));
    }
    Ok(files)
}

fn config_json(compiled: &Compiled) -> Value {
    let c = &compiled.config;
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.context_length,
        "n_ctx": c.context_length,
        "n_embd": c.emb_dim,
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_inner": c.ffn_dim(),
        // GPT-2's name for GELU with the tanh approximation, which the graph computes.
        "activation_function": "gelu_new",
        "layer_norm_epsilon": gptc_graph::config::LAYER_NORM_EPS,
        "resid_pdrop": c.drop_rate,
        "embd_pdrop": c.drop_rate,
        "attn_pdrop": c.drop_rate,
        "initializer_range": 0.02,
        "bos_token_id": END_OF_TEXT,
        "eos_token_id": END_OF_TEXT,
        "use_cache": compiled.options.kv_cache,
        "tie_word_embeddings": compiled.options.tie_weights,
        "torch_dtype": match compiled.options.precision {
            gptc_graph::Precision::F32 => "float32",
            gptc_graph::Precision::F16 => "float16",
        },
        // transformers.js picks the file by this name (fp32: `onnx/model.onnx`, fp16 would be
        // `onnx/model_fp16.onnx`); the types come from the graph itself.
        "transformers.js_config": {
            "dtype": "fp32",
            "kv_cache_dtype": match compiled.options.precision {
                gptc_graph::Precision::F32 => "float32",
                gptc_graph::Precision::F16 => "float16",
            },
        },
    })
}

fn generation_config_json() -> Value {
    json!({ "bos_token_id": END_OF_TEXT, "eos_token_id": END_OF_TEXT, "do_sample": false })
}

fn genai_config_json(c: &gptc_graph::GptConfig) -> Value {
    use gptc_graph::names::KvPart;
    json!({
        "model": {
            "type": "decoder",
            "bos_token_id": END_OF_TEXT,
            "eos_token_id": END_OF_TEXT,
            "pad_token_id": END_OF_TEXT,
            "context_length": c.context_length,
            "vocab_size": c.vocab_size,
            "decoder": {
                "filename": MODEL_FILE,
                "session_options": { "log_id": "onnxruntime-genai", "provider_options": [] },
                "head_size": c.head_dim(),
                "hidden_size": c.emb_dim,
                "num_attention_heads": c.n_heads,
                "num_key_value_heads": c.n_heads,
                "num_hidden_layers": c.n_layers,
                "inputs": {
                    "input_ids": names::INPUT_IDS,
                    "attention_mask": names::ATTENTION_MASK,
                    "position_ids": names::POSITION_IDS,
                    "past_key_names": names::past("%d", KvPart::Key),
                    "past_value_names": names::past("%d", KvPart::Value),
                },
                "outputs": {
                    "logits": names::LOGITS,
                    "present_key_names": names::present("%d", KvPart::Key),
                    "present_value_names": names::present("%d", KvPart::Value),
                },
            },
        },
        "search": {
            "do_sample": false,
            "max_length": c.context_length,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": false,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    })
}

fn special_token(id: i64) -> Value {
    json!({
        "id": id, "content": END_OF_TEXT_TOKEN, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true,
    })
}

fn vocab_json(bpe: &HfBpe) -> serde_json::Map<String, Value> {
    bpe.vocab.iter().enumerate().map(|(id, token)| (token.clone(), json!(id))).collect()
}

fn merges_txt(bpe: &HfBpe) -> String {
    let mut text = String::from("#version: 0.2\n");
    for (left, right) in &bpe.merges {
        text.push_str(&format!("{left} {right}\n"));
    }
    text
}

fn tokenizer_json(bpe: &HfBpe) -> Value {
    let byte_level = |add_prefix_space: bool, trim_offsets: bool| {
        json!({
            "type": "ByteLevel", "add_prefix_space": add_prefix_space,
            "trim_offsets": trim_offsets, "use_regex": true,
        })
    };
    // Merges as "a b" strings: every reader, old or new, takes that form (no token has a space:
    // spaces are spelled U+0120).
    let merges: Vec<String> = bpe.merges.iter().map(|(l, r)| format!("{l} {r}")).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special_token(END_OF_TEXT)],
        "normalizer": null,
        "pre_tokenizer": byte_level(false, true),
        "post_processor": byte_level(true, false),
        "decoder": byte_level(true, true),
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab_json(bpe),
            "merges": merges,
        },
    })
}

fn tokenizer_config_json(c: &gptc_graph::GptConfig) -> Value {
    let mut special = special_token(END_OF_TEXT);
    if let Some(object) = special.as_object_mut() {
        object.remove("id");
    }
    json!({
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": END_OF_TEXT_TOKEN,
        "eos_token": END_OF_TEXT_TOKEN,
        "unk_token": END_OF_TEXT_TOKEN,
        "add_bos_token": false,
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": c.context_length,
        "added_tokens_decoder": { END_OF_TEXT.to_string(): special },
    })
}

/// Checks that a folder's side files agree with the graph's config (dims, vocabulary, end of
/// text, layer count, the model's place); names the first mismatch.
pub fn check_side_files(dir: &Path, config: &gptc_graph::GptConfig) -> Result<()> {
    let read = |name: &str| -> Result<Value> {
        let path = dir.join(name);
        let text = file::read_text_input(&path)?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Model(format!("{}: not JSON ({e})", path.display())))
    };
    let expect = |file_name: &str, json: &Value, pointer: &str, wanted: Value| {
        let found = json.pointer(pointer).cloned().unwrap_or(Value::Null);
        if found == wanted {
            Ok(())
        } else {
            Err(Error::Model(format!(
                "{}: {pointer} is {found}, but the graph has {wanted}",
                dir.join(file_name).display()
            )))
        }
    };
    let hf = read("config.json")?;
    for (pointer, wanted) in [
        ("/model_type", json!("gpt2")),
        ("/vocab_size", json!(config.vocab_size)),
        ("/n_positions", json!(config.context_length)),
        ("/n_embd", json!(config.emb_dim)),
        ("/n_layer", json!(config.n_layers)),
        ("/n_head", json!(config.n_heads)),
        ("/eos_token_id", json!(END_OF_TEXT)),
    ] {
        expect("config.json", &hf, pointer, wanted)?;
    }
    let generation = read("generation_config.json")?;
    expect("generation_config.json", &generation, "/eos_token_id", json!(END_OF_TEXT))?;
    let genai = read("genai_config.json")?;
    for (pointer, wanted) in [
        ("/model/type", json!("decoder")),
        ("/model/vocab_size", json!(config.vocab_size)),
        ("/model/context_length", json!(config.context_length)),
        ("/model/eos_token_id", json!(END_OF_TEXT)),
        ("/model/decoder/filename", json!(MODEL_FILE)),
        ("/model/decoder/head_size", json!(config.head_dim())),
        ("/model/decoder/hidden_size", json!(config.emb_dim)),
        ("/model/decoder/num_attention_heads", json!(config.n_heads)),
        ("/model/decoder/num_key_value_heads", json!(config.n_heads)),
        ("/model/decoder/num_hidden_layers", json!(config.n_layers)),
    ] {
        expect("genai_config.json", &genai, pointer, wanted)?;
    }
    if config.vocab_size == GPT2_VOCAB_SIZE {
        let tokenizer = read("tokenizer.json")?;
        let vocab = tokenizer.pointer("/model/vocab").and_then(Value::as_object);
        let size = vocab.map_or(0, |v| v.len());
        let wanted = json!(GPT2_VOCAB_SIZE);
        expect("tokenizer.json", &json!({ "vocab": size }), "/vocab", wanted)?;
        expect("tokenizer.json", &tokenizer, "/added_tokens/0/id", json!(END_OF_TEXT))?;
        expect("tokenizer.json", &tokenizer, "/added_tokens/0/content", json!(END_OF_TEXT_TOKEN))?;
        let tokenizer_config = read("tokenizer_config.json")?;
        let eos = json!(END_OF_TEXT_TOKEN);
        expect("tokenizer_config.json", &tokenizer_config, "/eos_token", eos)?;
    }
    Ok(())
}
