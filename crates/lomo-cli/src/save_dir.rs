//! Putting a checkpoint directory in place so that a kill at any moment loses none, and
//! recovering what a killed save left at the next start.
//!
//! A save writes the checkpoint into `.NAME.tmp-PID` beside `NAME`, syncs it, and marks it
//! complete ([`COMPLETE`], written last and durably). From then on the save is as good as done:
//! what else lives in `NAME` (the run's `step-N` checkpoints, its log) is moved into the
//! temporary directory, `NAME` is moved aside to `.NAME.old-PID`, the temporary directory takes
//! its name, and the old one is removed ([`finish`]). A kill leaves one of these states, and
//! [`prepare`] (every run's first step) turns each into a whole checkpoint again:
//! - a temporary directory without the mark: the save never finished writing, and nothing had
//!   been moved into it yet: it is removed, `NAME` is as it was;
//! - a temporary directory with the mark: the save is finished for it (whatever of `NAME` it
//!   had not taken yet is moved in, then the swap), so no `step-N` it carries is lost;
//! - `.NAME.old-PID` alone, `NAME` missing: the swap was interrupted before the new one was
//!   complete, so the old one is put back; beside a `NAME`, it is removed;
//! - `.NAME.del-PID`: a checkpoint being deleted ([`remove`], the rotation of `step-N`), which
//!   takes that name before its first file goes, so that a kill never leaves part of one under
//!   its own name: the rest of it is removed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A checkpoint's training state (step, data position, …): the file that makes a directory a
/// checkpoint `--resume` can continue from.
pub const STATE_FILE: &str = "trainer_state.json";

/// The mark of a temporary checkpoint directory whose files are all written and synced.
pub const COMPLETE: &str = ".lomo-save-complete";

/// The temporary directory a save by this process writes `dir` into, beside it.
pub fn staging_dir(dir: &Path) -> Result<PathBuf> {
    let name = dir.file_name().with_context(|| format!("--save {}: not a directory name", dir.display()))?;
    Ok(parent(dir).join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id())))
}

fn parent(dir: &Path) -> &Path {
    dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Marks `staged` complete: its files synced, then the mark written durably.
pub fn mark_complete(staged: &Path) -> Result<()> {
    lomo_io::atomic::sync_files(staged)?;
    lomo_io::atomic::write(staged.join(COMPLETE), b"")?;
    Ok(())
}

/// Puts the complete checkpoint `staged` in place of `dir`: what else lives in `dir` (periodic
/// `step-N` checkpoints, `--log` and its chart, the user's own files) is carried into `staged`
/// first, only the checkpoint's own files being replaced; then the swap, through `aside`.
pub fn finish(staged: &Path, dir: &Path, aside: &Path) -> Result<()> {
    if dir.is_dir() {
        // An open log keeps writing to its file, which a rename does not change.
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let name = entry.file_name();
            if !staged.join(&name).exists() {
                std::fs::rename(entry.path(), staged.join(&name))
                    .with_context(|| format!("moving {}", entry.path().display()))?;
            }
        }
    }
    lomo_io::atomic::replace_dir(staged, dir, aside)
        .with_context(|| format!("putting the checkpoint {} in place", dir.display()))?;
    match std::fs::remove_file(dir.join(COMPLETE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.join(COMPLETE).display()))
        }
        _ => Ok(()),
    }
}

/// Makes sure `--save DIR` can be written before anything is trained, and recovers what a
/// killed save left behind, beside `DIR` and (for its `step-N` checkpoints) inside it. Entries
/// of a `lomo` process still running are left alone. Returns notes to print.
pub fn prepare(dir: &Path) -> Result<Vec<String>> {
    let at = |what: &str| format!("--save {}: {what}", dir.display());
    if dir.exists() && !dir.is_dir() {
        bail!("{}", at("exists and is not a directory"));
    }
    let parent = parent(dir);
    let name = dir.file_name().with_context(|| at("not a directory name"))?.to_string_lossy().into_owned();
    std::fs::create_dir_all(parent).with_context(|| at(&format!("cannot create {}", parent.display())))?;
    for place in [Some(parent), dir.is_dir().then_some(dir)].into_iter().flatten() {
        let probe = place.join(format!(".lomo-write-check-{}", std::process::id()));
        std::fs::create_dir(&probe).with_context(|| at(&format!("{} is not writable", place.display())))?;
        std::fs::remove_dir(&probe).with_context(|| at(&format!("removing {}", probe.display())))?;
    }
    let mut notes = recover(parent, |n| n == name)?;
    if dir.is_dir() {
        notes.extend(recover(dir, |n| n.starts_with("step-"))?);
        remove_stray_marks(dir)?;
    }
    Ok(notes)
}

