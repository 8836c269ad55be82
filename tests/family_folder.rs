//! Tokenizers and model folders of the Llama and Qwen3 families: the checkpoints' tokenizer.json
//! (scripts/make_family_checkpoints.py) read by gptc gives transformers' ids, the special ids
//! come from the checkpoint's files, a tokenizer that does not fit a vocabulary is refused, and
//! `-o DIR/` writes each family's side files, which `check` reads back.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_success, gptc_in, stderr, stdout};
use gptc::folder::{self, FolderModel};
use gptc::tokenizer::{self, SpecialIds, Tokenizer, TokenizerSources};
use gptc_graph::family_checkpoint::{hf_config, read_hf_dir};
use gptc_graph::file::WeightLayout;
use gptc_graph::{build_model, Family, GraphOptions, ModelConfig, RandomInit};
use serde_json::Value;

const FOLDERS: [&str; 4] =
    ["llama-tied-bf16", "llama-untied-f32-sharded", "qwen3-tied-f32", "qwen3-untied-bf16-sharded"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families").join(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn family(name: &str) -> Family {
    if name.starts_with("llama") {
        Family::Llama
    } else {
        Family::Qwen3
    }
}

/// The ids transformers' tokenizer gave for each text (expected.json), and the text it decoded.
struct TokenizerCase {
    text: String,
    ids: Vec<i64>,
    without_special: Vec<i64>,
    decoded: String,
}

fn tokenizer_cases(dir: &Path) -> (usize, Vec<TokenizerCase>) {
    let expected = json(&dir.join("expected.json"));
    let tokenizer = &expected["tokenizer"];
    let ids = |v: &Value| -> Vec<i64> { serde_json::from_value(v.clone()).unwrap() };
    let cases = tokenizer["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| TokenizerCase {
            text: case["text"].as_str().unwrap().into(),
            ids: ids(&case["ids"]),
            without_special: ids(&case["ids_without_special"]),
            decoded: case["decoded"].as_str().unwrap().into(),
        })
        .collect();
    (tokenizer["vocab_size"].as_u64().unwrap() as usize, cases)
}

#[test]
fn checkpoint_tokenizers_give_transformers_ids() {
    for name in FOLDERS {
        let dir = fixture(name);
        let sources = TokenizerSources { file: None, folder: Some(&dir) };
        let tokenizer = Tokenizer::for_model(family(name), 128, sources).unwrap().unwrap();
        let (size, cases) = tokenizer_cases(&dir);
        assert_eq!(tokenizer.size(), size, "{name}");
        assert!(cases.iter().any(|c| c.text.contains("<|end_of_text|>")), "a special-token text");
        for case in &cases {
            let what = format!("{name}: {:?}", case.text);
            // transformers reads special-token text as the token; so does encode_with_special.
            assert_eq!(tokenizer.encode_with_special(&case.text).unwrap(), case.ids, "{what}");
            if tokenizer.token_id("<|end_of_text|>").is_some_and(|_| case.text.contains("<|")) {
                // Plain text: the special token's characters stay characters (those of them
                // in the tiny tokenizer's alphabet).
                let plain = tokenizer.encode(&case.text).unwrap();
                let special = tokenizer.token_id("<|end_of_text|>").unwrap();
                assert!(case.ids.contains(&special) && !plain.contains(&special), "{what}");
            } else {
                assert_eq!(tokenizer.encode(&case.text).unwrap(), case.ids, "{what}");
            }
            assert_eq!(tokenizer.decode(&case.without_special).unwrap(), case.decoded, "{what}");
        }
    }
}

#[test]
fn special_ids_come_from_the_checkpoint_files() {
    // Llama 3: one BOS and one EOS, said in config.json and generation_config.json.
    let dir = fixture("llama-tied-bf16");
    let sources = TokenizerSources { file: None, folder: Some(&dir) };
    let (tokenizer, special) = tokenizer::for_model(Family::Llama, 128, sources).unwrap();
    assert!(tokenizer.is_some());
    assert_eq!(special, SpecialIds { bos: Some(125), eos: vec![126], pad: None });
    // Qwen3: generation_config.json's list of two EOS ids wins over config.json's one; the pad
    // token is only in tokenizer_config.json, as text.
    let dir = fixture("qwen3-tied-f32");
    let sources = TokenizerSources { file: None, folder: Some(&dir) };
    let (_, special) = tokenizer::for_model(Family::Qwen3, 128, sources).unwrap();
    assert_eq!(json(&dir.join("config.json"))["eos_token_id"], 127);
    assert_eq!(special, SpecialIds { bos: Some(125), eos: vec![127, 125], pad: Some(125) });
    // GPT-2 without a folder: end-of-text.
    let (tokenizer, special) =
        tokenizer::for_model(Family::Gpt2, 50257, TokenizerSources::default()).unwrap();
    assert_eq!(tokenizer.unwrap().describe(), "GPT-2's BPE");
    assert_eq!(special, SpecialIds::gpt2());
}

