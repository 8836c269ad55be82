//! Generation as users meet it: sampling, stop tokens and strings, streaming, batches, and bad
//! input answered with one clear line.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::{assert_success, gptc, stderr, stdout};
use gptc::generate::{generate, Next};
use gptc::runtime::{Runtime, Step};
use gptc_graph::file::WeightLayout;
use ndarray::Array3;

const TINY: [&str; 8] =
    ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"];

fn run(args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(TINY);
    gptc(&all)
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    stdout(out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

/// A runtime whose next token is always `favourite` (largest logit), for driver tests.
struct Fixed {
    favourite: usize,
    runs: usize,
}

impl Runtime for Fixed {
    fn name(&self) -> String {
        "fixed".into()
    }
    fn has_cache(&self) -> bool {
        true
    }
    fn reset(&mut self) {}
    fn run(&mut self, step: &Step) -> gptc::Result<Array3<f32>> {
        self.runs += 1;
        let (batch, seq) = step.input_ids.dim();
        Ok(Array3::from_shape_fn(
            (batch, seq, 8),
            |(_, _, v)| if v == self.favourite { 1.0 } else { 0.0 },
        ))
    }
}

#[test]
fn rows_stop_on_their_own_and_the_batch_ends_when_all_have() {
    let mut runtime = Fixed { favourite: 3, runs: 0 };
    let prompts = vec![vec![1, 2], vec![5]];
    let mut calls = [0usize; 2];
    let out = generate(&mut runtime, &prompts, 10, 16, |row, _| {
        calls[row] += 1;
        Ok(match (row, calls[row]) {
            (0, 2) => Next::Last(7),
            (1, 4) => Next::Stop,
            _ => Next::Token(3),
        })
    })
    .unwrap();
    assert_eq!(out, vec![vec![3, 7], vec![3, 3, 3]]);
    assert_eq!(calls, [2, 4]);
    assert_eq!(runtime.runs, 4, "no run after every row stopped");
}

#[test]
fn a_sampling_seed_replays_and_another_differs() {
    let sample = |seed: &str| {
        let out = run(&[
            "generate",
            "Hello, I am",
            "--json",
            "--temperature",
            "1.0",
            "--top-k",
            "40",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--ignore-eos",
        ]);
        assert_success(&out);
        ids(&json_lines(&out)[0]["output_ids"])
    };
    assert_eq!(sample("1"), sample("1"));
    assert_ne!(sample("1"), sample("2"));
}

#[test]
fn streamed_text_equals_the_json_text_and_json_lines_has_one_event_per_token() {
    let plain = run(&["generate", "Hello, I am", "--max-new-tokens", "8"]);
    assert_success(&plain);
    let json = run(&["generate", "Hello, I am", "--max-new-tokens", "8", "--json"]);
    let object = &json_lines(&json)[0];
    assert_eq!(stdout(&plain), format!("{}\n", object["text"].as_str().unwrap()));
    let summary = stderr(&plain);
    assert!(summary.contains("4 prompt tokens, 8 new tokens, time to first token"), "{summary}");
    assert!(summary.contains("tokens/s"), "{summary}");

    let lines =
        json_lines(&run(&["generate", "Hello, I am", "--max-new-tokens", "8", "--json-lines"]));
    assert_eq!(lines.len(), 9);
    let streamed: Vec<i64> = lines[..8].iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(streamed, ids(&object["output_ids"]));
    assert_eq!(lines[8]["event"], "done");
    let pieces: String = lines[..8].iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(format!("Hello, I am{pieces}"), object["text"].as_str().unwrap());
}

#[test]
fn a_stop_string_ends_the_text_before_it() {
    let full = json_lines(&run(&["generate", "Hello, I am", "--max-new-tokens", "8", "--json"]))[0]
        .clone();
    let new_text = full["text"].as_str().unwrap().strip_prefix("Hello, I am").unwrap().to_string();
    // A stop string taken from the middle of what greedy decoding writes.
    let stop: String = new_text.chars().skip(new_text.chars().count() / 2).take(3).collect();
    let stopped = json_lines(&run(&[
        "generate",
        "Hello, I am",
        "--max-new-tokens",
        "8",
        "--json",
        "--stop",
        &stop,
    ]))[0]
        .clone();
    let text = stopped["text"].as_str().unwrap();
    assert!(!text.contains(&stop), "{text:?} still has {stop:?}");
    assert!(full["text"].as_str().unwrap().starts_with(text));
    assert!(ids(&stopped["output_ids"]).len() < 8);
}

#[test]
fn a_batch_row_equals_its_prompt_alone_and_prompt_files_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "The cat\n\nA\n").unwrap();
    let batch = json_lines(&run(&[
        "generate",
        "Hello, I am",
        "--prompt-file",
        file.to_str().unwrap(),
        "--json",
        "--max-new-tokens",
        "6",
    ]));
    assert_eq!(batch.len(), 3);
    for object in &batch {
        let prompt = object["prompt"].as_str().unwrap();
        let alone =
            json_lines(&run(&["generate", prompt, "--json", "--max-new-tokens", "6"]))[0].clone();
        assert_eq!(object["output_ids"], alone["output_ids"], "{prompt}");
    }
}

