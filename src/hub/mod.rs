//! Downloads from a Hugging Face hub into a cache laid out exactly like Python
//! `huggingface_hub`'s, so that both tools reuse each other's files.
//!
//! The cache of one repository looks like this:
//!
//! ```text
//! $HF_HUB_CACHE/models--org--name/
//!     blobs/<etag>                        file contents, named by the hub's etag
//!     snapshots/<commit>/<path>           relative symlink into blobs/ (a copy where
//!                                         symlinks are unavailable)
//!     refs/<revision>                     the commit hash the revision last resolved to
//! $HF_HUB_CACHE/.locks/models--org--name/<etag>.lock
//! ```
//!
//! A file's etag is the sha256 of its contents for LFS files and its git blob id
//! otherwise. Downloads go to `blobs/<etag>.incomplete` and are renamed into place
//! only after their length (and, for LFS files, their sha256) checks out; an
//! interrupted LFS download resumes with a range request.
//!
//! Settings come from the environment as in `huggingface_hub`: `HF_ENDPOINT`,
//! `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN` (or its token file) and `HF_HUB_OFFLINE`.
//! `transfer` does the HTTP and the verified downloads, `cache` the folder
//! layout, `settings` the environment; `tests/hub.rs` runs it all against a
//! loopback fake of the hub.
//!
//! # Why not the `hf-hub` crate
//!
//! `hf-hub` 1.0.0 (features `blocking`, `rustls-tls`) was evaluated as a
//! replacement and does not fit:
//!
//! - Its cache download (`download_file_to_cache_network`) writes the GET body
//!   to `<blob>.incomplete` without checking the status, the length or the sha256,
//!   and renames it into `blobs/` regardless; a later call trusts any existing blob.
//!   An error page or a corrupt transfer would become a permanent cached "model"
//!   (read from its source: the corrupt-download test here would get `Ok`).
//! - It never resumes: an interrupted multi-gigabyte download restarts from zero.
//! - It does not read `HF_HUB_OFFLINE` (only a per-call `local_files_only`), has no
//!   call for the dataset viewer's JSON API that `datasets::hf` uses, and lists
//!   files through the paginated `tree` API rather than one revision request.
//! - It pulls reqwest 0.13 next to our 0.12, tokio, `hf-xet` and aws-lc-sys:
//!   adding it grows `Cargo.lock` from 310 to 468 packages.
//!
//! An adapter making up for the first two points would be most of this client
//! again, on top of the dependency; so the client stays, kept to what is used.

mod cache;
mod settings;
mod transfer;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::blocking::Client;
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use cache::{link_snapshot, RepoCache};
use settings::Settings;
use transfer::Unreachable;
/// Everything but RFC 3986's unreserved characters, as Python's
/// `urllib.parse.quote(s, safe="")` encodes: what `huggingface_hub` does to a
/// revision so that it stays one URL segment, and safe for query values too.
pub(crate) const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// The same for file paths, whose slashes stay (`safe="/"`).
const PATH: &AsciiSet = &COMPONENT.remove(b'/');

/// Set by the CLI's `--quiet`. A process-wide switch because downloads happen deep
/// inside model loading, whose callers pass no output options down.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Hides the progress bars of downloads from now on (the CLI's `--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// A model repository on the hub at a given revision (branch, tag or commit hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    /// `org/name`, or a bare `name` for the hub's legacy un-namespaced repositories.
    pub repo_id: String,
    /// Branch, tag or commit hash; `main` by default.
    pub revision: String,
}

impl HubRepo {
    /// A model repository at `main`.
    pub fn model(repo_id: &str) -> Self {
        HubRepo {
            repo_id: repo_id.to_string(),
            revision: "main".to_string(),
        }
    }

    /// The same repository at another revision.
    pub fn at(&self, revision: &str) -> Self {
        HubRepo {
            revision: revision.to_string(),
            ..self.clone()
        }
    }

    /// Parses `org/name` or `org/name@revision`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        let repo = HubRepo::model(id).at(revision);
        repo.validate()
            .with_context(|| format!("cannot parse hub repository {spec:?}"))?;
        Ok(repo)
    }

    /// Checks what goes into URLs and cache paths, since the fields are public and a
    /// revision such as `../x` would otherwise escape the cache directory.
    fn validate(&self) -> Result<()> {
        let parts: Vec<&str> = self.repo_id.split('/').collect();
        let part_ok = |p: &&str| {
            let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            edge(p.chars().next())
                && edge(p.chars().last())
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        ensure!(
            parts.len() <= 2
                && parts.iter().all(part_ok)
                && !self.repo_id.contains("--")
                && !self.repo_id.contains("..")
                && self.repo_id.len() <= 96,
            "invalid repository id {:?}: expected `org/name` made of letters, digits, `-`, `_` and `.`",
            self.repo_id
        );
        ensure!(
            is_relative_path(&self.revision),
            "invalid revision {:?}",
            self.revision
        );
        Ok(())
    }

    /// Quoted as `huggingface_hub` quotes them: the revision as one path segment
    /// (`refs/pr/1` becomes `refs%2Fpr%2F1`), the file path keeping its slashes.
    fn resolve_url(&self, endpoint: &str, path: &str) -> String {
        format!(
            "{endpoint}/{}/resolve/{}/{}",
            self.repo_id,
            utf8_percent_encode(&self.revision, COMPONENT),
            utf8_percent_encode(path, PATH)
        )
    }
}

