//! Result files are written whole or not at all: into a temporary file beside the
//! target, then renamed over it, so an interrupted run never leaves half a file. The
//! temporary files of killed runs are removed by the next write into their folder,
//! and a lock keeps two runs from writing the same result.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::io::faults::pause_at;

/// The temporary name of `name` while process `pid` writes it.
fn partial_name(name: &str, pid: u32) -> String {
    format!(".{name}.partial-{pid}")
}

/// The process that was writing a temporary file, from its name.
fn partial_pid(name: &str) -> Option<u32> {
    name.strip_prefix('.')?
        .rsplit_once(".partial-")?
        .1
        .parse()
        .ok()
}

/// Whether process `pid` may still be running. Without `/proc` there is no telling,
/// and keeping a stray file is the safe mistake.
fn may_be_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Removes the temporary files in `dir` whose writer is gone (killed mid-write);
/// those of live runs, this one included, stay.
fn remove_stale_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(pid) = partial_pid(&name.to_string_lossy()) {
            if !may_be_running(pid) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes `path` atomically with whatever `write` puts into the temporary file.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (dir, name) = make_parent(path)?;
    remove_stale_partials(&dir);
    let tmp = dir.join(partial_name(&name, std::process::id()));
    let result = write(&tmp).and_then(|()| {
        pause_at("write", &path.to_string_lossy());
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move the result into {}", path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fails at once when `path` cannot take a file, so that a long run does not end by
/// failing to write: an existing directory, a parent that is a file, or a directory
/// that refuses new files.
pub fn check_destination(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!(
            "{} is a directory; give the output a file name",
            path.display()
        );
    }
    // The nearest existing ancestor is where `write_atomic` will create the rest.
    let mut dir = parent_or_cwd(path);
    while !dir.exists() {
        dir = parent_or_cwd(dir);
    }
    if !dir.is_dir() {
        bail!(
            "cannot write {}: {} is not a directory",
            path.display(),
            dir.display()
        );
    }
    let probe = dir.join(format!(".harness-probe-{}", std::process::id()));
    std::fs::File::create(&probe).with_context(|| {
        format!(
            "cannot write {}: cannot create files in {}",
            path.display(),
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The directory holding `path`, `.` for a bare file name.
fn parent_or_cwd(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes bytes to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        let mut f = std::fs::File::create(tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    })
}

/// A claim on writing one file, held until dropped or until the process ends,
/// however it ends: the operating system releases the lock of a killed process.
#[derive(Debug)]
pub struct WriteLock {
    _file: File,
}

/// Claims `path` for this process, or fails at once, naming the process that holds
/// it. The lock file lives in `lock_dir`, named by a digest of `path` made absolute,
/// so that a run which fails before writing leaves nothing where its results would
/// go; it stays when released, since removing it would race with a run opening it.
pub fn lock_for_writing(path: &Path, lock_dir: &Path) -> Result<WriteLock> {
    std::fs::create_dir_all(lock_dir)
        .with_context(|| format!("cannot create {}", lock_dir.display()))?;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let digest = Sha256::digest(absolute.to_string_lossy().as_bytes());
    let lock = lock_dir.join(format!("{digest:x}.lock"));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .with_context(|| format!("cannot open the lock {}", lock.display()))?;
    match file.try_lock() {
        Ok(()) => {
            // Only the holder rewrites the file, so the pid read by a loser is current.
            file.set_len(0)?;
            write!(file, "{}", std::process::id())?;
            Ok(WriteLock { _file: file })
        }
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "another harness run (pid {}) is writing {}; wait for it to finish or choose another --out",
                holder.trim(),
                path.display()
            )
        }
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", lock.display()))
        }
    }
}

/// A file's folder (`.` for a bare name), created if missing, and its name.
fn make_parent(path: &Path) -> Result<(PathBuf, String)> {
    let dir = parent_or_cwd(path).to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("harness-atomic-{}", std::process::id()));
        let target = dir.join("out.json");
        let err = write_atomic(&target, |tmp| {
            std::fs::write(tmp, b"half")?;
            anyhow::bail!("interrupted")
        });
        assert!(err.is_err());
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        write_bytes_atomic(&target, b"whole").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn partials_of_dead_writers_go_and_those_of_live_ones_stay() {
        let dir = std::env::temp_dir().join(format!("harness-partials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let stale = dir.join(partial_name("a.json", dead_pid));
        let busy = dir.join(partial_name("b.json", live.id()));
        let own = dir.join(partial_name("c.json", std::process::id()));
        for f in [&stale, &busy, &own] {
            std::fs::write(f, b"half").unwrap();
        }
        write_bytes_atomic(&dir.join("d.json"), b"whole").unwrap();
        assert!(!stale.exists(), "a killed run's partial was left");
        assert!(
            busy.exists() && own.exists(),
            "a live run's partial was removed"
        );
        live.kill().unwrap();
        live.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("harness-lock-{}", std::process::id()));
        let target = dir.join("mr.json");
        let locks = dir.join("locks");
        let first = lock_for_writing(&target, &locks).unwrap();
        let err = lock_for_writing(&target, &locks).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("mr.json"),
            "{err}"
        );
        assert!(!dir.join("mr.json").exists() && !dir.join(".mr.json.lock").exists());
        drop(first);
        lock_for_writing(&target, &locks).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
