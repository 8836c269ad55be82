//! ONNX external data: weights in `NAME.onnx.data` beside the model, read by tract and ONNX
//! Runtime as if they were inline.

mod common;

use std::path::Path;

use common::{assert_success, gptc, stderr, stdout};

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
