//! Presets, parameter counting, configuration parsing and random initialisation.

use lomo_models::presets::{preset, PRESETS};
use lomo_models::{load, Batch, HfConfig, Llama, ModelType, Residency, SaveOptions, StorageDtype, TensorSource};

use crate::common::{self, values, B};

#[test]
fn presets_count_the_real_models_parameters() {
    // sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters()) of each HF config.
    let expected = [
        ("stories260K", 260_032u64),
        ("SmolLM2-135M", 134_515_008),
        ("TinyLlama-1.1B", 1_100_048_384),
        ("Llama-3.2-1B", 1_235_814_400),
        ("Llama-3.2-3B", 3_212_749_824),
        ("LLaMA-7B", 6_738_415_616),
        ("LLaMA-13B", 13_015_864_320),
        ("LLaMA-30B", 32_528_943_616),
        ("LLaMA-65B", 65_285_660_672),
    ];
    assert_eq!(PRESETS.len(), expected.len());
    for (name, params) in expected {
        let config = preset(name).unwrap();
        assert_eq!(config.num_params(), params, "{name}");
        assert_eq!(config.num_bytes(StorageDtype::BF16), params * 2, "{name}");
    }
    assert!(preset("gpt-5").is_err());
}

#[test]
fn llama3_config_resolves_with_rope_scaling() {
    // meta-llama/Llama-3.2-1B config.json (transformers 4.45)
    let text = r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
        "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.45.0.dev0",
        "use_cache": true, "vocab_size": 128256}"#;
    let hf: HfConfig = serde_json::from_str(text).unwrap();
    let config = hf.resolve("config.json".as_ref()).unwrap();
    assert_eq!(config, preset("Llama-3.2-1B").unwrap());

    // _compute_llama3_parameters: the highest frequency is kept, the lowest divided by the factor.
    let rope = lomo_models::rope::RotaryEmbedding::new(&config);
    let inv_freq = rope.inv_freq();
    assert_eq!(inv_freq.len(), 32);
    assert_eq!(inv_freq[0], 1.0);
    let lowest = 500000f32.powf(-62.0 / 64.0) / 32.0;
    assert!((inv_freq[31] - lowest).abs() <= lowest * 1e-5, "{} vs {lowest}", inv_freq[31]);
    // A medium frequency lies strictly between its unscaled and fully scaled values.
    let (i, unscaled) = (0..32)
        .map(|i| (i, 500000f32.powf(-((2 * i) as f32) / 64.0)))
        .find(|&(_, f)| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            (8192.0 / 4.0..=8192.0).contains(&wavelen)
        })
        .unwrap();
    assert!(inv_freq[i] < unscaled && inv_freq[i] > unscaled / 32.0);
}

#[test]
fn qwen2_with_biases_and_wide_heads_runs_and_round_trips() {
    // Qwen2-style: q/k/v biases, untied head, head_dim (24) ≠ hidden / heads (16).
    let text = r#"{"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24, "vocab_size": 100,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": false,
        "use_sliding_window": false, "eos_token_id": 99}"#;
    let config = serde_json::from_str::<HfConfig>(text).unwrap().resolve("config.json".as_ref()).unwrap();
    assert_eq!(config.model_type, ModelType::Qwen2);
    assert!(config.qkv_bias && !config.o_bias && !config.tie_word_embeddings);
    let names: Vec<String> = config.tensor_specs().into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"model.layers.1.self_attn.k_proj.bias".to_string()));
    assert!(!names.contains(&"model.layers.1.self_attn.o_proj.bias".to_string()));

    let model = load::<B>(
        TensorSource::Init { config: &config.clone(), seed: 5 },
        Residency::Resident,
        StorageDtype::F32,
        &common::device(),
    )
    .unwrap()
    .model;
    assert_eq!(model.layers[0].self_attn.q_proj.weight.val().dims(), [64, 96]);
    let batch = Batch::new((0..20).collect(), None, Some((0..20).collect()), [2, 10]).unwrap();
    let loss = values(model.loss(&batch))[0];
    // Random weights with standard deviation 0.02 predict nearly uniformly: loss ≈ ln(100) (logit spread 0.02 × √64 adds ~0.01, 18 targets add noise).
    assert!((loss - 100f32.ln()).abs() < 0.15, "loss {loss}");

    let dir = common::temp_dir("qwen2_round_trip");
    model.save_hf(&dir, &SaveOptions::default()).unwrap();
    let reloaded = load::<B>(TensorSource::Hf(&dir), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
        .unwrap();
    assert_eq!(reloaded.config(), &config);
    assert_eq!(values(reloaded.forward(&batch)), values(model.forward(&batch)));
}

#[test]
fn random_init_is_reproducible_and_hf_like() {
    let config = preset("stories260K").unwrap();
    let device = common::device();
    let a = load::<B>(
        TensorSource::Init { config: &config.clone(), seed: 7 },
        Residency::Resident,
        StorageDtype::F32,
        &device,
    )
    .unwrap()
    .model;
    let b = load::<B>(
        TensorSource::Init { config: &config.clone(), seed: 7 },
        Residency::Resident,
        StorageDtype::F32,
        &device,
    )
    .unwrap()
    .model;
    let c = load::<B>(
        TensorSource::Init { config: &config.clone(), seed: 8 },
        Residency::Resident,
        StorageDtype::F32,
        &device,
    )
    .unwrap()
    .model;
    let weight = |m: &Llama<B>| values(m.layers[2].mlp.down_proj.weight.val());
    assert_eq!(weight(&a), weight(&b));
    assert_ne!(weight(&a), weight(&c));
    let w = weight(&a);
    let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.001, "std {std}");
    assert!(values(a.norm.weight.val()).iter().all(|&x| x == 1.0));
    // bf16 init is the f32 init rounded.
    let half =
        load::<B>(TensorSource::Init { config: &config, seed: 7 }, Residency::Resident, StorageDtype::BF16, &device)
            .unwrap()
            .model;
    let rounded: Vec<f32> = w.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    assert_eq!(values(half.layers[2].mlp.down_proj.weight.val()), rounded);
}
