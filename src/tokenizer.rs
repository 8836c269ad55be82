//! The tokenizer a model's text goes through: GPT-2's byte-pair encoding (tiktoken's
//! `r50k_base`, shipped inside tiktoken-rs: no download), or a Hugging Face `tokenizer.json`
//! (Llama 3 and Qwen3 ship one) read by Hugging Face's `tokenizers` crate.
//!
//! Which one a model gets ([`Tokenizer::for_model`]): `--tokenizer FILE` when given; else, for
//! GPT-2, r50k; for the other families, the `tokenizer.json` of the folder the model came from
//! (an HF checkpoint, or a model folder gptc wrote). A tokenizer fits a model only when every id
//! it can give is below the model's vocabulary size, so GPT-2's r50k (ids up to 50256) needs a
//! vocabulary of at least 50,257; a model it does not fit runs with token ids, never with the
//! wrong tokenizer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gptc_graph::file;
use gptc_graph::Family;
use serde_json::Value;
use tiktoken_rs::CoreBPE;

use crate::{Error, Result};

/// The vocabulary size of GPT-2's BPE, `<|endoftext|>` (50256) included.
pub const GPT2_VOCAB_SIZE: usize = 50257;

/// GPT-2's `<|endoftext|>`: the last id of its vocabulary, its BOS and EOS alike.
pub const END_OF_TEXT: i64 = 50256;

/// The name of a Hugging Face tokenizer in a folder.
pub const TOKENIZER_JSON: &str = "tokenizer.json";

pub struct Tokenizer {
    kind: Kind,
}

enum Kind {
    Gpt2(&'static CoreBPE),
    HuggingFace(Box<HfTokenizer>),
}

struct HfTokenizer {
    /// Behind a lock because reading special-token text as text is a setting of the tokenizer
    /// (`set_encode_special_tokens`), switched for each encode.
    inner: Mutex<tokenizers::Tokenizer>,
    path: PathBuf,
    /// One more than the largest id it gives.
    size: usize,
    /// Ids of the added tokens (specials), whose text is their content as it is.
    added: HashMap<u32, String>,
    /// The bytes each character of a byte-level token stands for, when the decoder is byte-level
    /// (GPT-2's scheme, as Llama 3's and Qwen3's are): a token's bytes then need no decoding of
    /// its neighbours, and a token holding part of a UTF-8 character keeps its bytes.
    byte_level: Option<HashMap<char, u8>>,
}

/// Where a model's tokenizer may come from.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenizerSources<'a> {
    /// `--tokenizer FILE`: a `tokenizer.json`, whatever the family.
    pub file: Option<&'a Path>,
    /// The folder the model came from (an HF checkpoint, a model folder gptc wrote): its
    /// `tokenizer.json`, for the families other than GPT-2.
    pub folder: Option<&'a Path>,
}

/// A model's special token ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<i64>,
    /// Every id that ends generation (Qwen3 has two), the model's own first.
    pub eos: Vec<i64>,
    pub pad: Option<i64>,
}

impl SpecialIds {
    /// GPT-2's: `<|endoftext|>` begins and ends text; no padding token.
    pub fn gpt2() -> SpecialIds {
        SpecialIds { bos: Some(END_OF_TEXT), eos: vec![END_OF_TEXT], pad: None }
    }
}

impl Tokenizer {
    pub fn gpt2() -> Tokenizer {
        Tokenizer { kind: Kind::Gpt2(tiktoken_rs::r50k_base_singleton()) }
    }

