//! Llama 3.2 and Qwen3 through the command line as a user types it: configs with
//! `model_type` or `--family`, every command on tiny random models (float32, float16, 4-bit) on
//! tract and ONNX Runtime, the presets' counts, transformers' checkpoint folders, and each
//! class of bad input refused in one line.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_success, gptc, stderr, stdout};

/// A tiny config of each family (emb 64, 2 layers), with the book's keys and HF's `model_type`.
const TINY_LLAMA: &str = r#"{"model_type": "llama", "vocab_size": 256, "context_length": 64,
  "emb_dim": 64, "n_heads": 4, "n_layers": 2, "hidden_dim": 128, "n_kv_groups": 2,
  "rope_base": 500000.0, "dtype": "bfloat16", "rope_freq": {"factor": 32.0,
  "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 16}}"#;
const TINY_QWEN3: &str = r#"{"model_type": "qwen3", "vocab_size": 256, "context_length": 64,
  "emb_dim": 64, "n_heads": 4, "n_layers": 2, "hidden_dim": 128, "head_dim": 32,
  "qk_norm": true, "n_kv_groups": 2, "rope_base": 1000000.0, "dtype": "bfloat16"}"#;

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// gptc failed with exit 1 and one line on stderr that contains `expected`.
fn one_line_error(out: &std::process::Output, expected: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(expected), "expected {expected:?} in {err}");
}

fn output_ids(out: &std::process::Output) -> Vec<i64> {
    assert_success(out);
    let json: serde_json::Value = serde_json::from_str(stdout(out).trim()).unwrap();
    serde_json::from_value(json["output_ids"].clone()).unwrap()
}

fn generate_ids(model: &[&str], runtime: &str, prompt: &str, new: usize) -> Vec<i64> {
    let new = new.to_string();
    let mut args = vec!["generate"];
    args.extend(model);
    args.extend(["--ids", prompt, "--max-new-tokens", &new, "--json", "--runtime", runtime]);
    output_ids(&gptc(&args))
}

#[test]
fn every_command_runs_on_tiny_llama_and_qwen3_models() {
    let dir = tempfile::tempdir().unwrap();
    for (family, text) in [("llama", TINY_LLAMA), ("qwen3", TINY_QWEN3)] {
        let config = write_config(dir.path(), &format!("{family}.json"), text);
        for (variant, flags) in
            [("f32", vec![]), ("f16", vec!["--dtype", "f16"]), ("int4", vec!["--quantize", "int4"])]
        {
            let onnx = dir.path().join(format!("{family}-{variant}.onnx"));
            let mut export = vec!["export", "--config", s(&config), "-o", s(&onnx)];
            export.extend(&flags);
            assert_success(&gptc(&export));

            let check = gptc(&["check", s(&onnx)]);
            assert_success(&check);
            assert!(stdout(&check).contains("ok: inputs and outputs match"), "{}", stdout(&check));
            let inspect = gptc(&["inspect", "--model", s(&onnx)]);
            assert_success(&inspect);
            assert!(
                stdout(&inspect).contains(&format!("config: {family} vocab 256")),
                "{}",
                stdout(&inspect)
            );

            let tract = generate_ids(&["--model", s(&onnx)], "tract", "1,2,3", 6);
            let ort = generate_ids(&["--model", s(&onnx)], "ort", "1,2,3", 6);
            assert_eq!(tract.len(), 6, "{family} {variant}");
            assert!(tract.iter().chain(&ort).all(|&id| (0..256).contains(&id)));
            if variant == "f32" {
                assert_eq!(tract, ort, "{family}: tract and ONNX Runtime");
                // Compiled in memory from the same config and seed: the file's ids.
                let direct = generate_ids(&["--config", s(&config)], "tract", "1,2,3", 6);
                assert_eq!(direct, tract, "{family}: in memory");
            }
        }
        // Without --json, ids as --ids takes them: this vocabulary has no GPT-2 text.
        let onnx = dir.path().join(format!("{family}-f32.onnx"));
        let plain = gptc(&["generate", "--model", s(&onnx), "--ids", "1,2,3"]);
        assert_success(&plain);
        let line = stdout(&plain);
        assert!(
            line.trim().starts_with("1,2,3,") && line.trim().split(',').count() == 13,
            "{line}"
        );

        let bench = gptc(&[
            "bench",
            "--config",
            s(&config),
            "--prefill",
            "8",
            "--new-tokens",
            "8",
            "--plain-tokens",
            "0",
            "--ort",
            "--quantize",
            "int4",
        ]);
        assert_success(&bench);
        let report = stdout(&bench);
        assert!(report.contains(&format!("model       {family} 2 layers")), "{report}");
        assert!(report.contains("x the bandwidth bound"), "{report}");
    }
}

