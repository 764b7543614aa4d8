//! Mutation tests of the checkpoint parsers: a small model's `model.safetensors`, its GGUF
//! export (F32, F16, Q8_0) and its `config.json` (four families, and stories260K's when the
//! shared files are there) truncated, flipped and spliced (`lomo_testutil::mutate`), then read
//! as `lomo` reads them: loaded whole, and a configuration resolved and planned. Every mutation
//! gives a model or a one-line error; none panics, and none makes the planner count past `u64`.
//! The counts are in the README's reliability section.

use std::path::Path;

use lomo_models::plan::{PlanConfig, PlanOptimizer, StepMode};
use lomo_models::presets::preset;
use lomo_models::{
    load, GgufExportType, GgufFile, GgufTokenizerModel, GgufTokenizerSpec, HfConfig, Llama, LlamaConfig, LossChunking,
    ModelType, Residency, SaveOptions, StorageDtype, TensorSource,
};
use lomo_testutil::mutate::{self, Seed};

use crate::common::{device, temp_dir, B};

/// A model small enough that its header is much of its file: one block, width 32 (a multiple
/// of Q8_0's block of 32).
fn tiny(model_type: ModelType) -> LlamaConfig {
    LlamaConfig {
        model_type,
        vocab_size: 32,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 1,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        max_position_embeddings: 64,
        qkv_bias: model_type == ModelType::Qwen2,
        qk_norm: model_type == ModelType::Qwen3,
        sliding_window: (model_type == ModelType::Mistral).then_some(16),
        ..preset("stories260K").unwrap()
    }
}

fn random_model(config: &LlamaConfig, dtype: StorageDtype) -> Llama<B> {
    load::<B>(TensorSource::Init { config, seed: 7 }, Residency::Resident, dtype, &device()).unwrap().model
}

/// A loaded model's error, checked to be one line; a model that loads is fine too (the mutation
/// may have hit weight bytes only).
fn loaded(result: lomo_models::Result<lomo_models::Loaded<B>>) -> Result<(), String> {
    match result {
        Ok(_) => Ok(()),
        Err(e) => mutate::one_line(&e.to_string()),
    }
}

#[test]
fn mutated_safetensors_files_never_panic() {
    let config = tiny(ModelType::Llama);
    let dir = temp_dir("mutations-safetensors");
    let mut seeds = Vec::new();
    for dtype in [StorageDtype::F32, StorageDtype::BF16, StorageDtype::F16] {
        random_model(&config, dtype).save_hf(&dir, &SaveOptions::default()).unwrap();
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        seeds.push(Seed::binary(bytes, header));
    }
    // config.json stays the f32 save's; every seed holds the same tensors.
    let cases = 5000;
    let ran = mutate::run("safetensors", &seeds, cases, |bytes| {
        std::fs::write(dir.join("model.safetensors"), bytes).map_err(|e| e.to_string())?;
        loaded(load::<B>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::F32, &device()))
    });
    assert_eq!(ran, cases);
}

#[test]
fn mutated_gguf_files_never_panic() {
    let config = tiny(ModelType::Llama);
    let model = random_model(&config, StorageDtype::F32);
    let dir = temp_dir("mutations-gguf");
    let path = dir.join("model.gguf");
    let tokens = (0..config.vocab_size).map(|i| format!("t{i}")).collect();
    let mut tokenizer = GgufTokenizerSpec::new(GgufTokenizerModel::Llama, tokens, Vec::new());
    tokenizer.bos_id = Some(1);
    tokenizer.eos_id = Some(2);
    tokenizer.scores = (0..config.vocab_size).map(|i| -(i as f32)).collect();
    tokenizer.chat_template = Some("{% for m in messages %}{{ m.content }}{% endfor %}".into());
    let mut seeds = Vec::new();
    for ty in [GgufExportType::F32, GgufExportType::F16, GgufExportType::Q8_0] {
        model.save_gguf(&path, ty, &tokenizer, "tiny").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header = lomo_io::gguf::GgufHeader::parse(&bytes, &path).unwrap().data_start as usize;
        seeds.push(Seed::binary(bytes, header));
    }
    let cases = 5000;
    let ran = mutate::run("GGUF (lomo-models)", &seeds, cases, |bytes| {
        std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
        let file = match GgufFile::open(&path) {
            Ok(file) => file,
            Err(e) => return mutate::one_line(&e.to_string()),
        };
        if let Err(e) = file.tokenizer() {
            mutate::one_line(&e.to_string())?;
        }
        loaded(load::<B>(TensorSource::Gguf(&file), Residency::Resident, StorageDtype::F32, &device()))
    });
    assert_eq!(ran, cases);
}

/// A resolved configuration is planned as `lomo plan` would (the fused step and the full
/// backward, offloaded, split over two devices): sizes that pass the parser must not make the
/// planner's byte counts overflow or allocate for a billion layers.
fn plan_all(model: LlamaConfig) -> Result<(), String> {
    for (optimizer, mode) in [(PlanOptimizer::AdaLomo, StepMode::Fused), (PlanOptimizer::AdamW, StepMode::Full)] {
        let config = PlanConfig {
            model: model.clone(),
            dtype: StorageDtype::BF16,
            optimizer,
            mode,
            batch_size: 2,
            micro_batch_size: 1,
            max_tokens: 16,
            loss_chunking: LossChunking::Tokens(8),
            f64_cast_staging: true,
        };
        let one_line = |r: Result<(), lomo_models::plan::PlanError>| match r {
            Ok(()) => Ok(()),
            Err(e) => mutate::one_line(&e.to_string()),
        };
        one_line(config.plan().map(drop))?;
        if mode == StepMode::Fused {
            one_line(config.plan_devices(2).map(drop))?;
            one_line(config.plan_offload(lomo_models::plan::OffloadTarget::Disk, true).map(drop))?;
        }
    }
    Ok(())
}

#[test]
fn mutated_config_json_never_panics() {
    let mut seeds: Vec<Seed> = [ModelType::Llama, ModelType::Qwen2, ModelType::Qwen3, ModelType::Mistral]
        .into_iter()
        .map(|t| Seed::text(serde_json::to_string_pretty(&tiny(t).to_hf(StorageDtype::BF16)).unwrap()))
        .collect();
    let mut llama3 = preset("llama-3.2-1b").unwrap().to_hf(StorageDtype::BF16);
    llama3.extra.insert("rope_parameters_note".into(), serde_json::json!({"a": [1, 2.5, null]}));
    seeds.push(Seed::text(serde_json::to_string(&llama3).unwrap()));
    if let Some(stories) = crate::common::stories260k() {
        seeds.push(Seed::text(std::fs::read(stories.join("config.json")).unwrap()));
    }
    let path = Path::new("config.json");
    let cases = 10_000;
    let ran = mutate::run("config.json", &seeds, cases, |bytes| {
        match HfConfig::from_slice(bytes, path).and_then(|c| c.resolve(path)) {
            Ok(config) => plan_all(config),
            Err(e) => mutate::one_line(&e.to_string()),
        }
    });
    assert_eq!(ran, cases);
}
