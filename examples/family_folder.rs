//! A Llama or Qwen3 model folder through the library, for scripts/loaders.py and
//! scripts/optimum_check.py while gptc's CLI learns the families: the two commands those scripts
//! type, with gptc's arguments, for a Hugging Face checkpoint folder.
//!
//! ```text
//! cargo run --release --example family_folder -- export --weights HF_DIR -o OUT/
//! cargo run --release --example family_folder -- generate --model OUT --ids 1,2,3 --json \
//!     --max-new-tokens 12
//! cargo run --release --example family_folder -- check OUT
//! ```
//!
//! `export` writes the KV-cache graph of the checkpoint's weights with [`folder::write_model_folder`],
//! its tokenizer files copied from the checkpoint; `generate` prints gptc's greedy ids on tract
//! as `gptc generate --json` does (one JSON object per prompt; `--ids` once per prompt).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gptc::folder::{self, FolderModel};
use gptc::generate::{generate, Next};
use gptc::runtime::tract::TractRuntime;
use gptc::sampling::argmax;
use gptc::tokenizer::{parse_ids, TokenizerSources};
use gptc_graph::family_checkpoint::read_hf_dir;
use gptc_graph::file::WeightLayout;
use gptc_graph::{build_model, GraphOptions};

fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn export(args: &[String]) -> Result<()> {
    let weights = PathBuf::from(value(args, "--weights").context("--weights HF_DIR")?);
    let out = PathBuf::from(value(args, "-o").context("-o OUT/")?);
    let (config, mut checkpoint) =
        read_hf_dir(&weights)?.context("not a Llama or Qwen3 checkpoint folder")?;
    let precision = match value(args, "--dtype") {
        Some("f16") => gptc_graph::Precision::F16,
        _ => gptc_graph::Precision::F32,
    };
    let options = GraphOptions { kv_cache: true, precision, ..Default::default() };
    let model = build_model(&config, options, &mut checkpoint, None)?;
    let sources = TokenizerSources { file: None, folder: Some(&weights) };
    let contents = FolderModel { model: &model, config: &config, options, tokenizer: sources };
    folder::write_model_folder(&out, &contents, WeightLayout::Auto, &|_| {})?;
    Ok(())
}

fn generate_ids(args: &[String]) -> Result<()> {
    let dir = PathBuf::from(value(args, "--model").context("--model DIR")?);
    let new_tokens: usize = value(args, "--max-new-tokens").unwrap_or("10").parse()?;
    let prompts: Vec<Vec<i64>> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--ids")
        .filter_map(|(i, _)| args.get(i + 1))
        .map(|ids| parse_ids(ids))
        .collect::<gptc::Result<_>>()?;
    if prompts.is_empty() {
        bail!("--ids IDS");
    }
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let context = hf["max_position_embeddings"].as_u64().context("max_position_embeddings")?;
    let mut runtime = TractRuntime::from_path(&folder::model_file(Path::new(&dir)))?;
    let ids = generate(&mut runtime, &prompts, new_tokens, context as usize, |_, logits| {
        Ok(Next::Token(argmax(logits) as i64))
    })?;
    // `generate` returns the new ids of each row.
    for (prompt, output) in prompts.iter().zip(ids) {
        println!("{}", serde_json::json!({ "prompt_ids": prompt, "output_ids": output }));
    }
    Ok(())
}

/// `folder::check_side_files` against the config the folder's config.json says (gptc's `check`
/// takes the graph's stored config).
fn check(args: &[String]) -> Result<()> {
    let dir = PathBuf::from(args.first().context("check DIR")?);
    let config = gptc_graph::family_checkpoint::hf_config(&dir.join("config.json"))?
        .context("not a Llama or Qwen3 folder")?;
    folder::check_side_files(&dir, &config)?;
    println!("ok: the folder's side files agree with its config");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("export") => export(&args[1..]),
        Some("generate") => generate_ids(&args[1..]),
        Some("check") => check(&args[1..]),
        _ => bail!("usage: family_folder export --weights HF_DIR -o OUT/ | generate --model OUT --ids IDS [--ids IDS] --max-new-tokens N | check OUT"),
    }
}
