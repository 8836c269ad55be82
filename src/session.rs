//! A generation session: prompts in, token events out. It owns what turns logits into text —
//! the tokenizer, the sampler, the stop policy (end-of-text, stop strings) and one UTF-8 stream
//! per row — so a caller only renders events.

use std::time::{Duration, Instant};

use gptc_graph::{Family, ModelConfig};

use crate::generate::{generate, Next};
use crate::memory::{self, GenerationShape};
use crate::runtime::Runtime;
use crate::sampling::{Sampler, SamplingConfig};
use crate::stream::Utf8Stream;
use crate::tokenizer::{SpecialIds, Tokenizer, TokenizerSources};
use crate::{Error, Result};

/// How to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationSettings {
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Stop a row at `<|endoftext|>` (without emitting it).
    pub stop_at_eos: bool,
    /// Stop a row once its new text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
    /// Keep every step's last-position logits in the output (for cross-checks).
    pub keep_logits: bool,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        GenerationSettings {
            max_new_tokens: 10,
            sampling: SamplingConfig::default(),
            stop_at_eos: false,
            stop_strings: Vec::new(),
            keep_logits: false,
        }
    }
}

impl GenerationSettings {
    /// Settings as users expect them: sampling stops at end-of-text, greedy decoding (the book's
    /// loop) does not unless asked.
    pub fn eos_by_default(mut self, eos: Option<bool>) -> Self {
        self.stop_at_eos = eos.unwrap_or(!self.sampling.is_greedy());
        self
    }

    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(Error::Setting {
                setting: "max-new-tokens",
                problem: "must be at least 1".into(),
            });
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return Err(Error::Setting {
                setting: "stop",
                problem: "is empty: an empty string would stop every row at once".into(),
            });
        }
        self.sampling.validate()
    }
}

/// A prompt: text for the tokenizer, or token ids as they are.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<i64>),
}

/// Checks what can be checked before a model is loaded: there is a prompt, and none is empty.
pub fn check_prompts(prompts: &[Prompt]) -> Result<()> {
    if prompts.is_empty() {
        return Err(Error::Usage("no prompt: give one or more prompts or token ids".into()));
    }
    let empty = |p: &Prompt| match p {
        Prompt::Text(text) => text.is_empty(),
        Prompt::Ids(ids) => ids.is_empty(),
    };
    match prompts.iter().position(empty) {
        Some(i) => {
            Err(Error::Usage(format!("prompt {} is empty: give some text to continue", i + 1)))
        }
        None => Ok(()),
    }
}

/// What happens while generating, in order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event<'a> {
    /// Row `row`'s prompt is longer than the context: the model sees its last `context` tokens.
    Cropped { row: usize, tokens: usize, context: usize },
    /// A new token, and the text it completes (empty while a UTF-8 character is unfinished, or
    /// when the vocabulary is not GPT-2's).
    Token { row: usize, id: i64, text: &'a str },
}

/// What one prompt became.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub prompt_ids: Vec<i64>,
    /// The new ids only.
    pub output_ids: Vec<i64>,
    /// The prompt as text (empty when the vocabulary is not GPT-2's).
    pub prompt_text: String,
    /// The new text, cut before the first stop string.
    pub new_text: String,
    /// The part of the new text that no `Token` event carried: an unfinished UTF-8 character
    /// at the end, as U+FFFD.
    pub unstreamed: String,
    /// Each step's last-position logits, when kept.
    pub step_logits: Vec<Vec<f32>>,
}

impl Completion {
    /// Prompt and continuation, as a user reads them.
    pub fn text(&self) -> String {
        format!("{}{}", self.prompt_text, self.new_text)
    }
}

/// Timing of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub time_to_first_token: Duration,
    /// New tokens after each row's first, per second of decoding.
    pub decode_tokens_per_s: f64,
}

