//! Model fingerprints: a digest of the bytes a model was actually loaded from, so that
//! caches keyed by it can never serve another model's vectors. Each file's digest is
//! remembered under `$HARNESS_CACHE/fingerprints`, beside the file's size, times and
//! inode, so later runs skip the hash pass unless the file was touched or replaced.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::io::assets::cache_root;
use crate::io::output::write_bytes_atomic;

/// What changes when a file is rewritten or replaced. The change time and inode
/// cannot be set back by the user, so a file with the same stamp has the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    device: u64,
}

impl Stamp {
    fn of(path: &Path) -> Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        #[cfg(unix)]
        let stamp = {
            use std::os::unix::fs::MetadataExt;
            Self {
                size: meta.len(),
                mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
                ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
                inode: meta.ino(),
                device: meta.dev(),
            }
        };
        #[cfg(not(unix))]
        let stamp = {
            let since_epoch = meta
                .modified()?
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Self {
                size: meta.len(),
                mtime_ns: ns(
                    since_epoch.as_secs() as i64,
                    i64::from(since_epoch.subsec_nanos()),
                ),
                ctime_ns: 0,
                inode: 0,
                device: 0,
            }
        };
        Ok(stamp)
    }
}

fn ensure_stamp(path: &Path, stamp: &Stamp) -> Result<()> {
    if Stamp::of(path)? != *stamp {
        bail!(
            "model file {} changed while the model was in use; run again once it is in place",
            path.display()
        );
    }
    Ok(())
}

/// A remembered digest: valid while the file's stamp is unchanged.
#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    path: PathBuf,
    stamp: Stamp,
    sha256: String,
}

/// The files a model was loaded from, stamped as they were while it loaded.
#[derive(Debug)]
pub struct Snapshot {
    files: Vec<(PathBuf, Stamp)>,
    digest: OnceLock<String>,
}

impl Snapshot {
    /// Stamps `files`; take it before loading them.
    pub fn take(files: Vec<PathBuf>) -> Result<Self> {
        let files = files
            .into_iter()
            .map(|f| Stamp::of(&f).map(|s| (f, s)))
            .collect::<Result<_>>()?;
        Ok(Self {
            files,
            digest: OnceLock::new(),
        })
    }

    /// Fails when a file no longer has the stamp it had when the snapshot was taken.
    pub fn check_unchanged(&self) -> Result<()> {
        self.files
            .iter()
            .try_for_each(|(path, stamp)| ensure_stamp(path, stamp))
    }

    /// The digest of the loaded bytes: a single file's own sha256, or the sha256 of
    /// the files' digests. Computed once; the snapshot's model never changes. With
    /// `remember`, digests are looked up and stored under `$HARNESS_CACHE`.
    pub fn digest(&self, remember: bool) -> Result<String> {
        let memo_dir = match remember {
            true => Some(cache_root()?.join("fingerprints")),
            false => None,
        };
        self.digest_remembered_in(memo_dir.as_deref())
    }

    fn digest_remembered_in(&self, memo_dir: Option<&Path>) -> Result<String> {
        if let Some(d) = self.digest.get() {
            return Ok(d.clone());
        }
        let digests = self
            .files
            .iter()
            .map(|(path, stamp)| file_digest(path, stamp, memo_dir))
            .collect::<Result<Vec<_>>>()?;
        let digest = match digests.as_slice() {
            [one] => one.clone(),
            many => format!("{:x}", Sha256::digest(many.join("\n"))),
        };
        Ok(self.digest.get_or_init(|| digest).clone())
    }
}

/// Where the digest of `path` is remembered: named by its canonical path, so the
/// model's own folder, which may be read-only, is never written.
fn remembered_path(path: &Path, memo_dir: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let key = Sha256::digest(canonical.to_string_lossy().as_bytes());
    memo_dir.join(format!("{key:x}.json"))
}

/// The sha256 of `path`, which must still have `stamp`: remembered if it has not
/// changed since it was last hashed, else hashed now and remembered.
fn file_digest(path: &Path, stamp: &Stamp, memo_dir: Option<&Path>) -> Result<String> {
    let memo = memo_dir.map(|dir| remembered_path(path, dir));
    let remembered = memo
        .as_ref()
        .and_then(|m| std::fs::read(m).ok())
        .and_then(|b| serde_json::from_slice::<Remembered>(&b).ok());
    if let Some(r) = remembered.filter(|r| r.stamp == *stamp) {
        return Ok(r.sha256);
    }
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let sha256 = format!("{:x}", hasher.finalize());
    // The hash only describes the loaded model if the file stayed as it was loaded.
    ensure_stamp(path, stamp)?;
    let record = Remembered {
        path: path.to_path_buf(),
        stamp: stamp.clone(),
        sha256: sha256.clone(),
    };
    // Remembering only saves time later, so a read-only cache is no error.
    if let (Some(memo), Ok(json)) = (memo, serde_json::to_vec(&record)) {
        let _ = write_bytes_atomic(&memo, &json);
    }
    Ok(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        format!("{:x}", Sha256::digest(bytes))
    }

    #[test]
    fn a_replaced_file_is_hashed_again_and_a_changed_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("harness-fp-{}", std::process::id()));
        let memo = dir.join("fingerprints");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("model.gguf");
        std::fs::write(&file, b"old weights").unwrap();
        let first = Snapshot::take(vec![file.clone()]).unwrap();
        // Without remembering, nothing is written.
        let unremembered = Snapshot::take(vec![file.clone()]).unwrap();
        assert_eq!(
            unremembered.digest_remembered_in(None).unwrap(),
            sha(b"old weights")
        );
        assert!(!memo.exists());
        assert_eq!(
            first.digest_remembered_in(Some(&memo)).unwrap(),
            sha(b"old weights")
        );
        // A later run trusts the remembered digest while the file is untouched...
        let again = Snapshot::take(vec![file.clone()]).unwrap();
        let record = remembered_path(&file, &memo);
        let mut r: Remembered = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        r.sha256 = "remembered".into();
        std::fs::write(&record, serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(
            again.digest_remembered_in(Some(&memo)).unwrap(),
            "remembered"
        );
        // ...but not once the file is replaced by one of the same size.
        let tmp = dir.join("new");
        std::fs::write(&tmp, b"new weights").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert!(first.check_unchanged().is_err());
        let second = Snapshot::take(vec![file.clone()]).unwrap();
        assert_eq!(
            second.digest_remembered_in(Some(&memo)).unwrap(),
            sha(b"new weights")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
