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
//!
//! `gptc-manifest.json` lists every file gptc wrote (size, and a digest of the small ones): an
//! export replaces an existing folder only while it holds those files as written and nothing
//! else, so a file of the user's is never deleted with it.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use gptc_graph::file::{self, WeightLayout};
use gptc_graph::names;
use serde::{Deserialize, Serialize};
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

/// The list of the files gptc wrote in a folder (with their sizes and digests): what makes a
/// folder gptc's to replace, and what `check` expects to find.
pub const MANIFEST_FILE: &str = "gptc-manifest.json";

/// Files up to this size get a digest in the manifest; larger ones (the weights) their size
/// only: hashing gigabytes would add seconds to every export, and a same-size edit of a weights
/// file is not a user's work to protect.
const DIGEST_LIMIT: u64 = 64 << 20;

/// What gptc wrote in a folder, each file by its path inside the folder (`/`-separated).
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    about: String,
    written_by: String,
    files: BTreeMap<String, Written>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Written {
    bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    xxh3: Option<String>,
}

const MANIFEST_ABOUT: &str = "The files gptc wrote in this folder. `gptc export` replaces the \
    folder only while it holds these files, as written, and nothing else.";

/// Everything in `dir`, links not followed, as `/`-separated paths sorted by name (a folder
/// ends with `/` and comes before what it holds).
fn entries(dir: &Path) -> Result<Vec<(String, std::fs::Metadata)>> {
    let mut all = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((at, prefix)) = pending.pop() {
        let listing =
            std::fs::read_dir(&at).map_err(|error| Error::File { path: at.clone(), error })?;
        for entry in listing {
            let entry = entry.map_err(|error| Error::File { path: at.clone(), error })?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|error| Error::File { path: path.clone(), error })?;
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if meta.is_dir() {
                pending.push((path, format!("{name}/")));
                all.push((format!("{name}/"), meta));
            } else {
                all.push((name, meta));
            }
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(all)
}

/// What gptc knows of a file it wrote: its size, and its XXH3-64 digest up to [`DIGEST_LIMIT`].
fn written(path: &Path, bytes: u64) -> Result<Written> {
    use std::io::Read;
    if bytes > DIGEST_LIMIT {
        return Ok(Written { bytes, xxh3: None });
    }
    let io = |error| Error::File { path: path.to_path_buf(), error };
    // Through the input guard: a file swapped for a FIFO is refused, not waited on.
    let (mut file, _) = file::open_input(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        read += n as u64;
    }
    // A file that changed size since it was looked at is read as what it is now.
    Ok(Written { bytes: read, xxh3: Some(format!("{:016x}", hasher.digest())) })
}

/// Lists what is in `dir` (a folder gptc has just written) as its manifest.
fn manifest_of(dir: &Path) -> Result<Manifest> {
    let mut files = BTreeMap::new();
    for (name, meta) in entries(dir)? {
        if meta.is_file() {
            files.insert(name.clone(), written(&dir.join(&name), meta.len())?);
        }
    }
    let written_by = format!("gptc {}", env!("CARGO_PKG_VERSION"));
    Ok(Manifest { about: MANIFEST_ABOUT.into(), written_by, files })
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = file::read_text_input(&path)?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Model(format!("{}: not the list of files gptc writes ({e})", path.display()))
    })
}

/// Why the file or folder `name` in a folder is not one gptc wrote there, if it is not.
fn foreign(
    dir: &Path,
    manifest: &Manifest,
    name: &str,
    meta: &std::fs::Metadata,
) -> Result<Option<String>> {
    if let Some(folder) = name.strip_suffix('/') {
        let holds_written = manifest.files.keys().any(|f| f.starts_with(&format!("{folder}/")));
        return Ok((!holds_written).then(|| format!("`{name}` is a folder gptc did not write")));
    }
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_symlink() { "a symlink" } else { "not a regular file" };
        return Ok(Some(format!("`{name}` is {what}, which gptc did not write")));
    }
    if name == MANIFEST_FILE {
        return Ok(None);
    }
    let Some(wanted) = manifest.files.get(name) else {
        return Ok(Some(format!("`{name}` is a file gptc did not write")));
    };
    if meta.len() != wanted.bytes {
        let (found, wrote) = (meta.len(), wanted.bytes);
        return Ok(Some(format!("`{name}` is not as gptc wrote it ({found} bytes, not {wrote})")));
    }
    if wanted.xxh3.is_some() && written(&dir.join(name), meta.len())? != *wanted {
        return Ok(Some(format!("`{name}` is not as gptc wrote it (its contents changed)")));
    }
    Ok(None)
}

