//! Batches out of an in-memory [`Dataset`]: shuffling, length bucketing, epochs and steps, and a
//! position that can be saved and resumed exactly.

use serde::{Deserialize, Serialize};

use crate::batching::{collate, Batch, PaddingConfig};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::rng::SplitMix64;

/// How a [`BatchLoader`] forms batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Examples per batch.
    pub batch_size: usize,
    /// Shuffle every epoch (a different order per epoch, all fixed by `seed`).
    pub shuffle: bool,
    /// The seed of every shuffle.
    pub seed: u64,
    /// Drop the last, smaller batch of an epoch.
    pub drop_last: bool,
    /// Length bucketing: within each window of this many batches (of the shuffled order),
    /// sort examples by length before cutting batches, so rows of similar length share a
    /// batch and padding shrinks; the batches are then shuffled again. `None` disables it.
    pub bucket_batches: Option<usize>,
    /// Padding.
    pub padding: PaddingConfig,
}

impl LoaderConfig {
    /// Shuffled batches of `batch_size` with seed 0, no bucketing, the last batch kept.
    pub fn new(batch_size: usize) -> Self {
        Self {
            batch_size,
            shuffle: true,
            seed: 0,
            drop_last: false,
            bucket_batches: None,
            padding: PaddingConfig::default(),
        }
    }
}

/// Where a [`BatchLoader`] is: save it with a checkpoint, and [`BatchLoader::seek`] to it to
/// continue with exactly the batches that would have come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    /// Epochs completed.
    pub epoch: u64,
    /// Batches already taken in the current epoch.
    pub batch_in_epoch: u64,
    /// A hash of the dataset's tokens and the loader configuration, so a position is never
    /// applied to different data or settings by mistake.
    pub fingerprint: u64,
}

/// Batches from a [`Dataset`], by steps ([`BatchLoader::next_batch`], which rolls over epochs)
/// or by epochs ([`BatchLoader::next_batch_in_epoch`]). An epoch's order depends only on the
/// seed and the epoch number, so a position of two integers resumes exactly.
#[derive(Debug, Clone)]
pub struct BatchLoader {
    dataset: Dataset,
    config: LoaderConfig,
    fingerprint: u64,
    epoch: u64,
    batch_in_epoch: u64,
    plan: Vec<Vec<usize>>,
}

impl BatchLoader {
    /// A loader at the start of epoch 0.
    pub fn new(dataset: Dataset, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::InvalidConfig("batch_size must be at least 1".into()));
        }
        if config.bucket_batches == Some(0) {
            return Err(DataError::InvalidConfig("bucket_batches must be at least 1".into()));
        }
        if config.drop_last && dataset.len() < config.batch_size {
            return Err(DataError::InvalidConfig(format!(
                "{}: {} examples do not fill one batch of {} and drop_last is set",
                dataset.source.display(),
                dataset.len(),
                config.batch_size
            )));
        }
        let fingerprint = fingerprint(&dataset, &config);
        let mut loader = Self { dataset, config, fingerprint, epoch: 0, batch_in_epoch: 0, plan: Vec::new() };
        loader.plan = loader.plan_epoch(0);
        Ok(loader)
    }

    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.len()
    }

    /// The current position.
    pub fn position(&self) -> DataPosition {
        DataPosition { epoch: self.epoch, batch_in_epoch: self.batch_in_epoch, fingerprint: self.fingerprint }
    }

    /// Moves to a saved position. Fails if it was saved for other data or settings.
    pub fn seek(&mut self, position: &DataPosition) -> Result<()> {
        if position.fingerprint != self.fingerprint {
            return Err(DataError::PositionMismatch(format!(
                "the position was saved for other data or loader settings (fingerprint {:#x}, \
                 this loader's is {:#x})",
                position.fingerprint, self.fingerprint
            )));
        }
        if position.batch_in_epoch > self.plan.len() as u64 {
            return Err(DataError::PositionMismatch(format!(
                "batch {} of an epoch of {} batches",
                position.batch_in_epoch,
                self.plan.len()
            )));
        }
        if position.epoch != self.epoch {
            self.plan = self.plan_epoch(position.epoch);
            self.epoch = position.epoch;
        }
        self.batch_in_epoch = position.batch_in_epoch;
        Ok(())
    }

    /// The next batch of the current epoch, or `None` when it is over (the loader then moves
    /// to the start of the next epoch).
    pub fn next_batch_in_epoch(&mut self) -> Result<Option<Batch>> {
        let Some(indices) = self.plan.get(self.batch_in_epoch as usize) else {
            self.epoch += 1;
            self.batch_in_epoch = 0;
            self.plan = self.plan_epoch(self.epoch);
            return Ok(None);
        };
        let batch = collate(indices.iter().map(|&i| &self.dataset.examples[i]), &self.config.padding)?;
        self.batch_in_epoch += 1;
        Ok(Some(batch))
    }

    /// The next batch, starting a new epoch when one ends (training by steps).
    pub fn next_batch(&mut self) -> Result<Batch> {
        match self.next_batch_in_epoch()? {
            Some(batch) => Ok(batch),
            // `new` made sure every epoch has at least one batch.
            None => self.next_batch_in_epoch()?.ok_or_else(|| DataError::EmptyDataset {
                path: self.dataset.source.clone(),
                detail: "an epoch yields no batch".into(),
            }),
        }
    }

    /// The batches of `epoch`, as example indices.
    fn plan_epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let batch_size = self.config.batch_size;
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        let mut rng = SplitMix64::for_stream(self.config.seed, epoch);
        if self.config.shuffle {
            rng.shuffle(&mut order);
        }
        if let Some(window) = self.config.bucket_batches {
            for chunk in order.chunks_mut(window * batch_size) {
                // Stable: examples of equal length keep their shuffled order.
                chunk.sort_by_key(|&i| self.dataset.examples[i].len());
            }
        }
        let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
        if self.config.drop_last && batches.last().is_some_and(|b| b.len() < batch_size) {
            batches.pop();
        }
        if self.config.bucket_batches.is_some() && self.config.shuffle {
            // Without this, batch lengths would rise in a saw-tooth within each window.
            rng.shuffle(&mut batches);
        }
        batches
    }
}

