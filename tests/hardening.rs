//! The failure classes found by attacking gptc, one test each: nothing clobbered, nothing
//! unbounded, no panic, no silent non-numbers, one clear line. Each asserts the exit code, the
//! message and the files left afterwards.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{assert_success, gptc, gptc_in, stderr};
use gptc_graph::file::{self, WeightLayout};
use gptc_graph::onnx::StringStringEntryProto;

const TINY: [&str; 8] =
    ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"];

fn with_tiny<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(TINY);
    all
}

/// Exit 1, one stderr line holding `expect`, no panic.
fn one_line_error(out: &std::process::Output, expect: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(expect), "expected {expect:?} in {err}");
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_output_is_a_regular_file_or_a_new_path_and_links_are_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A private device node (the null device's numbers), never /dev/null itself.
    let device = d.join("null");
    let made = Command::new("mknod").arg(&device).args(["c", "1", "3"]).status().unwrap();
    assert!(made.success(), "mknod needs root, as CI runs");
    one_line_error(&gptc_in(d, &with_tiny(&["export", "-o", "null"])), "not a regular file");
    assert!(!std::fs::metadata(&device).unwrap().is_file(), "the device was replaced");
    // An existing folder is a model folder: one gptc did not write is left alone.
    one_line_error(&gptc_in(d, &with_tiny(&["export", "-o", "."])), "gptc did not write");

    // An existing file keeps its permissions; a link keeps pointing at its (new) target.
    assert_success(&gptc_in(d, &with_tiny(&["export", "-o", "real.onnx"])));
    std::fs::set_permissions(d.join("real.onnx"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("real.onnx", d.join("link.onnx")).unwrap();
    let before = std::fs::read(d.join("real.onnx")).unwrap();
    assert_success(&gptc_in(d, &with_tiny(&["export", "--seed", "9", "-o", "link.onnx"])));
    assert!(std::fs::symlink_metadata(d.join("link.onnx")).unwrap().file_type().is_symlink());
    assert_ne!(std::fs::read(d.join("real.onnx")).unwrap(), before, "the target was not written");
    let mode = std::fs::metadata(d.join("real.onnx")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(names_in(d), ["link.onnx", "null", "real.onnx"]);
}

#[test]
fn a_signal_during_an_external_data_export_leaves_the_old_pair_and_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_success(&gptc_in(d, &with_tiny(&["export", "--external-data", "-o", "m.onnx"])));
    let old =
        (std::fs::read(d.join("m.onnx")).unwrap(), std::fs::read(d.join("m.onnx.data")).unwrap());
    // gpt2-small with 36 layers: 1.4 GB to build and write, seconds of work to interrupt.
    let args = ["export", "--n-layers", "36", "--external-data", "-o", "m.onnx"];
    let code = common::interrupted(d, &args, 1200);
    assert_eq!(code, Some(130), "the export was not interrupted by the signal");
    assert_eq!(names_in(d), ["m.onnx", "m.onnx.data"], "a temporary file was left");
    let now =
        (std::fs::read(d.join("m.onnx")).unwrap(), std::fs::read(d.join("m.onnx.data")).unwrap());
    assert!(now == old, "the old pair was changed");
    assert_success(&gptc_in(d, &["generate", "hi", "--model", "m.onnx", "--max-new-tokens", "2"]));
}

#[test]
fn memory_is_estimated_before_it_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A [context, context] causal table of 10^10 entries, on a tiny model.
    let huge_context = ["--emb-dim", "64", "--n-heads", "4", "--n-layers", "1"];
    let mut export = vec!["export", "--context-length", "100000", "-o", "m.onnx"];
    export.extend(huge_context);
    one_line_error(&gptc_in(d, &export), "GB of memory");
    let mut generate = vec!["generate", "hi", "--context-length", "2000000"];
    generate.extend(huge_context);
    one_line_error(&gptc_in(d, &generate), "GB of memory");
    // A batch runs in chunks that fit, but logits kept for every row stay to the end: 200,000
    // rows of 10 steps of 200 kB.
    std::fs::write(d.join("prompts.txt"), "hi\n".repeat(200_000)).unwrap();
    let kept = ["generate", "--prompt-file", "prompts.txt", "--json", "--with-logits"];
    one_line_error(&gptc_in(d, &with_tiny(&kept)), "GB of memory");
    std::fs::remove_file(d.join("prompts.txt")).unwrap();
    let mut bench = vec!["bench", "--n-layers", "1000000", "--prefill", "4"];
    bench.extend(["--emb-dim", "64", "--n-heads", "4"]);
    one_line_error(&gptc_in(d, &bench), "GB of memory");
    assert!(names_in(d).is_empty(), "{:?}", names_in(d));
}

#[test]
fn inputs_that_are_not_regular_files_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let fifo = fifo.to_str().unwrap();
    one_line_error(&gptc(&with_tiny(&["generate", "--prompt-file", fifo])), "not a regular file");
    one_line_error(&gptc(&["export", "--config", fifo, "-o", "x.onnx"]), "not a regular file");
    one_line_error(&gptc(&["generate", "hi", "--model", fifo]), "not a regular file");
    one_line_error(&gptc(&["check", fifo]), "not a regular file");
    one_line_error(&gptc(&["inspect", "--model", fifo]), "not a regular file");
    one_line_error(
        &gptc(&["export", "--weights", fifo, "--preset", "gpt2-small", "-o", "x.onnx"]),
        "not a regular file",
    );
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    for args in [vec!["inspect", "--preset", "gpt2-small"], vec!["check", "MODEL"]] {
        let dir = tempfile::tempdir().unwrap();
        assert_success(&gptc_in(dir.path(), &with_tiny(&["export", "-o", "MODEL"])));
        let mut child = Command::new(env!("CARGO_BIN_EXE_gptc"))
            .current_dir(dir.path())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_config_larger_than_the_models_tables_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    assert_success(&gptc(&with_tiny(&["export", "-o", path.to_str().unwrap()])));
    let mut model = file::read_model(&path).unwrap();
    let config = model.metadata_props.iter_mut().find(|p| p.key == "gptc.config").unwrap();
    config.value = config.value.replace("\"context_length\":64", "\"context_length\":128");
    let tampered = dir.path().join("tampered.onnx");
    file::write_model(&tampered, &model, WeightLayout::Auto).unwrap();
    let out = gptc(&["generate", "hi", "--model", tampered.to_str().unwrap()]);
    one_line_error(&out, "wpe.weight");

    // Without metadata the config comes from flags, and is held to the same tables.
    model.metadata_props.clear();
    let bare = dir.path().join("bare.onnx");
    file::write_model(&bare, &model, WeightLayout::Auto).unwrap();
    let mut args = vec!["generate", "hi", "--model", bare.to_str().unwrap()];
    args.extend(["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "99"]);
    one_line_error(&gptc(&args), "wpe.weight");
}

#[test]
fn a_tensor_whose_data_does_not_fill_its_dims_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    assert_success(&gptc(&with_tiny(&["export", "-o", path.to_str().unwrap()])));
    let mut model = file::read_model(&path).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let bias = graph.initializer.iter_mut().find(|t| t.name == "h.1.mlp.c_fc.bias").unwrap();
    bias.float_data.truncate(10);
    let short = dir.path().join("short.onnx");
    file::write_model(&short, &model, WeightLayout::Auto).unwrap();
    for args in [vec!["generate", "hi", "--model"], vec!["check"]] {
        let mut args = args.clone();
        args.push(short.to_str().unwrap());
        one_line_error(&gptc(&args), "weight `h.1.mlp.c_fc.bias`: holds 10 values for dims [256]");
    }
}

#[test]
fn non_finite_logits_stop_generation_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    assert_success(&gptc(&with_tiny(&["export", "-o", path.to_str().unwrap()])));
    let mut model = file::read_model(&path).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let ln_f = graph.initializer.iter_mut().find(|t| t.name == "ln_f.weight").unwrap();
    ln_f.float_data[0] = f32::NAN;
    let broken = dir.path().join("nan.onnx");
    file::write_model(&broken, &model, WeightLayout::Auto).unwrap();
    for runtime in ["tract", "ort"] {
        let out =
            gptc(&["generate", "hi", "--model", broken.to_str().unwrap(), "--runtime", runtime]);
        one_line_error(&out, "at new token 1 are not finite");
    }
}

#[test]
fn surprising_flags_are_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_success(&gptc_in(d, &with_tiny(&["export", "-o", "m.onnx"])));
    one_line_error(&gptc_in(d, &with_tiny(&["generate", "hi", "--stop", ""])), "--stop");
    // A model stores its config: config flags given with it would be ignored.
    one_line_error(
        &gptc_in(d, &["generate", "hi", "--model", "m.onnx", "--preset", "gpt2-small"]),
        "stores its own config",
    );
    one_line_error(
        &gptc_in(d, &["generate", "hi", "--model", "m.onnx", "--context-length", "32"]),
        "stores its own config",
    );
    for flag in [["--dtype", "f16"], ["--init-seed", "7"]] {
        let out = gptc_in(d, &["generate", "hi", "--model", "m.onnx", flag[0], flag[1]]);
        assert_eq!(out.status.code(), Some(2), "{flag:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag[0]), "{}", stderr(&out));
    }
    let out = gptc_in(d, &with_tiny(&["bench", "--prefill", "65"]));
    one_line_error(&out, "longer than the model's context");
    // clap's whole message: what is missing, named.
    let out = gptc_in(d, &with_tiny(&["export"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--output"), "{}", stderr(&out));

    // Versions ONNX Runtime would refuse are refused by check.
    let mut model = file::read_model(&d.join("m.onnx")).unwrap();
    model.opset_import[0].version = 99;
    model.metadata_props.push(StringStringEntryProto { key: "x".into(), value: "y".into() });
    file::write_model(&d.join("opset.onnx"), &model, WeightLayout::Auto).unwrap();
    one_line_error(&gptc_in(d, &["check", "opset.onnx"]), "opset 99");
}

#[test]
fn onnx_runtime_failures_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_success(&gptc_in(d, &with_tiny(&["export", "-o", "m.onnx"])));
    let mut model = file::read_model(&d.join("m.onnx")).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let matmul = graph.node.iter_mut().find(|n| n.op_type == "MatMul").unwrap();
    matmul.op_type = "NoSuchOp".into();
    file::write_model(&d.join("bad.onnx"), &model, WeightLayout::Auto).unwrap();
    let out = gptc_in(d, &["generate", "hi", "--model", "bad.onnx", "--runtime", "ort"]);
    one_line_error(&out, "ONNX Runtime");
    assert!(!stderr(&out).contains("[E:onnxruntime"), "{}", stderr(&out));
}

/// Runs gptc in `dir`, killing it and failing the test if it is not done within `seconds`
/// (a read that waits on a FIFO would otherwise hang the test run).
fn gptc_within(dir: &Path, args: &[&str], seconds: u64) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptc"))
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(seconds) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("{args:?} still ran after {seconds} s: {}", stderr(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_external_data_file_that_is_not_a_regular_file_is_refused_by_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_success(&gptc_in(d, &with_tiny(&["export", "--external-data", "-o", "m.onnx"])));
    assert_success(&gptc_in(d, &with_tiny(&["export", "--external-data", "-o", "folder/"])));
    for (model, data) in [("m.onnx", "m.onnx.data"), ("folder", "folder/onnx/model.onnx_data")] {
        std::fs::remove_file(d.join(data)).unwrap();
        assert!(Command::new("mkfifo").arg(d.join(data)).status().unwrap().success());
        for args in [
            vec!["check", model],
            vec!["inspect", "--model", model],
            vec!["generate", "hi", "--model", model],
            vec!["generate", "hi", "--model", model, "--runtime", "ort"],
        ] {
            let out = gptc_within(d, &args, 60);
            one_line_error(&out, "not a regular file");
            assert!(stderr(&out).contains(data), "{args:?}: {}", stderr(&out));
        }
    }
}

/// A size no machine running the tests has as memory (four times this one's), costing no disk
/// as a sparse file.
fn beyond_memory() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total = info.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    let kib: u64 = total.split_whitespace().nth(1).unwrap().parse().unwrap();
    (4 * kib * 1024).max(64 << 30)
}

/// A file of `head` followed by zeros up to `size` bytes, without writing the zeros.
fn sparse_file(path: &Path, head: &[u8], size: u64) {
    std::fs::write(path, head).unwrap();
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(size).unwrap();
}

/// A protobuf field (number 1000, unknown to ONNX) whose bytes run `len` long.
fn unknown_field_of(len: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for mut v in [(1000 << 3) | 2, len] {
        while v >= 0x80 {
            bytes.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        bytes.push(v as u8);
    }
    bytes
}

/// Runs gptc in `dir` allowed 1 GiB of heap (`ulimit -d`; a mapped file does not count), and
/// expects it to refuse in one line holding `expect`, within seconds.
fn refused_without_reading(dir: &Path, args: &[&str], expect: &str) {
    let start = std::time::Instant::now();
    let limited =
        [&["-c", r#"ulimit -d 1048576 && exec "$0" "$@""#, env!("CARGO_BIN_EXE_gptc")], args]
            .concat();
    let out = Command::new("sh").current_dir(dir).args(&limited).output().unwrap();
    one_line_error(&out, expect);
    let seconds = start.elapsed().as_secs_f64();
    assert!(seconds < 20.0, "{args:?} took {seconds:.1} s: was the file read?");
}

#[test]
fn a_large_file_is_refused_from_its_size_and_header_before_its_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 6 GiB of zeros (no ONNX model, no safetensors header): reading them took 39 s and 6.3 GB.
    sparse_file(&d.join("zeros.onnx"), &[], 6 << 30);
    sparse_file(&d.join("zeros.safetensors"), &[], 6 << 30);
    for args in [
        &["generate", "hi", "--model", "zeros.onnx"][..],
        &["check", "zeros.onnx"],
        &["inspect", "--model", "zeros.onnx"],
    ] {
        refused_without_reading(d, args, "zeros.onnx: not a readable ONNX model");
    }
    let weights = ["export", "--weights", "zeros.safetensors", "--preset", "gpt2-small"];
    refused_without_reading(d, &[&weights[..], &["-o", "x.onnx"]].concat(), "not a safetensors");

    // A well-formed model carrying a field as large as a file can be: plausible, but more than
    // this machine's memory once read, so refused by its size.
    assert_success(&gptc_in(d, &with_tiny(&["export", "-o", "m.onnx"])));
    let mut head = std::fs::read(d.join("m.onnx")).unwrap();
    let size = beyond_memory();
    head.extend(unknown_field_of(size));
    let end = head.len() as u64 + size;
    sparse_file(&d.join("huge.onnx"), &head, end);
    for args in [
        &["generate", "hi", "--model", "huge.onnx"][..],
        &["check", "huge.onnx"],
        &["inspect", "--model", "huge.onnx"],
    ] {
        refused_without_reading(d, args, "GB of memory");
    }

    // A well-formed safetensors file whose one tensor holds more values than gpt2-small has.
    let values: u64 = 1 << 30;
    let header = format!(
        r#"{{"wte.weight":{{"dtype":"F32","shape":[{values}],"data_offsets":[0,{}]}}}}"#,
        values * 4
    );
    let mut head = (header.len() as u64).to_le_bytes().to_vec();
    head.extend(header.as_bytes());
    let end = head.len() as u64 + values * 4;
    sparse_file(&d.join("huge.safetensors"), &head, end);
    let weights = ["export", "--weights", "huge.safetensors", "--preset", "gpt2-small"];
    refused_without_reading(d, &[&weights[..], &["-o", "x.onnx"]].concat(), "more than");
    assert!(!d.join("x.onnx").exists());
}
