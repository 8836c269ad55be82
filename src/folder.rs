//! A model folder that other runtimes load as it is: the ONNX file where each of them looks
//! (`onnx/model.onnx`), and the side files each of them reads, written from what gptc knows
//! (the config, the tokenizer, the special ids, the I/O layout):
//!
//! - `config.json`, `generation_config.json`: transformers' schema of the family (GPT-2's;
//!   `LlamaForCausalLM`'s and `Qwen3ForCausalLM`'s as the published checkpoints write them),
//!   read by optimum and transformers.js;
//! - GPT-2: `tokenizer.json`, `tokenizer_config.json`, `vocab.json`, `merges.txt`: GPT-2's
//!   byte-level BPE, built from the ranks tiktoken-rs ships. Llama and Qwen3: the tokenizer
//!   files of the checkpoint the model came from (`tokenizer.json`, `tokenizer_config.json`,
//!   `special_tokens_map.json`, those present), copied; a random-init model has none;
//! - `genai_config.json`: onnxruntime-genai's generic `decoder` for GPT-2, whose default I/O
//!   names are optimum's layout (its `gpt2` type expects another cache layout); its `llama` and
//!   `qwen3` types (what its model builder writes for those architectures) for the others, with
//!   the I/O names said.
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

use gptc_graph::onnx::ModelProto;
use gptc_graph::{GraphOptions, ModelConfig};

use crate::model::Compiled;
use crate::tokenizer::{
    self, HfBpe, SpecialIds, Tokenizer, TokenizerSources, END_OF_TEXT, GPT2_VOCAB_SIZE,
    TOKENIZER_JSON,
};
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

/// What a model folder is written from.
pub struct FolderModel<'a> {
    pub model: &'a ModelProto,
    pub config: &'a ModelConfig,
    pub options: GraphOptions,
    /// Where the tokenizer files come from, for the families other than GPT-2 (whose BPE gptc
    /// writes itself): `--tokenizer FILE`, or the checkpoint folder the weights came from.
    pub tokenizer: TokenizerSources<'a>,
}

/// Writes `compiled` as a model folder at `dir`; see [`write_model_folder`]. A compiled model
/// carries no tokenizer: a Llama or Qwen3 one gets no tokenizer files.
pub fn write_folder(
    dir: &Path,
    compiled: &Compiled,
    layout: WeightLayout,
    written: &dyn Fn(u64),
) -> Result<PathBuf> {
    let config = ModelConfig::from(&compiled.config);
    let model = FolderModel {
        model: &compiled.model,
        config: &config,
        options: compiled.options,
        tokenizer: TokenizerSources::default(),
    };
    write_model_folder(dir, &model, layout, written)
}

