//! Every name that crosses the boundary between the graph and whoever runs or reads it: graph
//! inputs and outputs (HF optimum's GPT-2 layout), the weights other code looks up by name, and
//! the metadata keys. The builder writes these names, and the runtimes, `check` and the
//! checkpoint import read them from here, so the contract is stated once.

use std::fmt;

pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const POSITION_IDS: &str = "position_ids";
pub const LOGITS: &str = "logits";

const PAST_PREFIX: &str = "past_key_values.";
const PRESENT_PREFIX: &str = "present.";

/// The two halves of a layer's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvPart {
    Key,
    Value,
}

impl KvPart {
    pub const BOTH: [KvPart; 2] = [KvPart::Key, KvPart::Value];

    fn suffix(self) -> &'static str {
        match self {
            KvPart::Key => "key",
            KvPart::Value => "value",
        }
    }
}

/// `past_key_values.{layer}.key` / `.value`: the cache a step reads.
/// (`layer` may be a placeholder such as `%d`, for configs that name every layer at once.)
pub fn past(layer: impl fmt::Display, part: KvPart) -> String {
    format!("{PAST_PREFIX}{layer}.{}", part.suffix())
}

/// `present.{layer}.key` / `.value`: the cache a step returns, past and new positions.
pub fn present(layer: impl fmt::Display, part: KvPart) -> String {
    format!("{PRESENT_PREFIX}{layer}.{}", part.suffix())
}

/// GPT-2's weights that code outside the builder refers to by name.
pub const TOKEN_EMBEDDING: &str = "wte.weight";
pub const POSITION_EMBEDDING: &str = "wpe.weight";
pub const OUTPUT_HEAD: &str = "lm_head.weight";
/// The `[context, context]` causal table (GPT-2's `attn.bias` buffer) that files of earlier
/// gptc versions store; the mask is computed now, but readers may still meet the table.
pub const CAUSAL_MASK: &str = "causal_mask";

/// How a family's checkpoints name its modules: the graph names its weights (`{module}.weight`,
/// `.bias`) the same way, so importing a checkpoint is, tensor for tensor, the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleNames {
    pub token_embedding: &'static str,
    /// Learned positions (GPT-2's `wpe`); RoPE families have none.
    pub position_embedding: Option<&'static str>,
    /// Block `i` is `{blocks}.{i}`.
    pub blocks: &'static str,
    /// The norm before the attention, the attention, its projections and (Qwen3) the norms
    /// of each head's queries and keys.
    pub attention_norm: &'static str,
    pub attention: &'static str,
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_output: &'static str,
    pub query_norm: &'static str,
    pub key_norm: &'static str,
    /// The norm before the feed-forward, the feed-forward and its projections: `up` widens,
    /// `gate` (SwiGLU only) gates it, `down` narrows back.
    pub feed_forward_norm: &'static str,
    pub feed_forward: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
    pub final_norm: &'static str,
    pub output_head: &'static str,
}

impl ModuleNames {
    /// `{blocks}.{layer}`: `h.3`, `model.layers.3`.
    pub fn block(&self, layer: usize) -> String {
        format!("{}.{layer}", self.blocks)
    }
}

/// GPT-2's names as HF's `GPT2LMHeadModel` has them, `transformer.` dropped and `c_attn` split.
pub const GPT2_MODULES: ModuleNames = ModuleNames {
    token_embedding: TOKEN_EMBEDDING,
    position_embedding: Some(POSITION_EMBEDDING),
    blocks: "h",
    attention_norm: "ln_1",
    attention: "attn",
    query: "q_proj",
    key: "k_proj",
    value: "v_proj",
    attention_output: "c_proj",
    query_norm: "q_norm",
    key_norm: "k_norm",
    feed_forward_norm: "ln_2",
    feed_forward: "mlp",
    gate: "gate_proj",
    up: "c_fc",
    down: "c_proj",
    final_norm: "ln_f",
    output_head: OUTPUT_HEAD,
};

/// The names of HF's `LlamaForCausalLM` and `Qwen3ForCausalLM`, unchanged.
pub const LLAMA_MODULES: ModuleNames = ModuleNames {
    token_embedding: "model.embed_tokens.weight",
    position_embedding: None,
    blocks: "model.layers",
    attention_norm: "input_layernorm",
    attention: "self_attn",
    query: "q_proj",
    key: "k_proj",
    value: "v_proj",
    attention_output: "o_proj",
    query_norm: "q_norm",
    key_norm: "k_norm",
    feed_forward_norm: "post_attention_layernorm",
    feed_forward: "mlp",
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
    final_norm: "model.norm",
    output_head: OUTPUT_HEAD,
};

