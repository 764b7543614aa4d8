//! Throughput of tokenizing and batching Alpaca data: loads `alpaca_en_demo.json` with the
//! stories260K tokenizer, pads it into batches, and prints examples/s and tokens/s for each
//! stage. Run in release:
//!
//! ```text
//! cargo run --release -p lomo-data --example bench_alpaca [-- <shared dir>]
//! ```
//!
//! The shared folder defaults to `$LOMO_SHARED`, else `shared/` beside the workspace root.

use std::path::PathBuf;
use std::time::Instant;

use lomo_data::{BatchLoader, Dataset, EncodeConfig, LoaderConfig, Overlong, PaddingConfig, TextTokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shared = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("LOMO_SHARED").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let tokenizer = TextTokenizer::from_file(shared.join("models/stories260K/tokenizer.json"))?;
    let data = shared.join("data/alpaca_en_demo.json");
    let encode = EncodeConfig { overlong: Overlong::Skip, ..EncodeConfig::with_max_len(4096) };
    const ROUNDS: usize = 5;

    // Tokenize: read the JSON, apply the template, encode, truncate. Several rounds so the
    // timing is not one cold run.
    let start = Instant::now();
    let mut dataset = None;
    for _ in 0..ROUNDS {
        dataset = Some(Dataset::load(&data, None, Some(&tokenizer), &encode)?);
    }
    let seconds = start.elapsed().as_secs_f64();
    let dataset = dataset.expect("ROUNDS > 0");
    let (examples, tokens) = (dataset.len() + dataset.skipped_too_long, dataset.num_tokens());
    println!(
        "tokenize: {} examples ({} skipped > {} tokens), {} tokens kept; {:.0} examples/s, {:.0} tokens/s",
        examples,
        dataset.skipped_too_long,
        encode.max_len,
        tokens,
        (examples * ROUNDS) as f64 / seconds,
        (tokens * ROUNDS) as f64 / seconds
    );

    // Batch: shuffle, bucket and pad every epoch.
    let config = LoaderConfig {
        padding: PaddingConfig::for_tokenizer(&tokenizer),
        bucket_batches: Some(16),
        ..LoaderConfig::new(8)
    };
    let kept = dataset.len();
    let mut loader = BatchLoader::new(dataset, config)?;
    let start = Instant::now();
    let (mut rows, mut cells, mut targets) = (0usize, 0usize, 0usize);
    for _ in 0..ROUNDS * 4 {
        while let Some(batch) = loader.next_batch_in_epoch()? {
            rows += batch.batch_size;
            cells += batch.batch_size * batch.seq_len;
            targets += batch.num_targets();
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "batch:    {} epochs of {kept} examples; {:.0} examples/s, {:.0} tokens/s (padded cells), \
         padding {:.1}% of cells, {targets} targets",
        ROUNDS * 4,
        rows as f64 / seconds,
        cells as f64 / seconds,
        100.0 * (cells - tokens * ROUNDS * 4) as f64 / cells as f64
    );
    Ok(())
}