/// Writes a model folder at `dir` (links followed, see [`check_target`]).
/// Everything is written into a hidden folder beside it first, with the manifest; then, while
/// holding [`file::commit_lock`], the complete folder takes the old one's place in one step.
/// A failed or interrupted export leaves the old folder as it was and nothing beside it.
/// Returns the model file.
pub fn write_model_folder(
    dir: &Path,
    model: &FolderModel,
    layout: WeightLayout,
    written: &dyn Fn(u64),
) -> Result<PathBuf> {
    // The side files first: a tokenizer that does not fit the vocabulary is refused before the
    // weights are written.
    let side = side_files(model)?;
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
        file::write_model_as(&model_file(&staging), DATA_FILE, model.model, layout, written)?;
        for (file_name, contents) in &side {
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

// A `Value` always serializes: its keys are strings.
fn pretty(v: Value) -> String {
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

/// Every side file of a folder and its contents.
fn side_files(model: &FolderModel) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let files = match model.config {
        ModelConfig::Gpt2(config) => gpt2_side_files(config, model.options)?,
        _ => rope_side_files(model)?,
    };
    Ok(files.into_iter().map(|(name, text)| (name, text.into_bytes())).collect())
}

/// GPT-2's side files, as gptc has always written them.
fn gpt2_side_files(
    config: &gptc_graph::GptConfig,
    options: GraphOptions,
) -> Result<Vec<(&'static str, String)>> {
    let compact = |v: Value| serde_json::to_string(&v).unwrap_or_default();
    let mut files = vec![
        ("config.json", pretty(config_json(config, options))),
        ("generation_config.json", pretty(generation_config_json())),
        ("genai_config.json", pretty(gpt2_genai_config_json(config))),
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

fn config_json(c: &gptc_graph::GptConfig, options: GraphOptions) -> Value {
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
        "use_cache": options.kv_cache,
        "tie_word_embeddings": options.tie_weights,
        "torch_dtype": torch_dtype(options),
        "transformers.js_config": transformers_js_config(options),
    })
}

fn torch_dtype(options: GraphOptions) -> &'static str {
    match options.precision {
        gptc_graph::Precision::F32 => "float32",
        gptc_graph::Precision::F16 => "float16",
    }
}

/// transformers.js picks the file by this name (fp32: `onnx/model.onnx`, fp16 would be
/// `onnx/model_fp16.onnx`); the types come from the graph itself.
fn transformers_js_config(options: GraphOptions) -> Value {
    json!({ "dtype": "fp32", "kv_cache_dtype": torch_dtype(options) })
}

/// The side files of a Llama or Qwen3 folder: transformers' config of the family, the
/// generation config, onnxruntime-genai's config, and the tokenizer files of the source.
fn rope_side_files(model: &FolderModel) -> Result<Vec<(&'static str, String)>> {
    let config = model.config;
    let (tokenizer, special) =
        tokenizer::for_model(config.family(), config.vocab_size(), model.tokenizer)?;
    let mut files = vec![
        ("config.json", pretty(hf_config_json(config, model.options, &special))),
        ("generation_config.json", pretty(hf_generation_config_json(&special))),
        ("genai_config.json", pretty(family_genai_config_json(config, &special))),
    ];
    if let Some(tokenizer) = &tokenizer {
        // The file the tokenizer was read from, and its companions beside it.
        let Some(path) = tokenizer.file() else {
            return Ok(files);
        };
        files.push((TOKENIZER_JSON, file::read_text_input(path)?));
        let beside = path.parent().unwrap_or(Path::new("."));
        for name in TOKENIZER_COMPANIONS {
            let companion = beside.join(name);
            if companion.is_file() {
                files.push((name, file::read_text_input(&companion)?));
            }
        }
    }
    Ok(files)
}

/// The tokenizer files copied beside `tokenizer.json` when present.
const TOKENIZER_COMPANIONS: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// One id as a number, several as a list, none as null (transformers' forms).
fn ids_json(ids: &[i64]) -> Value {
    match ids {
        [] => Value::Null,
        [id] => json!(id),
        ids => json!(ids),
    }
}

/// The keys of a RoPE family's config.json that say its architecture (what `check` holds a
/// folder's config.json to); the others say ids, types and runtime options.
const HF_ARCHITECTURE_KEYS: [&str; 14] = [
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "tie_word_embeddings",
];

/// transformers' config.json of a Llama or Qwen3 model, in the form the published checkpoints
/// have (`rope_theta` and `rope_scaling`, which transformers 4 and 5 both read).
fn hf_config_json(config: &ModelConfig, options: GraphOptions, special: &SpecialIds) -> Value {
    let a = config.architecture();
    let tied = config.head_tied() || options.tie_weights;
    let mut json = json!({
        "model_type": a.family.model_type(),
        "vocab_size": a.vocab_size,
        "hidden_size": a.emb_dim,
        "num_hidden_layers": a.n_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_kv_heads,
        "head_dim": a.head_dim,
        "max_position_embeddings": a.context_length,
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": tied,
        "bos_token_id": special.bos,
        // The model's own end; generation_config.json lists every id that ends generation
        // (as Qwen3's published files do).
        "eos_token_id": special.eos.first(),
        "use_cache": options.kv_cache,
        "torch_dtype": torch_dtype(options),
        "transformers.js_config": transformers_js_config(options),
    });
    let extra = match config {
        ModelConfig::Llama(c) => json!({
            "architectures": ["LlamaForCausalLM"],
            "intermediate_size": c.hidden_dim,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_base,
            "rope_scaling": c.rope_freq.as_ref().map(|f| json!({
                "rope_type": "llama3",
                "factor": f.factor,
                "low_freq_factor": f.low_freq_factor,
                "high_freq_factor": f.high_freq_factor,
                "original_max_position_embeddings": f.original_context_length,
            })),
            "mlp_bias": false,
            "pretraining_tp": 1,
        }),
        ModelConfig::Qwen3(c) => json!({
            "architectures": ["Qwen3ForCausalLM"],
            "intermediate_size": c.hidden_dim,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_base,
            "rope_scaling": null,
            "use_sliding_window": false,
            "sliding_window": null,
            "max_window_layers": a.n_layers,
        }),
        ModelConfig::Gpt2(_) => json!({}),
    };
    if let (Some(json), Value::Object(extra)) = (json.as_object_mut(), extra) {
        json.extend(extra);
        if let Some(pad) = special.pad {
            json.insert("pad_token_id".into(), json!(pad));
        }
    }
    json
}

fn hf_generation_config_json(special: &SpecialIds) -> Value {
    let mut json = json!({
        "bos_token_id": special.bos,
        "eos_token_id": ids_json(&special.eos),
        "do_sample": false,
    });
    if let (Some(json), Some(pad)) = (json.as_object_mut(), special.pad) {
        json.insert("pad_token_id".into(), json!(pad));
    }
    json
}

/// onnxruntime-genai's config of a Llama or Qwen3 model: the type its model builder writes for
/// the architecture (`llama`, `qwen3`), the cache of `n_kv_groups` heads, gptc's I/O names.
fn family_genai_config_json(config: &ModelConfig, special: &SpecialIds) -> Value {
    let a = config.architecture();
    // genai needs ids here: a model without a tokenizer gets id 0, which it never stops at
    // (generation runs to max_length), and pads with the end id as its builder does.
    let eos = if special.eos.is_empty() { json!(0) } else { ids_json(&special.eos) };
    let pad = special.pad.or(special.eos.first().copied()).unwrap_or(0);
    genai_config_json(&a, a.family.model_type(), special.bos.unwrap_or(0), eos, pad)
}

/// onnxruntime-genai's config of any family's model, `model_type` as genai names it.
fn genai_config_json(
    a: &gptc_graph::architecture::Architecture,
    model_type: &str,
    bos: i64,
    eos: Value,
    pad: i64,
) -> Value {
    use gptc_graph::names::KvPart;
    json!({
        "model": {
            "type": model_type,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "context_length": a.context_length,
            "vocab_size": a.vocab_size,
            "decoder": {
                "filename": MODEL_FILE,
                "session_options": { "log_id": "onnxruntime-genai", "provider_options": [] },
                "head_size": a.head_dim,
                "hidden_size": a.emb_dim,
                "num_attention_heads": a.n_heads,
                "num_key_value_heads": a.n_kv_heads,
                "num_hidden_layers": a.n_layers,
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
            "max_length": a.context_length,
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

/// GPT-2's, as the `decoder` type genai runs it: end-of-text begins, ends and pads.
fn gpt2_genai_config_json(c: &gptc_graph::GptConfig) -> Value {
    let a = ModelConfig::Gpt2(c.clone()).architecture();
    genai_config_json(&a, "decoder", END_OF_TEXT, json!(END_OF_TEXT), END_OF_TEXT)
}

fn generation_config_json() -> Value {
    json!({ "bos_token_id": END_OF_TEXT, "eos_token_id": END_OF_TEXT, "do_sample": false })
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
/// text, layer count, the model's place; for Llama and Qwen3, every architecture key of
/// config.json, genai's decoder, and that tokenizer.json's ids fit the vocabulary); names the
/// first mismatch.
pub fn check_side_files(dir: &Path, config: impl Into<ModelConfig>) -> Result<()> {
    match config.into() {
        ModelConfig::Gpt2(config) => check_gpt2_side_files(dir, &config),
        config => check_rope_side_files(dir, &config),
    }
}

fn read_json(dir: &Path, name: &str) -> Result<Value> {
    let path = dir.join(name);
    let text = file::read_text_input(&path)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Model(format!("{}: not JSON ({e})", path.display())))
}

/// Checks that `found` holds `wanted`'s value at each of `pointers`.
fn expect_same(
    dir: &Path,
    file_name: &str,
    found: &Value,
    wanted: &Value,
    pointers: &[String],
) -> Result<()> {
    for pointer in pointers {
        let (found, wanted) = (found.pointer(pointer), wanted.pointer(pointer));
        let (found, wanted) =
            (found.cloned().unwrap_or(Value::Null), wanted.cloned().unwrap_or(Value::Null));
        if !same_json(&found, &wanted) {
            return Err(Error::Model(format!(
                "{}: {pointer} is {found}, but the graph has {wanted}",
                dir.join(file_name).display()
            )));
        }
    }
    Ok(())
}

/// Equal JSON, numbers compared as numbers (`1e-05` and `0.00001`, `10000` and `10000.0`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        (x, y) => x == y,
    }
}

fn check_rope_side_files(dir: &Path, config: &ModelConfig) -> Result<()> {
    let options = GraphOptions::default();
    let special = SpecialIds::default();
    let pointers = |keys: &[&str], prefix: &str| -> Vec<String> {
        keys.iter().map(|k| format!("{prefix}/{k}")).collect()
    };
    let hf = read_json(dir, "config.json")?;
    let wanted = hf_config_json(config, options, &special);
    // Not `tie_word_embeddings`: an export option ties a head the config leaves untied, and
    // the file's metadata keeps the config.
    let mut keys = HF_ARCHITECTURE_KEYS.to_vec();
    keys.retain(|k| *k != "tie_word_embeddings");
    expect_same(dir, "config.json", &hf, &wanted, &pointers(&keys, ""))?;
    let genai = read_json(dir, "genai_config.json")?;
    let wanted = family_genai_config_json(config, &special);
    let decoder = [
        "filename",
        "head_size",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "num_hidden_layers",
    ];
    let mut genai_pointers = pointers(&["type", "vocab_size", "context_length"], "/model");
    genai_pointers.extend(pointers(&decoder, "/model/decoder"));
    expect_same(dir, "genai_config.json", &genai, &wanted, &genai_pointers)?;
    read_json(dir, "generation_config.json")?;
    let tokenizer_path = dir.join(TOKENIZER_JSON);
    if tokenizer_path.exists() {
        Tokenizer::from_file(&tokenizer_path)?.check_fits(config.vocab_size())?;
    }
    check_manifest(dir)
}

fn check_gpt2_side_files(dir: &Path, config: &gptc_graph::GptConfig) -> Result<()> {
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
