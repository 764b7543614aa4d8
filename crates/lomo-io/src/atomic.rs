//! Durable atomic writes: a file (or a directory) appears under its name whole or not at all,
//! and once a write returns it survives a power cut.
//!
//! A file is written to `NAME.tmp` beside it, synced, renamed over `NAME`, and the directory
//! synced: the rename makes the replacement atomic for readers, and the two syncs make it
//! durable (without the first a crash can leave `NAME` empty, without the second the rename
//! itself can be lost). A temporary file that was never put in place is removed when its
//! handle is dropped; one left by a killed process keeps the `.tmp` suffix, which is how the
//! callers recognise it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// What [`tmp_path`] appends to a file name.
pub const TMP_SUFFIX: &str = ".tmp";

/// Writing, syncing or renaming `path` failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    /// The file or directory the operating system refused.
    pub path: PathBuf,
    /// What it said.
    #[source]
    pub source: std::io::Error,
}

impl WriteError {
    /// The error `source` about `path`.
    pub fn new(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self { path: path.into(), source }
    }
}

/// The temporary name `path` is written under: `NAME.tmp` in the same directory, so that the
/// rename stays within one file system. A path without a file name (`/`, `..`) is an error.
pub fn tmp_path(path: &Path) -> Result<PathBuf, WriteError> {
    let name = path.file_name().ok_or_else(|| {
        WriteError::new(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))
    })?;
    let mut name = name.to_os_string();
    name.push(TMP_SUFFIX);
    Ok(path.with_file_name(name))
}

/// The directory `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Syncs directory `dir`, which makes the renames and removals done in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| WriteError::new(dir, e))
}

/// A file being written under its temporary name; [`AtomicFile::commit`] puts it in place.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    staged: Staged,
}

impl AtomicFile {
    /// Creates (or truncates) `path`'s temporary file.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self, WriteError> {
        let path = path.into();
        let tmp = tmp_path(&path)?;
        let file = File::create(&tmp).map_err(|e| WriteError::new(&tmp, e))?;
        Ok(Self { file, staged: Staged { path, tmp, placed: false } })
    }

    /// The open temporary file, to write into (`&File` is `Write` and `FileExt`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The temporary file's path, for errors about writing into it.
    pub fn tmp_path(&self) -> &Path {
        &self.staged.tmp
    }

    /// Syncs the temporary file's data, without putting it in place yet: for several files
    /// that are renamed together ([`commit_all`]) once all of them are on disk.
    pub fn sync(self) -> Result<Staged, WriteError> {
        self.file.sync_all().map_err(|e| WriteError::new(&self.staged.tmp, e))?;
        Ok(self.staged)
    }

    /// Syncs the file, renames it over its name and syncs the directory.
    pub fn commit(self) -> Result<(), WriteError> {
        self.sync()?.commit()
    }
}

/// A synced temporary file waiting for its rename; removed if dropped before it.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    tmp: PathBuf,
    placed: bool,
}

impl Staged {
    /// Renames the file over its name and syncs the directory.
    pub fn commit(self) -> Result<(), WriteError> {
        let dir = parent(&self.path).to_path_buf();
        self.rename()?;
        sync_dir(&dir)
    }

    fn rename(mut self) -> Result<(), WriteError> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| WriteError::new(&self.path, e))?;
        self.placed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.placed {
            // The write failed or was abandoned: its error is what the caller reports, and a
            // temporary file that cannot be removed is only clutter under a `.tmp` name.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Puts synced files in place, in order, then syncs each directory they are in once. A
/// failed rename leaves the files before it in place and removes the ones after it.
pub fn commit_all(files: Vec<Staged>) -> Result<(), WriteError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for file in files {
        let dir = parent(&file.path).to_path_buf();
        file.rename()?;
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs.iter().try_for_each(|dir| sync_dir(dir))
}

/// Writes `path` from `write` (which gets a 1 MiB buffer over the temporary file) and syncs
/// it, without putting it in place: see [`commit_all`]. `E` is the caller's error, which the
/// buffer's and the sync's errors convert into.
pub fn stage_with<E: From<WriteError>>(
    path: impl Into<PathBuf>,
    write: impl FnOnce(&mut BufWriter<&File>) -> Result<(), E>,
) -> Result<Staged, E> {
    let file = AtomicFile::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file.file());
    write(&mut out)?;
    out.flush().map_err(|e| WriteError::new(file.tmp_path(), e))?;
    drop(out);
    Ok(file.sync()?)
}

/// Writes `path` durably and atomically from `write` (see [`stage_with`]).
pub fn write_with<E: From<WriteError>>(
    path: impl Into<PathBuf>,
    write: impl FnOnce(&mut BufWriter<&File>) -> Result<(), E>,
) -> Result<(), E> {
    Ok(stage_with(path, write)?.commit()?)
}