/// FNV-1a over the dataset's tokens and the settings that shape the batches. Written out here
/// (not `std::hash`, whose output may change between Rust versions) because it is saved.
fn fingerprint(dataset: &Dataset, config: &LoaderConfig) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |v: u64| {
        for byte in v.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(dataset.len() as u64);
    for example in &dataset.examples {
        feed(example.len() as u64);
        example.input_ids.iter().for_each(|&t| feed(u64::from(t)));
        example.labels.iter().for_each(|&l| feed(l as u64));
    }
    feed(config.batch_size as u64);
    feed(u64::from(config.shuffle));
    feed(config.seed);
    feed(u64::from(config.drop_last));
    feed(config.bucket_batches.map_or(0, |b| b as u64 + 1));
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::Example;

    fn dataset(n: u32) -> Dataset {
        let examples = (0..n).map(|i| Example::all_supervised(vec![i + 1; 1 + (i as usize % 5)])).collect();
        Dataset::from_examples("test", examples).unwrap()
    }

    fn first_tokens(b: &Batch) -> Vec<i64> {
        (0..b.batch_size).map(|r| b.row_input_ids(r)[0]).collect()
    }

    #[test]
    fn an_epoch_visits_every_example_once() {
        let mut loader = BatchLoader::new(dataset(10), LoaderConfig::new(3)).unwrap();
        assert_eq!(loader.batches_per_epoch(), 4);
        let mut seen = Vec::new();
        while let Some(b) = loader.next_batch_in_epoch().unwrap() {
            seen.extend(first_tokens(&b));
        }
        seen.sort();
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
        assert_eq!(loader.position().epoch, 1);
    }

    #[test]
    fn epochs_differ_and_seeds_reproduce() {
        let order = |seed: u64, epochs: usize| {
            let mut config = LoaderConfig::new(10);
            config.seed = seed;
            let mut loader = BatchLoader::new(dataset(10), config).unwrap();
            (0..epochs).map(|_| first_tokens(&loader.next_batch().unwrap())).collect::<Vec<_>>()
        };
        let a = order(5, 2);
        assert_ne!(a[0], a[1]);
        assert_eq!(a, order(5, 2));
        assert_ne!(a, order(6, 2));
    }

    #[test]
    fn a_saved_position_resumes_exactly() {
        let config = LoaderConfig { bucket_batches: Some(2), ..LoaderConfig::new(3) };
        let mut straight = BatchLoader::new(dataset(11), config.clone()).unwrap();
        let mut saved = None;
        let mut after = Vec::new();
        for step in 0..10 {
            if step == 6 {
                let json = serde_json::to_string(&straight.position()).unwrap();
                saved = Some(json);
            }
            let b = straight.next_batch().unwrap();
            if step >= 6 {
                after.push(b);
            }
        }
        let position: DataPosition = serde_json::from_str(&saved.unwrap()).unwrap();
        let mut resumed = BatchLoader::new(dataset(11), config.clone()).unwrap();
        resumed.seek(&position).unwrap();
        for b in after {
            assert_eq!(resumed.next_batch().unwrap(), b);
        }
        let other = BatchLoader::new(dataset(12), config).unwrap();
        assert!(matches!(other.clone().seek(&position), Err(DataError::PositionMismatch(_))));
    }

    #[test]
    fn bucketing_groups_similar_lengths() {
        let plain = LoaderConfig::new(4);
        let bucketed = LoaderConfig { bucket_batches: Some(25), ..LoaderConfig::new(4) };
        let padding = |config: LoaderConfig| {
            let mut loader = BatchLoader::new(dataset(100), config).unwrap();
            let mut pad = 0;
            while let Some(b) = loader.next_batch_in_epoch().unwrap() {
                pad += b.batch_size * b.seq_len - b.num_tokens();
            }
            pad
        };
        // 100 examples of lengths 1..=5, 20 each: one window sorts them all, so each batch
        // holds one length and nothing is padded.
        assert_eq!(padding(bucketed), 0);
        assert!(padding(plain) > 0);
    }

    #[test]
    fn drop_last_and_bad_sizes() {
        let config = LoaderConfig { drop_last: true, ..LoaderConfig::new(3) };
        assert_eq!(BatchLoader::new(dataset(10), config.clone()).unwrap().batches_per_epoch(), 3);
        assert!(BatchLoader::new(dataset(2), config).is_err());
        assert!(BatchLoader::new(dataset(2), LoaderConfig::new(0)).is_err());
    }
}