/// A 4-bit weight `W` is stored as `W_q4` (the packed blocks) and `W_scales`.
pub const INT4_BLOCKS_SUFFIX: &str = "_q4";
pub const INT4_SCALES_SUFFIX: &str = "_scales";

/// ONNX Runtime's contrib domain, where `MatMulNBits` lives.
pub const MICROSOFT_DOMAIN: &str = "com.microsoft";

/// Keys of the model's `metadata_props`: what gptc records, and what readers trust.
pub mod meta {
    pub const VERSION: &str = "gptc.version";
    /// The whole config as JSON, with the book's keys.
    pub const CONFIG: &str = "gptc.config";
    /// The seed of the random init; absent for trained weights.
    pub const INIT_SEED: &str = "gptc.init_seed";
    pub const KV_CACHE: &str = "gptc.kv_cache";
    pub const LAST_TOKEN_LOGITS: &str = "gptc.last_token_logits";
    pub const TIE_WEIGHTS: &str = "gptc.tie_weights";
    /// The ONNX name of the weights' element type: `float` or `float16`.
    pub const DTYPE: &str = "gptc.dtype";
    /// `none`, or `int4`: every projection and the output head as `MatMulNBits`.
    pub const QUANTIZATION: &str = "gptc.quantization";
    /// How: `round-to-nearest, symmetric (zero point 8), blocks of 32 along the input
    /// dimension, float16-exact float32 scales`.
    pub const QUANTIZATION_SCHEME: &str = "gptc.quantization.scheme";
    /// `MatMulNBits`' `accuracy_level`: 0 computes in float32, 4 lets ONNX Runtime quantize
    /// activations to int8.
    pub const QUANTIZATION_ACCURACY_LEVEL: &str = "gptc.quantization.accuracy_level";
    /// With external data: the exact size in bytes of the data file, and the XXH3-64 digest of
    /// all its bytes (16 lowercase hex digits), so a data file from another export is refused.
    pub const EXTERNAL_DATA_BYTES: &str = "gptc.external_data.bytes";
    pub const EXTERNAL_DATA_XXH3: &str = "gptc.external_data.xxh3";
}

/// What a graph input is for, read from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputRole {
    InputIds,
    AttentionMask,
    PositionIds,
    Past(usize, KvPart),
}

impl InputRole {
    /// The role of an input name, or `None` for a name outside gptc's layout.
    pub fn of(name: &str) -> Option<InputRole> {
        match name {
            INPUT_IDS => Some(InputRole::InputIds),
            ATTENTION_MASK => Some(InputRole::AttentionMask),
            POSITION_IDS => Some(InputRole::PositionIds),
            _ => {
                let (layer, part) = name.strip_prefix(PAST_PREFIX)?.split_once('.')?;
                let part = KvPart::BOTH.into_iter().find(|p| p.suffix() == part)?;
                // `parse` alone would take "+1" or "01": only the canonical spelling round-trips.
                let layer: usize = layer.parse().ok().filter(|l: &usize| l.to_string() == layer)?;
                Some(InputRole::Past(layer, part))
            }
        }
    }
}

impl fmt::Display for InputRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InputRole::InputIds => f.write_str(INPUT_IDS),
            InputRole::AttentionMask => f.write_str(ATTENTION_MASK),
            InputRole::PositionIds => f.write_str(POSITION_IDS),
            InputRole::Past(layer, part) => f.write_str(&past(layer, part)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_names_round_trip_through_their_roles() {
        let roles = [
            InputRole::InputIds,
            InputRole::AttentionMask,
            InputRole::PositionIds,
            InputRole::Past(0, KvPart::Key),
            InputRole::Past(11, KvPart::Value),
        ];
        for role in roles {
            assert_eq!(InputRole::of(&role.to_string()), Some(role));
        }
        assert_eq!(past(3, KvPart::Key), "past_key_values.3.key");
        assert_eq!(present(3, KvPart::Value), "present.3.value");
    }

    #[test]
    fn names_outside_the_layout_have_no_role() {
        for name in [
            "input",
            "past_key_values.x.key",
            "past_key_values.1.keys",
            "past_key_values.01.key",
            "past_key_values.+1.key",
            "present.0.key",
        ] {
            assert_eq!(InputRole::of(name), None, "{name}");
        }
    }
}
