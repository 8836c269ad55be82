//! Where tract's decode time goes, for any preset (default gpt2-small) with the KV cache:
//! 4-bit weights, or float32 with `f32`; a 16-token prefill, then one-token steps (40, or
//! `steps N`), each op's eval timed and grouped by op and by the projection it computes. With
//! `prefill N`, three prompts of N tokens are timed instead. `tied` makes the head multiply by
//! the token embedding (every real GPT-2 checkpoint's layout); `untied` gives a preset that
//! ties (Llama 3.2, Qwen3) a head of its own. For BENCHMARKS.md; not a test. Decode rates with
//! bytes per token and the bandwidth bound are `gptc bench`'s.
//!
//! `cargo run --release --example profile_decode -- [PRESET] [f32] [tied|untied] [prefill N] [steps N]`
use std::collections::BTreeMap;
use std::time::Instant;

use gptc::runtime::tract::TractRuntime;
use gptc_graph::{build_model, file, GraphOptions, ModelConfig, Quantization, RandomInit};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::SimpleState;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let number = |flag: &str| -> Option<usize> {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)?.parse().ok())
    };
    let preset = args.first().filter(|a| ModelConfig::preset(a).is_ok());
    let mut config = ModelConfig::preset(preset.map_or("gpt2-small", String::as_str))?;
    if has("untied") {
        config.set_head_tied(false);
    }
    let int4 = !has("f32");
    let prefill = number("prefill");
    let quantization =
        if int4 { Quantization::Int4 { accuracy_level: 4 } } else { Quantization::None };
    let options = GraphOptions {
        kv_cache: true,
        last_token_logits: true,
        tie_weights: has("tied"),
        quantization,
        ..Default::default()
    };
    let arch = config.architecture();
    let model = build_model(&config, options, &mut RandomInit { seed: 123 }, Some(123))?;
    // A file of more than 2 GiB needs external data, so every preset goes through a file.
    let dir = file::StagingDir::new()?;
    let path = dir.0.join("model.onnx");
    file::write_model(&path, &model, file::WeightLayout::Auto)?;
    drop(model);
    let rt = TractRuntime::from_path(&path)?;
    let plan = rt.backend().plan().clone();
    let mut state = SimpleState::new(&plan)?;

    let ids = |v: Vec<i64>, n: usize| -> TractResult<TValue> {
        Ok(Tensor::from_shape(&[1, n], &v)?.into())
    };
    let empty_cache = || -> TractResult<Vec<TValue>> {
        let empty = Tensor::zero::<f32>(&[1, arch.n_kv_heads, 0, arch.head_dim])?;
        Ok((0..2 * arch.n_layers).map(|_| empty.clone().into()).collect())
    };
    let spread = arch.vocab_size.min(50000) as i64;
    let mut past = empty_cache()?;
    let mut len = 0usize;
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    let steps = if prefill.is_some() { 3 } else { number("steps").unwrap_or(40) };
    let mut wall = 0.0;
    for step in 0..=steps {
        let n = match prefill {
            // Each timed prompt starts a new sequence.
            Some(n) if step > 0 => {
                past = empty_cache()?;
                len = 0;
                n
            }
            _ if step == 0 => 16,
            _ => 1,
        };
        let mut inputs: TVec<TValue> = tvec![
            ids((0..n as i64).map(|i| (i * 7919) % spread).collect(), n)?,
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
            let group = match &*op {
                // The projection: `h.#.mlp.c_fc` of `h.3.mlp.c_fc.MatMulNBits.gptc_int4`.
                "OptMatMul" | "GptcInt4MatMul" | "GptcAttention" => {
                    let name = node.name.replace(|c: char| c.is_ascii_digit(), "#");
                    let scope = name.split("MatMul").next().unwrap_or(&name).trim_end_matches('.');
                    format!("{op} {}", if scope.is_empty() { "head" } else { scope })
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
    println!(
        "{} {}: {:.2} ms/step wall, {:.2} ms/step in ops",
        preset.map_or("gpt2-small", String::as_str),
        if int4 { "int4" } else { "f32" },
        per_step(wall),
        per_step(sum)
    );
    let mut rows: Vec<_> = totals.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (op, t) in rows.iter().take(24) {
        println!("  {op:<56} {:7.3} ms/step {:5.1}%", per_step(*t), 100.0 * t / sum);
    }
    Ok(())
}
