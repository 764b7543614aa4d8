//! `lomo demo`: on a fresh machine, with no download, fine-tune a small LLaMA with LOMO on
//! synthetic addition, print exact-match accuracy before and after, and measure LOMO's peak
//! memory against AdamW's on the same model.

use lomo_models::TrainBackend;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use lomo_data::{
    exact_match_accuracy, AdditionConfig, AdditionTask, BatchLoader, Dataset, EncodeConfig, GenerationExample,
    LoaderConfig, PaddingConfig, TextTokenizer,
};
use lomo_models::{generate, GenerationConfig, Llama, LlamaConfig, StorageDtype};
use lomo_optim::{full_backward_step, FusedConfig, FusedStep, Lomo, LrSchedule, RuleUpdater, ScheduleKind};

use crate::alloc;
use crate::args::DemoArgs;
use crate::backend::with_backend;
use crate::data::model_batch;
use crate::model::{load_path, require_tokenizer};
use crate::trainer::{StepSettings, Trainer};

/// Characters of the addition task; one token each.
const CHARS: &str = "0123456789+=";

/// A character-level tokenizer for the task: `<s>` (1) in front, `</s>` (2) to stop, `<pad>` (0).
fn char_tokenizer() -> Result<TextTokenizer> {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<pad>".into(), 0.into());
    vocab.insert("<s>".into(), 1.into());
    vocab.insert("</s>".into(), 2.into());
    for (i, c) in CHARS.chars().enumerate() {
        vocab.insert(c.to_string(), (i + 3).into());
    }
    let special = |id: u32, content: &str| serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    let inner: tokenizers::Tokenizer =
        json.to_string().parse().map_err(|e| anyhow::anyhow!("building the demo tokenizer: {e}"))?;
    Ok(TextTokenizer::from_parts(inner, Some(1), Some(2), Some(0)))
}

/// The demo's model: f32 random weights from `seed`, resident.
fn random_model<B: TrainBackend>(config: &LlamaConfig, seed: u64, device: &B::Device) -> Result<Llama<B>> {
    let source = lomo_models::TensorSource::Init { config, seed };
    Ok(lomo_models::load::<B>(source, lomo_models::Residency::Resident, StorageDtype::F32, device)?.model)
}

/// The demo's model: a small LLaMA (GQA, SwiGLU, RoPE, tied embeddings).
fn demo_config(vocab: usize, hidden: usize, layers: usize) -> Result<LlamaConfig> {
    let mut config = lomo_models::presets::preset("stories260k")?;
    config.vocab_size = vocab;
    config.hidden_size = hidden;
    config.intermediate_size = hidden * 8 / 3;
    config.num_layers = layers;
    config.num_heads = hidden / 32;
    config.num_kv_heads = hidden / 64;
    config.head_dim = 32;
    config.max_position_embeddings = 64;
    config.bos_token_id = Some(1);
    config.eos_token_ids = vec![2];
    Ok(config)
}

pub fn run(args: DemoArgs) -> Result<()> {
    if args.steps == 0 || args.batch_size == 0 || args.layers == 0 {
        anyhow::bail!("--steps, --batch-size and --layers: must be at least 1");
    }
    if args.hidden < 64 || !args.hidden.is_multiple_of(64) {
        anyhow::bail!(
            "--hidden: must be a multiple of 64 (heads of 32, 2 query heads per KV head), got {}",
            args.hidden
        );
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        anyhow::bail!("--lr: must be a finite number > 0, got {}", args.lr);
    }
    with_backend!(args.backend, |B, device| demo::<B>(&args, &device))
}

fn accuracy<B: lomo_kernels::FusedKernels>(
    model: &Llama<B>,
    tokenizer: &TextTokenizer,
    eval: &[GenerationExample],
) -> Result<f64> {
    let config = GenerationConfig::greedy(8);
    let mut generated = Vec::with_capacity(eval.len());
    for e in eval {
        let ids = generate(model, &e.prompt_ids, &config);
        generated.push(tokenizer.decode(&ids, true)?);
    }
    Ok(exact_match_accuracy(&generated, eval)?)
}

