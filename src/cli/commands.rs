//! What each command prints: the library does the work, these functions render it.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};

use super::bench::{self, BenchPlan};
use gptc::folder::FolderModel;
use gptc::model::compile;
use gptc::progress::Progress;
use gptc::runtime::{load, ModelSource, RuntimeKind};
use gptc::session::{Event, GenerationSettings, Prompt, Session};
use gptc::tokenizer::{self, Tokenizer, TokenizerSources};
use gptc::{folder, inspect, memory};
use gptc_graph::file::{self, WeightLayout};
use gptc_graph::{GraphOptions, Precision, Quantization};

use super::args::{
    weights, BenchArgs, CheckArgs, ExportArgs, GenerateArgs, InspectArgs, TokenizeArgs,
};

pub fn export(args: ExportArgs) -> Result<()> {
    let start = Instant::now();
    let as_folder = folder::is_folder(&args.output);
    // A path that cannot take the model is refused before any work.
    if as_folder {
        folder::check_target(&args.output)?;
    } else {
        let target = file::output_target(&args.output)?;
        if args.external_data {
            file::output_target(&file::data_path(&target))?;
        }
    }
    let weights = weights(args.weights.as_ref(), args.seed);
    let spec = args.model.spec();
    let compiled = compile(&spec, &weights, args.graph.options())?;
    let layout = if args.external_data { WeightLayout::External } else { WeightLayout::Auto };
    let progress = Progress::bytes("writing", file::tensor_bytes(&compiled.model));
    let written = |n| progress.advance(n);
    let data = if as_folder {
        // GPT-2 writes its own BPE; the other families copy their checkpoint's tokenizer.
        let tokenizer = TokenizerSources {
            file: args.tokenizer.as_deref(),
            folder: args.weights.as_deref().filter(|p| p.is_dir()),
        };
        let contents = FolderModel {
            model: &compiled.model,
            config: &compiled.config,
            options: compiled.options,
            tokenizer,
        };
        folder::write_model_folder(&args.output, &contents, layout, &written)?;
        None
    } else {
        file::write_model_observed(&args.output, &compiled.model, layout, &written)?
    };
    drop(progress);
    let parameters = compiled.parameters();
    let options = compiled.options;
    eprintln!(
        "wrote {}{} ({} parameters{}, {:.2} MB) in {:.2} s, peak RSS {:.2} GB",
        args.output.display(),
        data.map(|d| format!(" and {}", d.display())).unwrap_or_default(),
        inspect::thousands(parameters),
        if options.tie_weights { ", tied" } else { "" },
        file::tensor_bytes(&compiled.model) as f64 / (1024.0 * 1024.0),
        start.elapsed().as_secs_f64(),
        memory::peak_rss_bytes().unwrap_or(0) as f64 / 1e9
    );
    Ok(())
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let settings = GenerationSettings {
        max_new_tokens: args.max_new_tokens,
        sampling: args.sampling(),
        stop_at_eos: false,
        stop_strings: args.stop.clone(),
        keep_logits: args.with_logits,
    }
    .eos_by_default(match (args.eos, args.ignore_eos) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    });
    settings.validate()?;
    let mut texts = args.prompts.clone();
    if let Some(path) = &args.prompt_file {
        let content = file::read_text_input(path)?;
        texts.extend(content.lines().filter(|l| !l.trim().is_empty()).map(String::from));
    }
    if args.ids.is_none() && texts.is_empty() {
        bail!("no prompt: give one or more prompts, --prompt-file or --ids");
    }
    let prompts: Vec<Prompt> = match &args.ids {
        Some(ids) => vec![Prompt::Ids(gptc::tokenizer::parse_ids(ids)?)],
        None => texts.iter().cloned().map(Prompt::Text).collect(),
    };
    gptc::session::check_prompts(&prompts)?;
    if args.runtime_kind() == RuntimeKind::Tract && args.device != super::args::DeviceArg::Cpu {
        bail!("tract runs on the CPU only: use --runtime ort for --device cuda or auto");
    }

    // Generating reads only the last position's logits.
    let options = GraphOptions {
        kv_cache: !args.no_kv_cache,
        last_token_logits: true,
        tie_weights: false,
        precision: args.dtype.map_or(Precision::F32, |d| d.precision()),
        quantization: args.quantize.quantization(),
    };
    let spec = args.config.spec();
    let weights = weights(args.weights.as_ref(), args.init_seed.unwrap_or(123));
    let model_path = args.model.as_deref().map(folder::model_path);
    let source = match &model_path {
        Some(path) => ModelSource::File { path, config: &spec },
        None => ModelSource::Compile { config: &spec, weights: &weights, options },
    };
    let mut loaded = load(source, args.runtime_kind())?;
    if let Some(why) = &loaded.fallback {
        eprintln!("gptc: {why}; running ONNX Runtime on the CPU");
    }
    // The folder the model came from holds its tokenizer and special ids.
    let folder =
        [args.model.as_deref(), args.weights.as_deref()].into_iter().flatten().find(|p| p.is_dir());
    let sources = TokenizerSources { file: args.tokenizer.as_deref(), folder };
    let (tokenizer, special) =
        tokenizer::for_model(loaded.config.family(), loaded.config.vocab_size(), sources)?;
    let mut session = Session::new(loaded.runtime.as_mut(), &loaded.config, settings)?
        .with_tokenizer(tokenizer, &special)?;
    let prompt_ids = session.encode(&prompts, args.allow_special)?;

    let stream_text =
        prompt_ids.len() == 1 && !args.json && !args.json_lines && session.decodes_text();
    let mut stdout = std::io::stdout().lock();
    if let Some(tokenizer) = session.tokenizer().filter(|_| stream_text) {
        write!(stdout, "{}", tokenizer.decode_model_ids(&prompt_ids[0])?)?;
        stdout.flush()?;
    }
    let (completions, stats) = session.run(&prompt_ids, |event| {
        let io = gptc::Error::Io;
        match event {
            Event::Cropped { row, tokens, context } => eprintln!(
                "gptc: prompt {} has {tokens} tokens; the model sees only the last {context} (its context)",
                row + 1
            ),
            Event::Token { text, .. } if stream_text => {
                write!(stdout, "{text}").and_then(|_| stdout.flush()).map_err(io)?
            }
            Event::Token { row, id, text } if args.json_lines => {
                let event = serde_json::json!({"event": "token", "row": row, "id": id, "text": text});
                writeln!(stdout, "{event}").map_err(io)?
            }
            Event::Token { .. } => {}
        }
        Ok(())
    })?;

    let runtime = session.runtime_name();
    for (row, completion) in completions.iter().enumerate() {
        if stream_text {
            writeln!(stdout, "{}", completion.unstreamed)?;
        } else if !args.json && !args.json_lines && !session.decodes_text() {
            // No tokenizer for this vocabulary: the ids, as --ids takes them.
            let ids: Vec<String> = completion
                .prompt_ids
                .iter()
                .chain(&completion.output_ids)
                .map(i64::to_string)
                .collect();
            writeln!(stdout, "{}", ids.join(","))?;
        } else if args.json || args.json_lines {
            let mut object = serde_json::json!({
                "prompt": texts.get(row).cloned().unwrap_or_else(|| completion.prompt_text.clone()),
                "prompt_ids": completion.prompt_ids,
                "output_ids": completion.output_ids,
                "text": completion.text(),
                "runtime": runtime,
            });
            if args.json_lines {
                object["event"] = "done".into();
            }
            if args.with_logits {
                object["step_logits"] = serde_json::json!(completion.step_logits);
            }
            writeln!(stdout, "{object}")?;
        } else {
            writeln!(stdout, "{}", completion.text())?;
        }
    }
    stdout.flush()?;
    eprintln!(
        "gptc: {} prompt tokens, {} new tokens, time to first token {:.0} ms, {:.1} tokens/s ({runtime})",
        stats.prompt_tokens,
        stats.new_tokens,
        stats.time_to_first_token.as_secs_f64() * 1e3,
        stats.decode_tokens_per_s,
    );
    Ok(())
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let mut out = String::new();
    let spec = args.config.spec();
    let config = match &args.model {
        Some(path) => {
            let path = &folder::model_path(path);
            let model = inspect::read_model_file(path)?;
            out.push_str(&inspect::file_report(&model)?);
            match spec.for_model_file(file::stored_model_config(&model).transpose()?, path, false) {
                Ok(config) => Some(config),
                Err(gptc::Error::NoConfig(_)) => {
                    out.push_str("no gptc config in the metadata: pass --preset or --config for the accounting\n");
                    None
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => Some(spec.resolve()?),
    };
    if let Some(config) = config {
        out.push_str(&inspect::config_line(&config));
        out.push_str(&inspect::parameter_table(&config));
    }
    write_out(&out)
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let config = args.config.spec().resolve()?;
    let prefill = match args.prefill {
        Some(lengths) => lengths,
        None => [16, 128, 1024].into_iter().filter(|&n| n <= config.context_length()).collect(),
    };
    let plan = BenchPlan {
        config,
        precision: args.dtype.precision(),
        quantization: args.quantize.quantization(),
        tie_weights: args.tie_weights,
        prefill,
        new_tokens: args.new_tokens,
        plain_tokens: args.plain_tokens,
        keep_in: args.dir,
        tract: !args.no_tract,
        ort: args.ort.then(|| args.device.device()),
    };
    let report = bench::run(&plan)?;
    write_out(&report.to_string())?;
    if args.json {
        write_out(&format!("{}\n", serde_json::to_string(&report)?))?;
    }
    Ok(())
}

pub fn check(args: CheckArgs) -> Result<()> {
    let path = &folder::model_path(&args.model);
    let (header, model) = gptc::check::read_model_file(path)?;
    write_out(&inspect::file_report(&model)?)?;
    let stored = file::stored_model_config(&model).transpose()?;
    let config = args.config.spec().for_model_file(stored, path, true)?;
    header.check_tables(&config)?;
    let options = gptc::check::check_model(path, &model, &config)?;
    let side_files = if args.model.is_dir() {
        folder::check_side_files(&args.model, &config)?;
        ", and the folder's side files agree with it"
    } else {
        ""
    };
    let variant = match (options.kv_cache, options.last_token_logits) {
        (false, false) => "plain graph",
        (false, true) => "plain graph, last-token logits",
        (true, false) => "KV cache",
        (true, true) => "KV cache, last-token logits",
    };
    write_out(&format!(
        "ok: inputs and outputs match the config ({variant}, {}) and tract's shape analysis{side_files}\n",
        match options.quantization {
            Quantization::None => match options.precision {
                Precision::F32 => "float32 weights".to_string(),
                Precision::F16 => "float16 weights".to_string(),
            },
            Quantization::Int4 { accuracy_level } => {
                format!("4-bit weights, accuracy level {accuracy_level}")
            }
        }
    ))
}

pub fn tokenize(args: TokenizeArgs) -> Result<()> {
    let mut texts = args.texts;
    if let Some(path) = &args.json_file {
        let listed: Vec<String> = serde_json::from_str(&file::read_text_input(path)?)
            .map_err(|e| anyhow::anyhow!("{}: not a JSON list of strings ({e})", path.display()))?;
        texts.extend(listed);
    }
    let tokenizer = match &args.tokenizer {
        Some(path) => Tokenizer::from_file(path)?,
        None => Tokenizer::gpt2(),
    };
    let ids = texts
        .iter()
        .map(|t| match args.allow_special {
            true => tokenizer.encode_with_special(t),
            false => tokenizer.encode(t),
        })
        .collect::<gptc::Result<Vec<Vec<i64>>>>()?;
    write_out(&format!("{}\n", serde_json::to_string(&ids)?))
}

/// Writes to stdout, returning its errors (`print!` panics on a closed pipe; an error here ends
/// gptc quietly when the reader has gone).
fn write_out(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).map_err(gptc::Error::Io)?;
    Ok(())
}
