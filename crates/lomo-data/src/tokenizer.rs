//! Text to token ids, with the HF `tokenizers` library.
//!
//! A [`TextTokenizer`] comes from a `tokenizer.json` (with the `tokenizer_config.json` beside it,
//! which names the BOS/EOS/PAD tokens and may carry a chat template) or from the tokenizer fields
//! of a GGUF file ([`GgufTokenizerSpec`], lomo-io's description of them). The GGUF path builds the same `tokenizer.json` that HF's
//! converters would write and hands it to `tokenizers`, so both paths share one implementation of
//! BPE.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::{json, Value};

pub use lomo_io::gguf_tokenizer::{token_type, GgufTokenizerModel, GgufTokenizerSpec};

use crate::error::{DataError, Result};

/// A token's byte range `(start, end)` in the text it was encoded from.
pub type ByteSpan = (usize, usize);

/// A tokenizer plus the special-token ids the data pipeline needs.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    chat_template: Option<String>,
}

/// Token names tried, in order, when no config names the EOS token: the conventions of
/// SentencePiece/LLaMA, GPT-2, ChatML and LLaMA-3.
const EOS_CANDIDATES: [&str; 4] = ["</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>"];
const BOS_CANDIDATES: [&str; 3] = ["<s>", "<|begin_of_text|>", "<|im_start|>"];

