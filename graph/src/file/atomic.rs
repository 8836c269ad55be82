//! Atomic writes: a temporary beside the target renamed into place under the commit lock, and
//! the registry of temporaries that a signal handler removes.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Temporary files and folders that exist only while a write is in progress: a signal handler
/// removes them (see [`remove_temporaries`]), so an interrupted export leaves nothing behind.
/// Lock order: [`COMMITS`] before this one.
static TEMPORARIES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn temporaries() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    TEMPORARIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many outputs (files, pairs, folders that the caller asked for, not temporaries) this
/// process has put in place; its lock is the one that [`commit_lock`] takes.
static COMMITS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// The one lock that putting outputs in place and a signal handler share. Every rename that
/// puts an output in place (a [`Staged`] file, a model and its data, a folder's swap), and the
/// making of every temporary, happens while holding it; a signal handler takes it before it
/// removes the temporaries and holds it until the process ends. So a signal that lands during a
/// commit waits for it to end, no commit starts once the handler runs, and the handler sees
/// every output either as it was or in place, as [`CommitLock::outputs_in_place`] says.
pub struct CommitLock(std::sync::MutexGuard<'static, usize>);

/// Takes the commit lock (see [`CommitLock`]), waiting for a commit in progress.
pub fn commit_lock() -> CommitLock {
    CommitLock(COMMITS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

impl CommitLock {
    /// Records that an output the caller asked for is now in place.
    pub fn output_in_place(&mut self) {
        *self.0 += 1;
    }

    /// How many outputs this process has put in place so far.
    pub fn outputs_in_place(&self) -> usize {
        *self.0
    }
}

/// Records a temporary path, to be removed by [`remove_temporaries`] if the process is stopped.
/// A path made after it is recorded could be made after a signal handler removed what was
/// recorded: make temporaries with [`create_temporary_dir`] or [`Staged::write`], which record
/// and make them under the commit lock.
pub fn register_temporary(path: &Path) {
    temporaries().push(path.to_path_buf());
}

/// Makes the folder `path` (its parent must exist) and records it as a temporary, in one step
/// as a signal handler sees it. A stale folder of the same name (a process of the same id that
/// was killed) is removed first.
pub fn create_temporary_dir(path: &Path) -> Result<()> {
    let _held = commit_lock();
    register_temporary(path);
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir(path).map_err(|error| {
        unregister_temporary(path);
        Error::Io { path: path.to_path_buf(), error }
    })
}

/// Forgets a temporary path (it was renamed into place, or removed).
pub fn unregister_temporary(path: &Path) {
    temporaries().retain(|p| p != path);
}

/// Whether `path` lies inside a registered temporary folder (a file written there is staged,
/// not an output in place).
fn inside_temporary(path: &Path) -> bool {
    temporaries().iter().any(|t| path.starts_with(t) && path != t)
}

/// Removes every registered temporary file or folder: for a signal handler, holding the commit
/// lock until the process ends (so nothing is put in place from the temporaries it removes).
pub fn remove_temporaries(_held: &CommitLock) {
    for path in temporaries().drain(..) {
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        // The main thread may still be writing into the folder (a file made between the
        // listing and the removal of its folder): remove again until it is gone. Nothing
        // makes the folder itself again (see `create_temporary_dir`), so this ends.
        for _ in 0..1000 {
            match std::fs::remove_dir_all(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => continue,
                _ => break,
            }
        }
    }
}

/// Where a write to `path` lands, checked before any work is done: a new path, or an existing
/// regular file; a symlink is followed, so its target is replaced (in the target's folder) and
/// the link stays. A dangling symlink, devices, folders, FIFOs and the like are refused.
pub fn output_target(path: &Path) -> Result<PathBuf> {
    let refuse = |why: String| Error::Io {
        path: path.to_path_buf(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    };
    let mut target = path.to_path_buf();
    let mut followed = false;
    // A chain of links, each resolved against the folder it lives in.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&target)
                    .map_err(|error| Error::Io { path: target.clone(), error })?;
                target = target.parent().unwrap_or(Path::new("")).join(link);
                followed = true;
            }
            Ok(meta) if meta.is_file() => return Ok(target),
            Ok(_) => {
                return Err(refuse(
                    "exists and is not a regular file: gptc replaces only files".into(),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Writing through a dangling link would make a file the user never named.
                if followed {
                    let to = target.display();
                    return Err(refuse(format!("is a symlink to {to}, which does not exist")));
                }
                if target.file_name().is_none() {
                    return Err(refuse("not a file path".into()));
                }
                return Ok(target);
            }
            Err(error) => return Err(Error::Io { path: target, error }),
        }
    }
    Err(refuse("too many levels of symbolic links".into()))
}

/// A file being written beside its target, under a hidden temporary name; [`Staged::commit`]
/// renames it over the target (keeping an existing target's permissions). Dropped uncommitted,
/// it is removed, so a failed write never leaves a partial file under either name.
pub struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staged {
    /// Writes `path`'s new contents with `fill` into the temporary file.
    pub fn write(
        path: &Path,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<Staged> {
        let target = output_target(path)?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
        let io_err = |error| Error::Io { path: path.to_path_buf(), error };
        // Recorded and made in one step as a signal handler sees it (see `CommitLock`).
        let (staged, created) = {
            let _held = commit_lock();
            register_temporary(&tmp);
            let created = std::fs::File::create(&tmp);
            (Staged { tmp, target, committed: false }, created)
        };
        let mut out = BufWriter::with_capacity(1 << 20, created.map_err(io_err)?);
        fill(&mut out).map_err(io_err)?;
        let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
        if let Ok(meta) = std::fs::metadata(&staged.target) {
            file.set_permissions(meta.permissions()).map_err(io_err)?;
        }
        Ok(staged)
    }

    /// Puts the new file in place, under the commit lock.
    pub fn commit(self) -> Result<()> {
        self.commit_under(&mut commit_lock())
    }

    /// Puts the new file in place, under a commit lock the caller holds (to put several files
    /// in place as one step, as a signal handler sees it).
    pub fn commit_under(mut self, held: &mut CommitLock) -> Result<()> {
        std::fs::rename(&self.tmp, &self.target)
            .map_err(|error| Error::Io { path: self.target.clone(), error })?;
        self.committed = true;
        if !inside_temporary(&self.target) {
            held.output_in_place();
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
        unregister_temporary(&self.tmp);
    }
}

/// Writes a file atomically: `fill` writes into a temporary file beside `path`, which is renamed
/// over `path` only when everything was written (see [`Staged`]).
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    Staged::write(path, fill)?.commit()
}

/// A private folder in the temp dir, registered as a temporary (a signal removes it) and
/// removed with everything in it when dropped.
pub struct StagingDir(pub PathBuf);

impl StagingDir {
    pub fn new() -> Result<StagingDir> {
        let dir = std::env::temp_dir().join(format!("gptc-{}", std::process::id()));
        create_temporary_dir(&dir)?;
        Ok(StagingDir(dir))
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        unregister_temporary(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("gptc-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("m.onnx");
        let err = write_atomically(&target, |out| {
            out.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
