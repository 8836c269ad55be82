//! Trained weights in Hugging Face's GPT-2 layout: checkpoints the tests write themselves
//! (with and without the `transformer.` prefix, tied and untied, sharded) export to the graph
//! whose logits equal the reference forward over the same tensors, split by this file's code.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::reference::Reference;
use common::{assert_success, gptc, relative_error, stderr, token_ids};
use gptc::runtime::tract::TractRuntime;
use gptc::runtime::{Runtime, Step};
use gptc_graph::{GptConfig, Init, NamedTensor, RandomInit, TensorMap, WeightSource};
use safetensors::{serialize_to_file, Dtype, View};

const E: usize = 32;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const VOCAB: usize = 50257;
const CONTEXT: usize = 32;

fn config() -> GptConfig {
    GptConfig {
        vocab_size: VOCAB,
        context_length: CONTEXT,
        emb_dim: E,
        n_heads: HEADS,
        n_layers: LAYERS,
        drop_rate: 0.1,
        qkv_bias: true,
    }
}

/// HF GPT-2 tensors: name, shape, values (random, small).
fn hf_tensors(tied: bool, seed: u64) -> BTreeMap<String, NamedTensor> {
    let mut init = RandomInit { seed };
    let mut t = BTreeMap::new();
    let mut add = |name: String, shape: Vec<usize>| {
        let data = init.tensor(&name, &shape, Init::Normal { std: 0.1 }).unwrap();
        t.insert(name, NamedTensor { shape, data });
    };
    add("wte.weight".into(), vec![VOCAB, E]);
    add("wpe.weight".into(), vec![CONTEXT, E]);
    for i in 0..LAYERS {
        for ln in ["ln_1", "ln_2"] {
            add(format!("h.{i}.{ln}.weight"), vec![E]);
            add(format!("h.{i}.{ln}.bias"), vec![E]);
        }
        add(format!("h.{i}.attn.c_attn.weight"), vec![E, 3 * E]);
        add(format!("h.{i}.attn.c_attn.bias"), vec![3 * E]);
        add(format!("h.{i}.attn.c_proj.weight"), vec![E, E]);
        add(format!("h.{i}.attn.c_proj.bias"), vec![E]);
        add(format!("h.{i}.mlp.c_fc.weight"), vec![E, 4 * E]);
        add(format!("h.{i}.mlp.c_fc.bias"), vec![4 * E]);
        add(format!("h.{i}.mlp.c_proj.weight"), vec![4 * E, E]);
        add(format!("h.{i}.mlp.c_proj.bias"), vec![E]);
    }
    add("ln_f.weight".into(), vec![E]);
    add("ln_f.bias".into(), vec![E]);
    if !tied {
        add("lm_head.weight".into(), vec![VOCAB, E]);
    }
    t
}

/// The reference's view of the same tensors: c_attn's columns split into q, k and v here,
/// by code independent of the importer.
fn reference_weights(hf: &BTreeMap<String, NamedTensor>) -> TensorMap {
    let mut map = BTreeMap::new();
    for (name, t) in hf {
        if let Some(prefix) = name.strip_suffix("c_attn.weight") {
            for (k, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                let mut data = Vec::new();
                for row in 0..E {
                    for col in 0..E {
                        data.push(t.data[row * 3 * E + k * E + col]);
                    }
                }
                map.insert(
                    format!("{prefix}{proj}.weight"),
                    NamedTensor { shape: vec![E, E], data },
                );
            }
        } else if let Some(prefix) = name.strip_suffix("c_attn.bias") {
            for (k, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                let data = t.data[k * E..(k + 1) * E].to_vec();
                map.insert(format!("{prefix}{proj}.bias"), NamedTensor { shape: vec![E], data });
            }
        } else {
            map.insert(name.clone(), t.clone());
        }
    }
    TensorMap(map)
}

struct Raw<'a>(&'a NamedTensor, Dtype);

