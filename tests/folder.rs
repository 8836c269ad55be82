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
            "gptc-manifest.json",
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

/// Every file and folder under `dir` (links not followed) with its bytes; a folder or a link is
/// recorded as such, so a changed kind shows too.
fn contents(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut all = std::collections::BTreeMap::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((at, prefix)) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                let target = std::fs::read_link(entry.path()).unwrap();
                all.insert(name, format!("link to {}", target.display()).into_bytes());
            } else if kind.is_dir() {
                all.insert(format!("{name}/"), Vec::new());
                pending.push((entry.path(), format!("{name}/")));
            } else {
                all.insert(name, std::fs::read(entry.path()).unwrap());
            }
        }
    }
    all
}

#[test]
fn a_folder_export_refuses_every_folder_holding_files_gptc_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let refused = |output: &str, named: &str| {
        let before = contents(d);
        let out = export(d, &["--seed", "9"], output);
        assert_eq!(out.status.code(), Some(1), "{output} was written over: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("left as it is") && err.contains(named), "{output}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(contents(d) == before, "refusing {output} changed a file");
    };

    // A project folder that holds one model exported as a file where a folder keeps it.
    std::fs::create_dir_all(d.join("project/src")).unwrap();
    std::fs::create_dir_all(d.join("project/onnx")).unwrap();
    std::fs::write(d.join("project/src/main.rs"), "fn main() {}").unwrap();
    std::fs::write(d.join("project/NOTES.md"), "my notes").unwrap();
    assert_success(&export(d, &[], "project/onnx/model.onnx"));
    refused("project/", "NOTES.md");
    // The same model file alone, with nothing that says gptc wrote the folder around it.
    std::fs::create_dir_all(d.join("bare/onnx")).unwrap();
    std::fs::copy(d.join("project/onnx/model.onnx"), d.join("bare/onnx/model.onnx")).unwrap();
    refused("bare/", "onnx/model.onnx");

    // A results file a user added to a folder gptc wrote.
    assert_success(&export(d, &[], "tiny/"));
    std::fs::write(d.join("tiny/results.csv"), "id,score\n").unwrap();
    refused("tiny/", "results.csv");
    std::fs::remove_file(d.join("tiny/results.csv")).unwrap();
    // A side file the user edited is the user's now.
    let config = d.join("tiny/generation_config.json");
    let edited = std::fs::read_to_string(&config).unwrap().replace("false", "true ");
    std::fs::write(&config, edited).unwrap();
    refused("tiny/", "generation_config.json");

    // A model file that is a link: replacing the folder must not take the README with it.
    assert_success(&export(d, &[], "linked/"));
    std::fs::write(d.join("linked/README.md"), "read me").unwrap();
    std::fs::remove_file(d.join("linked/onnx/model.onnx")).unwrap();
    std::os::unix::fs::symlink(d.join("project/onnx/model.onnx"), d.join("linked/onnx/model.onnx"))
        .unwrap();
    refused("linked/", "README.md");
    std::fs::remove_file(d.join("linked/README.md")).unwrap();
    refused("linked/", "onnx/model.onnx");

    // A folder exactly as gptc wrote it is replaced; one missing a file gptc wrote too.
    assert_success(&export(d, &[], "again/"));
    std::fs::remove_file(d.join("again/merges.txt")).unwrap();
    assert_success(&export(d, &["--seed", "9"], "again/"));
    assert!(d.join("again/merges.txt").is_file());
}

#[test]
fn a_link_to_a_folder_is_followed_and_kept_and_a_dangling_link_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("real")).unwrap();
    std::os::unix::fs::symlink("real", d.join("link")).unwrap();
    assert_success(&export(d, &[], "link/"));
    assert!(std::fs::symlink_metadata(d.join("link")).unwrap().file_type().is_symlink());
    assert!(d.join("real/onnx/model.onnx").is_file());
    let first = std::fs::read(d.join("real/onnx/model.onnx")).unwrap();
    // Again, through the link without the slash: the folder at its target is replaced.
    assert_success(&export(d, &["--seed", "9"], "link"));
    assert!(std::fs::symlink_metadata(d.join("link")).unwrap().file_type().is_symlink());
    assert_ne!(std::fs::read(d.join("real/onnx/model.onnx")).unwrap(), first);
    let mut left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["link", "real"]);

    // A checkpoint that is not there would fail the export's work: the link is refused first.
    std::os::unix::fs::symlink("gone", d.join("dangling")).unwrap();
    std::os::unix::fs::symlink("gone/model.onnx", d.join("dangling.onnx")).unwrap();
    for output in ["dangling/", "dangling", "dangling.onnx"] {
        let out = export(d, &["--weights", "nowhere"], output);
        assert_eq!(out.status.code(), Some(1), "{output}");
        let err = stderr(&out);
        assert!(err.contains("dangling") && err.contains("does not exist"), "{output}: {err}");
        assert!(!err.contains("nowhere"), "{output} was refused only after the work: {err}");
    }
    assert!(!d.join("gone").exists());
}

#[test]
fn check_reads_every_side_file_of_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_success(&export(d, &[], "tiny/"));
    let saved = contents(&d.join("tiny"));
    let restore = || {
        for name in ["vocab.json", "merges.txt"] {
            let path = d.join("tiny").join(name);
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir(&path).unwrap();
            } else {
                let _ = std::fs::remove_file(&path);
            }
            std::fs::write(&path, &saved[name]).unwrap();
        }
    };
    let fails = |name: &str, damage: &str| {
        let out = gptc_in(d, &["check", "tiny"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name} {damage}: check passed: {err}");
        assert!(err.contains(name), "{name} {damage}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        restore();
    };
    for name in ["vocab.json", "merges.txt"] {
        let path = d.join("tiny").join(name);
        std::fs::remove_file(&path).unwrap();
        fails(name, "missing");
        std::fs::write(&path, "not JSON, not merges").unwrap();
        fails(name, "garbage");
        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(made.success());
        fails(name, "a FIFO");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        fails(name, "a folder");
    }
    // Well-formed, but not GPT-2's BPE: two tokens swap ids, a merge is dropped.
    let vocab = String::from_utf8(saved["vocab.json"].clone()).unwrap();
    let swapped = vocab.replace("\"!\":0,", "\"!\":1,").replace("\"\\\"\":1,", "\"\\\"\":0,");
    assert_ne!(swapped, vocab);
    std::fs::write(d.join("tiny/vocab.json"), swapped).unwrap();
    fails("vocab.json", "with two ids swapped");
    let merges = String::from_utf8(saved["merges.txt"].clone()).unwrap();
    let dropped: String =
        merges.lines().filter(|l| *l != "Ġ t").map(|l| format!("{l}\n")).collect();
    assert_ne!(dropped, merges);
    std::fs::write(d.join("tiny/merges.txt"), dropped).unwrap();
    fails("merges.txt", "without a merge");
    assert_success(&gptc_in(d, &["check", "tiny"]));
}
