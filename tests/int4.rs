//! 4-bit weights: the file means what gptc thinks it means. The reference forward runs on the
//! weights the stored blocks dequantize to, and tract and ONNX Runtime (at accuracy level 0,
//! float32 compute) give its logits; the level gptc writes by default (4: int8 activations in
//! ONNX Runtime) is measured in BENCHMARKS.md, not asserted.

mod common;

use common::reference::Reference;
use common::{assert_success, gptc_in, relative_error, stderr, tiny_config, token_ids, CACHE};
use common::{greedy_with_logits, reference_greedy, NoisyInit, PLAIN};
use gptc::runtime::ort::{Device, OrtRuntime};
use gptc::runtime::tract::TractRuntime;
use gptc::runtime::{Runtime, Step};
use gptc_graph::{build_model, file, GptConfig, GraphOptions, Quantization, RandomInit};

const EXACT: Quantization = Quantization::Int4 { accuracy_level: 0 };
const TOLERANCE: f32 = 1e-3;

/// The encoded model and the weights it means (4-bit ones dequantized).
fn compile_int4(
    config: &GptConfig,
    options: GraphOptions,
    seed: u64,
) -> (Vec<u8>, gptc_graph::TensorMap) {
    let model = build_model(config, options, &mut RandomInit { seed }, Some(seed)).unwrap();
    (file::encode(&model), file::float_initializers(&model).unwrap())
}

fn runtimes(bytes: &[u8]) -> Vec<Box<dyn Runtime>> {
    vec![
        Box::new(TractRuntime::from_bytes(bytes).unwrap()),
        Box::new(OrtRuntime::from_bytes(bytes, Device::Cpu).unwrap()),
    ]
}

#[test]
fn tiny_int4_models_give_the_dequantized_references_logits_on_both_runtimes() {
    for (qkv_bias, tie_weights) in [(false, false), (true, true)] {
        let config = tiny_config(2, qkv_bias);
        let options = GraphOptions { tie_weights, quantization: EXACT, ..PLAIN };
        let (bytes, weights) = compile_int4(&config, options, 11);
        // Every projection and the head are 4-bit: the weights they mean are not the init's.
        assert!(weights.0.contains_key("h.1.mlp.c_proj.weight"));
        // Tied, the head is the token embedding's one 4-bit table; untied, a table of its own.
        let head = if tie_weights { "wte.weight" } else { "lm_head.weight" };
        assert!(weights.0.contains_key(head), "the head is a 4-bit table");
        assert_eq!(weights.0.contains_key("lm_head.weight"), !tie_weights);
        let reference = Reference::new(&config, &weights);
        for mut runtime in runtimes(&bytes) {
            for (batch, seq) in [(1, 1), (2, 13), (1, config.context_length)] {
                let ids = token_ids(batch, seq, config.vocab_size, seq as u64);
                let err = relative_error(
                    &runtime.run(&Step::ids_only(&ids)).unwrap(),
                    &reference.logits(&ids).unwrap(),
                );
                let name = runtime.name();
                assert!(err < TOLERANCE, "{name} tied {tie_weights} {batch}x{seq}: {err}");
            }
        }
    }
}

#[test]
fn the_comparison_can_fail_a_float_reference_is_not_the_int4_model() {
    let config = tiny_config(2, false);
    let options = GraphOptions { quantization: EXACT, ..PLAIN };
    let (bytes, _) = compile_int4(&config, options, 11);
    let (_, float_weights) = compile_int4(&config, PLAIN, 11);
    let ids = token_ids(1, 9, config.vocab_size, 2);
    let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
    let err = relative_error(
        &tract.run(&Step::ids_only(&ids)).unwrap(),
        &Reference::new(&config, &float_weights).logits(&ids).unwrap(),
    );
    assert!(err > 10.0 * TOLERANCE, "quantization moved nothing: {err}");
}

#[test]
fn gpt2_small_int4_decodes_as_its_dequantized_reference_on_both_runtimes() {
    let config = GptConfig::preset("gpt2-small").unwrap();
    let options = GraphOptions { quantization: EXACT, ..CACHE };
    let (bytes, weights) = compile_int4(&config, options, 123);
    let reference = Reference::new(&config, &weights);
    let prompt = vec![15496, 11, 314, 716];
    let (expected_ids, expected_logits) = reference_greedy(&reference, &prompt, 3, 1024);
    for mut runtime in runtimes(&bytes) {
        let (ids, logits) =
            greedy_with_logits(runtime.as_mut(), std::slice::from_ref(&prompt), 3, 1024);
        assert_eq!(ids[0], expected_ids, "{}", runtime.name());
        for (step, (got, want)) in logits[0].iter().zip(&expected_logits).enumerate() {
            let shape = (1, 1, got.len());
            let err = relative_error(
                &got.clone().into_shape_with_order(shape).unwrap(),
                &want.clone().into_shape_with_order(shape).unwrap(),
            );
            assert!(err < TOLERANCE, "{} step {step}: {err}", runtime.name());
        }
    }
}

