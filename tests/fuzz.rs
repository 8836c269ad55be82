//! Property-based fuzzing of the parsers and the model loaders. Each property states what the
//! answer must be (the value an oracle computes, or an error), not only that nothing panicked.

mod common;

use std::path::Path;

use gptc::model::ConfigSpec;
use gptc::runtime::{load, ModelSource, RuntimeKind};
use gptc::session::{GenerationSettings, Session};
use gptc_graph::onnx::{AttributeType, DataType};
use gptc_graph::{build_model, file, GptConfig, GraphOptions, RandomInit};
use ndarray::Array3;
use proptest::prelude::*;

fn small_config() -> GptConfig {
    GptConfig {
        vocab_size: 50,
        context_length: 8,
        emb_dim: 8,
        n_heads: 2,
        n_layers: 1,
        drop_rate: 0.0,
        qkv_bias: true,
    }
}

fn small_model() -> Vec<u8> {
    let options = GraphOptions {
        kv_cache: true,
        last_token_logits: false,
        tie_weights: false,
        ..Default::default()
    };
    let model = build_model(small_config(), options, &mut RandomInit { seed: 1 }, Some(1));
    file::encode(&model.unwrap())
}

/// Cases per property: a quick default in the test suite; set GPTC_FUZZ_CASES for a long
/// session.
fn cases(default: u32) -> u32 {
    std::env::var("GPTC_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// An error as the CLI shows it: something said, in one line once the CLI joins its lines.
fn is_an_error_message(error: &impl std::fmt::Display) -> bool {
    !error.to_string().trim().is_empty()
}

/// A size as a config might hold it: small ones (valid or zero) often, any `u64` sometimes.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![0..4u64, 1..5000u64, any::<u64>()]
}

/// Whether gptc must accept a config with these values (the rules of `GptConfig::validate`,
/// restated: every size at least 1, heads dividing the width, a dropout rate in [0, 1), and
/// dims that fit ONNX's int64 shapes and the runtimes' i32 indices).
fn valid(vocab: i64, sizes: [u64; 4], drop: f64) -> bool {
    let [ctx, emb, heads, layers] = sizes;
    let limit = i32::MAX as u64;
    vocab >= 1
        && sizes.iter().all(|&n| n >= 1 && usize::try_from(n).is_ok())
        && emb % heads == 0
        && (0.0..1.0).contains(&drop)
        && vocab as u64 <= limit
        && ctx <= limit
        && emb.saturating_mul(4) <= limit
        && layers >= 1
}

/// Items joined by commas, each with a space before or after it where `spaces` says.
fn id_list(items: &[String], spaces: &[bool]) -> String {
    let pad = |i: usize| if spaces.get(i).copied().unwrap_or(false) { " " } else { "" };
    let padded: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, item)| format!("{}{item}{}", pad(2 * i), pad(2 * i + 1)))
        .collect();
    padded.join(",")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// Any text is a config that writes back to itself, or an error.
    #[test]
    fn config_text_is_a_config_or_an_error(text in ".{0,200}") {
        match GptConfig::from_json(&text) {
            Ok(config) => prop_assert_eq!(GptConfig::from_json(&config.to_json()).unwrap(), config),
            Err(e) => prop_assert!(is_an_error_message(&e)),
        }
    }

    /// A config with any numbers is accepted exactly when its values are valid.
    #[test]
    fn configs_are_accepted_exactly_when_valid(
        vocab in prop_oneof![-2..5000i64, any::<i64>()],
        ctx in size(), emb in size(), heads in size(), layers in size(),
        drop in prop_oneof![0.0..1.0f64, -1.0..2.0f64, any::<f64>()],
        bias in any::<bool>(),
    ) {
        let text = format!(
            r#"{{"vocab_size": {vocab}, "context_length": {ctx}, "emb_dim": {emb}, "n_heads": {heads}, "n_layers": {layers}, "drop_rate": {drop}, "qkv_bias": {bias}}}"#
        );
        let parsed = GptConfig::from_json(&text);
        let expected = valid(vocab, [ctx, emb, heads, layers], drop);
        prop_assert_eq!(parsed.is_ok(), expected, "{} -> {:?}", text, parsed);
        if let Ok(config) = parsed {
            let sizes = [config.context_length, config.emb_dim, config.n_heads, config.n_layers];
            prop_assert_eq!(sizes.map(|n| n as u64), [ctx, emb, heads, layers]);
            // The rate as JSON reads it (serde_json's reader may land an ulp off an extreme one).
            let read_drop: f64 = serde_json::from_str(&drop.to_string()).unwrap();
            prop_assert_eq!((config.vocab_size as i64, config.drop_rate), (vocab, read_drop));
        }
    }

    /// A list of ids, with spaces anywhere around them, reads back as those ids.
    #[test]
    fn id_lists_read_back_as_written(
        ids in proptest::collection::vec(0..=i64::MAX as u64, 1..12),
        spaces in proptest::collection::vec(any::<bool>(), 24),
    ) {
        let items: Vec<String> = ids.iter().map(u64::to_string).collect();
        let text = id_list(&items, &spaces);
        let parsed = gptc::tokenizer::parse_ids(&text).unwrap();
        prop_assert_eq!(parsed.iter().map(|&id| id as u64).collect::<Vec<_>>(), ids);
    }

    /// An empty item (`1,,2`, a comma at either end) or a word that is no id is refused: it
    /// would drop or invent a token.
    #[test]
    fn id_lists_with_a_missing_or_bad_id_are_refused(
        ids in proptest::collection::vec(any::<u32>(), 1..8),
        at in any::<prop::sample::Index>(),
        bad in prop_oneof![Just(String::new()), Just("-1".to_string()), "[a-z+.]{1,4}", Just("9223372036854775808".to_string())],
        spaces in proptest::collection::vec(any::<bool>(), 24),
    ) {
        let mut items: Vec<String> = ids.iter().map(u32::to_string).collect();
        items.insert(at.index(items.len() + 1), bad);
        let text = id_list(&items, &spaces);
        let refused = gptc::tokenizer::parse_ids(&text);
        prop_assert!(refused.is_err(), "{:?} -> {:?}", text, refused);
    }

    #[test]
    fn random_bytes_are_not_a_safetensors_checkpoint(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("random.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let config = GptConfig::preset("gpt2-small").unwrap();
        let read = gptc_graph::checkpoint::read_safetensors(&[path], &config);
        prop_assert!(read.as_ref().is_err_and(is_an_error_message));
    }

    /// Random bytes are no model: gptc's own reader and every runtime's load refuse them.
    #[test]
    fn random_bytes_are_not_a_model(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let path = Path::new("random.onnx");
        let header = file::stored_header_of_bytes(path, &bytes);
        prop_assert!(header.as_ref().is_err_and(is_an_error_message));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("random.onnx");
        std::fs::write(&path, &bytes).unwrap();
        for kind in runtimes() {
            let spec = ConfigSpec::preset("gpt2-small");
            let loaded = load(ModelSource::File { path: &path, config: &spec }, kind);
            prop_assert!(loaded.as_ref().is_err_and(is_an_error_message), "{:?}", kind);
        }
    }
}