/// Generates with one runtime and one model config.
pub struct Session<'r> {
    runtime: &'r mut dyn Runtime,
    config: ModelConfig,
    /// None: the model runs with token ids only.
    tokenizer: Option<Tokenizer>,
    /// The ids that end a row's generation (with `stop_at_eos`).
    eos: Vec<i64>,
    settings: GenerationSettings,
    /// What a run may plan for at most; the machine's available memory bounds it either way.
    memory_limit: Option<u64>,
}

impl<'r> Session<'r> {
    pub fn new(
        runtime: &'r mut dyn Runtime,
        config: &ModelConfig,
        settings: GenerationSettings,
    ) -> Result<Session<'r>> {
        settings.validate()?;
        let session = Session {
            runtime,
            config: config.clone(),
            // GPT-2's BPE where it fits; another family has none until one is given
            // (`with_tokenizer`): its ids are not GPT-2's tokens, whatever their number.
            tokenizer: Tokenizer::for_model(
                config.family(),
                config.vocab_size(),
                TokenizerSources::default(),
            )?,
            eos: match config.family() {
                Family::Gpt2 => SpecialIds::gpt2().eos,
                _ => Vec::new(),
            },
            settings,
            memory_limit: None,
        };
        // A stop string is matched in the new text: ids without a tokenizer have none, and the
        // string would never stop anything.
        if config.family() != Family::Gpt2
            && !session.decodes_text()
            && !session.settings.stop_strings.is_empty()
        {
            return Err(Error::Setting {
                setting: "stop",
                problem: format!(
                    "needs the model's text, and this {} model has no tokenizer here: its ids are not GPT-2's",
                    config.family().model_type()
                ),
            });
        }
        Ok(session)
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Another tokenizer (a model's own, `--tokenizer FILE`; None: ids only) and the ids that
    /// end generation; a tokenizer that does not fit the model's vocabulary is refused.
    pub fn with_tokenizer(
        mut self,
        tokenizer: Option<Tokenizer>,
        special: &SpecialIds,
    ) -> Result<Session<'r>> {
        if let Some(tokenizer) = &tokenizer {
            tokenizer.check_fits(self.config.vocab_size())?;
        }
        self.tokenizer = tokenizer;
        self.eos = special.eos.clone();
        Ok(self)
    }

    pub fn runtime_name(&self) -> String {
        self.runtime.name()
    }

    /// Whether ids can be shown as text: the model has a tokenizer that fits its vocabulary.
    pub fn decodes_text(&self) -> bool {
        self.tokenizer.is_some()
    }

    /// The ids of each prompt, checked: none empty, every id in the model's vocabulary. With
    /// `allow_special`, `<|endoftext|>` in a text is the special token.
    pub fn encode(&self, prompts: &[Prompt], allow_special: bool) -> Result<Vec<Vec<i64>>> {
        check_prompts(prompts)?;
        let vocab = self.config.vocab_size();
        prompts
            .iter()
            .enumerate()
            .map(|(i, prompt)| {
                let ids = match prompt {
                    Prompt::Ids(ids) => ids.clone(),
                    Prompt::Text(text) => match &self.tokenizer {
                        None => {
                            return Err(Error::Usage(format!(
                                "the model has no tokenizer for its vocabulary ({vocab}): give \
                                 token ids (--ids) or a tokenizer.json (--tokenizer FILE)"
                            )))
                        }
                        Some(tokenizer) if allow_special => tokenizer.encode_with_special(text)?,
                        Some(tokenizer) => tokenizer.encode(text)?,
                    },
                };
                if ids.is_empty() {
                    return Err(Error::Usage(format!(
                        "prompt {} is empty: give some text to continue",
                        i + 1
                    )));
                }
                if let Some(&id) = ids.iter().find(|&&id| id < 0 || id as usize >= vocab) {
                    return Err(Error::Usage(format!(
                        "prompt {} has token {id}, outside the model's vocabulary of {vocab}",
                        i + 1
                    )));
                }
                Ok(ids)
            })
            .collect()
    }

