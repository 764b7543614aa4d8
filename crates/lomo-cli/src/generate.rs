//! `lomo generate`: continue a prompt, greedily or sampled.

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use lomo_data::TextTokenizer;
use lomo_models::{generate, GenerationConfig, Placement, Sampling};

use crate::args::GenerateArgs;
use crate::backend::with_backend;
use crate::model::{load_path, require_tokenizer};

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.temperature < 0.0 || !args.temperature.is_finite() {
        bail!("--temperature: must be >= 0 (0 is greedy), got {}", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p: must be in (0, 1], got {}", args.top_p);
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens: must be at least 1");
    }
    crate::backend::check_dtype(args.backend, args.dtype.storage(), args.devices.as_deref())?;
    with_backend!(args.backend, |B, device| {
        // Generation records no graph: the model lives on the backend under autodiff.
        type Inner = <B as AutodiffBackend>::InnerBackend;
        let placement = args.devices.as_deref().map(|list| place::<Inner>(&args, list)).transpose()?;
        let on = match &placement {
            Some(p) => lomo_models::On::Stages(p),
            None => lomo_models::On::One(&device),
        };
        let loaded = load_path::<Inner>(&args.model, args.dtype.storage(), on, lomo_models::Residency::Resident)?;
        let tokenizer = require_tokenizer(loaded.tokenizer.as_ref(), "lomo generate")?;
        let ids = prompt_ids(&args, tokenizer)?;
        let vocab = loaded.model.config().vocab_size;
        if let Some((_, id)) = lomo_models::batch::first_outside_vocab([ids.as_slice()], vocab) {
            bail!("--prompt: token id {id} is outside the model's vocabulary of {vocab}");
        }
        let context = loaded.model.config().max_position_embeddings;
        if ids.len().saturating_add(args.max_new_tokens) > context {
            bail!(
                "--max-new-tokens {}: with the prompt's {} tokens it passes the model's context of {context} \
                 positions (max_position_embeddings)",
                args.max_new_tokens,
                ids.len()
            );
        }
        let sampling = if args.temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::TopP { temperature: args.temperature, top_p: args.top_p, seed: args.seed }
        };
        let mut stop = Vec::new();
        if let Some(eos) = tokenizer.eos_id() {
            stop.push(eos);
        }
        if args.chat {
            if let Some(end) = tokenizer.token_to_id("<|im_end|>") {
                stop.push(end);
            }
        }
        stop.extend(loaded.model.config().eos_token_ids.iter().copied());
        let config = GenerationConfig { max_new_tokens: args.max_new_tokens, sampling, stop_tokens: stop };
        let new_ids = generate(&loaded.model, &ids, &config);
        lomo_cli::sayln!("{}", tokenizer.decode(&new_ids, true)?);
        Ok(())
    })
}

/// `--devices LIST`: planned for one row of a prompt and the new tokens (the weights dominate
/// the split).
fn place<B: burn::tensor::backend::Backend>(args: &GenerateArgs, list: &str) -> Result<Placement<B::Device>> {
    let context = crate::placement::config_of_path(&args.model)?.max_position_embeddings;
    let context = context.min(args.max_new_tokens.saturating_add(1024)).max(2);
    crate::placement::inference_placement::<B>(list, args.backend, &args.model, args.dtype.storage(), 1, context)
}

/// The prompt's token ids: `--prompt` as it is, or with `--chat` as the user's turn in the
/// model's chat template.
fn prompt_ids(args: &GenerateArgs, tokenizer: &TextTokenizer) -> Result<Vec<u32>> {
    let prompt = if args.chat {
        let message = lomo_data::ChatMessage { role: "user".into(), content: args.prompt.clone() };
        let template =
            tokenizer.chat_template().context("the model's chat template (tokenizer_config.json or GGUF)")?;
        template.render(&[message], true)?.text
    } else {
        args.prompt.clone()
    };
    // The tokenizer adds BOS where the model expects it; a chat prompt carries its own (the
    // template writes it where the model wants one, as HF tokenizes it).
    Ok(tokenizer.encode(&prompt, !args.chat)?)
}