/// Round-trips with [`HubRepo::parse`], which makes error messages copy-pasteable.
impl fmt::Display for HubRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repo_id, self.revision)
    }
}

/// A client for one hub endpoint and one local cache.
pub struct Hub {
    endpoint: Url,
    cache_dir: PathBuf,
    token: Option<String>,
    offline: bool,
    client: Client,
}

/// Written by hand so that the token never lands in logs.
impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("endpoint", &self.endpoint.as_str())
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .finish()
    }
}

impl Hub {
    /// Configures the hub the way `huggingface_hub` does: `HF_ENDPOINT`, `HF_HOME`
    /// (or `XDG_CACHE_HOME`), `HF_HUB_CACHE`, `HF_TOKEN` (else the token file that
    /// `huggingface-cli login` writes, `$HF_HOME/token` or `HF_TOKEN_PATH`) and
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<Self> {
        let s = Settings::from_lookup(|name| std::env::var(name).ok())?;
        Ok(Hub::new(&s.endpoint, s.cache_dir, s.token)?.offline(s.offline))
    }

    /// A hub at `endpoint` (e.g. `https://huggingface.co`) caching into `cache_dir`
    /// (the equivalent of `HF_HUB_CACHE`), authenticating with `token` if given.
    pub fn new(
        endpoint: &str,
        cache_dir: impl Into<PathBuf>,
        token: Option<String>,
    ) -> Result<Self> {
        let endpoint = Url::parse(endpoint.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                anyhow!(
                    "invalid hub endpoint {endpoint:?}: expected an http(s) URL (see HF_ENDPOINT)"
                )
            })?;
        let client = Client::builder()
            .user_agent(concat!("harness/", env!("CARGO_PKG_VERSION")))
            // Redirects are followed by hand: the hub's own redirect carries the
            // metadata, and the token must not follow a redirect to the CDN.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            // For blocking clients this bounds the wait for headers and for each
            // read, not the whole transfer, so multi-gigabyte files still fit.
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Hub {
            endpoint,
            cache_dir: cache_dir.into(),
            token: token.filter(|t| !t.is_empty()),
            offline: false,
            client,
        })
    }

    /// With `offline` set, only the cache is used and nothing is sent over the
    /// network (what `HF_HUB_OFFLINE=1` selects).
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// The hub cache directory (what `HF_HUB_CACHE` names).
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    fn endpoint_str(&self) -> &str {
        self.endpoint.as_str().trim_end_matches('/')
    }

    /// Returns the snapshot path of `path` in `repo`, downloading it unless the
    /// cache already holds it for the commit the revision resolves to.
    ///
    /// Online, this costs one HEAD request when the file is cached (none when the
    /// revision is a commit hash). If the endpoint cannot be reached the cached copy
    /// for the last known commit of the revision is used, as `huggingface_hub` does.
    pub fn download(&self, repo: &HubRepo, path: &str) -> Result<PathBuf> {
        repo.validate()?;
        ensure!(
            is_relative_path(path),
            "invalid file path {path:?} in {repo}"
        );
        let cache = RepoCache::new(&self.cache_dir, repo);
        let what = format!("{path} in {repo}");
        if self.offline {
            return cache.cached_file(&repo.revision, path).ok_or_else(|| {
                anyhow!(
                    "{what} is not in the local cache {} and HF_HUB_OFFLINE=1 forbids downloading it",
                    cache.root.display()
                )
            });
        }
        if is_commit_hash(&repo.revision) {
            let snapshot = cache.snapshot_path(&repo.revision, path);
            if snapshot.exists() {
                return Ok(snapshot);
            }
        }
        let meta = match self.file_metadata(repo, path, &what) {
            Ok(meta) => meta,
            Err(err) if err.is::<Unreachable>() => {
                return cache.cached_file(&repo.revision, path).ok_or(err)
            }
            Err(err) => return Err(err),
        };
        cache.write_ref(&repo.revision, &meta.commit)?;
        let snapshot = cache.snapshot_path(&meta.commit, path);
        if snapshot.exists() {
            return Ok(snapshot);
        }
        let blob = cache.blobs().join(&meta.etag);
        // Held while linking too, as `huggingface_hub` does, so that two processes
        // never replace the same snapshot entry at once.
        let _lock = cache.lock(&self.cache_dir, &meta.etag)?;
        // Another process may have finished the same blob while we waited.
        if !blob.exists() {
            self.fetch_blob(&meta, &blob, &what)?;
        }
        link_snapshot(&blob, &snapshot, path)?;
        Ok(snapshot)
    }

    /// Lists the files of `repo` at its revision: the commit hash it resolves to and
    /// every file path in that commit.
    ///
    /// Offline, the listing is whatever the cached snapshot of the revision holds.
    pub fn list_files(&self, repo: &HubRepo) -> Result<(String, Vec<String>)> {
        repo.validate()?;
        if self.offline {
            return RepoCache::new(&self.cache_dir, repo).cached_listing(&repo.revision);
        }
        #[derive(Deserialize)]
        struct RepoInfo {
            sha: String,
            siblings: Vec<Sibling>,
        }
        #[derive(Deserialize)]
        struct Sibling {
            rfilename: String,
        }
        let url = format!(
            "{}/api/models/{}/revision/{}",
            self.endpoint_str(),
            repo.repo_id,
            utf8_percent_encode(&repo.revision, COMPONENT)
        );
        let info: RepoInfo = self.fetch_json(&url, &format!("repository {repo}"))?;
        ensure!(
            is_safe_component(&info.sha),
            "{url} returned an unusable commit hash {:?}",
            info.sha
        );
        Ok((
            info.sha,
            info.siblings.into_iter().map(|s| s.rfilename).collect(),
        ))
    }

    /// Downloads what loading a safetensors model needs and returns the snapshot
    /// directory holding it: `config.json`, `tokenizer.json`, `tokenizer_config.json`
    /// and `generation_config.json` when present, and the weights.
    ///
    /// With a `model.safetensors.index.json` only the shards it names are fetched,
    /// because some repositories also ship a consolidated copy of the same weights;
    /// otherwise every top-level `*.safetensors` file is. All files come from the
    /// one commit the revision resolved to, even if the branch moves meanwhile.
    pub fn download_model_dir(&self, repo: &HubRepo) -> Result<PathBuf> {
        let cache = RepoCache::new(&self.cache_dir, repo);
        let (commit, files) = match self.list_files(repo) {
            Ok(listing) => listing,
            Err(err) if err.is::<Unreachable>() => {
                cache.cached_listing(&repo.revision).map_err(|_| err)?
            }
            Err(err) => return Err(err),
        };
        cache.write_ref(&repo.revision, &commit)?;
        let has = |name: &str| files.iter().any(|f| f == name);
        for required in ["config.json", "tokenizer.json"] {
            ensure!(has(required), "{repo} has no {required}");
        }
        let pinned = repo.at(&commit);
        for name in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            if has(name) {
                self.download(&pinned, name)?;
            }
        }
        const INDEX: &str = "model.safetensors.index.json";
        let weights: Vec<String> = if has(INDEX) {
            let index = self.download(&pinned, INDEX)?;
            let shards = shards_of_index(&index)?;
            if let Some(missing) = shards.iter().find(|s| !has(s)) {
                bail!("{INDEX} of {repo} names {missing}, which the repository does not have");
            }
            shards
        } else {
            files
                .iter()
                .filter(|f| !f.contains('/') && f.ends_with(".safetensors"))
                .cloned()
                .collect()
        };
        ensure!(!weights.is_empty(), "{repo} has no .safetensors weights");
        for name in &weights {
            self.download(&pinned, name)?;
        }
        Ok(cache.snapshots().join(&commit))
    }

    /// GETs the absolute `url` and parses its JSON body, with the hub's
    /// authentication and error messages (the dataset viewer is such a service).
    /// The token goes to that URL's host, never to hosts it redirects to.
    pub fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T> {
        ensure!(!self.offline, "HF_HUB_OFFLINE=1 forbids fetching {url}");
        self.fetch_json(url, url)
    }
}

