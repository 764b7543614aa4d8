//! Batches from a file too large for memory, read line by line.
//!
//! What shuffling means here: examples pass through a buffer of `shuffle_buffer` examples and
//! each batch row is drawn at random from it (the tf.data / HF `IterableDataset.shuffle`
//! scheme). That mixes examples only within a window of about that many records: an example
//! near the end of the file can never come first. For a uniform shuffle of a large file,
//! shuffle the file once offline (or use [`crate::BatchLoader`] if it fits in memory).
//!
//! Resuming: the position is the epoch and the number of examples already drawn in it. Seeking
//! re-reads the file from the start of that epoch and replays the same draws (the buffer's
//! random choices are fixed by the seed and the epoch), so the batches after a resume are exactly
//! those a run without interruption would have seen, at the price of re-reading and
//! re-tokenizing the epoch up to that point.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batching::{collate, Batch, PaddingConfig};
use crate::error::{DataError, Result};
use crate::example::{EncodeConfig, Example};
use crate::formats::reader::Layout;
use crate::formats::{detect_format, layout_of, DataFormat, ExampleSource};
use crate::rng::SplitMix64;
use crate::tokenizer::TextTokenizer;

/// How a [`StreamingLoader`] forms batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Examples per batch.
    pub batch_size: usize,
    /// Examples held for shuffling; 0 or 1 reads the file in order.
    pub shuffle_buffer: usize,
    /// The seed of the draws (a different stream per epoch).
    pub seed: u64,
    /// Drop the last, smaller batch of an epoch.
    pub drop_last: bool,
    /// Padding.
    pub padding: PaddingConfig,
}

impl StreamConfig {
    /// Batches of `batch_size`, a shuffle buffer of 1,000 examples, seed 0.
    pub fn new(batch_size: usize) -> Self {
        Self { batch_size, shuffle_buffer: 1000, seed: 0, drop_last: false, padding: PaddingConfig::default() }
    }
}

/// Where a [`StreamingLoader`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Epochs completed.
    pub epoch: u64,
    /// Examples drawn in the current epoch.
    pub examples_in_epoch: u64,
    /// A hash of the settings and the file's size, so a position is not applied to other
    /// settings or a changed file by mistake.
    pub fingerprint: u64,
}

/// Batches streamed from a JSONL or text file.
pub struct StreamingLoader {
    path: PathBuf,
    format: DataFormat,
    tokenizer: Option<TextTokenizer>,
    encode: EncodeConfig,
    config: StreamConfig,
    fingerprint: u64,
    source: ExampleSource,
    buffer: Vec<Example>,
    rng: SplitMix64,
    epoch: u64,
    examples_in_epoch: u64,
    batches_in_epoch: u64,
}

impl StreamingLoader {
    /// Opens `path` at the start of epoch 0. JSON arrays (Alpaca `.json`) cannot be streamed:
    /// load them with [`crate::Dataset::load`], or write them as JSONL.
    pub fn open(
        path: impl AsRef<Path>,
        format: Option<DataFormat>,
        tokenizer: Option<&TextTokenizer>,
        encode: &EncodeConfig,
        config: StreamConfig,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if config.batch_size == 0 {
            return Err(DataError::InvalidConfig("batch_size must be at least 1".into()));
        }
        let format = match format {
            Some(f) => f,
            None => detect_format(&path)?,
        };
        if layout_of(&path, format) == Layout::JsonArray {
            return Err(DataError::Format {
                path,
                message: "a JSON array cannot be streamed; write it as JSONL or load it whole".into(),
            });
        }
        let size = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?.len();
        let fingerprint = fingerprint(size, encode, &config);
        let source = ExampleSource::open(&path, format, tokenizer, encode)?;
        Ok(Self {
            rng: SplitMix64::for_stream(config.seed, 0),
            path,
            format,
            tokenizer: tokenizer.cloned(),
            encode: encode.clone(),
            config,
            fingerprint,
            source,
            buffer: Vec::new(),
            epoch: 0,
            examples_in_epoch: 0,
            batches_in_epoch: 0,
        })
    }

