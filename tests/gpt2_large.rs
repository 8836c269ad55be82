//! gpt2-large (774M parameters, 3.1 GB in float32): over protobuf's 2 GiB limit, so its export
//! puts the weights in external data. It passes `gptc check`, and tract and ONNX Runtime
//! generate the reference's ids from it.

mod common;

use common::reference::Reference;
use common::{assert_success, gptc, reference_greedy, stderr, stdout};
use gptc_graph::file;

fn generated_ids(model: &str, runtime: &str) -> Vec<i64> {
    let out = gptc(&[
        "generate",
        "--ids",
        "15496,11,314,716",
        "--model",
        model,
        "--runtime",
        runtime,
        "--max-new-tokens",
        "3",
        "--json",
    ]);
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    json["output_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
}

#[test]
fn gpt2_large_exports_to_external_data_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2-large.onnx");
    let path_str = path.to_str().unwrap();
    let out = gptc(&["export", "--preset", "gpt2-large", "--last-token-logits", "-o", path_str]);
    assert_success(&out);
    assert!(stderr(&out).contains("gpt2-large.onnx.data"), "{}", stderr(&out));
    let data_bytes = std::fs::metadata(dir.path().join("gpt2-large.onnx.data")).unwrap().len();
    assert!(data_bytes > 3_000_000_000, "{data_bytes} bytes of data");

    let check = gptc(&["check", path_str]);
    assert!(check.status.success(), "{}", stderr(&check));

    let tract_ids = generated_ids(path_str, "tract");
    let ort_ids = generated_ids(path_str, "ort");

    let model = file::read_model_with_data(&path).unwrap();
    let config = file::stored_config(&model).unwrap().unwrap();
    assert_eq!(config, gptc_graph::GptConfig::preset("gpt2-large").unwrap());
    let weights = file::float_initializers(&model).unwrap();
    drop(model);
    let reference = Reference::new(&config, &weights);
    let (expected, _) = reference_greedy(&reference, &[15496, 11, 314, 716], 3, 1024);
    assert_eq!(tract_ids, expected);
    assert_eq!(ort_ids, expected);
}
