//! An HF `tokenizers::Tokenizer` for a GGUF byte-level BPE vocabulary (`tokenizer.ggml.model
//! == "gpt2"`), built as the `tokenizer.json` HF would write for it.

use lomo_models::GgufTokenizerSpec;
use serde_json::json;

/// llama.cpp's token type for control tokens (`<|im_start|>`, …).
const CONTROL: i32 = 3;

pub fn byte_level_bpe(meta: &GgufTokenizerSpec) -> tokenizers::Tokenizer {
    assert_eq!(meta.model.gguf_name(), "gpt2", "only byte-level BPE vocabularies are handled here");
    let vocab: serde_json::Map<String, serde_json::Value> =
        meta.tokens.iter().enumerate().map(|(id, t)| (t.clone(), json!(id))).collect();
    let added: Vec<_> = meta
        .tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| meta.token_types.get(*id) == Some(&CONTROL))
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": meta.merges}
    });
    json.to_string().parse().expect("a valid tokenizer.json")
}