/// At accuracy level 4 ONNX Runtime quantizes activations to int8; tract runs gptc's own
/// kernel, which does the same (with its own rounding): both stay as near the dequantized
/// reference as int8 activations allow (1.5e-2 of random-init gpt2-small's flat logits, each),
/// and a broken kernel would be far off.
#[test]
fn at_level_4_tract_runs_gptcs_int8_kernel_close_to_onnx_runtime() {
    let config = GptConfig::preset("gpt2-small").unwrap();
    let options = GraphOptions { quantization: Quantization::Int4 { accuracy_level: 4 }, ..CACHE };
    let (bytes, weights) = compile_int4(&config, options, 123);
    let ids = token_ids(1, 24, config.vocab_size, 5);
    let expected = Reference::new(&config, &weights).logits(&ids).unwrap();
    let mut outputs = Vec::new();
    for mut runtime in runtimes(&bytes) {
        let ids = ids.view().to_owned();
        let step = Step {
            input_ids: &ids,
            attention_mask: Some(&ndarray::Array2::ones((1, 24))),
            position_ids: Some(&ndarray::Array2::from_shape_fn((1, 24), |(_, j)| j as i64)),
        };
        let logits = runtime.run(&step).unwrap();
        let err = relative_error(&logits, &expected);
        eprintln!("{}: {err:.2e} from the dequantized reference", runtime.name());
        assert!(err < 3e-2, "{}: {err}", runtime.name());
        outputs.push(logits);
    }
    let between = relative_error(&outputs[0], &outputs[1]);
    eprintln!("tract against ONNX Runtime at level 4: {between:.2e}");
    assert!(between < 3e-2, "{between}");
}