fn demo<B: TrainBackend>(args: &DemoArgs, device: &B::Device) -> Result<()> {
    let started = Instant::now();
    let (mut model, tokenizer, what) = match &args.model {
        Some(path) => {
            let loaded = load_path::<B>(
                path,
                StorageDtype::F32,
                lomo_models::On::One(device),
                lomo_models::Residency::Resident,
            )?;
            let t = require_tokenizer(loaded.tokenizer.as_ref(), "lomo demo --model")?.clone();
            (loaded.model, t, loaded.description)
        }
        None => {
            let tokenizer = char_tokenizer()?;
            let config = demo_config(16, args.hidden, args.layers)?;
            (random_model::<B>(&config, args.seed, device)?, tokenizer, "a small LLaMA (random init)".to_string())
        }
    };
    let task = AdditionTask::generate(&AdditionConfig { seed: args.seed, ..Default::default() })?;
    let examples = task.train_examples(&tokenizer, &EncodeConfig::with_max_len(32))?;
    let eval = task.eval_examples(&tokenizer)?;
    let params = model.config().num_params();
    lomo_cli::sayln!("lomo demo: fine-tune {what} ({params} parameters) with {:?} on synthetic addition ({} training problems, {} held out)", args.optimizer, task.train.len(), eval.len());
    let before = accuracy(&model.valid(), &tokenizer, &eval)?;
    lomo_cli::sayln!("exact match before: {:.1}%", before * 100.0);

    let steps = args.steps;
    let mut loader_config = LoaderConfig::new(args.batch_size);
    loader_config.seed = args.seed;
    loader_config.padding = PaddingConfig::for_tokenizer(&tokenizer);
    let mut loader = BatchLoader::new(Dataset::from_examples("synthetic:addition", examples)?, loader_config)?;
    let schedule = LrSchedule::new(ScheduleKind::Cosine, args.lr, 0.05, steps)?;
    let settings =
        StepSettings { weight_decay: 0.0, clip_grad_norm: Some(1.0), clip_grad_value: None, loss_scale: None };
    let mut step = Trainer::<B>::new(args.optimizer, settings)?;
    let t0 = Instant::now();
    for s in 0..steps {
        let batch = model_batch(&loader.next_batch()?)?;
        let (next, report) = step.step(model, std::slice::from_ref(&batch), schedule.lr(s))?;
        model = next;
        if (s + 1) % (steps / 6).max(1) == 0 || s + 1 == steps {
            lomo_cli::sayln!(
                "  step {:>4}/{steps}  loss {:.4}  ({:.0} s)",
                s + 1,
                report.loss,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let after = accuracy(&model.valid(), &tokenizer, &eval)?;
    lomo_cli::sayln!(
        "exact match after {steps} {:?} steps: {:.1}%  (before: {:.1}%)",
        args.optimizer,
        after * 100.0,
        before * 100.0
    );

    memory_table::<B>(device, args.seed).context("measuring memory")?;
    lomo_cli::sayln!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Peak live heap of one training step, LOMO (fused) against full backward + AdamW, on a
/// model big enough that the weights dominate (~25M parameters, f32). Each is the second step
/// of its optimizer, so AdamW's moments exist, as in any real run.
fn memory_table<B: TrainBackend>(device: &B::Device, seed: u64) -> Result<()> {
    let config = demo_config(4096, 512, 8)?;
    let params = config.num_params() as usize;
    let weight_bytes = params * 4;
    let rows: Vec<i64> = (0..4 * 64).map(|i| (i * 37 % 4096) as i64).collect();
    let batch = lomo_models::Batch::new(rows.clone(), None, Some(rows), [4, 64])?;
    let measure = |run: &mut dyn FnMut()| {
        alloc::reset_peak();
        let base = alloc::live();
        run();
        (alloc::peak(), alloc::peak() - base.min(alloc::peak()))
    };
    let mut lomo_step = FusedStep::new(RuleUpdater::new(Lomo::new(0.0)?), FusedConfig::default())?;
    let model = random_model::<B>(&config, seed, device)?;
    let (model, _) = lomo_step.step(model, std::slice::from_ref(&batch), 1e-3)?;
    let mut slot = Some(model);
    let mut failed = None;
    let (lomo_peak, _) =
        measure(&mut || match lomo_step.step(slot.take().expect("model"), std::slice::from_ref(&batch), 1e-3) {
            Ok((m, _)) => drop(m),
            Err(e) => failed = Some(e),
        });
    if let Some(e) = failed.take() {
        return Err(e.into());
    }
    let mut adamw = burn::optim::AdamWConfig::new().init::<B, Llama<B>>();
    let model = random_model::<B>(&config, seed, device)?;
    let (model, _) = full_backward_step::<B, _, _, 3>(model, std::slice::from_ref(&batch), &mut adamw, 1e-3)?;
    let mut slot = Some(model);
    let (adamw_peak, _) = measure(&mut || match full_backward_step::<B, _, _, 3>(
        slot.take().expect("model"),
        std::slice::from_ref(&batch),
        &mut adamw,
        1e-3,
    ) {
        Ok((m, _)) => drop(m),
        Err(e) => failed = Some(e),
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    lomo_cli::sayln!();
    lomo_cli::sayln!(
        "memory of one training step, measured (peak live heap; {params} parameters, f32, batch 4 × 64 tokens):"
    );
    lomo_cli::sayln!("| optimizer                 | peak heap  | × weights |");
    lomo_cli::sayln!("|---------------------------|------------|-----------|");
    lomo_cli::sayln!("| weights alone             | {:>10} | {:>9.2} |", alloc::human(weight_bytes), 1.0);
    lomo_cli::sayln!(
        "| LOMO (fused, stage-wise)  | {:>10} | {:>9.2} |",
        alloc::human(lomo_peak),
        lomo_peak as f64 / weight_bytes as f64
    );
    lomo_cli::sayln!(
        "| AdamW (full backward)     | {:>10} | {:>9.2} |",
        alloc::human(adamw_peak),
        adamw_peak as f64 / weight_bytes as f64
    );
    lomo_cli::sayln!("LOMO needs {:.0}% of AdamW's memory here.", 100.0 * lomo_peak as f64 / adamw_peak as f64);
    Ok(())
}
