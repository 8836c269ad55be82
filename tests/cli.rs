//! The command line as a user meets it: deterministic exports, reports, and bad input.

mod common;

use common::{assert_success, gptc, gptc_in, stderr, stdout};

const TINY: [&str; 8] =
    ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"];

fn export_tiny(dir: &std::path::Path, name: &str, seed: &str) -> Vec<u8> {
    let path = dir.join(name);
    let mut args = vec!["export", "--seed", seed, "-o", path.to_str().unwrap()];
    args.extend(TINY);
    assert_success(&gptc(&args));
    std::fs::read(path).unwrap()
}

#[test]
fn one_seed_gives_byte_identical_files_and_another_seed_differs() {
    let dir = tempfile::tempdir().unwrap();
    let a = export_tiny(dir.path(), "a.onnx", "5");
    let b = export_tiny(dir.path(), "b.onnx", "5");
    let c = export_tiny(dir.path(), "c.onnx", "6");
    assert!(a == b, "same seed, different bytes");
    assert!(a != c, "different seeds, same bytes");
    assert_eq!(a.len(), c.len());
}

#[test]
fn inspect_prints_the_books_accounting() {
    let out = gptc(&["inspect", "--preset", "gpt2-small"]);
    assert_success(&out);
    let text = stdout(&out);
    for figure in ["38,597,376", "786,432", "163,009,536", "124,412,160", "621.83 MB"] {
        assert!(text.contains(figure), "no {figure} in\n{text}");
    }
}

#[test]
fn inspect_counts_past_usize_exactly() {
    // 1,000 layers of width 2^28: 12 e^2 + 10 e parameters each, 9.2e20 in all, past u64.
    let out = gptc(&["inspect", "--emb-dim", "268435456", "--n-heads", "1", "--n-layers", "1000"]);
    assert_success(&out);
    let text = stdout(&out);
    let e = 1u128 << 28;
    let blocks = 1000 * (12 * e * e + 10 * e);
    let total = 2 * 50257 * e + 1024 * e + blocks + 2 * e;
    for count in [blocks, total, total - 50257 * e] {
        let digits = gptc::inspect::thousands_wide(count);
        assert!(text.contains(&digits), "no {digits} in\n{text}");
    }
}

#[test]
fn inspect_reports_a_file() {
    let dir = tempfile::tempdir().unwrap();
    export_tiny(dir.path(), "m.onnx", "1");
    let out = gptc(&["inspect", "--model", dir.path().join("m.onnx").to_str().unwrap()]);
    assert_success(&out);
    let text = stdout(&out);
    assert!(text.contains("opset ai.onnx 17"), "{text}");
    assert!(text.contains("input  input_ids int64 [batch_size, sequence_length]"), "{text}");
    assert!(text.contains("output logits float [batch_size, sequence_length, 50257]"), "{text}");
    assert!(text.contains("LayerNormalization       5"), "{text}");
    assert!(text.contains("MatMul"), "{text}");
    // The file stores what the accounting says: 2 blocks of emb 64, vocab 50257, context 64.
    let total = 2 * 50257 * 64 + 64 * 64 + 2 * (12 * 64 * 64 + 10 * 64) + 2 * 64;
    assert!(
        text.contains(&format!("weights {} values", gptc::inspect::thousands(total))),
        "{text}"
    );
}

#[test]
fn generate_on_a_tiny_config_in_memory() {
    let mut args = vec!["generate", "Hello, I am", "--max-new-tokens", "3", "--json"];
    args.extend(TINY);
    let out = gptc(&args);
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["prompt_ids"], serde_json::json!([15496, 11, 314, 716]));
    assert_eq!(json["output_ids"].as_array().unwrap().len(), 3);
    assert!(json["text"].as_str().unwrap().starts_with("Hello, I am"));
}

/// One clear line on stderr, a failing exit code, no panic, nothing left behind.
fn assert_clean_failure(out: &std::process::Output, expect: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.to_lowercase().contains(&expect.to_lowercase()), "expected `{expect}` in: {err}");
}

#[test]
fn bad_input_gets_one_clear_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out_path = d.join("out.onnx");
    let out = out_path.to_str().unwrap();

    assert_clean_failure(&gptc(&["export", "--preset", "gpt5", "-o", out]), "unknown preset");
    assert_clean_failure(
        &gptc(&["export", "--emb-dim", "65", "--n-heads", "4", "-o", out]),
        "divisible",
    );
    assert_clean_failure(&gptc(&["export", "--n-layers", "0", "-o", out]), "n_layers");
    assert_clean_failure(&gptc(&["export", "--n-heads", "0", "-o", out]), "n_heads");
    std::fs::write(d.join("bad.json"), "{\"emb_dim\": 64}").unwrap();
    assert_clean_failure(
        &gptc(&["export", "--config", d.join("bad.json").to_str().unwrap(), "-o", out]),
        "missing field",
    );
    assert_clean_failure(
        &gptc(&["generate", "hi", "--model", "/no/such/model.onnx"]),
        "no such file",
    );
    std::fs::write(d.join("notes.onnx"), "these are not the weights you are looking for").unwrap();
    assert_clean_failure(
        &gptc(&["generate", "hi", "--model", d.join("notes.onnx").to_str().unwrap()]),
        "not a readable onnx model",
    );
    assert_clean_failure(
        &gptc(&["inspect", "--model", d.join("notes.onnx").to_str().unwrap()]),
        "not a readable onnx model",
    );
    let mut empty_prompt = vec!["generate", ""];
    empty_prompt.extend(TINY);
    assert_clean_failure(&gptc(&empty_prompt), "prompt 1 is empty");
    assert_clean_failure(&gptc(&["generate"]), "no prompt");
    // Usage errors are clap's whole message, with exit code 2.
    let usage = gptc(&["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    assert!(stderr(&usage).contains("unrecognized") && !stderr(&usage).contains("panicked"));

    // A path under a regular file cannot be created, even by root.
    std::fs::write(d.join("file"), "x").unwrap();
    let mut unwritable = vec!["export", "-o"];
    let under_file = d.join("file").join("model.onnx");
    unwritable.push(under_file.to_str().unwrap());
    unwritable.extend(TINY);
    assert_clean_failure(&gptc_in(d, &unwritable), "not a directory");

    // No failed run above may leave a model or a temporary file behind.
    let mut left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["bad.json", "file", "notes.onnx"]);
}
