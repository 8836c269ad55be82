//! Hugging Face Llama and Qwen3 checkpoints, written by transformers' `save_pretrained`
//! (scripts/make_family_checkpoints.py: tied and untied, sharded, bfloat16 and float32), give
//! transformers' own logits and greedy ids through gptc's graph on tract and ONNX Runtime, and
//! through gptc's reference forward: three witnesses on the same weights.

mod common;

use std::path::{Path, PathBuf};

use common::reference::llama::Reference;
use common::{greedy_with_logits, relative_error};
use gptc::runtime::ort::{Device, OrtRuntime};
use gptc::runtime::tract::TractRuntime;
use gptc::runtime::{Runtime, Step};
use gptc_graph::family_checkpoint::read_hf_dir;
use gptc_graph::{build_model, file, GraphOptions, ModelConfig, Recording, TensorMap};
use ndarray::{s, Array2, Array3};
use serde_json::Value;

/// transformers computes in float32 as gptc's graph does, with other kernels and orders of
/// summation: its logits and ours differ by rounding only.
const TOLERANCE: f32 = 1e-4;

const FOLDERS: [&str; 4] =
    ["llama-tied-bf16", "llama-untied-f32-sharded", "qwen3-tied-f32", "qwen3-untied-bf16-sharded"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families").join(name)
}

/// What transformers computed on the checkpoint (`expected.json`).
struct Expected {
    json: Value,
}

impl Expected {
    fn read(dir: &Path) -> Expected {
        let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
        Expected { json: serde_json::from_str(&text).unwrap() }
    }

    fn ids(&self, pointer: &str) -> Array2<i64> {
        let rows: Vec<Vec<i64>> =
            serde_json::from_value(self.json.pointer(pointer).unwrap().clone()).unwrap();
        let width = rows[0].len();
        Array2::from_shape_vec((rows.len(), width), rows.concat()).unwrap()
    }

    fn logits(&self, pointer: &str) -> Array3<f32> {
        let logits = self.json.pointer(pointer).unwrap();
        let shape: Vec<usize> = serde_json::from_value(logits["shape"].clone()).unwrap();
        let values: Vec<f32> = serde_json::from_value(logits["values"].clone()).unwrap();
        Array3::from_shape_vec((shape[0], shape[1], shape[2]), values).unwrap()
    }
}

/// The checkpoint's config, its graph (built from its tensors, every one used) and the
/// weights the graph holds.
fn import(dir: &Path, options: GraphOptions) -> (ModelConfig, Vec<u8>, TensorMap) {
    let (config, mut checkpoint) = read_hf_dir(dir).unwrap().expect("a Llama or Qwen3 folder");
    let mut recording = Recording { source: &mut checkpoint, seen: TensorMap::default() };
    let model = build_model(&config, options, &mut recording, None).unwrap();
    let weights = recording.seen;
    checkpoint.check_all_used().unwrap();
    (config, file::encode(&model), weights)
}

const PLAIN: GraphOptions = GraphOptions {
    kv_cache: false,
    last_token_logits: false,
    tie_weights: false,
    precision: gptc_graph::Precision::F32,
    quantization: gptc_graph::Quantization::None,
};
const CACHE: GraphOptions = GraphOptions { kv_cache: true, ..PLAIN };

#[test]
fn logits_are_transformers_on_tract_onnx_runtime_and_the_reference() {
    for name in FOLDERS {
        let dir = fixture(name);
        let expected = Expected::read(&dir);
        let (config, bytes, weights) = import(&dir, PLAIN);
        let row: Vec<i64> = serde_json::from_value(expected.json["ids"].clone()).unwrap();
        let ids = Array2::from_shape_vec((1, row.len()), row).unwrap();
        let want = expected.logits("/logits");
        let reference = Reference::new(&config, &weights).unwrap().logits(&ids).unwrap();
        let err = relative_error(&reference, &want);
        assert!(err < TOLERANCE, "{name} reference: relative error {err}");
        let runtimes: Vec<Box<dyn Runtime>> = vec![
            Box::new(TractRuntime::from_bytes(&bytes).unwrap()),
            Box::new(OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap()),
        ];
        for mut runtime in runtimes {
            let err = relative_error(&runtime.run(&Step::ids_only(&ids)).unwrap(), &want);
            assert!(err < TOLERANCE, "{name} {}: relative error {err}", runtime.name());
        }
    }
}

/// A left-padded batch in one prefill, with transformers' mask and positions: every real
/// position's logits are transformers'.
#[test]
fn left_padded_prefill_is_transformers() {
    for name in FOLDERS {
        let dir = fixture(name);
        let expected = Expected::read(&dir);
        let (_, bytes, _) = import(&dir, CACHE);
        let ids = expected.ids("/padded/ids");
        let mask = expected.ids("/padded/attention_mask");
        let positions = expected.ids("/padded/position_ids");
        let want = expected.logits("/padded/logits");
        let step =
            Step { input_ids: &ids, attention_mask: Some(&mask), position_ids: Some(&positions) };
        let runtimes: Vec<Box<dyn Runtime>> = vec![
            Box::new(TractRuntime::from_bytes(&bytes).unwrap()),
            Box::new(OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap()),
        ];
        for mut runtime in runtimes {
            let got = runtime.run(&step).unwrap();
            for (row, mask) in mask.outer_iter().enumerate() {
                let first = mask.iter().position(|&m| m == 1).unwrap();
                let got = got.slice(s![row..row + 1, first.., ..]).to_owned();
                let want = want.slice(s![row..row + 1, first.., ..]).to_owned();
                let err = relative_error(&got, &want);
                assert!(
                    err < TOLERANCE,
                    "{name} {} row {row}: relative error {err}",
                    runtime.name()
                );
            }
        }
    }
}

/// gptc's greedy decoding with the cache (a left-padded batch of two prompts) picks the ids
/// transformers' `generate` picked.
#[test]
fn greedy_ids_are_transformers_generate() {
    for name in FOLDERS {
        let dir = fixture(name);
        let expected = Expected::read(&dir);
        let (config, bytes, _) = import(&dir, CACHE);
        let prompts: Vec<Vec<i64>> =
            serde_json::from_value(expected.json["greedy"]["prompts"].clone()).unwrap();
        let new_tokens = expected.json["greedy"]["new_tokens"].as_u64().unwrap() as usize;
        let want: Vec<Vec<i64>> =
            serde_json::from_value(expected.json["greedy"]["ids"].clone()).unwrap();
        let runtimes: Vec<Box<dyn Runtime>> = vec![
            Box::new(TractRuntime::from_bytes(&bytes).unwrap()),
            Box::new(OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap()),
        ];
        for mut runtime in runtimes {
            let (ids, _) =
                greedy_with_logits(runtime.as_mut(), &prompts, new_tokens, config.context_length());
            assert_eq!(ids, want, "{name} {}", runtime.name());
        }
    }
}
