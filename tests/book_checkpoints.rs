//! The book's own checkpoints, as PyTorch saved them (tests/fixtures/book, written by
//! scripts/make_book_checkpoints.py from models with the book's module structure): every save
//! form of chapter 4's GPTModel gives PyTorch's logits and `generate_text_simple`'s ids; the
//! bonus Llama3Model and Qwen3Model are read and their names mapped onto transformers'; hostile
//! files are refused in one line. Needs no torch: the fixtures hold PyTorch's numbers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{assert_success, gptc, relative_error, stderr, stdout};
use gptc::model::{compile, ConfigSpec, Weights};
use gptc::runtime::tract::TractRuntime;
use gptc::runtime::{Runtime, Step};
use gptc_graph::book::{self, Family, Role, SwigluShape};
use gptc_graph::{file, Family as ModelFamily, GraphOptions};
use ndarray::{Array2, Array3};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/book")
}

/// What PyTorch computed for one saved file (see the script).
#[derive(Deserialize)]
struct Expected {
    config: String,
    ids: Vec<Vec<i64>>,
    logits: Vec<Vec<Vec<f32>>>,
    prompt: Vec<i64>,
    context_size: usize,
    greedy: Vec<i64>,
    #[serde(default)]
    tied: bool,
    #[serde(default)]
    book_to_hf: BTreeMap<String, String>,
    #[serde(default)]
    hf_shapes: BTreeMap<String, Vec<usize>>,
    #[serde(default)]
    book_shapes: BTreeMap<String, Vec<usize>>,
    #[serde(default)]
    book_dtypes: BTreeMap<String, String>,
}