#[test]
fn family_flag_presets_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    // The book's keys without model_type, read as --family says.
    let untyped = TINY_QWEN3.replace(r#""model_type": "qwen3", "#, "");
    let config = write_config(dir.path(), "book.json", &untyped);
    let out = gptc(&["inspect", "--config", s(&config), "--family", "qwen3"]);
    assert_success(&out);
    assert!(stdout(&out).contains("config: qwen3"), "{}", stdout(&out));
    // Without it, the same keys are not GPT-2's.
    one_line_error(&gptc(&["inspect", "--config", s(&config)]), "unknown field `hidden_dim`");

    // Flags set the family's fields; the head_dim of a Llama is emb_dim / n_heads.
    let out = gptc(&[
        "inspect",
        "--family",
        "llama",
        "--emb-dim",
        "64",
        "--n-heads",
        "4",
        "--n-kv-groups",
        "2",
        "--hidden-dim",
        "96",
        "--n-layers",
        "2",
    ]);
    assert_success(&out);
    assert!(
        stdout(&out).contains("kv_groups 2 head_dim 16 hidden 96 layers 2"),
        "{}",
        stdout(&out)
    );

    // A preset of each family: the parameters transformers counts, and the size per dtype.
    for (preset, count, float32) in [
        ("llama3.2-1b", "1,235,814,400", "4714.26 MB"),
        ("llama3.2-3b", "3,212,749,824", "12255.67 MB"),
        ("qwen3-0.6b", "596,049,920", "2273.75 MB"),
        ("qwen3-1.7b", "1,720,574,976", "6563.47 MB"),
    ] {
        let out = gptc(&["inspect", "--preset", preset]);
        assert_success(&out);
        let text = stdout(&out);
        assert!(
            text.contains(&format!("as transformers counts it (tied head)  {count}")),
            "{text}"
        );
        assert!(text.contains(float32) && text.contains("size in bfloat16"), "{text}");
    }
}

#[test]
fn transformers_folders_generate_transformers_ids() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families");
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama-tied-bf16", "qwen3-untied-bf16-sharded"] {
        let folder = fixtures.join(name);
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("expected.json")).unwrap())
                .unwrap();
        let greedy = &expected["greedy"];
        let prompt: Vec<i64> = serde_json::from_value(greedy["prompts"][0].clone()).unwrap();
        let want: Vec<i64> = serde_json::from_value(greedy["ids"][0].clone()).unwrap();
        let prompt = prompt.iter().map(i64::to_string).collect::<Vec<_>>().join(",");

        let direct = generate_ids(&["--weights", s(&folder)], "ort", &prompt, want.len());
        assert_eq!(direct, want, "{name}: compiled in memory, ONNX Runtime");
        let onnx = dir.path().join(format!("{name}.onnx"));
        assert_success(&gptc(&["export", "--weights", s(&folder), "-o", s(&onnx)]));
        let exported = generate_ids(&["--model", s(&onnx)], "tract", &prompt, want.len());
        assert_eq!(exported, want, "{name}: exported, tract");
        assert_success(&gptc(&["check", s(&onnx)]));

        // The folder's config.json says the family: another is refused.
        let other = if name.starts_with("llama") { "qwen3" } else { "llama" };
        let out = gptc(&["export", "--weights", s(&folder), "--family", other, "-o", s(&onnx)]);
        one_line_error(&out, "config.json is a");
    }
}

#[test]
fn bad_family_input_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let llama = write_config(d, "llama.json", TINY_LLAMA);
    let out = |name: &str| d.join(name);

    // An unknown key, and a --family that the config's model_type contradicts.
    let unknown = write_config(d, "unknown.json", &TINY_LLAMA.replace("\"dtype\"", "\"d_type\""));
    one_line_error(&gptc(&["inspect", "--config", s(&unknown)]), "unknown field `d_type`");
    let mismatch = gptc(&["inspect", "--config", s(&llama), "--family", "qwen3"]);
    one_line_error(&mismatch, "model_type is llama, not qwen3");
    one_line_error(
        &gptc(&["inspect", "--preset", "qwen3-0.6b", "--family", "llama"]),
        "preset qwen3-0.6b is a qwen3 model, not llama",
    );

    // A field the family does not have.
    for (flag, value, expected) in [
        ("--qkv-bias", "true", "--qkv-bias has no meaning for a llama model"),
        ("--drop-rate", "0.1", "--drop-rate has no meaning for a llama model"),
        ("--head-dim", "32", "--head-dim has no meaning for a llama model"),
    ] {
        one_line_error(&gptc(&["inspect", "--config", s(&llama), flag, value]), expected);
    }
    one_line_error(&gptc(&["inspect", "--n-kv-groups", "2"]), "has no meaning for a gpt2 model");

    // A text prompt for a vocabulary that is not GPT-2's, without its tokenizer.
    let onnx = out("llama.onnx");
    assert_success(&gptc(&["export", "--config", s(&llama), "-o", s(&onnx)]));
    let text = gptc(&["generate", "Hello", "--model", s(&onnx)]);
    one_line_error(&text, "the model has no tokenizer for its vocabulary (256)");
    assert!(stderr(&text).contains("--ids") && stderr(&text).contains("--tokenizer"));
    let stop = gptc(&["generate", "--model", s(&onnx), "--ids", "1", "--stop", "x"]);
    one_line_error(&stop, "--stop needs the model's text");
    // A file's stored family is held to --family.
    let other = gptc(&["generate", "--model", s(&onnx), "--ids", "1", "--family", "qwen3"]);
    one_line_error(&other, "is a llama model, not qwen3");

    // A GPT-2 checkpoint folder given as Llama's.
    let gpt2 = out("gpt2-checkpoint");
    std::fs::create_dir(&gpt2).unwrap();
    std::fs::write(gpt2.join("config.json"), r#"{"model_type": "gpt2", "n_embd": 64}"#).unwrap();
    let refused = gptc(&["export", "--weights", s(&gpt2), "--family", "llama", "-o", s(&onnx)]);
    one_line_error(&refused, "is a gpt2 model, not llama");

    // A random-init model folder: the family's side files, no tokenizer to copy.
    let folder = out("llama-folder/");
    assert_success(&gptc(&["export", "--config", s(&llama), "-o", folder.to_str().unwrap()]));
    assert!(out("llama-folder").join("genai_config.json").exists());
    assert!(!out("llama-folder").join("tokenizer.json").exists());
}

