//! Tokenizers built from GGUF tokenizer fields must tokenize like the HF tokenizer they came
//! from.

use lomo_data::tokenizer::token_type;
use lomo_data::{ChatTemplate, GgufTokenizerModel, GgufTokenizerSpec, TextTokenizer};
use serde_json::Value;

const SAMPLES: [&str; 5] = [
    "Once upon a time there was a little boy named Ben.",
    "The shopkeeper smiled and said, “Of course you can.”",
    "  two  spaces, tabs\tand\nnewlines 12+345=357 ünïcödé 日本",
    "<s> inside text </s>",
    "",
];

/// The GGUF fields llama.cpp's converter writes for the stories260K tokenizer.json.
fn stories_spec(tokenizer_json: &Value) -> GgufTokenizerSpec {
    let model = &tokenizer_json["model"];
    let vocab = model["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (token, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = token.clone();
    }
    let merges: Vec<String> = model["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()),
            other => panic!("merge {other}"),
        })
        .collect();
    let token_types = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| match id {
            0 => token_type::UNKNOWN,
            1 | 2 => token_type::CONTROL,
            _ if t.starts_with("<0x") && t.ends_with('>') && t.len() == 6 => token_type::BYTE,
            _ => token_type::NORMAL,
        })
        .collect();
    GgufTokenizerSpec {
        token_types,
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        ..GgufTokenizerSpec::new(GgufTokenizerModel::Llama, tokens, merges)
    }
}

#[test]
fn a_llama_gguf_tokenizer_matches_tokenizer_json() {
    let path = shared!("models/stories260K/tokenizer.json");
    let reference = TextTokenizer::from_file(&path).unwrap();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let spec = stories_spec(&json);
    let built = TextTokenizer::from_gguf(&spec).unwrap();
    // The HF tokenizer.json exported to GGUF fields (`lomo export`) gives llama.cpp's fields;
    // scores are -id (the vocabulary's order, which SentencePiece BPE ranks by).
    let exported = reference.gguf_spec().unwrap();
    let scores: Vec<f32> = (0..spec.tokens.len()).map(|i| -(i as f32)).collect();
    assert_eq!(exported, GgufTokenizerSpec { scores, add_bos: Some(true), ..spec.clone() });
    let story = std::fs::read_to_string(shared!("data/tinystories_sample.txt")).unwrap();
    for text in SAMPLES.iter().copied().chain([story.as_str()]) {
        for special in [true, false] {
            assert_eq!(built.encode(text, special).unwrap(), reference.encode(text, special).unwrap(), "{text:?}");
        }
        let ids = reference.encode(text, true).unwrap();
        assert_eq!(built.decode(&ids, true).unwrap(), reference.decode(&ids, true).unwrap());
    }
    assert_eq!((built.bos_id(), built.eos_id(), built.vocab_size()), (Some(1), Some(2), 512));

    // Without add_bos, no BOS.
    let no_bos = TextTokenizer::from_gguf(&GgufTokenizerSpec { add_bos: Some(false), ..spec.clone() }).unwrap();
    assert_eq!(no_bos.encode("Ben", true).unwrap(), reference.encode("Ben", false).unwrap());

    // Bad specs are errors, not panics.
    let short_types = GgufTokenizerSpec { token_types: vec![1; 3], ..spec.clone() };
    assert!(TextTokenizer::from_gguf(&short_types).is_err());
    let bad_bos = GgufTokenizerSpec { bos_id: Some(10_000), ..spec.clone() };
    assert!(TextTokenizer::from_gguf(&bad_bos).is_err());
    let no_scores = GgufTokenizerSpec { merges: vec![], ..spec };
    assert!(TextTokenizer::from_gguf(&no_scores).unwrap_err().to_string().contains("scores"));
}

#[test]
fn llama_merges_can_be_derived_from_scores() {
    let path = shared!("models/stories260K/tokenizer.json");
    let reference = TextTokenizer::from_file(&path).unwrap();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut spec = stories_spec(&json);
    // SentencePiece scores rank pieces: llama2.c's stories tokenizer gives merged piece k (made
    // by merge k) the score -k, and single characters lower scores still.
    let mut scores = vec![-1e9f32; spec.tokens.len()];
    for (rank, merge) in spec.merges.iter().enumerate() {
        let piece = merge.replacen(' ', "", 1);
        let id = spec.tokens.iter().position(|t| *t == piece).unwrap();
        scores[id] = scores[id].max(-(rank as f32));
    }
    spec.scores = scores;
    spec.merges.clear();
    let built = TextTokenizer::from_gguf(&spec).unwrap();
    for text in SAMPLES {
        assert_eq!(built.encode(text, true).unwrap(), reference.encode(text, true).unwrap(), "{text:?}");
    }
}

/// GPT-2's byte-to-character table (`bytes_to_unicode` in HF and llama.cpp).
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return char::from(b);
    }
    let shift = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + shift).unwrap()
}

#[test]
fn a_gpt2_gguf_tokenizer_does_byte_level_bpe_with_chatml_tokens() {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let merges = vec!["h e".to_owned(), "l l".to_owned(), "he ll".to_owned(), "Ġ w".to_owned()];
    tokens.extend(["he", "ll", "hell", "Ġw"].map(str::to_owned));
    let im_start = tokens.len() as u32;
    tokens.extend(["<|im_start|>", "<|im_end|>"].map(str::to_owned));
    let mut token_types = vec![token_type::NORMAL; tokens.len()];
    token_types[im_start as usize] = token_type::CONTROL;
    token_types[im_start as usize + 1] = token_type::CONTROL;
    let spec = GgufTokenizerSpec {
        pre: Some("smollm".into()),
        token_types,
        bos_id: Some(im_start),
        eos_id: Some(im_start + 1),
        chat_template: Some("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}".into()),
        ..GgufTokenizerSpec::new(GgufTokenizerModel::Gpt2, tokens.clone(), merges)
    };
    let tokenizer = TextTokenizer::from_gguf(&spec).unwrap();
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    let ids = tokenizer.encode("<|im_start|>hello world12<|im_end|>", true).unwrap();
    // gpt2 adds no BOS by default; control tokens are matched whole; digits split one by one.
    assert_eq!(
        ids,
        [im_start, id("hell"), id("o"), id("Ġw"), id("o"), id("r"), id("l"), id("d"), id("1"), id("2"), im_start + 1]
    );
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), "<|im_start|>hello world12<|im_end|>");
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "hello world12");
    let bytes = tokenizer.encode("é", false).unwrap();
    assert_eq!(bytes, [id(&byte_char(0xC3).to_string()), id(&byte_char(0xA9).to_string())]);
    assert!(matches!(tokenizer.chat_template().unwrap(), ChatTemplate::Jinja(_)));
    // Exported back to GGUF fields (`lomo export`): the same fields.
    let back = tokenizer.gguf_spec().unwrap();
    assert_eq!(back, GgufTokenizerSpec { add_bos: Some(false), ..spec.clone() });
    let unsupported = GgufTokenizerSpec { pre: Some("qwen2".into()), ..spec };
    assert!(TextTokenizer::from_gguf(&unsupported).unwrap_err().to_string().contains("qwen2"));
}
