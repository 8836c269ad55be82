//! GPT-2 small end to end: export, load in tract, generate; the ids equal the reference's.

mod common;

use common::reference::Reference;
use common::{assert_success, gptc, reference_greedy, stdout};
use gptc_graph::file;

fn generated_ids(args: &[&str]) -> (Vec<i64>, Vec<i64>) {
    let out = gptc(args);
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let ids =
        |key: &str| json[key].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    (ids("prompt_ids"), ids("output_ids"))
}

#[test]
fn gpt2_small_greedy_ids_equal_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2-small.onnx");
    let path_str = path.to_str().unwrap();
    // The default export has the KV cache and full logits.
    assert_success(&gptc(&["export", "--preset", "gpt2-small", "-o", path_str]));

    let (prompt_ids, output_ids) = generated_ids(&[
        "generate",
        "Hello, I am",
        "--model",
        path_str,
        "--max-new-tokens",
        "10",
        "--json",
    ]);
    assert_eq!(prompt_ids, [15496, 11, 314, 716]);
    assert_eq!(output_ids.len(), 10);

    // The reference reads the weights back from the file, not from the exporter.
    let model = file::read_model(&path).unwrap();
    let config = file::stored_config(&model).unwrap().unwrap();
    assert_eq!(config, gptc_graph::GptConfig::preset("gpt2-small").unwrap());
    let weights = file::float_initializers(&model).unwrap();
    drop(model);
    let reference = Reference::new(&config, &weights);
    let (expected, _) = reference_greedy(&reference, &prompt_ids, 10, config.context_length);
    assert_eq!(output_ids, expected);

    // ONNX Runtime (CPU) on the same file gives the same ids.
    let (_, ort_ids) = generated_ids(&[
        "generate",
        "Hello, I am",
        "--model",
        path_str,
        "--max-new-tokens",
        "10",
        "--json",
        "--runtime",
        "ort",
    ]);
    assert_eq!(ort_ids, expected);

    // The embedded default (no --model) compiles the same gpt2-small, seed 123, in memory.
    let (_, embedded_ids) =
        generated_ids(&["generate", "Hello, I am", "--max-new-tokens", "10", "--json"]);
    assert_eq!(embedded_ids, expected);
}
