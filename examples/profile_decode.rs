//! Where tract's decode time goes: gpt2-small with the KV cache (4-bit weights, or float32 with
//! `f32`), a 16-token prefill, then 40 one-token steps, each op's eval timed and grouped by op
//! and by the projection it computes. For BENCHMARKS.md; not a test.
//!
//! `cargo run --release --example profile_decode [f32]`
use std::collections::BTreeMap;
use std::time::Instant;

use gptc::runtime::tract::TractRuntime;
use gptc_graph::{build_model, file, GptConfig, GraphOptions, Quantization, RandomInit};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::SimpleState;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let int4 = !args.iter().any(|a| a == "f32");
    // `tied`: the head multiplies by the token embedding (every real GPT-2 checkpoint's layout).
    let tie_weights = args.iter().any(|a| a == "tied");
    // `prefill N`: time three prompts of N tokens instead of decode steps.
    let prefill: Option<usize> =
        args.iter().position(|a| a == "prefill").and_then(|i| args.get(i + 1)?.parse().ok());
    let config = GptConfig::preset("gpt2-small")?;
    let quantization =
        if int4 { Quantization::Int4 { accuracy_level: 4 } } else { Quantization::None };
    let options = GraphOptions {
        kv_cache: true,
        last_token_logits: true,
        tie_weights,
        quantization,
        ..Default::default()
    };
    let model = build_model(&config, options, &mut RandomInit { seed: 123 }, Some(123))?;
    let rt = TractRuntime::from_bytes(&file::encode(&model))?;
    let plan = rt.backend().plan().clone();
    let mut state = SimpleState::new(&plan)?;
    let layers = 12;
    let ids = |v: Vec<i64>, n: usize| -> TValue { Tensor::from_shape(&[1, n], &v).unwrap().into() };
    let mut past: Vec<TValue> =
        (0..2 * layers).map(|_| Tensor::zero::<f32>(&[1, 12, 0, 64]).unwrap().into()).collect();
    let mut len = 0usize;
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    let steps = if prefill.is_some() { 3 } else { 40 };
    let mut wall = 0.0;
    for step in 0..steps + 1 {
        if let Some(n) = prefill.filter(|_| step > 0) {
            // Each timed prompt starts a new sequence.
            past = (0..2 * layers)
                .map(|_| Tensor::zero::<f32>(&[1, 12, 0, 64]).unwrap().into())
                .collect();
            len = 0;
            let _ = n;
        }
        let n = match prefill {
            Some(n) if step > 0 => n,
            _ if step == 0 => 16,
            _ => 1,
        };
        let mut inputs: TVec<TValue> = tvec![
            ids((0..n as i64).map(|i| (i * 7919) % 50000).collect(), n),
            ids(vec![1; len + n], len + n),
            ids((len as i64..(len + n) as i64).collect(), n),
        ];
        inputs.extend(past.iter().cloned());
        let start = Instant::now();
        let mut times: Vec<(String, f64)> = Vec::new();
        let outputs = state.run_plan_with_eval(inputs, |ctx, op_state, node, input| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
            let op = node.op().name();
            let group = if op == "OptMatMul" || op == "GptcInt4MatMul" {
                // The projection: `h.#.mlp.c_fc` of `h.3.mlp.c_fc.MatMulNBits.gptc_int4`.
                let name = node.name.replace(|c: char| c.is_ascii_digit(), "#");
                let layer = name.split("MatMul").next().unwrap_or(&name).trim_end_matches('.');
                format!("{op} {}", if layer.is_empty() { "head" } else { layer })
            } else {
                format!("{}", node.op().name())
            };
            times.push((group, t.elapsed().as_secs_f64()));
            r
        })?;
        let elapsed = start.elapsed().as_secs_f64();
        if step > 0 {
            wall += elapsed;
            for (k, v) in times {
                *totals.entry(k).or_default() += v;
            }
        }
        past = outputs[1..].to_vec();
        len += n;
    }
    let sum: f64 = totals.values().sum();
    println!(
        "{}: {:.2} ms/step wall, {:.2} ms/step in ops",
        if int4 { "int4" } else { "f32" },
        wall / steps as f64 * 1e3,
        sum / steps as f64 * 1e3
    );
    let mut rows: Vec<_> = totals.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (op, t) in rows.iter().take(20) {
        println!("  {op:<40} {:7.3} ms/step {:5.1}%", t / steps as f64 * 1e3, 100.0 * t / sum);
    }
    Ok(())
}
