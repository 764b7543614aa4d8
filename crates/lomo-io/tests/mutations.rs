//! Mutation tests of the GGUF container codec: headers written by [`GgufHeader::write`] with
//! every value type, nested arrays, an alignment and a tokenizer's keys, then truncated, flipped
//! and spliced (`lomo_testutil::mutate`) and parsed back, the tokenizer keys and the typed reads
//! included. Every mutation parses or gives a one-line error; none panics and none allocates
//! for a length the file cannot hold. The count is in the README's reliability section.

use std::path::Path;

use lomo_io::gguf::{GgufHeader, GgufTensorInfo, GgufValue, Metadata};
use lomo_io::gguf_tokenizer::{GgufTokenizerModel, GgufTokenizerSpec};
use lomo_testutil::mutate::{self, Seed};

fn seed_header(alignment: u32, tokenizer: bool) -> Vec<u8> {
    use GgufValue as V;
    let mut metadata = vec![
        ("general.architecture".to_string(), V::String("llama".into())),
        ("general.alignment".to_string(), V::U32(alignment)),
        ("llama.block_count".to_string(), V::U64(2)),
        ("llama.embedding_length".to_string(), V::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon".to_string(), V::F32(1e-5)),
        ("llama.rope.freq_base".to_string(), V::F64(10000.0)),
        ("a.small".to_string(), V::Array(vec![V::U8(1), V::U8(2)])),
        ("a.signed".to_string(), V::Array(vec![V::I8(-1), V::I16(-2), V::I32(-3), V::I64(-4)])),
        ("a.per_layer".to_string(), V::Array(vec![V::U16(7), V::U16(7)])),
        ("a.nested".to_string(), V::Array(vec![V::Array(vec![V::Bool(true), V::Bool(false)])])),
    ];
    if tokenizer {
        let mut spec = GgufTokenizerSpec::new(
            GgufTokenizerModel::Gpt2,
            ["a", "b", "ab", "<s>"].map(String::from).to_vec(),
            vec!["a b".into()],
        );
        spec.token_types = vec![1, 1, 1, 3];
        spec.bos_id = Some(3);
        spec.add_bos = Some(true);
        spec.chat_template = Some("{{ messages }}".into());
        metadata.extend(spec.to_metadata());
    }
    let tensors = vec![
        GgufTensorInfo { name: "token_embd.weight".into(), dims: vec![64, 4], ggml_type: 0, offset: 0 },
        GgufTensorInfo { name: "blk.0.attn_q.weight".into(), dims: vec![64, 64], ggml_type: 8, offset: 1024 },
    ];
    let mut bytes = GgufHeader::write(&metadata, &tensors, u64::from(alignment));
    bytes.extend(std::iter::repeat_n(0x3c, 64));
    bytes
}

#[test]
fn mutated_gguf_headers_never_panic() {
    let seeds: Vec<Seed> = [(32, true), (64, false), (1, true)]
        .into_iter()
        .map(|(alignment, tokenizer)| {
            let bytes = seed_header(alignment, tokenizer);
            let hot = bytes.len() - 64;
            Seed::binary(bytes, hot)
        })
        .collect();
    let path = Path::new("model.gguf");
    let cases = 50_000;
    let ran = mutate::run("GGUF container (lomo-io)", &seeds, cases, |bytes| {
        let header = match GgufHeader::parse(bytes, path) {
            Ok(header) => header,
            Err(e) => return mutate::one_line(&e.to_string()),
        };
        for info in &header.tensors {
            let _ = info.shape();
        }
        for key in ["llama.block_count", "a.per_layer", "a.small", "general.architecture"] {
            if let Err(e) = header.metadata.usize(key) {
                mutate::one_line(&e.to_string())?;
            }
        }
        let _ = (header.metadata.numbers("a.signed"), header.metadata.strings("tokenizer.ggml.tokens"));
        match GgufTokenizerSpec::from_metadata(&header.metadata) {
            Ok(spec) => {
                let _ = spec.to_metadata();
                Ok(())
            }
            Err(e) => mutate::one_line(&e.to_string()),
        }
    });
    assert_eq!(ran, cases);
}
