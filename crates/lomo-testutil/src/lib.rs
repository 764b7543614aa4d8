//! Test support shared by the workspace's test trees.
//!
//! Tests read files that came from elsewhere (models, datasets, reference tensors) from the
//! project's shared folder, never from the repository: `$LOMO_SHARED`, or `shared/` beside the
//! checkout. A missing file skips the test with a note saying where to get it, and fails it
//! when `CI` is set (a skipped test must not pass CI).

use std::path::{Path, PathBuf};

/// The shared folder: `$LOMO_SHARED`, else `../shared` beside the workspace root.
pub fn shared_root() -> PathBuf {
    match std::env::var_os("LOMO_SHARED") {
        Some(dir) => PathBuf::from(dir),
        // crates/lomo-testutil -> crates -> workspace root -> its parent holds shared/.
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// `relative` inside the shared folder, or `None` after saying on stderr where to get it.
///
/// # Panics
/// When the file is missing and `CI` is set.
pub fn shared(relative: &str) -> Option<PathBuf> {
    let path = shared_root().join(relative);
    if path.exists() {
        return Some(path);
    }
    let note = format!(
        "{} is missing: the project's shared files (see shared/README.md) belong in ../shared \
         beside the workspace root, or in the folder $LOMO_SHARED names",
        path.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{note}");
    }
    eprintln!("skipping: {note}");
    None
}