/// Checks that `dir`, an existing folder, may be replaced: it is empty, or it holds the files
/// its manifest lists, as gptc wrote them (some may be gone), and nothing else. Anything else
/// in it is the user's, and replacing the folder would delete it.
fn check_owned(dir: &Path) -> Result<()> {
    let entries = entries(dir)?;
    let refuse = |why: String| {
        Error::Usage(format!(
            "{}: {why}; a folder export replaces only a folder holding what gptc wrote there \
             and nothing else, so this one is left as it is",
            dir.display()
        ))
    };
    let Some((first, _)) = entries.iter().find(|(n, _)| !n.ends_with('/')).or(entries.first())
    else {
        return Ok(());
    };
    let manifest = match std::fs::symlink_metadata(dir.join(MANIFEST_FILE)) {
        Err(_) => {
            return Err(refuse(format!(
                "`{first}` is a file gptc did not write (no {MANIFEST_FILE} lists it)"
            )))
        }
        Ok(_) => read_manifest(dir).map_err(|e| refuse(format!("{e}")))?,
    };
    // Files first: a folder of the user's is named by the first file in it.
    let (folders, files): (Vec<_>, Vec<_>) = entries.iter().partition(|(n, _)| n.ends_with('/'));
    for (name, meta) in files.into_iter().chain(folders) {
        if let Some(why) = foreign(dir, &manifest, name, meta)? {
            return Err(refuse(why));
        }
    }
    Ok(())
}

/// Checks, before any work, that a folder may be written at `dir`, and returns where: links
/// (`-o LINK/`) are followed, so the folder is written at their target and they stay. The place
/// must be new, an empty folder, or a folder holding only what gptc wrote there (see
/// [`MANIFEST_FILE`]); a dangling link, a file, or a folder holding anything of the user's is
/// refused.
pub fn check_target(dir: &Path) -> Result<PathBuf> {
    let refuse = |why: String| Error::Usage(format!("{}: {why}", dir.display()));
    // `-o DIR/` and `-o DIR` name the same folder; the OS would follow a link named with the
    // trailing slash, which must be seen as a link here.
    let mut target: PathBuf = dir.components().collect();
    let mut followed = false;
    for _ in 0..40 {
        if target.file_name().is_none() {
            // `.` or `..`: the folder's own name is needed to write beside it.
            match std::fs::canonicalize(&target) {
                Ok(named) if named.file_name().is_some() => target = named,
                _ => return Err(refuse("not a folder name gptc can write".into())),
            }
        }
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&target)
                    .map_err(|error| Error::File { path: target.clone(), error })?;
                target = target.parent().unwrap_or(Path::new("")).join(link).components().collect();
                followed = true;
            }
            Ok(meta) if meta.is_dir() => {
                check_owned(&target)?;
                return Ok(target);
            }
            Ok(_) => {
                return Err(refuse(
                    "exists and is not a folder; a path ending in `/` names a folder".into(),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if followed {
                    let to = target.display();
                    return Err(refuse(format!("is a symlink to {to}, which does not exist")));
                }
                return Ok(target);
            }
            Err(error) => return Err(Error::File { path: target, error }),
        }
    }
    Err(refuse("too many levels of symbolic links".into()))
}

/// Writes `compiled` as a model folder at `dir` (links followed, see [`check_target`]).
/// Everything is written into a hidden folder beside it first, with the manifest; then, while
/// holding [`file::commit_lock`], the complete folder takes the old one's place in one step.
/// A failed or interrupted export leaves the old folder as it was and nothing beside it.
/// Returns the model file.
pub fn write_folder(
    dir: &Path,
    compiled: &Compiled,
    layout: WeightLayout,
    written: &dyn Fn(u64),
) -> Result<PathBuf> {
    let dir = check_target(dir)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| Error::File { path, error }
    };
    let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let staging = parent.join(format!(".{name}.tmp{}", std::process::id()));
    file::create_temporary_dir(&staging)?;
    let result = (|| {
        // Not `create_dir_all`: once a signal handler has removed the staging folder, nothing
        // may bring it back.
        std::fs::create_dir(staging.join("onnx")).map_err(io(&staging))?;
        file::write_model_as(&model_file(&staging), DATA_FILE, &compiled.model, layout, written)?;
        for (file_name, contents) in side_files(compiled)? {
            let path = staging.join(file_name);
            std::fs::write(&path, contents).map_err(io(&path))?;
        }
        let manifest = manifest_of(&staging)?;
        // A `Manifest` always serializes: its keys are strings.
        let text = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
        let path = staging.join(MANIFEST_FILE);
        std::fs::write(&path, text).map_err(io(&path))?;
        swap_in(&staging, &dir, &parent, &name)
    })();
    // After a swap the staging name holds the old folder; after a failure, the partial new one.
    let _ = std::fs::remove_dir_all(&staging);
    file::unregister_temporary(&staging);
    result.map(|()| model_file(&dir))
}

