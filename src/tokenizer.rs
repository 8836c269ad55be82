//! GPT-2's byte-pair encoding (tiktoken's `r50k_base`, shipped inside tiktoken-rs: no download).

use tiktoken_rs::CoreBPE;

use crate::{Error, Result};

/// The vocabulary size of GPT-2's BPE, `<|endoftext|>` (50256) included.
pub const GPT2_VOCAB_SIZE: usize = 50257;

/// GPT-2's `<|endoftext|>`: the last id of its vocabulary, its BOS and EOS alike.
pub const END_OF_TEXT: i64 = 50256;

pub struct Tokenizer {
    bpe: &'static CoreBPE,
}

impl Tokenizer {
    pub fn gpt2() -> Tokenizer {
        Tokenizer { bpe: tiktoken_rs::r50k_base_singleton() }
    }

    /// Encodes text as plain text: `<|endoftext|>` typed in a prompt stays characters.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        self.bpe.encode_ordinary(text).into_iter().map(i64::from).collect()
    }

    /// Encodes text, reading `<|endoftext|>` as the special token (50256).
    pub fn encode_with_special(&self, text: &str) -> Vec<i64> {
        self.bpe.encode_with_special_tokens(text).into_iter().map(i64::from).collect()
    }

    /// The bytes of ids (a token may hold part of a UTF-8 character).
    pub fn decode_bytes(&self, ids: &[i64]) -> Result<Vec<u8>> {
        let ranks = ids
            .iter()
            .map(|&id| {
                u32::try_from(id).ok().filter(|&r| (r as usize) < GPT2_VOCAB_SIZE).ok_or_else(
                    || Error::Usage(format!("token id {id} is not in GPT-2's vocabulary")),
                )
            })
            .collect::<Result<Vec<u32>>>()?;
        self.bpe.decode_bytes(&ranks).map_err(|e| Error::Usage(format!("decoding: {e}")))
    }

    /// Decodes ids to text; byte sequences that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
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
        assert_eq!(t.encode("Hello, I am"), vec![15496, 11, 314, 716]);
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

    #[test]
    fn special_token_text_is_plain_text() {
        let t = Tokenizer::gpt2();
        assert!(!t.encode("<|endoftext|>").contains(&50256));
        assert_eq!(t.decode(&[50256]).unwrap(), "<|endoftext|>");
        assert!(t.decode(&[50257]).is_err());
    }
}