/// tract always; ONNX Runtime too when its library is there (the test command provides it).
fn runtimes() -> Vec<RuntimeKind> {
    let mut kinds = vec![RuntimeKind::Tract];
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        kinds.push(RuntimeKind::Ort(gptc::runtime::ort::Device::Cpu));
    }
    kinds
}

proptest! {
    // Each case in a child process with a time limit: a load that never ends fails the case.
    #![proptest_config(ProptestConfig {
        cases: cases(48),
        fork: true,
        timeout: 60_000,
        ..ProptestConfig::default()
    })]

    /// A real model with bytes overwritten or cut, as a user's `--model`: the load and a short
    /// generation answer with an error, or with ids of the vocabulary; `check` answers too.
    /// (`check` compares inputs, outputs and shapes; it does not run the graph, so a model it
    /// accepts may still fail at run time: found here, an altered int64 constant.)
    #[test]
    fn damaged_models_load_and_run_to_an_error_or_valid_ids(
        cut in prop_oneof![2 => Just(usize::MAX), 1 => 0usize..20_000],
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let bytes = damaged(small_model(), cut, flips);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.onnx");
        std::fs::write(&path, &bytes).unwrap();
        let generated = generate_from(&path, RuntimeKind::Tract);
        if let Ok(ids) = &generated {
            prop_assert!(ids.iter().all(|&id| (0..50).contains(&id)), "{:?}", ids);
        } else {
            prop_assert!(generated.as_ref().is_err_and(is_an_error_message));
        }
        let checked = file::decode_model(&path, &bytes).map_err(gptc::Error::from).and_then(|model| {
            let config = ConfigSpec::default().for_model_file(file::stored_config(&model).transpose()?, &path, true)?;
            gptc::check::check_model(&path, &model, &config)
        });
        if let Err(e) = checked {
            prop_assert!(is_an_error_message(&e));
        }
    }
}

