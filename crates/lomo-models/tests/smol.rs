//! SmolLM2-135M-Instruct from its GGUF (Q4_1 / Q8_0 / F32 tensors, byte-level BPE tokenizer,
//! ChatML): a real pretrained model end to end.

use lomo_models::{
    generate, load, Batch, GenerationConfig, GgufFile, Llama, Residency, Sampling, SaveOptions, StorageDtype,
    TensorSource,
};

use crate::common::{self, gguf_tokenizer, max_abs_diff, values, B};

/// The prompt SmolLM2's chat template renders for one user message (it adds its default
/// system message).
const PROMPT: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                      <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn smollm_gguf_answers_and_round_trips_through_hf_safetensors() {
    let Some(path) = common::smol_gguf() else { return };
    let file = GgufFile::open(&path).unwrap();
    let config = file.config().unwrap();
    // HuggingFaceTB/SmolLM2-135M-Instruct config.json
    assert_eq!(
        (config.hidden_size, config.num_layers, config.num_heads, config.num_kv_heads, config.intermediate_size),
        (576, 30, 9, 3, 1536)
    );
    assert_eq!((config.vocab_size, config.rope_theta, config.tie_word_embeddings), (49152, 100000.0, true));
    assert_eq!(config.num_params(), 134_515_008);
    let meta = file.tokenizer().unwrap();
    assert_eq!((meta.model.gguf_name(), meta.tokens.len(), meta.merges.len()), ("gpt2", 49152, 48900));
    assert!(meta.chat_template.as_deref().unwrap_or("").contains("<|im_start|>"));
    let tokenizer = gguf_tokenizer::byte_level_bpe(&meta);

    let model: Llama<B> = load(TensorSource::Gguf(&file), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    let prompt = tokenizer.encode(PROMPT, false).unwrap().get_ids().to_vec();
    let im_end = tokenizer.token_to_id("<|im_end|>").unwrap();
    let new = generate(
        &model,
        &prompt,
        &GenerationConfig { max_new_tokens: 24, sampling: Sampling::Greedy, stop_tokens: vec![im_end] },
    );
    let answer = tokenizer.decode(&new, true).unwrap();
    eprintln!("SmolLM2-135M-Instruct (GGUF Q4_1, greedy): {answer:?}");
    assert!(answer.contains("Paris"), "answer: {answer:?}");

    // GGUF → HF safetensors → loaded again: the same model, the same logits.
    let out = common::temp_dir("smol_hf");
    model.save_hf(&out, &SaveOptions::default()).unwrap();
    let reloaded = load::<B>(TensorSource::Hf(&out), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    assert_eq!(reloaded.config(), model.config());
    let ids: Vec<i64> = prompt.iter().take(16).map(|&t| t as i64).collect();
    let batch = Batch::new(ids, None, None, [1, 16]).unwrap();
    let diff = max_abs_diff(&values(model.forward(&batch)), &values(reloaded.forward(&batch)));
    assert_eq!(diff, 0.0);
    drop(reloaded);
    // 540 MB of f32: CI's disk is shared, so leave nothing behind.
    std::fs::remove_dir_all(&out).unwrap();
}
