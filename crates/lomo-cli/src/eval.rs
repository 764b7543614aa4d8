//! `lomo eval`: loss and perplexity over a dataset, and accuracy on a SuperGLUE task
//! ([`crate::scoring`]), printed as one JSON line.

use anyhow::{bail, Result};

use crate::args::EvalArgs;
use crate::backend::with_backend;
use crate::data::parse_task;
use crate::model::load_path;
use crate::scoring::evaluate;

pub fn run(args: EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size: must be at least 1");
    }
    if args.max_len < 2 {
        bail!("--max-len: must be at least 2");
    }
    let task = parse_task(args.task.as_deref())?;
    crate::backend::check_dtype(args.backend, args.dtype.storage(), args.devices.as_deref())?;
    with_backend!(args.backend, |B, device| {
        type Inner = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;
        let placement = match &args.devices {
            Some(list) => Some(crate::placement::inference_placement::<Inner>(
                list,
                args.backend,
                &args.model,
                args.dtype.storage(),
                args.batch_size,
                args.max_len,
            )?),
            None => None,
        };
        let on = match &placement {
            Some(p) => lomo_models::On::Stages(p),
            None => lomo_models::On::One(&device),
        };
        let loaded = load_path::<Inner>(&args.model, args.dtype.storage(), on, lomo_models::Residency::Resident)?;
        let result = evaluate(
            &loaded.model,
            loaded.tokenizer.as_ref(),
            &args.data,
            args.format,
            task,
            args.max_len,
            args.batch_size,
        )?;
        lomo_cli::sayln!("{}", serde_json::to_string(&result)?);
        Ok(())
    })
}