/// Puts the complete folder `staging` at `dir`, under the commit lock, so that a signal handler
/// sees the old folder or the new one, never a step between. On success the old folder (if
/// there was one) is at `staging`, a registered temporary, to be removed.
fn swap_in(staging: &Path, dir: &Path, parent: &Path, name: &str) -> Result<()> {
    let mut held = file::commit_lock();
    let io = |error| Error::File { path: dir.to_path_buf(), error };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            rename_new(staging, dir).map_err(io)?;
        }
        Err(error) => return Err(io(error)),
        Ok(_) => {
            // The folder was checked before the work; a file the user added since would be
            // deleted with the old folder.
            check_owned(dir)?;
            match exchange(staging, dir) {
                Ok(()) => {}
                Err(e) if exchange_unsupported(&e) => {
                    let retired = parent.join(format!(".{name}.old{}", std::process::id()));
                    std::fs::rename(dir, &retired).map_err(io)?;
                    if let Err(error) = std::fs::rename(staging, dir) {
                        let _ = std::fs::rename(&retired, dir);
                        return Err(io(error));
                    }
                    // Where an exchange would have left it: a registered temporary.
                    if std::fs::rename(&retired, staging).is_err() {
                        let _ = std::fs::remove_dir_all(&retired);
                    }
                }
                Err(error) => return Err(io(error)),
            }
        }
    }
    held.output_in_place();
    Ok(())
}

/// Swaps two paths in one step (Linux's `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    renameat2(a, b, libc::RENAME_EXCHANGE)
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Renames `from` to `to`, which must not exist (a folder made there since it was looked at is
/// not replaced, where the system can tell).
fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    match renameat2(from, to, libc::RENAME_NOREPLACE) {
        Err(e) if exchange_unsupported(&e) => {}
        other => return other,
    }
    std::fs::rename(from, to)
}

/// Whether a failed `renameat2` means that this system or file system lacks the flag (then two
/// renames do the work) rather than a real failure.
fn exchange_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || matches!(e.raw_os_error(), Some(code) if is_unsupported_code(code))
}

#[cfg(target_os = "linux")]
fn is_unsupported_code(code: i32) -> bool {
    code == libc::EINVAL || code == libc::ENOSYS || code == libc::EOPNOTSUPP
}

#[cfg(not(target_os = "linux"))]
fn is_unsupported_code(_: i32) -> bool {
    false
}

/// `renameat2(2)` through the system call itself: glibc has a wrapper only from 2.28 on.
#[cfg(target_os = "linux")]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call; the call reads them
    // and nothing else of this process's memory.
    let status = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Every side file of a folder and its contents.