fn expected(family: &str) -> BTreeMap<String, Expected> {
    let text = std::fs::read_to_string(fixtures().join(family).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(rows: &[Vec<i64>]) -> Array2<i64> {
    Array2::from_shape_fn((rows.len(), rows[0].len()), |(r, c)| rows[r][c])
}

fn logits(rows: &[Vec<Vec<f32>>]) -> Array3<f32> {
    let (b, t, v) = (rows.len(), rows[0].len(), rows[0][0].len());
    Array3::from_shape_fn((b, t, v), |(i, j, k)| rows[i][j][k])
}

fn gpt_spec(expected: &Expected) -> ConfigSpec {
    ConfigSpec { file: Some(fixtures().join("gpt2").join(&expected.config)), ..Default::default() }
}

fn compiled_runtime(path: &Path, spec: &ConfigSpec, options: GraphOptions) -> TractRuntime {
    let compiled = compile(spec, &Weights::Checkpoint(path.to_path_buf()), options)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(compiled.options.tie_weights, options.tie_weights);
    TractRuntime::from_bytes(&file::encode(&compiled.model)).unwrap()
}

#[test]
fn every_save_form_gives_pytorchs_logits() {
    let forms = expected("gpt2");
    for form in [
        "model.pth",
        "model_and_optimizer.pth",
        "model_fp16.pth",
        "model_bf16.pth",
        "model_views.pth",
        "model_tied.pth",
        "model.safetensors",
    ] {
        let exp = &forms[form];
        let path = fixtures().join("gpt2").join(form);
        let mut variants = vec![common::PLAIN];
        if exp.tied {
            variants.push(GraphOptions { tie_weights: true, ..common::PLAIN });
        }
        for options in variants {
            let mut runtime = compiled_runtime(&path, &gpt_spec(exp), options);
            let ours = runtime.run(&Step::ids_only(&ids(&exp.ids))).unwrap();
            let err = relative_error(&ours, &logits(&exp.logits));
            assert!(err < 1e-4, "{form} (tied: {}): relative error {err}", options.tie_weights);
        }
    }
}

#[test]
fn greedy_ids_equal_generate_text_simple() {
    // 6 prompt tokens and 14 new ones in a context of 16: the last steps see windows that
    // dropped the prompt's start, as the book's loop crops them.
    for (form, exp) in expected("gpt2") {
        let path = fixtures().join("gpt2").join(&form);
        let mut runtime = compiled_runtime(&path, &gpt_spec(&exp), common::CACHE_LAST);
        let (ours, _) = common::greedy_with_logits(
            &mut runtime,
            std::slice::from_ref(&exp.prompt),
            exp.greedy.len(),
            exp.context_size,
        );
        assert_eq!(ours[0], exp.greedy, "{form}");
    }
}

fn csv(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

fn output_ids(out: &std::process::Output) -> Vec<i64> {
    let json: serde_json::Value = serde_json::from_str(stdout(out).trim()).unwrap();
    serde_json::from_value(json["output_ids"].clone()).unwrap()
}

#[test]
fn from_the_books_model_pth_to_generate_in_two_commands() {
    let dir = tempfile::tempdir().unwrap();
    let forms = expected("gpt2");
    let gpt = fixtures().join("gpt2");
    let config = gpt.join("config.json");
    for form in ["model.pth", "model_and_optimizer.pth"] {
        let exp = &forms[form];
        let onnx = dir.path().join("out.onnx");
        let weights = gpt.join(form);
        let export = gptc(&[
            "export",
            "--weights",
            weights.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "-o",
            onnx.to_str().unwrap(),
        ]);
        assert_success(&export);
        let new = exp.greedy.len().to_string();
        let generate = gptc(&[
            "generate",
            "--model",
            onnx.to_str().unwrap(),
            "--ids",
            &csv(&exp.prompt),
            "--max-new-tokens",
            &new,
            "--json",
        ]);
        assert_success(&generate);
        assert_eq!(output_ids(&generate), exp.greedy, "{form}");
        assert_success(&gptc(&["check", onnx.to_str().unwrap()]));

        // The same in one command, compiled in memory.
        let direct = gptc(&[
            "generate",
            "--weights",
            weights.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--ids",
            &csv(&exp.prompt),
            "--max-new-tokens",
            &new,
            "--json",
        ]);
        assert_success(&direct);
        assert_eq!(output_ids(&direct), exp.greedy, "{form}");
    }
}

/// Runs `gptc export` on `weights` with the GPT fixtures' config, into a new folder.
fn export(weights: &Path, extra: &[&str]) -> (std::process::Output, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let config = fixtures().join("gpt2/config.json");
    let mut args = vec![
        "export",
        "--weights",
        weights.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    (gptc(&args), dir, out)
}

/// The export failed with one line on stderr that contains `expected`, and wrote nothing.
fn refused(weights: &Path, extra: &[&str], expected: &str) {
    let (out, _dir, onnx) = export(weights, extra);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{}: {err}", weights.display());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(expected), "expected {expected:?} in {err}");
    assert!(!onnx.exists(), "a refused export wrote {}", onnx.display());
}

#[test]
fn a_head_equal_to_the_embedding_exports_tied() {
    let dir = tempfile::tempdir().unwrap();
    let tied = dir.path().join("model_tied.pth");
    std::fs::copy(fixtures().join("gpt2/model_tied.pth"), &tied).unwrap();
    let (out, _dir, onnx) = export(&tied, &["--tie-weights"]);
    assert_success(&out);
    assert!(stderr(&out).contains(", tied"), "{}", stderr(&out));
    assert!(onnx.exists());

    let untied = dir.path().join("model.pth");
    std::fs::copy(fixtures().join("gpt2/model.pth"), &untied).unwrap();
    refused(&untied, &["--tie-weights"], "`out_head.weight`: differs from `tok_emb.weight`");
}

/// The book's names in safetensors, as `safetensors.torch.save_file(model.state_dict())` wrote
/// them, changed by `edit` and written to `path`.
fn edited_safetensors(
    path: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(fixtures().join("gpt2/model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: BTreeMap<_, _> = file
        .iter()
        .map(|(name, t)| (name.to_string(), (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn names_missing_unused_or_misshapen_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let case = |name: &str, edit: &dyn Fn(&mut BTreeMap<_, _>)| {
        let path = dir.path().join(format!("{name}.safetensors"));
        edited_safetensors(&path, |t| edit(t));
        path
    };
    let missing = case("missing", &|t| {
        t.remove("trf_blocks.1.ff.layers.2.bias");
    });
    refused(&missing, &[], "`trf_blocks.1.ff.layers.2.bias`: used by the model but missing");

    let unused = case("unused", &|t| {
        let extra = (safetensors::Dtype::F32, vec![2], f32_bytes(&[0.0, 1.0]));
        t.insert("trf_blocks.0.att.rotary.weight".into(), extra);
    });
    refused(&unused, &[], "`trf_blocks.0.att.rotary.weight`: in the checkpoint but not used");

    let misshapen = case("misshapen", &|t| {
        t.insert(
            "final_norm.shift".into(),
            (safetensors::Dtype::F32, vec![17], f32_bytes(&[0.0; 17])),
        );
    });
    refused(&misshapen, &[], "`final_norm.shift`: shape [17], expected [16]");

    let nan = case("nan", &|t| {
        let (_, _, data) = t.get_mut("trf_blocks.0.att.W_key.weight").unwrap();
        data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    refused(&nan, &[], "`trf_blocks.0.att.W_key.weight`: holds NaN");

    // A config that is not the checkpoint's: the first tensor of another shape is named.
    let (out, _dir, _) = export(&fixtures().join("gpt2/model.pth"), &["--emb-dim", "32"]);
    assert!(
        stderr(&out).contains("`tok_emb.weight`: shape [96, 16], expected [96, 32]"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_mask_buffer_is_accepted_only_as_the_causal_mask() {
    let dir = tempfile::tempdir().unwrap();
    let mask = "trf_blocks.1.att.mask";
    // One future position let through (row 2 may see column 3).
    let leaky = dir.path().join("leaky.safetensors");
    edited_safetensors(&leaky, |t| {
        let (_, _, data) = t.get_mut(mask).unwrap();
        data[(2 * 16 + 3) * 4..(2 * 16 + 4) * 4].copy_from_slice(&0f32.to_le_bytes());
    });
    refused(&leaky, &[], "`trf_blocks.1.att.mask`: is not the causal mask of context_length 16");

    // The mask of a shorter context.
    let short = dir.path().join("short.safetensors");
    edited_safetensors(&short, |t| {
        let values: Vec<f32> = (0..64).map(|k| if k % 8 > k / 8 { 1.0 } else { 0.0 }).collect();
        t.insert(mask.into(), (safetensors::Dtype::F32, vec![8, 8], f32_bytes(&values)));
    });
    refused(&short, &[], "`trf_blocks.1.att.mask`: shape [8, 8], expected [16, 16]");

    // A non-persistent buffer is not saved at all: nothing to check, same logits.
    let without = dir.path().join("without.safetensors");
    edited_safetensors(&without, |t| t.retain(|name, _| !name.ends_with(".att.mask")));
    let exp = &expected("gpt2")["model.safetensors"];
    let mut runtime = compiled_runtime(&without, &gpt_spec(exp), common::PLAIN);
    let ours = runtime.run(&Step::ids_only(&ids(&exp.ids))).unwrap();
    assert!(relative_error(&ours, &logits(&exp.logits)) < 1e-4);
}

#[test]
fn hostile_files_are_refused_in_one_line() {
    let hostile = fixtures().join("hostile");
    refused(&hostile.join("foreign_global.pth"), &[], "the global `posix.system`");
    refused(&hostile.join("whole_module.pth"), &[], "save `model.state_dict()`");
    refused(&hostile.join("short_storage.pth"), &[], "shorter than its tensor");
    refused(&hostile.join("deflated.pth"), &[], "is compressed (Deflated");
    refused(
        &hostile.join("legacy.pth"),
        &[],
        "re-save it with PyTorch >= 1.6, `torch.save(model.state_dict(), path)`",
    );

    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(fixtures().join("gpt2/model.pth")).unwrap();
    let truncated = dir.path().join("truncated.pth");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    refused(&truncated, &[], "the zip is truncated or damaged");
    // Cut anywhere, or one byte flipped anywhere: an error, never a panic or wrong weights.
    let config = gptc_graph::GptConfig::from_json(
        &std::fs::read_to_string(fixtures().join("gpt2/config.json")).unwrap(),
    )
    .unwrap();
    let path = dir.path().join("damaged.pth");
    for cut in (0..whole.len()).step_by(401) {
        std::fs::write(&path, &whole[..cut]).unwrap();
        assert!(book::read_gpt(&path, &config, false).is_err(), "cut at {cut}");
        let mut flipped = whole.clone();
        flipped[cut] ^= 0x10;
        std::fs::write(&path, &flipped).unwrap();
        if let Ok(tensors) = book::read_gpt(&path, &config, false) {
            // Only bytes no check covers may change unnoticed (a zip timestamp, say).
            std::fs::write(&path, &whole).unwrap();
            assert_eq!(tensors, book::read_gpt(&path, &config, false).unwrap(), "flip at {cut}");
        }
    }

    // Zip bombs: a record claiming 4 GB inflated from a few bytes; a directory claiming
    // 65,535 records; a record claiming more bytes than the file; records overlapping.
    let bomb = dir.path().join("bomb.pth");
    std::fs::write(&bomb, zip(&[Record::deflated("m/data.pkl", b"\x03\x00", 4_000_000_000)], None))
        .unwrap();
    refused(&bomb, &[], "is compressed (Deflated, 4000000000 bytes unpacked)");
    let many = dir.path().join("many.pth");
    std::fs::write(&many, zip(&[Record::stored("m/data.pkl", b"\x80\x02}.")], Some(65_535)))
        .unwrap();
    refused(&many, &[], "the zip is truncated or damaged");
    let long = dir.path().join("long.pth");
    let mut record = Record::stored("m/data.pkl", b"\x80\x02}.");
    record.claimed = Some(1 << 30);
    std::fs::write(&long, zip(&[record], None)).unwrap();
    refused(&long, &[], "m/data.pkl");
    let overlap = dir.path().join("overlap.pth");
    let mut twice = Record::stored("m/data/0", &[0; 64]);
    twice.same_data_as_previous = true;
    std::fs::write(&overlap, zip(&[Record::stored("m/data.pkl", b"\x80\x02}."), twice], None))
        .unwrap();
    refused(&overlap, &[], "overlap");
}

struct Record<'a> {
    name: &'a str,
    method: u16,
    data: &'a [u8],
    /// The uncompressed size the headers claim, if not the data's length.
    claimed: Option<u32>,
    /// The central directory points this record at the previous record's bytes.
    same_data_as_previous: bool,
}

impl<'a> Record<'a> {
    fn stored(name: &'a str, data: &'a [u8]) -> Record<'a> {
        Record { name, method: 0, data, claimed: None, same_data_as_previous: false }
    }

    fn deflated(name: &'a str, data: &'a [u8], claimed: u32) -> Record<'a> {
        Record { name, method: 8, data, claimed: Some(claimed), same_data_as_previous: false }
    }
}

fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &byte| {
        (0..8).fold(
            crc ^ byte as u32,
            |c, _| if c & 1 == 1 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 },
        )
    })
}

/// A zip as the format's spec lays it out (local headers, central directory, end record),
/// with whatever sizes and counts a hostile file would claim.
fn zip(records: &[Record], claimed_count: Option<u16>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let mut previous_offset = 0u32;
    for record in records {
        let crc = crc32(record.data);
        let size = record.data.len() as u32;
        let unpacked = record.claimed.unwrap_or(size);
        let header = |signature: u32, central_entry: bool, offset: u32| {
            let mut h = signature.to_le_bytes().to_vec();
            if central_entry {
                h.extend(20u16.to_le_bytes()); // version made by
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(record.method.to_le_bytes());
            h.extend([0u8; 4]); // time, date
            h.extend(crc.to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend(unpacked.to_le_bytes());
            h.extend((record.name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central_entry {
                h.extend([0u8; 10]); // comment length, disk, internal and external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(record.name.as_bytes());
            h
        };
        let offset = if record.same_data_as_previous { previous_offset } else { out.len() as u32 };
        if !record.same_data_as_previous {
            out.extend(header(0x0403_4b50, false, 0));
            out.extend(record.data);
        }
        central.extend(header(0x0201_4b50, true, offset));
        previous_offset = offset;
    }
    let directory_start = out.len() as u32;
    out.extend(&central);
    let count = claimed_count.unwrap_or(records.len() as u16);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]); // disk numbers
    out.extend(count.to_le_bytes());
    out.extend(count.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(directory_start.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// The bonus models' fixtures: their transformers shape, from the book's config.
fn swiglu_shape(family: &str) -> SwigluShape {
    let text = std::fs::read_to_string(fixtures().join(family).join("config.json")).unwrap();
    let c: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = |key: &str| c[key].as_u64().unwrap() as usize;
    SwigluShape {
        vocab_size: n("vocab_size"),
        emb_dim: n("emb_dim"),
        n_layers: n("n_layers"),
        n_heads: n("n_heads"),
        n_kv_groups: n("n_kv_groups"),
        head_dim: c["head_dim"].as_u64().map_or(n("emb_dim") / n("n_heads"), |d| d as usize),
        hidden_dim: n("hidden_dim"),
        qk_norm: c["qk_norm"].as_bool().unwrap_or(false),
        norm_shift: false,
    }
}

#[test]
fn llama3_and_qwen3_checkpoints_map_onto_transformers_names() {
    for (family, kind, list) in [
        ("llama3", Family::Llama3, book::llama3_model as fn(&SwigluShape) -> Vec<book::BookTensor>),
        ("qwen3", Family::Qwen3, book::qwen3_model),
    ] {
        let exp = &expected(family)["model.pth"];
        let path = fixtures().join(family).join("model.pth");
        let bytes = std::fs::read(&path).unwrap();
        let views = book::read_views(&path, &bytes).unwrap();

        // The reader sees what PyTorch saved: names, shapes, dtypes (Qwen3 mixes bfloat16
        // weights with float32 norms, as the book's model does).
        let read: BTreeMap<_, _> = views
            .iter()
            .map(|v| (v.name.clone(), (v.shape.clone(), v.dtype.name().to_string())))
            .collect();
        let saved: BTreeMap<_, _> = exp
            .book_shapes
            .iter()
            .map(|(name, shape)| (name.clone(), (shape.clone(), exp.book_dtypes[name].clone())))
            .collect();
        assert_eq!(read, saved, "{family}");
        assert_eq!(Family::of_names(views.iter().map(|v| v.name.as_str())), Some(kind));

        // gptc's lists are the script's mapping, whose renamed tensors made transformers'
        // forward give the book model's logits; mapped, they are transformers' state dict.
        let expected_list = list(&swiglu_shape(family));
        let pairs: BTreeMap<String, String> = expected_list
            .iter()
            .map(|t| match &t.role {
                Role::Weight { target, transpose: false } => (t.name.clone(), target.clone()),
                other => panic!("{family}: {} has role {other:?}", t.name),
            })
            .collect();
        assert_eq!(pairs, exp.book_to_hf, "{family}");
        let mapped = book::map(&views, &expected_list, false).unwrap();
        let shapes: BTreeMap<_, _> =
            mapped.0.iter().map(|(name, t)| (name.clone(), t.shape.clone())).collect();
        assert_eq!(shapes, exp.hf_shapes, "{family}");
        let q = views.iter().find(|v| v.name == "trf_blocks.1.att.W_query.weight").unwrap();
        assert_eq!(mapped.0["model.layers.1.self_attn.q_proj.weight"].data, q.to_f32().unwrap());

        // Given GPT-2's config, the export says what the file holds.
        refused(&path, &[], &format!("holds the book's {}", kind.class_name()));
    }
}

/// The book's config for a bonus model, read in its family's keys (`--family`).
fn family_spec(family: &str) -> ConfigSpec {
    let model_family = match family {
        "llama3" => ModelFamily::Llama,
        _ => ModelFamily::Qwen3,
    };
    ConfigSpec {
        file: Some(fixtures().join(family).join("config.json")),
        family: Some(model_family),
        ..Default::default()
    }
}

#[test]
fn llama3_and_qwen3_save_forms_give_pytorchs_logits_and_greedy_ids() {
    for family in ["llama3", "qwen3"] {
        let forms = expected(family);
        for form in ["model.pth", "model_and_optimizer.pth", "model.safetensors"] {
            let exp = &forms[form];
            let path = fixtures().join(family).join(form);
            let mut runtime = compiled_runtime(&path, &family_spec(family), common::PLAIN);
            let ours = runtime.run(&Step::ids_only(&ids(&exp.ids))).unwrap();
            let err = relative_error(&ours, &logits(&exp.logits));
            assert!(err < 1e-4, "{family} {form}: relative error {err}");
            let mut runtime = compiled_runtime(&path, &family_spec(family), common::CACHE_LAST);
            let (greedy, _) = common::greedy_with_logits(
                &mut runtime,
                std::slice::from_ref(&exp.prompt),
                exp.greedy.len(),
                exp.context_size,
            );
            assert_eq!(greedy[0], exp.greedy, "{family} {form}");
        }
        // The optimizer's step changed the weights: the forms are not one file thrice.
        assert_ne!(forms["model.pth"].greedy, forms["model_and_optimizer.pth"].greedy, "{family}");
    }
}

#[test]
fn a_books_llama3_or_qwen3_pth_to_generate_in_two_commands() {
    let dir = tempfile::tempdir().unwrap();
    for (family, flag) in [("llama3", "llama"), ("qwen3", "qwen3")] {
        let forms = expected(family);
        let config = fixtures().join(family).join("config.json");
        for form in ["model.pth", "model_and_optimizer.pth"] {
            let exp = &forms[form];
            let weights = fixtures().join(family).join(form);
            let onnx = dir.path().join(format!("{family}.onnx"));
            let mut args = vec!["export", "--weights", weights.to_str().unwrap()];
            args.extend(["--config", config.to_str().unwrap(), "--family", flag]);
            args.extend(["-o", onnx.to_str().unwrap()]);
            assert_success(&gptc(&args));
            let new = exp.greedy.len().to_string();
            let prompt = csv(&exp.prompt);
            let mut generate = vec!["generate", "--model", onnx.to_str().unwrap()];
            generate.extend(["--ids", &prompt, "--max-new-tokens", &new, "--json"]);
            for runtime in ["tract", "ort"] {
                let mut generate = generate.clone();
                generate.extend(["--runtime", runtime]);
                let out = gptc(&generate);
                assert_success(&out);
                assert_eq!(output_ids(&out), exp.greedy, "{family} {form} {runtime}");
            }
            assert_success(&gptc(&["check", onnx.to_str().unwrap()]));
        }

        // Read in another family's keys, or as another family's checkpoint: refused by name.
        let other = if flag == "llama" { "qwen3" } else { "llama" };
        let weights = fixtures().join(family).join("model.pth");
        let onnx = dir.path().join("refused.onnx");
        let out = gptc(&[
            "export",
            "--weights",
            weights.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--family",
            other,
            "-o",
            onnx.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(stderr(&out).trim_end().lines().count(), 1, "{}", stderr(&out));
        assert!(!onnx.exists());
    }
    // A Qwen3 config over a Llama3Model checkpoint: the file's model is named.
    let weights = fixtures().join("llama3/model.pth");
    let config = fixtures().join("qwen3/config.json");
    let onnx = dir.path().join("refused.onnx");
    let out = gptc(&[
        "export",
        "--weights",
        weights.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--family",
        "qwen3",
        "-o",
        onnx.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("holds the book's Llama3Model, and the config is a qwen3 one"),
        "{}",
        stderr(&out)
    );
}
