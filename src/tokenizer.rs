//! GPT-2's byte-pair encoding (tiktoken's `r50k_base`, shipped inside tiktoken-rs: no download).

use tiktoken_rs::CoreBPE;

use crate::{Error, Result};

/// The vocabulary size of GPT-2's BPE, `<|endoftext|>` (50256) included.
pub const GPT2_VOCAB_SIZE: usize = 50257;

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

    /// Decodes ids to text; byte sequences that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ranks = ids
            .iter()
            .map(|&id| {
                u32::try_from(id).ok().filter(|&r| (r as usize) < GPT2_VOCAB_SIZE).ok_or_else(
                    || Error::Input(format!("token id {id} is not in GPT-2's vocabulary")),
                )
            })
            .collect::<Result<Vec<u32>>>()?;
        let bytes =
            self.bpe.decode_bytes(&ranks).map_err(|e| Error::Input(format!("decoding: {e}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
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
    fn special_token_text_is_plain_text() {
        let t = Tokenizer::gpt2();
        assert!(!t.encode("<|endoftext|>").contains(&50256));
        assert_eq!(t.decode(&[50256]).unwrap(), "<|endoftext|>");
        assert!(t.decode(&[50257]).is_err());
    }
}