#[test]
fn long_prompts_are_cropped_and_special_text_stays_text() {
    let long = "one two three four five six seven eight nine ten eleven twelve";
    let out = gptc(&[
        "generate",
        long,
        "--max-new-tokens",
        "2",
        "--context-length",
        "8",
        "--emb-dim",
        "64",
        "--n-layers",
        "1",
        "--n-heads",
        "4",
    ]);
    assert_success(&out);
    assert!(stderr(&out).contains("sees only the last 8"), "{}", stderr(&out));

    let plain = json_lines(&run(&["generate", "<|endoftext|>", "--json", "--max-new-tokens", "1"]))
        [0]
    .clone();
    assert!(!ids(&plain["prompt_ids"]).contains(&50256));
    let special = json_lines(&run(&[
        "generate",
        "<|endoftext|>",
        "--json",
        "--max-new-tokens",
        "1",
        "--allow-special",
    ]))[0]
        .clone();
    assert_eq!(ids(&special["prompt_ids"]), [50256]);
}

fn assert_one_line_error(out: &std::process::Output, expect: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(expect), "expected {expect:?} in {err}");
}

#[test]
fn bad_generation_input_gets_one_clear_line() {
    assert_one_line_error(
        &run(&["generate", "--ids", "1,2,99999"]),
        "token 99999, outside the model's vocabulary",
    );
    assert_one_line_error(&run(&["generate", "--ids", "1,two"]), "`two` is not a token id");
    // An empty item is a dropped id, not nothing.
    assert_one_line_error(&run(&["generate", "--ids", "1,,2"]), "--ids item 2 is empty");
    assert_one_line_error(&run(&["generate", "--ids", "1,2,"]), "--ids item 3 is empty");
    assert_one_line_error(&run(&["generate", "hi", "--temperature", "-1"]), "--temperature");
    assert_one_line_error(&run(&["generate", "hi", "--temperature", "NaN"]), "--temperature");
    assert_one_line_error(&run(&["generate", "hi", "--top-p", "1.5"]), "--top-p");
    assert_one_line_error(&run(&["generate", "hi", "--top-p", "0"]), "--top-p");
    assert_one_line_error(&run(&["generate", "hi", "--top-k", "0"]), "--top-k");
    assert_one_line_error(&run(&["generate", "hi", "--max-new-tokens", "0"]), "--max-new-tokens");
    assert_one_line_error(&gptc(&["generate", "hi", "--n-layers", "5000"]), "memory");
    assert_one_line_error(
        &gptc(&["generate", "hi", "--device", "cuda"]),
        "tract runs on the CPU only",
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let mut export = vec!["export", "-o", path.to_str().unwrap()];
    export.extend(TINY);
    assert_success(&gptc(&export));
    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(
        &gptc(&["generate", "hi", "--model", truncated.to_str().unwrap()]),
        "not a readable ONNX model",
    );

    // Another model entirely: inputs gptc does not feed, named in the error.
    let mut model = gptc_graph::file::read_model(&path).unwrap();
    let graph = model.graph.as_mut().unwrap();
    for node in &mut graph.node {
        for input in &mut node.input {
            if input == "position_ids" {
                *input = "token_type_ids".into();
            }
        }
    }
    graph
        .input
        .iter_mut()
        .filter(|i| i.name == "position_ids")
        .for_each(|i| i.name = "token_type_ids".into());
    let other = dir.path().join("other.onnx");
    gptc_graph::file::write_model(&other, &model, WeightLayout::Auto).unwrap();
    assert_one_line_error(
        &gptc(&["generate", "hi", "--model", other.to_str().unwrap()]),
        "`token_type_ids`",
    );

    // Found by fuzzing: an output that names no value made tract-onnx 0.23.9 panic.
    let mut model = gptc_graph::file::read_model(&path).unwrap();
    model.graph.as_mut().unwrap().output[0].name = "nothing".into();
    let broken = dir.path().join("broken.onnx");
    gptc_graph::file::write_model(&broken, &model, WeightLayout::Auto).unwrap();
    assert_one_line_error(
        &gptc(&["generate", "hi", "--model", broken.to_str().unwrap()]),
        "malformed",
    );

    // ONNX Runtime's library missing: said, not panicked.
    let out = Command::new(env!("CARGO_BIN_EXE_gptc"))
        .args(["generate", "hi", "--runtime", "ort", "--model", path.to_str().unwrap()])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_one_line_error(&out, "ORT_DYLIB_PATH");
}

#[test]
fn a_reader_that_stops_early_ends_gptc_quietly() {
    let mut args = vec!["generate", "Hello, I am", "--max-new-tokens", "400"];
    args.extend(TINY);
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptc"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}: {}", out.status, stderr(&out));
    assert!(
        !stderr(&out).contains("panicked") && !stderr(&out).contains("error"),
        "{}",
        stderr(&out)
    );
}
