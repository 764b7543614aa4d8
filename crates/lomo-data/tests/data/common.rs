//! Finding the shared test files, and temporary files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use lomo_data::TextTokenizer;

pub use lomo_testutil::shared as shared_file;

/// Returns from the test (a skip) when the shared file is missing.
#[macro_export]
macro_rules! shared {
    ($relative:expr) => {
        match $crate::data::common::shared_file($relative) {
            Some(path) => path,
            None => return,
        }
    };
}

/// The stories260K tokenizer, or a skip.
#[macro_export]
macro_rules! stories_tokenizer {
    () => {
        lomo_data::TextTokenizer::from_file($crate::shared!("models/stories260K/tokenizer.json"))
            .expect("stories260K tokenizer loads")
    };
}

/// A fresh file in the temporary directory holding `contents`, named `name` (the name shows in
/// error messages, so tests can check it).
pub fn temp_file(name: &str, contents: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lomo-data-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// Decodes the supervised tokens of an example (labels that are not -100).
pub fn supervised_text(tokenizer: &TextTokenizer, example: &lomo_data::Example) -> String {
    let ids: Vec<u32> = example.labels.iter().filter(|&&l| l != lomo_data::IGNORE_INDEX).map(|&l| l as u32).collect();
    tokenizer.decode(&ids, false).expect("decode")
}
