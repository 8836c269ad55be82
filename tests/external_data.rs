//! ONNX external data: weights in `NAME.onnx.data` beside the model, read by tract and ONNX
//! Runtime as if they were inline.

mod common;

use std::path::Path;

use common::{assert_success, gptc, stderr, stdout};
use gptc_graph::file;

const TINY: [&str; 6] = ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4"];

fn export(path: &Path, flags: &[&str]) {
    let mut args = vec!["export", "-o", path.to_str().unwrap()];
    args.extend(TINY);
    args.extend(flags);
    assert_success(&gptc(&args));
}

/// Greedy ids and every step's logits, as `gptc generate --json --with-logits` prints them.
fn generation(model: &Path, runtime: &str) -> (serde_json::Value, serde_json::Value) {
    let out = gptc(&[
        "generate",
        "The external data",
        "--model",
        model.to_str().unwrap(),
        "--runtime",
        runtime,
        "--max-new-tokens",
        "5",
        "--json",
        "--with-logits",
    ]);
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    (json["output_ids"].clone(), json["step_logits"].clone())
}

#[test]
fn external_data_runs_as_inline_weights_do() {
    let dir = tempfile::tempdir().unwrap();
    let inline = dir.path().join("inline.onnx");
    let external = dir.path().join("external.onnx");
    export(&inline, &[]);
    export(&external, &["--external-data"]);

    let data = dir.path().join("external.onnx.data");
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&data) > size(&inline) * 9 / 10, "the weights are in the data file");
    assert!(size(&external) < size(&inline) / 20, "the model file holds the graph only");

    let check = gptc(&["check", external.to_str().unwrap()]);
    assert!(check.status.success(), "{}", stderr(&check));

    // Same weights, same runtime: the same ids and bit-identical logits.
    for runtime in ["tract", "ort"] {
        assert_eq!(generation(&external, runtime), generation(&inline, runtime), "{runtime}");
    }

    // The location is relative: the pair moves together.
    let moved = dir.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    std::fs::rename(&external, moved.join("external.onnx")).unwrap();
    std::fs::rename(&data, moved.join("external.onnx.data")).unwrap();
    assert_eq!(generation(&moved.join("external.onnx"), "tract"), generation(&inline, "tract"));

    // Without its data, a model is refused in one line by both runtimes.
    std::fs::remove_file(moved.join("external.onnx.data")).unwrap();
    for runtime in ["tract", "ort"] {
        let out = gptc(&[
            "generate",
            "x",
            "--model",
            moved.join("external.onnx").to_str().unwrap(),
            "--runtime",
            runtime,
        ]);
        assert_eq!(out.status.code(), Some(1), "{runtime}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{runtime}: {}", stderr(&out));
        assert!(stderr(&out).contains("external.onnx.data"), "{runtime}: {}", stderr(&out));
    }
}

/// Exit 1, one stderr line holding every one of `expect`, no panic.
fn refused(out: &std::process::Output, expect: &[&str], what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: not one line: {err}");
    for e in expect {
        assert!(err.contains(e), "{what}: expected {e:?} in {err}");
    }
}

/// Every command that reads `model` (a file or a folder), each expected to refuse it.
fn every_reader(model: &str) -> Vec<Vec<&str>> {
    vec![
        vec!["generate", "hi", "--model", model, "--max-new-tokens", "2"],
        vec!["generate", "hi", "--model", model, "--max-new-tokens", "2", "--runtime", "ort"],
        vec!["check", model],
        vec!["inspect", "--model", model],
    ]
}

#[test]
fn a_model_and_a_data_file_that_do_not_belong_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (old, new) = (d.join("old.onnx"), d.join("new.onnx"));
    export(&old, &["--external-data", "--seed", "1"]);
    export(&new, &["--external-data", "--seed", "2"]);
    let (old_data, new_data) = (d.join("old.onnx.data"), d.join("new.onnx.data"));
    let old_bytes = std::fs::read(&old_data).unwrap();
    let new_bytes = std::fs::read(&new_data).unwrap();
    assert_eq!(old_bytes.len(), new_bytes.len(), "same config, same size: only a digest tells");
    assert_ne!(old_bytes, new_bytes);

    // The old model with the new data, as an interrupted swap or a careless copy leaves them.
    std::fs::write(&old_data, &new_bytes).unwrap();
    for args in every_reader(old.to_str().unwrap()) {
        refused(&gptc(&args), &["old.onnx.data", "does not belong to"], &args.join(" "));
    }

    // A data file of another size is refused before anything reads it.
    let mut longer = old_bytes.clone();
    longer.extend([0; 4096]);
    std::fs::write(&old_data, &longer).unwrap();
    for args in every_reader(old.to_str().unwrap()) {
        let expect = ["old.onnx.data", &format!("{} bytes", longer.len()), "records"];
        refused(&gptc(&args), &expect, &args.join(" "));
    }

    // The right pair again loads as ever.
    std::fs::write(&old_data, &old_bytes).unwrap();
    for args in every_reader(old.to_str().unwrap()) {
        let out = gptc(&args);
        assert!(out.status.success(), "{}: {}", args.join(" "), stderr(&out));
    }
}

#[test]
fn a_model_folder_refuses_data_from_another_export() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (one, two) = (d.join("one"), d.join("two"));
    export(Path::new(&format!("{}/", one.display())), &["--external-data", "--seed", "1"]);
    export(Path::new(&format!("{}/", two.display())), &["--external-data", "--seed", "2"]);
    let data = |dir: &Path| dir.join("onnx").join("model.onnx_data");
    std::fs::copy(data(&two), data(&one)).unwrap();
    for args in every_reader(one.to_str().unwrap()) {
        refused(&gptc(&args), &["model.onnx_data", "does not belong to"], &args.join(" "));
    }
}

#[test]
fn a_model_without_a_record_of_its_data_loads_as_before() {
    // Files written by other tools (or by gptc before it recorded its data) carry no record:
    // their pair is trusted as before, its size checked against each tensor's range only.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    export(&path, &["--external-data"]);
    let mut stub = file::read_model(&path).unwrap();
    let before = stub.metadata_props.len();
    stub.metadata_props.retain(|p| !p.key.starts_with("gptc.external_data"));
    assert!(stub.metadata_props.len() < before, "gptc records its data file");
    std::fs::write(&path, file::encode(&stub)).unwrap();
    for args in every_reader(path.to_str().unwrap()) {
        let out = gptc(&args);
        assert!(out.status.success(), "{}: {}", args.join(" "), stderr(&out));
    }
}