#[test]
fn the_cli_exports_checks_and_refuses_int4_as_a_user_expects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tiny = ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"];
    let mut export = vec!["export", "--quantize", "int4", "-o", "q.onnx"];
    export.extend(tiny);
    assert_success(&gptc_in(d, &export));
    let check = gptc_in(d, &["check", "q.onnx"]);
    assert_success(&check);
    let out = common::stdout(&check);
    assert!(out.contains("4-bit weights, accuracy level 4"), "{out}");
    assert!(out.contains("opset com.microsoft 1") && out.contains("MatMulNBits"), "{out}");
    assert!(out.contains("4-bit scales"), "{out}");
    let model = file::read_model(&d.join("q.onnx")).unwrap();
    assert_eq!(file::metadata(&model, "gptc.quantization"), Some("int4"));

    // The default export has no contrib op.
    let mut plain = vec!["export", "-o", "f.onnx"];
    plain.extend(tiny);
    assert_success(&gptc_in(d, &plain));
    assert!(!common::stdout(&gptc_in(d, &["check", "f.onnx"])).contains("com.microsoft"));

    // Blocks of 32 along the inputs: an emb_dim of 48 has none.
    let out = gptc_in(
        d,
        &["export", "--quantize", "int4", "--emb-dim", "48", "--n-heads", "4", "-o", "b.onnx"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("multiple of 32"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim_end().lines().count(), 1);
    assert!(!d.join("b.onnx").exists());
    let out = gptc_in(d, &["export", "--quantize", "int4", "--dtype", "f16", "-o", "h.onnx"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

/// A small 4-bit model (level `accuracy_level`) as gptc's ONNX messages, for tampering with.
fn small_int4_model(accuracy_level: u8) -> gptc_graph::onnx::ModelProto {
    let config = GptConfig { vocab_size: 512, context_length: 32, ..tiny_config(2, false) };
    let options = GraphOptions { quantization: Quantization::Int4 { accuracy_level }, ..CACHE };
    build_model(&config, options, &mut RandomInit { seed: 5 }, Some(5)).unwrap()
}

fn graph(model: &mut gptc_graph::onnx::ModelProto) -> &mut gptc_graph::onnx::GraphProto {
    model.graph.as_mut().unwrap()
}

/// The first 4-bit matmul's node and the names of its weight and scales.
fn first_matmul_nbits(
    model: &mut gptc_graph::onnx::ModelProto,
) -> &mut gptc_graph::onnx::NodeProto {
    graph(model).node.iter_mut().find(|n| n.op_type == "MatMulNBits").unwrap()
}

fn set_attribute(node: &mut gptc_graph::onnx::NodeProto, name: &str, value: i64) {
    match node.attribute.iter_mut().find(|a| a.name == name) {
        Some(attribute) => attribute.i = value,
        None => node.attribute.push(gptc_graph::onnx::AttributeProto {
            name: name.into(),
            r#type: gptc_graph::onnx::AttributeType::Int as i32,
            i: value,
            ..Default::default()
        }),
    }
}

fn initializer<'m>(
    model: &'m mut gptc_graph::onnx::ModelProto,
    name: &str,
) -> &'m mut gptc_graph::onnx::TensorProto {
    graph(model).initializer.iter_mut().find(|t| t.name == name).unwrap()
}

/// `check FILE` and `generate` on tract refuse `bytes` in one line naming `node` and saying
/// `why`, with exit code 1.
fn assert_refused_by_gptc(dir: &std::path::Path, bytes: &[u8], node: &str, why: &str) {
    let path = dir.join("tampered.onnx");
    std::fs::write(&path, bytes).unwrap();
    let file = path.to_str().unwrap();
    let generate = ["generate", "--model", file, "--ids", "1,2,3", "--max-new-tokens", "2"];
    for args in [&["check", file][..], &generate[..]] {
        let out = gptc_in(dir, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(&format!("`{node}`")) && err.contains(why), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let err = TractRuntime::from_bytes(bytes).err().expect("tract refuses it").to_string();
    assert!(err.contains(&format!("`{node}`")) && err.contains(why), "{err}");
}

/// Each way of getting a `MatMulNBits` node wrong that ONNX Runtime refuses (asked here, as the
/// oracle) is refused by `check` and by generation on tract, naming the node and the problem.
#[test]
fn matmul_nbits_files_onnx_runtime_refuses_are_refused_naming_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = small_int4_model(4);
    let bytes = file::encode(&pristine);
    TractRuntime::from_bytes(&bytes).unwrap();
    OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap();
    let mut probe = pristine.clone();
    let node = first_matmul_nbits(&mut probe).name.clone();
    let (weight, scales) = {
        let n = first_matmul_nbits(&mut probe);
        (n.input[1].clone(), n.input[2].clone())
    };
    type Tamper = Box<dyn Fn(&mut gptc_graph::onnx::ModelProto)>;
    let attribute = |name: &'static str, value: i64| -> Tamper {
        Box::new(move |m| set_attribute(first_matmul_nbits(m), name, value))
    };
    let scales_as = |dtype: gptc_graph::onnx::DataType| -> Tamper {
        let scales = scales.clone();
        Box::new(move |m| {
            let t = initializer(m, &scales);
            let values = std::mem::take(&mut t.float_data);
            t.data_type = dtype as i32;
            match dtype {
                gptc_graph::onnx::DataType::Int64 => {
                    t.int64_data = values.iter().map(|&v| v as i64).collect()
                }
                _ => t.raw_data = values.iter().map(|&v| v as u8).collect(),
            }
        })
    };
    let tamperings: Vec<(&str, Tamper, &str)> = vec![
        ("bits 2, B shaped for 4", attribute("bits", 2), "input B has dims"),
        ("blocks of 64, B shaped for 32", attribute("block_size", 64), "input B has dims"),
        ("bits 3", attribute("bits", 3), "bits is 3"),
        ("blocks of 48", attribute("block_size", 48), "block_size is 48"),
        ("K 0", attribute("K", 0), "K is 0"),
        ("N 0", attribute("N", 0), "N is 0"),
        ("an attribute it has not", attribute("group_size", 32), "no attribute `group_size`"),
        ("int64 scales", scales_as(gptc_graph::onnx::DataType::Int64), "input scales is int64"),
        ("uint8 scales", scales_as(gptc_graph::onnx::DataType::Uint8), "input scales is uint8"),
        (
            "the default domain",
            Box::new(|m| first_matmul_nbits(m).domain.clear()),
            "domain `ai.onnx`",
        ),
        (
            "a weight of another width",
            Box::new(move |m| {
                let t = initializer(m, &weight);
                t.dims[2] = 8;
                t.raw_data.truncate(t.dims.iter().product::<i64>() as usize);
            }),
            "input B has dims",
        ),
    ];
    for (what, tamper, why) in tamperings {
        let mut model = pristine.clone();
        tamper(&mut model);
        let bytes = file::encode(&model);
        assert!(OrtRuntime::from_bytes(&bytes, Device::Cpu).is_err(), "ONNX Runtime takes {what}");
        assert_refused_by_gptc(dir.path(), &bytes, &node, why);
    }
}

/// A node whose activation has rank 0 (here the head's, through a full reduction) is refused
/// as the model loads, at each level: before, tract's shape rules grew without end.
#[test]
fn a_rank_0_activation_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for level in [0, 4] {
        let mut model = small_int4_model(level);
        let nodes = &mut graph(&mut model).node;
        let at = nodes
            .iter()
            .position(|n| n.input.get(1).is_some_and(|w| w.starts_with("lm_head")))
            .unwrap();
        let head = nodes[at].name.clone();
        let reduce = gptc_graph::onnx::NodeProto {
            input: vec![nodes[at].input[0].clone()],
            output: vec!["everything".into()],
            name: "everything".into(),
            op_type: "ReduceMean".into(),
            attribute: vec![gptc_graph::onnx::AttributeProto {
                name: "keepdims".into(),
                r#type: gptc_graph::onnx::AttributeType::Int as i32,
                i: 0,
                ..Default::default()
            }],
            ..Default::default()
        };
        nodes[at].input[0] = "everything".into();
        nodes.insert(at, reduce);
        let start = std::time::Instant::now();
        assert_refused_by_gptc(dir.path(), &file::encode(&model), &head, "rank 0");
        assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
    }
}

/// Float32 scales that float16 cannot hold: ONNX Runtime computes with them, tract (which
/// holds scales in float16, on its own path and gptc's kernel) refuses them at load rather
/// than compute with infinity or zero.
#[test]
fn tract_refuses_float32_scales_that_float16_cannot_hold() {
    for level in [0, 4] {
        for scale in [1e6f32, -1e6, 1e-9] {
            let mut model = small_int4_model(level);
            let node = first_matmul_nbits(&mut model).name.clone();
            let scales = first_matmul_nbits(&mut model).input[2].clone();
            initializer(&mut model, &scales).float_data[3] = scale;
            let bytes = file::encode(&model);
            OrtRuntime::from_bytes(&bytes, Device::Cpu).unwrap();
            let err = TractRuntime::from_bytes(&bytes).err().expect("refused").to_string();
            assert!(err.contains(&format!("`{node}`")) && err.contains("scale 3"), "{err}");
            assert!(err.contains("float16"), "{err}");
        }
    }
}

/// A NaN reaching a 4-bit matmul (here through a NaN scale of `c_fc`, which makes one of
/// `c_proj`'s inputs NaN) ends generation with the same non-finite error at level 4 as at
/// level 0, whichever kernel this CPU runs.
#[test]
fn a_nan_activation_is_the_same_non_finite_error_at_every_level() {
    let dir = tempfile::tempdir().unwrap();
    for level in [0, 4] {
        let mut model = small_int4_model(level);
        initializer(&mut model, "h.0.mlp.c_fc.weight_scales").float_data[5] = f32::NAN;
        let path = dir.path().join(format!("nan{level}.onnx"));
        std::fs::write(&path, file::encode(&model)).unwrap();
        let file = path.to_str().unwrap();
        let out = gptc_in(dir.path(), &["generate", "--model", file, "--ids", "1,2,3"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "level {level}: {err}");
        assert!(err.contains("not finite"), "level {level}: {err}");
    }
}

/// HF GPT-2 tensors for a one-layer model of `emb` 32, from a seed.
fn hf_checkpoint(vocab: usize, context: usize) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    use gptc_graph::{Init, WeightSource};
    let e = 32;
    let mut init = RandomInit { seed: 3 };
    let mut tensors = Vec::new();
    let mut add = |name: &str, shape: Vec<usize>| {
        let data = init.tensor(name, &shape, Init::Normal { std: 0.05 }).unwrap();
        tensors.push((name.to_string(), shape, data));
    };
    add("wte.weight", vec![vocab, e]);
    add("wpe.weight", vec![context, e]);
    for ln in ["h.0.ln_1", "h.0.ln_2", "ln_f"] {
        add(&format!("{ln}.weight"), vec![e]);
        add(&format!("{ln}.bias"), vec![e]);
    }
    for (name, inputs, outputs) in [
        ("attn.c_attn", e, 3 * e),
        ("attn.c_proj", e, e),
        ("mlp.c_fc", e, 4 * e),
        ("mlp.c_proj", 4 * e, e),
    ] {
        add(&format!("h.0.{name}.weight"), vec![inputs, outputs]);
        add(&format!("h.0.{name}.bias"), vec![outputs]);
    }
    tensors
}

fn write_checkpoint(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    use safetensors::tensor::TensorView;
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            (name.as_str(), TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A weight of 1e6 needs a float16 scale of 1.25e5 (float16 ends at 65504); a block of weights
/// of 1e-9 needs one below float16's normal numbers: `export --quantize int4` refuses both in
/// one line naming the weight, and writes nothing.
#[test]
fn export_refuses_weights_whose_4_bit_scales_float16_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (vocab, context) = (256, 16);
    let flags = ["--vocab-size", "256", "--context-length", "16", "--emb-dim", "32"];
    let flags =
        [&flags[..], &["--n-heads", "2", "--n-layers", "1", "--tie-weights", "--qkv-bias", "true"]]
            .concat();
    let export = |tensors: &[(String, Vec<usize>, Vec<f32>)]| {
        let weights = dir.path().join("w.safetensors");
        write_checkpoint(&weights, tensors);
        let mut args = vec!["export", "--quantize", "int4", "--weights", weights.to_str().unwrap()];
        args.extend(&flags);
        args.extend(["-o", "q.onnx"]);
        gptc_in(dir.path(), &args)
    };
    let fine = hf_checkpoint(vocab, context);
    assert_success(&export(&fine));
    std::fs::remove_file(dir.path().join("q.onnx")).unwrap();
    // `c_proj` of the MLP, `[in, out]` = `[128, 32]`.
    let c_proj = fine.iter().position(|(n, _, _)| n == "h.0.mlp.c_proj.weight").unwrap();
    // Input 40 of output 7: the second block of output 7's inputs.
    let mut huge = fine.clone();
    huge[c_proj].2[40 * 32 + 7] = 1e6;
    // Inputs 0..32 of output 3, all tiny.
    let mut tiny = fine.clone();
    (0..32).for_each(|i| tiny[c_proj].2[i * 32 + 3] = 1e-9 * (i as f32 - 16.0));
    for (tensors, block, why) in [
        (huge, "output 7, inputs 32..64", "largest number"),
        (tiny, "output 3, inputs 0..32", "smallest normal"),
    ] {
        let out = export(&tensors);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("`h.0.mlp.c_proj.weight`") && err.contains(block), "{err}");
        assert!(err.contains(why), "{err}");
        assert!(!dir.path().join("q.onnx").exists());
    }
}

/// The output head of a model of `vocab` ids cut to `vocab - 1` outputs, float32 or 4-bit.
fn with_narrow_head(mut model: gptc_graph::onnx::ModelProto, vocab: i64) -> Vec<u8> {
    let nodes = &mut graph(&mut model).node;
    let head = nodes.iter_mut().find(|n| n.input.get(1).is_some_and(|w| w.starts_with("lm_head")));
    if let Some(head) = head.filter(|n| n.op_type == "MatMulNBits") {
        set_attribute(head, "N", vocab - 1);
    }
    for t in graph(&mut model).initializer.iter_mut().filter(|t| t.name.starts_with("lm_head")) {
        // `[vocab, ..]`, or the scales' `[vocab * blocks]`: the last output's values go.
        let per_output = t.dims.iter().product::<i64>() / vocab;
        let values = ((vocab - 1) * per_output) as usize;
        match t.dims.len() {
            1 => t.dims[0] = values as i64,
            _ => t.dims[0] = vocab - 1,
        }
        t.float_data.truncate(values);
        t.raw_data.truncate(values);
    }
    file::encode(&model)
}

/// A head narrower than the vocabulary (which would leave ids out of reach) is refused as the
/// model loads, float32 or 4-bit, on both runtimes, where before it generated.
#[test]
fn a_head_narrower_than_the_vocabulary_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = GptConfig { vocab_size: 512, context_length: 32, ..tiny_config(2, false) };
    let float = build_model(&config, CACHE, &mut RandomInit { seed: 5 }, Some(5)).unwrap();
    for (what, model) in [("float32", float), ("4-bit", small_int4_model(4))] {
        let path = dir.path().join("narrow.onnx");
        std::fs::write(&path, with_narrow_head(model, 512)).unwrap();
        let file = path.to_str().unwrap();
        for runtime in ["tract", "ort"] {
            let args = ["generate", "--runtime", runtime, "--model", file, "--ids", "1,2"];
            let out = gptc_in(dir.path(), &args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{what} on {runtime}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert!(
                err.contains("logits hold 511 values") && err.contains("vocabulary is 512"),
                "{err}"
            );
        }
    }
}

/// tract runs the tied table's `GatherBlockQuantized` in the one form gptc writes; any other
/// (other bits, blocks or axes, zero points) is refused at load in one error naming the node and
/// what differs, never read as if it were that form.
#[test]
fn tract_refuses_a_gather_block_quantized_form_it_does_not_run() {
    let config = GptConfig { vocab_size: 512, context_length: 32, ..tiny_config(2, false) };
    let options = GraphOptions { tie_weights: true, quantization: EXACT, ..CACHE };
    let model = build_model(&config, options, &mut RandomInit { seed: 5 }, Some(5)).unwrap();
    assert!(TractRuntime::from_bytes(&file::encode(&model)).is_ok(), "gptc's own form loads");
    let lookup = |model: &mut gptc_graph::onnx::ModelProto| {
        let nodes = graph(model).node.iter_mut();
        nodes.filter(|n| n.op_type == "GatherBlockQuantized").last().unwrap().clone()
    };
    let node_name = lookup(&mut model.clone()).name;
    assert!(!node_name.is_empty());
    for (attribute, value) in [("bits", 8), ("block_size", 64), ("quantize_axis", 1)] {
        let mut tampered = model.clone();
        let nodes = graph(&mut tampered).node.iter_mut();
        let node = nodes.filter(|n| n.op_type == "GatherBlockQuantized").last().unwrap();
        set_attribute(node, attribute, value);
        let err = TractRuntime::from_bytes(&file::encode(&tampered)).err().unwrap().to_string();
        assert!(err.contains(&node_name) && err.contains(attribute), "{attribute}: {err}");
    }
    let mut with_zero_points = model.clone();
    let nodes = graph(&mut with_zero_points).node.iter_mut();
    let node = nodes.filter(|n| n.op_type == "GatherBlockQuantized").last().unwrap();
    node.input.push(node.input[2].clone());
    let err = TractRuntime::from_bytes(&file::encode(&with_zero_points)).err().unwrap().to_string();
    assert!(err.contains(&node_name) && err.contains("zero points"), "{err}");
}

/// GPT-2's projections have biases, and each layer adds two of them to the residual stream: on
/// tract, gptc's 4-bit kernel adds both as it writes its products. Its logits stay as near the
/// dequantized reference as ONNX Runtime's at the same level.
#[test]
fn at_level_4_biases_and_residuals_added_by_gptcs_kernel_keep_the_logits() {
    let config = tiny_config(2, true);
    let options = GraphOptions { quantization: Quantization::Int4 { accuracy_level: 4 }, ..CACHE };
    // Biases are zeros at init, and tract drops a zero bias: these are not.
    let mut init = NoisyInit(RandomInit { seed: 31 });
    let model = build_model(&config, options, &mut init, None).unwrap();
    let (bytes, weights) = (file::encode(&model), file::float_initializers(&model).unwrap());
    assert!(weights.0["h.0.attn.c_proj.bias"].data.iter().any(|&b| b != 0.0));
    // The attention output's and the MLP's biases of both layers go into the kernel (the fold
    // names each op it makes `<matmul>.bias`); q, k and v, stacked into one op, keep their adds.
    let tract = TractRuntime::from_bytes(&bytes).unwrap();
    let nodes = tract.backend().plan().model().nodes();
    let biased = nodes.iter().filter(|n| n.name.contains(".bias")).count();
    assert_eq!(biased, 3 * 2);
    let ids = token_ids(1, 13, config.vocab_size, 3);
    let expected = Reference::new(&config, &weights).logits(&ids).unwrap();
    for mut runtime in runtimes(&bytes) {
        let step = Step {
            input_ids: &ids,
            attention_mask: Some(&ndarray::Array2::ones((1, 13))),
            position_ids: Some(&ndarray::Array2::from_shape_fn((1, 13), |(_, j)| j as i64)),
        };
        let err = relative_error(&runtime.run(&step).unwrap(), &expected);
        eprintln!("{}: {err:.2e} from the dequantized reference", runtime.name());
        assert!(err < 3e-2, "{}: {err}", runtime.name());
    }
}
