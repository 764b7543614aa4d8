//! Checkpoints in and out: HF safetensors (single, sharded), GGUF, and the errors a broken
//! checkpoint gets.

use std::path::Path;

use lomo_models::{Batch, GgufFile, Llama, ModelError, Residency, SaveOptions, StorageDtype, TensorSource};

use crate::common::gguf_writer::{self, TensorEntry, Value};
use crate::common::{self, max_abs_diff, values, B};

fn load(dir: &Path, dtype: StorageDtype) -> Llama<B> {
    lomo_models::load::<B>(TensorSource::Hf(dir), Residency::Resident, dtype, &common::device())
        .map(|l| l.model)
        .unwrap()
}

/// Raw bytes of every tensor, by HF name, in HF layout.
fn raw_tensors(model: &Llama<B>) -> Vec<(String, Vec<u8>)> {
    model.hf_tensors().into_iter().map(|(spec, t)| (spec.name, t.into_data().as_bytes().to_vec())).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn short_batch() -> Batch {
    Batch::new(vec![1, 403, 407, 261, 378, 383, 286, 261], None, None, [1, 8]).unwrap()
}

#[test]
fn saved_checkpoint_is_the_hf_checkpoint() {
    let Some(dir) = common::stories260k() else { return };
    let model = load(&dir, StorageDtype::F32);
    let out = common::temp_dir("save_single");
    model.save_hf(&out, &SaveOptions::default()).unwrap();

    // Same names, shapes ([out, in]) and values as the file HF wrote; the tied head is not
    // duplicated; nothing else.
    let original = common::read_safetensors(&dir.join("model.safetensors"));
    let saved = common::read_safetensors(&out.join("model.safetensors"));
    assert_eq!(saved.len(), original.len());
    assert!(!saved.contains_key("lm_head.weight"));
    for (name, (shape, values)) in &original {
        let (saved_shape, saved_values) = &saved[name];
        assert_eq!(saved_shape, shape, "{name}");
        assert_eq!(saved_values, values, "{name}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["torch_dtype"], "float32");
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");

    let reloaded = load(&out, StorageDtype::F32);
    assert_eq!(reloaded.config(), model.config());
    assert_eq!(raw_tensors(&reloaded), raw_tensors(&model));
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.ends_with(".tmp").then_some(name)
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn sharded_save_round_trips_and_replaces_a_single_file() {
    let Some(dir) = common::stories260k() else { return };
    let model = load(&dir, StorageDtype::F32);
    let out = common::temp_dir("save_sharded");
    model.save_hf(&out, &SaveOptions::default()).unwrap();
    // 1.04 MB of weights in shards of at most 300 kB.
    model.save_hf(&out, &SaveOptions { max_shard_bytes: 300_000 }).unwrap();
    assert!(!out.join("model.safetensors").exists(), "the stale single file must go");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    let weight_map = index["weight_map"].as_object().unwrap();
    assert_eq!(weight_map.len(), model.config().tensor_specs().len());
    let shards: std::collections::BTreeSet<&str> = weight_map.values().map(|v| v.as_str().unwrap()).collect();
    assert!(shards.len() >= 4, "{shards:?}");
    assert!(shards.contains("model-00001-of-00004.safetensors") || shards.len() > 4);
    for shard in &shards {
        let size = std::fs::metadata(out.join(shard)).unwrap().len();
        assert!(size < 300_000 + 20_000, "{shard} is {size} bytes");
    }
    assert_eq!(index["metadata"]["total_size"], 260_032 * 4);
    let reloaded = load(&out, StorageDtype::F32);
    assert_eq!(raw_tensors(&reloaded), raw_tensors(&model));

    // Back to one file: the index and shards go.
    model.save_hf(&out, &SaveOptions::default()).unwrap();
    let names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["config.json", "model.safetensors"]);
}

#[test]
fn bf16_is_saved_as_bf16() {
    let Some(dir) = common::stories260k() else { return };
    let model = load(&dir, StorageDtype::BF16);
    let out = common::temp_dir("save_bf16");
    model.save_hf(&out, &SaveOptions::default()).unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::BF16);
    assert_eq!(view.shape(), [64, 64]);
    assert_eq!(bytes.len() as u64, 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) + 260_032 * 2);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(raw_tensors(&load(&out, StorageDtype::BF16)), raw_tensors(&model));
}

fn expect_err(dir: &Path) -> ModelError {
    match lomo_models::load::<B>(TensorSource::Hf(dir), Residency::Resident, StorageDtype::F32, &common::device())
        .map(|l| l.model)
    {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn broken_safetensors_checkpoints_are_named_errors() {
    let Some(dir) = common::stories260k() else { return };
    let original = std::fs::read(dir.join("model.safetensors")).unwrap();

    let truncated = common::temp_dir("broken_truncated");
    copy_dir(&dir, &truncated);
    std::fs::write(truncated.join("model.safetensors"), &original[..original.len() / 2]).unwrap();
    let err = expect_err(&truncated);
    assert!(matches!(err, ModelError::InvalidSafetensors { .. }), "{err}");
    assert!(err.to_string().contains("broken_truncated/model.safetensors"), "{err}");

    // A checkpoint without one tensor.
    let missing = common::temp_dir("broken_missing");
    copy_dir(&dir, &missing);
    let st = safetensors::SafeTensors::deserialize(&original).unwrap();
    let kept: Vec<_> = st.tensors().into_iter().filter(|(n, _)| n != "model.layers.2.mlp.up_proj.weight").collect();
    safetensors::serialize_to_file(kept, None, &missing.join("model.safetensors")).unwrap();
    let err = expect_err(&missing);
    assert!(
        matches!(&err, ModelError::MissingTensor { tensor, .. } if tensor == "model.layers.2.mlp.up_proj.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("broken_missing/model.safetensors"), "{err}");

    // A config contradicting the weights.
    let edit_config = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let d = common::temp_dir(name);
        copy_dir(&dir, &d);
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(d.join("config.json"), config.to_string()).unwrap();
        d
    };
    let err = expect_err(&edit_config("broken_shape", &|c| c["intermediate_size"] = 171.into()));
    match &err {
        ModelError::ShapeMismatch { tensor, expected, found, .. } => {
            assert_eq!(tensor, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!((expected.as_slice(), found.as_slice()), ([171, 64].as_slice(), [172, 64].as_slice()));
        }
        other => panic!("{other}"),
    }
    let err = expect_err(&edit_config("broken_untied", &|c| c["tie_word_embeddings"] = false.into()));
    assert!(matches!(&err, ModelError::MissingTensor { tensor, .. } if tensor == "lm_head.weight"), "{err}");
    let err = expect_err(&edit_config("broken_type", &|c| c["model_type"] = "gpt2".into()));
    assert!(matches!(&err, ModelError::UnsupportedConfig { field, .. } if field == "model_type"), "{err}");
    assert!(err.to_string().contains("broken_type/config.json"), "{err}");
    let err = expect_err(&edit_config("broken_rope", &|c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0})
    }));
    assert!(matches!(&err, ModelError::UnsupportedConfig { field, .. } if field == "rope_scaling.rope_type"), "{err}");
    let err = expect_err(&edit_config("broken_act", &|c| c["hidden_act"] = "gelu".into()));
    assert!(matches!(&err, ModelError::UnsupportedConfig { field, .. } if field == "hidden_act"), "{err}");
    let err = expect_err(&edit_config("broken_heads", &|c| c["num_key_value_heads"] = 3.into()));
    assert!(matches!(&err, ModelError::InvalidConfig { field, .. } if field == "num_key_value_heads"), "{err}");
    let err = expect_err(&edit_config("broken_eps", &|c| c["rms_norm_eps"] = (-1.0).into()));
    assert!(matches!(&err, ModelError::InvalidConfig { field, .. } if field == "rms_norm_eps"), "{err}");
    let err = expect_err(&edit_config("broken_context", &|c| c["max_position_embeddings"] = 0.into()));
    assert!(matches!(&err, ModelError::InvalidConfig { field, .. } if field == "max_position_embeddings"), "{err}");
    assert!(err.to_string().contains("broken_context/config.json"), "{err}");
    // One layer fewer in the config than in the file: layer 4's tensors are unexpected.
    let err = expect_err(&edit_config("broken_layers", &|c| c["num_hidden_layers"] = 4.into()));
    assert!(
        matches!(&err, ModelError::UnexpectedTensor { tensor, .. } if tensor.starts_with("model.layers.4.")),
        "{err}"
    );
}

/// stories260K as llama.cpp's converter would write it: llama.cpp names, q/k rows permuted,
/// configuration in `llama.*` metadata.
fn write_stories_gguf(dir: &Path, path: &Path, q_type_override: Option<u32>) {
    write_stories_gguf_with(dir, path, q_type_override, &|_| {});
}

/// GGUF metadata as the test writer takes it: key and value, in file order.
type GgufMetadata = Vec<(&'static str, Value)>;

/// [`write_stories_gguf`] with its metadata edited by `edit` first.
fn write_stories_gguf_with(dir: &Path, path: &Path, q_type_override: Option<u32>, edit: &dyn Fn(&mut GgufMetadata)) {
    let config = lomo_models::LlamaConfig::from_file(dir.join("config.json")).unwrap();
    let tensors = common::read_safetensors(&dir.join("model.safetensors"));
    let gguf_name = |hf: &str| -> String {
        match hf {
            "model.embed_tokens.weight" => "token_embd.weight".into(),
            "model.norm.weight" => "output_norm.weight".into(),
            _ => {
                let rest = hf.strip_prefix("model.layers.").unwrap();
                let (layer, rest) = rest.split_once('.').unwrap();
                let part = rest.strip_suffix(".weight").unwrap();
                let g = match part {
                    "input_layernorm" => "attn_norm",
                    "post_attention_layernorm" => "ffn_norm",
                    "self_attn.q_proj" => "attn_q",
                    "self_attn.k_proj" => "attn_k",
                    "self_attn.v_proj" => "attn_v",
                    "self_attn.o_proj" => "attn_output",
                    "mlp.gate_proj" => "ffn_gate",
                    "mlp.up_proj" => "ffn_up",
                    "mlp.down_proj" => "ffn_down",
                    other => panic!("{other}"),
                };
                format!("blk.{layer}.{g}.weight")
            }
        }
    };
    let mut entries = Vec::new();
    for spec in config.tensor_specs() {
        let (shape, values) = &tensors[&spec.name];
        let heads = if spec.name.ends_with("q_proj.weight") {
            Some(config.num_heads)
        } else if spec.name.ends_with("k_proj.weight") {
            Some(config.num_kv_heads)
        } else {
            None
        };
        let values = match heads {
            Some(h) => gguf_writer::permute_rows(values, shape[0], shape[1], h),
            None => values.clone(),
        };
        let mut ggml_type = 0;
        if spec.name == "model.layers.0.self_attn.q_proj.weight" {
            ggml_type = q_type_override.unwrap_or(0);
        }
        entries.push(TensorEntry {
            name: gguf_name(&spec.name),
            shape: shape.clone(),
            ggml_type,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
    }
    let mut metadata = vec![
        ("general.architecture", Value::Str("llama".into())),
        ("llama.embedding_length", Value::U32(64)),
        ("llama.block_count", Value::U32(5)),
        ("llama.feed_forward_length", Value::U32(172)),
        ("llama.attention.head_count", Value::U32(8)),
        ("llama.attention.head_count_kv", Value::U32(4)),
        ("llama.context_length", Value::U32(512)),
        ("llama.rope.dimension_count", Value::U32(8)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::Str("llama".into())),
        ("tokenizer.ggml.tokens", Value::Strings((0..512).map(|i| format!("t{i}")).collect())),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ];
    edit(&mut metadata);
    gguf_writer::write(path, &metadata, &entries);
}

#[test]
fn gguf_with_permuted_rows_loads_as_the_hf_model() {
    let Some(dir) = common::stories260k() else { return };
    let out = common::temp_dir("gguf_stories");
    let path = out.join("stories260K.gguf");
    write_stories_gguf(&dir, &path, None);

    let file = GgufFile::open(&path).unwrap();
    let hf_config = lomo_models::LlamaConfig::from_file(dir.join("config.json")).unwrap();
    let config = file.config().unwrap();
    assert_eq!(config, hf_config);
    let tokenizer = file.tokenizer().unwrap();
    assert_eq!((tokenizer.model.gguf_name(), tokenizer.tokens.len(), tokenizer.eos_id), ("llama", 512, Some(2)));

    let from_gguf = GgufFile::open(&path)
        .and_then(|f| {
            lomo_models::load::<B>(TensorSource::Gguf(&f), Residency::Resident, StorageDtype::F32, &common::device())
        })
        .map(|l| l.model)
        .unwrap();
    let from_hf = load(&dir, StorageDtype::F32);
    // Un-permuted and transposed back, every weight is the HF one, bit for bit.
    assert_eq!(raw_tensors(&from_gguf), raw_tensors(&from_hf));
    let batch = short_batch();
    assert_eq!(max_abs_diff(&values(from_gguf.forward(&batch)), &values(from_hf.forward(&batch))), 0.0);
}

#[test]
fn broken_gguf_files_are_named_errors() {
    let Some(dir) = common::stories260k() else { return };
    let out = common::temp_dir("gguf_broken");
    let path = out.join("q6k.gguf");
    // Q6_K (ggml type 14) is not supported.
    write_stories_gguf(&dir, &path, Some(14));
    let err = GgufFile::open(&path)
        .and_then(|f| {
            lomo_models::load::<B>(TensorSource::Gguf(&f), Residency::Resident, StorageDtype::F32, &common::device())
        })
        .map(|l| l.model)
        .unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedTensorType { tensor, dtype, .. } if tensor == "blk.0.attn_q.weight" && dtype.starts_with("Q6_K")),
        "{err}"
    );
    assert!(err.to_string().contains("q6k.gguf"), "{err}");

    // A negative RMSNorm epsilon is refused by name, as in config.json.
    let negative_eps = out.join("eps.gguf");
    write_stories_gguf_with(&dir, &negative_eps, None, &|metadata| {
        for (key, value) in metadata.iter_mut() {
            if *key == "llama.attention.layer_norm_rms_epsilon" {
                *value = Value::F32(-1.0);
            }
        }
    });
    let err = GgufFile::open(&negative_eps).and_then(|f| f.config()).unwrap_err();
    assert!(
        matches!(&err, ModelError::InvalidConfig { field, .. } if field == "llama.attention.layer_norm_rms_epsilon"),
        "{err}"
    );
    assert!(err.to_string().contains("eps.gguf"), "{err}");

    let good = out.join("good.gguf");
    write_stories_gguf(&dir, &good, None);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = out.join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let err = GgufFile::open(&truncated).unwrap_err();
    assert!(matches!(err, ModelError::InvalidGguf { .. }), "{err}");
    assert!(err.to_string().contains("truncated.gguf") && err.to_string().contains("past the end"), "{err}");
    let header_only = out.join("header.gguf");
    std::fs::write(&header_only, &bytes[..100]).unwrap();
    let err = GgufFile::open(&header_only).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let not_gguf = out.join("not.gguf");
    std::fs::write(&not_gguf, b"GGML and then some").unwrap();
    let err = GgufFile::open(&not_gguf).unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
}