#[test]
fn a_tokenizer_that_does_not_fit_the_vocabulary_is_refused() {
    let dir = fixture("llama-tied-bf16");
    let sources = TokenizerSources { file: None, folder: Some(&dir) };
    let err = Tokenizer::for_model(Family::Llama, 100, sources).err().unwrap().to_string();
    assert!(err.contains("ids up to 126") && err.contains("vocabulary has 100"), "{err}");
    // The same through --tokenizer, whatever the family.
    let file = dir.join("tokenizer.json");
    let sources = TokenizerSources { file: Some(&file), folder: None };
    let err = Tokenizer::for_model(Family::Gpt2, 126, sources).err().unwrap().to_string();
    assert!(err.contains("ids up to 126") && err.contains("vocabulary has 126"), "{err}");
    assert!(Tokenizer::for_model(Family::Gpt2, 127, sources).unwrap().is_some());
    // GPT-2's BPE fits only a vocabulary that holds all its 50,257 ids; smaller: no tokenizer.
    let none = TokenizerSources::default();
    assert!(Tokenizer::for_model(Family::Gpt2, 50256, none).unwrap().is_none());
    assert!(Tokenizer::for_model(Family::Gpt2, 50304, none).unwrap().is_some());
    // A family without a tokenizer found: none, never GPT-2's.
    assert!(Tokenizer::for_model(Family::Qwen3, 151_936, none).unwrap().is_none());
}

#[test]
fn generate_refuses_a_tokenizer_too_large_for_the_model_naming_both_sizes() {
    let temp = tempfile::tempdir().unwrap();
    let file = fixture("qwen3-tied-f32").join("tokenizer.json");
    let file = file.to_str().unwrap();
    let tiny = ["--emb-dim", "32", "--n-layers", "1", "--n-heads", "2", "--context-length", "32"];
    let mut args = vec!["generate", "hello", "--tokenizer", file, "--vocab-size", "100"];
    args.extend(tiny);
    let out = gptc_in(temp.path(), &args);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("ids up to 127") && err.contains("vocabulary has 100"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // A vocabulary it fits: the prompt is encoded with it, and the text decoded with it.
    let mut args = vec!["generate", "hello, i am", "--tokenizer", file, "--vocab-size", "128"];
    args.extend(tiny);
    args.extend(["--json", "--max-new-tokens", "3"]);
    let out = gptc_in(temp.path(), &args);
    assert_success(&out);
    let row: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(row["prompt_ids"], serde_json::json!([95, 1, 57, 93]));
}

#[test]
fn tokenize_takes_a_tokenizer_file() {
    let temp = tempfile::tempdir().unwrap();
    let dir = fixture("llama-tied-bf16");
    let file = dir.join("tokenizer.json");
    let (_, cases) = tokenizer_cases(&dir);
    let out =
        gptc_in(temp.path(), &["tokenize", "--tokenizer", file.to_str().unwrap(), &cases[0].text]);
    assert_success(&out);
    let ids: Vec<Vec<i64>> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(ids, [cases[0].ids.clone()]);
}

/// Writes the KV-cache graph of a checkpoint as a folder, its tokenizer from the checkpoint.
fn write_checkpoint_folder(checkpoint: &Path, out: &Path) -> ModelConfig {
    let (config, mut weights) = read_hf_dir(checkpoint).unwrap().unwrap();
    let options = GraphOptions { kv_cache: true, ..Default::default() };
    let model = build_model(&config, options, &mut weights, None).unwrap();
    let tokenizer = TokenizerSources { file: None, folder: Some(checkpoint) };
    let contents = FolderModel { model: &model, config: &config, options, tokenizer };
    folder::write_model_folder(out, &contents, WeightLayout::Auto, &|_| {}).unwrap();
    config
}

#[test]
fn each_family_folder_holds_its_side_files_and_check_reads_them_back() {
    let temp = tempfile::tempdir().unwrap();
    for name in FOLDERS {
        let checkpoint = fixture(name);
        let out = temp.path().join(name);
        let config = write_checkpoint_folder(&checkpoint, &out);
        let hf = json(&out.join("config.json"));
        let source = json(&checkpoint.join("config.json"));
        let (arch, model_type) = match family(name) {
            Family::Llama => ("LlamaForCausalLM", "llama"),
            _ => ("Qwen3ForCausalLM", "qwen3"),
        };
        assert_eq!(hf["architectures"][0], arch, "{name}");
        assert_eq!(hf["model_type"], model_type, "{name}");
        for key in [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "tie_word_embeddings",
            "bos_token_id",
            "eos_token_id",
        ] {
            assert_eq!(hf[key], source[key], "{name}: {key}");
        }
        // transformers 5 wrote `rope_parameters`; gptc writes the published form.
        let rope = &source["rope_parameters"];
        assert_eq!(hf["rope_theta"].as_f64(), rope["rope_theta"].as_f64(), "{name}");
        if family(name) == Family::Llama {
            for key in ["factor", "low_freq_factor", "high_freq_factor"] {
                assert_eq!(hf["rope_scaling"][key].as_f64(), rope[key].as_f64(), "{name}: {key}");
            }
            assert_eq!(hf["rope_scaling"]["rope_type"], "llama3");
            let original = "original_max_position_embeddings";
            assert_eq!(hf["rope_scaling"][original], rope[original], "{name}");
            assert_eq!(hf["head_dim"], 16);
        } else {
            assert_eq!(hf["head_dim"], source["head_dim"], "{name}");
        }
        // gptc's config.json reads back, with gptc's own reader, as the graph's config.
        let read_back = hf_config(&out.join("config.json")).unwrap().unwrap();
        assert_eq!(strip_dtype(read_back), strip_dtype(config.clone()), "{name}");
        let generation = json(&out.join("generation_config.json"));
        let source_generation = json(&checkpoint.join("generation_config.json"));
        assert_eq!(generation["eos_token_id"], source_generation["eos_token_id"], "{name}");
        let genai = json(&out.join("genai_config.json"));
        assert_eq!(genai["model"]["type"], model_type, "{name}");
        assert_eq!(genai["model"]["decoder"]["num_key_value_heads"], 2, "{name}");
        assert_eq!(genai["model"]["decoder"]["head_size"], hf["head_dim"], "{name}");
        assert_eq!(genai["model"]["eos_token_id"], source_generation["eos_token_id"], "{name}");
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            let copied = std::fs::read(out.join(file)).unwrap();
            assert_eq!(copied, std::fs::read(checkpoint.join(file)).unwrap(), "{name}: {file}");
        }
        let manifest = json(&out.join(folder::MANIFEST_FILE));
        for file in [
            "config.json",
            "generation_config.json",
            "genai_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "onnx/model.onnx",
        ] {
            assert!(manifest["files"].get(file).is_some(), "{name}: {file} in the manifest");
        }
        folder::check_side_files(&out, &config).unwrap();
    }
}