    /// Caps the memory a run may plan for at `bytes` (below what the machine has available, it
    /// is what the batch is split to fit).
    pub fn limit_memory(&mut self, bytes: u64) {
        self.memory_limit = Some(bytes);
    }

    /// What a run of these settings on this runtime holds, for the memory estimate.
    fn generation_shape(&self) -> GenerationShape {
        GenerationShape {
            kv_cache: self.runtime.has_cache(),
            logits: self.runtime.logit_positions(),
            max_new_tokens: self.settings.max_new_tokens,
            keep_logits: self.settings.keep_logits,
        }
    }

    /// Generates for every prompt (checked ids, as [`Session::encode`] gives), calling
    /// `on_event` as it goes. The prompts run as left-padded batches: all of them at once when
    /// they fit the memory available, else in consecutive chunks that each fit (a row's output
    /// is the same either way); prompts that cannot fit even one at a time are refused before
    /// anything runs.
    pub fn run(
        &mut self,
        prompts: &[Vec<i64>],
        mut on_event: impl FnMut(Event) -> Result<()>,
    ) -> Result<(Vec<Completion>, Stats)> {
        let context = self.config.context_length();
        let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
        let available = match (self.memory_limit, memory::available_bytes()) {
            (Some(limit), Some(machine)) => Some(limit.min(machine)),
            (limit, machine) => limit.or(machine),
        };
        let chunks = self.generation_shape().chunks(&self.config, &lengths, available)?;
        for (row, prompt) in prompts.iter().enumerate() {
            if prompt.len() > context {
                on_event(Event::Cropped { row, tokens: prompt.len(), context })?;
            }
        }
        let Session { runtime, tokenizer, settings, eos, .. } = self;
        let mut rows: Vec<Completion> = prompts
            .iter()
            .map(|prompt| {
                Ok(Completion {
                    prompt_ids: prompt.clone(),
                    output_ids: Vec::new(),
                    prompt_text: match tokenizer {
                        Some(tokenizer) => tokenizer.decode_model_ids(prompt)?,
                        None => String::new(),
                    },
                    new_text: String::new(),
                    unstreamed: String::new(),
                    step_logits: Vec::new(),
                })
            })
            .collect::<Result<_>>()?;
        let mut streams: Vec<Utf8Stream> = prompts.iter().map(|_| Utf8Stream::default()).collect();
        let mut rows_done = vec![0usize; prompts.len()];
        let mut new_tokens = 0usize;
        let mut time_to_first_token = None;
        let (mut decode_time, mut later_tokens) = (Duration::ZERO, 0usize);
        for chunk in chunks {
            let mut samplers = chunk
                .clone()
                .map(|row| {
                    let seed = row_seed(settings.sampling.seed, row);
                    Sampler::new(SamplingConfig { seed, ..settings.sampling.clone() })
                })
                .collect::<Result<Vec<_>>>()?;
            let start = Instant::now();
            let mut first_token_at = None;
            let tokens_before = new_tokens;
            let outputs = generate(
                *runtime,
                &prompts[chunk.clone()],
                settings.max_new_tokens,
                context,
                |in_chunk, logits| {
                    let row = chunk.start + in_chunk;
                    first_token_at.get_or_insert_with(|| start.elapsed());
                    if logits.iter().any(|x| !x.is_finite()) {
                        return Err(Error::Model(format!(
                    "the model's logits for prompt {} at new token {} are not finite (NaN or infinity)",
                    row + 1,
                    rows_done[row] + 1
                )));
                    }
                    rows_done[row] += 1;
                    if settings.keep_logits {
                        rows[row].step_logits.push(logits.to_vec());
                    }
                    let id = samplers[in_chunk].pick(logits);
                    if settings.stop_at_eos && eos.contains(&id) {
                        return Ok(Next::Stop);
                    }
                    new_tokens += 1;
                    let piece = match tokenizer {
                        Some(tokenizer) => streams[row].push(&tokenizer.model_token_bytes(id)?),
                        None => String::new(),
                    };
                    let text = &mut rows[row].new_text;
                    text.push_str(&piece);
                    let stopped = settings.stop_strings.iter().any(|s| text.contains(s.as_str()));
                    on_event(Event::Token { row, id, text: &piece })?;
                    Ok(if stopped { Next::Last(id) } else { Next::Token(id) })
                },
            )?;
            let elapsed = start.elapsed();
            let first = first_token_at.unwrap_or(elapsed);
            time_to_first_token.get_or_insert(first);
            // Each chunk's prefill is its time to first token, not decoding.
            decode_time += elapsed.saturating_sub(first);
            later_tokens += (new_tokens - tokens_before).saturating_sub(chunk.len());
            for (row, output_ids) in rows[chunk].iter_mut().zip(outputs) {
                row.output_ids = output_ids;
            }
        }
        for (row, stream) in rows.iter_mut().zip(&mut streams) {
            row.unstreamed = stream.finish();
            row.new_text.push_str(&row.unstreamed);
            let stops = settings.stop_strings.iter();
            if let Some(cut) = stops.filter_map(|s| row.new_text.find(s.as_str())).min() {
                row.new_text.truncate(cut);
            }
        }
        let decode_s = decode_time.as_secs_f64();
        let stats = Stats {
            prompt_tokens: prompts.iter().map(Vec::len).sum(),
            new_tokens,
            time_to_first_token: time_to_first_token.unwrap_or_default(),
            decode_tokens_per_s: if decode_s > 0.0 { later_tokens as f64 / decode_s } else { 0.0 },
        };
        Ok((rows, stats))
    }
}