/// Three new ids for a two-token prompt from the model at `path`, as `gptc generate` runs it.
fn generate_from(path: &Path, kind: RuntimeKind) -> gptc::Result<Vec<i64>> {
    let spec = ConfigSpec::default();
    let mut loaded = load(ModelSource::File { path, config: &spec }, kind)?;
    let settings = GenerationSettings { max_new_tokens: 3, ..GenerationSettings::default() };
    let mut session = Session::new(loaded.runtime.as_mut(), &loaded.config, settings)?;
    let (completions, _) = session.run(&[vec![1, 2]], |_| Ok(()))?;
    Ok(completions.into_iter().flat_map(|c| c.output_ids).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    /// A real checkpoint with bytes overwritten or cut: the reader refuses it, or every tensor
    /// it gives is finite and fills its shape.
    #[test]
    fn damaged_safetensors_read_to_an_error_or_whole_finite_tensors(
        cut in 0usize..4000,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let bytes = damaged(small_safetensors(), cut, flips);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let config = GptConfig { emb_dim: 8, n_heads: 2, ..GptConfig::preset("gpt2-small").unwrap() };
        match gptc_graph::checkpoint::read_safetensors(&[path], &config) {
            Ok(tensors) => {
                for (name, tensor) in &tensors.0 {
                    prop_assert_eq!(tensor.data.len(), tensor.shape.iter().product::<usize>(), "{}", name);
                    prop_assert!(tensor.data.iter().all(|x| x.is_finite()), "{}", name);
                }
            }
            Err(e) => prop_assert!(is_an_error_message(&e)),
        }
    }
}

/// `bytes` with some overwritten, then cut to at most `cut` (at least one byte stays).
fn damaged(mut bytes: Vec<u8>, cut: usize, flips: Vec<(prop::sample::Index, u8)>) -> Vec<u8> {
    for (at, value) in flips {
        let i = at.index(bytes.len());
        bytes[i] = value;
    }
    bytes.truncate(bytes.len().min(cut.max(1)));
    bytes
}

/// A safetensors file with a split attention matrix, a bias and an embedding row block.
fn small_safetensors() -> Vec<u8> {
    use safetensors::tensor::TensorView;
    let values: Vec<u8> = (0..8 * 24).flat_map(|i| (i as f32 * 0.01).to_le_bytes()).collect();
    let c_attn = TensorView::new(safetensors::Dtype::F32, vec![8, 24], &values).unwrap();
    let bias = TensorView::new(safetensors::Dtype::F32, vec![24], &values[..96]).unwrap();
    let wpe = TensorView::new(safetensors::Dtype::F32, vec![4, 8], &values[..128]).unwrap();
    let tensors = [
        ("h.0.attn.c_attn.weight", c_attn),
        ("h.0.attn.c_attn.bias", bias),
        ("transformer.wpe.weight", wpe),
    ];
    safetensors::tensor::serialize(tensors, None).unwrap()
}

/// The error of a comparison counts a NaN or an infinity as infinitely wrong: folding with
/// `f32::max` skipped NaN and scored an all-NaN output 0.
#[test]
fn a_nan_or_infinite_output_is_infinitely_wrong() {
    let expected = Array3::from_shape_fn((1, 2, 3), |(_, i, j)| (i * 3 + j) as f32 - 2.5);
    assert_eq!(common::relative_error(&expected, &expected), 0.0);
    let all_nan = Array3::from_elem((1, 2, 3), f32::NAN);
    assert_eq!(common::relative_error(&all_nan, &expected), f32::INFINITY);
    let mut one_nan = expected.clone();
    one_nan[[0, 1, 2]] = f32::NAN;
    assert_eq!(common::relative_error(&one_nan, &expected), f32::INFINITY);
    assert_eq!(common::relative_error(&expected, &one_nan), f32::INFINITY);
    let mut infinite = expected.clone();
    infinite[[0, 0, 0]] = f32::NEG_INFINITY;
    assert_eq!(common::relative_error(&infinite, &expected), f32::INFINITY);
    let zeros = Array3::zeros((1, 2, 3));
    assert_eq!(common::relative_error(&zeros, &zeros), 0.0);
    assert_eq!(common::relative_error(&expected, &zeros), f32::INFINITY);
}

/// Every integer attribute (axes, perms, flags) and every small int64 constant (shapes,
/// indices, steps) of a real model, set to values no graph should hold, as `gptc generate
/// --model`: ids, or one error line with exit 1, in bounded time; never a panic, an abort or a
/// hang. (tract-onnx spun for ever on a LayerNormalization axis outside the rank, overflowed the
/// stack on a Range step below 1, and panicked in a Gather on an altered index.)
#[test]
fn every_integer_attribute_or_constant_out_of_range_gives_ids_or_one_error_line() {
    let original = file::decode_model(Path::new("small.onnx"), &small_model()).unwrap();
    let graph = original.graph.as_ref().unwrap();
    let mut damages: Vec<(String, gptc_graph::onnx::ModelProto)> = Vec::new();
    for value in [i64::MIN, -5, 5, 1000, i64::MAX] {
        for (n, node) in graph.node.iter().enumerate() {
            for (a, attribute) in node.attribute.iter().enumerate() {
                let int = attribute.r#type == AttributeType::Int as i32;
                if !int && attribute.ints.is_empty() {
                    continue;
                }
                let mut model = original.clone();
                let changed = &mut model.graph.as_mut().unwrap().node[n].attribute[a];
                match changed.ints.first_mut() {
                    Some(first) => *first = value,
                    None => changed.i = value,
                }
                damages.push((format!("{} {} = {value}", node.name, attribute.name), model));
            }
        }
        for (t, tensor) in graph.initializer.iter().enumerate() {
            let elements = tensor.int64_data.len() + tensor.raw_data.len() / 8;
            if tensor.data_type != DataType::Int64 as i32 || !(1..=8).contains(&elements) {
                continue;
            }
            let mut model = original.clone();
            let changed = &mut model.graph.as_mut().unwrap().initializer[t];
            match changed.int64_data.first_mut() {
                Some(first) => *first = value,
                None => changed.raw_data[..8].copy_from_slice(&value.to_le_bytes()),
            }
            damages.push((format!("constant {} = {value}", tensor.name), model));
        }
    }
    assert!(damages.len() >= 100, "only {} damages", damages.len());
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, (label, model)) in damages.into_iter().enumerate() {
        let path = dir.path().join(format!("{i}.onnx"));
        std::fs::write(&path, file::encode(&model)).unwrap();
        let path = path.to_str().unwrap();
        let args = ["generate", "--ids", "1,2", "--max-new-tokens", "3", "--model", path];
        match gptc_within(&args, std::time::Duration::from_secs(30)) {
            None => failures.push(format!("{label}: no answer in 30 s")),
            Some(out) => {
                let err = common::stderr(&out);
                let answered = match out.status.code() {
                    Some(0) => true,
                    Some(1) => err.trim_end().lines().count() == 1,
                    _ => false,
                };
                if !answered {
                    failures.push(format!("{label}: {:?} {err}", out.status));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// gptc's output, or `None` when it has not ended within `limit` (it is killed then).
fn gptc_within(args: &[&str], limit: std::time::Duration) -> Option<std::process::Output> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptc"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gptc runs");
    let start = std::time::Instant::now();
    while child.try_wait().expect("gptc is waited for").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Some(child.wait_with_output().expect("gptc's output is read"))
}