    /// The current position.
    pub fn position(&self) -> StreamPosition {
        StreamPosition { epoch: self.epoch, examples_in_epoch: self.examples_in_epoch, fingerprint: self.fingerprint }
    }

    /// Examples skipped as too long so far in this epoch's pass over the file.
    pub fn skipped_too_long(&self) -> usize {
        self.source.skipped_too_long
    }

    /// Moves to a saved position by replaying its epoch up to it.
    pub fn seek(&mut self, position: &StreamPosition) -> Result<()> {
        if position.fingerprint != self.fingerprint {
            return Err(DataError::PositionMismatch(format!(
                "{}: the position was saved for other settings or another version of the file",
                self.path.display()
            )));
        }
        self.restart(position.epoch)?;
        for _ in 0..position.examples_in_epoch {
            if self.draw()?.is_none() {
                return Err(DataError::PositionMismatch(format!(
                    "{}: epoch {} has fewer than {} examples",
                    self.path.display(),
                    position.epoch,
                    position.examples_in_epoch
                )));
            }
        }
        self.batches_in_epoch = position.examples_in_epoch.div_ceil(self.config.batch_size as u64);
        Ok(())
    }

    /// The next batch of the current epoch, or `None` when it is over (the loader then moves to
    /// the start of the next epoch).
    pub fn next_batch_in_epoch(&mut self) -> Result<Option<Batch>> {
        let mut rows = Vec::with_capacity(self.config.batch_size);
        while rows.len() < self.config.batch_size {
            match self.draw()? {
                Some(e) => rows.push(e),
                None => break,
            }
        }
        let complete = rows.len() == self.config.batch_size;
        if rows.is_empty() || (!complete && self.config.drop_last) {
            let had_batches = self.batches_in_epoch > 0;
            let skipped = self.source.skipped_too_long;
            self.restart(self.epoch + 1)?;
            if !had_batches {
                return Err(DataError::EmptyDataset {
                    path: self.path.clone(),
                    detail: format!(
                        "an epoch yields no batch ({} examples read, {skipped} skipped as too long, \
                         batch size {}, drop_last {})",
                        rows.len(),
                        self.config.batch_size,
                        self.config.drop_last
                    ),
                });
            }
            return Ok(None);
        }
        self.batches_in_epoch += 1;
        collate(&rows, &self.config.padding).map(Some)
    }

    /// The next batch, starting a new epoch when one ends (training by steps).
    pub fn next_batch(&mut self) -> Result<Batch> {
        match self.next_batch_in_epoch()? {
            Some(batch) => Ok(batch),
            None => self.next_batch_in_epoch()?.ok_or_else(|| DataError::EmptyDataset {
                path: self.path.clone(),
                detail: "an epoch yields no batch".into(),
            }),
        }
    }

    fn restart(&mut self, epoch: u64) -> Result<()> {
        self.source = ExampleSource::open(&self.path, self.format, self.tokenizer.as_ref(), &self.encode)?;
        self.buffer.clear();
        self.rng = SplitMix64::for_stream(self.config.seed, epoch);
        self.epoch = epoch;
        self.examples_in_epoch = 0;
        self.batches_in_epoch = 0;
        Ok(())
    }

    /// The next example of the epoch: straight from the file, or drawn from the shuffle buffer.
    fn draw(&mut self) -> Result<Option<Example>> {
        let example = if self.config.shuffle_buffer <= 1 {
            self.source.next_example()?
        } else {
            while self.buffer.len() < self.config.shuffle_buffer {
                match self.source.next_example()? {
                    Some(e) => self.buffer.push(e),
                    None => break,
                }
            }
            if self.buffer.is_empty() {
                None
            } else {
                let pick = self.rng.below(self.buffer.len() as u64) as usize;
                Some(self.buffer.swap_remove(pick))
            }
        };
        if example.is_some() {
            self.examples_in_epoch += 1;
        }
        Ok(example)
    }
}

fn fingerprint(file_size: u64, encode: &EncodeConfig, config: &StreamConfig) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    // JSON, not `Debug`: its text is stable across compiler versions, and positions are saved.
    let text = format!(
        "{file_size}|{}|{}",
        serde_json::to_string(encode).unwrap_or_default(),
        serde_json::to_string(config).unwrap_or_default()
    );
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