impl View for Raw<'_> {
    fn dtype(&self) -> Dtype {
        self.1
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.1 {
            Dtype::I32 => self.0.data.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
            _ => self.0.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

fn write_safetensors(path: &Path, tensors: &BTreeMap<String, NamedTensor>, prefix: &str) {
    let views: Vec<(String, Raw)> =
        tensors.iter().map(|(n, t)| (format!("{prefix}{n}"), Raw(t, Dtype::F32))).collect();
    serialize_to_file(views, None, path).unwrap();
}

fn write_checkpoint(
    dir: &Path,
    tensors: &BTreeMap<String, NamedTensor>,
    prefix: &str,
    shards: usize,
) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": VOCAB,
        "n_positions": CONTEXT, "n_embd": E, "n_layer": LAYERS, "n_head": HEADS,
        "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.1,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    if shards == 1 {
        write_safetensors(&dir.join("model.safetensors"), tensors, prefix);
        return;
    }
    let mut weight_map = serde_json::Map::new();
    let names: Vec<&String> = tensors.keys().collect();
    for (s, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
        let part: BTreeMap<String, NamedTensor> =
            chunk.iter().map(|n| ((*n).clone(), tensors[*n].clone())).collect();
        write_safetensors(&dir.join(&file), &part, prefix);
        for n in chunk {
            weight_map.insert(format!("{prefix}{n}"), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn logits_of(path: &Path, ids: &ndarray::Array2<i64>) -> ndarray::Array3<f32> {
    TractRuntime::from_path(path).unwrap().run(&Step::ids_only(ids)).unwrap()
}

#[test]
fn checkpoints_export_to_the_reference_logits() {
    let dir = tempfile::tempdir().unwrap();
    for (prefix, tied, shards) in
        [("", true, 1), ("transformer.", false, 1), ("transformer.", true, 3)]
    {
        let hf = hf_tensors(tied, 5);
        let ckpt = dir.path().join(format!("ckpt-{tied}-{shards}"));
        write_checkpoint(&ckpt, &hf, prefix, shards);
        let onnx = dir.path().join("model.onnx");
        let out = gptc(&[
            "export",
            "--weights",
            ckpt.to_str().unwrap(),
            "--no-kv-cache",
            "-o",
            onnx.to_str().unwrap(),
        ]);
        assert_success(&out);
        assert_eq!(stderr(&out).contains(", tied"), tied, "{}", stderr(&out));

        let weights = reference_weights(&hf);
        let ids = token_ids(2, 9, VOCAB, 3);
        let expected = Reference::new(&config(), &weights).logits(&ids).unwrap();
        let err = relative_error(&logits_of(&onnx, &ids), &expected);
        assert!(err < 1e-4, "prefix {prefix:?} tied {tied} shards {shards}: relative error {err}");

        let check = gptc(&["check", onnx.to_str().unwrap()]);
        assert!(check.status.success(), "{}", stderr(&check));
    }
}

#[test]
fn a_bare_safetensors_file_takes_its_config_from_flags() {
    let dir = tempfile::tempdir().unwrap();
    let hf = hf_tensors(true, 8);
    let file = dir.path().join("weights.safetensors");
    write_safetensors(&file, &hf, "");
    let onnx = dir.path().join("m.onnx");
    let cfg = [
        "--emb-dim",
        "32",
        "--n-layers",
        "2",
        "--n-heads",
        "4",
        "--context-length",
        "32",
        "--qkv-bias",
        "true",
    ];
    let mut args = vec![
        "export",
        "--weights",
        file.to_str().unwrap(),
        "--no-kv-cache",
        "-o",
        onnx.to_str().unwrap(),
    ];
    args.extend(cfg);
    assert_success(&gptc(&args));
    let ids = token_ids(1, 5, VOCAB, 1);
    let expected = Reference::new(&config(), &reference_weights(&hf)).logits(&ids).unwrap();
    assert!(relative_error(&logits_of(&onnx, &ids), &expected) < 1e-4);

    // Without a config the file cannot say what it holds.
    let out = gptc(&["export", "--weights", file.to_str().unwrap(), "-o", onnx.to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("--preset or --config"));
}

#[test]
fn generate_runs_straight_from_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    write_checkpoint(&ckpt, &hf_tensors(true, 2), "", 1);
    let out = gptc(&[
        "generate",
        "Hello, I am",
        "--weights",
        ckpt.to_str().unwrap(),
        "--json",
        "--max-new-tokens",
        "3",
    ]);
    assert_success(&out);
    let onnx = dir.path().join("m.onnx");
    assert_success(&gptc(&[
        "export",
        "--weights",
        ckpt.to_str().unwrap(),
        "-o",
        onnx.to_str().unwrap(),
    ]));
    let from_file = gptc(&[
        "generate",
        "Hello, I am",
        "--model",
        onnx.to_str().unwrap(),
        "--json",
        "--max-new-tokens",
        "3",
    ]);
    assert_eq!(common::stdout(&out), common::stdout(&from_file));
}

#[test]
fn bad_checkpoints_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("m.onnx");
    let export = |ckpt: &Path| {
        gptc(&["export", "--weights", ckpt.to_str().unwrap(), "-o", onnx.to_str().unwrap()])
    };
    let fails_with = |out: std::process::Output, expect: &str| {
        let err = stderr(&out);
        assert!(!out.status.success(), "should fail: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(expect), "expected {expect:?} in {err}");
    };

    let mut extra = hf_tensors(true, 1);
    extra.insert(
        "h.0.attn.rotary.weight".into(),
        NamedTensor { shape: vec![2], data: vec![0.0, 1.0] },
    );
    write_checkpoint(&dir.path().join("extra"), &extra, "", 1);
    fails_with(export(&dir.path().join("extra")), "h.0.attn.rotary.weight");

    let mut missing = hf_tensors(true, 1);
    missing.remove("h.1.mlp.c_fc.bias");
    write_checkpoint(&dir.path().join("missing"), &missing, "", 1);
    fails_with(export(&dir.path().join("missing")), "h.1.mlp.c_fc.bias");

    let mut shape = hf_tensors(true, 1);
    shape.insert("ln_f.bias".into(), NamedTensor { shape: vec![E + 1], data: vec![0.0; E + 1] });
    write_checkpoint(&dir.path().join("shape"), &shape, "", 1);
    fails_with(export(&dir.path().join("shape")), "ln_f.bias");

    let ints = hf_tensors(true, 1);
    let ckpt = dir.path().join("dtype");
    write_checkpoint(&ckpt, &ints, "", 1);
    let views: Vec<(String, Raw)> = ints
        .iter()
        .map(|(n, t)| (n.clone(), Raw(t, if n == "wpe.weight" { Dtype::I32 } else { Dtype::F32 })))
        .collect();
    serialize_to_file(views, None, &ckpt.join("model.safetensors")).unwrap();
    fails_with(export(&ckpt), "wpe.weight");

    // Numbers that are not numbers are refused at import, by tensor.
    let mut nan = hf_tensors(true, 1);
    nan.get_mut("h.1.attn.c_proj.weight").unwrap().data[7] = f32::NAN;
    write_checkpoint(&dir.path().join("nan"), &nan, "", 1);
    fails_with(export(&dir.path().join("nan")), "h.1.attn.c_proj.weight");

    // An index may not name shards outside the checkpoint's folder.
    let escape = dir.path().join("escape");
    write_checkpoint(&escape, &hf_tensors(true, 1), "", 2);
    let index = escape.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, text.replace("model-00002-of-00002", "../escape/model-00002-of-00002"))
        .unwrap();
    fails_with(export(&escape), "not a file in the checkpoint's folder");
    fails_with(export(&dir.path().join("no-such-folder")), "no-such-folder");

    assert!(!onnx.exists(), "a failed export left a file");
}