/// The config without the type its weights came in (a folder's config.json says the exported
/// precision instead).
fn strip_dtype(config: ModelConfig) -> ModelConfig {
    match config {
        ModelConfig::Llama(mut c) => {
            c.dtype = gptc_graph::WeightDtype::Float32;
            ModelConfig::Llama(c)
        }
        ModelConfig::Qwen3(mut c) => {
            c.dtype = gptc_graph::WeightDtype::Float32;
            ModelConfig::Qwen3(c)
        }
        other => other,
    }
}

#[test]
fn a_random_init_model_gets_no_tokenizer_files() {
    let temp = tempfile::tempdir().unwrap();
    let (config, _) = read_hf_dir(&fixture("qwen3-tied-f32")).unwrap().unwrap();
    let options = GraphOptions { kv_cache: true, ..Default::default() };
    let model = build_model(&config, options, &mut RandomInit { seed: 1 }, Some(1)).unwrap();
    let out = temp.path().join("random");
    let contents = FolderModel {
        model: &model,
        config: &config,
        options,
        tokenizer: TokenizerSources::default(),
    };
    folder::write_model_folder(&out, &contents, WeightLayout::Auto, &|_| {}).unwrap();
    assert!(!out.join("tokenizer.json").exists());
    assert!(!out.join("tokenizer_config.json").exists());
    let hf = json(&out.join("config.json"));
    assert_eq!(hf["eos_token_id"], Value::Null);
    folder::check_side_files(&out, &config).unwrap();
}

