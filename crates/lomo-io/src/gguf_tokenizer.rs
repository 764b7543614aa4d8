//! The tokenizer a GGUF file carries (its `tokenizer.*` metadata keys), as plain values: the
//! models crate reads it off a GGUF file and writes it into one, the data crate builds a
//! tokenizer from it and describes its own tokenizers with it.

use std::collections::BTreeMap;

use crate::gguf::{GgufError, GgufValue, Metadata};

/// Which tokenizer a GGUF file describes (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GgufTokenizerModel {
    /// `"gpt2"`: byte-level BPE (GPT-2, SmolLM, Qwen, LLaMA-3 families).
    Gpt2,
    /// `"llama"`: SentencePiece BPE with byte fallback (LLaMA-1/2, Mistral, TinyLlama).
    Llama,
}

impl GgufTokenizerModel {
    /// The `tokenizer.ggml.model` string.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::Llama => "llama",
        }
    }

    /// Parses the `tokenizer.ggml.model` string.
    pub fn from_gguf_name(name: &str) -> Result<Self, GgufError> {
        match name {
            "gpt2" => Ok(Self::Gpt2),
            "llama" => Ok(Self::Llama),
            other => Err(GgufError::Key {
                key: "tokenizer.ggml.model".into(),
                reason: format!("{other:?} is not supported (supported: \"gpt2\", \"llama\")"),
            }),
        }
    }
}

/// GGUF's token types (`tokenizer.ggml.token_type`), as llama.cpp numbers them.
pub mod token_type {
    /// An ordinary vocabulary entry.
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// A control token (`<s>`, `<|im_start|>`): matched whole in text, skipped when decoding.
    pub const CONTROL: i32 = 3;
    /// A user-defined token: matched whole in text, kept when decoding.
    pub const USER_DEFINED: i32 = 4;
    /// An unused slot.
    pub const UNUSED: i32 = 5;
    /// A byte-fallback token `<0xAB>`.
    pub const BYTE: i32 = 6;
}

