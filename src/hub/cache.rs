//! One repository's folder in the hub cache, laid out as `huggingface_hub` lays it
//! out: blobs, snapshot links into them, refs and lock files.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{is_commit_hash, is_safe_component, HubRepo};

/// One repository's folder in the hub cache.
pub(super) struct RepoCache {
    pub(super) root: PathBuf,
    folder: String,
}

impl RepoCache {
    pub(super) fn new(cache_dir: &Path, repo: &HubRepo) -> Self {
        let folder = format!("models--{}", repo.repo_id.replace('/', "--"));
        RepoCache {
            root: cache_dir.join(&folder),
            folder,
        }
    }

    pub(super) fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub(super) fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub(super) fn snapshot_path(&self, commit: &str, path: &str) -> PathBuf {
        self.snapshots().join(commit).join(path)
    }

    /// The commit a revision stands for: itself if it is a hash, else the ref.
    fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let commit = fs::read_to_string(self.root.join("refs").join(revision)).ok()?;
        let commit = commit.trim().to_string();
        is_safe_component(&commit).then_some(commit)
    }

    pub(super) fn cached_file(&self, revision: &str, path: &str) -> Option<PathBuf> {
        let snapshot = self.snapshot_path(&self.commit_of(revision)?, path);
        snapshot.exists().then_some(snapshot)
    }

    pub(super) fn cached_listing(&self, revision: &str) -> Result<(String, Vec<String>)> {
        let dir = self
            .commit_of(revision)
            .map(|c| (self.snapshots().join(&c), c));
        let Some((dir, commit)) = dir.filter(|(dir, _)| dir.is_dir()) else {
            bail!(
                "revision {revision} has no snapshot in the local cache {}",
                self.root.display()
            );
        };
        let mut files = Vec::new();
        list_dir(&dir, "", &mut files)?;
        files.sort();
        Ok((commit, files))
    }

    /// Records what the revision resolved to, so offline runs can find it; a commit
    /// hash needs no ref, as in `huggingface_hub`.
    pub(super) fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit || self.commit_of(revision).as_deref() == Some(commit) {
            return Ok(());
        }
        let path = self.root.join("refs").join(revision);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, commit).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Takes the same lock file as `huggingface_hub`, so that neither tool writes
    /// a blob another process is downloading; the OS drops it if we die.
    pub(super) fn lock(&self, cache_dir: &Path, etag: &str) -> Result<File> {
        fs::create_dir_all(self.blobs())
            .with_context(|| format!("cannot create {}", self.blobs().display()))?;
        let dir = cache_dir.join(".locks").join(&self.folder);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{etag}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(file)
    }
}

fn list_dir(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}{name}");
        // `is_dir` follows symlinks, and snapshot entries are symlinks to blobs.
        if entry.path().is_dir() {
            list_dir(&entry.path(), &format!("{rel}/"), out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// Points `snapshot` at `blob` with a relative symlink, as `huggingface_hub` does,
/// so the cache survives being moved; copies where symlinks are not available.
pub(super) fn link_snapshot(blob: &Path, snapshot: &Path, path: &str) -> Result<()> {
    let parent = snapshot
        .parent()
        .ok_or_else(|| anyhow!("snapshot path {} has no parent", snapshot.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    // A dangling link left by a deleted blob would make the new link fail.
    if fs::symlink_metadata(snapshot).is_ok() {
        fs::remove_file(snapshot)
            .with_context(|| format!("cannot replace {}", snapshot.display()))?;
    }
    let depth = path.split('/').count() + 1;
    let mut target = PathBuf::from("../".repeat(depth));
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    match symlink(&target, snapshot) {
        Ok(()) => Ok(()),
        // Copying only onto an empty spot: a copy onto a link would overwrite the blob.
        Err(_) if fs::symlink_metadata(snapshot).is_err() => fs::copy(blob, snapshot)
            .map(drop)
            .with_context(|| format!("cannot copy {} to {}", blob.display(), snapshot.display())),
        Err(e) => Err(e).with_context(|| format!("cannot link {}", snapshot.display())),
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}