/// Removes the [`COMPLETE`] mark from `dir` and its `step-N` checkpoints: a save killed after
/// its swap but before [`finish`] removed the mark leaves it there, where it means nothing
/// (only a temporary directory's mark does) but would be copied along with the checkpoint.
fn remove_stray_marks(dir: &Path) -> Result<()> {
    let mut checkpoints = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")) && path.is_dir() {
            checkpoints.push(path);
        }
    }
    for mark in checkpoints.iter().map(|c| c.join(COMPLETE)) {
        match std::fs::remove_file(&mark) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", mark.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Deletes the checkpoint `dir` so that a kill at any moment leaves it whole under its name or
/// not there at all: it is renamed to `.NAME.del-PID` (which [`prepare`] removes), the rename
/// made durable, then removed.
pub fn remove(dir: &Path) -> Result<()> {
    let name = dir.file_name().with_context(|| format!("{}: not a directory name", dir.display()))?;
    let doomed = parent(dir).join(format!(".{}.del-{}", name.to_string_lossy(), std::process::id()));
    std::fs::rename(dir, &doomed).with_context(|| format!("removing {}", dir.display()))?;
    lomo_io::atomic::sync_dir(parent(dir))?;
    std::fs::remove_dir_all(&doomed).with_context(|| format!("removing {}", doomed.display()))
}

/// What a killed save left in `place`: its temporary, moved-aside or doomed directory.
struct Leftover {
    path: PathBuf,
    /// The checkpoint's name (`NAME`).
    name: String,
    kind: Kind,
}

/// Which of a save's (or a removal's) directories a leftover is.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `.NAME.tmp-PID`: being written, complete once it holds the mark.
    Staged,
    /// `.NAME.old-PID`: the checkpoint a save replaces, moved aside.
    Aside,
    /// `.NAME.del-PID`: a checkpoint being removed.
    Doomed,
}

/// The leftovers in `place` of dead processes' saves of the names `ours` accepts.
fn leftovers(place: &Path, ours: &impl Fn(&str) -> bool) -> Result<Vec<Leftover>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(place).with_context(|| format!("reading {}", place.display()))? {
        let path = entry.with_context(|| format!("reading {}", place.display()))?.path();
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(rest) = file.strip_prefix('.') else { continue };
        let kinds = [("tmp", Kind::Staged), ("old", Kind::Aside), ("del", Kind::Doomed)];
        let Some((name, kind, pid)) = kinds.iter().find_map(|(suffix, kind)| {
            let (name, pid) = rest.rsplit_once(&format!(".{suffix}-"))?;
            Some((name.to_string(), *kind, pid.parse::<u32>().ok()?))
        }) else {
            continue;
        };
        if ours(&name) && path.is_dir() && !lomo_is_running(pid) {
            found.push(Leftover { path, name, kind });
        }
    }
    Ok(found)
}

/// Recovers the leftovers in `place`: complete saves are finished first (they carry the newest
/// state, and every `step-N` their checkpoint's directory held), then checkpoints moved aside
/// are restored where nothing took their place, and what is left goes.
fn recover(place: &Path, ours: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut found = leftovers(place, &ours)?;
    found.sort_by_key(|l| (l.kind != Kind::Staged || !l.path.join(COMPLETE).exists(), l.kind != Kind::Aside));
    for leftover in found {
        let Leftover { path, name, kind } = leftover;
        let target = place.join(&name);
        if !path.exists() {
            continue;
        }
        if kind == Kind::Staged && path.join(COMPLETE).exists() {
            let ours_aside = place.join(format!(".{name}.old-{}", std::process::id()));
            finish(&path, &target, &ours_aside)
                .with_context(|| format!("finishing the interrupted save of {}", target.display()))?;
            notes.push(format!(
                "finished the interrupted save of {} (its files were complete in {})",
                target.display(),
                path.display()
            ));
        } else if kind == Kind::Aside && !target.exists() {
            std::fs::rename(&path, &target).with_context(|| format!("restoring {}", target.display()))?;
            notes.push(format!(
                "restored {} from an interrupted save (it had been moved aside to {})",
                target.display(),
                path.display()
            ));
        } else {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            let by = if kind == Kind::Doomed { "a removal" } else { "a save" };
            notes.push(format!("removed {}, left by an interrupted {by}", path.display()));
        }
    }
    Ok(notes)
}

/// Whether `pid` is a running `lomo` (Linux: `/proc/PID/comm`; elsewhere, assumed not).
fn lomo_is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim() == "lomo").unwrap_or(false)
}
