//! The model folder (`-o DIR/`): what it holds, gptc reading it back, and the user's folders
//! left alone. The loaders themselves (onnxruntime-genai, transformers.js, transformers'
//! tokenizer, optimum) run in scripts/loaders.py and scripts/optimum_check.py.

mod common;

use std::path::Path;

use common::{assert_success, gptc_in, stderr, stdout};

const TINY: [&str; 8] =
    ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"];

fn export(dir: &Path, extra: &[&str], output: &str) -> std::process::Output {
    let mut args = vec!["export", "-o", output];
    args.extend(TINY);
    args.extend(extra);
    gptc_in(dir, &args)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            names.extend(files_in(&path).into_iter().map(|n| format!("{name}/{n}")));
        } else {
            names.push(name);
        }
    }
    names.sort();
    names
}

fn greedy_ids(dir: &Path, model: &str) -> serde_json::Value {
    let out = gptc_in(dir, &["generate", "Hello, I am", "--model", model, "--json"]);
    assert_success(&out);
    serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()["output_ids"].clone()
}

#[test]
fn a_folder_holds_the_model_and_what_other_runtimes_read_and_gptc_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_success(&export(d, &[], "tiny/"));
    assert_eq!(
        files_in(&d.join("tiny")),
        [
            "config.json",
            "genai_config.json",
            "generation_config.json",
            "merges.txt",
            "onnx/model.onnx",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.json",
        ]
    );
    let check = gptc_in(d, &["check", "tiny"]);
    assert_success(&check);
    assert!(stdout(&check).contains("the folder's side files agree"), "{}", stdout(&check));
    // The folder, and the file inside it, generate what the same model as a file does.
    assert_success(&export(d, &[], "tiny.onnx"));
    assert_eq!(greedy_ids(d, "tiny"), greedy_ids(d, "tiny.onnx"));
    assert_eq!(greedy_ids(d, "tiny/"), greedy_ids(d, "tiny.onnx"));

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("tiny/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model_type"], "gpt2");
    assert_eq!((config["n_embd"].as_u64(), config["n_layer"].as_u64()), (Some(64), Some(2)));
    assert_eq!(config["eos_token_id"], 50256);
    assert_eq!(config["activation_function"], "gelu_new");

    // An existing gptc folder is a folder without the slash too, and is replaced whole.
    assert_success(&export(d, &["--seed", "5"], "tiny"));
    assert_ne!(greedy_ids(d, "tiny"), greedy_ids(d, "tiny.onnx"));
}

#[test]
fn external_data_and_float16_combine_with_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_success(&export(d, &["--external-data"], "ext/"));
    assert!(d.join("ext/onnx/model.onnx_data").is_file());
    assert_success(&gptc_in(d, &["check", "ext"]));
    assert_success(&export(d, &[], "plain.onnx"));
    assert_eq!(greedy_ids(d, "ext"), greedy_ids(d, "plain.onnx"));

    assert_success(&export(d, &["--dtype", "f16"], "half/"));
    let config = std::fs::read_to_string(d.join("half/config.json")).unwrap();
    assert!(config.contains("\"torch_dtype\": \"float16\""), "{config}");
    assert_success(&gptc_in(d, &["check", "half"]));
    assert_success(&gptc_in(d, &["generate", "hi", "--model", "half", "--max-new-tokens", "2"]));
}

#[test]
fn a_side_file_that_disagrees_with_the_graph_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_success(&export(d, &[], "tiny/"));
    let path = d.join("tiny/genai_config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"))
        .unwrap();
    let out = gptc_in(d, &["check", "tiny"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("genai_config.json: /model/decoder/num_hidden_layers is 3"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn a_users_folder_is_never_overwritten_and_a_failed_export_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("mine")).unwrap();
    std::fs::write(d.join("mine/notes.txt"), "mine").unwrap();
    let out = export(d, &[], "mine/");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("gptc did not write"), "{}", stderr(&out));
    assert_eq!(files_in(&d.join("mine")), ["notes.txt"]);

    // An export stopped half way leaves the old folder as it was, and no half folder.
    assert_success(&export(d, &[], "model/"));
    let before: Vec<Vec<u8>> = files_in(&d.join("model"))
        .iter()
        .map(|f| std::fs::read(d.join("model").join(f)).unwrap())
        .collect();
    let code = common::interrupted(d, &["export", "--n-layers", "36", "-o", "model/"], 1200);
    assert_eq!(code, Some(130), "the export was not interrupted");
    let mut left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["mine", "model"], "a staging folder was left");
    let after: Vec<Vec<u8>> = files_in(&d.join("model"))
        .iter()
        .map(|f| std::fs::read(d.join("model").join(f)).unwrap())
        .collect();
    assert!(before == after, "the old folder changed");

    // A failure (a checkpoint that is not there) also leaves no folder.
    let out = export(d, &["--weights", "nowhere"], "new/");
    assert_eq!(out.status.code(), Some(1));
    assert!(!d.join("new").exists());
}
