//! `gptc check`: exit 0 when a file holds what its config promises, the first mismatch named
//! otherwise.

mod common;

use common::{gptc, stderr, stdout};
use gptc_graph::file::{self, WeightLayout};
use gptc_graph::onnx::{tensor_shape_proto::dimension, type_proto};

const TINY: [&str; 6] = ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4"];

fn export(dir: &std::path::Path, name: &str, flags: &[&str]) -> String {
    let path = dir.join(name).to_str().unwrap().to_string();
    let mut args = vec!["export", "-o", &path];
    args.extend(TINY);
    args.extend(flags);
    let out = gptc(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    path
}

#[test]
fn every_variant_passes() {
    let dir = tempfile::tempdir().unwrap();
    for flags in [
        &[][..],
        &["--last-token-logits"],
        &["--no-kv-cache"],
        &["--no-kv-cache", "--last-token-logits"],
    ] {
        let path = export(dir.path(), "m.onnx", flags);
        let out = gptc(&["check", &path]);
        assert!(out.status.success(), "{flags:?}: {}", stderr(&out));
        assert!(stdout(&out).contains("ok: inputs and outputs match"), "{}", stdout(&out));
        assert!(stdout(&out).contains("opset ai.onnx 17"));
    }
}

#[test]
fn mismatches_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = export(dir.path(), "m.onnx", &[]);

    // Against another config: the past inputs have 8 heads of 8, not 4 of 16.
    let out = gptc(&["check", &path, "--emb-dim", "64", "--n-layers", "2", "--n-heads", "8"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("past_key_values.0.key"), "{}", stderr(&out));

    // Another depth: one input list is longer than the other.
    let out = gptc(&["check", &path, "--emb-dim", "64", "--n-layers", "3", "--n-heads", "4"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("inputs: the file declares 7 but the config wants 9"),
        "{}",
        stderr(&out)
    );

    // Another context: the same inputs and outputs, but the position table is another size.
    let mut other_context = vec!["check", &path, "--context-length", "512"];
    other_context.extend(TINY);
    let out = gptc(&other_context);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("`wpe.weight` is [1024, 64]"), "{}", stderr(&out));

    // A declared output dim that the graph does not compute.
    let mut model = file::read_model(std::path::Path::new(&path)).unwrap();
    let logits = &mut model.graph.as_mut().unwrap().output[0];
    let Some(type_proto::Value::TensorType(t)) = &mut logits.r#type.as_mut().unwrap().value else {
        panic!("logits is a tensor")
    };
    t.shape.as_mut().unwrap().dim[1].value = Some(dimension::Value::DimParam("total".into()));
    let edited = dir.path().join("edited.onnx");
    file::write_model(&edited, &model, WeightLayout::Auto).unwrap();
    let out = gptc(&["check", edited.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("logits"), "{err}");
}