#[test]
fn check_catches_an_edited_config_json_of_each_family() {
    let temp = tempfile::tempdir().unwrap();
    for name in ["llama-tied-bf16", "qwen3-tied-f32"] {
        for (key, value) in [
            ("num_key_value_heads", Value::from(4)),
            ("rope_theta", Value::from(5.0)),
            ("head_dim", Value::from(8)),
            ("model_type", Value::from("mistral")),
        ] {
            let out = temp.path().join(format!("{name}-{key}"));
            let config = write_checkpoint_folder(&fixture(name), &out);
            folder::check_side_files(&out, &config).unwrap();
            let path = out.join("config.json");
            let mut hf = json(&path);
            hf[key] = value;
            std::fs::write(&path, serde_json::to_string_pretty(&hf).unwrap()).unwrap();
            let err = folder::check_side_files(&out, &config).unwrap_err().to_string();
            assert!(
                err.contains("config.json") && err.contains(&format!("/{key} ")),
                "{name}: {err}"
            );
        }
        // And the genai config's cache shape.
        let out = temp.path().join(format!("{name}-genai"));
        let config = write_checkpoint_folder(&fixture(name), &out);
        let path = out.join("genai_config.json");
        let mut genai = json(&path);
        genai["model"]["decoder"]["num_key_value_heads"] = Value::from(4);
        std::fs::write(&path, serde_json::to_string_pretty(&genai).unwrap()).unwrap();
        let err = folder::check_side_files(&out, &config).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{name}: {err}");
        // A tokenizer.json swapped for one with more ids than the model.
        let out = temp.path().join(format!("{name}-tokenizer"));
        let config = write_checkpoint_folder(&fixture(name), &out);
        let path = out.join("tokenizer.json");
        let mut tokenizer = json(&path);
        tokenizer["model"]["vocab"]["zzzz"] = Value::from(300);
        std::fs::write(&path, serde_json::to_string(&tokenizer).unwrap()).unwrap();
        let err = folder::check_side_files(&out, &config).unwrap_err().to_string();
        assert!(
            err.contains("ids up to 300") && err.contains("vocabulary has 128"),
            "{name}: {err}"
        );
    }
}

#[test]
fn export_check_and_generate_a_family_folder_as_a_user_types_them() {
    let temp = tempfile::tempdir().unwrap();
    for name in ["llama-tied-bf16", "qwen3-untied-bf16-sharded"] {
        let checkpoint = fixture(name);
        let out = format!("{name}/");
        let export = ["export", "--weights", checkpoint.to_str().unwrap(), "-o", &out];
        assert_success(&gptc_in(temp.path(), &export));
        let check = gptc_in(temp.path(), &["check", &out]);
        assert_success(&check);
        assert!(stdout(&check).contains("side files agree"), "{name}");
        // Text through the folder's own tokenizer: transformers' ids (Llama's BOS included).
        let (_, cases) = tokenizer_cases(&checkpoint);
        let args = ["generate", &cases[0].text, "--model", name, "--json", "--max-new-tokens", "4"];
        let generated = gptc_in(temp.path(), &args);
        assert_success(&generated);
        let row: Value = serde_json::from_str(&stdout(&generated)).unwrap();
        assert_eq!(row["prompt_ids"], serde_json::json!(cases[0].ids), "{name}");
        // An edited config.json: one line naming the file and the key, non-zero exit.
        let path = temp.path().join(name).join("config.json");
        let mut hf = json(&path);
        hf["num_key_value_heads"] = Value::from(4);
        std::fs::write(&path, serde_json::to_string_pretty(&hf).unwrap()).unwrap();
        let check = gptc_in(temp.path(), &["check", &out]);
        assert!(!check.status.success(), "{name}");
        let err = stderr(&check);
        assert!(err.contains("config.json") && err.contains("/num_key_value_heads"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn export_takes_a_tokenizer_file_for_a_random_init_folder_and_refuses_one_too_large_first() {
    let temp = tempfile::tempdir().unwrap();
    let config = |vocab: usize| {
        serde_json::json!({
            "model_type": "qwen3", "vocab_size": vocab, "context_length": 32, "emb_dim": 32,
            "n_heads": 2, "n_layers": 1, "hidden_dim": 48, "head_dim": 16, "qk_norm": true,
            "n_kv_groups": 1, "rope_base": 10000.0, "dtype": "float32",
        })
        .to_string()
    };
    let source = fixture("qwen3-tied-f32");
    let file = source.join("tokenizer.json");
    std::fs::write(temp.path().join("fits.json"), config(128)).unwrap();
    let args =
        ["export", "--config", "fits.json", "--tokenizer", file.to_str().unwrap(), "-o", "m/"];
    assert_success(&gptc_in(temp.path(), &args));
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        let copied = std::fs::read(temp.path().join("m").join(name)).unwrap();
        assert_eq!(copied, std::fs::read(source.join(name)).unwrap(), "{name}");
    }
    assert_success(&gptc_in(temp.path(), &["check", "m/"]));
    // A vocabulary of 100 cannot hold the tokenizer's ids up to 127: refused, nothing written.
    std::fs::write(temp.path().join("small.json"), config(100)).unwrap();
    let args =
        ["export", "--config", "small.json", "--tokenizer", file.to_str().unwrap(), "-o", "s/"];
    let out = gptc_in(temp.path(), &args);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("ids up to 127") && err.contains("vocabulary has 100"), "{err}");
    assert!(!temp.path().join("s").exists());
    let leftovers: Vec<_> = std::fs::read_dir(temp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