fn side_files(compiled: &Compiled) -> Result<Vec<(&'static str, String)>> {
    let gptc_graph::ModelConfig::Gpt2(config) = &compiled.config else {
        return Err(unwritten_family(compiled.config.family()));
    };
    // A `Value` always serializes: its keys are strings.
    let pretty = |v: Value| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    let compact = |v: Value| serde_json::to_string(&v).unwrap_or_default();
    let mut files = vec![
        ("config.json", pretty(config_json(compiled, config))),
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

/// Side files are GPT-2's only, so far: a folder of another family is refused, not written
/// with GPT-2's.
pub fn unwritten_family(family: gptc_graph::Family) -> Error {
    Error::Usage(format!(
        "a model folder (-o DIR/) of a {} model is not written yet (its side files are GPT-2's): export a file (-o FILE.onnx)",
        family.model_type()
    ))
}

fn config_json(compiled: &Compiled, c: &gptc_graph::GptConfig) -> Value {
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
        let bpe = HfBpe::gpt2()?;
        let tokenizer = read("tokenizer.json")?;
        check_vocab(dir, "tokenizer.json", tokenizer.pointer("/model/vocab"), &bpe)?;
        let merges = tokenizer.pointer("/model/merges").and_then(Value::as_array);
        // A merge is "a b", or ["a", "b"] as newer writers of tokenizer.json spell it.
        let merges = merges.into_iter().flatten().map(|merge| match merge {
            Value::String(pair) => pair.clone(),
            Value::Array(pair) => {
                pair.iter().map(|p| p.as_str().unwrap_or("")).collect::<Vec<_>>().join(" ")
            }
            other => other.to_string(),
        });
        check_merges(dir, "tokenizer.json", merges, &bpe)?;
        expect("tokenizer.json", &tokenizer, "/added_tokens/0/id", json!(END_OF_TEXT))?;
        expect("tokenizer.json", &tokenizer, "/added_tokens/0/content", json!(END_OF_TEXT_TOKEN))?;
        let tokenizer_config = read("tokenizer_config.json")?;
        let eos = json!(END_OF_TEXT_TOKEN);
        expect("tokenizer_config.json", &tokenizer_config, "/eos_token", eos)?;
        check_vocab(dir, "vocab.json", Some(&read("vocab.json")?), &bpe)?;
        let path = dir.join("merges.txt");
        let text = file::read_text_input(&path)?;
        let mut lines = text.lines();
        // Readers skip the first line whatever it holds (transformers' GPT2Tokenizer does).
        match lines.next() {
            Some(header) if header.starts_with("#version") => {}
            first => {
                return Err(Error::Model(format!(
                    "{}: line 1 is `{}`, not the `#version` header",
                    path.display(),
                    first.unwrap_or_default()
                )))
            }
        }
        check_merges(dir, "merges.txt", lines.map(String::from), &bpe)?;
    }
    check_manifest(dir)
}

/// Checks that `vocab` (a side file's token -> id map) is GPT-2's vocabulary.
fn check_vocab(dir: &Path, file_name: &str, vocab: Option<&Value>, bpe: &HfBpe) -> Result<()> {
    let bad = |why: String| Error::Model(format!("{}: {why}", dir.join(file_name).display()));
    let vocab = vocab
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no vocabulary (an object of token -> id)".into()))?;
    if vocab.len() != bpe.vocab.len() {
        return Err(bad(format!("{} tokens, GPT-2's BPE has {}", vocab.len(), bpe.vocab.len())));
    }
    for (id, token) in bpe.vocab.iter().enumerate() {
        let found = vocab.get(token);
        if found.and_then(Value::as_u64) != Some(id as u64) {
            let found = found.map_or("missing".into(), |f| f.to_string());
            return Err(bad(format!("token {token:?} is {found}, GPT-2's BPE has {id}")));
        }
    }
    Ok(())
}

/// Checks that `merges` ("a b" each, in rank order) are GPT-2's merges.
fn check_merges(
    dir: &Path,
    file_name: &str,
    merges: impl Iterator<Item = String>,
    bpe: &HfBpe,
) -> Result<()> {
    let bad = |why: String| Error::Model(format!("{}: {why}", dir.join(file_name).display()));
    let mut count = 0;
    for (rank, merge) in merges.enumerate() {
        let wanted = bpe.merges.get(rank).map(|(l, r)| format!("{l} {r}"));
        if wanted.as_deref() != Some(merge.as_str()) {
            let wanted = wanted.map_or("no more merges".into(), |w| format!("`{w}`"));
            return Err(bad(format!("merge {} is `{merge}`, GPT-2's BPE has {wanted}", rank + 1)));
        }
        count += 1;
    }
    if count != bpe.merges.len() {
        return Err(bad(format!("{count} merges, GPT-2's BPE has {}", bpe.merges.len())));
    }
    Ok(())
}

/// Checks that every file the folder's manifest lists is there, as gptc wrote it.
fn check_manifest(dir: &Path) -> Result<()> {
    let manifest = read_manifest(dir)?;
    for (name, wanted) in &manifest.files {
        let inside = Path::new(name).components().all(|c| matches!(c, Component::Normal(_)));
        if !inside || name.is_empty() {
            return Err(Error::Model(format!(
                "{}: lists `{name}`, which is not a path inside the folder",
                dir.join(MANIFEST_FILE).display()
            )));
        }
        let path = dir.join(name);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|error| Error::File { path: path.clone(), error })?;
        if let Some(why) = foreign(dir, &manifest, name, &meta)? {
            return Err(Error::Model(format!(
                "{}: {why} ({MANIFEST_FILE} lists {} bytes)",
                dir.display(),
                wanted.bytes
            )));
        }
    }
    Ok(())
}
