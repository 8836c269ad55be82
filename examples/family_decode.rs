//! Decode speed of a Llama 3.2 or Qwen3 preset (random weights) on tract and ONNX Runtime, with
//! the bytes one step reads and the bound the machine's read bandwidth puts on it; with
//! `profile`, where tract's decode step spends its time, op by op. For BENCHMARKS.md; not a test.
//!
//! `cargo run --release --example family_decode -- PRESET f32|int4 [tract] [ort] [profile]
//!  [untied] [tokens N] [keep DIR]`
//!
//! The file is exported once into DIR (default: the temp folder) and reused while it is there:
//! a 1B-parameter random init takes longer than the measurement.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use gptc::bench::{bytes_read_per_token, measure, read_bandwidth};
use gptc::runtime::ort::{Device, OrtRuntime};
use gptc::runtime::tract::TractRuntime;
use gptc_graph::file::{self, WeightLayout};
use gptc_graph::{build_model, GraphOptions, ModelConfig, Quantization, RandomInit};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::SimpleState;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    let preset = args.first().context("usage: family_decode PRESET f32|int4 ...")?;
    let int4 = has("int4");
    let tokens: usize = value("tokens").map_or(Ok(32), |n| n.parse())?;
    let mut config = ModelConfig::preset(preset)?;
    // `untied`: a head of its own, to measure the rest without the tied head's cost.
    let untied = has("untied");
    if untied {
        config.set_head_tied(false);
    }
    let arch = config.architecture();
    let quantization =
        if int4 { Quantization::Int4 { accuracy_level: 4 } } else { Quantization::None };
    let options = GraphOptions {
        kv_cache: true,
        last_token_logits: true,
        quantization,
        ..Default::default()
    };
    let dir = value("keep").map_or_else(std::env::temp_dir, PathBuf::from);
    let stem = format!(
        "{preset}-{}{}",
        if int4 { "int4" } else { "f32" },
        if untied { "-untied" } else { "" }
    );
    let path = dir.join(format!("{stem}.onnx"));
    let bytes_path = dir.join(format!("{stem}.bytes-per-token"));
    if !path.exists() || !bytes_path.exists() {
        let start = Instant::now();
        let model = build_model(&config, options, &mut RandomInit { seed: 123 }, Some(123))?;
        std::fs::create_dir_all(&dir)?;
        file::write_model(&path, &model, WeightLayout::Auto)?;
        std::fs::write(&bytes_path, bytes_read_per_token(&model, &arch.names).to_string())?;
        println!("export      {:.1} s -> {}", start.elapsed().as_secs_f64(), path.display());
    }
    let read_per_token: f64 = std::fs::read_to_string(&bytes_path)?.trim().parse()?;
    let context = 16 + tokens + 1;
    let mut rates = Vec::new();
    if has("tract") || has("profile") {
        let start = Instant::now();
        let mut tract = TractRuntime::from_path(&path)?;
        let load_s = start.elapsed().as_secs_f64();
        if has("tract") {
            let figures = measure(&mut tract, load_s, &[], tokens, context, arch.vocab_size)?;
            println!("{figures}");
            rates.push(("tract", figures.decode_tokens_per_s));
        }
        if has("profile") {
            profile(&tract, &arch, tokens)?;
        }
    }
    if has("ort") {
        let start = Instant::now();
        let mut ort = OrtRuntime::from_path(&path, Device::Cpu)?;
        let load_s = start.elapsed().as_secs_f64();
        let figures = measure(&mut ort, load_s, &[], tokens, context, arch.vocab_size)?;
        println!("{figures}");
        rates.push(("ort", figures.decode_tokens_per_s));
    }
    let bandwidth = read_bandwidth(1 << 30, 5);
    let bound = bandwidth / read_per_token;
    println!(
        "bandwidth   {:.1} GB/s read; {:.0} MB per token bound decode at {bound:.1} tokens/s",
        bandwidth / 1e9,
        read_per_token / 1e6
    );
    for (name, rate) in &rates {
        println!("{name:<10}  {stem} decode {rate:.1} tokens/s, {:.2}x the bound", rate / bound);
    }
    if let [("tract", tract), ("ort", ort)] = rates[..] {
        println!("tract/ort   {:.2}x", tract / ort);
    }
    Ok(())
}

/// A 16-token prefill, then `steps` one-token steps, each op's eval timed and grouped by op and
/// by the projection it computes.
fn profile(
    tract: &TractRuntime,
    arch: &gptc_graph::architecture::Architecture,
    steps: usize,
) -> anyhow::Result<()> {
    let plan = tract.backend().plan().clone();
    let mut state = SimpleState::new(&plan)?;
    let layers = arch.n_layers;
    let ids = |v: Vec<i64>, n: usize| -> TractResult<TValue> {
        Ok(Tensor::from_shape(&[1, n], &v)?.into())
    };
    let empty = Tensor::zero::<f32>(&[1, arch.n_kv_heads, 0, arch.head_dim])?;
    let mut past: Vec<TValue> = (0..2 * layers).map(|_| empty.clone().into()).collect();
    let mut len = 0usize;
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    let mut wall = 0.0;
    for step in 0..=steps {
        let n = if step == 0 { 16 } else { 1 };
        let mut inputs: TVec<TValue> = tvec![
            ids((0..n as i64).map(|i| (i * 7919) % 50000).collect(), n)?,
            ids(vec![1; len + n], len + n)?,
            ids((len as i64..(len + n) as i64).collect(), n)?,
        ];
        inputs.extend(past.iter().cloned());
        let start = Instant::now();
        let mut times: Vec<(String, f64)> = Vec::new();
        let outputs = state.run_plan_with_eval(inputs, |ctx, op_state, node, input| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
            let op = node.op().name();
            // `model.layers.#.mlp.stacked_int4` of `model.layers.3.mlp.stacked_int4`.
            let name = node.name.replace(|c: char| c.is_ascii_digit(), "#");
            let group = match &*op {
                "OptMatMul" | "GptcInt4MatMul" | "GptcAttention" => {
                    let scope = name.split(".MatMul").next().unwrap_or(&name);
                    format!("{op} {scope}")
                }
                _ => op.to_string(),
            };
            times.push((group, t.elapsed().as_secs_f64()));
            r
        })?;
        if step > 0 {
            wall += start.elapsed().as_secs_f64();
            for (k, v) in times {
                *totals.entry(k).or_default() += v;
            }
        }
        past = outputs[1..].to_vec();
        len += n;
    }
    let sum: f64 = totals.values().sum();
    let per_step = |t: f64| t / steps as f64 * 1e3;
    println!("profile     {:.2} ms/step wall, {:.2} ms/step in ops", per_step(wall), per_step(sum));
    let mut rows: Vec<_> = totals.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (op, t) in rows.iter().take(24) {
        println!("  {op:<60} {:7.3} ms/step {:5.1}%", per_step(*t), 100.0 * t / sum);
    }
    Ok(())
}