/// A single checkpoint file with a config: the head is tied when the config says so and, where
/// it does not say, when the file holds no head; transformers' names or the book's alike.
#[test]
fn a_single_files_head_is_tied_as_its_config_or_its_contents_say() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    // Qwen3ForCausalLM's model.safetensors alone (no lm_head: transformers tied it), with its
    // config.json said in the book's keys.
    let folder = root.join("families/qwen3-tied-f32");
    let weights = folder.join("model.safetensors");
    let book_keys = r#"{"model_type": "qwen3", "vocab_size": 128, "context_length": 128,
      "emb_dim": 64, "n_heads": 4, "n_layers": 2, "hidden_dim": 96, "head_dim": 32,
      "qk_norm": true, "n_kv_groups": 2, "rope_base": 1000000.0, "dtype": "float32"TIE}"#;
    let unsaid = write_config(dir.path(), "unsaid.json", &book_keys.replace("TIE", ""));
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("expected.json")).unwrap())
            .unwrap();
    let prompt: Vec<i64> =
        serde_json::from_value(expected["greedy"]["prompts"][0].clone()).unwrap();
    let want: Vec<i64> = serde_json::from_value(expected["greedy"]["ids"][0].clone()).unwrap();
    let prompt = prompt.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let model = ["--weights", s(&weights), "--config", s(&unsaid)];
    assert_eq!(generate_ids(&model, "tract", &prompt, want.len()), want);
    // Said untied, the head it lacks is named.
    let untied = write_config(
        dir.path(),
        "untied.json",
        &book_keys.replace("TIE", r#", "tie_word_embeddings": false"#),
    );
    let onnx = dir.path().join("m.onnx");
    let out = gptc(&["export", "--weights", s(&weights), "--config", s(&untied), "-o", s(&onnx)]);
    one_line_error(&out, "`lm_head.weight`: used by the model but missing");

    // The book's Llama3Model holds its own head: exported untied; with --tie-weights, a head
    // that differs from the embedding is refused.
    let book = root.join("book/llama3");
    let config = book.join("config.json");
    let pth = book.join("model.pth");
    let args = ["export", "--weights", s(&pth), "--config", s(&config), "--family", "llama"];
    let out = gptc(&[&args[..], &["-o", s(&onnx)]].concat());
    assert_success(&out);
    assert!(!stderr(&out).contains(", tied"), "{}", stderr(&out));
    let out = gptc(&[&args[..], &["--tie-weights", "-o", s(&onnx)]].concat());
    one_line_error(&out, "`out_head.weight`: differs from `tok_emb.weight`");
    // Without its head (as a tied model saves none), the same file exports tied.
    let bytes = std::fs::read(book.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = file
        .iter()
        .filter(|(name, _)| *name != "out_head.weight")
        .map(|(n, t)| (n.into(), t))
        .collect();
    let headless = dir.path().join("headless.safetensors");
    safetensors::serialize_to_file(kept, None, &headless).unwrap();
    let args = ["export", "--weights", s(&headless), "--config", s(&config), "--family", "llama"];
    let out = gptc(&[&args[..], &["-o", s(&onnx)]].concat());
    assert_success(&out);
    assert!(stderr(&out).contains(", tied"), "{}", stderr(&out));
    assert_success(&gptc(&["check", s(&onnx)]));
}
