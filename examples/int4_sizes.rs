//! What a 4-bit export of a preset weighs, tied table included: the file gptc writes (encoded
//! in memory, not written) and its parts. For BENCHMARKS.md ("Tied heads"); not a test.
//!
//! `cargo run --release --example int4_sizes [PRESET ...]` (default: gpt2-small, qwen3-0.6b,
//! llama3.2-1b; the last two tie their head in their presets, gpt2-small is tied here).
use gptc_graph::{build_model, file, GraphOptions, ModelConfig, Quantization, RandomInit};

fn main() -> anyhow::Result<()> {
    let mut presets: Vec<String> = std::env::args().skip(1).collect();
    if presets.is_empty() {
        presets = ["gpt2-small", "qwen3-0.6b", "llama3.2-1b"].map(String::from).to_vec();
    }
    for preset in presets {
        let config = ModelConfig::preset(&preset)?;
        let options = GraphOptions {
            kv_cache: true,
            tie_weights: true,
            quantization: Quantization::Int4 { accuracy_level: 4 },
            ..Default::default()
        };
        let model = build_model(config, options, &mut RandomInit { seed: 123 }, Some(123))?;
        let mb = |bytes: usize| bytes as f64 / 1e6;
        let (mut blocks, mut scales, mut float) = (0, 0, 0);
        for t in model.graph.iter().flat_map(|g| &g.initializer) {
            let bytes = file::tensor_byte_len(t);
            match () {
                _ if t.name.ends_with(gptc_graph::names::INT4_BLOCKS_SUFFIX) => blocks += bytes,
                _ if t.name.ends_with(gptc_graph::names::INT4_SCALES_SUFFIX) => scales += bytes,
                _ => float += bytes,
            }
        }
        let encoded = file::encode(&model).len();
        println!(
            "{preset:<12} int4 tied: file {:.1} MB (4-bit blocks {:.1}, scales {:.1}, float {:.1})",
            mb(encoded),
            mb(blocks),
            mb(scales),
            mb(float)
        );
    }
    Ok(())
}