/// The tokenizer fields of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTokenizerSpec {
    /// `tokenizer.ggml.model`.
    pub model: GgufTokenizerModel,
    /// `tokenizer.ggml.pre` (the pre-tokenizer flavour of a `gpt2` tokenizer), if present.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, in id order.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges` (`"left right"` per entry, by rank). `llama` files usually have
    /// none: then merges are derived from `scores`, as HF's SentencePiece converter does.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (see [`token_type`]); empty means all normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores`, one per token; needed for `llama` files without merges.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; absent means llama.cpp's default (true for `llama`, false
    /// for `gpt2`).
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`; absent means false.
    pub add_eos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// The special-token id keys, in the order of [`GgufTokenizerSpec::ids`].
const ID_KEYS: [&str; 4] = ["bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"];

impl GgufTokenizerSpec {
    /// A spec with the required fields and everything else absent.
    pub fn new(model: GgufTokenizerModel, tokens: Vec<String>, merges: Vec<String>) -> Self {
        Self {
            model,
            pre: None,
            tokens,
            merges,
            token_types: Vec::new(),
            scores: Vec::new(),
            bos_id: None,
            eos_id: None,
            unk_id: None,
            pad_id: None,
            add_bos: None,
            add_eos: None,
            chat_template: None,
        }
    }

    /// The type of token `id` ([`token_type::NORMAL`] when the file lists no types).
    pub fn token_type(&self, id: usize) -> i32 {
        self.token_types.get(id).copied().unwrap_or(token_type::NORMAL)
    }

    /// BOS, EOS, unknown and padding ids, in the order of `ID_KEYS`.
    fn ids(&self) -> [Option<u32>; 4] {
        [self.bos_id, self.eos_id, self.unk_id, self.pad_id]
    }

    /// Reads the `tokenizer.*` keys of a GGUF file's metadata.
    pub fn from_metadata(metadata: &BTreeMap<String, GgufValue>) -> Result<Self, GgufError> {
        let key = |k: &str| format!("tokenizer.ggml.{k}");
        let model = metadata
            .string(&key("model"))?
            .ok_or_else(|| GgufError::Key { key: key("model"), reason: "missing".into() })?;
        let token_types = match metadata.get(&key("token_type")) {
            None => Vec::new(),
            Some(GgufValue::Array(items)) => items
                .iter()
                .map(|v| match v {
                    GgufValue::I32(t) => Ok(*t),
                    other => other
                        .as_u64()
                        .map(|t| t as i32)
                        .ok_or_else(|| GgufError::Key { key: key("token_type"), reason: "expected integers".into() }),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(GgufError::Key { key: key("token_type"), reason: "expected an array".into() }),
        };
        let [bos_id, eos_id, unk_id, pad_id] = ID_KEYS.map(|k| metadata.usize(&key(k)).map(|v| v.map(|v| v as u32)));
        Ok(Self {
            model: GgufTokenizerModel::from_gguf_name(&model)?,
            pre: metadata.string(&key("pre"))?,
            tokens: metadata.strings(&key("tokens"))?,
            token_types,
            scores: metadata.numbers(&key("scores"))?.into_iter().map(|s| s as f32).collect(),
            merges: metadata.strings(&key("merges"))?,
            bos_id: bos_id?,
            eos_id: eos_id?,
            unk_id: unk_id?,
            pad_id: pad_id?,
            add_bos: metadata.bool(&key("add_bos_token")),
            add_eos: metadata.bool(&key("add_eos_token")),
            chat_template: metadata.string("tokenizer.chat_template")?,
        })
    }

    /// The `tokenizer.*` key/values llama.cpp's converter writes, in its order; absent and empty
    /// fields are left out.
    pub fn to_metadata(&self) -> Vec<(String, GgufValue)> {
        use GgufValue as V;
        let key = |k: &str| format!("tokenizer.ggml.{k}");
        let mut kv = vec![(key("model"), V::String(self.model.gguf_name().into()))];
        if let Some(pre) = &self.pre {
            kv.push((key("pre"), V::String(pre.clone())));
        }
        let strings = |v: &[String]| V::Array(v.iter().cloned().map(V::String).collect());
        kv.push((key("tokens"), strings(&self.tokens)));
        if !self.token_types.is_empty() {
            kv.push((key("token_type"), V::Array(self.token_types.iter().map(|&x| V::I32(x)).collect())));
        }
        if !self.scores.is_empty() {
            kv.push((key("scores"), V::Array(self.scores.iter().map(|&x| V::F32(x)).collect())));
        }
        if !self.merges.is_empty() {
            kv.push((key("merges"), strings(&self.merges)));
        }
        for (k, id) in ID_KEYS.iter().zip(self.ids()) {
            if let Some(id) = id {
                kv.push((key(k), V::U32(id)));
            }
        }
        for (k, on) in [("add_bos_token", self.add_bos), ("add_eos_token", self.add_eos)] {
            if let Some(on) = on {
                kv.push((key(k), V::Bool(on)));
            }
        }
        if let Some(template) = &self.chat_template {
            kv.push(("tokenizer.chat_template".into(), V::String(template.clone())));
        }
        kv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        let spec = GgufTokenizerSpec {
            pre: Some("smollm".into()),
            token_types: vec![token_type::CONTROL, token_type::NORMAL],
            bos_id: Some(0),
            eos_id: Some(0),
            add_bos: Some(false),
            add_eos: Some(false),
            chat_template: Some("{{ x }}".into()),
            ..GgufTokenizerSpec::new(GgufTokenizerModel::Gpt2, vec!["<s>".into(), "a".into()], vec!["a a".into()])
        };
        let metadata: BTreeMap<String, GgufValue> = spec.to_metadata().into_iter().collect();
        assert_eq!(GgufTokenizerSpec::from_metadata(&metadata).unwrap(), spec);
    }

    #[test]
    fn an_unknown_model_names_its_key() {
        let metadata = BTreeMap::from([("tokenizer.ggml.model".to_string(), GgufValue::String("bert".into()))]);
        let err = GgufTokenizerSpec::from_metadata(&metadata).unwrap_err();
        assert!(err.to_string().contains("tokenizer.ggml.model") && err.to_string().contains("bert"), "{err}");
    }
}