fn shards_of_index(index: &Path) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text =
        fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let parsed: Index = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a safetensors index", index.display()))?;
    let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    for shard in &shards {
        ensure!(
            is_relative_path(shard),
            "{} names an invalid shard {shard:?}",
            index.display()
        );
    }
    Ok(shards)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_commit_hash(s: &str) -> bool {
    is_hex(s, 40)
}

fn is_sha256(s: &str) -> bool {
    is_hex(s, 64)
}

/// A name that stays one directory entry when joined onto a cache path.
fn is_safe_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains(['/', '\\'])
        && !s.chars().any(char::is_control)
}

/// A `/`-separated path that stays inside the directory it is joined onto.
fn is_relative_path(s: &str) -> bool {
    !s.is_empty() && s.split('/').all(is_safe_component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_python() {
        let repo = HubRepo::model("org/name").at("refs/pr/1");
        assert_eq!(
            repo.resolve_url("http://hub", "a b/c@d~.json"),
            "http://hub/org/name/resolve/refs%2Fpr%2F1/a%20b/c%40d~.json"
        );
    }

    #[test]
    fn paths_cannot_escape() {
        assert!(is_relative_path("a/b.json"));
        for bad in ["", "/a", "a//b", "../a", "a/..", "a\\b"] {
            assert!(!is_relative_path(bad), "{bad}");
        }
    }
}