/// Writes `bytes` to `path` durably and atomically.
pub fn write(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> Result<(), WriteError> {
    let file = AtomicFile::create(path.as_ref())?;
    file.file().write_all(bytes.as_ref()).map_err(|e| WriteError::new(file.tmp_path(), e))?;
    file.commit()
}

/// Syncs the files directly in `dir`, then `dir` itself: what was written there with plain
/// writes is on disk, under the names it has, once this returns.
pub fn sync_files(dir: &Path) -> Result<(), WriteError> {
    for entry in std::fs::read_dir(dir).map_err(|e| WriteError::new(dir, e))? {
        let path = entry.map_err(|e| WriteError::new(dir, e))?.path();
        if path.is_file() {
            File::open(&path).and_then(|f| f.sync_all()).map_err(|e| WriteError::new(&path, e))?;
        }
    }
    sync_dir(dir)
}

/// Puts the directory `staged` (already complete, in the same parent as `dir`) in place of
/// `dir`, durably: the files directly in `staged` and `staged` itself are synced, an existing
/// `dir` is renamed to `aside`, `staged` is renamed to `dir`, the parent is synced, and `aside`
/// is removed last. A crash leaves `dir` whole, old or new, or only `aside` (the old one,
/// which the caller restores by renaming it back).
///
/// Subdirectories of `staged` are not synced: what the caller writes is files; directories it
/// moves into `staged` were durable where they came from.
pub fn replace_dir(staged: &Path, dir: &Path, aside: &Path) -> Result<(), WriteError> {
    sync_files(staged)?;
    if dir.exists() {
        std::fs::rename(dir, aside).map_err(|e| WriteError::new(dir, e))?;
    }
    std::fs::rename(staged, dir).map_err(|e| WriteError::new(dir, e))?;
    sync_dir(parent(dir))?;
    if aside.exists() {
        std::fs::remove_dir_all(aside).map_err(|e| WriteError::new(aside, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lomo-io-atomic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = scratch("write");
        let path = dir.join("a.json");
        write(&path, "old").unwrap();
        write(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(names(&dir), ["a.json"]);
        assert_eq!(tmp_path(&path).unwrap(), dir.join("a.json.tmp"));
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = scratch("failed");
        let path = dir.join("a.bin");
        write(&path, "old").unwrap();
        let err = write_with(&path, |out| {
            out.write_all(b"half").map_err(|e| WriteError::new("a.bin", e))?;
            Err(WriteError::new("a.bin", std::io::Error::other("the data ran out")))
        })
        .unwrap_err();
        assert!(err.to_string().contains("the data ran out"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(names(&dir), ["a.bin"]);
    }

    #[test]
    fn staged_files_appear_together() {
        let dir = scratch("staged");
        let a = stage_with::<WriteError>(dir.join("a"), |out| out.write_all(b"1").map_err(|e| WriteError::new("a", e)))
            .unwrap();
        let b = stage_with::<WriteError>(dir.join("b"), |out| out.write_all(b"2").map_err(|e| WriteError::new("b", e)))
            .unwrap();
        assert_eq!(names(&dir), ["a.tmp", "b.tmp"]);
        commit_all(vec![a, b]).unwrap();
        assert_eq!(names(&dir), ["a", "b"]);
        assert_eq!(std::fs::read_to_string(dir.join("b")).unwrap(), "2");
    }

    #[test]
    fn an_error_names_the_path() {
        let dir = scratch("error");
        let err = write(dir.join("missing").join("a.txt"), "x").unwrap_err();
        assert!(err.to_string().contains("missing/a.txt.tmp"), "{err}");
        assert!(write(Path::new("/"), "x").unwrap_err().to_string().contains("not a file name"));
    }

    #[test]
    fn a_directory_is_replaced_whole() {
        let root = scratch("dir");
        let (dir, staged, aside) = (root.join("ckpt"), root.join(".ckpt.tmp"), root.join(".ckpt.old"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("old.txt"), "old").unwrap();
        std::fs::create_dir(&staged).unwrap();
        std::fs::write(staged.join("new.txt"), "new").unwrap();
        replace_dir(&staged, &dir, &aside).unwrap();
        assert_eq!(names(&root), ["ckpt"]);
        assert_eq!(names(&dir), ["new.txt"]);
        // With nothing to replace, the staged directory simply takes the name.
        std::fs::create_dir(&staged).unwrap();
        replace_dir(&staged, &root.join("fresh"), &aside).unwrap();
        assert_eq!(names(&root), ["ckpt", "fresh"]);
    }
}