    /// A Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let text = file::read_text_input(path)?;
        let bad = |why: String| {
            Error::Usage(format!("{}: not a tokenizer.json gptc can read ({why})", path.display()))
        };
        let inner: tokenizers::Tokenizer =
            text.parse().map_err(|e: tokenizers::Error| bad(e.to_string()))?;
        let size = inner.get_vocab(true).values().max().map_or(0, |&id| id as usize + 1);
        if size == 0 {
            return Err(bad("its vocabulary is empty".into()));
        }
        let added = inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, token)| (id, token.content))
            .collect();
        let byte_level =
            matches!(inner.get_decoder(), Some(tokenizers::DecoderWrapper::ByteLevel(_))).then(
                || byte_printables().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect(),
            );
        let hf =
            HfTokenizer { inner: Mutex::new(inner), path: path.into(), size, added, byte_level };
        Ok(Tokenizer { kind: Kind::HuggingFace(Box::new(hf)) })
    }

    /// The tokenizer for a model of `family` with `vocab_size` ids, from `sources` (see the
    /// module's doc), or `None` when there is none: the model then runs with token ids. A
    /// tokenizer given or found that does not fit the vocabulary is an error naming both sizes.
    pub fn for_model(
        family: Family,
        vocab_size: usize,
        sources: TokenizerSources,
    ) -> Result<Option<Tokenizer>> {
        let tokenizer = match (sources.file, sources.folder, family) {
            (Some(path), _, _) => Tokenizer::from_file(path)?,
            (None, _, Family::Gpt2) if vocab_size < GPT2_VOCAB_SIZE => return Ok(None),
            (None, _, Family::Gpt2) => Tokenizer::gpt2(),
            (None, Some(dir), _) if dir.join(TOKENIZER_JSON).is_file() => {
                Tokenizer::from_file(&dir.join(TOKENIZER_JSON))?
            }
            (None, _, _) => return Ok(None),
        };
        tokenizer.check_fits(vocab_size)?;
        Ok(Some(tokenizer))
    }

    /// One more than the largest id this tokenizer gives.
    pub fn size(&self) -> usize {
        match &self.kind {
            Kind::Gpt2(_) => GPT2_VOCAB_SIZE,
            Kind::HuggingFace(hf) => hf.size,
        }
    }

    /// What the tokenizer is, for messages: "GPT-2's BPE" or its file.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Gpt2(_) => "GPT-2's BPE".into(),
            Kind::HuggingFace(hf) => hf.path.display().to_string(),
        }
    }

    /// Every id this tokenizer gives must be an id of the model.
    pub fn check_fits(&self, vocab_size: usize) -> Result<()> {
        if self.size() <= vocab_size {
            return Ok(());
        }
        Err(Error::Usage(format!(
            "the tokenizer ({}) has ids up to {}, but the model's vocabulary has {vocab_size}: \
             give a tokenizer of this model (--tokenizer FILE) or token ids (--ids)",
            self.describe(),
            self.size() - 1
        )))
    }

    /// Encodes text as plain text: special-token text typed in a prompt (`<|endoftext|>`) stays
    /// characters. A Hugging Face tokenizer adds the tokens its post-processor adds (Llama 3's
    /// `<|begin_of_text|>`), as transformers' `tokenizer(text)` does.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        match &self.kind {
            Kind::Gpt2(bpe) => Ok(bpe.encode_ordinary(text).into_iter().map(i64::from).collect()),
            Kind::HuggingFace(hf) => hf.encode(text, true),
        }
    }

    /// Encodes text, reading special-token text as the special token (GPT-2's 50256; a Hugging
    /// Face tokenizer's added tokens, as transformers' `tokenizer(text)` reads them).
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<i64>> {
        match &self.kind {
            Kind::Gpt2(bpe) => {
                Ok(bpe.encode_with_special_tokens(text).into_iter().map(i64::from).collect())
            }
            Kind::HuggingFace(hf) => hf.encode(text, false),
        }
    }

    /// The bytes of ids (a token may hold part of a UTF-8 character).
    pub fn decode_bytes(&self, ids: &[i64]) -> Result<Vec<u8>> {
        let size = self.size();
        let ranks = ids
            .iter()
            .map(|&id| {
                u32::try_from(id).ok().filter(|&r| (r as usize) < size).ok_or_else(|| {
                    Error::Usage(format!("token id {id} is not in {}", self.vocabulary_name()))
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        match &self.kind {
            Kind::Gpt2(bpe) => {
                bpe.decode_bytes(&ranks).map_err(|e| Error::Usage(format!("decoding: {e}")))
            }
            Kind::HuggingFace(hf) => hf.decode_bytes(&ranks),
        }
    }

    /// Decodes ids to text; byte sequences that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// A model's ids as text: as [`Tokenizer::decode`], except that an id the tokenizer has no
    /// text for becomes U+FFFD. A model's vocabulary may be larger than its tokenizer (nanoGPT
    /// pads GPT-2's to 50,304; a random init picks any id); the ids themselves stay exact.
    pub fn decode_model_ids(&self, ids: &[i64]) -> Result<String> {
        let known = |id: &i64| usize::try_from(*id).is_ok_and(|id| id < self.size());
        if ids.iter().all(known) {
            return self.decode(ids);
        }
        let bytes = self.model_token_bytes_of(ids)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// One of a model's tokens as bytes (a token may hold part of a UTF-8 character): those of
    /// U+FFFD for an id the tokenizer has no text for (see [`Tokenizer::decode_model_ids`]).
    pub fn model_token_bytes(&self, id: i64) -> Result<Vec<u8>> {
        self.model_token_bytes_of(&[id])
    }

    fn model_token_bytes_of(&self, ids: &[i64]) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        for &id in ids {
            match usize::try_from(id) {
                Ok(index) if index < self.size() => bytes.extend(self.decode_bytes(&[id])?),
                _ => bytes.extend_from_slice(char::REPLACEMENT_CHARACTER.to_string().as_bytes()),
            }
        }
        Ok(bytes)
    }

    fn vocabulary_name(&self) -> String {
        match &self.kind {
            Kind::Gpt2(_) => "GPT-2's vocabulary".into(),
            Kind::HuggingFace(hf) => format!("the vocabulary of {}", hf.path.display()),
        }
    }
}

impl HfTokenizer {
    fn encode(&self, text: &str, special_text_as_text: bool) -> Result<Vec<i64>> {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.set_encode_special_tokens(special_text_as_text);
        let encoding = inner.encode(text, true).map_err(|e| {
            Error::Usage(format!("{}: encoding {text:?}: {e}", self.path.display()))
        })?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let Some(byte_level) = &self.byte_level else {
            let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let text = inner
                .decode(ids, false)
                .map_err(|e| Error::Usage(format!("{}: decoding: {e}", self.path.display())))?;
            return Ok(text.into_bytes());
        };
        let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut bytes = Vec::new();
        for &id in ids {
            if let Some(content) = self.added.get(&id) {
                bytes.extend_from_slice(content.as_bytes());
                continue;
            }
            let token = inner.id_to_token(id).ok_or_else(|| {
                Error::Usage(format!("token id {id} is not in {}", self.path.display()))
            })?;
            for c in token.chars() {
                match byte_level.get(&c) {
                    Some(&b) => bytes.push(b),
                    // Not a byte-level character: the token's text as it is.
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        }
        Ok(bytes)
    }
}

/// A model's special ids, read as transformers reads them: generation_config.json first (what
/// `generate` uses), then config.json, then tokenizer_config.json's tokens (as text, looked up
/// in `tokenizer`). A key holding a list (Qwen3's and Llama 3.2 Instruct's `eos_token_id`)
/// gives every id in it. GPT-2 without a folder: [`SpecialIds::gpt2`].
pub fn special_ids(
    family: Family,
    folder: Option<&Path>,
    tokenizer: Option<&Tokenizer>,
) -> Result<SpecialIds> {
    let Some(dir) = folder else {
        return Ok(match family {
            Family::Gpt2 => SpecialIds::gpt2(),
            _ => SpecialIds::default(),
        });
    };
    let read = |name: &str| -> Result<Option<Value>> {
        let path = dir.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        let text = file::read_text_input(&path)?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Model(format!("{}: not JSON ({e})", path.display())))
    };
    let generation = read("generation_config.json")?;
    let config = read("config.json")?;
    let tokenizer_config = read("tokenizer_config.json")?;
    let ids_of = |key: &str| -> Result<Vec<i64>> {
        for (name, json) in [("generation_config.json", &generation), ("config.json", &config)] {
            match json.as_ref().and_then(|j| j.get(key)) {
                None | Some(Value::Null) => continue,
                Some(value) => {
                    return id_list(value).ok_or_else(|| {
                        Error::Model(format!(
                            "{}: `{key}` is {value}, not a token id or a list of them",
                            dir.join(name).display()
                        ))
                    })
                }
            }
        }
        let token_key = key.trim_end_matches("_id");
        let content = tokenizer_config.as_ref().and_then(|j| j.get(token_key)).and_then(|t| {
            // A token is its text, or an object holding it as `content`.
            t.as_str().or_else(|| t.get("content").and_then(Value::as_str))
        });
        Ok(content.and_then(|c| tokenizer?.token_id(c)).into_iter().collect())
    };
    let mut special = SpecialIds {
        bos: ids_of("bos_token_id")?.first().copied(),
        eos: ids_of("eos_token_id")?,
        pad: ids_of("pad_token_id")?.first().copied(),
    };
    if family == Family::Gpt2 && special == SpecialIds::default() {
        special = SpecialIds::gpt2();
    }
    Ok(special)
}

/// A model's tokenizer (see [`Tokenizer::for_model`]) and its special ids (see
/// [`special_ids`]; the folder in `sources`), what a session needs to run on text.
pub fn for_model(
    family: Family,
    vocab_size: usize,
    sources: TokenizerSources,
) -> Result<(Option<Tokenizer>, SpecialIds)> {
    let tokenizer = Tokenizer::for_model(family, vocab_size, sources)?;
    let special = special_ids(family, sources.folder, tokenizer.as_ref())?;
    Ok((tokenizer, special))
}

/// A token id, or a list of them.
fn id_list(value: &Value) -> Option<Vec<i64>> {
    match value {
        Value::Array(items) => items.iter().map(|v| v.as_u64().map(|id| id as i64)).collect(),
        other => other.as_u64().map(|id| vec![id as i64]),
    }
}

impl Tokenizer {
    /// The id of a token by its text (a special token's content), if the tokenizer has it.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        match &self.kind {
            Kind::Gpt2(_) => (token == "<|endoftext|>").then_some(END_OF_TEXT),
            Kind::HuggingFace(hf) => {
                let inner = hf.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                inner.token_to_id(token).map(i64::from)
            }
        }
    }

    /// The file a Hugging Face tokenizer was read from.
    pub fn file(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Gpt2(_) => None,
            Kind::HuggingFace(hf) => Some(&hf.path),
        }
    }
}

/// GPT-2's BPE as Hugging Face's byte-level BPE writes it: each token's bytes as printable
/// characters (`bytes_to_unicode`), indexed by id, and the merges, all pairs that join into each
/// token, in the order of the token's rank (the order tiktoken applies them).
pub struct HfBpe {
    pub vocab: Vec<String>,
    pub merges: Vec<(String, String)>,
}

impl HfBpe {
    pub fn gpt2() -> Result<HfBpe> {
        let tokenizer = Tokenizer::gpt2();
        let ordinary = END_OF_TEXT as usize;
        let tokens: Vec<Vec<u8>> =
            (0..ordinary as i64).map(|id| tokenizer.decode_bytes(&[id])).collect::<Result<_>>()?;
        let rank: std::collections::HashMap<&[u8], usize> =
            tokens.iter().enumerate().map(|(id, t)| (t.as_slice(), id)).collect();
        let printable = byte_printables();
        let show = |bytes: &[u8]| bytes.iter().map(|&b| printable[b as usize]).collect::<String>();
        let mut merges = Vec::new();
        for token in &tokens {
            let mut splits: Vec<(usize, usize, usize)> = (1..token.len())
                .filter_map(|at| {
                    let (left, right) = token.split_at(at);
                    Some((*rank.get(left)?, *rank.get(right)?, at))
                })
                .collect();
            splits.sort_unstable();
            merges.extend(splits.iter().map(|&(_, _, at)| {
                let (left, right) = token.split_at(at);
                (show(left), show(right))
            }));
        }
        let mut vocab: Vec<String> = tokens.iter().map(|t| show(t)).collect();
        vocab.push("<|endoftext|>".into());
        Ok(HfBpe { vocab, merges })
    }
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the others (controls,
/// space, DEL, NBSP, soft hyphen...) for the characters from U+0100 on, in byte order.
fn byte_printables() -> [char; 256] {
    let stands_for_itself = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if stands_for_itself(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    table
}

/// `"15496, 11,314"` -> ids (checked against a model's vocabulary when a session encodes them).
/// Every item between commas must be an id: an empty one (`1,,2`, a trailing comma) is a typo
/// that dropped an id, so it is refused rather than skipped.
pub fn parse_ids(text: &str) -> Result<Vec<i64>> {
    let bad = |problem: String| Error::Setting { setting: "ids", problem };
    if text.trim().is_empty() {
        return Err(bad("is empty: give token ids separated by commas".into()));
    }
    text.split(',')
        .enumerate()
        .map(|(i, item)| match item.trim() {
            "" => Err(bad(format!("item {} is empty: ids are separated by single commas", i + 1))),
            id => id
                .parse::<u64>()
                .ok()
                .and_then(|id| i64::try_from(id).ok())
                .ok_or_else(|| bad(format!("`{id}` is not a token id"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_books_prompt() {
        let t = Tokenizer::gpt2();
        assert_eq!(t.encode("Hello, I am").unwrap(), vec![15496, 11, 314, 716]);
        assert_eq!(t.decode(&[15496, 11, 314, 716]).unwrap(), "Hello, I am");
    }

    #[test]
    fn ids_parse_and_are_checked() {
        assert_eq!(parse_ids("15496, 11,314").unwrap(), [15496, 11, 314]);
        assert!(parse_ids("1,x").unwrap_err().to_string().contains("`x`"));
        assert!(parse_ids("-1").is_err());
        for dropped in ["1,,2", "1,2,", ",1", " , ", "", "  "] {
            assert!(parse_ids(dropped).is_err(), "{dropped:?}");
        }
    }

    #[test]
    fn hf_bpe_spells_tokens_as_gpt2_does() {
        let bpe = HfBpe::gpt2().unwrap();
        assert_eq!(bpe.vocab.len(), GPT2_VOCAB_SIZE);
        assert_eq!(bpe.vocab[15496], "Hello");
        assert_eq!(bpe.vocab[11], ",");
        assert_eq!(bpe.vocab[314], "\u{120}I"); // " I": the space is U+0120 (Ġ)
        assert_eq!(bpe.vocab[198], "\u{10a}"); // "\n"
        assert_eq!(bpe.vocab[50256], "<|endoftext|>");
        // GPT-2's first merge joins " " and "t".
        assert_eq!(bpe.merges[0], ("\u{120}".to_string(), "t".to_string()));
    }

    /// A byte-level BPE of three tokens: the two bytes of "é" (0xC3 0xA9, spelled `Ã` and `©`
    /// by byte-level BPE) and their merge; `<s>` added as a special token.
    const TINY_BYTE_LEVEL: &str = r#"{"version":"1.0","truncation":null,"padding":null,
        "added_tokens":[{"id":3,"content":"<s>","single_word":false,"lstrip":false,
            "rstrip":false,"normalized":false,"special":true}],
        "normalizer":null,
        "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
        "post_processor":null,
        "decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
        "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,
            "end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,
            "vocab":{"Ã":0,"©":1,"Ã©":2},"merges":["Ã ©"]}}"#;

    fn tiny_tokenizer(dir: &Path) -> Tokenizer {
        let path = dir.join(TOKENIZER_JSON);
        std::fs::write(&path, TINY_BYTE_LEVEL).unwrap();
        Tokenizer::from_file(&path).unwrap()
    }

    #[test]
    fn a_byte_level_token_decodes_to_its_bytes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let t = tiny_tokenizer(dir.path());
        assert_eq!(t.size(), 4);
        assert_eq!(t.encode("é").unwrap(), [2]);
        // Half a character is its byte, for the output stream to join with the next.
        assert_eq!(t.decode_bytes(&[0]).unwrap(), [0xc3]);
        assert_eq!(t.decode_bytes(&[0, 1]).unwrap(), "é".as_bytes());
        assert_eq!(t.decode(&[3, 2]).unwrap(), "<s>é");
        // Special-token text: characters, unless read as specials.
        assert_eq!(t.encode_with_special("<s>").unwrap(), [3]);
        assert_ne!(t.encode("<s>").unwrap(), [3]);
        assert!(t.decode(&[4]).unwrap_err().to_string().contains("token id 4"));
    }

    #[test]
    fn special_ids_follow_transformers_order_and_forms() {
        let dir = tempfile::tempdir().unwrap();
        let t = tiny_tokenizer(dir.path());
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        // Only tokenizer_config.json: tokens as text, or as objects holding it.
        write("tokenizer_config.json", r#"{"bos_token": {"content": "<s>"}, "eos_token": "<s>"}"#);
        let special = special_ids(Family::Llama, Some(dir.path()), Some(&t)).unwrap();
        assert_eq!(special, SpecialIds { bos: Some(3), eos: vec![3], pad: None });
        // config.json's ids come before the tokenizer's; generation_config.json's before both.
        write(
            "config.json",
            r#"{"bos_token_id": 1, "eos_token_id": [2, 0], "pad_token_id": null}"#,
        );
        let special = special_ids(Family::Llama, Some(dir.path()), Some(&t)).unwrap();
        assert_eq!(special, SpecialIds { bos: Some(1), eos: vec![2, 0], pad: None });
        write("generation_config.json", r#"{"eos_token_id": 1, "pad_token_id": 0}"#);
        let special = special_ids(Family::Llama, Some(dir.path()), Some(&t)).unwrap();
        assert_eq!(special, SpecialIds { bos: Some(1), eos: vec![1], pad: Some(0) });
        write("generation_config.json", r#"{"eos_token_id": "two"}"#);
        let err = special_ids(Family::Llama, Some(dir.path()), Some(&t)).unwrap_err();
        assert!(err.to_string().contains("`eos_token_id` is \"two\""), "{err}");
    }

    #[test]
    fn a_models_id_beyond_its_tokenizer_is_shown_as_a_replacement_character() {
        let dir = tempfile::tempdir().unwrap();
        let t = tiny_tokenizer(dir.path());
        assert_eq!(t.decode_model_ids(&[2, 7, 2]).unwrap(), "é\u{fffd}é");
        assert_eq!(t.model_token_bytes(7).unwrap(), "\u{fffd}".as_bytes());
        assert_eq!(t.model_token_bytes(0).unwrap(), [0xc3]);
        // GPT-2's BPE in a vocabulary padded to 50,304.
        let gpt2 = Tokenizer::gpt2();
        assert_eq!(gpt2.decode_model_ids(&[15496, 50300]).unwrap(), "Hello\u{fffd}");
        assert!(gpt2.decode(&[50300]).is_err());
    }

    #[test]
    fn a_file_that_is_not_a_tokenizer_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKENIZER_JSON);
        std::fs::write(&path, r#"{"model": 3}"#).unwrap();
        let err = Tokenizer::from_file(&path).err().unwrap().to_string();
        assert!(err.contains("not a tokenizer.json gptc can read"), "{err}");
        let missing = dir.path().join("missing.json");
        assert!(Tokenizer::from_file(&missing).is_err());
    }

    #[test]
    fn special_token_text_is_plain_text() {
        let t = Tokenizer::gpt2();
        assert!(!t.encode("<|endoftext|>").unwrap().contains(&50256));
        assert_eq!(t.decode(&[50256]).unwrap(), "<|endoftext|>");
        assert!(t.decode(&[50257]).is_err());
    }
}