impl TextTokenizer {
    /// Loads a `tokenizer.json`. When a `tokenizer_config.json` lies beside it, its `bos_token`,
    /// `eos_token`, `pad_token` and `chat_template` are used; otherwise BOS/EOS are looked up by
    /// their usual names (`<s>`/`</s>`, `<|endoftext|>`, ...) among the special tokens, and there
    /// is no pad token.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let inner: tokenizers::Tokenizer =
            text.parse().map_err(|e| DataError::tokenizer(format!("loading {}", path.display()), e))?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let config = if config_path.exists() {
            let text = std::fs::read_to_string(&config_path).map_err(|e| DataError::io(&config_path, e))?;
            let value: Value = serde_json::from_str(&text).map_err(|source| DataError::Json {
                path: config_path.clone(),
                line: 1,
                source,
            })?;
            Some(value)
        } else {
            None
        };
        let token_id = |key: &str| -> Result<Option<u32>> {
            let Some(entry) = config.as_ref().and_then(|c| c.get(key)) else { return Ok(None) };
            // HF writes either "</s>" or {"content": "</s>", ...}.
            let name = match entry {
                Value::String(s) => s.as_str(),
                Value::Object(o) => o.get("content").and_then(Value::as_str).unwrap_or(""),
                _ => return Ok(None),
            };
            inner.token_to_id(name).map(Some).ok_or_else(|| {
                DataError::TokenizerSpec(format!(
                    "{}: {key} {name:?} is not in the vocabulary of {}",
                    config_path.display(),
                    path.display()
                ))
            })
        };
        let bos_id = match token_id("bos_token")? {
            Some(id) => Some(id),
            None => find_special(&inner, &BOS_CANDIDATES),
        };
        let eos_id = match token_id("eos_token")? {
            Some(id) => Some(id),
            None => find_special(&inner, &EOS_CANDIDATES),
        };
        let pad_id = token_id("pad_token")?;
        let chat_template =
            config.as_ref().and_then(|c| c.get("chat_template")).and_then(Value::as_str).map(str::to_owned);
        Ok(Self { inner, bos_id, eos_id, pad_id, chat_template })
    }

    /// Builds the tokenizer a GGUF file describes (see [`GgufTokenizerSpec`]).
    pub fn from_gguf(spec: &GgufTokenizerSpec) -> Result<Self> {
        let json = tokenizer_json(spec)?;
        let inner: tokenizers::Tokenizer = serde_json::from_value(json)
            .map_err(|e| DataError::tokenizer("building the tokenizer from GGUF metadata", Box::new(e)))?;
        Ok(Self {
            inner,
            bos_id: spec.bos_id,
            eos_id: spec.eos_id,
            pad_id: spec.pad_id,
            chat_template: spec.chat_template.clone(),
        })
    }

    /// Wraps an already built `tokenizers` tokenizer with explicit special ids.
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        pad_id: Option<u32>,
    ) -> Self {
        Self { inner, bos_id, eos_id, pad_id, chat_template: None }
    }

    /// Token ids of `text`. With `add_special_tokens` the tokenizer's post-processor runs (for
    /// LLaMA tokenizers: a BOS in front), exactly as HF's `tokenizer(text).input_ids` does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text, add_special_tokens)?.0)
    }

    /// Token ids of `text` and each token's byte range in `text` (special tokens the
    /// post-processor adds get an empty range at 0). The ranges tell which tokens belong to the
    /// prompt and which to the answer when both are encoded as one string.
    pub fn encode_with_offsets(&self, text: &str, add_special_tokens: bool) -> Result<(Vec<u32>, Vec<ByteSpan>)> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| DataError::tokenizer(format!("encoding {:?}", preview(text)), e))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| DataError::tokenizer(format!("decoding {} ids", ids.len()), e))
    }

    /// The beginning-of-sequence id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence id, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The end-of-sequence id, or an error saying that the step `why` needs one.
    pub fn require_eos(&self, why: &str) -> Result<u32> {
        self.eos_id
            .ok_or_else(|| DataError::TokenizerSpec(format!("{why} needs an EOS token and this tokenizer has none")))
    }

    /// The padding id the tokenizer names, if any (most causal LMs name none).
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The Jinja chat template from `tokenizer_config.json` or the GGUF metadata, if any.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template, compiled, with its BOS and EOS tokens; ChatML when it has none.
    pub fn chat_template(&self) -> std::result::Result<crate::ChatTemplate, crate::TemplateError> {
        let text = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i)).unwrap_or_default();
        crate::ChatTemplate::for_model(self.chat_template_source(), &text(self.bos_id), &text(self.eos_id))
    }

    /// The GGUF metadata of this tokenizer, as llama.cpp's converter writes it, for
    /// exporting the model to GGUF: BPE tokenizers only, with a pre-tokenizer llama.cpp has a
    /// name for (GPT-2's byte level → `gpt2`, SmolLM's digits + byte level → `smollm`, or the
    /// SentencePiece layout with byte fallback → `llama`, scores `-id` in vocabulary order).
    pub fn gguf_spec(&self) -> Result<GgufTokenizerSpec> {
        let unsupported = |what: String| DataError::TokenizerSpec(format!("GGUF export: {what}"));
        let text = self.inner.to_string(false).map_err(|e| DataError::tokenizer("serialising the tokenizer", e))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| DataError::tokenizer("serialising the tokenizer", Box::new(e)))?;
        let model = &json["model"];
        if model["type"] != "BPE" {
            return Err(unsupported(format!("tokenizer model {} (only BPE is exported)", model["type"])));
        }
        let pre = &json["pre_tokenizer"];
        let byte_level = |v: &Value| v["type"] == "ByteLevel";
        let spm_normalizer = json["normalizer"].to_string().contains('\u{2581}') || pre["type"] == "Metaspace";
        let (kind, pre_name) = if byte_level(pre) {
            (GgufTokenizerModel::Gpt2, Some("gpt2"))
        } else if pre["type"] == "Sequence"
            && pre["pretokenizers"].as_array().is_some_and(|p| {
                p.len() == 2 && p[0]["type"] == "Digits" && p[0]["individual_digits"] == true && byte_level(&p[1])
            })
        {
            (GgufTokenizerModel::Gpt2, Some("smollm"))
        } else if model["byte_fallback"] == true && spm_normalizer {
            (GgufTokenizerModel::Llama, None)
        } else {
            return Err(unsupported(format!(
                "pre-tokenizer {pre} has no llama.cpp name lomo knows (exported: GPT-2 byte level, SmolLM's digits + byte level, SentencePiece with byte fallback)"
            )));
        };
        let size = self.inner.get_vocab_size(true);
        let mut tokens = vec![String::new(); size];
        for (token, id) in self.inner.get_vocab(true) {
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = token;
            }
        }
        let added = self.inner.get_added_tokens_decoder();
        let mut token_types = Vec::with_capacity(size);
        for (id, token) in tokens.iter_mut().enumerate() {
            let ty = match added.get(&(id as u32)) {
                Some(a) if a.special => token_type::CONTROL,
                Some(_) => token_type::USER_DEFINED,
                None if token.is_empty() => {
                    // A gap in the ids: llama.cpp's converter fills it with a padding entry.
                    *token = format!("[PAD{id}]");
                    token_type::UNUSED
                }
                None if kind == GgufTokenizerModel::Llama
                    && token.len() == 6
                    && token.starts_with("<0x")
                    && token.ends_with('>') =>
                {
                    token_type::BYTE
                }
                None => token_type::NORMAL,
            };
            token_types.push(ty);
        }
        let unk_id = model["unk_token"].as_str().and_then(|t| self.inner.token_to_id(t));
        if let Some(unk) = unk_id {
            token_types[unk as usize] = token_type::UNKNOWN;
        }
        let merges = model["merges"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| match m {
                        Value::String(s) => Some(s.clone()),
                        Value::Array(pair) => Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut spec = GgufTokenizerSpec::new(kind, tokens, merges);
        spec.pre = pre_name.map(str::to_owned);
        spec.token_types = token_types;
        if kind == GgufTokenizerModel::Llama {
            spec.scores = (0..size).map(|id| -(id as f32)).collect();
        }
        spec.bos_id = self.bos_id;
        spec.eos_id = self.eos_id;
        spec.unk_id = unk_id;
        spec.pad_id = self.pad_id;
        // Whether encoding adds BOS, read off the tokenizer itself.
        let first =
            self.inner.encode("a", true).map_err(|e| DataError::tokenizer("encoding", e))?.get_ids().first().copied();
        spec.add_bos = Some(self.bos_id.is_some() && first == self.bos_id);
        spec.chat_template = self.chat_template.clone();
        Ok(spec)
    }

    /// The underlying HF tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn find_special(inner: &tokenizers::Tokenizer, names: &[&str]) -> Option<u32> {
    names.iter().find_map(|n| inner.token_to_id(n))
}