/// Row `row`'s sampling seed: row 0 samples from `seed` itself, as a single prompt always did;
/// every other row from a stream of its own, so that a row's text depends on neither the rows
/// beside it nor how the batch was split to fit memory.
fn row_seed(seed: u64, row: usize) -> u64 {
    seed ^ (row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;
    use crate::runtime::{LogitPositions, Step};
    use crate::tokenizer::{END_OF_TEXT, GPT2_VOCAB_SIZE};

    /// A cached model whose greedy choice for row `r` at step `s` is `script[r][s]`.
    struct Scripted {
        script: Vec<Vec<i64>>,
        step: usize,
    }

    impl Runtime for Scripted {
        fn name(&self) -> String {
            "scripted".into()
        }
        fn has_cache(&self) -> bool {
            true
        }
        fn reset(&mut self) {}
        fn run(&mut self, step: &Step) -> Result<Array3<f32>> {
            let batch = step.input_ids.nrows();
            let at = self.step;
            self.step += 1;
            Ok(Array3::from_shape_fn((batch, 1, GPT2_VOCAB_SIZE), |(row, _, id)| {
                f32::from(self.script[row].get(at) == Some(&(id as i64)))
            }))
        }
    }

    /// A cached model that continues each row with its last token plus one, whichever rows
    /// share its batch; it records the rows and width of every prefill.
    struct Counting {
        logits: LogitPositions,
        prefills: Vec<(usize, usize)>,
    }

    impl Runtime for Counting {
        fn name(&self) -> String {
            "counting".into()
        }
        fn has_cache(&self) -> bool {
            true
        }
        fn reset(&mut self) {}
        fn logit_positions(&self) -> LogitPositions {
            self.logits
        }
        fn run(&mut self, step: &Step) -> Result<Array3<f32>> {
            let (batch, width) = step.input_ids.dim();
            if step.attention_mask.is_some_and(|mask| mask.ncols() == width) {
                self.prefills.push((batch, width));
            }
            let positions = match self.logits {
                LogitPositions::Last => 1,
                LogitPositions::Every => width,
            };
            let next = |row| (step.input_ids[[row, width - 1]] + 1) % GPT2_VOCAB_SIZE as i64;
            Ok(Array3::from_shape_fn((batch, positions, GPT2_VOCAB_SIZE), |(row, _, id)| {
                f32::from(id as i64 == next(row))
            }))
        }
    }

    /// The new ids of each prompt, and the rows and width of each prefill that made them.
    type Counted = (Result<Vec<Vec<i64>>>, Vec<(usize, usize)>);

    /// Runs `prompts` on a [`Counting`] runtime, under `limit` bytes when given.
    fn counted(prompts: &[Vec<i64>], logits: LogitPositions, limit: Option<u64>) -> Counted {
        let mut runtime = Counting { logits, prefills: Vec::new() };
        let mut session = Session::new(&mut runtime, &config(), settings(5)).unwrap();
        if let Some(limit) = limit {
            session.limit_memory(limit);
        }
        let result = session.run(prompts, |_| Ok(())).map(|(completions, _)| {
            completions.into_iter().map(|c| c.output_ids).collect::<Vec<_>>()
        });
        (result, runtime.prefills)
    }

    fn shape(logits: LogitPositions) -> GenerationShape {
        GenerationShape { kv_cache: true, logits, max_new_tokens: 5, keep_logits: false }
    }

    #[test]
    fn a_batch_larger_than_memory_runs_in_chunks_with_each_output_as_alone() {
        let prompts: Vec<Vec<i64>> =
            (0..10).map(|i| (0..1 + i % 4).map(|t| 100 * i + t).collect()).collect();
        let every = LogitPositions::Every;
        let three = shape(every).chunk_bytes(&config(), 3, 4);
        let (chunked, prefills) = counted(&prompts, every, Some(three));
        let chunked = chunked.unwrap();
        assert!(prefills.len() > 1, "{prefills:?}");
        for &(rows, width) in &prefills {
            assert!(shape(every).chunk_bytes(&config(), rows, width) <= three, "{prefills:?}");
        }
        assert_eq!(prefills.iter().map(|p| p.0).sum::<usize>(), prompts.len());
        for (prompt, output) in prompts.iter().zip(&chunked) {
            let (alone, _) = counted(std::slice::from_ref(prompt), every, None);
            assert_eq!(&alone.unwrap()[0], output, "{prompt:?}");
            let last = *prompt.last().unwrap();
            assert_eq!(output, &(last + 1..last + 6).collect::<Vec<_>>());
        }
        // The same memory takes more rows at once from a model that returns the last
        // position's logits only.
        let (_, fewer) = counted(&prompts, LogitPositions::Last, Some(three));
        assert!(fewer.len() < prefills.len(), "{fewer:?} against {prefills:?}");
    }

    #[test]
    fn a_batch_that_cannot_fit_is_refused_before_anything_runs() {
        let prompts = vec![vec![1, 2, 3], vec![4; 20]];
        let one = shape(LogitPositions::Every).chunk_bytes(&config(), 1, 20);
        let (result, prefills) = counted(&prompts, LogitPositions::Every, Some(one - 1));
        let err = result.unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        assert!(prefills.is_empty(), "ran {prefills:?}");
        let (result, _) = counted(&prompts, LogitPositions::Every, Some(one));
        assert!(result.is_ok());
    }

    #[test]
    fn a_rows_sampled_text_does_not_depend_on_the_chunks() {
        let sampling = GenerationSettings {
            sampling: SamplingConfig { temperature: 1.0, seed: 7, ..SamplingConfig::default() },
            ..settings(4)
        };
        let sample = |limit: Option<u64>| {
            let mut runtime = Uniform;
            let mut session = Session::new(&mut runtime, &config(), sampling.clone()).unwrap();
            if let Some(limit) = limit {
                session.limit_memory(limit);
            }
            let prompts = vec![vec![1]; 6];
            let (rows, _) = session.run(&prompts, |_| Ok(())).unwrap();
            rows.into_iter().map(|c| c.output_ids).collect::<Vec<_>>()
        };
        let whole = sample(None);
        let one_by_one = sample(Some(shape(LogitPositions::Every).chunk_bytes(&config(), 1, 1)));
        assert_eq!(whole, one_by_one);
        // Rows sample from streams of their own: the same prompt twice gives two texts.
        assert_ne!(whole[0], whole[1]);
    }

    /// A cached model whose logits are all equal: sampling draws uniformly.
    struct Uniform;

    impl Runtime for Uniform {
        fn name(&self) -> String {
            "uniform".into()
        }
        fn has_cache(&self) -> bool {
            true
        }
        fn reset(&mut self) {}
        fn run(&mut self, step: &Step) -> Result<Array3<f32>> {
            let (batch, width) = step.input_ids.dim();
            Ok(Array3::zeros((batch, width, GPT2_VOCAB_SIZE)))
        }
    }

    fn config() -> ModelConfig {
        ModelConfig::Gpt2(gptc_graph::GptConfig {
            vocab_size: GPT2_VOCAB_SIZE,
            context_length: 32,
            emb_dim: 8,
            n_heads: 2,
            n_layers: 1,
            drop_rate: 0.0,
            qkv_bias: false,
        })
    }

    /// Runs `script` greedily on one prompt per row; returns the completions and, per row, the
    /// texts its `Token` events carried.
    fn run(
        script: Vec<Vec<i64>>,
        settings: GenerationSettings,
    ) -> (Vec<Completion>, Vec<Vec<String>>) {
        let rows = script.len();
        let mut runtime = Scripted { script, step: 0 };
        let mut session = Session::new(&mut runtime, &config(), settings).unwrap();
        let prompts = session.encode(&vec![Prompt::Text("Hi".into()); rows], false).unwrap();
        let mut events = vec![Vec::new(); rows];
        let (completions, stats) = session
            .run(&prompts, |event| {
                if let Event::Token { row, text, .. } = event {
                    events[row].push(text.to_string());
                }
                Ok(())
            })
            .unwrap();
        let emitted: usize = events.iter().map(Vec::len).sum();
        assert_eq!(stats.new_tokens, emitted);
        (completions, events)
    }

    fn ids(text: &str) -> Vec<i64> {
        Tokenizer::gpt2().encode(text).unwrap()
    }

    fn settings(max_new_tokens: usize) -> GenerationSettings {
        GenerationSettings { max_new_tokens, ..GenerationSettings::default() }
    }

    #[test]
    fn a_stop_string_ends_its_row_and_is_cut_from_the_text() {
        let script = vec![ids(" one. two three"), ids(" four five six")];
        let stop = GenerationSettings { stop_strings: vec![".".into()], ..settings(3) };
        let (rows, events) = run(script.clone(), stop);
        // Row 0 stops at the token that completes the stop string; it is kept in the ids.
        assert_eq!(rows[0].output_ids, ids(" one."));
        assert_eq!(rows[0].new_text, " one");
        assert_eq!(rows[0].text(), "Hi one");
        assert_eq!(events[0].concat(), " one.");
        // Row 1 never meets it and runs to its budget.
        assert_eq!(rows[1].output_ids, script[1]);
        assert_eq!(rows[1].new_text, " four five six");
    }

    #[test]
    fn end_of_text_stops_a_row_only_when_asked() {
        let mut script = ids(" end");
        script.push(END_OF_TEXT);
        script.extend(ids(" more"));
        let stopping = GenerationSettings { stop_at_eos: true, ..settings(4) };
        let (rows, events) = run(vec![script.clone()], stopping);
        assert_eq!(rows[0].output_ids, ids(" end"));
        assert_eq!(events[0], [" end"]);
        let (rows, _) = run(vec![script.clone()], settings(3));
        assert_eq!(rows[0].output_ids, script[..3]);
        assert!(rows[0].new_text.contains("<|endoftext|>"));
        // Sampling stops at end-of-text by default, greedy decoding does not.
        assert!(!settings(1).eos_by_default(None).stop_at_eos);
        let sampling = GenerationSettings {
            sampling: SamplingConfig { temperature: 1.0, ..SamplingConfig::default() },
            ..settings(1)
        };
        assert!(sampling.clone().eos_by_default(None).stop_at_eos);
        assert!(!sampling.eos_by_default(Some(false)).stop_at_eos);
    }

    #[test]
    fn every_end_id_of_the_model_stops_a_row_and_without_a_tokenizer_text_is_refused() {
        // A model whose generation config lists two end ids (as Qwen3's does).
        let (first_end, second_end) = (ids(" a")[0], ids(" b")[0]);
        let special = SpecialIds { bos: None, eos: vec![first_end, second_end], pad: None };
        for end in [first_end, second_end] {
            let mut runtime =
                Scripted { script: vec![vec![ids(" x")[0], end, END_OF_TEXT]], step: 0 };
            let stopping = GenerationSettings { stop_at_eos: true, ..settings(3) };
            let mut session = Session::new(&mut runtime, &config(), stopping)
                .unwrap()
                .with_tokenizer(Some(Tokenizer::gpt2()), &special)
                .unwrap();
            let prompts = session.encode(&[Prompt::Text("Hi".into())], false).unwrap();
            let (rows, _) = session.run(&prompts, |_| Ok(())).unwrap();
            assert_eq!(rows[0].output_ids, ids(" x"), "end id {end}");
        }
        // No tokenizer: ids run, text is one clear error.
        let mut runtime = Scripted { script: vec![ids(" x")], step: 0 };
        let session = Session::new(&mut runtime, &config(), settings(1))
            .unwrap()
            .with_tokenizer(None, &SpecialIds::default())
            .unwrap();
        assert!(!session.decodes_text());
        assert!(session.encode(&[Prompt::Ids(vec![1])], false).is_ok());
        let err = session.encode(&[Prompt::Text("Hi".into())], false).unwrap_err().to_string();
        assert!(err.contains("no tokenizer") && err.contains("--tokenizer FILE"), "{err}");
    }

    #[test]
    fn streamed_text_holds_back_a_split_character_until_it_is_whole() {
        let tokenizer = Tokenizer::gpt2();
        let byte_token = |byte: u8| -> i64 {
            (0..GPT2_VOCAB_SIZE as i64)
                .find(|&id| tokenizer.decode_bytes(&[id]).unwrap() == [byte])
                .unwrap()
        };
        // "€" is E2 82 AC: three single-byte tokens, then a lone E2 that never completes.
        let euro: Vec<i64> = [0xe2, 0x82, 0xac, 0xe2].map(byte_token).to_vec();
        let (rows, events) = run(vec![euro], settings(4));
        assert_eq!(events[0], ["", "", "€", ""]);
        assert_eq!(rows[0].unstreamed, "\u{fffd}");
        assert_eq!(rows[0].new_text, "€\u{fffd}");
    }

    #[test]
    fn prompts_are_checked_before_anything_runs() {
        assert!(check_prompts(&[]).is_err());
        let empty = check_prompts(&[Prompt::Text("a".into()), Prompt::Text(String::new())]);
        assert!(empty.unwrap_err().to_string().contains("prompt 2 is empty"));
        let mut runtime = Scripted { script: vec![], step: 0 };
        let session = Session::new(&mut runtime, &config(), settings(1)).unwrap();
        let outside = session.encode(&[Prompt::Ids(vec![1, 50257])], false).unwrap_err();
        assert!(outside.to_string().contains("token 50257"), "{outside}");
        let special = session.encode(&[Prompt::Text("<|endoftext|>".into())], true).unwrap();
        assert_eq!(special, [[END_OF_TEXT]]);
        assert!(Session::new(&mut runtime, &config(), settings(0)).is_err());
    }
}