fn preview(text: &str) -> String {
    let mut p: String = text.chars().take(40).collect();
    if p.len() < text.len() {
        p.push_str("...");
    }
    p
}

/// Checks that a special-token id lies inside the vocabulary.
fn check_id(spec: &GgufTokenizerSpec, what: &str, id: Option<u32>) -> Result<()> {
    match id {
        Some(i) if i as usize >= spec.tokens.len() => Err(DataError::TokenizerSpec(format!(
            "GGUF {what} {i} is outside the vocabulary of {} tokens",
            spec.tokens.len()
        ))),
        _ => Ok(()),
    }
}

/// The HF `tokenizer.json` a GGUF tokenizer stands for.
fn tokenizer_json(spec: &GgufTokenizerSpec) -> Result<Value> {
    let n = spec.tokens.len();
    if n == 0 {
        return Err(DataError::TokenizerSpec("GGUF tokenizer.ggml.tokens is empty".into()));
    }
    if !spec.token_types.is_empty() && spec.token_types.len() != n {
        return Err(DataError::TokenizerSpec(format!(
            "GGUF tokenizer.ggml.token_type has {} entries for {n} tokens",
            spec.token_types.len()
        )));
    }
    check_id(spec, "bos_token_id", spec.bos_id)?;
    check_id(spec, "eos_token_id", spec.eos_id)?;
    check_id(spec, "unknown_token_id", spec.unk_id)?;
    check_id(spec, "padding_token_id", spec.pad_id)?;

    let (vocab, added_tokens) = vocab_and_added(spec);
    let merges = merges(spec)?;
    let unk_token = spec
        .unk_id
        .or_else(|| (0..n).find(|&i| spec.token_type(i) == token_type::UNKNOWN).map(|i| i as u32))
        .map(|i| spec.tokens[i as usize].clone());
    let (normalizer, pre_tokenizer, post_processor, decoder, byte_fallback) = layout(spec, bos_template(spec)?)?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk_token,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": spec.model == GgufTokenizerModel::Llama,
            "byte_fallback": byte_fallback, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// The vocabulary (token → id) and the added tokens (control, user-defined and unknown ones).
fn vocab_and_added(spec: &GgufTokenizerSpec) -> (serde_json::Map<String, Value>, Vec<Value>) {
    let mut vocab = serde_json::Map::with_capacity(spec.tokens.len());
    let mut added_tokens = Vec::new();
    for (id, token) in spec.tokens.iter().enumerate() {
        // Duplicate token strings happen in GGUF files (unused slots); the first id wins, as
        // in llama.cpp's token-to-id map.
        vocab.entry(token.clone()).or_insert(json!(id));
        let kind = spec.token_type(id);
        let is_unk = spec.unk_id == Some(id as u32) || kind == token_type::UNKNOWN;
        if kind == token_type::CONTROL || kind == token_type::USER_DEFINED || is_unk {
            added_tokens.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false,
                "special": kind != token_type::USER_DEFINED,
            }));
        }
    }
    (vocab, added_tokens)
}

/// The merges as `[left, right]` pairs: the file's, or derived from the scores.
fn merges(spec: &GgufTokenizerSpec) -> Result<Vec<Value>> {
    if spec.merges.is_empty() && spec.model == GgufTokenizerModel::Llama {
        return merges_from_scores(spec);
    }
    let mut out = Vec::with_capacity(spec.merges.len());
    for (rank, merge) in spec.merges.iter().enumerate() {
        let Some((left, right)) = merge.split_once(' ') else {
            return Err(DataError::TokenizerSpec(format!("GGUF merge {rank} {merge:?} is not \"left right\"")));
        };
        out.push(json!([left, right]));
    }
    Ok(out)
}

/// The post-processor that puts BOS in front, when the tokenizer adds one.
fn bos_template(spec: &GgufTokenizerSpec) -> Result<Option<Value>> {
    let add_bos = spec.add_bos.unwrap_or(spec.model == GgufTokenizerModel::Llama);
    match (add_bos, spec.bos_id) {
        (true, Some(bos)) => {
            let name = &spec.tokens[bos as usize];
            Ok(Some(json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": name, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": name, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": name, "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 0}}],
                "special_tokens": {name.as_str(): {"id": name, "ids": [bos], "tokens": [name]}},
            })))
        }
        (true, None) => {
            Err(DataError::TokenizerSpec("GGUF asks to add a BOS token but has no tokenizer.ggml.bos_token_id".into()))
        }
        (false, _) => Ok(None),
    }
}

/// The normalizer, pre-tokenizer, post-processor, decoder and byte fallback of the model's layout.
fn layout(spec: &GgufTokenizerSpec, bos_template: Option<Value>) -> Result<(Value, Value, Value, Value, bool)> {
    Ok(match spec.model {
        // The layout of HF's LlamaTokenizerFast (legacy): spaces become "▁", one "▁" in
        // front, no pre-tokenizer, unknown bytes as <0xAB> tokens.
        GgufTokenizerModel::Llama => (
            json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u{2581}"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]}),
            Value::Null,
            bos_template.unwrap_or(Value::Null),
            json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
            true,
        ),
        GgufTokenizerModel::Gpt2 => {
            let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                                    "trim_offsets": false, "use_regex": true});
            let pre = match spec.pre.as_deref() {
                None | Some("default") | Some("gpt2") | Some("gpt-2") => byte_level.clone(),
                // llama.cpp's "smollm" (and StarCoder's) split every digit on its own before
                // the GPT-2 regex, as HF's tokenizer.json for SmolLM does.
                Some("smollm") | Some("starcoder") | Some("refact") => json!({
                    "type": "Sequence",
                    "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]}),
                Some(other) => {
                    return Err(DataError::TokenizerSpec(format!(
                        "GGUF tokenizer.ggml.pre {other:?} is not supported \
                         (supported: default, gpt2, smollm, starcoder, refact)"
                    )))
                }
            };
            let byte_post = json!({"type": "ByteLevel", "add_prefix_space": false,
                                   "trim_offsets": false, "use_regex": true});
            let post = match bos_template {
                Some(t) => json!({"type": "Sequence", "processors": [byte_post, t]}),
                None => byte_post,
            };
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                                 "use_regex": true});
            (Value::Null, pre, post, decoder, false)
        }
        // `GgufTokenizerModel` is non-exhaustive: a model added to lomo-io has no layout here yet.
        other => {
            return Err(DataError::TokenizerSpec(format!(
                "tokenizer.ggml.model {:?} has no tokenizer.json layout",
                other.gguf_name()
            )))
        }
    })
}

/// SentencePiece BPE has no merge list: a piece is built from the two pieces whose merge has
/// the best score. Every split of a vocabulary piece into two vocabulary pieces is a merge,
/// ranked by the merged piece's score (higher first), as HF's `SentencePieceExtractor` does.
fn merges_from_scores(spec: &GgufTokenizerSpec) -> Result<Vec<Value>> {
    if spec.scores.len() != spec.tokens.len() {
        return Err(DataError::TokenizerSpec(format!(
            "GGUF llama tokenizer has no merges and {} scores for {} tokens; \
             merges cannot be derived",
            spec.scores.len(),
            spec.tokens.len()
        )));
    }
    let ids: HashMap<&str, usize> = spec.tokens.iter().enumerate().rev().map(|(i, t)| (t.as_str(), i)).collect();
    let ordinary: HashSet<usize> = (0..spec.tokens.len())
        .filter(|&i| matches!(spec.token_type(i), token_type::NORMAL | token_type::USER_DEFINED))
        .collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, piece) in spec.tokens.iter().enumerate() {
        if !ordinary.contains(&id) {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                if ordinary.contains(&l) && ordinary.contains(&r) {
                    merges.push((spec.scores[id], id, l, r));
                }
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    Ok(merges.into_iter().map(|(_, _, l, r)| json!([spec.tokens[l], spec.tokens[r]])).collect())
}
